//! The store contract: everything braid keeps durable goes through it. The contract is one small trait per
//! concern, each documenting its own rules, and every backend implements all of them:
//!
//! - [`StoreBase`]: the backend's name, a liveness check and the database's clock;
//! - [`TxnStore`] (`txns.rs`): global transactions and their branches, written in batches of
//!   compare-and-set writes, read by gid, listed in pages;
//! - [`ClaimStore`] (`claims.rs`): the recovery scanner's claims of due transactions, and partition fencing;
//! - [`LeaseStore`] (`leases.rs`): the leases of the `sql` lease backend;
//! - [`KvStore`] (`kv.rs`): KV records (msg topics);
//! - [`Maintenance`] (`maintenance.rs`): rescheduling by hand and the retention of finished transactions.
//!
//! [`Store`] is all of them together, implemented for every type that implements each, and [`DynStore`] is
//! how the server shares one. Code that needs one concern can name just its trait (the `sql` lease backend
//! holds an `Arc<dyn LeaseStore>`). The SQL backend implements each trait in the file of the same name under
//! `sql/`, and the conformance suite checks each in the file of the same name under `conformance/`.
//!
//! Invariants every backend upholds besides those of each trait (the conformance suite checks them too):
//! - **Nothing is truncated.** Payloads (`custom_data`, `options`, `result`, `rollback_reason`, `bin_data`,
//!   KV values) hold at least 16 MiB on every backend. A value longer than a bounded column (MySQL: URLs and
//!   `query_prepared` 1024, `owner` and KV keys 128, categories 64 characters) is refused with
//!   [`Error::Query`], never cut short.
//! - **One clock.** Times come from the store's [`clock::StoreClock`], anchored to the database's clock, not
//!   from each host's wall clock.
//! - **Fencing.** Every partition has an epoch ([`LeaseEpoch`](crate::model::LeaseEpoch)) that
//!   [`ClaimStore::fence_partition`] bumps when a replica takes the partition over. A fenced write
//!   ([`TxnUpdate::fence`], [`ClaimScope::Fenced`]) checks the stored epoch *inside the same database
//!   transaction* as its conditional write, holding a shared lock on the partition row until commit, so an
//!   epoch bump is ordered either wholly before the write (which then is `Conflict` / claims nothing there)
//!   or wholly after it. Writes without a fence (new transactions, API calls) are guarded by the status and
//!   version compare-and-set alone.
//!
//! The group-commit [`writer::Writer`] sits in front of [`TxnStore::apply`] and is the only caller of it in
//! the server.

mod claims;
pub mod clock;
#[cfg(test)]
pub mod conformance;
mod kv;
mod leases;
mod maintenance;
#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(feature = "postgres")]
pub mod postgres;
mod sql;
#[cfg(feature = "sqlite")]
pub mod sqlite;
#[cfg(test)]
pub mod testing;
mod txns;
pub mod writer;

use std::sync::Arc;

use async_trait::async_trait;

pub use self::claims::{Claim, ClaimScope, ClaimStore, Claimed, PartitionFence};
pub use self::kv::KvStore;
pub use self::leases::{LeaseRecord, LeaseStore};
pub use self::maintenance::Maintenance;
pub use self::txns::{
    BranchUpdate, ScanFilter, Schedule, TxnStore, TxnUpdate, Write, WriteOutcome,
};
use crate::model::Millis;

/// Errors of the store layer. Lost races are not errors (see [`WriteOutcome::Conflict`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database could not be reached or refused the operation for a transient reason.
    #[error("store unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// The database answered with an error that retrying will not fix.
    #[error("store query failed: {0}")]
    Query(#[source] sqlx::Error),
    /// Stored data could not be decoded.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// Migrations failed.
    #[error("store migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The DSN names a backend this build does not have, or is malformed.
    #[error("{0}")]
    Config(String),
    /// The group-commit writer has stopped (the server is shutting down).
    #[error("store writer is not running")]
    WriterStopped,
    /// One write is larger than the most the writer puts in one database transaction, so it can never be
    /// stored (on MySQL a bigger statement would exceed `max_allowed_packet`). Nothing was written.
    #[error(
        "the write needs about {bytes} bytes in the store, over the limit of {limit} bytes per write \
         (writer-max-batch-bytes; by default the database's max_allowed_packet less a margin)"
    )]
    TooLarge {
        /// The write's estimated size ([`Write::estimated_bytes`]).
        bytes: u64,
        /// The writer's batch byte limit.
        limit: u64,
    },
}

