//! Load shedding in front of the HTTP, JSON-RPC and gRPC APIs: caps on the request body bytes held by
//! requests in progress and on the number of requests in progress.
//!
//! Invariants:
//! - A request over either cap is answered at once, before its body is read: HTTP 503 with `Retry-After`
//!   (JSON-RPC shares the HTTP router), gRPC `Unavailable`. Nothing of it reaches a handler.
//! - A body with a `Content-Length` is counted in full when the request is admitted (up to the body size
//!   limit, past which the API refuses it with 413 without reading it); a body without one (chunked, or
//!   HTTP/2 and gRPC streams) is counted frame by frame as it is read, and a request whose next frame does
//!   not fit is answered 503 / `Unavailable` as well.
//! - What a request counted is released when its handler has answered.
//! - `/api/ping`, `/api/ready` and `/api/metrics` are never refused, so probes and scrapes keep working
//!   under load.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::http::{HeaderMap, HeaderValue, Request, Response, Version, header};
use axum::response::IntoResponse;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service};

use super::Error;
use crate::metrics::Metrics;

/// Seconds a refused client is asked to wait (`Retry-After`).
const RETRY_AFTER_SECS: &str = "1";

/// Paths that are never refused: liveness, readiness and metrics.
const EXEMPT: [&str; 3] = ["/api/ping", "/api/ready", "/api/metrics"];

/// The caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitOptions {
    /// Most request body bytes held by requests in progress, over all listeners.
    pub max_inflight_bytes: u64,
    /// Most requests in progress at once, over all listeners.
    pub max_concurrent_requests: usize,
    /// The largest body a request may have (bigger ones are refused by the API with 413 before they
    /// are read, so at most this much of a declared length is counted).
    pub max_body_bytes: u64,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The in-flight byte cap is reached.
    InflightBytes,
    /// The concurrent request cap is reached.
    ConcurrentRequests,
}

impl Refusal {
    /// A fixed label for metrics.
    pub fn metric_label(self) -> &'static str {
        match self {
            Self::InflightBytes => "inflight_bytes",
            Self::ConcurrentRequests => "concurrent_requests",
        }
    }

    fn message(self) -> &'static str {
        match self {
            Self::InflightBytes => {
                "the server holds as many request bytes as it allows (max-inflight-bytes); retry later"
            }
            Self::ConcurrentRequests => {
                "the server runs as many requests as it allows (max-concurrent-requests); retry later"
            }
        }
    }
}

/// The shared counters of both caps; clone it to share between the listeners.
#[derive(Clone)]
pub struct Limiter {
    inner: Arc<Inner>,
}

struct Inner {
    bytes: Arc<Semaphore>,
    requests: Arc<Semaphore>,
    opts: LimitOptions,
    metrics: Arc<Metrics>,
}

impl Limiter {
    /// Counters for `opts`.
    pub fn new(opts: LimitOptions, metrics: Arc<Metrics>) -> Self {
        let bytes = usize::try_from(opts.max_inflight_bytes)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        let requests = opts.max_concurrent_requests.min(Semaphore::MAX_PERMITS);
        Self {
            inner: Arc::new(Inner {
                bytes: Arc::new(Semaphore::new(bytes)),
                requests: Arc::new(Semaphore::new(requests)),
                opts,
                metrics,
            }),
        }
    }

    /// The layer for the HTTP router (HTTP API and JSON-RPC): refusals are 503 with `Retry-After`.
    pub fn http_layer(&self) -> LimitLayer<axum::body::Body, axum::body::Body> {
        LimitLayer {
            limiter: self.clone(),
            transport: "http",
            wrap: axum::body::Body::new,
            refuse: http_refusal,
        }
    }

    /// The layer for the gRPC service: refusals are `Unavailable`.
    pub fn grpc_layer(&self) -> LimitLayer<tonic::body::Body, tonic::body::Body> {
        LimitLayer {
            limiter: self.clone(),
            transport: "grpc",
            wrap: tonic::body::Body::new,
            refuse: grpc_refusal,
        }
    }

