//! Fresh stores for tests: every call makes a database of its own (a new SQLite file, or a new MySQL
//! database), so tests never share state and can run in parallel.
//!
//! A test calls [`TestDb::finish`] as its last step: a passing test removes its database, and a failing
//! one (which panics before getting there) keeps it for a post-mortem.
//!
//! MySQL tests use the server named by `BRAID_TEST_MYSQL` (default `mysql://root@127.0.0.1:3306`, no
//! database part), PostgreSQL tests the one named by `BRAID_TEST_POSTGRES` (default
//! `postgres://postgres@127.0.0.1:5432`); each test gets a database `braid_t_<random>` on it.

use std::path::PathBuf;

use sqlx::any::AnyPoolOptions;

use super::{DynStore, open};
use crate::model::{
    Branch, BranchId, Gid, GlobalStatus, GlobalTxn, Millis, Op, Partition, Protocol, TransOptions,
    TransType, Version,
};

/// The environment variable naming the MySQL/MariaDB server for tests, without a database.
pub const MYSQL_ENV: &str = "BRAID_TEST_MYSQL";

/// The server used when [`MYSQL_ENV`] is not set.
pub const MYSQL_DEFAULT: &str = "mysql://root@127.0.0.1:3306";

/// The environment variable naming the PostgreSQL server for tests, without a database.
pub const POSTGRES_ENV: &str = "BRAID_TEST_POSTGRES";

/// The server used when [`POSTGRES_ENV`] is not set.
pub const POSTGRES_DEFAULT: &str = "postgres://postgres@127.0.0.1:5432";

/// A store on a database made for one test.
pub struct TestDb {
    /// The store, migrated and empty.
    pub store: DynStore,
    /// The DSN it was opened with (to open the same database again).
    pub dsn: String,
    cleanup: Cleanup,
}

enum Cleanup {
    /// An in-memory database: nothing outlives the store.
    Nothing,
    /// A directory holding the SQLite file and its WAL.
    Dir(PathBuf),
    /// A database on a MySQL server (`server` has no database part).
    MysqlDatabase { server: String, name: String },
    /// A database on a PostgreSQL server (`server` has no database part).
    PostgresDatabase { server: String, name: String },
}

/// A name no other test (in this or another process) uses.
fn unique_name() -> String {
    format!("braid_t_{}", uuid::Uuid::new_v4().simple())
}

/// A store on a new SQLite file in the system's temp directory.
pub async fn sqlite_store() -> TestDb {
    let dir = std::env::temp_dir().join(unique_name());
    let dsn = format!("sqlite://{}", dir.join("braid.db").display());
    let store = open(&dsn)
        .await
        .unwrap_or_else(|e| panic!("open test store {dsn}: {e}"));
    TestDb {
        store,
        dsn,
        cleanup: Cleanup::Dir(dir),
    }
}

/// A store on a private in-memory SQLite database (`sqlite://:memory:`), gone when the store is dropped.
pub async fn sqlite_memory_store() -> TestDb {
    let dsn = "sqlite://:memory:".to_owned();
    let store = open(&dsn)
        .await
        .unwrap_or_else(|e| panic!("open test store {dsn}: {e}"));
    TestDb {
        store,
        dsn,
        cleanup: Cleanup::Nothing,
    }
}

/// A store on a new database of the MySQL server named by [`MYSQL_ENV`].
pub async fn mysql_store() -> TestDb {
    let base = std::env::var(MYSQL_ENV).unwrap_or_else(|_| MYSQL_DEFAULT.to_owned());
    let (server, query) = base
        .split_once('?')
        .map_or((base.as_str(), ""), |(s, q)| (s, q));
    let server = server.trim_end_matches('/');
    let name = unique_name();
    let query = if query.is_empty() {
        String::new()
    } else {
        format!("?{query}")
    };
    let dsn = format!("{server}/{name}{query}");
    let store = open(&dsn).await.unwrap_or_else(|e| {
        panic!(
            "open test store {}: {e} (is MySQL/MariaDB running? set {MYSQL_ENV} to a server DSN)",
            super::redact_dsn(&dsn)
        )
    });
    let server = format!("{server}/{query}");
    TestDb {
        store,
        dsn,
        cleanup: Cleanup::MysqlDatabase { server, name },
    }
}

