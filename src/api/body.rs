//! Parsing request bodies and query strings into engine requests, with 400s that name the field.
//! Unknown JSON keys are ignored (as DTM does); `null` counts as "not given" (Go SDKs send nil slices/maps
//! as `null`).

use std::collections::{BTreeMap, HashMap};

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::http::{HeaderName, HeaderValue};
use serde::{Deserialize, Deserializer};

use super::{Error, MAX_BODY_BYTES, Result};
use crate::engine::{TxnRequest, validate_custom_data};
use crate::model::{BranchId, Gid, Protocol, TransOptions, TransType};

/// Longest URL accepted for a branch or a callback (the store column width).
const MAX_URL: usize = 1024;

fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// The transaction JSON of prepare/submit/abort/prepareWorkflow (spec §3).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct TransBody {
    #[serde(deserialize_with = "nullable")]
    pub gid: String,
    #[serde(deserialize_with = "nullable")]
    pub trans_type: String,
    #[serde(deserialize_with = "nullable")]
    pub steps: Vec<BTreeMap<String, String>>,
    #[serde(deserialize_with = "nullable")]
    pub payloads: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    pub query_prepared: String,
    #[serde(deserialize_with = "nullable")]
    pub custom_data: String,
    #[serde(deserialize_with = "nullable")]
    pub protocol: String,
    #[serde(deserialize_with = "nullable")]
    pub wait_result: bool,
    #[serde(deserialize_with = "nullable")]
    pub timeout_to_fail: i64,
    #[serde(deserialize_with = "nullable")]
    pub request_timeout: i64,
    #[serde(deserialize_with = "nullable")]
    pub retry_interval: i64,
    #[serde(deserialize_with = "nullable")]
    pub retry_limit: i64,
    #[serde(deserialize_with = "nullable")]
    pub branch_headers: BTreeMap<String, String>,
    #[serde(deserialize_with = "nullable")]
    pub concurrent: bool,
    #[serde(deserialize_with = "nullable")]
    pub rollback_reason: String,
    #[serde(deserialize_with = "nullable")]
    pub req_extra: BTreeMap<String, String>,
}

/// Parses a JSON object, reporting the path of the first bad field.
pub(crate) fn parse_json<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T> {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        None => {
            return Err(Error::BadRequest(
                "request body is empty; expected a JSON object".to_owned(),
            ));
        }
        // serde would read a struct from an array too, and then blame a field like `[0]`.
        Some(b) if *b != b'{' => {
            let msg = "request body is not a valid JSON object: it must start with '{'";
            return Err(Error::BadRequest(msg.to_owned()));
        }
        Some(_) => {}
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        // A syntax error has no meaningful field path (serde_path_to_error reports `?` inside an object).
        if path == "." || !e.inner().is_data() {
            Error::BadRequest(format!(
                "request body is not a valid JSON object: {}",
                e.inner()
            ))
        } else {
            Error::BadRequest(format!("field '{path}': {}", e.inner()))
        }
    })
}

/// The raw request body. Unlike a bare `Bytes` extractor, its rejections (a body over
/// [`MAX_BODY_BYTES`], an unreadable body) answer in the API's JSON error format.
pub(crate) struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self> {
        let rejection = match Bytes::from_request(req, state).await {
            Ok(bytes) => return Ok(Self(bytes)),
            Err(rejection) => rejection,
        };
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            let limit = format!("request body is larger than the limit of {MAX_BODY_BYTES} bytes");
            return Err(Error::PayloadTooLarge(limit));
        }
        Err(Error::BadRequest(format!(
            "request body could not be read: {}",
            rejection.body_text()
        )))
    }
}

pub(crate) fn parse_gid(raw: &str) -> Result<Gid> {
    if raw.is_empty() {
        return Err(Error::BadRequest("field 'gid' is required".to_owned()));
    }
    Gid::parse(raw).map_err(|e| Error::BadRequest(format!("field 'gid': {e}")))
}

pub(crate) fn parse_trans_type(raw: &str) -> Result<TransType> {
    if raw.is_empty() {
        return Err(Error::BadRequest(
            "field 'trans_type' is required".to_owned(),
        ));
    }
    raw.parse()
        .map_err(|e| Error::BadRequest(format!("field 'trans_type': {e}")))
}

