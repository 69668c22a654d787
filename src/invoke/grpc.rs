//! gRPC branch calls (spec §6.4): the stored request bytes are sent as-is with a pass-through codec (braid
//! never needs the branch's proto), the reply is ignored, and the status code is the outcome:
//! `Aborted` = FAILURE (except the legacy message "ONGOING"), `FailedPrecondition` = ONGOING.
//! The URL is `host:port/package.Service/Method` (DTM's form, plain HTTP/2), or `grpcs://host:port/
//! package.Service/Method` for gRPC over TLS (braid's form: the branch's certificate is verified against the
//! public web roots and `--branch-ca`, and `--branch-client-cert` is presented when set). One lazily connected
//! HTTP/2 channel per target is shared.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::Uri;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::{MetadataKey, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use super::{BranchCall, CallOutcome};
use crate::engine::allow::{AddressRefused, BranchAllow, address_refused};
use crate::tls::BranchTls;

/// The scheme of a gRPC branch over TLS: `grpcs://host:port/package.Service/Method`.
pub const TLS_SCHEME: &str = "grpcs://";

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

/// A gRPC target: where to connect, and for TLS the name its certificate must carry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Target {
    host: String,
    tls_name: Option<String>,
}

/// `url` split into its target and its method path: `[grpcs://]host:port/package.Service/Method`. Over TLS the
/// server is verified as `authority` when given (the service name a discovered endpoint stands for), else as
/// the URL's host.
fn parse_url(url: &str, authority: Option<&str>) -> Result<(Target, PathAndQuery), String> {
    let (tls, rest) = match url.strip_prefix(TLS_SCHEME) {
        Some(rest) => (true, rest),
        None => (false, url),
    };
    let Some((host, method)) = rest.split_once('/') else {
        return Err(format!(
            "gRPC url '{url}' must look like host:port/package.Service/Method \
             (or grpcs://host:port/package.Service/Method over TLS)"
        ));
    };
    let path = PathAndQuery::from_str(&format!("/{method}"))
        .map_err(|e| format!("gRPC method '{method}' is invalid: {e}"))?;
    let tls_name = tls.then(|| host_of(authority.unwrap_or(host)).to_owned());
    Ok((
        Target {
            host: host.to_owned(),
            tls_name,
        },
        path,
    ))
}

/// The host of `host[:port]` or `[v6][:port]`.
fn host_of(authority: &str) -> &str {
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => h,
        _ => authority,
    }
}

/// gRPC transport with one channel per target.
#[derive(Clone)]
pub struct GrpcInvoker {
    channels: Arc<Mutex<HashMap<Target, Channel>>>,
    tls: Arc<rustls::ClientConfig>,
    allow: Arc<BranchAllow>,
}

impl GrpcInvoker {
    /// A transport whose TLS channels use `tls` (ALPN `h2`); every connection resolves its host through
    /// `allow` ([`connect_checked`]).
    pub fn new(allow: Arc<BranchAllow>, tls: &Arc<BranchTls>) -> Result<Self, String> {
        Ok(Self {
            channels: Arc::default(),
            tls: Arc::new(tls.client_config(&[b"h2"]).map_err(|e| e.to_string())?),
            allow,
        })
    }

    fn channel(&self, target: &Target) -> Result<Channel, String> {
        let mut channels = self
            .channels
            .lock()
            .map_err(|_| "gRPC channel cache poisoned".to_owned())?;
        if let Some(c) = channels.get(target) {
            return Ok(c.clone());
        }
        let host = &target.host;
        let endpoint = Endpoint::from_shared(format!("http://{host}"))
            .map_err(|e| format!("invalid gRPC target '{host}': {e}"))?
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true);
        let channel = match &target.tls_name {
            None => endpoint.connect_with_connector_lazy(plain_connector(Arc::clone(&self.allow))),
            Some(name) => {
                let origin: Uri = format!("https://{host}")
                    .parse()
                    .map_err(|e| format!("invalid gRPC target '{host}': {e}"))?;
                let name = ServerName::try_from(name.clone())
                    .map_err(|e| format!("'{name}' cannot be a TLS server name: {e}"))?;
                endpoint
                    .origin(origin)
                    .connect_with_connector_lazy(tls_connector(
                        Arc::clone(&self.tls),
                        name,
                        Arc::clone(&self.allow),
                    ))
            }
        };
        channels.insert(target.clone(), channel.clone());
        Ok(channel)
    }

    /// Calls `[grpcs://]host:port/package.Service/Method` with the raw body and DTM's `dtm-*` metadata. Over
    /// TLS the server's certificate must name `authority` when given, else the URL's host.
    pub async fn call(&self, call: &BranchCall<'_>, authority: Option<&str>) -> CallOutcome {
        let (target, path) = match parse_url(call.url, authority) {
            Ok(parsed) => parsed,
            Err(e) => return CallOutcome::Error(e),
        };
        let channel = match self.channel(&target) {
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
            if let Some(refused) = address_refused(&e) {
                return CallOutcome::Failure(format!("calling {}: {refused}", call.url));
            }
            return CallOutcome::Error(format!("calling {}: {e}", call.url));
        }
        match tokio::time::timeout(call.timeout, client.unary(request, path, RawCodec)).await {
            Ok(Ok(_)) => CallOutcome::Success,
            // A name resolving outside the allowlist: a failure, never retried.
            Ok(Err(status)) => match address_refused(&status) {
                Some(refused) => CallOutcome::Failure(format!("calling {}: {refused}", call.url)),
                None => classify_grpc(&status),
            },
            Err(_) => CallOutcome::Error(format!("calling {}: timed out", call.url)),
        }
    }
}