impl Error {
    /// Whether retrying the same operation later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::WriterStopped)
    }

    /// Whether the database rolled the transaction back because of a lock conflict with another
    /// transaction (deadlock, lock wait timeout, SQLite busy). Nothing was applied; the same writes can be
    /// applied again at once.
    pub fn is_lock_conflict(&self) -> bool {
        let Self::Unavailable(sqlx::Error::Database(db)) = self else {
            return false;
        };
        #[cfg(feature = "mysql")]
        if let Some(my) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
            return matches!(my.number(), 1205 | 1213);
        }
        #[cfg(feature = "postgres")]
        if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
            // serialization_failure, deadlock_detected, lock_not_available.
            return matches!(pg.code(), "40001" | "40P01" | "55P03");
        }
        db.code()
            .and_then(|c| c.parse::<i32>().ok())
            .is_some_and(|c| matches!(c & 0xff, 5 | 6))
    }

    /// For an error that says no connection to the database could be used at all, an equal error (one for
    /// each waiter of a failed batch). `None` for errors that may be caused by one write of the batch.
    pub(crate) fn connection_copy(&self) -> Option<Self> {
        let Self::Unavailable(e) = self else {
            return None;
        };
        let copy = match e {
            sqlx::Error::PoolTimedOut => sqlx::Error::PoolTimedOut,
            sqlx::Error::PoolClosed => sqlx::Error::PoolClosed,
            sqlx::Error::Io(io) => sqlx::Error::Io(std::io::Error::new(io.kind(), io.to_string())),
            _ => return None,
        };
        Some(Self::Unavailable(copy))
    }

    /// A fixed label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Unavailable(_) => "unavailable",
            Self::Query(_) => "query",
            Self::Corrupt(_) => "corrupt",
            Self::Migrate(_) => "migrate",
            Self::Config(_) => "config",
            Self::WriterStopped => "writer_stopped",
            Self::TooLarge { .. } => "too_large",
        }
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_) => Self::Unavailable(e),
            sqlx::Error::Database(db) if is_transient_db_error(db.as_ref()) => Self::Unavailable(e),
            _ => Self::Query(e),
        }
    }
}

/// Deadlocks, lock wait timeouts, busy databases and server shutdowns: worth retrying.
fn is_transient_db_error(db: &dyn sqlx::error::DatabaseError) -> bool {
    #[cfg(feature = "mysql")]
    if let Some(my) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        // A MySQL error's `code()` is its SQLSTATE (`HY000` for most); the error number says what happened.
        // 1205 lock wait timeout, 1213 deadlock, 1040 too many connections, 1053 server shutdown,
        // 1927 connection killed (MariaDB), 4031 disconnected for inactivity. Lost connections (client errors
        // 2006/2013) reach us as I/O errors.
        return matches!(my.number(), 1205 | 1213 | 1040 | 1053 | 1927 | 4031);
    }
    #[cfg(feature = "postgres")]
    if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
        // Class 08 connection exceptions, 40001 serialization failure, 40P01 deadlock, 53300 too many
        // connections, 55P03 lock not available, 57P01-57P03 shutting down / starting up.
        let code = pg.code();
        return code.starts_with("08")
            || matches!(
                code,
                "40001" | "40P01" | "53300" | "55P03" | "57P01" | "57P02" | "57P03"
            );
    }
    // SQLite reports extended result codes, whose low byte is the primary code: 5 SQLITE_BUSY (and
    // BUSY_RECOVERY, BUSY_SNAPSHOT, BUSY_TIMEOUT), 6 SQLITE_LOCKED (and LOCKED_SHAREDCACHE, ...).
    db.code()
        .and_then(|c| c.parse::<i32>().ok())
        .is_some_and(|c| matches!(c & 0xff, 5 | 6))
}

/// `pub type Result` of the store layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What every backend has, whatever else it stores: a name, a liveness check and a clock. Each concern's
/// trait extends it.
#[async_trait]
pub trait StoreBase: Send + Sync + 'static {
    /// The backend name (`sqlite`, `mysql`, `postgres`), for logs and metrics.
    fn kind(&self) -> &'static str;

    /// Checks that the database answers.
    async fn ping(&self) -> Result<()>;

    /// The database's own clock, in ms since the epoch. Used to anchor [`clock::StoreClock`].
    async fn db_now(&self) -> Result<Millis>;

    /// The largest statement, bound values included, the database accepts, when it has such a limit
    /// (MySQL: `max_allowed_packet`, read from the server). `None` (the default, SQLite): no limit below
    /// what memory allows. The group-commit writer keeps each batch below it.
    async fn max_packet_bytes(&self) -> Result<Option<u64>> {
        Ok(None)
    }
}

