//! The JSON-RPC 2.0 endpoint `POST /api/json-rpc` (spec §5). Always HTTP 200; errors in the envelope:
//! -32700 bad JSON, -32600 bad envelope, -32601 unknown method, -32901 FAILURE, -32902 ONGOING,
//! -32602 bad params, -32603 anything else. Methods: `newGid`, `prepare`, `submit`, `abort`, `registerBranch`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::body::{TransBody, parse_gid, parse_register, parse_trans_type};
use super::dtmsvr::submit_reply;
use super::{AppState, Error, MAX_BODY_BYTES};

fn reply(id: &Value, result: Value, error: Option<(i64, String)>) -> Json<Value> {
    let error = error.map_or(
        Value::Null,
        |(code, message)| json!({"code": code, "message": message}),
    );
    Json(json!({"jsonrpc": "2.0", "id": id, "result": result, "error": error}))
}

fn code_of(e: &Error) -> i64 {
    match e {
        Error::Failure(_) => -32901,
        Error::Ongoing(_) => -32902,
        Error::BadRequest(_) | Error::PayloadTooLarge(_) | Error::UnsupportedMediaType(_) => -32602,
        Error::Forbidden(_) | Error::Unauthorized(_) => -32600,
        Error::NotFound(_) | Error::Unavailable(_) | Error::Internal(_) => -32603,
    }
}

pub(crate) async fn handle(
    State(s): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    // Even a body that cannot be read (over the size limit) gets a JSON-RPC answer; the connection
    // closes after it, since the rest of the body was not read.
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            let message = if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                format!(
                    "invalid request: the body is larger than the limit of {MAX_BODY_BYTES} bytes"
                )
            } else {
                format!(
                    "invalid request: the body could not be read: {}",
                    rejection.body_text()
                )
            };
            let answer = reply(&Value::Null, Value::Null, Some((-32600, message)));
            return ([(header::CONNECTION, "close")], answer).into_response();
        }
    };
    handle_body(&s, &body).await.into_response()
}

async fn handle_body(s: &AppState, body: &[u8]) -> Json<Value> {
    let Ok(envelope) = serde_json::from_slice::<Value>(body) else {
        return reply(
            &Value::Null,
            Value::Null,
            Some((-32700, "parse error: the body is not JSON".to_owned())),
        );
    };
    let id = envelope.get("id").cloned().unwrap_or(Value::Null);
    let id_ok = match &id {
        Value::String(s) => !s.is_empty(),
        Value::Number(_) => true,
        _ => false,
    };
    if envelope.get("jsonrpc").and_then(Value::as_str) != Some("2.0") || !id_ok {
        return reply(
            &id,
            Value::Null,
            Some((
                -32600,
                "invalid request: need jsonrpc \"2.0\" and a non-empty id".to_owned(),
            )),
        );
    }
    let method = envelope
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let params = envelope.get("params").cloned().unwrap_or(Value::Null);
    let params_bytes = params.to_string().into_bytes();
    let outcome: Result<Value, Error> = match method {
        "newGid" => Ok(json!({"gid": s.engine.new_gid().as_str()})),
        "prepare" => {
            async {
                let req = super::body::parse_json::<TransBody>(&params_bytes)?.into_request()?;
                s.engine.prepare(req).await?;
                Ok(Value::Null)
            }
            .await
        }
        "submit" => {
            async {
                let req = super::body::parse_json::<TransBody>(&params_bytes)?.into_request()?;
                submit_reply(s.engine.submit(req).await?)?;
                Ok(Value::Null)
            }
            .await
        }
        "abort" => {
            async {
                let b: TransBody = super::body::parse_json(&params_bytes)?;
                let gid = parse_gid(&b.gid)?;
                let trans_type = parse_trans_type(&b.trans_type)?;
                submit_reply(s.engine.abort(&gid, trans_type, b.rollback_reason).await?)?;
                Ok(Value::Null)
            }
            .await
        }
        "registerBranch" => {
            async {
                let b = parse_register(&params_bytes)?;
                s.engine
                    .register_branch(&b.gid, b.trans_type, b.branch_id, b.data, &b.fields)
                    .await?;
                Ok(Value::Null)
            }
            .await
        }
        other => {
            return reply(
                &id,
                Value::Null,
                Some((-32601, format!("method not found: '{other}'"))),
            );
        }
    };
    match outcome {
        Ok(result) => reply(&id, result, None),
        Err(e) => {
            let code = code_of(&e);
            reply(&id, Value::Null, Some((code, e.to_string())))
        }
    }
}
