//! The yardstick: how many single-row commits per second the same database does on its own, with N
//! connections each running autocommit `INSERT`s of one row into a scratch table. That is the ceiling of a
//! design that pays one durable commit per state change; braid's goal is more sagas per second than this.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sqlx::{Connection, Executor};

use crate::target::{ProcSample, Store, proc_sample};

/// Runs one statement on a fresh connection to `server` (a MySQL DSN without a database).
pub async fn mysql_exec(server: &str, sql: &str) -> anyhow::Result<()> {
    let mut conn = sqlx::MySqlConnection::connect(server)
        .await
        .with_context(|| format!("connecting to {server}"))?;
    conn.execute(sql)
        .await
        .with_context(|| format!("running {sql}"))?;
    conn.close().await.context("closing")?;
    Ok(())
}

/// Runs one statement on a fresh connection to database `postgres` of `server` (a PostgreSQL DSN
/// without a database).
pub async fn postgres_exec(server: &str, sql: &str) -> anyhow::Result<()> {
    let dsn = format!("{}/postgres", server.trim_end_matches('/'));
    let mut conn = sqlx::PgConnection::connect(&dsn)
        .await
        .with_context(|| format!("connecting to {dsn}"))?;
    conn.execute(sql)
        .await
        .with_context(|| format!("running {sql}"))?;
    conn.close().await.context("closing")?;
    Ok(())
}

/// Result of a raw commit run.
#[derive(Debug, Clone, Copy)]
pub struct RawRate {
    /// Commits per second.
    pub commits_per_sec: f64,
    /// Connections used.
    pub connections: usize,
    /// CPU of the database server meanwhile, in cores (MySQL/MariaDB on this machine).
    pub db_cores: Option<f64>,
    /// CPU of this process meanwhile (the client side; for SQLite also the database engine).
    pub client_cores: Option<f64>,
}

const ROW: &str = "a payload about as long as a small transaction row's gid";