/// The whole durable store: every concern's trait. It is implemented for every type that implements all of
/// them, so a backend implements the concern traits and never this one. See the module docs for the
/// contract.
pub trait Store: TxnStore + ClaimStore + LeaseStore + KvStore + Maintenance {}

impl<S> Store for S where S: TxnStore + ClaimStore + LeaseStore + KvStore + Maintenance {}

/// A shared store.
pub type DynStore = Arc<dyn Store>;

/// Opens the store a DSN names and runs its migrations: `sqlite://path/to/file.db` (created if missing),
/// `mysql://user:pass@host:3306/db` and `postgres://user:pass@host:5432/db` (the database is created if
/// missing).
pub async fn open(dsn: &str) -> Result<DynStore> {
    let scheme = dsn.split_once("://").map(|(s, _)| s).unwrap_or_default();
    match scheme {
        "sqlite" => open_sqlite(dsn).await,
        "mysql" | "mariadb" => open_mysql(&normalize_dsn(dsn)).await,
        "postgres" | "postgresql" => open_postgres(&normalize_dsn(dsn)).await,
        other => Err(Error::Config(format!(
            "unsupported store DSN scheme '{other}' in '{}': use sqlite://path, mysql://user:pass@host:port/db \
             or postgres://user:pass@host:port/db",
            redact_dsn(dsn)
        ))),
    }
}

#[cfg(feature = "sqlite")]
async fn open_sqlite(dsn: &str) -> Result<DynStore> {
    Ok(Arc::new(sql::SqlStore::open_sqlite(dsn).await?))
}

#[cfg(not(feature = "sqlite"))]
async fn open_sqlite(_dsn: &str) -> Result<DynStore> {
    Err(Error::Config(
        "this build of braid has no sqlite support (feature `sqlite`)".into(),
    ))
}

#[cfg(feature = "mysql")]
async fn open_mysql(dsn: &str) -> Result<DynStore> {
    Ok(Arc::new(sql::SqlStore::open_mysql(dsn).await?))
}

#[cfg(not(feature = "mysql"))]
async fn open_mysql(_dsn: &str) -> Result<DynStore> {
    Err(Error::Config(
        "this build of braid has no mysql support (feature `mysql`)".into(),
    ))
}

#[cfg(feature = "postgres")]
async fn open_postgres(dsn: &str) -> Result<DynStore> {
    Ok(Arc::new(sql::SqlStore::open_postgres(dsn).await?))
}

#[cfg(not(feature = "postgres"))]
async fn open_postgres(_dsn: &str) -> Result<DynStore> {
    Err(Error::Config(
        "this build of braid has no postgres support (feature `postgres`)".into(),
    ))
}

/// Splits `mysql://u:p@h:3306/db?x=y` into (`mysql://u:p@h:3306/?x=y`, `db`), for a backend that connects
/// to the server first to create the database.
#[cfg_attr(not(any(feature = "mysql", feature = "postgres")), allow(dead_code))]
pub(crate) fn split_database(dsn: &str) -> Result<(String, String)> {
    let (scheme, rest) = dsn.split_once("://").unwrap_or(("mysql", dsn));
    let (authority, path) = rest.split_once('/').ok_or_else(|| {
        Error::Config(format!(
            "{scheme} DSN '{}' names no database: add /dbname",
            redact_dsn(dsn)
        ))
    })?;
    let (db, query) = path
        .split_once('?')
        .map_or((path, None), |(d, q)| (d, Some(q)));
    if db.is_empty() {
        return Err(Error::Config(format!(
            "{scheme} DSN '{}' names no database: add /dbname",
            redact_dsn(dsn)
        )));
    }
    let query = query.map(|q| format!("?{q}")).unwrap_or_default();
    Ok((format!("{scheme}://{authority}/{query}"), db.to_owned()))
}

/// What a DSN's user or password keeps as is: letters, digits and `-._~` (RFC 3986 unreserved).
const USERINFO: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// What a DSN query value (a file path) keeps as is: the unreserved characters and `/`.
const QUERY_VALUE: &percent_encoding::AsciiSet = &USERINFO.remove(b'/');

/// `s` percent-encoded for the user or password part of a DSN: everything but letters, digits and `-._~`.
pub fn dsn_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, USERINFO).to_string()
}

