//! The HTTP API: DTM's routes under `/api/dtmsvr` (spec §4), `/api/ping`, `/api/ready`, `/api/metrics`, the
//! admin page (admin.rs; optionally under a base path), and braid's own `/api/braid/cluster` (membership and partition ownership as this replica sees
//! them).
//! Every error becomes a response in exactly one place ([`Error`]'s `IntoResponse`).

pub mod admin;
pub mod auth;
mod body;
mod dtmsvr;
pub mod grpc;
mod jsonrpc;
pub mod limit;
pub mod render;
mod request;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use serde_json::json;
use tower_http::catch_panic::CatchPanicLayer;

use crate::cluster::keeper::KeeperHandle;
use crate::engine::{self, Engine};
use crate::metrics::Metrics;

/// Largest request body accepted (bigger ones get 413).
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The engine.
    pub engine: Engine,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// The lease keeper (for `/api/braid/cluster`).
    pub cluster: KeeperHandle,
    /// Besides the store, what `/api/ready` waits for: (what, flag that turns true when ready).
    gates: Vec<(&'static str, Arc<AtomicBool>)>,
    /// Tokens and roles.
    pub(crate) auth: auth::Auth,
    /// Whether and where the admin page is served.
    pub(crate) admin: admin::AdminUi,
}

impl AppState {
    /// State for the HTTP and gRPC APIs; clone it to share between them.
    pub fn new(engine: Engine, metrics: Arc<Metrics>, cluster: KeeperHandle) -> Self {
        Self {
            engine,
            metrics,
            cluster,
            gates: Vec::new(),
            auth: auth::Auth::default(),
            admin: admin::AdminUi::default(),
        }
    }

    /// Serves the admin page as `admin` says (without it: on, at the root).
    #[must_use]
    pub fn with_admin_ui(mut self, admin: admin::AdminUi) -> Self {
        self.admin = admin;
        self
    }

    /// Checks tokens and roles with `auth` (without it, every request is admin).
    #[must_use]
    pub fn with_auth(mut self, auth: auth::Auth) -> Self {
        self.auth = auth;
        self
    }

    /// Makes `/api/ready` answer 503 until `flag` is true (`what` names it in the reply).
    #[must_use]
    pub fn with_ready_gate(mut self, what: &'static str, flag: Arc<AtomicBool>) -> Self {
        self.gates.push((what, flag));
        self
    }
}

/// API errors; each has one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Malformed input: 400, the message names the field.
    #[error("{0}")]
    BadRequest(String),
    /// No such thing: 404.
    #[error("{0}")]
    NotFound(String),
    /// The request body is over [`MAX_BODY_BYTES`], or what it asks to store is over the store's batch
    /// limit: 413.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// No token, or a wrong one: 401.
    #[error("{0}")]
    Unauthorized(String),
    /// A request a browser made for another site, or a token whose role does not reach: 403.
    #[error("{0}")]
    Forbidden(String),
    /// A body in a media type the route does not take: 415.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// DTM FAILURE: 409.
    #[error("{0}")]
    Failure(String),
    /// DTM ONGOING: 425.
    #[error("{0}")]
    Ongoing(String),
    /// The store is down: 503 (retry later; nothing was accepted).
    #[error("{0}")]
    Unavailable(String),
    /// Anything else: 500 with a generic message (details are logged).
    #[error("{0}")]
    Internal(String),
}

impl Error {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Failure(_) => StatusCode::CONFLICT,
            Self::Ongoing(_) => StatusCode::TOO_EARLY,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<engine::Error> for Error {
    fn from(e: engine::Error) -> Self {
        match e {
            engine::Error::BadRequest(m) => Self::BadRequest(m),
            engine::Error::NotFound(m) => Self::NotFound(m),
            engine::Error::Failure(m) => Self::Failure(m),
            engine::Error::Ongoing(m) => Self::Ongoing(m),
            engine::Error::Pass(m) => Self::Internal(m),
            // Too big for the store whatever the load: the client must send less, so not a 503.
            engine::Error::Store(s @ engine::StoreError::TooLarge { .. }) => {
                Self::PayloadTooLarge(s.to_string())
            }
            engine::Error::Store(s) if s.is_retryable() => {
                tracing::warn!(error = %s, "store unavailable");
                Self::Unavailable("the store is unavailable; retry later".to_owned())
            }
            engine::Error::Store(s) => {
                tracing::error!(error = %s, "store error");
                Self::Internal("internal store error".to_owned())
            }
        }
    }
}

impl From<request::Invalid> for Error {
    fn from(e: request::Invalid) -> Self {
        Self::BadRequest(e.to_string())
    }
}

impl From<engine::StoreError> for Error {
    fn from(e: engine::StoreError) -> Self {
        engine::Error::Store(e).into()
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let body = match &self {
            Self::Failure(m) => json!({"dtm_result": "FAILURE", "message": m}),
            Self::Ongoing(m) => json!({"dtm_result": "ONGOING", "message": m}),
            Self::BadRequest(m)
            | Self::Forbidden(m)
            | Self::Unauthorized(m)
            | Self::UnsupportedMediaType(m)
            | Self::NotFound(m)
            | Self::PayloadTooLarge(m)
            | Self::Unavailable(m)
            | Self::Internal(m) => {
                json!({"message": m})
            }
        };
        let mut response = (status, axum::Json(body)).into_response();
        if matches!(self, Self::PayloadTooLarge(_)) {
            // The rest of the body was not read, so the connection cannot carry another request: say so,
            // or a client that pools connections sends its next request into a closing socket.
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        response
    }
}

/// Every request parser and the validation on arbitrary bytes, for the `cargo fuzz` targets in `fuzz/`:
/// none may panic, whatever the input.
#[doc(hidden)]
pub fn fuzz_request_parsers(bytes: &[u8]) {
    use prost::Message as _;
    if let Ok(body) = body::parse_json::<body::TransBody>(bytes) {
        let _ = body.into_request();
    }
    let _ = body::parse_register(bytes);
    if let Ok(r) = crate::proto::dtmgimp::DtmRequest::decode(bytes) {
        let _ = grpc::to_request(r);
    }
    if let Ok(text) = std::str::from_utf8(bytes) {
        let (topic, url) = text.split_once('\n').unwrap_or((text, ""));
        let input = request::TopicInput {
            topic: topic.to_owned(),
            url: url.to_owned(),
            remark: String::new(),
        };
        let _ = input.validate();
    }
}

/// `Result` of handlers.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The whole HTTP router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .nest("/api/dtmsvr", dtmsvr::routes())
        .route("/api/json-rpc", axum::routing::post(jsonrpc::handle))
        .route(
            "/api/ping",
            any(|| async { axum::Json(json!({"msg": "pong"})) }),
        )
        .route("/api/ready", get(ready))
        .route("/api/metrics", get(metrics_text))
        .merge(state.admin.routes())
        .route("/api/braid/cluster", get(cluster_view))
        .route_layer(middleware::from_fn_with_state(state.clone(), track))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_role,
        ))
        .layer(middleware::from_fn(same_site_only))
        .fallback(|| async { Error::NotFound("no such route".to_owned()) })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(CatchPanicLayer::custom(|_| {
            Error::Internal("internal error".to_owned()).into_response()
        }))
        .with_state(state)
}

