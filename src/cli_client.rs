//! The HTTP client behind the admin commands of the `braid` CLI (`braid query`, `braid list`,
//! `braid force-stop`): a thin client of a running server's `/api/dtmsvr` routes, so the commands work
//! against any replica and never touch the store directly. (The admin web page is `api/admin.html`.)

use std::time::Duration;

use serde_json::Value;

/// A request of the CLI client failed; the message says what the server answered, or why it got no answer.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CliClientError(String);

/// The CLI's client of one running server.
pub struct CliClient {
    base: String,
    http: reqwest::Client,
}

impl CliClient {
    /// A client for `server` (e.g. `http://127.0.0.1:36789`).
    pub fn new(server: &str) -> Result<Self, CliClientError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| CliClientError(format!("building the HTTP client: {e}")))?;
        Ok(Self {
            base: format!("{}/api/dtmsvr", server.trim_end_matches('/')),
            http,
        })
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<Value, CliClientError> {
        let resp = req
            .send()
            .await
            .map_err(|e| CliClientError(format!("cannot reach {}: {e}", self.base)))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| CliClientError(format!("reading the answer: {e}")))?;
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            Ok(body)
        } else {
            let msg = body
                .get("message")
                .and_then(Value::as_str)
                .map_or_else(|| body.to_string(), str::to_owned);
            Err(CliClientError(format!("server answered {status}: {msg}")))
        }
    }

    /// The transaction and its branches.
    pub async fn query(&self, gid: &str) -> Result<Value, CliClientError> {
        self.send(
            self.http
                .get(format!("{}/query", self.base))
                .query(&[("gid", gid)]),
        )
        .await
    }

    /// A page of transactions, newest first, optionally filtered by status.
    pub async fn list(
        &self,
        status: Option<&str>,
        limit: u32,
        position: Option<&str>,
    ) -> Result<Value, CliClientError> {
        let mut q: Vec<(&str, String)> = vec![("limit", limit.to_string())];
        if let Some(s) = status {
            q.push(("status", s.to_owned()));
        }
        if let Some(p) = position {
            q.push(("position", p.to_owned()));
        }
        self.send(self.http.get(format!("{}/all", self.base)).query(&q))
            .await
    }

    /// Marks an unfinished transaction `failed` without calling any branch.
    pub async fn force_stop(&self, gid: &str) -> Result<Value, CliClientError> {
        let body = serde_json::json!({ "gid": gid }).to_string();
        self.send(
            self.http
                .post(format!("{}/forceStop", self.base))
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body),
        )
        .await
    }
}
