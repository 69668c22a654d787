//! PostgreSQL backend (`postgres://user:pass@host:5432/db`, also `postgresql://`). Needs PostgreSQL 13+.
//! The database is created if it does not exist; migrations run under sqlx's advisory lock, so replicas
//! starting together on a fresh database apply them once. Connections run READ COMMITTED: every write is a
//! compare-and-set on the row itself, claims lock what they take with `FOR UPDATE SKIP LOCKED`, and fenced
//! writes read their partition row `FOR SHARE` in the same transaction.
//!
//! TLS: the DSN's `sslmode` (`disable`, `prefer`, `require`, `verify-ca`, `verify-full`) and `sslrootcert`
//! are libpq's and mean the same here.

use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::migrate::Migrator;
use sqlx::{Connection, Executor};

use super::sql::{Dialect, SqlStore};
use super::{Error, Result, redact_dsn, split_database};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// A pooled connection idle longer than this is pinged before it is used again.
const IDLE_PING_AFTER: Duration = Duration::from_secs(1);

/// PostgreSQL's SQLSTATE for "database already exists" (a concurrent first start created it).
const DUPLICATE_DATABASE: &str = "42P04";

impl SqlStore {
    pub(crate) async fn open_postgres(dsn: &str) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let dsn = dsn.replacen("postgresql://", "postgres://", 1);
        let (server, db) = split_database(&dsn)?;
        if !db.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(Error::Config(format!(
                "database name '{db}' in the store DSN must be letters, digits or _"
            )));
        }
        create_database(&server, &db).await?;
        let pool = AnyPoolOptions::new()
            .max_connections(32)
            .min_connections(2)
            .acquire_timeout(Duration::from_secs(10))
            .max_lifetime(Duration::from_secs(300))
            // As on MySQL: ping only a connection that sat idle, not one in steady use.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for > IDLE_PING_AFTER {
                        conn.ping().await?;
                    }
                    Ok(true)
                })
            })
            .after_connect(|conn, _| {
                Box::pin(async move {
                    // READ COMMITTED whatever the server's default, and times in UTC (db_now reads epoch
                    // milliseconds, which do not depend on it, but any text a human reads does).
                    conn.execute(
                        "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED",
                    )
                    .await?;
                    conn.execute("SET TIME ZONE 'UTC'").await?;
                    Ok(())
                })
            })
            .connect(&dsn)
            .await
            .map_err(Error::Unavailable)?;
        MIGRATOR.run(&pool).await?;
        tracing::debug!(dsn = %redact_dsn(&dsn), "postgres store open");
        Ok(SqlStore {
            pool,
            dialect: Dialect::Postgres,
        })
    }
}

/// Creates database `db` on the server unless it exists, from a connection to the server's `postgres`
/// database.
async fn create_database(server: &str, db: &str) -> Result<()> {
    let (base, query) = server.split_once('?').map_or((server, ""), |(b, q)| (b, q));
    let maintenance = if query.is_empty() {
        format!("{base}postgres")
    } else {
        format!("{base}postgres?{query}")
    };
    // One connection, not a pool: a server that is down or refuses the credentials answers at once,
    // instead of after a pool's timeout.
    let mut conn = sqlx::AnyConnection::connect(&maintenance).await?;
    let exists = sqlx::query("SELECT 1 AS found FROM pg_database WHERE datname = $1")
        .bind(db)
        .fetch_optional(&mut conn)
        .await?
        .is_some();
    if !exists {
        let created = sqlx::query(&format!("CREATE DATABASE \"{db}\""))
            .execute(&mut conn)
            .await;
        match created {
            Ok(_) => {}
            // Another replica created it between our check and our CREATE.
            Err(sqlx::Error::Database(e))
                if e.code().as_deref() == Some(DUPLICATE_DATABASE) || e.is_unique_violation() => {}
            Err(e) => return Err(e.into()),
        }
    }
    conn.close().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replicas starting together on a fresh database all come up: the database is created once and the
    /// migrations run once, under the advisory lock.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_first_starts_migrate_once() {
        let base = std::env::var(crate::store::testing::POSTGRES_ENV)
            .unwrap_or_else(|_| crate::store::testing::POSTGRES_DEFAULT.to_owned());
        let name = format!("braid_t_{}", uuid::Uuid::new_v4().simple());
        let dsn = format!("{}/{name}", base.trim_end_matches('/'));
        let opens = (0..4).map(|_| SqlStore::open_postgres(&dsn));
        for opened in futures::future::join_all(opens).await {
            let store = opened.unwrap();
            store.pool.close().await;
        }
        crate::store::testing::drop_postgres_database(&base, &name).await;
    }

    /// A deadlock is a lost race worth retrying (store::Error::Unavailable); a duplicate key is not, and
    /// neither is a statement the database refuses.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deadlocks_are_retryable_and_duplicates_are_not() {
        let db = crate::store::testing::postgres_store().await;
        let now = crate::model::Millis(1);
        assert!(db.store.kv_create("t", "a", "0", now).await.unwrap());
        assert!(db.store.kv_create("t", "b", "0", now).await.unwrap());
        let pool = AnyPoolOptions::new()
            .max_connections(2)
            .connect(&db.dsn)
            .await
            .unwrap();

        let dup = sqlx::query("INSERT INTO braid_kv (cat, k, v, create_time, update_time) VALUES ('t', 'a', '', 1, 1)")
            .execute(&pool)
            .await
            .unwrap_err();
        let dup = Error::from(dup);
        assert!(
            matches!(dup, Error::Query(_)) && !dup.is_retryable(),
            "{dup:?}"
        );

        let mut a = pool.begin().await.unwrap();
        let mut b = pool.begin().await.unwrap();
        let lock = "UPDATE braid_kv SET v = '1' WHERE cat = 't' AND k = $1";
        sqlx::query(lock).bind("a").execute(&mut *a).await.unwrap();
        sqlx::query(lock).bind("b").execute(&mut *b).await.unwrap();
        let (ra, rb) = tokio::join!(
            sqlx::query(lock).bind("b").execute(&mut *a),
            sqlx::query(lock).bind("a").execute(&mut *b),
        );
        let errors: Vec<Error> = [ra.err(), rb.err()]
            .into_iter()
            .flatten()
            .map(Error::from)
            .collect();
        assert_eq!(errors.len(), 1, "exactly one deadlock victim: {errors:?}");
        assert!(errors[0].is_retryable(), "{:?}", errors[0]);
        assert!(errors[0].is_lock_conflict(), "{:?}", errors[0]);
        drop((a, b));
        pool.close().await;
        db.finish().await;
    }

    /// Placeholders become `$n`, except inside quoted literals and identifiers.
    #[test]
    fn placeholders_are_numbered() {
        let d = Dialect::Postgres;
        assert_eq!(
            d.sql("SELECT a FROM t WHERE b = ? AND c IN (?, ?) AND d = '?' AND \"e?\" = ?"),
            "SELECT a FROM t WHERE b = $1 AND c IN ($2, $3) AND d = '?' AND \"e?\" = $4"
        );
        assert_eq!(Dialect::Mysql.sql("a = ?"), "a = ?");
    }
}
