//! Calling branches. The engine builds a [`BranchCall`] and gets back a [`CallOutcome`], whatever the
//! transport: HTTP (spec §6.2) and JSON-RPC over HTTP (§6.3) live in [`http`], gRPC (§6.4) in [`grpc`].
//!
//! Classification follows DTM exactly (§2.2), because services written for DTM answer that way:
//! 425 or a body containing `ONGOING` first, then 409 or a body containing `FAILURE`, then any other non-200
//! status is an error, else success.

pub mod grpc;
pub mod http;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::engine::allow::BranchAllow;
use crate::metrics::Metrics;
use crate::model::{Protocol, TransType};
use crate::tls::BranchTls;

/// What a branch answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallOutcome {
    /// Done.
    Success,
    /// A definite business failure (the text says why).
    Failure(String),
    /// Not finished yet: retry at the same interval.
    Ongoing,
    /// A temporary fault: retry with backoff.
    Error(String),
}

impl CallOutcome {
    /// A fixed label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure(_) => "failure",
            Self::Ongoing => "ongoing",
            Self::Error(_) => "error",
        }
    }

    /// Whether the call succeeded.
    pub fn is_success(&self) -> bool {
        matches!(self, Self::Success)
    }
}

/// One call to a branch (or a back-check / resume callback).
#[derive(Debug, Clone)]
pub struct BranchCall<'a> {
    /// URL, or gRPC target; empty means "succeed at once".
    pub url: &'a str,
    /// Transport.
    pub protocol: Protocol,
    /// Transaction type (XA phase 2 always uses POST).
    pub trans_type: TransType,
    /// `gid` query parameter / metadata.
    pub gid: &'a str,
    /// `branch_id` query parameter / metadata.
    pub branch_id: &'a str,
    /// `op` query parameter / metadata (the workflow name for a resume call).
    pub op: &'a str,
    /// Request body.
    pub body: &'a [u8],
    /// Extra headers (the transaction's `branch_headers`).
    pub headers: &'a BTreeMap<String, String>,
    /// Per-call timeout.
    pub timeout: Duration,
}

/// A branch URL rewritten by [`Discovery`] to one endpoint of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The URL to call (the endpoint's `ip:port` in place of the service host).
    pub url: String,
    /// The authority of the original URL, sent as the HTTP `Host` header.
    pub host: String,
    /// The chosen endpoint (`ip:port`), reported back with [`Discovery::report`].
    pub endpoint: String,
}

/// Resolves branch URLs whose host names a discovered service (Kubernetes EndpointSlices) to one endpoint.
/// The invoker asks just before each call, so endpoint changes apply to the next call.
pub trait Discovery: Send + Sync {
    /// `None`: the URL's host is not a discovered service; call the URL as it is.
    /// `Some(Ok(_))`: call this endpoint. `Some(Err(why))`: the service is known but has no usable endpoint.
    /// `key` identifies the call (gid, branch, op): a key whose last call failed gets another endpoint.
    fn resolve(&self, url: &str, protocol: Protocol, key: &str)
    -> Option<Result<Resolved, String>>;
    /// Reports how the call to `resolved.endpoint` went (`ok`: the endpoint answered, whatever it said).
    fn report(&self, key: &str, resolved: &Resolved, ok: bool);
}

/// Calls branches over every supported transport. Cheap to clone (connection pools are shared).
#[derive(Clone)]
pub struct Invoker {
    http: http::HttpInvoker,
    grpc: grpc::GrpcInvoker,
    metrics: Arc<Metrics>,
    discovery: Option<Arc<dyn Discovery>>,
}

impl Invoker {
    /// A new invoker with pooled connections, calling `https://` and `grpcs://` branches with `tls`; branch
    /// host names are checked against `allow` when they resolve.
    pub fn new(
        metrics: Arc<Metrics>,
        allow: Arc<BranchAllow>,
        tls: &Arc<BranchTls>,
    ) -> Result<Self, String> {
        Ok(Self {
            http: http::HttpInvoker::new(Arc::clone(&allow), tls)?,
            grpc: grpc::GrpcInvoker::new(allow, tls)?,
            metrics,
            discovery: None,
        })
    }

    /// Resolves branch URLs through `discovery` before each call.
    #[must_use]
    pub fn with_discovery(mut self, discovery: Arc<dyn Discovery>) -> Self {
        self.discovery = Some(discovery);
        self
    }

    /// POSTs a JSON document (alert webhook); any non-2xx answer is an error.
    pub async fn post_json(&self, url: &str, body: &serde_json::Value) -> Result<(), String> {
        self.http.post_json(url, body).await
    }

    /// Makes the call and classifies the answer. Never panics; transport problems are `Error`.
    pub async fn call(&self, call: &BranchCall<'_>) -> CallOutcome {
        if call.url.is_empty() {
            return CallOutcome::Success;
        }
        let started = std::time::Instant::now();
        let Some(discovery) = &self.discovery else {
            return self.dispatch(call, started).await;
        };
        let key = format!("{}/{}/{}", call.gid, call.branch_id, call.op);
        match discovery.resolve(call.url, call.protocol, &key) {
            None => self.dispatch(call, started).await,
            Some(Err(why)) => {
                let outcome = CallOutcome::Error(format!("calling {}: {why}", call.url));
                self.record(call, &outcome, started);
                outcome
            }
            Some(Ok(resolved)) => {
                let mut headers = call.headers.clone();
                if resolved.url.starts_with("http") {
                    headers.retain(|k, _| !k.eq_ignore_ascii_case("host"));
                    headers.insert("host".to_owned(), resolved.host.clone());
                }
                let routed = BranchCall {
                    url: &resolved.url,
                    headers: &headers,
                    ..call.clone()
                };
                // A gRPC endpoint over TLS is verified against the service's name, not the pod's address.
                let outcome = self
                    .dispatch_as(&routed, Some(&resolved.host), started)
                    .await;
                discovery.report(&key, &resolved, !matches!(outcome, CallOutcome::Error(_)));
                outcome
            }
        }
    }

