//! [`DtmClient`]: the connection to a transaction manager (braid or DTM) over HTTP or gRPC, and the
//! HTTP calls the SDK makes to branches itself (TCC tries, XA actions, msg back-checks).

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use reqwest::Method;

use crate::error::{Error, Result, branch_result};
use crate::model::{
    BranchRegistration, Progress, Progresses, ProgressesJson, TransRequest, to_json_bytes,
};

/// Default timeout of the SDK's own HTTP calls (to the transaction manager and to branches).
pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// A handle on a transaction manager. Cheap to clone; share one per process.
///
/// Both transports speak DTM's protocol, so the same code runs against braid or DTM:
/// - HTTP: `DtmClient::http("http://localhost:36789/api/dtmsvr")`;
/// - gRPC (feature `grpc`): `DtmClient::grpc("localhost:36790")`.
#[derive(Clone, Debug)]
pub struct DtmClient {
    transport: Transport,
    http: reqwest::Client,
}

#[derive(Clone, Debug)]
enum Transport {
    Http {
        base: String,
    },
    #[cfg(feature = "grpc")]
    Grpc {
        /// `host:port`, as passed to branches in the `dtm` query parameter.
        addr: String,
        client: crate::proto::dtmgimp::dtm_client::DtmClient<tonic::transport::Channel>,
    },
}

fn default_http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(DEFAULT_HTTP_TIMEOUT)
        .build()
        .unwrap_or_default()
}

impl DtmClient {
    /// A client of the HTTP API at `base`, e.g. `http://localhost:36789/api/dtmsvr`.
    pub fn http(base: impl Into<String>) -> Self {
        Self::http_with(base, default_http())
    }

    /// Like [`DtmClient::http`], with your own `reqwest` client (timeouts, TLS, proxies). It is also used
    /// for the SDK's calls to branches.
    pub fn http_with(base: impl Into<String>, http: reqwest::Client) -> Self {
        let base = base.into().trim_end_matches('/').to_owned();
        Self {
            transport: Transport::Http { base },
            http,
        }
    }

    /// A client of the gRPC service `dtmgimp.Dtm` at `addr` (`host:port` or `http://host:port`). The
    /// connection is made lazily on first use; call it inside a Tokio runtime.
    #[cfg(feature = "grpc")]
    pub fn grpc(addr: impl Into<String>) -> Result<Self> {
        let addr = addr.into();
        let bare = addr
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{bare}"))
            .map_err(|e| Error::InvalidArgument(format!("gRPC address '{addr}': {e}")))?
            .timeout(DEFAULT_HTTP_TIMEOUT)
            .connect_lazy();
        Ok(Self {
            transport: Transport::Grpc {
                addr: bare,
                client: crate::proto::dtmgimp::dtm_client::DtmClient::new(channel),
            },
            http: default_http(),
        })
    }

    /// The client for the address a branch received in its `dtm` query parameter: HTTP when it is a
    /// URL, gRPC (feature `grpc`) when it is `host:port`.
    pub fn from_dtm_param(dtm: &str) -> Result<Self> {
        if dtm.starts_with("http://") || dtm.starts_with("https://") {
            return Ok(Self::http(dtm));
        }
        #[cfg(feature = "grpc")]
        {
            Self::grpc(dtm)
        }
        #[cfg(not(feature = "grpc"))]
        {
            Err(Error::InvalidArgument(format!(
                "dtm address '{dtm}' is not an HTTP URL and the `grpc` feature is off"
            )))
        }
    }

    /// The address branches get in the `dtm` query parameter (so a nested TCC or an XA resource manager
    /// can reach the same transaction manager).
    pub fn dtm_param(&self) -> &str {
        match &self.transport {
            Transport::Http { base } => base,
            #[cfg(feature = "grpc")]
            Transport::Grpc { addr, .. } => addr,
        }
    }

    /// Whether this client talks gRPC.
    pub fn is_grpc(&self) -> bool {
        !matches!(self.transport, Transport::Http { .. })
    }

    /// The HTTP client used for branch calls.
    pub fn http_client(&self) -> &reqwest::Client {
        &self.http
    }

