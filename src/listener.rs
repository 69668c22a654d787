//! The API listeners: accepting TCP connections and serving HTTP/1 and HTTP/2 (gRPC included) on them, with
//! bounds on what clients can hold.
//!
//! Invariants:
//! - At most `max_connections` connections are open over all listeners sharing one [`ConnectionSlots`].
//!   At the cap a listener stops accepting, so further clients wait in the kernel's backlog, while the
//!   connections already open keep being served (ping and ready answer on them).
//! - A client has `header_read_timeout` from connecting to start its first request (a socket that sends
//!   nothing is closed then), and on HTTP/1 to send each request's headers; hyper applies that between
//!   keep-alive requests too, so an idle HTTP/1 connection is closed after it. A connection with no request
//!   in progress and no traffic for `idle_timeout` is closed gracefully (HTTP/2 and gRPC included).
//! - Closing never cuts a response short. When the server closes a connection on which the client may still
//!   be sending (it answered without reading the whole request body: a GET with a body, a refused upload),
//!   it sends its FIN after the response, then reads and discards what still arrives for a moment before
//!   closing the socket (a lingering close). A socket closed with unread input makes the kernel send a reset
//!   at once and drop the response bytes not yet sent, which clients saw as a reset and a truncated answer.
//! - With TLS ([`Listener::with_tls`]) the handshake happens on the connection's own task, within the same
//!   `header_read_timeout` from connecting (a client that never completes it is closed then, and holds its
//!   slot no longer); each handshake takes the certificates in force at that moment, so a rotation applies
//!   to new connections. ALPN offers `h2` and `http/1.1`. The lingering close works below TLS: the
//!   `close_notify` alert goes out first, then the FIN.
//! - On cancel a listener stops accepting, open connections finish their requests and close, and
//!   [`Listener::serve`] returns once all of them are closed.

use std::convert::Infallible;
use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::http::{Request, Response};
use bytes::Bytes;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::{Service, ServiceExt};

use crate::metrics::Metrics;
use crate::tls::ServerTls;

/// Connection limits of the listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerOptions {
    /// Most open connections over the listeners sharing one [`ConnectionSlots`].
    pub max_connections: usize,
    /// Time a client has to send a request's headers (and, on HTTP/1, to start the next request).
    pub header_read_timeout: Duration,
    /// A connection with no request in progress and no traffic for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for ListenerOptions {
    fn default() -> Self {
        Self {
            max_connections: crate::config::DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// The longest a lingering close waits for the client to stop sending.
const LINGER_MAX: Duration = Duration::from_secs(5);
/// A lingering close ends once the client has sent nothing for this long.
const LINGER_QUIET: Duration = Duration::from_millis(500);
/// HTTP/2 keep-alive pings: a peer that does not answer one within this time is gone.
const H2_KEEP_ALIVE: Duration = Duration::from_secs(20);
/// File descriptors kept for the store pool, branch calls and the Kubernetes client besides connections.
const RESERVED_FDS: u64 = 512;

/// The connection slots shared by the listeners; clone it to share.
#[derive(Clone)]
pub struct ConnectionSlots(Arc<Semaphore>);

impl ConnectionSlots {
    /// `max` slots.
    pub fn new(max: usize) -> Self {
        Self(Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))))
    }
}

/// Raises this process's open-file limit to its hard limit (as Go programs do) and warns when
/// `max_connections` does not fit under it with room for the store and branch calls.
pub fn raise_fd_limit(max_connections: usize) {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            tracing::debug!(error = %e, "cannot read or raise the open file limit");
            return;
        }
    };
    let wanted = max_connections as u64 + RESERVED_FDS;
    if limit < wanted {
        tracing::warn!(
            max_connections,
            open_file_limit = limit,
            "max-connections does not fit under the open file limit (with {RESERVED_FDS} kept for the \
             store and branch calls): accepting fails before the cap is reached; lower max-connections \
             or raise the limit"
        );
    }
}

/// One listener's serving loop. Build with [`Listener::new`], run with [`Listener::serve`].
pub struct Listener {
    name: &'static str,
    slots: ConnectionSlots,
    opts: ListenerOptions,
    metrics: Arc<Metrics>,
    tls: Option<Arc<ServerTls>>,
}