/// Where the user information of a network DSN sits: the byte range of `user[:password]` between `://`
/// and the last `@` (a password may hold `@`, `/`, `#` or `?`; a host holds none of them). `None` for a
/// DSN without one (`sqlite://...`, `mysql://host/db`).
fn userinfo_range(dsn: &str) -> Option<std::ops::Range<usize>> {
    let start = dsn.find("://")? + 3;
    let end = start + dsn[start..].rfind('@')?;
    Some(start..end)
}

/// `part` of a DSN's user information percent-encoded where it must be: every character but letters,
/// digits, `-._~` and an existing `%XX` escape (kept, so a password written encoded stays as written).
fn encode_userinfo_part(part: &str) -> String {
    let bytes = part.as_bytes();
    let mut out = String::with_capacity(part.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let escaped = b == b'%'
            && bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
            && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit);
        if escaped {
            out.push('%');
        } else {
            out.push_str(&percent_encoding::percent_encode(&[b], USERINFO).to_string());
        }
        i += 1;
    }
    out
}

/// The DSN with its user and password percent-encoded where needed, so a password holding `/`, `#`, `?`,
/// `@`, `:` or spaces reaches the database as written instead of breaking the DSN apart.
pub fn normalize_dsn(dsn: &str) -> String {
    let Some(range) = userinfo_range(dsn) else {
        return dsn.to_owned();
    };
    let info = &dsn[range.clone()];
    let encoded = match info.split_once(':') {
        Some((user, password)) => format!(
            "{}:{}",
            encode_userinfo_part(user),
            encode_userinfo_part(password)
        ),
        None => encode_userinfo_part(info),
    };
    format!("{}{encoded}{}", &dsn[..range.start], &dsn[range.end..])
}

/// The DSN with `password` as its password (percent-encoded whole: a `%` in it is a `%`), replacing any
/// it has. The DSN must name a user (`mysql://user@host/db`).
pub fn with_password(dsn: &str, password: &str) -> Result<String> {
    let range = userinfo_range(dsn).ok_or_else(|| {
        Error::Config(format!(
            "a store password needs a DSN with a user (scheme://user@host/db), got '{}'",
            redact_dsn(dsn)
        ))
    })?;
    let info = &dsn[range.clone()];
    let user = info.split_once(':').map_or(info, |(u, _)| u);
    Ok(format!(
        "{}{}:{}{}",
        &dsn[..range.start],
        encode_userinfo_part(user),
        dsn_encode(password),
        &dsn[range.end..]
    ))
}

/// The DSN with its TLS CA parameter set to `ca` (`--store-ca`): `ssl-ca` for MySQL, `sslrootcert` for
/// PostgreSQL, each unless the DSN sets it itself; and, when the DSN names no TLS mode, the mode that
/// verifies the server's certificate and name (`ssl-mode=VERIFY_IDENTITY`, `sslmode=verify-full`). `None`
/// for a store without TLS (SQLite).
pub fn dsn_with_ca(dsn: &str, ca: &std::path::Path) -> Option<String> {
    let scheme = dsn.split_once("://").map(|(s, _)| s)?;
    // (the CA parameter and its aliases, the mode parameter and its aliases, the verifying mode)
    let (ca_keys, mode_keys, mode): (&[&str], &[&str], &str) = match scheme {
        "mysql" | "mariadb" => (
            &["ssl-ca", "sslca"],
            &["ssl-mode", "sslmode"],
            "ssl-mode=VERIFY_IDENTITY",
        ),
        "postgres" | "postgresql" => (&["sslrootcert"], &["sslmode"], "sslmode=verify-full"),
        _ => return None,
    };
    // The query starts at the first `?` after the last `@` (a password may hold `?`).
    let after_user = dsn.rfind('@').map_or(0, |at| at + 1);
    let query_at = dsn[after_user..].find('?').map(|q| after_user + q);
    let keys: Vec<String> = query_at
        .map(|q| &dsn[q + 1..])
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split('=').next())
        .map(str::to_ascii_lowercase)
        .collect();
    let has = |k: &str| keys.iter().any(|have| have == k);
    let mut add = Vec::new();
    if !ca_keys.iter().any(|k| has(k)) {
        add.push(format!(
            "{}={}",
            ca_keys[0],
            query_escape(&ca.to_string_lossy())
        ));
    }
    if !mode_keys.iter().any(|k| has(k)) {
        add.push(mode.to_owned());
    }
    if add.is_empty() {
        return Some(dsn.to_owned());
    }
    let sep = match query_at {
        None => "?",
        Some(q) if q + 1 == dsn.len() || dsn.ends_with('&') => "",
        Some(_) => "&",
    };
    Some(format!("{dsn}{sep}{}", add.join("&")))
}

