//! One validation for every protocol. HTTP, gRPC and JSON-RPC parse their wire format into the raw
//! inputs here ([`TransInput`], [`BranchInput`], [`TopicInput`]); `validate` turns each into the engine's
//! request or refuses it with an [`Invalid`] naming the field. Every check lives here once, so a bad input
//! gets the same refusal over every protocol (400 / `InvalidArgument` / JSON-RPC -32602) and on every
//! store: the bounds below are at most the narrowest column of any store.
//!
//! Bounds (documented in the README's API section):
//!
//! | input | bound |
//! |---|---|
//! | `gid`, `branch_id`, topic name | 1..=128 bytes |
//! | branch and callback URLs, subscriber URLs | 1024 bytes, well formed for the protocol |
//! | `steps`, `payloads` | 1000 entries |
//! | `branch_headers` | 64 headers, names up to 256 bytes, values up to 8 KiB, sendable as HTTP headers |
//! | `timeout_to_fail`, msg `custom_data.delay` | 0..=315,360,000 s (ten years) |
//! | `request_timeout` | 0..=3,600 s |
//! | `retry_interval` | 0..=86,400 s |
//! | `retry_limit` | 0..=1,000 |
//! | subscriber `remark` | 1024 bytes |

use std::collections::BTreeMap;
use std::fmt;

use crate::engine::{TxnRequest, validate_custom_data};
use crate::model::{BranchId, Gid, Protocol, TOPIC_SCHEME, TransOptions, TransType, limits};

/// A refused input: the field (its JSON name, whatever the protocol) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Invalid {
    /// The field, e.g. `steps[0].action` or `branch_headers`.
    pub field: String,
    /// What is wrong, e.g. "is longer than 1024 bytes".
    pub problem: String,
}

impl Invalid {
    fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "field '{}' {}", self.field, self.problem)
    }
}

type Checked<T> = Result<T, Invalid>;

/// A transaction request (prepare, submit, prepareWorkflow) as a protocol parsed it. Numbers are as sent,
/// so a negative or huge value is refused here with the field's name.
#[derive(Debug, Default)]
pub(crate) struct TransInput {
    pub gid: String,
    pub trans_type: String,
    pub steps: Vec<BTreeMap<String, String>>,
    pub payloads: Vec<Vec<u8>>,
    pub query_prepared: String,
    pub custom_data: String,
    /// Empty means HTTP.
    pub protocol: String,
    pub wait_result: bool,
    pub timeout_to_fail: i64,
    pub request_timeout: i64,
    pub retry_interval: i64,
    pub retry_limit: i64,
    pub branch_headers: BTreeMap<String, String>,
    pub concurrent: bool,
    pub rollback_reason: String,
    pub req_extra: BTreeMap<String, String>,
}

/// The gid of a request.
pub(crate) fn gid(raw: &str) -> Checked<Gid> {
    if raw.is_empty() {
        return Err(Invalid::new("gid", "is required"));
    }
    Gid::parse(raw).map_err(|e| Invalid::new("gid", format!("is invalid: {e}")))
}

/// The transaction type of a request.
pub(crate) fn trans_type(raw: &str) -> Checked<TransType> {
    if raw.is_empty() {
        return Err(Invalid::new("trans_type", "is required"));
    }
    raw.parse()
        .map_err(|e| Invalid::new("trans_type", format!("is invalid: {e}")))
}

fn bounded(field: &str, value: i64, max: i64) -> Checked<i64> {
    if value < 0 {
        return Err(Invalid::new(
            field,
            format!("must not be negative, got {value}"),
        ));
    }
    if value > max {
        return Err(Invalid::new(
            field,
            format!("must be at most {max}, got {value}"),
        ));
    }
    Ok(value)
}

fn short(field: &str, value: &str, max: usize) -> Checked<()> {
    if value.len() > max {
        return Err(Invalid::new(field, format!("is longer than {max} bytes")));
    }
    Ok(())
}

/// Which URL forms a field takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UrlKind {
    /// A branch of a transaction with this protocol.
    Branch(Protocol),
    /// A msg step's action: a branch URL, or `topic://name`.
    MsgAction(Protocol),
    /// A branch registered with registerBranch, whose transaction's protocol is not known here: any form a
    /// branch call can use.
    AnyBranch,
}

