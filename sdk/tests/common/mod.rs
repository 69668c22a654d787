//! Shared harness of the SDK's integration tests: a braid server started in-process on a fresh SQLite file,
//! real MariaDB / PostgreSQL / Redis connections, and a test bank service whose branch handlers use the SDK's
//! barrier (the Rust counterpart of DTM's `test/busi`).
#![allow(
    dead_code,
    missing_docs,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used
)]

pub mod bank;

use std::time::Duration;

use braid::config::Config;
use braid::server::{Server, StartOptions};
use serde_json::Value;
use sqlx::mysql::MySqlPoolOptions;
use sqlx::postgres::PgPoolOptions;
use sqlx::{MySqlPool, PgPool};
use tokio::sync::OnceCell;

pub use bank::{Bank, Store};

/// MariaDB/MySQL base DSN (`BRAID_TEST_MYSQL`, default root on 127.0.0.1:3306).
pub fn mysql_url() -> String {
    std::env::var("BRAID_TEST_MYSQL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".to_owned())
}

/// PostgreSQL DSN (`BRAID_TEST_POSTGRES`, default the `test` database on 127.0.0.1:5432).
pub fn postgres_url() -> String {
    std::env::var("BRAID_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// Redis URL (`BRAID_TEST_REDIS`, default 127.0.0.1:6379).
pub fn redis_url() -> String {
    std::env::var("BRAID_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

static MYSQL_SCHEMA: OnceCell<()> = OnceCell::const_new();
static POSTGRES_SCHEMA: OnceCell<()> = OnceCell::const_new();

/// A small pool on MariaDB with the barrier table and the test accounts table in place.
pub async fn mysql_pool() -> MySqlPool {
    let pool = MySqlPoolOptions::new()
        .max_connections(4)
        .connect(&format!("{}/", mysql_url()))
        .await
        .expect("MariaDB is reachable (start it as .ci/run does)");
    MYSQL_SCHEMA
        .get_or_init(|| async {
            braid_client::create_barrier_table(&pool, braid_client::barrier::DEFAULT_BARRIER_TABLE)
                .await
                .expect("barrier table");
            for stmt in [
                "CREATE DATABASE IF NOT EXISTS braid_sdk_test",
                "CREATE TABLE IF NOT EXISTS braid_sdk_test.user_account (
                   id bigint PRIMARY KEY AUTO_INCREMENT,
                   user_id bigint NOT NULL UNIQUE,
                   balance bigint NOT NULL DEFAULT 0,
                   trading_balance bigint NOT NULL DEFAULT 0)",
            ] {
                sqlx::raw_sql(stmt).execute(&pool).await.expect(stmt);
            }
        })
        .await;
    pool
}

/// A small pool on PostgreSQL with the barrier table and the test accounts table in place.
pub async fn postgres_pool() -> PgPool {
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&postgres_url())
        .await
        .expect("PostgreSQL is reachable (start it as .ci/run does)");
    POSTGRES_SCHEMA
        .get_or_init(|| async {
            braid_client::create_barrier_table(&pool, braid_client::barrier::DEFAULT_BARRIER_TABLE)
                .await
                .expect("barrier table");
            for stmt in [
                "CREATE SCHEMA IF NOT EXISTS braid_sdk_test",
                "CREATE TABLE IF NOT EXISTS braid_sdk_test.user_account (
                   id bigserial PRIMARY KEY,
                   user_id bigint NOT NULL UNIQUE,
                   balance bigint NOT NULL DEFAULT 0,
                   trading_balance bigint NOT NULL DEFAULT 0)",
            ] {
                sqlx::raw_sql(stmt).execute(&pool).await.expect(stmt);
            }
        })
        .await;
    pool
}

/// A multiplexed Redis connection.
pub async fn redis_conn() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url())
        .expect("redis URL")
        .get_multiplexed_async_connection()
        .await
        .expect("Redis is reachable (start it as .ci/run does)")
}

