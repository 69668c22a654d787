//! The wire shapes the SDK sends to the transaction manager (spec §3, §4.6, §4.7) and the options every
//! transaction type shares.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Transaction type `saga`.
pub const SAGA: &str = "saga";
/// Transaction type `msg`.
pub const MSG: &str = "msg";
/// Transaction type `tcc`.
pub const TCC: &str = "tcc";
/// Transaction type `xa`.
pub const XA: &str = "xa";
/// Transaction type `workflow`.
pub const WORKFLOW: &str = "workflow";

/// Options every transaction type accepts (spec §3). Zero / empty means "the server's default".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransOptions {
    /// Process submit/abort synchronously and report the final result (spec §4.3).
    pub wait_result: bool,
    /// Seconds until the transaction times out (saga: aborts; tcc/xa: rolls back; msg: back-checks).
    pub timeout_to_fail: i64,
    /// Timeout in seconds of each call the server makes to this transaction's branches.
    pub request_timeout: i64,
    /// Base retry interval in seconds.
    pub retry_interval: i64,
    /// Saga: the most in-pass retries of an action before the saga aborts.
    pub retry_limit: i64,
    /// Extra headers (gRPC: metadata) sent with every branch call, by the server and by this SDK.
    pub branch_headers: BTreeMap<String, String>,
}

/// The transaction JSON of prepare/submit/abort/prepareWorkflow.
#[derive(Debug, Clone, Default)]
pub(crate) struct TransRequest {
    pub(crate) gid: String,
    pub(crate) trans_type: &'static str,
    pub(crate) steps: Vec<BTreeMap<String, String>>,
    pub(crate) payloads: Vec<Vec<u8>>,
    pub(crate) query_prepared: String,
    pub(crate) custom_data: String,
    pub(crate) options: TransOptions,
    pub(crate) concurrent: bool,
    pub(crate) rollback_reason: String,
    pub(crate) req_extra: BTreeMap<String, String>,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

fn is_false(v: &bool) -> bool {
    !*v
}

/// The HTTP JSON body of a [`TransRequest`].
#[derive(Debug, Serialize)]
pub(crate) struct TransJson<'a> {
    gid: &'a str,
    trans_type: &'a str,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    steps: &'a [BTreeMap<String, String>],
    #[serde(skip_serializing_if = "Vec::is_empty")]
    payloads: Vec<&'a str>,
    #[serde(skip_serializing_if = "str::is_empty")]
    query_prepared: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    custom_data: &'a str,
    protocol: &'static str,
    #[serde(skip_serializing_if = "is_false")]
    wait_result: bool,
    #[serde(skip_serializing_if = "is_zero")]
    timeout_to_fail: i64,
    #[serde(skip_serializing_if = "is_zero")]
    request_timeout: i64,
    #[serde(skip_serializing_if = "is_zero")]
    retry_interval: i64,
    #[serde(skip_serializing_if = "is_zero")]
    retry_limit: i64,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    branch_headers: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "is_false")]
    concurrent: bool,
    #[serde(skip_serializing_if = "str::is_empty")]
    rollback_reason: &'a str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    req_extra: &'a BTreeMap<String, String>,
}