    async fn dispatch(&self, call: &BranchCall<'_>, started: std::time::Instant) -> CallOutcome {
        self.dispatch_as(call, None, started).await
    }

    /// Makes the call; a gRPC call over TLS verifies the server as `authority` when given, else as the URL's
    /// host.
    async fn dispatch_as(
        &self,
        call: &BranchCall<'_>,
        authority: Option<&str>,
        started: std::time::Instant,
    ) -> CallOutcome {
        let outcome = match transport(call) {
            Protocol::JsonRpc => self.http.call_json_rpc(call).await,
            Protocol::Http => self.http.call(call).await,
            Protocol::Grpc => self.grpc.call(call, authority).await,
        };
        self.record(call, &outcome, started);
        outcome
    }

    fn record(&self, call: &BranchCall<'_>, outcome: &CallOutcome, started: std::time::Instant) {
        let protocol = transport(call).as_str();
        self.metrics
            .branch_call_duration
            .with_label_values(&[protocol, outcome.label()])
            .observe(started.elapsed().as_secs_f64());
    }
}

/// How the engine reaches branches: the [`Invoker`] in production; the engine's unit tests script the
/// answers with their own implementation.
#[async_trait::async_trait]
pub trait BranchCaller: Send + Sync + 'static {
    /// Makes the call and classifies the answer. Never panics; transport problems are `Error`.
    async fn call(&self, call: &BranchCall<'_>) -> CallOutcome;

    /// POSTs a JSON document (the alert webhook); any non-2xx answer is an error.
    async fn post_json(&self, url: &str, body: &serde_json::Value) -> Result<(), String>;
}

#[async_trait::async_trait]
impl BranchCaller for Invoker {
    async fn call(&self, call: &BranchCall<'_>) -> CallOutcome {
        Invoker::call(self, call).await
    }

    async fn post_json(&self, url: &str, body: &serde_json::Value) -> Result<(), String> {
        Invoker::post_json(self, url, body).await
    }
}

/// The transport of a call (spec §6.1): gRPC for a `grpcs://` URL (gRPC over TLS, braid's own form); else
/// JSON-RPC when the transaction says so and the URL names a method; else HTTP when the transaction says so
/// or the URL is http(s); else gRPC (`host:port/package.Service/Method`).
fn transport(call: &BranchCall<'_>) -> Protocol {
    if call.url.starts_with(grpc::TLS_SCHEME) {
        return Protocol::Grpc;
    }
    let is_http_url = call.url.starts_with("http://") || call.url.starts_with("https://");
    match call.protocol {
        Protocol::JsonRpc if call.url.contains("method") => Protocol::JsonRpc,
        Protocol::Http => Protocol::Http,
        Protocol::JsonRpc | Protocol::Grpc if is_http_url => Protocol::Http,
        Protocol::JsonRpc | Protocol::Grpc => Protocol::Grpc,
    }
}

/// DTM's reading of an HTTP answer (§2.2): 425/`ONGOING`, then 409/`FAILURE`, then non-200, else success.
pub fn classify_http(status: u16, body: &str) -> CallOutcome {
    if status == 425 || body.contains("ONGOING") {
        CallOutcome::Ongoing
    } else if status == 409 || body.contains("FAILURE") {
        CallOutcome::Failure(body.to_owned())
    } else if status != 200 {
        CallOutcome::Error(format!("http status {status}: {body}"))
    } else {
        CallOutcome::Success
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpcs_urls_are_grpc_whatever_the_protocol() {
        let headers = BTreeMap::new();
        let call = |url: &'static str, protocol| BranchCall {
            url,
            protocol,
            trans_type: TransType::Saga,
            gid: "g",
            branch_id: "01",
            op: "action",
            body: b"",
            headers: &headers,
            timeout: Duration::from_secs(1),
        };
        for protocol in [Protocol::Http, Protocol::Grpc, Protocol::JsonRpc] {
            assert_eq!(
                transport(&call(
                    "grpcs://busi:443/busi.Busi/TransOut?method=x",
                    protocol
                )),
                Protocol::Grpc
            );
        }
        assert_eq!(
            transport(&call("busi:50051/busi.Busi/TransOut", Protocol::Grpc)),
            Protocol::Grpc
        );
        assert_eq!(
            transport(&call("https://busi/api/TransOut", Protocol::Grpc)),
            Protocol::Http
        );
    }

    #[test]
    fn classifies_like_dtm_with_ongoing_first() {
        let cases: &[(u16, &str, &str)] = &[
            (200, "null", "success"),
            (200, r#"{"dtm_result":"SUCCESS"}"#, "success"),
            (200, r#"{"dtm_result":"FAILURE"}"#, "failure"),
            (200, r#"{"dtm_result":"ONGOING"}"#, "ongoing"),
            (409, "", "failure"),
            (425, "", "ongoing"),
            (409, "ONGOING", "ongoing"),
            (500, "FAILURE", "failure"),
            (500, "boom", "error"),
            (404, "", "error"),
            (201, "", "error"),
        ];
        for (i, (status, body, want)) in cases.iter().enumerate() {
            assert_eq!(
                classify_http(*status, body).label(),
                *want,
                "case {i}: {status} {body}"
            );
        }
    }
}
