//! Axum integration (feature `axum`): extractors that read a branch call's DTM query parameters, and
//! `IntoResponse` for [`Error`] that answers the way the transaction manager reads results (spec §2).

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};

use crate::barrier::BranchBarrier;
use crate::error::Error;
use crate::query::BranchQuery;

/// Why a branch request was rejected: its query lacks the DTM parameters (HTTP 400).
#[derive(Debug)]
pub struct Rejection(pub Error);

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        json_response(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": self.0.to_string()}),
        )
    }
}

impl<S: Send + Sync> FromRequestParts<S> for BranchBarrier {
    type Rejection = Rejection;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        BranchBarrier::from_query_str(parts.uri.query().unwrap_or_default()).map_err(Rejection)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for BranchQuery {
    type Rejection = Rejection;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(BranchQuery::from_query_str(
            parts.uri.query().unwrap_or_default(),
        ))
    }
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response {
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// FAILURE → 409 `{"dtm_result":"FAILURE",...}`, ONGOING → 425, anything else → 500, as DTM's SDKs
/// answer, so a handler can return `braid_client::Result<_>`.
impl IntoResponse for Error {
    fn into_response(self) -> Response {
        match &self {
            Error::Failure(m) => json_response(
                StatusCode::CONFLICT,
                serde_json::json!({"dtm_result": "FAILURE", "message": m}),
            ),
            Error::Ongoing(m) => json_response(
                StatusCode::from_u16(425).unwrap_or(StatusCode::CONFLICT),
                serde_json::json!({"dtm_result": "ONGOING", "message": m}),
            ),
            other => json_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                serde_json::json!({"error": other.to_string()}),
            ),
        }
    }
}

/// `{"dtm_result":"SUCCESS"}` with 200: what a branch handler answers on success.
pub fn success() -> Response {
    json_response(StatusCode::OK, serde_json::json!({"dtm_result": "SUCCESS"}))
}