fn check_url(field: &str, url: &str) -> Result<()> {
    if url.len() > MAX_URL {
        return Err(Error::BadRequest(format!(
            "field '{field}' is longer than {MAX_URL} bytes"
        )));
    }
    Ok(())
}

/// Every branch header must be sendable: a bad name or value would fail every branch call, forever.
fn check_headers(headers: &BTreeMap<String, String>) -> Result<()> {
    for (name, value) in headers {
        let problem = if HeaderName::from_bytes(name.as_bytes()).is_err() {
            "is not a valid header name"
        } else if HeaderValue::from_str(value).is_err() {
            "has a value that is not a valid header value"
        } else {
            continue;
        };
        return Err(Error::BadRequest(format!(
            "field 'branch_headers': '{name}' {problem}"
        )));
    }
    Ok(())
}

impl TransBody {
    /// Validates and converts into an engine request.
    pub(crate) fn into_request(self) -> Result<TxnRequest> {
        let gid = parse_gid(&self.gid)?;
        let trans_type = parse_trans_type(&self.trans_type)?;
        let protocol = if self.protocol.is_empty() {
            Protocol::Http
        } else {
            self.protocol
                .parse()
                .map_err(|e| Error::BadRequest(format!("field 'protocol': {e}")))?
        };
        for (name, v) in [
            ("timeout_to_fail", self.timeout_to_fail),
            ("request_timeout", self.request_timeout),
            ("retry_interval", self.retry_interval),
            ("retry_limit", self.retry_limit),
        ] {
            if v < 0 {
                return Err(Error::BadRequest(format!(
                    "field '{name}' must not be negative, got {v}"
                )));
            }
        }
        check_url("query_prepared", &self.query_prepared)?;
        check_headers(&self.branch_headers)?;
        for (i, step) in self.steps.iter().enumerate() {
            for (k, v) in step {
                if k != "data" {
                    check_url(&format!("steps[{i}].{k}"), v)?;
                }
            }
        }
        validate_custom_data(trans_type, &self.custom_data, self.steps.len())
            .map_err(Error::BadRequest)?;
        Ok(TxnRequest {
            gid,
            trans_type,
            steps: self.steps,
            payloads: self.payloads.into_iter().map(String::into_bytes).collect(),
            query_prepared: self.query_prepared,
            custom_data: self.custom_data,
            protocol,
            options: TransOptions {
                wait_result: self.wait_result,
                timeout_to_fail: self.timeout_to_fail,
                request_timeout: self.request_timeout,
                retry_interval: self.retry_interval,
                branch_headers: self.branch_headers,
                retry_limit: self.retry_limit,
                retry_count: 0,
                concurrent: self.concurrent,
                ..TransOptions::default()
            },
            rollback_reason: self.rollback_reason,
            req_extra: self.req_extra,
        })
    }
}

/// A registerBranch body: a flat object whose values are all strings.
pub(crate) struct RegisterBody {
    pub gid: Gid,
    pub trans_type: TransType,
    pub branch_id: BranchId,
    pub data: Vec<u8>,
    pub fields: BTreeMap<String, String>,
}

pub(crate) fn parse_register(bytes: &[u8]) -> Result<RegisterBody> {
    let map: serde_json::Map<String, serde_json::Value> = parse_json(bytes)?;
    let mut fields = BTreeMap::new();
    for (k, v) in map {
        match v {
            serde_json::Value::String(s) => {
                fields.insert(k, s);
            }
            serde_json::Value::Null => {}
            other => {
                return Err(Error::BadRequest(format!(
                    "field '{k}' must be a string (registerBranch takes string values only), got {other}"
                )));
            }
        }
    }
    let get = |k: &str| fields.get(k).cloned().unwrap_or_default();
    let gid = parse_gid(&get("gid"))?;
    let trans_type = parse_trans_type(&get("trans_type"))?;
    let branch_id = get("branch_id");
    if branch_id.is_empty() || branch_id.len() > 128 {
        return Err(Error::BadRequest(
            "field 'branch_id' is required (at most 128 bytes)".to_owned(),
        ));
    }
    for k in ["confirm", "cancel", "url"] {
        check_url(k, &get(k))?;
    }
    Ok(RegisterBody {
        gid,
        trans_type,
        branch_id: BranchId::new(branch_id),
        data: get("data").into_bytes(),
        fields,
    })
}