/// A store on a new database of the PostgreSQL server named by [`POSTGRES_ENV`].
pub async fn postgres_store() -> TestDb {
    let server = std::env::var(POSTGRES_ENV).unwrap_or_else(|_| POSTGRES_DEFAULT.to_owned());
    let server = server.trim_end_matches('/').to_owned();
    let name = unique_name();
    let dsn = format!("{server}/{name}");
    let store = open(&dsn).await.unwrap_or_else(|e| {
        panic!(
            "open test store {}: {e} (is PostgreSQL running? set {POSTGRES_ENV} to a server DSN)",
            super::redact_dsn(&dsn)
        )
    });
    TestDb {
        store,
        dsn,
        cleanup: Cleanup::PostgresDatabase { server, name },
    }
}

/// Drops database `name` of the PostgreSQL server `server` (a DSN without a database part), closing the
/// connections still open to it.
pub async fn drop_postgres_database(server: &str, name: &str) {
    let pool = AnyPoolOptions::new()
        .max_connections(1)
        .connect(&format!("{}/postgres", server.trim_end_matches('/')))
        .await
        .unwrap_or_else(|e| panic!("connect to drop {name}: {e}"));
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&pool)
        .await
        .unwrap_or_else(|e| panic!("drop database {name}: {e}"));
    pool.close().await;
}

impl TestDb {
    /// Closes the store and removes its database. Call it last in a test, so a failed test keeps its data.
    pub async fn finish(self) {
        let Self { store, cleanup, .. } = self;
        drop(store);
        match cleanup {
            Cleanup::Nothing => {}
            Cleanup::Dir(dir) => {
                std::fs::remove_dir_all(&dir)
                    .unwrap_or_else(|e| panic!("remove {}: {e}", dir.display()));
            }
            Cleanup::MysqlDatabase { server, name } => {
                let pool = AnyPoolOptions::new()
                    .max_connections(1)
                    .connect(&server)
                    .await
                    .unwrap_or_else(|e| panic!("connect to drop {name}: {e}"));
                sqlx::query(&format!("DROP DATABASE IF EXISTS `{name}`"))
                    .execute(&pool)
                    .await
                    .unwrap_or_else(|e| panic!("drop database {name}: {e}"));
                pool.close().await;
            }
            Cleanup::PostgresDatabase { server, name } => {
                drop_postgres_database(&server, &name).await;
            }
        }
    }
}

/// The time test fixtures start at (the store takes the caller's `now`, so tests use fixed times).
pub const T0: Millis = Millis(1_700_000_000_000);

/// `T0 + secs` seconds (negative: before `T0`).
pub fn at(secs: i64) -> Millis {
    T0.plus_secs(secs)
}

/// A gid from a literal.
pub fn gid(raw: &str) -> Gid {
    Gid::parse(raw).unwrap_or_else(|e| panic!("test gid {raw:?}: {e}"))
}

/// A submitted saga created at `T0`, due at `T0 + 10 s` with a 10 s interval, in partition 1, version 1.
pub fn txn(raw_gid: &str) -> GlobalTxn {
    GlobalTxn {
        id: 0,
        gid: gid(raw_gid),
        trans_type: TransType::Saga,
        status: GlobalStatus::Submitted,
        query_prepared: String::new(),
        protocol: Protocol::Http,
        custom_data: r#"{"orders":{}}"#.to_owned(),
        options: TransOptions::default(),
        create_time: T0,
        update_time: T0,
        finish_time: None,
        rollback_time: None,
        result: String::new(),
        rollback_reason: String::new(),
        next_cron_interval: 10,
        next_cron_time: Some(at(10)),
        owner: String::new(),
        version: Version(1),
        partition: Partition(1),
    }
}

/// [`txn`] with another status, due at `next` (`None`: unscheduled).
pub fn txn_with(raw_gid: &str, status: GlobalStatus, next: Option<Millis>) -> GlobalTxn {
    GlobalTxn {
        status,
        next_cron_time: next,
        ..txn(raw_gid)
    }
}

/// A prepared branch of `raw_gid` created at `T0`, with a URL and a JSON body naming it.
pub fn branch(raw_gid: &str, id: &str, op: Op) -> Branch {
    Branch::new(
        &gid(raw_gid),
        BranchId::new(id),
        op,
        format!("http://svc/{id}/{op}"),
        format!(r#"{{"branch":"{id}"}}"#).into_bytes(),
        T0,
    )
}

/// Stamps out one `#[tokio::test]` per check, each on a fresh database from `$fresh` that a passing test drops:
/// `db_tests!(crate::store::testing::sqlite_store; check_a, check_b)` inside a module whose parent defines
/// `async fn check_a(db: &TestDb)`. Use it once per backend, each in its own module.
macro_rules! db_tests {
    ($fresh:path; $($check:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $check() {
                let db = $fresh().await;
                super::$check(&db).await;
                db.finish().await;
            }
        )+
    };
}
pub(crate) use db_tests;