/// Measures the autocommit single-row insert rate of `store`'s database with `connections` connections
/// for `duration`, after a short warm-up.
pub async fn measure(
    store: &Store,
    run_id: &str,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<RawRate> {
    let connections = connections.max(1);
    let count = Arc::new(AtomicU64::new(0));
    let counting = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    // One task per connection, inserting a row at a time until `stop`, counting while `counting`.
    macro_rules! spawn_inserter {
        ($conn:ident, $insert:literal) => {{
            let (count, counting, stop) = (count.clone(), counting.clone(), stop.clone());
            let mut $conn = $conn;
            tasks.spawn(async move {
                let mut i = 0i64;
                while !stop.load(Ordering::Relaxed) {
                    sqlx::query($insert)
                        .bind(ROW)
                        .bind(i)
                        .execute(&mut $conn)
                        .await
                        .context("raw insert")?;
                    i += 1;
                    if counting.load(Ordering::Relaxed) {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
                $conn.close().await.context("closing")?;
                anyhow::Ok(())
            });
        }};
    }
    match store {
        Store::Mysql { server } => {
            let server = server.trim_end_matches('/').to_owned();
            mysql_exec(&server, "CREATE DATABASE IF NOT EXISTS braid_bench_raw").await?;
            let dsn = format!("{server}/braid_bench_raw");
            let mut setup = sqlx::MySqlConnection::connect(&dsn)
                .await
                .context("connecting for the raw commit run")?;
            setup
                .execute(
                    "CREATE TABLE IF NOT EXISTS raw_commit (id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, \
                     v VARCHAR(128) NOT NULL, t BIGINT NOT NULL) ENGINE = InnoDB",
                )
                .await
                .context("creating raw_commit")?;
            setup
                .execute("TRUNCATE TABLE raw_commit")
                .await
                .context("emptying raw_commit")?;
            for _ in 0..connections {
                let conn = sqlx::MySqlConnection::connect(&dsn)
                    .await
                    .context("opening a raw commit connection")?;
                spawn_inserter!(conn, "INSERT INTO raw_commit (v, t) VALUES (?, ?)");
            }
        }
        Store::Postgres { server } => {
            let server = server.trim_end_matches('/').to_owned();
            let exists = {
                let mut conn = sqlx::PgConnection::connect(&format!("{server}/postgres"))
                    .await
                    .context("connecting for the raw commit run")?;
                let found: Option<i32> = sqlx::query_scalar(
                    "SELECT 1 FROM pg_database WHERE datname = 'braid_bench_raw'",
                )
                .fetch_optional(&mut conn)
                .await
                .context("looking for braid_bench_raw")?;
                conn.close().await.context("closing")?;
                found.is_some()
            };
            if !exists {
                postgres_exec(&server, "CREATE DATABASE braid_bench_raw").await?;
            }
            let dsn = format!("{server}/braid_bench_raw");
            let mut setup = sqlx::PgConnection::connect(&dsn)
                .await
                .context("connecting for the raw commit run")?;
            setup
                .execute(
                    "CREATE TABLE IF NOT EXISTS raw_commit (id BIGINT GENERATED BY DEFAULT AS IDENTITY \
                     PRIMARY KEY, v VARCHAR(128) NOT NULL, t BIGINT NOT NULL)",
                )
                .await
                .context("creating raw_commit")?;
            setup
                .execute("TRUNCATE TABLE raw_commit")
                .await
                .context("emptying raw_commit")?;
            setup.close().await.context("closing")?;
            for _ in 0..connections {
                let conn = sqlx::PgConnection::connect(&dsn)
                    .await
                    .context("opening a raw commit connection")?;
                spawn_inserter!(conn, "INSERT INTO raw_commit (v, t) VALUES ($1, $2)");
            }
        }
        Store::Sqlite { dir } => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let path = dir.join(format!("raw-{run_id}.db"));
            // The same durability as braid's SQLite store: WAL, synchronous = FULL.
            let url = format!("sqlite://{}?mode=rwc", path.display());
            let mut setup = sqlx::SqliteConnection::connect(&url)
                .await
                .context("opening the raw sqlite file")?;
            setup
                .execute(
                    "PRAGMA journal_mode = WAL; CREATE TABLE IF NOT EXISTS raw_commit \
                     (id INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT NOT NULL, t INTEGER NOT NULL)",
                )
                .await
                .context("creating raw_commit")?;
            setup.close().await.context("closing")?;
            for _ in 0..connections {
                let mut conn = sqlx::SqliteConnection::connect(&url)
                    .await
                    .context("opening a raw commit connection")?;
                conn.execute("PRAGMA busy_timeout = 10000; PRAGMA synchronous = FULL;")
                    .await
                    .context("pragmas")?;
                spawn_inserter!(conn, "INSERT INTO raw_commit (v, t) VALUES (?, ?)");
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let db_procs = store.db_procs();
    let db_before = db_procs.and_then(|d| d.sample());
    let me_before = proc_sample(std::process::id());
    counting.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    let n = count.load(Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let db_after = db_procs.and_then(|d| d.sample());
    let me_after = proc_sample(std::process::id());
    let cores = |a: Option<ProcSample>, b: Option<ProcSample>| {
        Some((b?.cpu_seconds - a?.cpu_seconds) / elapsed.max(1e-9))
    };
    stop.store(true, Ordering::Relaxed);
    while let Some(done) = tasks.join_next().await {
        done.context("raw commit task")??;
    }
    if let Store::Sqlite { dir } = store {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(dir.join(format!("raw-{run_id}.db{suffix}")));
        }
    }
    Ok(RawRate {
        commits_per_sec: n as f64 / elapsed,
        connections,
        db_cores: cores(db_before, db_after),
        client_cores: cores(me_before, me_after),
    })
}

/// The durability settings of a MySQL/MariaDB server, as one line for the report.
pub async fn mysql_settings(server: &str) -> anyhow::Result<String> {
    let mut conn = sqlx::MySqlConnection::connect(server)
        .await
        .with_context(|| format!("connecting to {server}"))?;
    let row: (String, i64, i64, i64, String) = sqlx::query_as(
        "SELECT VERSION(), CAST(@@innodb_flush_log_at_trx_commit AS SIGNED), CAST(@@sync_binlog AS SIGNED), \
         CAST(@@log_bin AS SIGNED), CAST(@@innodb_flush_method AS CHAR)",
    )
    .fetch_one(&mut conn)
    .await
    .context("reading server settings")?;
    conn.close().await.context("closing")?;
    Ok(format!(
        "database: {} innodb_flush_log_at_trx_commit={} sync_binlog={} log_bin={} innodb_flush_method={}",
        row.0,
        row.1,
        row.2,
        if row.3 != 0 { "ON" } else { "OFF" },
        row.4
    ))
}

/// The durability settings of a PostgreSQL server, as one line for the report.
pub async fn postgres_settings(server: &str) -> anyhow::Result<String> {
    let dsn = format!("{}/postgres", server.trim_end_matches('/'));
    let mut conn = sqlx::PgConnection::connect(&dsn)
        .await
        .with_context(|| format!("connecting to {dsn}"))?;
    let mut line = String::from("database: PostgreSQL");
    for setting in [
        "server_version",
        "fsync",
        "synchronous_commit",
        "wal_sync_method",
        "commit_delay",
        "max_connections",
    ] {
        let value: String = sqlx::query_scalar(&format!("SHOW {setting}"))
            .fetch_one(&mut conn)
            .await
            .with_context(|| format!("reading {setting}"))?;
        line.push_str(&format!(" {setting}={value}"));
    }
    conn.close().await.context("closing")?;
    Ok(line)
}
