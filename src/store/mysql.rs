//! MySQL / MariaDB backend (`mysql://user:pass@host:3306/db`). Needs MySQL 8 or MariaDB 10.6+ for
//! `FOR UPDATE SKIP LOCKED`. The database is created if it does not exist.

use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::migrate::Migrator;
use sqlx::{Connection, Executor};

use super::sql::{Dialect, SqlStore};
use super::{Error, Result, redact_dsn, split_database};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/mysql");

/// A pooled connection idle longer than this is pinged before it is used again.
const IDLE_PING_AFTER: Duration = Duration::from_secs(1);

/// Added to each connection's `sql_mode`.
const STRICT_SQL_MODE: &str =
    "SET SESSION sql_mode = CONCAT_WS(',', NULLIF(@@SESSION.sql_mode, ''), 'STRICT_ALL_TABLES')";

impl SqlStore {
    pub(crate) async fn open_mysql(dsn: &str) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let dsn = dsn.replacen("mariadb://", "mysql://", 1);
        let (server, db) = split_database(&dsn)?;
        if !db.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(Error::Config(format!(
                "database name '{db}' in the store DSN must be letters, digits or _"
            )));
        }
        // Create the database first, on a connection without it. One connection, not a pool: a server
        // that is down or refuses the credentials answers at once, instead of after a pool's timeout.
        {
            let mut conn = sqlx::AnyConnection::connect(&server).await?;
            sqlx::query(&format!("CREATE DATABASE IF NOT EXISTS `{db}`"))
                .execute(&mut conn)
                .await?;
            conn.close().await?;
        }
        let pool = AnyPoolOptions::new()
            .max_connections(32)
            .min_connections(2)
            .acquire_timeout(Duration::from_secs(10))
            .max_lifetime(Duration::from_secs(300))
            // sqlx pings every connection it hands out, a round trip before each batch of the writer
            // and each read. A connection in steady use is known to be alive; ping only one that sat
            // idle (e.g. across a database restart), so a stale one is still replaced before use.
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
                    // Strict mode whatever the server's default: a value too long for its column is an
                    // error, never silently truncated. (sqlx already sets time_zone = '+00:00', so NOW()
                    // has no DST ambiguity in db_now.)
                    conn.execute(STRICT_SQL_MODE).await?;
                    // Every write is a compare-and-set on the row itself; REPEATABLE READ's gap locks only
                    // add deadlocks between the writer's inserts and the scanner's claims.
                    conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                        .await?;
                    Ok(())
                })
            })
            .connect(&dsn)
            .await
            .map_err(Error::Unavailable)?;
        migrate_locked(&pool, &db).await?;
        tracing::debug!(dsn = %redact_dsn(&dsn), "mysql store open");
        Ok(SqlStore {
            pool,
            dialect: Dialect::Mysql,
        })
    }
}

/// Runs the migrations under a named lock, so replicas starting together on a fresh database apply them
/// once. (sqlx's own migration lock is `GET_LOCK(name, -1)`, which MariaDB answers with NULL at once instead
/// of waiting: without this, concurrent first starts fail on duplicate migration rows.)
async fn migrate_locked(pool: &sqlx::AnyPool, db: &str) -> Result<()> {
    let mut conn = pool.acquire().await?;
    let name = format!("braid_migrate_{db}");
    let locked: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, 60)")
        .bind(&name)
        .fetch_one(&mut *conn)
        .await?;
    if locked != Some(1) {
        return Err(Error::Config(format!(
            "could not take the migration lock {name} within 60 s (another replica is migrating?)"
        )));
    }
    let migrated = MIGRATOR.run(&mut *conn).await;
    let released = sqlx::query("SELECT RELEASE_LOCK(?)")
        .bind(&name)
        .execute(&mut *conn)
        .await;
    migrated?;
    released?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_database_from_dsn() {
        let (server, db) =
            split_database("mysql://root:pw@127.0.0.1:3306/braid?ssl-mode=disabled").unwrap();
        assert_eq!(server, "mysql://root:pw@127.0.0.1:3306/?ssl-mode=disabled");
        assert_eq!(db, "braid");
        assert!(split_database("mysql://root@127.0.0.1:3306").is_err());
        assert!(split_database("mysql://root@127.0.0.1:3306/").is_err());
    }

    /// Replicas starting together on a fresh database all come up: the migrations run once, under a lock.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_first_starts_migrate_once() {
        let base = std::env::var(crate::store::testing::MYSQL_ENV)
            .unwrap_or_else(|_| crate::store::testing::MYSQL_DEFAULT.to_owned());
        let name = format!("braid_t_{}", uuid::Uuid::new_v4().simple());
        let dsn = format!("{}/{name}", base.trim_end_matches('/'));
        let opens = (0..4).map(|_| SqlStore::open_mysql(&dsn));
        for opened in futures::future::join_all(opens).await {
            let store = opened.unwrap();
            store.pool.close().await;
        }
        let pool = AnyPoolOptions::new()
            .max_connections(1)
            .connect(&format!("{}/", base.trim_end_matches('/')))
            .await
            .unwrap();
        sqlx::query(&format!("DROP DATABASE `{name}`"))
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    }

    /// The store reports the server's `max_allowed_packet`, which the writer's batches stay under.
    #[tokio::test]
    async fn reports_the_packet_limit() {
        use crate::store::StoreBase as _;
        let db = crate::store::testing::mysql_store().await;
        let store = SqlStore::open_mysql(&db.dsn).await.unwrap();
        let packet: i64 = sqlx::query_scalar("SELECT CAST(@@max_allowed_packet AS SIGNED)")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(
            store.max_packet_bytes().await.unwrap(),
            Some(u64::try_from(packet).unwrap())
        );
        store.pool.close().await;
        db.finish().await;
    }

    /// Every connection is strict, so overlong values fail instead of being truncated.
    #[tokio::test]
    async fn connections_are_strict() {
        let db = crate::store::testing::mysql_store().await;
        let store = SqlStore::open_mysql(&db.dsn).await.unwrap();
        // The server's default has STRICT_TRANS_TABLES at most; STRICT_ALL_TABLES comes from the store.
        let mode: String = sqlx::query_scalar("SELECT @@SESSION.sql_mode")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert!(mode.split(',').any(|m| m == "STRICT_ALL_TABLES"), "{mode}");
        store.pool.close().await;
        db.finish().await;
    }

    /// A deadlock is a lost race worth retrying (store::Error::Unavailable); a duplicate key is not.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deadlocks_are_retryable_and_duplicates_are_not() {
        let db = crate::store::testing::mysql_store().await;
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

        // Each transaction locks one row, then wants the other's: InnoDB picks a victim at once.
        let mut a = pool.begin().await.unwrap();
        let mut b = pool.begin().await.unwrap();
        let lock = "UPDATE braid_kv SET v = '1' WHERE cat = 't' AND k = ?";
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
        assert!(
            matches!(errors[0], Error::Unavailable(_)),
            "{:?}",
            errors[0]
        );
        assert!(errors[0].is_retryable());
        assert_eq!(errors[0].metric_label(), "unavailable");
        drop((a, b));
        pool.close().await;
        db.finish().await;
    }
}