impl TransRequest {
    /// The JSON body; HTTP carries payloads as strings, so they must be UTF-8.
    pub(crate) fn to_json(&self) -> Result<TransJson<'_>> {
        let payloads = self
            .payloads
            .iter()
            .enumerate()
            .map(|(i, p)| {
                std::str::from_utf8(p).map_err(|_| {
                    Error::InvalidArgument(format!(
                        "payload of step {i} of {} is not UTF-8; the HTTP transport carries payloads as strings",
                        self.gid
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(TransJson {
            gid: &self.gid,
            trans_type: self.trans_type,
            steps: &self.steps,
            payloads,
            query_prepared: &self.query_prepared,
            custom_data: &self.custom_data,
            protocol: "http",
            wait_result: self.options.wait_result,
            timeout_to_fail: self.options.timeout_to_fail,
            request_timeout: self.options.request_timeout,
            retry_interval: self.options.retry_interval,
            retry_limit: self.options.retry_limit,
            branch_headers: &self.options.branch_headers,
            concurrent: self.concurrent,
            rollback_reason: &self.rollback_reason,
            req_extra: &self.req_extra,
        })
    }
}

/// A registerBranch request (spec §4.6): `fields` are the string keys besides gid/trans_type/branch_id
/// (`confirm`/`cancel` for TCC, `url` for XA, `op`/`status` for workflow), `data` the branch body.
#[derive(Debug, Clone, Default)]
pub(crate) struct BranchRegistration {
    pub(crate) gid: String,
    pub(crate) trans_type: &'static str,
    pub(crate) branch_id: String,
    pub(crate) data: Vec<u8>,
    pub(crate) fields: BTreeMap<String, String>,
}

impl BranchRegistration {
    /// The flat string map HTTP sends.
    pub(crate) fn to_map(&self) -> Result<BTreeMap<String, String>> {
        let mut m = self.fields.clone();
        m.insert("gid".to_owned(), self.gid.clone());
        m.insert("trans_type".to_owned(), self.trans_type.to_owned());
        m.insert("branch_id".to_owned(), self.branch_id.clone());
        let data = String::from_utf8(self.data.clone()).map_err(|_| {
            Error::InvalidArgument(format!(
                "data of branch {} of {} is not UTF-8; the HTTP transport carries it as a string",
                self.branch_id, self.gid
            ))
        })?;
        m.insert("data".to_owned(), data);
        Ok(m)
    }
}

/// The stored state of a workflow, as prepareWorkflow returns it (spec §4.7).
#[derive(Debug, Clone, Default)]
pub(crate) struct Progresses {
    pub(crate) status: String,
    pub(crate) rollback_reason: String,
    /// Base64 of the workflow's result (HTTP only; DTM's gRPC reply leaves it empty).
    pub(crate) result: String,
    pub(crate) progresses: Vec<Progress>,
}

/// One recorded workflow step.
#[derive(Debug, Clone, Default)]
pub(crate) struct Progress {
    pub(crate) branch_id: String,
    pub(crate) op: String,
    pub(crate) status: String,
    pub(crate) data: Vec<u8>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ProgressesJson {
    pub(crate) transaction: Option<TransactionJson>,
    pub(crate) progresses: Option<Vec<ProgressJson>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct TransactionJson {
    pub(crate) status: Option<String>,
    pub(crate) rollback_reason: Option<String>,
    pub(crate) result: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ProgressJson {
    pub(crate) status: Option<String>,
    pub(crate) bin_data: Option<String>,
    pub(crate) branch_id: Option<String>,
    pub(crate) op: Option<String>,
}

/// Implements the option setters shared by every transaction builder, over a `req: TransRequest` field.
macro_rules! option_setters {
    ($ty:ty) => {
        impl $ty {
            /// Process submit synchronously and report the final result (spec §4.3).
            #[must_use]
            pub fn wait_result(mut self, wait: bool) -> Self {
                self.req.options.wait_result = wait;
                self
            }

            /// Seconds until the transaction times out.
            #[must_use]
            pub fn timeout_to_fail(mut self, secs: i64) -> Self {
                self.req.options.timeout_to_fail = secs;
                self
            }

            /// Timeout in seconds of each branch call.
            #[must_use]
            pub fn request_timeout(mut self, secs: i64) -> Self {
                self.req.options.request_timeout = secs;
                self
            }

            /// Base retry interval in seconds.
            #[must_use]
            pub fn retry_interval(mut self, secs: i64) -> Self {
                self.req.options.retry_interval = secs;
                self
            }

            /// A header (gRPC: metadata entry) sent with every branch call.
            #[must_use]
            pub fn branch_header(
                mut self,
                name: impl Into<String>,
                value: impl Into<String>,
            ) -> Self {
                self.req
                    .options
                    .branch_headers
                    .insert(name.into(), value.into());
                self
            }

            /// Replaces all options at once.
            #[must_use]
            pub fn options(mut self, options: $crate::model::TransOptions) -> Self {
                self.req.options = options;
                self
            }

            /// The global transaction id.
            pub fn gid(&self) -> &str {
                &self.req.gid
            }
        }
    };
}

pub(crate) use option_setters;

/// Serializes a branch body as JSON.
pub(crate) fn to_json_bytes<T: Serialize + ?Sized>(what: &str, body: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(body).map_err(|e| Error::json(format!("encoding {what}"), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trans_json_omits_defaults_and_keeps_options() {
        let mut req = TransRequest {
            gid: "g1".to_owned(),
            trans_type: SAGA,
            steps: vec![BTreeMap::from([(
                "action".to_owned(),
                "http://a".to_owned(),
            )])],
            payloads: vec![b"{\"amount\":30}".to_vec()],
            ..TransRequest::default()
        };
        req.options.retry_limit = 3;
        req.options
            .branch_headers
            .insert("test_header".to_owned(), "yes".to_owned());
        let v = serde_json::to_value(req.to_json().unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "gid": "g1", "trans_type": "saga", "protocol": "http",
                "steps": [{"action": "http://a"}], "payloads": ["{\"amount\":30}"],
                "retry_limit": 3, "branch_headers": {"test_header": "yes"},
            })
        );
        req.payloads = vec![vec![0xff]];
        assert!(matches!(req.to_json(), Err(Error::InvalidArgument(_))));
    }
}