    /// Admits a request with these headers, or says why not. Counts its declared body length at once.
    fn admit(&self, headers: &HeaderMap) -> Result<Ticket, Refusal> {
        let inner = &self.inner;
        let request = Arc::clone(&inner.requests)
            .try_acquire_owned()
            .map_err(|_| Refusal::ConcurrentRequests)?;
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let reserved = match declared {
            Some(0) => None,
            Some(n) => {
                let n = n.min(inner.opts.max_body_bytes);
                Some(self.take(n).ok_or(Refusal::InflightBytes)?)
            }
            // Counted as it is read; but with nothing left at all, it could not read one byte.
            None if inner.bytes.available_permits() == 0 => return Err(Refusal::InflightBytes),
            None => None,
        };
        let ticket = Ticket {
            limiter: self.clone(),
            counts_frames: declared.is_none(),
            held: Mutex::new(reserved),
            tripped: AtomicBool::new(false),
            _request: request,
        };
        inner.metrics.api_inflight_requests.inc();
        ticket.report();
        Ok(ticket)
    }

    /// Takes `n` byte permits if they are free.
    fn take(&self, n: u64) -> Option<OwnedSemaphorePermit> {
        let n = u32::try_from(n).ok()?;
        Arc::clone(&self.inner.bytes).try_acquire_many_owned(n).ok()
    }

    fn held_bytes(&self) -> u64 {
        let max = usize::try_from(self.inner.opts.max_inflight_bytes)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        (max - self.inner.bytes.available_permits().min(max)) as u64
    }
}

/// What an admitted request holds until it is answered.
struct Ticket {
    limiter: Limiter,
    /// The body has no declared length, so its frames are counted as they are read.
    counts_frames: bool,
    /// The byte permits taken so far.
    held: Mutex<Option<OwnedSemaphorePermit>>,
    /// A frame did not fit: the request is answered with a refusal whatever the handler said.
    tripped: AtomicBool,
    _request: OwnedSemaphorePermit,
}

impl Ticket {
    /// Counts a frame of `n` bytes; `false` (and tripped) when it does not fit.
    fn count(&self, n: usize) -> bool {
        if n == 0 {
            return true;
        }
        let Some(permit) = self.limiter.take(n as u64) else {
            self.tripped.store(true, Ordering::Release);
            return false;
        };
        if let Ok(mut held) = self.held.lock() {
            match held.as_mut() {
                Some(h) => h.merge(permit),
                None => *held = Some(permit),
            }
        }
        self.report();
        true
    }

    fn tripped(&self) -> bool {
        self.tripped.load(Ordering::Acquire)
    }

    fn report(&self) {
        let held = self.limiter.held_bytes();
        self.limiter
            .inner
            .metrics
            .api_inflight_bytes
            .set(i64::try_from(held).unwrap_or(i64::MAX));
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Ok(mut held) = self.held.lock() {
            drop(held.take());
        }
        self.limiter.inner.metrics.api_inflight_requests.dec();
        self.report();
    }
}

/// A request body whose frames are counted against the in-flight byte cap as they are read.
pub struct CountedBody<B> {
    inner: B,
    ticket: Arc<Ticket>,
}

/// The error a [`CountedBody`] ends with when a frame does not fit.
#[derive(Debug, thiserror::Error)]
#[error("{}", Refusal::InflightBytes.message())]
pub struct InflightBytesExceeded;

impl<B> Body for CountedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let n = frame.data_ref().map_or(0, Bytes::len);
                if this.ticket.count(n) {
                    Poll::Ready(Some(Ok(frame)))
                } else {
                    Poll::Ready(Some(Err(Box::new(InflightBytesExceeded))))
                }
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether a request has a body (a declared non-zero length, or a chunked one).
fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

