//! The local business service of workloads (b) and (c): every route under `/api/busi/` answers
//! `200 {"dtm_result":"SUCCESS"}` at once (DTM's bench `TransIn`/`TransOut` with no SQL), and counts the
//! calls it got, so the report can show that branches really were called.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::any;
use axum::serve::ListenerExt as _;

/// A running business service.
#[derive(Clone)]
pub struct Busi {
    /// Where it listens.
    pub addr: SocketAddr,
    calls: Arc<AtomicU64>,
}

async fn answer(State(calls): State<Arc<AtomicU64>>) -> impl IntoResponse {
    calls.fetch_add(1, Ordering::Relaxed);
    (
        [(CONTENT_TYPE, "application/json")],
        r#"{"dtm_result":"SUCCESS"}"#,
    )
}

impl Busi {
    /// Starts the service on an ephemeral loopback port, on the current runtime.
    pub async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the business service")?;
        let addr = listener.local_addr().context("business service address")?;
        let calls = Arc::new(AtomicU64::new(0));
        let app = Router::new()
            .route("/api/busi/{route}", any(answer))
            .with_state(calls.clone());
        // As a business service should: no Nagle delay on its replies.
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("business service stopped: {e}");
            }
        });
        Ok(Self { addr, calls })
    }

    /// Calls answered so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }
}
