//! Shared harness of the integration tests: a braid server started in-process on a fresh SQLite file or a
//! fresh MariaDB database, and a test business service (DTM's `busi`) that records every call it receives.
// Harness code: a panic is how a test fails, so `expect` is the assertion here.
#![allow(
    dead_code,
    unused_imports,
    missing_docs,
    clippy::expect_used,
    clippy::unwrap_used
)]

pub mod bank;
pub mod busi;
pub mod grpc_busi;
pub mod kube_api;
pub mod process;
pub mod xa_rm;

use std::time::Duration;

use braid::config::Config;
use braid::model::Gid;
use braid::server::{Server, StartOptions};
use serde_json::Value;
use tokio::sync::broadcast;

pub use busi::Busi;
pub use grpc_busi::GrpcBusi;
pub use xa_rm::XaRm;

/// Which store a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Mysql,
    Postgres,
}

/// Base DSN of the test MariaDB/MySQL server (`BRAID_TEST_MYSQL`, default root on 127.0.0.1:3306).
pub fn mysql_base() -> String {
    std::env::var("BRAID_TEST_MYSQL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".to_owned())
}

/// Base DSN of the test PostgreSQL server (`BRAID_TEST_POSTGRES`, default user postgres on 127.0.0.1:5432).
pub fn postgres_base() -> String {
    std::env::var("BRAID_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

/// A fresh store DSN for `backend`.
pub fn fresh_dsn(backend: Backend) -> String {
    let id = braid::model::short_uuid().to_lowercase();
    match backend {
        Backend::Sqlite => {
            let dir = std::env::temp_dir().join(format!("braid-it-{id}"));
            format!("sqlite://{}/braid.db", dir.display())
        }
        Backend::Mysql => format!("{}/braid_it_{id}", mysql_base()),
        Backend::Postgres => format!("{}/braid_it_{id}", postgres_base()),
    }
}

/// A config for tests: ephemeral port on loopback, 1-second scans.
pub fn test_config(dsn: &str) -> Config {
    let mut config = Config::default();
    config.server.http_port = 0;
    config.server.grpc_port = 0;
    config.server.bind = "127.0.0.1".to_owned();
    config.store.dsn = dsn.to_owned();
    config
}

/// A running in-process braid with helpers in the spirit of DTM's test suite (spec §14.1).
pub struct TestServer {
    pub server: Server,
    pub http: reqwest::Client,
    pub dsn: String,
    events: tokio::sync::Mutex<broadcast::Receiver<braid::engine::PassEvent>>,
}

impl TestServer {
    /// Starts braid on a fresh store without the background scanner (tests call `cron_once`).
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(test_config(&fresh_dsn(backend))).await
    }

    /// Starts braid with `config`, without the background scanner.
    pub async fn start_with(config: Config) -> Self {
        Self::start_with_kube(config, None).await
    }

    /// Starts braid with `config` and, when given, the Kubernetes integration on `kube_client`.
    pub async fn start_with_kube(config: Config, kube_client: Option<kube::Client>) -> Self {
        if let Ok(level) = std::env::var("BRAID_TEST_LOG") {
            let _ = braid::telemetry::init(&level, braid::config::LogFormat::Text);
        }
        let server = Server::start(
            &config,
            StartOptions {
                scanner: false,
                grace: Duration::from_secs(5),
                kube_client,
            },
        )
        .await
        .expect("test server starts");
        let events = server.engine.events();
        Self {
            server,
            http: reqwest::Client::new(),
            dsn: config.store.dsn.clone(),
            events: tokio::sync::Mutex::new(events),
        }
    }

    /// `http://127.0.0.1:port/api/dtmsvr`.
    pub fn dtm(&self) -> String {
        self.server.dtm_url()
    }

    /// POSTs JSON to a dtmsvr route; returns (status, body as JSON or as a string value).
    pub async fn post(&self, route: &str, body: &Value) -> (u16, Value) {
        self.post_raw(route, &body.to_string()).await
    }

    /// POSTs a raw body to a dtmsvr route.
    pub async fn post_raw(&self, route: &str, body: &str) -> (u16, Value) {
        let resp = self
            .http
            .post(format!("{}/{route}", self.dtm()))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .expect("request sent");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body read");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// GETs a route under dtmsvr with a query string.
    pub async fn get(&self, route_and_query: &str) -> (u16, Value) {
        let resp = self
            .http
            .get(format!("{}/{route_and_query}", self.dtm()))
            .send()
            .await
            .expect("request sent");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body read");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// GETs a dtmsvr route with query parameters (URL-encoded by the client). The request is built at once,
    /// so the future borrows nothing (many can run together).
    pub fn get_with(
        &self,
        route: &str,
        params: &[(&str, &str)],
    ) -> impl Future<Output = (u16, Value)> + use<> {
        Self::reply(
            self.http
                .get(format!("{}/{route}", self.dtm()))
                .query(params),
        )
    }

    /// Any method on any path of the server (`/api/metrics`, `/api/ping`, unknown routes, ...). The body, if
    /// any, is sent as JSON; the reply body comes back as JSON when it parses, else as a string value.
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<String>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("http://{}{path}", self.server.http_addr));
        if let Some(body) = body {
            req = req.header("content-type", "application/json").body(body);
        }
        Self::reply(req).await
    }

    async fn reply(req: reqwest::RequestBuilder) -> (u16, Value) {
        let resp = req.send().await.expect("request sent");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body read");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Subscribes `url` to `topic` and expects 200.
    pub async fn subscribe_ok(&self, topic: &str, url: &str) {
        let (status, reply) = self
            .get_with(
                "subscribe",
                &[("topic", topic), ("url", url), ("remark", "for test")],
            )
            .await;
        assert_eq!(status, 200, "subscribe {url} to {topic}: {reply}");
        assert_eq!(reply["dtm_result"], "SUCCESS", "{reply}");
    }

    /// Submits and expects 200.
    pub async fn submit_ok(&self, body: &Value) {
        let (status, reply) = self.post("submit", body).await;
        assert_eq!(status, 200, "submit failed: {reply}");
        assert_eq!(reply["dtm_result"], "SUCCESS", "{reply}");
    }

    /// Waits until a processing pass of `gid` has finished (DTM's `waitTransProcessed`). Passes run by
    /// [`Self::cron_once`] do not count: it waits for them itself and forgets their announcements.
    pub async fn wait_pass(&self, gid: &str) -> braid::engine::PassEvent {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut events = self.events.lock().await;
        loop {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Ok(ev)) if ev.gid.as_str() == gid => return ev,
                Ok(Ok(_) | Err(broadcast::error::RecvError::Lagged(_))) => {}
                Ok(Err(broadcast::error::RecvError::Closed)) => {
                    panic!("engine stopped while waiting for {gid}")
                }
                Err(_) => panic!("no processing pass of {gid} finished within 20 s"),
            }
        }
    }

    /// The `query` reply.
    pub async fn query(&self, gid: &str) -> Value {
        let (status, body) = self.get(&format!("query?gid={gid}")).await;
        assert_eq!(status, 200, "query failed: {body}");
        body
    }

    /// The global status.
    pub async fn status(&self, gid: &str) -> String {
        self.query(gid).await["transaction"]["status"]
            .as_str()
            .unwrap_or("<none>")
            .to_owned()
    }

    /// The branch statuses in stored order (DTM's `getBranchesStatus`).
    pub async fn branch_statuses(&self, gid: &str) -> Vec<String> {
        let q = self.query(gid).await;
        q["branches"]
            .as_array()
            .map(|bs| {
                bs.iter()
                    .map(|b| b["status"].as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The rollback reason.
    pub async fn rollback_reason(&self, gid: &str) -> String {
        self.query(gid).await["transaction"]["rollback_reason"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// One recovery scan, waiting for its passes (DTM's `CronTransOnce`). Returns the claimed gids.
    /// Wait for the passes a submit started (`wait_pass`) before scanning: the scan drops pending
    /// announcements, so a later `wait_pass` only sees passes that start after it.
    pub async fn cron_once(&self) -> Vec<String> {
        let gids = self
            .server
            .scanner
            .scan_once(true)
            .await
            .expect("scan works");
        let mut events = self.events.lock().await;
        while !matches!(
            events.try_recv(),
            Err(broadcast::error::TryRecvError::Empty | broadcast::error::TryRecvError::Closed)
        ) {}
        gids.iter().map(Gid::to_string).collect()
    }

    /// POSTs a JSON-RPC 2.0 request to `/api/json-rpc`; returns the reply envelope (always HTTP 200).
    pub async fn json_rpc(&self, method: &str, params: Value) -> Value {
        let body =
            serde_json::json!({"jsonrpc": "2.0", "id": "1", "method": method, "params": params});
        self.json_rpc_raw(&body.to_string()).await
    }

    /// POSTs a raw body to `/api/json-rpc` and asserts the HTTP status is 200.
    pub async fn json_rpc_raw(&self, body: &str) -> Value {
        let resp = self
            .http
            .post(format!("http://{}/api/json-rpc", self.server.http_addr))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .expect("request sent");
        assert_eq!(
            resp.status().as_u16(),
            200,
            "JSON-RPC answers HTTP 200 always"
        );
        serde_json::from_str(&resp.text().await.expect("JSON-RPC body"))
            .expect("JSON-RPC reply is JSON")
    }

    /// The Prometheus text of `/api/metrics`.
    pub async fn metrics(&self) -> String {
        let url = format!("http://{}/api/metrics", self.server.http_addr);
        self.http
            .get(url)
            .send()
            .await
            .expect("metrics request")
            .text()
            .await
            .expect("metrics body")
    }

    /// A gRPC client of `dtmgimp.Dtm` on the server's gRPC port.
    pub async fn grpc(
        &self,
    ) -> braid::proto::dtmgimp::dtm_client::DtmClient<tonic::transport::Channel> {
        braid::proto::dtmgimp::dtm_client::DtmClient::connect(format!(
            "http://{}",
            self.server.grpc_addr
        ))
        .await
        .expect("gRPC client connects")
    }

    /// The branches of `gid` as `(branch_id, op, status)`, in stored order.
    pub async fn branches(&self, gid: &str) -> Vec<(String, String, String)> {
        let q = self.query(gid).await;
        let field = |b: &Value, k: &str| b[k].as_str().unwrap_or_default().to_owned();
        q["branches"]
            .as_array()
            .map(|bs| {
                bs.iter()
                    .map(|b| (field(b, "branch_id"), field(b, "op"), field(b, "status")))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Pretends `secs` seconds have passed (timeouts and schedules both see it).
    pub fn forward(&self, secs: u64) {
        self.server.clock.advance(Duration::from_secs(secs));
    }

    /// Forwards time, then runs one scan; asserts that exactly `gid` was picked.
    pub async fn cron_forward_expect(&self, secs: u64, gid: &str) {
        self.forward(secs);
        let picked = self.cron_once().await;
        assert_eq!(
            picked,
            vec![gid.to_owned()],
            "the scan after +{secs}s picked {picked:?}"
        );
    }

    /// Stops the server and drops its MariaDB database.
    pub async fn stop(self) {
        let dsn = self.dsn.clone();
        self.server.stop().await;
        drop_database(&dsn).await;
    }
}

/// Drops the database of a MySQL or PostgreSQL DSN made by [`fresh_dsn`] (no-op for SQLite).
pub async fn drop_database(dsn: &str) {
    if let Some(db) = dsn.strip_prefix(&format!("{}/", mysql_base())) {
        sqlx::any::install_default_drivers();
        if let Ok(pool) = sqlx::AnyPool::connect(&format!("{}/", mysql_base())).await {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS `{db}`"))
                .execute(&pool)
                .await;
            pool.close().await;
        }
    }
    if let Some(db) = dsn.strip_prefix(&format!("{}/", postgres_base())) {
        sqlx::any::install_default_drivers();
        if let Ok(pool) = sqlx::AnyPool::connect(&format!("{}/postgres", postgres_base())).await {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
                .execute(&pool)
                .await;
            pool.close().await;
        }
    }
}

/// A saga body with two steps TransOut then TransIn against `busi`, the DTM test-suite shape.
pub fn saga_body(gid: &str, busi: &str, out_result: &str, in_result: &str) -> Value {
    let payload = busi::req(30, out_result, in_result);
    serde_json::json!({
        "gid": gid,
        "trans_type": "saga",
        "steps": [
            {"action": format!("{busi}/TransOut"), "compensate": format!("{busi}/TransOutRevert")},
            {"action": format!("{busi}/TransIn"), "compensate": format!("{busi}/TransInRevert")},
        ],
        "payloads": [payload.clone(), payload],
    })
}

/// A unique gid for a test.
pub fn gid(prefix: &str) -> String {
    format!("{prefix}-{}", braid::model::short_uuid())
}

/// Stamps out one `#[tokio::test]` per backend for each scenario `async fn name(backend: Backend)`.
#[macro_export]
macro_rules! on_every_store {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::support::Backend::Sqlite).await
                }
            )+
        }
        mod mysql {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::support::Backend::Mysql).await
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::support::Backend::Postgres).await
                }
            )+
        }
    };
}

