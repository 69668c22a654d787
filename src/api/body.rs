//! Parsing request bodies and query strings into engine requests, with 400s that name the field.
//! Unknown JSON keys are ignored (as DTM does); `null` counts as "not given" (Go SDKs send nil slices/maps
//! as `null`).

use std::collections::{BTreeMap, HashMap};

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::{Deserialize, Deserializer};

use super::request::{self, BranchInput, BranchRequest, TransInput};
use super::{Error, MAX_BODY_BYTES, Result};
use crate::engine::TxnRequest;
use crate::model::{Gid, TransType};

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
    Ok(request::gid(raw)?)
}

pub(crate) fn parse_trans_type(raw: &str) -> Result<TransType> {
    Ok(request::trans_type(raw)?)
}

impl TransBody {
    /// The raw input of the one validation.
    pub(crate) fn into_input(self) -> TransInput {
        TransInput {
            gid: self.gid,
            trans_type: self.trans_type,
            steps: self.steps,
            payloads: self.payloads.into_iter().map(String::into_bytes).collect(),
            query_prepared: self.query_prepared,
            custom_data: self.custom_data,
            protocol: self.protocol,
            wait_result: self.wait_result,
            timeout_to_fail: self.timeout_to_fail,
            request_timeout: self.request_timeout,
            retry_interval: self.retry_interval,
            retry_limit: self.retry_limit,
            branch_headers: self.branch_headers,
            concurrent: self.concurrent,
            rollback_reason: self.rollback_reason,
            req_extra: self.req_extra,
        }
    }

    /// Validates and converts into an engine request.
    pub(crate) fn into_request(self) -> Result<TxnRequest> {
        Ok(self.into_input().validate()?)
    }
}

pub(crate) fn parse_register(bytes: &[u8]) -> Result<BranchRequest> {
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
    let take =
        |fields: &mut BTreeMap<String, String>, k: &str| fields.remove(k).unwrap_or_default();
    let input = BranchInput {
        gid: take(&mut fields, "gid"),
        trans_type: take(&mut fields, "trans_type"),
        branch_id: take(&mut fields, "branch_id"),
        data: take(&mut fields, "data").into_bytes(),
        fields,
    };
    Ok(input.validate()?)
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
        assert_eq!(req.protocol, crate::model::Protocol::Http);
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
    fn register_branch_takes_string_values_only() {
        let err = parse_register(br#"{"gid":"g","trans_type":"tcc","branch_id":"01","x":1}"#)
            .err()
            .unwrap();
        assert!(err.to_string().contains("'x'"), "{err}");
        let ok = parse_register(
            br#"{"gid":"g","trans_type":"tcc","branch_id":"01","data":"d","confirm":"http://u/c"}"#,
        )
        .unwrap();
        assert_eq!(ok.data, b"d");
        assert_eq!(ok.fields["confirm"], "http://u/c");
    }
}