/// A unique gid for a test.
pub fn gid(prefix: &str) -> String {
    format!("{prefix}-{}", braid_client::new_gid())
}

/// A running in-process braid (SQLite store, no background scanner: tests call [`Braid::cron_once`]).
pub struct Braid {
    pub server: Server,
    pub dsn: String,
    http: reqwest::Client,
    /// The SQLite directory this instance created (removed on stop); `None` for extra replicas.
    dir: Option<std::path::PathBuf>,
}

impl Braid {
    /// Starts braid on a fresh SQLite file.
    pub async fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("braid-sdk-{}", braid_client::new_gid()));
        let mut braid = Self::start_on(&format!("sqlite://{}/braid.db", dir.display())).await;
        braid.dir = Some(dir);
        braid
    }

    /// Starts a braid replica on an existing store.
    pub async fn start_on(dsn: &str) -> Self {
        let mut config = Config::default();
        config.server.http_port = 0;
        config.server.grpc_port = 0;
        config.server.bind = "127.0.0.1".to_owned();
        config.store.dsn = dsn.to_owned();
        let server = Server::start(
            &config,
            StartOptions {
                scanner: false,
                grace: Duration::from_secs(5),
                ..StartOptions::default()
            },
        )
        .await
        .expect("braid starts");
        Self {
            server,
            dsn: dsn.to_owned(),
            http: reqwest::Client::new(),
            dir: None,
        }
    }

    /// The HTTP API base URL.
    pub fn dtm(&self) -> String {
        self.server.dtm_url()
    }

    /// An SDK client over HTTP.
    pub fn client(&self) -> braid_client::DtmClient {
        braid_client::DtmClient::http(self.dtm())
    }

    /// An SDK client over gRPC.
    pub fn grpc_client(&self) -> braid_client::DtmClient {
        braid_client::DtmClient::grpc(self.server.grpc_addr.to_string()).expect("grpc client")
    }

    /// The `query` reply.
    pub async fn query(&self, gid: &str) -> Value {
        self.http
            .get(format!("{}/query?gid={gid}", self.dtm()))
            .send()
            .await
            .expect("query sent")
            .text()
            .await
            .map(|t| serde_json::from_str(&t).expect("query JSON"))
            .expect("query body")
    }

    /// The global status.
    pub async fn status(&self, gid: &str) -> String {
        self.query(gid).await["transaction"]["status"]
            .as_str()
            .unwrap_or("<none>")
            .to_owned()
    }

    /// The branch statuses in stored order.
    pub async fn branch_statuses(&self, gid: &str) -> Vec<String> {
        self.query(gid).await["branches"]
            .as_array()
            .map(|bs| {
                bs.iter()
                    .map(|b| b["status"].as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Pretends `secs` seconds have passed.
    pub fn forward(&self, secs: u64) {
        self.server.clock.advance(Duration::from_secs(secs));
    }

    /// One recovery scan, waiting for its passes; returns the claimed gids.
    pub async fn cron_once(&self) -> Vec<String> {
        self.server
            .scanner
            .scan_once(true)
            .await
            .expect("scan works")
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    pub async fn stop(self) {
        self.server.stop().await;
        if let Some(dir) = self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Which store a barrier scenario runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Mysql,
    Postgres,
    Redis,
}

/// A connection to the store of `kind`.
pub async fn store(kind: Kind) -> Store {
    match kind {
        Kind::Mysql => Store::Mysql(mysql_pool().await),
        Kind::Postgres => Store::Postgres(postgres_pool().await),
        Kind::Redis => Store::Redis(redis_conn().await),
    }
}

/// Stamps out one `#[tokio::test]` per store for each scenario `async fn name(kind: Kind)`.
#[macro_export]
macro_rules! on_all_stores {
    ($($name:ident),+ $(,)?) => {
        mod mysql {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Kind::Mysql).await
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Kind::Postgres).await
                }
            )+
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Kind::Redis).await
                }
            )+
        }
    };
}