impl Listener {
    /// A listener named `name` (the `listener` label of `braid_api_connections`) taking its connections
    /// from `slots`.
    pub fn new(
        name: &'static str,
        slots: ConnectionSlots,
        opts: ListenerOptions,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            name,
            slots,
            opts,
            metrics,
            tls: None,
        }
    }

    /// Serves TLS on every connection with `tls`'s certificates (plain TCP without it).
    #[must_use]
    pub fn with_tls(mut self, tls: Option<Arc<ServerTls>>) -> Self {
        self.tls = tls;
        self
    }

    /// Accepts connections on `listener` and serves `service` on them until `cancel` fires, then waits
    /// until every connection has closed. `wrap` turns hyper's request body into the service's.
    pub async fn serve<S, B, RB>(
        self,
        listener: TcpListener,
        service: S,
        wrap: fn(Incoming) -> B,
        cancel: CancellationToken,
    ) where
        S: Service<Request<B>, Response = Response<RB>, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        B: Send + 'static,
        RB: http_body::Body<Data = Bytes> + Send + 'static,
        RB::Error: Into<axum::BoxError>,
    {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.opts.header_read_timeout);
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(H2_KEEP_ALIVE)
            .keep_alive_timeout(H2_KEEP_ALIVE);
        let builder = Arc::new(builder);
        let tracker = TaskTracker::new();
        loop {
            // Wait for a free slot without keeping it while accept waits: the listeners share the slots,
            // and one idle listener must not hold one. (Two listeners may race for the last slot: the
            // loser's connection waits for the next one to free up.)
            if self.slots.0.available_permits() == 0 {
                tokio::select! {
                    () = cancel.cancelled() => break,
                    free = self.slots.0.acquire() => if free.is_err() { break },
                }
            }
            let tcp = tokio::select! {
                () = cancel.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((tcp, _)) => tcp,
                    Err(e) if is_connection_error(&e) => continue,
                    Err(e) => {
                        // Out of file descriptors, say: wait instead of spinning on the error.
                        tracing::error!(listener = self.name, error = %e, "accepting a connection failed");
                        tokio::select! {
                            () = cancel.cancelled() => break,
                            () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        }
                    }
                },
            };
            let slot = match Arc::clone(&self.slots.0).try_acquire_owned() {
                Ok(slot) => slot,
                Err(_) => tokio::select! {
                    () = cancel.cancelled() => break,
                    slot = Arc::clone(&self.slots.0).acquire_owned() => match slot {
                        Ok(slot) => slot,
                        Err(_) => break,
                    },
                },
            };
            // Without TCP_NODELAY a reply written in more than one segment can wait for the client's
            // delayed ACK (up to 40 ms on Linux), which shows as a latency tail under load.
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY on an API connection");
            }
            let connection = Connection {
                builder: Arc::clone(&builder),
                tls: self.tls.clone(),
                first_request_timeout: self.opts.header_read_timeout,
                idle_timeout: self.opts.idle_timeout,
                _gauge: OpenGauge::new(&self.metrics, self.name),
                _slot: slot,
            };
            tracker.spawn(connection.run(tcp, service.clone(), wrap, cancel.clone()));
        }
        // Stop accepting (new clients are refused), then let the open connections finish.
        drop(listener);
        tracker.close();
        tracker.wait().await;
    }
}

/// Errors of one incoming connection that say nothing about the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Counts an open connection in `braid_api_connections` while it lives.
struct OpenGauge(prometheus::IntGauge);