/// A branch URL must be callable: a bad one would fail every call of its transaction, forever. Empty means
/// "no call" (a saga step without compensation) and is allowed. Forms: `http(s)://host/...` (any
/// protocol), `discovery://service/...` (resolved through Kubernetes), and for gRPC (and JSON-RPC, which
/// falls back to gRPC) `host:port/package.Service/Method`.
fn url(field: &str, url: &str, kind: UrlKind) -> Checked<()> {
    if url.is_empty() {
        return Ok(());
    }
    short(field, url, limits::MAX_URL)?;
    let protocol = match kind {
        UrlKind::MsgAction(p) => {
            if let Some(topic) = url.strip_prefix(TOPIC_SCHEME) {
                return topic_name(field, topic);
            }
            Some(p)
        }
        UrlKind::Branch(p) => Some(p),
        UrlKind::AnyBranch => None,
    };
    if url.starts_with("http://") || url.starts_with("https://") {
        return match reqwest::Url::parse(url) {
            Ok(u) if u.host_str().is_some_and(|h| !h.is_empty()) => Ok(()),
            Ok(_) => Err(Invalid::new(field, "is an http URL without a host")),
            Err(e) => Err(Invalid::new(field, format!("is not a valid URL: {e}"))),
        };
    }
    if let Some(rest) = url.strip_prefix("discovery://") {
        return authority_and_path(field, rest, false);
    }
    // gRPC over TLS, whatever the transaction's protocol.
    if let Some(rest) = url.strip_prefix(crate::invoke::grpc::TLS_SCHEME) {
        return authority_and_path(field, rest, true);
    }
    if url.contains("://") {
        return Err(Invalid::new(
            field,
            "has an unsupported scheme (use http://, https://, grpcs:// or discovery://)",
        ));
    }
    match protocol {
        Some(Protocol::Http) => Err(Invalid::new(
            field,
            "is not an http(s) URL, which an HTTP transaction needs",
        )),
        _ => authority_and_path(field, url, true),
    }
}

/// `host[:port]/path`: a gRPC target (`needs_method`: the path names `package.Service/Method`).
fn authority_and_path(field: &str, rest: &str, needs_method: bool) -> Checked<()> {
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let authority_ok = !authority.is_empty()
        && authority
            .parse::<axum::http::uri::Authority>()
            .is_ok_and(|a| !a.host().is_empty());
    if !authority_ok {
        return Err(Invalid::new(
            field,
            "does not start with a valid host[:port]",
        ));
    }
    if needs_method {
        let method_ok = !path.is_empty()
            && path.contains('/')
            && format!("/{path}")
                .parse::<axum::http::uri::PathAndQuery>()
                .is_ok();
        if !method_ok {
            return Err(Invalid::new(
                field,
                "is not a gRPC target host:port/package.Service/Method",
            ));
        }
    }
    Ok(())
}

/// Every branch header must be sendable: a bad name or value would fail every branch call, forever.
fn headers(headers: &BTreeMap<String, String>) -> Checked<()> {
    const FIELD: &str = "branch_headers";
    if headers.len() > limits::MAX_HEADERS {
        return Err(Invalid::new(
            FIELD,
            format!("has more than {} headers", limits::MAX_HEADERS),
        ));
    }
    for (name, value) in headers {
        let problem = if name.len() > limits::MAX_HEADER_NAME {
            format!(
                "has a header name longer than {} bytes",
                limits::MAX_HEADER_NAME
            )
        } else if value.len() > limits::MAX_HEADER_VALUE {
            format!(
                "has a value of '{name}' longer than {} bytes",
                limits::MAX_HEADER_VALUE
            )
        } else if axum::http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            format!("has '{name}', which is not a valid header name")
        } else if axum::http::HeaderValue::from_str(value).is_err() {
            format!("has a value of '{name}' that is not a valid header value")
        } else {
            continue;
        };
        return Err(Invalid::new(FIELD, problem));
    }
    Ok(())
}

fn topic_name(field: &str, topic: &str) -> Checked<()> {
    if topic.is_empty() {
        return Err(Invalid::new(field, "names no topic"));
    }
    if topic.len() > limits::MAX_TOPIC {
        return Err(Invalid::new(
            field,
            format!("names a topic longer than {} bytes", limits::MAX_TOPIC),
        ));
    }
    Ok(())
}

