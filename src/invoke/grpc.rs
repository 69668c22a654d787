//! gRPC branch calls (spec §6.4): the stored request bytes are sent as-is with a pass-through codec (braid
//! never needs the branch's proto), the reply is ignored, and the status code is the outcome:
//! `Aborted` = FAILURE (except the legacy message "ONGOING"), `FailedPrecondition` = ONGOING.
//! The URL is `host:port/package.Service/Method`; one lazily connected HTTP/2 channel per host is shared.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::{MetadataKey, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use super::{BranchCall, CallOutcome};

/// Sends and receives raw protobuf bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

/// Encoder half of [`RawCodec`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RawEncoder;

/// Decoder half of [`RawCodec`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RawDecoder;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        RawEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

/// DTM's reading of a gRPC status (§2.2).
pub fn classify_grpc(status: &Status) -> CallOutcome {
    match status.code() {
        tonic::Code::Ok => CallOutcome::Success,
        tonic::Code::Aborted if status.message() == "ONGOING" => CallOutcome::Ongoing,
        tonic::Code::Aborted => CallOutcome::Failure(status.message().to_owned()),
        tonic::Code::FailedPrecondition => CallOutcome::Ongoing,
        code => CallOutcome::Error(format!("grpc status {code:?}: {}", status.message())),
    }
}

/// gRPC transport with one channel per target host.
#[derive(Clone, Default)]
pub struct GrpcInvoker {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl GrpcInvoker {
    fn channel(&self, host: &str) -> Result<Channel, String> {
        let mut channels = self
            .channels
            .lock()
            .map_err(|_| "gRPC channel cache poisoned".to_owned())?;
        if let Some(c) = channels.get(host) {
            return Ok(c.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{host}"))
            .map_err(|e| format!("invalid gRPC target '{host}': {e}"))?
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true);
        let channel = endpoint.connect_lazy();
        channels.insert(host.to_owned(), channel.clone());
        Ok(channel)
    }

    /// Calls `host:port/package.Service/Method` with the raw body and DTM's `dtm-*` metadata.
    pub async fn call(&self, call: &BranchCall<'_>) -> CallOutcome {
        let Some((host, method)) = call.url.split_once('/') else {
            return CallOutcome::Error(format!(
                "gRPC url '{}' must look like host:port/package.Service/Method",
                call.url
            ));
        };
        let path = match PathAndQuery::from_str(&format!("/{method}")) {
            Ok(p) => p,
            Err(e) => return CallOutcome::Error(format!("gRPC method '{method}' is invalid: {e}")),
        };
        let channel = match self.channel(host) {
            Ok(c) => c,
            Err(e) => return CallOutcome::Error(e),
        };
        let mut request = tonic::Request::new(call.body.to_vec());
        request.set_timeout(call.timeout);
        let md = request.metadata_mut();
        let fixed = [
            ("dtm-gid", call.gid),
            ("dtm-trans_type", call.trans_type.as_str()),
            ("dtm-branch_id", call.branch_id),
            ("dtm-op", call.op),
            ("dtm-dtm", ""),
        ];
        for (k, v) in fixed
            .into_iter()
            .chain(call.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        {
            let Ok(key) = MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes()) else {
                return CallOutcome::Error(format!(
                    "branch header '{k}' is not a valid gRPC metadata key"
                ));
            };
            let Ok(value) = MetadataValue::try_from(v) else {
                return CallOutcome::Error(format!(
                    "branch header '{k}' has a value not allowed in gRPC metadata"
                ));
            };
            md.insert(key, value);
        }
        let mut client = tonic::client::Grpc::new(channel);
        if let Err(e) = client.ready().await {
            return CallOutcome::Error(format!("calling {}: {e}", call.url));
        }
        match tokio::time::timeout(call.timeout, client.unary(request, path, RawCodec)).await {
            Ok(Ok(_)) => CallOutcome::Success,
            Ok(Err(status)) => classify_grpc(&status),
            Err(_) => CallOutcome::Error(format!("calling {}: timed out", call.url)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_grpc_codes_like_dtm() {
        assert_eq!(
            classify_grpc(&Status::aborted("ONGOING")),
            CallOutcome::Ongoing
        );
        assert!(matches!(
            classify_grpc(&Status::aborted("no money")),
            CallOutcome::Failure(_)
        ));
        assert_eq!(
            classify_grpc(&Status::failed_precondition("x")),
            CallOutcome::Ongoing
        );
        assert!(matches!(
            classify_grpc(&Status::internal("x")),
            CallOutcome::Error(_)
        ));
        assert!(matches!(
            classify_grpc(&Status::unavailable("x")),
            CallOutcome::Error(_)
        ));
    }
}
