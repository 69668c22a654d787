//! A minimal HTTP/1.1 client: one keep-alive connection per load worker, no pool, no TLS, no redirects.
//! It costs far less CPU per request than a pooled client, which matters because the load generator shares
//! two cores with the server and the database.

use std::net::SocketAddr;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;

/// One keep-alive HTTP/1.1 connection to `addr`. Reconnects on the next request after a failure.
pub struct Conn {
    addr: SocketAddr,
    host: HeaderValue,
    sender: Option<SendRequest<Full<Bytes>>>,
}

/// A response: status and body.
pub struct Reply {
    /// HTTP status.
    pub status: StatusCode,
    /// The whole body.
    pub body: Bytes,
}

impl Conn {
    /// A connection to `addr` (opened lazily).
    pub fn new(addr: SocketAddr) -> anyhow::Result<Self> {
        let host = HeaderValue::from_str(&addr.to_string()).context("host header")?;
        Ok(Self {
            addr,
            host,
            sender: None,
        })
    }

    async fn sender(&mut self) -> anyhow::Result<&mut SendRequest<Full<Bytes>>> {
        let usable = self.sender.as_ref().is_some_and(|s| !s.is_closed());
        if !usable {
            let stream = tokio::net::TcpStream::connect(self.addr)
                .await
                .with_context(|| format!("connecting to {}", self.addr))?;
            stream.set_nodelay(true).context("TCP_NODELAY")?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .context("HTTP/1 handshake")?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            self.sender = Some(sender);
        }
        self.sender
            .as_mut()
            .context("connection vanished after it was opened")
    }

    /// Sends one request and reads the whole answer. A transport error drops the connection, so the next
    /// request opens a fresh one.
    pub async fn request(
        &mut self,
        method: Method,
        path_and_query: &str,
        body: Bytes,
    ) -> anyhow::Result<Reply> {
        let host = self.host.clone();
        let sender = self.sender().await?;
        sender.ready().await.context("connection not ready")?;
        let req = Request::builder()
            .method(method)
            .uri(path_and_query)
            .header(HOST, host)
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .context("building the request")?;
        let result = async {
            let resp = sender.send_request(req).await.context("sending")?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .context("reading the body")?
                .to_bytes();
            anyhow::Ok(Reply { status, body })
        }
        .await;
        if result.is_err() {
            self.sender = None;
        }
        result
    }

    /// `POST path` with a JSON body.
    pub async fn post(&mut self, path: &str, body: impl Into<Bytes>) -> anyhow::Result<Reply> {
        self.request(Method::POST, path, body.into()).await
    }

    /// `GET path`.
    pub async fn get(&mut self, path: &str) -> anyhow::Result<Reply> {
        self.request(Method::GET, path, Bytes::new()).await
    }
}