/// Refuses what a browser sends on behalf of another site (CSRF), before any handler runs:
/// - `Sec-Fetch-Site: cross-site` (browsers send it on every request, also on `<img>` and form posts);
/// - an `Origin` whose host differs from the request's `Host` (browsers send it on cross-origin POSTs);
/// - a body that is not JSON on the routes the admin page changes state with (`forceStop`,
///   `resetNextCronTime`): a cross-site form can only send text, form or multipart bodies.
///
/// SDKs and other servers send none of these headers and are not affected.
async fn same_site_only(req: Request, next: Next) -> Response {
    let headers = req.headers();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let forbidden = |why: &str| Error::Forbidden(why.to_owned()).into_response();
    if header("sec-fetch-site") == Some("cross-site") {
        return forbidden("cross-site requests are refused");
    }
    if let Some(origin) = header("origin") {
        let origin_host = origin.split_once("://").map_or(origin, |(_, h)| h);
        if origin == "null" || Some(origin_host) != header("host") {
            return forbidden("requests from another origin are refused");
        }
    }
    let path = req.uri().path();
    let json = header("content-type").is_some_and(|c| c.starts_with("application/json"));
    if req.method() == axum::http::Method::POST
        && (path.ends_with("/forceStop") || path.ends_with("/resetNextCronTime"))
        && !json
    {
        return Error::UnsupportedMediaType(
            "this route takes a JSON body (Content-Type: application/json)".to_owned(),
        )
        .into_response();
    }
    next.run(req).await
}

/// `GET /api/braid/cluster`: `{"node_id", "partitions", "members": [{"node_id", "partitions": [..]}]}`.
async fn cluster_view(State(state): State<AppState>) -> axum::Json<crate::cluster::ClusterView> {
    axum::Json(state.cluster.view())
}

/// Readiness (for a Kubernetes readiness probe): 200 once the store answers a ping within 2 s and every
/// gate (e.g. the first sync of the TransactionPolicies) is open; else 503 naming what is missing.
/// `/api/ping` stays the liveness check: it answers whenever the process serves HTTP.
async fn ready(State(state): State<AppState>) -> Response {
    let problem = match state.engine.ready(Duration::from_secs(2)).await {
        Err(problem) => Some(problem),
        Ok(()) => state
            .gates
            .iter()
            .find(|(_, flag)| !flag.load(Ordering::Acquire))
            .map(|(what, _)| format!("waiting for {what}")),
    };
    match problem {
        None => axum::Json(json!({"msg": "ready"})).into_response(),
        Some(m) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"message": m})),
        )
            .into_response(),
    }
}

async fn metrics_text(State(state): State<AppState>) -> impl IntoResponse {
    state.engine.refresh_store_gauges().await;
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.metrics.render(),
    )
}

/// Counts and times every request under DTM's metric names. `api` is the last literal segment of the route
/// template (`/topic/{name}` counts as `topic`): DTM uses the raw URI, but a topic name or a query string
/// would make the label unbounded.
async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let started = Instant::now();
    let response = next.run(req).await;
    let api = route
        .as_deref()
        .and_then(|r| {
            r.rsplit('/')
                .find(|seg| !seg.is_empty() && !seg.starts_with('{'))
        })
        .unwrap_or("unmatched")
        .to_lowercase();
    let status = if response.status().as_u16() >= 400 {
        "fail"
    } else {
        "ok"
    };
    state
        .metrics
        .server_process
        .with_label_values(&["http", &api, status])
        .inc();
    state
        .metrics
        .server_response_duration
        .with_label_values(&["http", &api])
        .observe(started.elapsed().as_secs_f64());
    response
}
