//! The gRPC side (feature `grpc`): the `dtmgimp.Dtm` request mapping, and calls the SDK makes to gRPC
//! branches (`host:port/package.Service/Method`) with raw protobuf bytes and the `dtm-*` metadata.

use std::collections::BTreeMap;

use bytes::{Buf as _, BufMut as _};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::{MetadataKey, MetadataValue};

use crate::error::{Error, Result};
use crate::model::TransRequest;
use crate::proto::dtmgimp::{DtmRequest, DtmTransOptions};

/// The `DtmRequest` of a transaction (spec §8). Payloads travel as bytes; steps as their JSON text.
pub(crate) fn to_dtm_request(req: &TransRequest) -> Result<DtmRequest> {
    let steps = if req.steps.is_empty() {
        String::new()
    } else {
        serde_json::to_string(&req.steps).map_err(|e| Error::json("encoding the steps", e))?
    };
    let o = &req.options;
    Ok(DtmRequest {
        gid: req.gid.clone(),
        trans_type: req.trans_type.to_owned(),
        trans_options: Some(DtmTransOptions {
            wait_result: o.wait_result,
            timeout_to_fail: o.timeout_to_fail,
            retry_interval: o.retry_interval,
            branch_headers: o.branch_headers.clone().into_iter().collect(),
            request_timeout: o.request_timeout,
            retry_limit: o.retry_limit,
        }),
        customed_data: req.custom_data.clone(),
        bin_payloads: req.payloads.clone(),
        query_prepared: req.query_prepared.clone(),
        steps,
        req_extra: req.req_extra.clone().into_iter().collect(),
        rollback_reason: req.rollback_reason.clone(),
    })
}

/// Passes bytes through unchanged: the SDK does not know the branch's message types.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Self;
    type Decoder = Self;

    fn encoder(&mut self) -> Self::Encoder {
        *self
    }

    fn decoder(&mut self) -> Self::Decoder {
        *self
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// Calls a gRPC branch `host:port/package.Service/Method` with `body` as the raw request message and the
/// DTM parameters as `dtm-*` metadata (spec §6.4). Returns the raw reply message.
pub(crate) async fn call_branch(
    url: &str,
    query: &[(&str, &str)],
    headers: &BTreeMap<String, String>,
    body: Vec<u8>,
) -> Result<Vec<u8>> {
    let (host, method) = url
        .split_once('/')
        .ok_or_else(|| Error::InvalidArgument(format!("gRPC branch URL '{url}' has no method")))?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{host}"))
        .map_err(|e| Error::InvalidArgument(format!("gRPC branch URL '{url}': {e}")))?
        .timeout(crate::client::DEFAULT_HTTP_TIMEOUT)
        .connect()
        .await
        .map_err(|e| Error::Other(format!("connecting to gRPC branch {url}: {e}")))?;
    let path: tonic::codegen::http::uri::PathAndQuery = format!("/{method}")
        .parse()
        .map_err(|e| Error::InvalidArgument(format!("gRPC branch URL '{url}': {e}")))?;
    let mut request = tonic::Request::new(body);
    let md = request.metadata_mut();
    let pairs = query
        .iter()
        .map(|(k, v)| (format!("dtm-{k}"), (*v).to_owned()))
        .chain(headers.iter().map(|(k, v)| (k.to_lowercase(), v.clone())));
    for (k, v) in pairs {
        let key = MetadataKey::from_bytes(k.as_bytes())
            .map_err(|e| Error::InvalidArgument(format!("metadata key '{k}': {e}")))?;
        let value = MetadataValue::try_from(v.as_str())
            .map_err(|e| Error::InvalidArgument(format!("metadata value of '{k}': {e}")))?;
        md.insert(key, value);
    }
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Error::Other(format!("gRPC branch {url} not ready: {e}")))?;
    grpc.unary(request, path, RawCodec)
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| Error::from_grpc_status(format!("gRPC branch {url}"), s))
}
