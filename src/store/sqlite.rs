//! SQLite backend: the embedded default (`sqlite://braid-data/braid.db`). WAL journal, `synchronous=FULL` so an
//! acknowledged commit survives a crash of the process or the machine, and one writer at a time (the group-commit
//! writer), with readers running alongside. `sqlite://:memory:` is a private in-memory database on a single
//! connection, for tests and trials: nothing survives the process.

use std::path::Path;
use std::time::Duration;

use sqlx::Executor;
use sqlx::any::AnyPoolOptions;
use sqlx::migrate::Migrator;

use super::sql::{Dialect, SqlStore};
use super::{Error, Result};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

impl SqlStore {
    /// Opens (creating the file and its directory if needed) and migrates a SQLite database, or an in-memory one
    /// for `sqlite://:memory:`.
    pub(crate) async fn open_sqlite(dsn: &str) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let rest = dsn.trim_start_matches("sqlite://");
        let path = rest.split('?').next().unwrap_or_default();
        if path.is_empty() {
            return Err(Error::Config(format!(
                "sqlite DSN '{dsn}' names no file: use sqlite://path/to/braid.db"
            )));
        }
        let in_memory = path == ":memory:";
        if !in_memory
            && let Some(dir) = Path::new(path)
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir).map_err(|e| {
                Error::Config(format!(
                    "cannot create directory {} for the sqlite store: {e}",
                    dir.display()
                ))
            })?;
        }
        let (url, pool) = if in_memory {
            // sqlx's Any driver cannot parse `sqlite://:memory:`, and every connection to `sqlite::memory:`
            // opens a database of its own: an in-memory store has exactly one connection, kept for the life
            // of the pool (closing it would lose the data).
            let pool = AnyPoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None);
            ("sqlite::memory:".to_owned(), pool)
        } else if rest.contains('?') {
            (dsn.to_owned(), AnyPoolOptions::new().max_connections(8))
        } else {
            (
                format!("{dsn}?mode=rwc"),
                AnyPoolOptions::new().max_connections(8),
            )
        };
        let pool = pool
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("PRAGMA busy_timeout = 10000; PRAGMA synchronous = FULL; PRAGMA foreign_keys = OFF;")
                        .await?;
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .map_err(Error::Unavailable)?;
        sqlx::query("PRAGMA journal_mode = WAL")
            .execute(&pool)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(SqlStore {
            pool,
            dialect: Dialect::Sqlite,
        })
    }
}

#[cfg(test)]
mod tests {
    use sqlx::{AnyConnection, Connection};

    use super::*;

    /// A database busy with another writer is worth retrying (store::Error::Unavailable).
    #[tokio::test]
    async fn busy_database_is_retryable() {
        let db = crate::store::testing::sqlite_store().await;
        let mut holder = AnyConnection::connect(&db.dsn).await.unwrap();
        let mut other = AnyConnection::connect(&db.dsn).await.unwrap();
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut holder)
            .await
            .unwrap();
        sqlx::query("PRAGMA busy_timeout = 0")
            .execute(&mut other)
            .await
            .unwrap();

        let busy = sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut other)
            .await
            .unwrap_err();
        let busy = Error::from(busy);
        assert!(matches!(busy, Error::Unavailable(_)), "{busy:?}");
        assert!(busy.is_retryable());

        sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
        holder.close().await.unwrap();
        other.close().await.unwrap();
        db.finish().await;
    }
}
