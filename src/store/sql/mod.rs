//! The SQL implementation of the store traits, shared by the SQLite, MySQL and PostgreSQL backends through
//! sqlx's `Any` driver. The backends differ only in the [`Dialect`]: the placeholder syntax, how a write
//! transaction begins, how due rows are claimed, how an insert skips existing keys, and how the database
//! reports a lock conflict.
//!
//! Statements are written once, with `?` placeholders; [`SqlStore::stmt`] (fixed statements, rewritten once
//! per process) and [`SqlStore::sql`] (statements built at run time) give them in the database's syntax.
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

use std::borrow::Cow;

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
    /// PostgreSQL 13+: row locks, `FOR UPDATE SKIP LOCKED` claims in one `UPDATE .. RETURNING`, `$n`
    /// placeholders. A failed statement aborts the whole transaction, so nothing relies on catching one
    /// inside a transaction without a savepoint.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    Postgres,
}

impl Dialect {
    fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Mysql => "mysql",
            Self::Postgres => "postgres",
        }
    }

    fn begin(self) -> &'static str {
        match self {
            Self::Sqlite => "BEGIN IMMEDIATE",
            Self::Mysql | Self::Postgres => "BEGIN",
        }
    }

    /// `sql` (written with `?` placeholders) in this dialect's syntax: unchanged, or with `$1, $2, ..` on
    /// PostgreSQL. A `?` inside a quoted literal or identifier is left alone.
    pub(crate) fn sql(self, sql: &str) -> Cow<'_, str> {
        if self != Self::Postgres || !sql.contains('?') {
            return Cow::Borrowed(sql);
        }
        let mut out = String::with_capacity(sql.len() + 16);
        let mut n = 0u32;
        let mut quote: Option<char> = None;
        for c in sql.chars() {
            match (quote, c) {
                (None, '\'' | '"' | '`') => {
                    quote = Some(c);
                    out.push(c);
                }
                (Some(q), c) if c == q => {
                    quote = None;
                    out.push(c);
                }
                (None, '?') => {
                    n += 1;
                    out.push('$');
                    out.push_str(&n.to_string());
                }
                _ => out.push(c),
            }
        }
        Cow::Owned(out)
    }

    /// Appended to a `SELECT` that must keep the rows it read unchanged until commit. SQLite needs nothing:
    /// its write transactions (`BEGIN IMMEDIATE`) exclude every other writer.
    fn share_lock(self) -> &'static str {
        match self {
            Self::Sqlite => "",
            Self::Mysql => " LOCK IN SHARE MODE",
            Self::Postgres => " FOR SHARE",
        }
    }

    /// An `INSERT` that skips rows whose key exists: this before the table name, and
    /// [`Dialect::insert_ignore_end`] after the values.
    fn insert_ignore(self) -> &'static str {
        match self {
            Self::Sqlite => "INSERT OR IGNORE INTO",
            Self::Mysql => "INSERT IGNORE INTO",
            Self::Postgres => "INSERT INTO",
        }
    }

    /// See [`Dialect::insert_ignore`].
    fn insert_ignore_end(self) -> &'static str {
        match self {
            Self::Sqlite | Self::Mysql => "",
            Self::Postgres => " ON CONFLICT DO NOTHING",
        }
    }
}

/// Fixed statements rewritten for PostgreSQL, each once per process (the set is the program's own
/// statement texts, so it is bounded). Read-mostly: a write lock only for a statement's first use.
static POSTGRES_STMTS: std::sync::LazyLock<
    std::sync::RwLock<std::collections::HashMap<&'static str, &'static str>>,
> = std::sync::LazyLock::new(Default::default);

impl SqlStore {
    /// A fixed statement in this store's syntax (see the module docs).
    pub(super) fn stmt(&self, sql: &'static str) -> &'static str {
        if self.dialect != Dialect::Postgres {
            return sql;
        }
        let known = POSTGRES_STMTS
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(sql)
            .copied();
        if let Some(rewritten) = known {
            return rewritten;
        }
        let rewritten = self.dialect.sql(sql).into_owned();
        let mut stmts = POSTGRES_STMTS
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let stored: &'static str = stmts
            .entry(sql)
            .or_insert_with(|| Box::leak(rewritten.into_boxed_str()));
        stored
    }

    /// A statement text cached for the process (a borrowed one, as [`SqlStore::stmt`]) or built at run time
    /// (an owned one), in this store's syntax.
    pub(super) fn cached_sql(&self, sql: Cow<'static, str>) -> Cow<'static, str> {
        match sql {
            Cow::Borrowed(s) => Cow::Borrowed(self.stmt(s)),
            Cow::Owned(s) => Cow::Owned(self.sql(&s).into_owned()),
        }
    }

    /// A statement built at run time in this store's syntax (see the module docs).
    pub(super) fn sql<'a>(&self, sql: &'a str) -> Cow<'a, str> {
        self.dialect.sql(sql)
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
            Dialect::Postgres => {
                "SELECT CAST(FLOOR(EXTRACT(EPOCH FROM clock_timestamp()) * 1000) AS BIGINT) AS now_ms"
            }
        };
        let row = sqlx::query(sql).fetch_one(&self.pool).await?;
        Ok(Millis(row.try_get("now_ms")?))
    }

    async fn max_packet_bytes(&self) -> Result<Option<u64>> {
        match self.dialect {
            // PostgreSQL takes statements of up to 1 GiB: the writer's own cap is far below.
            Dialect::Sqlite | Dialect::Postgres => Ok(None),
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