impl TransInput {
    /// Validates and converts into an engine request.
    pub(crate) fn validate(self) -> Checked<TxnRequest> {
        let gid = gid(&self.gid)?;
        let trans_type = trans_type(&self.trans_type)?;
        let protocol = if self.protocol.is_empty() {
            Protocol::Http
        } else {
            self.protocol
                .parse()
                .map_err(|e| Invalid::new("protocol", format!("is invalid: {e}")))?
        };
        let timeout_to_fail = bounded(
            "timeout_to_fail",
            self.timeout_to_fail,
            limits::MAX_TIMEOUT_SECS,
        )?;
        let request_timeout = bounded(
            "request_timeout",
            self.request_timeout,
            limits::MAX_REQUEST_TIMEOUT_SECS,
        )?;
        let retry_interval = bounded(
            "retry_interval",
            self.retry_interval,
            limits::MAX_RETRY_INTERVAL_SECS,
        )?;
        let retry_limit = bounded("retry_limit", self.retry_limit, limits::MAX_RETRY_LIMIT)?;
        let max_steps = limits::max_steps();
        if self.steps.len() > max_steps {
            return Err(Invalid::new(
                "steps",
                format!("has more than {max_steps} entries (max-steps)"),
            ));
        }
        if self.payloads.len() > max_steps {
            return Err(Invalid::new(
                "payloads",
                format!("has more than {max_steps} entries (max-steps)"),
            ));
        }
        let grpc_host = self
            .query_prepared
            .strip_prefix(crate::invoke::grpc::TLS_SCHEME)
            .unwrap_or(&self.query_prepared);
        if trans_type == TransType::Workflow
            && protocol != Protocol::Http
            && !grpc_host.is_empty()
            && !grpc_host.contains("://")
        {
            // A gRPC workflow is resumed through `workflow.Workflow/Execute` on this host (over TLS with
            // `grpcs://host:port`).
            short("query_prepared", &self.query_prepared, limits::MAX_URL)?;
            authority_and_path("query_prepared", grpc_host, false)?;
        } else {
            url(
                "query_prepared",
                &self.query_prepared,
                UrlKind::Branch(protocol),
            )?;
        }
        headers(&self.branch_headers)?;
        for (i, step) in self.steps.iter().enumerate() {
            for (k, v) in step {
                let kind = match (trans_type, k.as_str()) {
                    // The legacy `data` entry is a body, not a URL.
                    (_, "data") => continue,
                    (TransType::Msg, "action") => UrlKind::MsgAction(protocol),
                    _ => UrlKind::Branch(protocol),
                };
                url(&format!("steps[{i}].{k}"), v, kind)?;
            }
        }
        validate_custom_data(trans_type, &self.custom_data, self.steps.len())
            .map_err(|e| Invalid::new("custom_data", format!("is invalid: {e}")))?;
        Ok(TxnRequest {
            gid,
            trans_type,
            steps: self.steps,
            payloads: self.payloads,
            query_prepared: self.query_prepared,
            custom_data: self.custom_data,
            protocol,
            options: TransOptions {
                wait_result: self.wait_result,
                timeout_to_fail,
                request_timeout,
                retry_interval,
                branch_headers: self.branch_headers,
                retry_limit,
                retry_count: 0,
                concurrent: self.concurrent,
                ..TransOptions::default()
            },
            rollback_reason: self.rollback_reason,
            req_extra: self.req_extra,
        })
    }
}

/// A registerBranch request as a protocol parsed it.
#[derive(Debug, Default)]
pub(crate) struct BranchInput {
    pub gid: String,
    pub trans_type: String,
    pub branch_id: String,
    pub data: Vec<u8>,
    /// The other fields (`url`, `confirm`, `cancel`, workflow `op` and `status`, ...).
    pub fields: BTreeMap<String, String>,
}

/// A validated registerBranch request.
pub(crate) struct BranchRequest {
    pub gid: Gid,
    pub trans_type: TransType,
    pub branch_id: BranchId,
    pub data: Vec<u8>,
    pub fields: BTreeMap<String, String>,
}