    /// Asks the transaction manager for a new gid (`GET newGid`).
    pub async fn new_gid(&self) -> Result<String> {
        match &self.transport {
            Transport::Http { base } => {
                let url = format!("{base}/newGid");
                let resp = self
                    .http
                    .get(&url)
                    .send()
                    .await
                    .map_err(|e| Error::http(format!("GET {url}"), e))?;
                let body = read_dtm_reply("newGid", resp).await?;
                let v: serde_json::Value = serde_json::from_str(&body)
                    .map_err(|e| Error::json("decoding the newGid reply", e))?;
                v.get("gid")
                    .and_then(serde_json::Value::as_str)
                    .filter(|g| !g.is_empty())
                    .map(str::to_owned)
                    .ok_or_else(|| Error::Dtm {
                        call: "newGid",
                        status: 200,
                        body,
                    })
            }
            #[cfg(feature = "grpc")]
            Transport::Grpc { client, .. } => {
                let reply = client
                    .clone()
                    .new_gid(())
                    .await
                    .map_err(|s| Error::from_grpc_status("NewGid", s))?;
                Ok(reply.into_inner().gid)
            }
        }
    }

    async fn post_json<T: serde::Serialize>(
        &self,
        base: &str,
        call: &'static str,
        body: &T,
    ) -> Result<String> {
        let url = format!("{base}/{call}");
        let body = to_json_bytes(call, body)?;
        let resp = self
            .http
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| Error::http(format!("POST {url}"), e))?;
        read_dtm_reply(call, resp).await
    }

    /// `prepare`, `submit` or `abort` with the transaction JSON.
    pub(crate) async fn trans_call(&self, call: &'static str, req: &TransRequest) -> Result<()> {
        match &self.transport {
            Transport::Http { base } => self.post_json(base, call, &req.to_json()?).await.map(drop),
            #[cfg(feature = "grpc")]
            Transport::Grpc { client, .. } => {
                let mut c = client.clone();
                let r = crate::grpc::to_dtm_request(req)?;
                let res = match call {
                    "prepare" => c.prepare(r).await,
                    "submit" => c.submit(r).await,
                    "abort" => c.abort(r).await,
                    other => {
                        return Err(Error::InvalidArgument(format!(
                            "unknown transaction call '{other}'"
                        )));
                    }
                };
                res.map(drop).map_err(|s| Error::from_grpc_status(call, s))
            }
        }
    }

    /// `registerBranch`.
    pub(crate) async fn register_branch(&self, reg: &BranchRegistration) -> Result<()> {
        match &self.transport {
            Transport::Http { base } => self
                .post_json(base, "registerBranch", &reg.to_map()?)
                .await
                .map(drop),
            #[cfg(feature = "grpc")]
            Transport::Grpc { client, .. } => client
                .clone()
                .register_branch(crate::proto::dtmgimp::DtmBranchRequest {
                    gid: reg.gid.clone(),
                    trans_type: reg.trans_type.to_owned(),
                    branch_id: reg.branch_id.clone(),
                    op: reg.fields.get("op").cloned().unwrap_or_default(),
                    data: reg.fields.clone().into_iter().collect(),
                    busi_payload: reg.data.clone(),
                })
                .await
                .map(drop)
                .map_err(|s| Error::from_grpc_status("RegisterBranch", s)),
        }
    }

    /// `prepareWorkflow`: creates the workflow or returns its stored progress.
    pub(crate) async fn prepare_workflow(&self, req: &TransRequest) -> Result<Progresses> {
        match &self.transport {
            Transport::Http { base } => {
                // The reply may quote a rollback reason containing FAILURE, so only the status counts.
                let url = format!("{base}/prepareWorkflow");
                let resp = self
                    .http
                    .post(&url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(to_json_bytes("prepareWorkflow", &req.to_json()?)?)
                    .send()
                    .await
                    .map_err(|e| Error::http(format!("POST {url}"), e))?;
                let status = resp.status().as_u16();
                let body = resp
                    .text()
                    .await
                    .map_err(|e| Error::http(format!("reading the reply of {url}"), e))?;
                if status != 200 {
                    return Err(dtm_error("prepareWorkflow", status, body));
                }
                let parsed: ProgressesJson = serde_json::from_str(&body)
                    .map_err(|e| Error::json("decoding the prepareWorkflow reply", e))?;
                let t = parsed.transaction.unwrap_or_default();
                let progresses = parsed
                    .progresses
                    .unwrap_or_default()
                    .into_iter()
                    .map(|p| {
                        let data = base64::engine::general_purpose::STANDARD
                            .decode(p.bin_data.unwrap_or_default())
                            .map_err(|e| {
                                Error::InvalidArgument(format!(
                                    "prepareWorkflow reply: bin_data is not base64: {e}"
                                ))
                            })?;
                        Ok(Progress {
                            branch_id: p.branch_id.unwrap_or_default(),
                            op: p.op.unwrap_or_default(),
                            status: p.status.unwrap_or_default(),
                            data,
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(Progresses {
                    status: t.status.unwrap_or_default(),
                    rollback_reason: t.rollback_reason.unwrap_or_default(),
                    result: t.result.unwrap_or_default(),
                    progresses,
                })
            }
            #[cfg(feature = "grpc")]
            Transport::Grpc { client, .. } => {
                let reply = client
                    .clone()
                    .prepare_workflow(crate::grpc::to_dtm_request(req)?)
                    .await
                    .map_err(|s| Error::from_grpc_status("PrepareWorkflow", s))?
                    .into_inner();
                let t = reply.transaction.unwrap_or_default();
                Ok(Progresses {
                    status: t.status,
                    rollback_reason: t.rollback_reason,
                    result: t.result,
                    progresses: reply
                        .progresses
                        .into_iter()
                        .map(|p| Progress {
                            branch_id: p.branch_id,
                            op: p.op,
                            status: p.status,
                            data: p.bin_data,
                        })
                        .collect(),
                })
            }
        }
    }

    /// Calls a branch over HTTP as DTM's SDKs do: `method` to `url` with the DTM query parameters, the
    /// branch headers, and `body`; the answer is read by the §2.2 rules. Returns the response body.
    pub(crate) async fn call_branch(
        &self,
        method: Method,
        url: &str,
        query: &[(&str, &str)],
        headers: &BTreeMap<String, String>,
        body: Option<Vec<u8>>,
    ) -> Result<Vec<u8>> {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            #[cfg(feature = "grpc")]
            return crate::grpc::call_branch(url, query, headers, body.unwrap_or_default()).await;
            #[cfg(not(feature = "grpc"))]
            return Err(Error::InvalidArgument(format!(
                "branch URL '{url}' is not HTTP and the `grpc` feature is off"
            )));
        }
        let mut rb = self.http.request(method.clone(), url).query(query);
        for (k, v) in headers {
            rb = rb.header(k.as_str(), v.as_str());
        }
        if let Some(body) = body {
            rb = rb
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        let resp = rb
            .send()
            .await
            .map_err(|e| Error::http(format!("{method} {url}"), e))?;
        let status = resp.status().as_u16();
        let text = resp
            .text()
            .await
            .map_err(|e| Error::http(format!("reading the reply of {url}"), e))?;
        branch_result(url, status, text)
    }
}

/// Reads a reply of the transaction manager (spec §2.3): failed unless 200 without `FAILURE` in the body.
async fn read_dtm_reply(call: &'static str, resp: reqwest::Response) -> Result<String> {
    let status = resp.status().as_u16();
    let body = resp
        .text()
        .await
        .map_err(|e| Error::http(format!("reading the reply of {call}"), e))?;
    if status == 200 && !body.contains("FAILURE") {
        return Ok(body);
    }
    Err(dtm_error(call, status, body))
}

fn dtm_error(call: &'static str, status: u16, body: String) -> Error {
    let message = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
        .unwrap_or_else(|| body.clone());
    // The server's message ends in the marker; the error's Display adds it back.
    let message = message
        .trim_end()
        .trim_end_matches("FAILURE")
        .trim_end_matches("ONGOING")
        .trim_end()
        .to_owned();
    if status == 409 || (status == 200 && body.contains("FAILURE")) {
        Error::Failure(message)
    } else if status == 425 {
        Error::Ongoing(message)
    } else {
        Error::Dtm { call, status, body }
    }
}

/// The DTM query parameters of a call the SDK makes to a branch.
pub(crate) fn branch_query<'a>(
    dtm: &'a str,
    gid: &'a str,
    trans_type: &'a str,
    branch_id: &'a str,
    op: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("dtm", dtm),
        ("gid", gid),
        ("trans_type", trans_type),
        ("branch_id", branch_id),
        ("op", op),
    ]
}