/// `s` percent-encoded for a URL query value (a path may hold `&`, `#`, `+`, spaces).
fn query_escape(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, QUERY_VALUE).to_string()
}

/// The DSN with any password replaced by `***`, for logs and error messages.
pub fn redact_dsn(dsn: &str) -> String {
    let Some((scheme, rest)) = dsn.split_once("://") else {
        return dsn.to_owned();
    };
    // A password may hold `/`, `#`, `?` or `@`; a host holds none of them. So the user part ends at the last
    // `@` (DSN query options hold none).
    let Some(at) = rest.rfind('@') else {
        return dsn.to_owned();
    };
    let (userinfo, after) = (&rest[..at], &rest[at + 1..]);
    let Some((user, _password)) = userinfo.split_once(':') else {
        return dsn.to_owned();
    };
    format!("{scheme}://{user}:***@{after}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_with_any_character() {
        for password in ["pa/ss", "pa#ss", "p@ss", "a:b/c?d"] {
            let dsn = format!("mysql://root:{password}@db:3306/braid?x=1");
            let shown = redact_dsn(&dsn);
            assert_eq!(shown, "mysql://root:***@db:3306/braid?x=1", "{password}");
        }
    }

    #[test]
    fn normalizing_encodes_what_would_break_the_dsn() {
        let cases = [
            (
                "mysql://root:pa/ss#w@rd@db:3306/braid",
                "mysql://root:pa%2Fss%23w%40rd@db:3306/braid",
            ),
            (
                "postgres://u:a:b?c d@h:5432/x?sslmode=disable",
                "postgres://u:a%3Ab%3Fc%20d@h:5432/x?sslmode=disable",
            ),
            // Already encoded: kept. A lone `%` is a `%`.
            ("mysql://u:p%2Fq@h/d", "mysql://u:p%2Fq@h/d"),
            ("mysql://u:100%@h/d", "mysql://u:100%25@h/d"),
            ("mysql://u@h/d", "mysql://u@h/d"),
            ("mysql://h/d", "mysql://h/d"),
            ("sqlite://data/braid.db", "sqlite://data/braid.db"),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize_dsn(raw), want, "{raw}");
        }
    }

    #[test]
    fn a_password_file_replaces_the_dsn_password() {
        assert_eq!(
            with_password("mysql://root:old@db:3306/braid", "n%w/p@ss").unwrap(),
            "mysql://root:n%25w%2Fp%40ss@db:3306/braid"
        );
        assert_eq!(
            with_password("postgres://app@db/braid", "x").unwrap(),
            "postgres://app:x@db/braid"
        );
        let err = with_password("mysql://db:3306/braid", "x").unwrap_err();
        assert!(err.to_string().contains("needs a DSN with a user"), "{err}");
    }

    #[test]
    fn the_store_ca_goes_into_the_dsn() {
        let ca = std::path::Path::new("/etc/db ca/ca.pem");
        assert_eq!(
            dsn_with_ca("mysql://u:p?w@db:3306/braid", ca).unwrap(),
            "mysql://u:p?w@db:3306/braid?ssl-ca=/etc/db%20ca/ca.pem&ssl-mode=VERIFY_IDENTITY"
        );
        assert_eq!(
            dsn_with_ca("mysql://u@db/braid?ssl-mode=VERIFY_CA", ca).unwrap(),
            "mysql://u@db/braid?ssl-mode=VERIFY_CA&ssl-ca=/etc/db%20ca/ca.pem"
        );
        assert_eq!(
            dsn_with_ca("mysql://u@db/braid?ssl-ca=/x.pem&sslmode=required", ca).unwrap(),
            "mysql://u@db/braid?ssl-ca=/x.pem&sslmode=required",
            "the DSN's own settings win"
        );
        assert_eq!(
            dsn_with_ca("postgres://u@db/braid?", ca).unwrap(),
            "postgres://u@db/braid?sslrootcert=/etc/db%20ca/ca.pem&sslmode=verify-full"
        );
        assert_eq!(dsn_with_ca("sqlite://braid.db", ca), None);
    }

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(
            redact_dsn("mysql://root:secret@db:3306/braid"),
            "mysql://root:***@db:3306/braid"
        );
        assert_eq!(
            redact_dsn("mysql://root@db:3306/braid"),
            "mysql://root@db:3306/braid"
        );
        assert_eq!(
            redact_dsn("sqlite://braid-data/braid.db"),
            "sqlite://braid-data/braid.db"
        );
    }
}