/// Connects over TCP, then TLS with `config` verifying the server as `name`; the server must agree to HTTP/2.
/// A TCP connection to `authority` (`host:port`): a name is resolved and only the addresses `allow`
/// accepts are tried ([`BranchAllow::allows_address`]); a name left with none fails with
/// [`AddressRefused`] inside the I/O error. An IP host was checked as written when the transaction was
/// created.
async fn connect_checked(
    authority: &str,
    allow: &BranchAllow,
) -> std::io::Result<tokio::net::TcpStream> {
    let host = host_of(authority);
    if host.parse::<std::net::IpAddr>().is_ok() {
        return tokio::net::TcpStream::connect(authority).await;
    }
    let found: Vec<std::net::SocketAddr> = tokio::net::lookup_host(authority).await?.collect();
    let (allowed, refused): (Vec<_>, Vec<_>) = found
        .into_iter()
        .partition(|a| allow.allows_address(a.ip()));
    if allowed.is_empty() && !refused.is_empty() {
        let refused = AddressRefused {
            host: host.to_owned(),
            addrs: refused.iter().map(std::net::SocketAddr::ip).collect(),
        };
        tracing::warn!(host, addrs = ?refused.addrs, "gRPC branch call refused: the name resolves outside --branch-allow");
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            refused,
        ));
    }
    let mut last = None;
    for addr in allowed {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(tcp) => return Ok(tcp),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{authority} resolves to nothing"),
        )
    }))
}

fn uri_authority(uri: &Uri) -> std::io::Result<String> {
    uri.authority()
        .map(|a| a.as_str().to_owned())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "gRPC target without a host",
            )
        })
}

/// Plain HTTP/2 connections through [`connect_checked`].
fn plain_connector(
    allow: Arc<BranchAllow>,
) -> impl tower::Service<
    Uri,
    Response = TokioIo<tokio::net::TcpStream>,
    Error = std::io::Error,
    Future = impl Send,
> + Send
+ Clone
+ 'static {
    tower::service_fn(move |uri: Uri| {
        let allow = Arc::clone(&allow);
        async move {
            let tcp = connect_checked(&uri_authority(&uri)?, &allow).await?;
            let _ = tcp.set_nodelay(true);
            Ok(TokioIo::new(tcp))
        }
    })
}

fn tls_connector(
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
    allow: Arc<BranchAllow>,
) -> impl tower::Service<
    Uri,
    Response = TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    Error = std::io::Error,
    Future = impl Send,
> + Send
+ Clone
+ 'static {
    let connector = tokio_rustls::TlsConnector::from(config);
    tower::service_fn(move |uri: Uri| {
        let (connector, name, allow) = (connector.clone(), name.clone(), Arc::clone(&allow));
        async move {
            let authority = uri_authority(&uri)?;
            let tcp = connect_checked(&authority, &allow).await?;
            let _ = tcp.set_nodelay(true);
            let tls = connector.connect(name, tcp).await?;
            if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{authority} did not agree to HTTP/2 over TLS (ALPN h2)"),
                ));
            }
            Ok(TokioIo::new(tls))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_say_whether_tls_is_spoken() {
        let (t, p) = parse_url("busi:50051/busi.Busi/TransOut", None).unwrap();
        assert_eq!((t.host.as_str(), t.tls_name), ("busi:50051", None));
        assert_eq!(p.as_str(), "/busi.Busi/TransOut");
        let (t, _) = parse_url("grpcs://busi.ns.svc:443/busi.Busi/TransOut", None).unwrap();
        assert_eq!(t.host, "busi.ns.svc:443");
        assert_eq!(t.tls_name.as_deref(), Some("busi.ns.svc"));
        let (t, _) =
            parse_url("grpcs://10.1.2.3:443/busi.Busi/TransOut", Some("busi:443")).unwrap();
        assert_eq!(t.tls_name.as_deref(), Some("busi"), "a discovered endpoint");
        let (t, _) = parse_url("grpcs://[::1]:8443/a.B/C", None).unwrap();
        assert_eq!(t.tls_name.as_deref(), Some("::1"));
        assert!(parse_url("grpcs://busi:443", None).is_err());
    }

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