impl BranchInput {
    /// Validates a registerBranch request.
    pub(crate) fn validate(self) -> Checked<BranchRequest> {
        let gid = gid(&self.gid)?;
        let trans_type = trans_type(&self.trans_type)?;
        if self.branch_id.is_empty() {
            return Err(Invalid::new("branch_id", "is required"));
        }
        short("branch_id", &self.branch_id, limits::MAX_BRANCH_ID)?;
        for k in ["confirm", "cancel", "url"] {
            if let Some(v) = self.fields.get(k) {
                url(k, v, UrlKind::AnyBranch)?;
            }
        }
        Ok(BranchRequest {
            gid,
            trans_type,
            branch_id: BranchId::new(self.branch_id),
            data: self.data,
            fields: self.fields,
        })
    }
}

/// A subscribe/unsubscribe/deleteTopic request as a protocol parsed it (`url` and `remark` empty for
/// deleteTopic).
#[derive(Debug, Default)]
pub(crate) struct TopicInput {
    pub topic: String,
    pub url: String,
    pub remark: String,
}

impl TopicInput {
    /// Validates the topic name only (deleteTopic).
    pub(crate) fn validate_topic(&self) -> Checked<()> {
        if self.topic.is_empty() {
            return Err(Invalid::new("topic", "is required"));
        }
        short("topic", &self.topic, limits::MAX_TOPIC)
    }

