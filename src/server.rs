//! Wiring: builds every component from the configuration, runs them, and shuts them down in order.
//! `main.rs` and the integration tests both start servers through here.
//!
//! Shutdown order (nothing accepted is lost): stop accepting requests and stop scanning; let running passes
//! finish (bounded by a grace period; unfinished ones are resumed by a later scan); flush the group-commit
//! writer so every queued write is committed and answered; close the store.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::serve::ListenerExt as _;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::cluster::scanner::Scanner;
use crate::config::Config;
use crate::engine::Engine;
use crate::invoke::Invoker;
use crate::metrics::Metrics;
use crate::store::clock::StoreClock;
use crate::store::writer::Writer;
use crate::store::{self, DynStore, redact_dsn};

/// What to start besides the API.
#[derive(Debug, Clone)]
pub struct StartOptions {
    /// Run the background recovery scanner (tests drive [`Server::scanner`] by hand instead).
    pub scanner: bool,
    /// How long shutdown waits for running passes.
    pub grace: Duration,
}

impl Default for StartOptions {
    fn default() -> Self {
        Self {
            scanner: true,
            grace: Duration::from_secs(10),
        }
    }
}

/// A running server.
pub struct Server {
    /// Where the HTTP API listens.
    pub http_addr: SocketAddr,
    /// Where the gRPC API listens.
    pub grpc_addr: SocketAddr,
    /// The engine.
    pub engine: Engine,
    /// The recovery scanner (also usable by hand: `scan_once`).
    pub scanner: Scanner,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    cancel: CancellationToken,
    writer_cancel: CancellationToken,
    store: DynStore,
    http: JoinHandle<()>,
    grpc: JoinHandle<()>,
    scan: Option<JoinHandle<()>>,
    writer: JoinHandle<()>,
    grace: Duration,
}

/// Opens the store, retrying every 3 s while it is unreachable (as DTM waits for its store), until `cancel`.
pub async fn open_store(dsn: &str, cancel: &CancellationToken) -> anyhow::Result<DynStore> {
    loop {
        match store::open(dsn).await {
            Ok(s) => return Ok(s),
            Err(e) if e.is_retryable() => {
                tracing::warn!(store = %redact_dsn(dsn), error = %e, "store not reachable yet; retrying in 3 s");
                tokio::select! {
                    () = cancel.cancelled() => anyhow::bail!("cancelled while waiting for the store"),
                    () = tokio::time::sleep(Duration::from_secs(3)) => {}
                }
            }
            Err(e) => return Err(e).with_context(|| format!("opening store {}", redact_dsn(dsn))),
        }
    }
}

impl Server {
    /// Starts everything the configuration describes.
    pub async fn start(config: &Config, opts: StartOptions) -> anyhow::Result<Self> {
        let cancel = CancellationToken::new();
        let store = open_store(&config.store, &cancel).await?;
        let metrics = Arc::new(Metrics::new());
        let clock = StoreClock::from_store(&store)
            .await
            .context("reading the store clock")?;
        let writer_cancel = CancellationToken::new();
        let (writer, writer_handle) = Writer::new(
            store.clone(),
            config.writer_options(store.kind()),
            metrics.clone(),
        );
        let writer = tokio::spawn(writer.run(writer_cancel.clone()));
        let invoker = Invoker::new(metrics.clone()).map_err(anyhow::Error::msg)?;
        let engine = Engine::new(
            store.clone(),
            writer_handle,
            invoker,
            clock,
            config.engine_options(),
            metrics.clone(),
        );
        let scanner = Scanner::new(engine.clone(), config.scanner_options());

        let addr: SocketAddr = format!("{}:{}", config.bind, config.http_port)
            .parse()
            .with_context(|| {
                format!(
                    "invalid listen address {}:{}",
                    config.bind, config.http_port
                )
            })?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding HTTP port {addr}"))?;
        let http_addr = listener
            .local_addr()
            .context("reading the HTTP listen address")?;
        // axum does not set TCP_NODELAY: without it, a reply written in more than one segment can wait
        // for the client's delayed ACK (up to 40 ms on Linux), which shows as a latency tail under load.
        let listener = listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY on an API connection");
            }
        });
        let state = AppState::new(engine.clone(), metrics.clone());
        let app = api::router(state.clone());
        let http_cancel = cancel.clone();
        let http = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(http_cancel.clone().cancelled_owned())
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "HTTP server failed");
                http_cancel.cancel();
            }
        });
        let grpc_addr: SocketAddr = format!("{}:{}", config.bind, config.grpc_port)
            .parse()
            .with_context(|| {
                format!(
                    "invalid listen address {}:{}",
                    config.bind, config.grpc_port
                )
            })?;
        let grpc_listener = tokio::net::TcpListener::bind(grpc_addr)
            .await
            .with_context(|| format!("binding gRPC port {grpc_addr}"))?;
        let grpc_addr = grpc_listener
            .local_addr()
            .context("reading the gRPC listen address")?;
        let grpc_service = api::grpc::service(state);
        let grpc_cancel = cancel.clone();
        let grpc = tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(grpc_service)
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(grpc_listener),
                    grpc_cancel.clone().cancelled_owned(),
                )
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "gRPC server failed");
                grpc_cancel.cancel();
            }
        });
        let scan = opts
            .scanner
            .then(|| tokio::spawn(scanner.clone().run(cancel.clone())));
        tracing::info!(http = %http_addr, grpc = %grpc_addr, store = %redact_dsn(&config.store), kind = store.kind(), "braid started");
        Ok(Self {
            http_addr,
            grpc_addr,
            engine,
            scanner,
            metrics,
            cancel,
            writer_cancel,
            store,
            http,
            grpc,
            scan,
            writer,
            grace: opts.grace,
        })
    }

    /// The token whose cancellation stops the server.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// The HTTP base URL of the DTM API (`http://addr/api/dtmsvr`).
    pub fn dtm_url(&self) -> String {
        format!("http://{}/api/dtmsvr", self.http_addr)
    }

    /// Stops in order (see the module docs) and waits until done.
    pub async fn stop(self) {
        self.cancel.cancel();
        let _ = self.http.await;
        let _ = self.grpc.await;
        if let Some(scan) = self.scan {
            let _ = scan.await;
        }
        self.engine.shutdown(self.grace).await;
        self.writer_cancel.cancel();
        let _ = self.writer.await;
        drop(self.engine);
        drop(self.scanner);
        drop(self.store);
        tracing::info!("braid stopped");
    }

    /// Runs until the cancel token fires (signal handler or a fatal task), then stops.
    pub async fn run_until_stopped(self) {
        self.cancel.cancelled().await;
        self.stop().await;
    }
}