/// `response` with `Connection: close` when `close`.
fn closing<RB>(mut response: Response<RB>, close: bool) -> Response<RB> {
    if close {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

fn http_refusal(why: Refusal) -> Response<axum::body::Body> {
    let mut response = Error::Unavailable(why.message().to_owned()).into_response();
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from_static(RETRY_AFTER_SECS),
    );
    response
}

fn grpc_refusal(why: Refusal) -> Response<tonic::body::Body> {
    let mut response = tonic::Status::unavailable(why.message()).into_http();
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from_static(RETRY_AFTER_SECS),
    );
    response
}

/// The tower layer of [`Limiter`] for one transport. `B` is the request body type of the wrapped service,
/// `RB` its response body type.
pub struct LimitLayer<B, RB> {
    limiter: Limiter,
    transport: &'static str,
    wrap: fn(CountedBody<B>) -> B,
    refuse: fn(Refusal) -> Response<RB>,
}

impl<B, RB> Clone for LimitLayer<B, RB> {
    fn clone(&self) -> Self {
        Self {
            limiter: self.limiter.clone(),
            transport: self.transport,
            wrap: self.wrap,
            refuse: self.refuse,
        }
    }
}

impl<S, B, RB> Layer<S> for LimitLayer<B, RB> {
    type Service = LimitService<S, B, RB>;