impl OpenGauge {
    fn new(metrics: &Metrics, listener: &str) -> Self {
        let gauge = metrics.api_connections.with_label_values(&[listener]);
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for OpenGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// One accepted connection.
struct Connection {
    builder: Arc<auto::Builder<TokioExecutor>>,
    tls: Option<Arc<ServerTls>>,
    first_request_timeout: Duration,
    idle_timeout: Duration,
    _gauge: OpenGauge,
    _slot: OwnedSemaphorePermit,
}

impl Connection {
    async fn run<S, B, RB>(
        self,
        tcp: TcpStream,
        service: S,
        wrap: fn(Incoming) -> B,
        cancel: CancellationToken,
    ) where
        S: Service<Request<B>, Response = Response<RB>, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        B: Send + 'static,
        RB: http_body::Body<Data = Bytes> + Send + 'static,
        RB::Error: Into<axum::BoxError>,
    {
        let activity = Arc::new(Activity::new(self.first_request_timeout, self.idle_timeout));
        let io = ConnIo {
            tcp,
            activity: Arc::clone(&activity),
            linger: None,
        };
        let Some(tls) = self.tls.clone() else {
            return self
                .serve(TokioIo::new(io), activity, service, wrap, cancel)
                .await;
        };
        // The handshake counts against the time to the first request.
        let deadline = activity.started + self.first_request_timeout;
        let handshake = tls.acceptor().accept(io);
        let stream = tokio::select! {
            () = cancel.cancelled() => return,
            done = tokio::time::timeout_at(deadline, handshake) => match done {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "TLS handshake with an API client failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!("TLS handshake with an API client timed out");
                    return;
                }
            },
        };
        self.serve(TokioIo::new(stream), activity, service, wrap, cancel)
            .await;
    }

    /// Serves HTTP on `io` until the connection ends, closing it when idle or on cancel.
    async fn serve<I, S, B, RB>(
        self,
        io: TokioIo<I>,
        activity: Arc<Activity>,
        service: S,
        wrap: fn(Incoming) -> B,
        cancel: CancellationToken,
    ) where
        I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
        S: Service<Request<B>, Response = Response<RB>, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        B: Send + 'static,
        RB: http_body::Body<Data = Bytes> + Send + 'static,
        RB::Error: Into<axum::BoxError>,
    {
        let requests = Arc::clone(&activity);
        let hyper_service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let busy = Busy::begin(&requests);
            let answer = service.clone().oneshot(req.map(wrap));
            async move {
                let response = answer.await;
                drop(busy);
                response
            }
        });
        let conn = self.builder.serve_connection(io, hyper_service);
        tokio::pin!(conn);
        let mut closing = false;
        loop {
            let check_at = activity.next_idle_check();
            tokio::select! {
                done = conn.as_mut() => {
                    if let Err(e) = done {
                        tracing::debug!(error = %e, "API connection ended with an error");
                    }
                    break;
                }
                () = cancel.cancelled(), if !closing => {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
                () = tokio::time::sleep_until(check_at), if !closing => {
                    if activity.is_idle() {
                        tracing::debug!("closing an idle API connection");
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                }
            }
        }
    }
}

/// When a connection last moved bytes, and how many of its requests began and are in progress.
struct Activity {
    started: Instant,
    first_request_timeout: Duration,
    idle_timeout: Duration,
    /// Milliseconds after `started` of the last read or write that moved bytes.
    last_io_ms: AtomicU64,
    begun: AtomicU64,
    busy: AtomicUsize,
}

impl Activity {
    fn new(first_request_timeout: Duration, idle_timeout: Duration) -> Self {
        Self {
            started: Instant::now(),
            first_request_timeout,
            idle_timeout,
            last_io_ms: AtomicU64::new(0),
            begun: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_io_ms.store(ms, Ordering::Relaxed);
    }

    /// When the connection is idle unless something happens before: before its first request, the
    /// first-request deadline; after, `idle_timeout` after its last traffic.
    fn idle_at(&self) -> Instant {
        if self.begun.load(Ordering::Acquire) == 0 {
            return self.started + self.first_request_timeout;
        }
        self.started
            + Duration::from_millis(self.last_io_ms.load(Ordering::Relaxed))
            + self.idle_timeout
    }

    fn is_idle(&self) -> bool {
        self.busy.load(Ordering::Acquire) == 0 && self.idle_at() <= Instant::now()
    }

    /// When to look again whether the connection is idle.
    fn next_idle_check(&self) -> Instant {
        let due = self.idle_at();
        let now = Instant::now();
        if due <= now {
            now + self.idle_timeout
        } else {
            due
        }
    }
}

/// A request in progress on a connection.
struct Busy(Arc<Activity>);

impl Busy {
    fn begin(activity: &Arc<Activity>) -> Self {
        activity.busy.fetch_add(1, Ordering::AcqRel);
        activity.begun.fetch_add(1, Ordering::AcqRel);
        Self(Arc::clone(activity))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The TCP stream of a connection: records activity, and closes with a lingering close.
struct ConnIo {
    tcp: TcpStream,
    activity: Arc<Activity>,
    linger: Option<Linger>,
}

struct Linger {
    until: Pin<Box<Sleep>>,
    quiet: Pin<Box<Sleep>>,
}

impl AsyncRead for ConnIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.tcp).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            this.activity.touch();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.tcp).poll_write(cx, buf))?;
        this.activity.touch();
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs))?;
        this.activity.touch();
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    /// Sends FIN after everything written, then drains what the client still sends until it closes its
    /// side, stays quiet for [`LINGER_QUIET`], or [`LINGER_MAX`] has passed. Only then may the socket be
    /// closed without a reset that would discard the response's unsent bytes.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.linger.is_none() {
            ready!(Pin::new(&mut this.tcp).poll_shutdown(cx))?;
            this.linger = Some(Linger {
                until: Box::pin(tokio::time::sleep(LINGER_MAX)),
                quiet: Box::pin(tokio::time::sleep(LINGER_QUIET)),
            });
        }
        let Some(linger) = this.linger.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let mut scratch = [0u8; 4096];
        loop {
            if linger.until.as_mut().poll(cx).is_ready()
                || linger.quiet.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(Ok(()));
            }
            let mut discard = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.tcp).poll_read(cx, &mut discard) {
                // The client closed its side too: nothing more can arrive.
                Poll::Ready(Ok(())) if discard.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => {
                    linger.quiet.as_mut().reset(Instant::now() + LINGER_QUIET);
                }
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