/// A query parameter parsed as a number, with a 400 naming it when it is not one.
pub(crate) fn query_num<T: std::str::FromStr>(
    q: &HashMap<String, String>,
    name: &str,
    default: T,
) -> Result<T> {
    match q.get(name).filter(|v| !v.is_empty()) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| {
            Error::BadRequest(format!(
                "query parameter '{name}' must be a number, got '{v}'"
            ))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_fields_are_named() {
        let err = parse_json::<TransBody>(br#"{"gid":"g","timeout_to_fail":"x"}"#).unwrap_err();
        assert!(err.to_string().contains("timeout_to_fail"), "{err}");
        let err = parse_json::<TransBody>(br#"{"gid":"g","steps":[{"action":1}]}"#).unwrap_err();
        assert!(err.to_string().contains("steps[0].action"), "{err}");
        let err = parse_json::<TransBody>(b"{not json").unwrap_err();
        assert!(err.to_string().contains("not a valid JSON"), "{err}");
        let err = parse_json::<TransBody>(br#"{"gid":"g","#).unwrap_err();
        assert!(err.to_string().contains("not a valid JSON"), "{err}");
        let err = parse_json::<TransBody>(br#"["g","saga"]"#).unwrap_err();
        assert!(err.to_string().contains("not a valid JSON object"), "{err}");
        let err = parse_json::<TransBody>(b"").unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
    }

    #[test]
    fn nulls_and_unknown_keys_are_accepted() {
        let body: TransBody =
            parse_json(br#"{"gid":"g","trans_type":"saga","steps":null,"payloads":null,"branch_headers":null,"x":1}"#)
                .unwrap();
        let req = body.into_request().unwrap();
        assert!(req.steps.is_empty());
        assert_eq!(req.protocol, Protocol::Http);
    }

    #[test]
    fn missing_or_unknown_required_fields_are_named() {
        let err = parse_json::<TransBody>(br#"{"trans_type":"saga"}"#)
            .unwrap()
            .into_request()
            .unwrap_err();
        assert!(err.to_string().contains("'gid'"), "{err}");
        let err = parse_json::<TransBody>(br#"{"gid":"g","trans_type":"sag"}"#)
            .unwrap()
            .into_request()
            .unwrap_err();
        assert!(err.to_string().contains("trans_type"), "{err}");
        let err = parse_json::<TransBody>(br#"{"gid":"g","trans_type":"saga","retry_limit":-1}"#)
            .unwrap()
            .into_request()
            .unwrap_err();
        assert!(err.to_string().contains("retry_limit"), "{err}");
    }

    #[test]
    fn branch_headers_must_be_sendable() {
        let parse = |headers: &str| {
            let body = format!(r#"{{"gid":"g","trans_type":"saga","branch_headers":{headers}}}"#);
            parse_json::<TransBody>(body.as_bytes())
                .unwrap()
                .into_request()
        };
        assert!(parse(r#"{"test_header":"test","X-Trace":"a b"}"#).is_ok());
        for bad in [
            r#"{"bad header":"x"}"#,
            r#"{"":"x"}"#,
            r#"{"x":"line\nbreak"}"#,
        ] {
            let err = parse(bad).unwrap_err();
            assert!(err.to_string().contains("branch_headers"), "{bad}: {err}");
        }
    }

    #[test]
    fn register_branch_takes_string_values_only() {
        let err = parse_register(br#"{"gid":"g","trans_type":"tcc","branch_id":"01","x":1}"#)
            .err()
            .unwrap();
        assert!(err.to_string().contains("'x'"), "{err}");
        let ok = parse_register(
            br#"{"gid":"g","trans_type":"tcc","branch_id":"01","data":"d","confirm":"u"}"#,
        )
        .unwrap();
        assert_eq!(ok.data, b"d");
        assert_eq!(ok.fields["confirm"], "u");
    }
}