    fn layer(&self, inner: S) -> Self::Service {
        LimitService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`LimitLayer`] builds.
pub struct LimitService<S, B, RB> {
    inner: S,
    layer: LimitLayer<B, RB>,
}

impl<S: Clone, B, RB> Clone for LimitService<S, B, RB> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, RB> Service<Request<B>> for LimitService<S, B, RB>
where
    S: Service<Request<B>, Response = Response<RB>, Error = Infallible>,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<axum::BoxError>,
    RB: Send + 'static,
{
    type Response = Response<RB>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response<RB>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if EXEMPT.contains(&req.uri().path()) {
            return Box::pin(self.inner.call(req));
        }
        let layer = &self.layer;
        // A refused HTTP/1 request leaves its body unread, so its connection cannot carry another
        // request: say so, or a client would send its next request on a connection that is closing.
        let close = req.version() <= Version::HTTP_11 && has_body(req.headers());
        let ticket = match layer.limiter.admit(req.headers()) {
            Ok(ticket) => Arc::new(ticket),
            Err(why) => {
                layer
                    .limiter
                    .inner
                    .metrics
                    .api_rejected
                    .with_label_values(&[layer.transport, why.metric_label()])
                    .inc();
                tracing::debug!(
                    transport = layer.transport,
                    reason = why.metric_label(),
                    "request refused: load limit"
                );
                return Box::pin(std::future::ready(Ok(closing((layer.refuse)(why), close))));
            }
        };
        let req = if ticket.counts_frames {
            let wrap = layer.wrap;
            let counted = Arc::clone(&ticket);
            req.map(|inner| {
                wrap(CountedBody {
                    inner,
                    ticket: counted,
                })
            })
        } else {
            req
        };
        let answer = self.inner.call(req);
        let refuse = layer.refuse;
        let metrics = Arc::clone(&layer.limiter.inner.metrics);
        let transport = layer.transport;
        Box::pin(async move {
            let response = answer.await?;
            if ticket.tripped() {
                metrics
                    .api_rejected
                    .with_label_values(&[transport, Refusal::InflightBytes.metric_label()])
                    .inc();
                return Ok(closing(refuse(Refusal::InflightBytes), close));
            }
            drop(ticket);
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::routing::post;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    fn limiter(bytes: u64, requests: usize) -> Limiter {
        Limiter::new(
            LimitOptions {
                max_inflight_bytes: bytes,
                max_concurrent_requests: requests,
                max_body_bytes: 1000,
            },
            Arc::new(Metrics::new()),
        )
    }

    /// A router whose `/hold` handler reads its body, then waits until released.
    fn app(limiter: &Limiter, gate: Arc<tokio::sync::Notify>) -> Router {
        let hold = move |body: Bytes| {
            let gate = gate.clone();
            async move {
                gate.notified().await;
                body.len().to_string()
            }
        };
        Router::new()
            .route("/hold", post(hold))
            .route(
                "/echo",
                post(|body: Bytes| async move { body.len().to_string() }),
            )
            .route("/api/ping", post(|| async { "pong" }))
            .layer(limiter.http_layer())
    }

    fn post_req(path: &str, body: &'static [u8], declared: bool) -> Request<axum::body::Body> {
        let body = if declared {
            axum::body::Body::from(body)
        } else {
            // No Content-Length: a stream of one chunk.
            axum::body::Body::from_stream(futures::stream::iter([Ok::<_, Infallible>(
                Bytes::from_static(body),
            )]))
        };
        let mut req = Request::post(path).body(body).unwrap_or_default();
        if declared
            && let Ok(v) = HeaderValue::from_str(&req.body().size_hint().lower().to_string())
        {
            req.headers_mut().insert(header::CONTENT_LENGTH, v);
        }
        req
    }

    async fn text(r: Response<axum::body::Body>) -> String {
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Over the byte cap a request is refused with 503 + Retry-After, declared or streamed; ping is not;
    /// the bytes come back when the holder is answered.
    #[tokio::test]
    async fn bytes_over_the_cap_are_refused_until_released() {
        let limiter = limiter(100, 10);
        let gate = Arc::new(tokio::sync::Notify::new());
        let app = app(&limiter, gate.clone());
        let holder = tokio::spawn(app.clone().oneshot(post_req("/hold", &[b'x'; 80], true)));
        while limiter.held_bytes() < 80 {
            tokio::task::yield_now().await;
        }
        for declared in [true, false] {
            let r = app
                .clone()
                .oneshot(post_req("/echo", &[b'y'; 30], declared))
                .await
                .unwrap();
            assert_eq!(r.status(), 503, "declared: {declared}");
            assert_eq!(r.headers()[header::RETRY_AFTER], "1");
            assert!(text(r).await.contains("max-inflight-bytes"));
        }
        let r = app
            .clone()
            .oneshot(post_req("/api/ping", b"", true))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let r = app
            .clone()
            .oneshot(post_req("/echo", &[b'y'; 20], false))
            .await
            .unwrap();
        assert_eq!((r.status().as_u16(), text(r).await), (200, "20".to_owned()));

        gate.notify_one();
        let r = holder.await.unwrap().unwrap();
        assert_eq!(text(r).await, "80");
        assert_eq!(limiter.held_bytes(), 0);
        assert_eq!(limiter.inner.metrics.api_inflight_requests.get(), 0);
        assert_eq!(
            limiter
                .inner
                .metrics
                .api_rejected
                .with_label_values(&["http", "inflight_bytes"])
                .get(),
            2
        );
        let r = app
            .oneshot(post_req("/echo", &[b'y'; 90], true))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    /// Over the request cap everything but the exempt paths is refused.
    #[tokio::test]
    async fn requests_over_the_cap_are_refused() {
        let limiter = limiter(1000, 1);
        let gate = Arc::new(tokio::sync::Notify::new());
        let app = app(&limiter, gate.clone());
        let holder = tokio::spawn(app.clone().oneshot(post_req("/hold", b"a", true)));
        while limiter.inner.metrics.api_inflight_requests.get() < 1 {
            tokio::task::yield_now().await;
        }
        let r = app
            .clone()
            .oneshot(post_req("/echo", b"b", true))
            .await
            .unwrap();
        assert_eq!(r.status(), 503);
        assert!(text(r).await.contains("max-concurrent-requests"));
        let r = app
            .clone()
            .oneshot(post_req("/api/ping", b"", true))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        gate.notify_one();
        assert_eq!(holder.await.unwrap().unwrap().status(), 200);
        let r = app.oneshot(post_req("/echo", b"b", true)).await.unwrap();
        assert_eq!(r.status(), 200);
    }
}