    /// Validates a subscription (subscribe/unsubscribe): the topic, a subscriber URL that a msg branch
    /// can call, and the remark.
    pub(crate) fn validate(&self) -> Checked<()> {
        self.validate_topic()?;
        if self.url.is_empty() {
            return Err(Invalid::new("url", "is required"));
        }
        url("url", &self.url, UrlKind::AnyBranch)?;
        short("remark", &self.remark, limits::MAX_REMARK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saga(edit: impl FnOnce(&mut TransInput)) -> Checked<TxnRequest> {
        let mut input = TransInput {
            gid: "g".to_owned(),
            trans_type: "saga".to_owned(),
            ..TransInput::default()
        };
        edit(&mut input);
        input.validate()
    }

    fn step(action: &str) -> BTreeMap<String, String> {
        BTreeMap::from([("action".to_owned(), action.to_owned())])
    }

    #[test]
    fn every_bound_is_checked_at_its_maximum_and_one_past() {
        type Edit = fn(&mut TransInput, i64);
        let cases: [(&str, i64, Edit); 4] = [
            ("timeout_to_fail", limits::MAX_TIMEOUT_SECS, |t, v| {
                t.timeout_to_fail = v;
            }),
            (
                "request_timeout",
                limits::MAX_REQUEST_TIMEOUT_SECS,
                |t, v| {
                    t.request_timeout = v;
                },
            ),
            ("retry_interval", limits::MAX_RETRY_INTERVAL_SECS, |t, v| {
                t.retry_interval = v;
            }),
            ("retry_limit", limits::MAX_RETRY_LIMIT, |t, v| {
                t.retry_limit = v;
            }),
        ];
        for (field, max, edit) in cases {
            assert!(saga(|t| edit(t, max)).is_ok(), "{field} = max");
            for bad in [max + 1, -1, i64::MAX, i64::MIN] {
                let err = saga(|t| edit(t, bad)).unwrap_err();
                assert_eq!(err.field, field, "{field} = {bad}: {err}");
            }
        }
        let many = vec![step("http://a/b"); limits::MAX_STEPS];
        assert!(saga(|t| t.steps = many.clone()).is_ok());
        let mut more = many;
        more.push(step("http://a/b"));
        assert_eq!(saga(|t| t.steps = more).unwrap_err().field, "steps");
        let long_gid = "g".repeat(Gid::MAX_LEN);
        assert!(saga(|t| t.gid = long_gid.clone()).is_ok());
        let longer = format!("{long_gid}g");
        assert_eq!(saga(|t| t.gid = longer).unwrap_err().field, "gid");
        let url_at_max = format!("http://a/{}", "x".repeat(limits::MAX_URL - 9));
        assert_eq!(url_at_max.len(), limits::MAX_URL);
        assert!(saga(|t| t.steps = vec![step(&url_at_max)]).is_ok());
        let url_past = format!("{url_at_max}x");
        let err = saga(|t| t.steps = vec![step(&url_past)]).unwrap_err();
        assert_eq!(err.field, "steps[0].action");
    }

    #[test]
    fn urls_must_be_callable_by_the_protocol() {
        let http = |u: &str| saga(|t| t.steps = vec![step(u)]);
        let grpc = |u: &str| {
            saga(|t| {
                t.protocol = "grpc".to_owned();
                t.steps = vec![step(u)];
            })
        };
        for ok in [
            "http://localhost:8081/api/busi/TransOut",
            "https://pay.example/x?y=1",
            "discovery://orders/api/busi/TransOut",
            "",
        ] {
            assert!(http(ok).is_ok(), "{ok}");
        }
        for bad in [
            "::::",
            "localhost:8081/busi.Busi/TransOut",
            "http://",
            "http://[::1",
            "ftp://x/y",
            "topic://t",
        ] {
            assert_eq!(http(bad).unwrap_err().field, "steps[0].action", "{bad}");
        }
        for ok in [
            "localhost:58081/busi.Busi/TransOut",
            "grpcs://busi.shop.svc:443/busi.Busi/TransOut",
            "http://localhost:8081/api/busi/TransOut",
        ] {
            assert!(grpc(ok).is_ok(), "{ok}");
        }
        for bad in [
            "::::",
            "localhost:58081",
            "localhost:58081/",
            "/busi.Busi/X",
            "grpcs://busi:443",
            "grpcs:///busi.Busi/X",
        ] {
            assert!(grpc(bad).is_err(), "{bad}");
        }
        let msg = |u: &str| {
            let mut t = TransInput {
                gid: "g".to_owned(),
                trans_type: "msg".to_owned(),
                steps: vec![step(u)],
                ..TransInput::default()
            };
            t.query_prepared = "http://a/q".to_owned();
            t.validate()
        };
        assert!(msg("topic://orders").is_ok());
        assert!(msg("topic://").is_err());
        assert!(msg(&format!("topic://{}", "t".repeat(limits::MAX_TOPIC + 1))).is_err());
    }

    #[test]
    fn headers_are_bounded_and_sendable() {
        let with = |h: BTreeMap<String, String>| saga(|t| t.branch_headers = h);
        assert!(with(BTreeMap::from([("X-Trace".to_owned(), "a b".to_owned())])).is_ok());
        for bad in [
            BTreeMap::from([("bad header".to_owned(), "x".to_owned())]),
            BTreeMap::from([(String::new(), "x".to_owned())]),
            BTreeMap::from([("x".to_owned(), "line\nbreak".to_owned())]),
            BTreeMap::from([("x".to_owned(), "v".repeat(limits::MAX_HEADER_VALUE + 1))]),
            (0..=limits::MAX_HEADERS)
                .map(|i| (format!("h{i}"), "v".to_owned()))
                .collect(),
        ] {
            assert_eq!(with(bad).unwrap_err().field, "branch_headers");
        }
    }

    #[test]
    fn topics_and_branches() {
        let t = |topic: &str, url: &str, remark: &str| {
            TopicInput {
                topic: topic.to_owned(),
                url: url.to_owned(),
                remark: remark.to_owned(),
            }
            .validate()
        };
        assert!(t(&"t".repeat(limits::MAX_TOPIC), "http://a/b", "").is_ok());
        assert_eq!(
            t(&"t".repeat(limits::MAX_TOPIC + 1), "http://a/b", "")
                .unwrap_err()
                .field,
            "topic"
        );
        let long_url = format!("http://a/{}", "x".repeat(limits::MAX_URL));
        assert_eq!(t("t", &long_url, "").unwrap_err().field, "url");
        assert_eq!(t("t", "", "").unwrap_err().field, "url");
        assert_eq!(
            t("t", "http://a/b", &"r".repeat(limits::MAX_REMARK + 1))
                .unwrap_err()
                .field,
            "remark"
        );
        let b = |id: &str| {
            BranchInput {
                gid: "g".to_owned(),
                trans_type: "tcc".to_owned(),
                branch_id: id.to_owned(),
                ..BranchInput::default()
            }
            .validate()
        };
        assert!(b(&"1".repeat(limits::MAX_BRANCH_ID)).is_ok());
        assert_eq!(
            b(&"1".repeat(limits::MAX_BRANCH_ID + 1))
                .err()
                .map(|e| e.field),
            Some("branch_id".to_owned())
        );
    }
}