/// Stamps out one `#[tokio::test]` per store replicas can share (every backend but SQLite) for each
/// scenario `async fn name(backend: Backend)`.
#[macro_export]
macro_rules! on_shared_stores {
    ($($name:ident),+ $(,)?) => {
        mod mysql {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::support::Backend::Mysql).await
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::support::Backend::Postgres).await
                }
            )+
        }
    };
}

/// The test as a TCC/XA client calling a branch itself (a TCC try): POST `url` with DTM's query parameters,
/// `headers` and `body`. Returns the HTTP status.
pub async fn call_branch(
    url: &str,
    gid: &str,
    trans_type: &str,
    branch_id: &str,
    op: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> u16 {
    let mut req = reqwest::Client::new()
        .post(url)
        .query(&[
            ("gid", gid),
            ("trans_type", trans_type),
            ("branch_id", branch_id),
            ("op", op),
        ])
        .header("content-type", "application/json")
        .body(body.to_owned());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send()
        .await
        .expect("branch call sent")
        .status()
        .as_u16()
}

/// A TCC `registerBranch` body for one busi pair, e.g. `tcc_branch(gid, "01", busi, "TransOut", data)`
/// registers `TransOutConfirm`/`TransOutRevert`.
pub fn tcc_branch(gid: &str, branch_id: &str, busi: &str, name: &str, data: &str) -> Value {
    serde_json::json!({
        "gid": gid,
        "trans_type": "tcc",
        "branch_id": branch_id,
        "data": data,
        "confirm": format!("{busi}/{name}Confirm"),
        "cancel": format!("{busi}/{name}Revert"),
    })
}
