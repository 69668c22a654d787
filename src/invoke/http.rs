//! HTTP and JSON-RPC branch calls (spec §6.2, §6.3) on one pooled client.

use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;

use super::{BranchCall, CallOutcome, classify_http};
use crate::engine::allow::{BranchAllow, CheckedResolver, address_refused};
use crate::model::{TransType, short_uuid};
use crate::tls::BranchTls;

/// How much of an answer body is kept (for rollback reasons and logs).
const MAX_BODY: usize = 4096;

/// HTTP transport with a shared connection pool.
#[derive(Clone)]
pub struct HttpInvoker {
    /// Branch calls: names resolved through the allowlist's [`CheckedResolver`].
    client: reqwest::Client,
    /// Calls to addresses the operator configured (the alert webhook).
    operator: reqwest::Client,
}

fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("braid/", env!("CARGO_PKG_VERSION")))
}

impl HttpInvoker {
    /// Clients with keep-alive pooling and no automatic redirects (a branch must answer itself); `https://`
    /// URLs are verified and answered with `tls` (ALPN `h2`, `http/1.1`), and branch host names resolve
    /// through `allow` (see [`CheckedResolver`]).
    pub fn new(allow: Arc<BranchAllow>, tls: &Arc<BranchTls>) -> Result<Self, String> {
        let tls = tls
            .client_config(&[b"h2", b"http/1.1"])
            .map_err(|e| e.to_string())?;
        let client = client_builder()
            .use_preconfigured_tls(tls.clone())
            .dns_resolver(Arc::new(CheckedResolver::new(allow)))
            .build()
            .map_err(|e| format!("building the HTTP client: {e}"))?;
        let operator = client_builder()
            .use_preconfigured_tls(tls)
            .build()
            .map_err(|e| format!("building the HTTP client: {e}"))?;
        Ok(Self { client, operator })
    }

    fn request(&self, method: Method, call: &BranchCall<'_>) -> reqwest::RequestBuilder {
        let mut req = self
            .client
            .request(method, call.url)
            .timeout(call.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        for (k, v) in call.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        req
    }

    /// POSTs a JSON document with a 5-second timeout.
    pub async fn post_json(&self, url: &str, body: &serde_json::Value) -> Result<(), String> {
        let resp = self
            .operator
            .post(url)
            .timeout(Duration::from_secs(5))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| describe(&e, url))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("{url} answered {}", resp.status()))
        }
    }

    /// A plain HTTP branch call: POST when there is a body (or for XA), else GET; the four DTM query parameters.
    pub async fn call(&self, call: &BranchCall<'_>) -> CallOutcome {
        let method = if !call.body.is_empty() || call.trans_type == TransType::Xa {
            Method::POST
        } else {
            Method::GET
        };
        let req = self
            .request(method, call)
            .query(&[
                ("gid", call.gid),
                ("trans_type", call.trans_type.as_str()),
                ("branch_id", call.branch_id),
                ("op", call.op),
            ])
            .body(call.body.to_vec());
        match req.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let body = read_body(resp).await;
                classify_http(status, &body)
            }
            Err(e) => failed(&e, call.url),
        }
    }

    /// A JSON-RPC 2.0 branch call: method from the URL's `method` parameter, params = payload + DTM fields.
    pub async fn call_json_rpc(&self, call: &BranchCall<'_>) -> CallOutcome {
        let method = reqwest::Url::parse(call.url)
            .ok()
            .and_then(|u| {
                u.query_pairs()
                    .find(|(k, _)| k == "method")
                    .map(|(_, v)| v.into_owned())
            })
            .unwrap_or_default();
        let mut params = match serde_json::from_slice::<serde_json::Value>(call.body) {
            Ok(serde_json::Value::Object(map)) => map,
            // DTM's SDKs send a nil payload as the body `null`: no fields of its own.
            Ok(serde_json::Value::Null) => serde_json::Map::new(),
            Err(_) if call.body.is_empty() => serde_json::Map::new(),
            Ok(_) | Err(_) => {
                return CallOutcome::Error(
                    "a JSON-RPC branch payload must be a JSON object".to_owned(),
                );
            }
        };
        for (k, v) in [
            ("gid", call.gid),
            ("trans_type", call.trans_type.as_str()),
            ("branch_id", call.branch_id),
            ("op", call.op),
        ] {
            params.insert(k.to_owned(), serde_json::Value::String(v.to_owned()));
        }
        let envelope = serde_json::json!({"jsonrpc": "2.0", "method": method, "id": short_uuid(), "params": params});
        let req = self.request(Method::POST, call).body(envelope.to_string());
        match req.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let body = read_body(resp).await;
                match classify_http(status, &body) {
                    CallOutcome::Success => classify_json_rpc(&body),
                    other => other,
                }
            }
            Err(e) => failed(&e, call.url),
        }
    }
}

/// The `error` object of a JSON-RPC reply: -32901 FAILURE, -32902 ONGOING, any other error is retried.
fn classify_json_rpc(body: &str) -> CallOutcome {
    let Ok(reply) = serde_json::from_str::<serde_json::Value>(body) else {
        return CallOutcome::Error(format!("JSON-RPC reply is not JSON: {body}"));
    };
    match reply.get("error") {
        None | Some(serde_json::Value::Null) => CallOutcome::Success,
        Some(err) => match err.get("code").and_then(serde_json::Value::as_i64) {
            Some(-32901) => CallOutcome::Failure(err.to_string()),
            Some(-32902) => CallOutcome::Ongoing,
            _ => CallOutcome::Error(format!("JSON-RPC error: {err}")),
        },
    }
}

async fn read_body(resp: reqwest::Response) -> String {
    match resp.bytes().await {
        Ok(bytes) => {
            let cut = &bytes[..bytes.len().min(MAX_BODY)];
            String::from_utf8_lossy(cut).into_owned()
        }
        Err(e) => format!("<body unreadable: {e}>"),
    }
}

/// A call that got no answer: a name resolving outside the allowlist is a failure (retrying cannot help
/// and must not be tried), anything else an error to retry.
fn failed(e: &reqwest::Error, url: &str) -> CallOutcome {
    match address_refused(e) {
        Some(refused) => CallOutcome::Failure(format!("calling {url}: {refused}")),
        None => CallOutcome::Error(describe(e, url)),
    }
}

fn describe(e: &reqwest::Error, url: &str) -> String {
    if e.is_timeout() {
        format!("calling {url}: timed out")
    } else if e.is_connect() {
        format!("calling {url}: connection failed: {e}")
    } else {
        format!("calling {url}: {e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_rpc_error_codes_are_honoured() {
        assert_eq!(
            classify_json_rpc(r#"{"jsonrpc":"2.0","id":"1","result":null}"#),
            CallOutcome::Success
        );
        assert!(matches!(
            classify_json_rpc(r#"{"error":{"code":-32901,"message":"x"}}"#),
            CallOutcome::Failure(_)
        ));
        assert_eq!(
            classify_json_rpc(r#"{"error":{"code":-32902,"message":"x"}}"#),
            CallOutcome::Ongoing
        );
        assert!(matches!(
            classify_json_rpc(r#"{"error":{"code":-32603}}"#),
            CallOutcome::Error(_)
        ));
    }
}
