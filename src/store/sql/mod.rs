//! The SQL implementation of the store traits, shared by the SQLite and MySQL backends through sqlx's `Any`
//! driver. The backends differ only in the [`Dialect`]: how a write transaction begins, how due rows are
//! claimed, and which error codes mean "duplicate key".
//!
//! [`SqlStore`] implements each trait of the contract in the file of the same name: `txns.rs` (batched
//! writes with grouped statements, reads), `claims.rs` (claims and fencing), `leases.rs`, `kv.rs` and
//! `maintenance.rs`. This file holds the shared parts: the dialect, row decoding helpers and
//! [`StoreBase`].

mod claims;
mod kv;
mod leases;
mod maintenance;
mod txns;

use async_trait::async_trait;
use sqlx::AnyPool;
use sqlx::any::AnyRow;
use sqlx::{Any, Row};

use super::{Error, Result, StoreBase};
use crate::model::Millis;

/// What differs between SQL databases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// SQLite: one writer at a time; `BEGIN IMMEDIATE` takes the write lock up front; `UPDATE .. RETURNING`.
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    Sqlite,
    /// MySQL 8 / MariaDB 10.6+: row locks; claims use `FOR UPDATE SKIP LOCKED`.
    #[cfg_attr(not(feature = "mysql"), allow(dead_code))]
    Mysql,
}

impl Dialect {
    fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Mysql => "mysql",
        }
    }

    fn begin(self) -> &'static str {
        match self {
            Self::Sqlite => "BEGIN IMMEDIATE",
            Self::Mysql => "BEGIN",
        }
    }

    /// Appended to a `SELECT` that must keep the rows it read unchanged until commit. SQLite needs nothing:
    /// its write transactions (`BEGIN IMMEDIATE`) exclude every other writer.
    fn share_lock(self) -> &'static str {
        match self {
            Self::Sqlite => "",
            Self::Mysql => " LOCK IN SHARE MODE",
        }
    }

    /// An `INSERT` that skips rows whose key exists.
    fn insert_ignore(self) -> &'static str {
        match self {
            Self::Sqlite => "INSERT OR IGNORE INTO",
            Self::Mysql => "INSERT IGNORE INTO",
        }
    }
}

/// Whether `err` is a unique-key violation (a gid, branch or KV key that exists). Asks the driver's error
/// kind: MySQL's `code()` is the SQLSTATE (`23000` for many constraint errors), not the error number.
fn is_duplicate_key(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// Most rows per multi-row statement (keeps well under every database's bind-parameter limit).
const INSERT_CHUNK: usize = 256;

/// A store on an SQL database.
pub(crate) struct SqlStore {
    pub(crate) pool: AnyPool,
    pub(crate) dialect: Dialect,
}

fn placeholders(n: usize) -> String {
    let mut s = String::with_capacity(n * 3);
    for i in 0..n {
        if i > 0 {
            s.push_str(", ");
        }
        s.push('?');
    }
    s
}

type AnyQuery<'q> = sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>;

fn corrupt(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Corrupt(format!("{what}: {e}"))
}

/// A text column. sqlx's `Any` driver reports MySQL `TEXT` columns as BLOB and refuses to decode them as
/// `String`, so bytes are accepted too (and must be UTF-8).
fn text(row: &AnyRow, col: &str) -> Result<String> {
    match row.try_get::<String, _>(col) {
        Ok(s) => Ok(s),
        Err(sqlx::Error::ColumnDecode { .. }) => {
            let bytes: Vec<u8> = row.try_get(col)?;
            String::from_utf8(bytes).map_err(|e| corrupt(col, e))
        }
        Err(e) => Err(e.into()),
    }
}

#[async_trait]
impl StoreBase for SqlStore {
    fn kind(&self) -> &'static str {
        self.dialect.name()
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn db_now(&self) -> Result<Millis> {
        let sql = match self.dialect {
            Dialect::Sqlite => {
                "SELECT CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER) AS now_ms"
            }
            Dialect::Mysql => "SELECT CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED) AS now_ms",
        };
        let row = sqlx::query(sql).fetch_one(&self.pool).await?;
        Ok(Millis(row.try_get("now_ms")?))
    }

    async fn max_packet_bytes(&self) -> Result<Option<u64>> {
        match self.dialect {
            Dialect::Sqlite => Ok(None),
            Dialect::Mysql => {
                let sql = "SELECT CAST(@@max_allowed_packet AS SIGNED) AS packet";
                let packet: i64 = sqlx::query(sql)
                    .fetch_one(&self.pool)
                    .await?
                    .try_get("packet")?;
                Ok(u64::try_from(packet).ok())
            }
        }
    }
}
