//! MySQL / MariaDB backend (`mysql://user:pass@host:3306/db`). Needs MySQL 8 or MariaDB 10.6+ for
//! `FOR UPDATE SKIP LOCKED`. The database is created if it does not exist.

use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::migrate::Migrator;

use super::sql::{Dialect, SqlStore};
use super::{Error, Result, redact_dsn};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/mysql");

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
        // Create the database first, on a connection without it.
        {
            let pool = AnyPoolOptions::new()
                .max_connections(1)
                .connect(&server)
                .await
                .map_err(Error::Unavailable)?;
            sqlx::query(&format!("CREATE DATABASE IF NOT EXISTS `{db}`"))
                .execute(&pool)
                .await?;
            pool.close().await;
        }
        let pool = AnyPoolOptions::new()
            .max_connections(32)
            .min_connections(2)
            .acquire_timeout(Duration::from_secs(10))
            .max_lifetime(Duration::from_secs(300))
            .connect(&dsn)
            .await
            .map_err(Error::Unavailable)?;
        MIGRATOR.run(&pool).await?;
        tracing::debug!(dsn = %redact_dsn(&dsn), "mysql store open");
        Ok(SqlStore {
            pool,
            dialect: Dialect::Mysql,
        })
    }
}

/// Splits `mysql://u:p@h:3306/db?x=y` into (`mysql://u:p@h:3306/?x=y`, `db`).
fn split_database(dsn: &str) -> Result<(String, String)> {
    let (scheme, rest) = dsn.split_once("://").unwrap_or(("mysql", dsn));
    let (authority, path) = rest.split_once('/').ok_or_else(|| {
        Error::Config(format!(
            "mysql DSN '{}' names no database: add /dbname",
            redact_dsn(dsn)
        ))
    })?;
    let (db, query) = path
        .split_once('?')
        .map_or((path, None), |(d, q)| (d, Some(q)));
    if db.is_empty() {
        return Err(Error::Config(format!(
            "mysql DSN '{}' names no database: add /dbname",
            redact_dsn(dsn)
        )));
    }
    let query = query.map(|q| format!("?{q}")).unwrap_or_default();
    Ok((format!("{scheme}://{authority}/{query}"), db.to_owned()))
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
}
