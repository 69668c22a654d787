//! The store contract: everything braid keeps durable goes through the [`Store`] trait.
//!
//! Invariants every backend upholds (the conformance suite in `conformance.rs` checks each of them):
//! - **Writes are batched.** [`Store::apply`] takes a list of [`Write`]s and applies them in *one* database
//!   transaction; each write gets its own [`WriteOutcome`]. A write that loses its condition does not affect the
//!   others in the batch. If the call returns `Err`, nothing of the batch was committed.
//! - **Every state change is a compare-and-set.** An [`Write::Update`] applies only when the row still has the
//!   expected status (and version, when given); it then bumps the version by one. A lost race is
//!   [`WriteOutcome::Conflict`], a normal result, never an error.
//! - **Inserts are conditional.** [`Write::Insert`] of an existing gid is a `Conflict` and changes nothing.
//! - **Final transactions are never scheduled.** A row whose status becomes `succeed` or `failed` gets
//!   `next_cron_time = NULL`, so the recovery scan never sees it again.
//! - **One clock.** Times come from the store's [`clock::StoreClock`], anchored to the database's clock, not
//!   from each host's wall clock.
//!
//! The group-commit [`writer::Writer`] sits in front of `apply` and is the only caller of it in the server.

pub mod clock;
#[cfg(test)]
pub mod conformance;
#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(feature = "sqlite")]
pub mod sqlite;
mod sql;
pub mod writer;

use std::sync::Arc;

use async_trait::async_trait;

use crate::model::{Branch, BranchId, BranchStatus, GlobalStatus, GlobalTxn, Gid, KvRecord, Millis, Op, Partition, TransOptions, TransType, Version};

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
}

impl Error {
    /// Whether retrying the same operation later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::WriterStopped)
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
            sqlx::Error::Database(db) if is_transient_db_error(vendor_code(db.as_ref()).as_deref()) => Self::Unavailable(e),
            _ => Self::Query(e),
        }
    }
}

/// The vendor's error code: MySQL's error number (its `code()` is only the SQLSTATE, e.g. `23000` for every
/// integrity error and `HY000` for lock wait timeouts), SQLite's extended result code.
pub(crate) fn vendor_code(db: &dyn sqlx::error::DatabaseError) -> Option<String> {
    #[cfg(feature = "mysql")]
    if let Some(my) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        return Some(my.number().to_string());
    }
    db.code().map(std::borrow::Cow::into_owned)
}

/// Deadlocks, lock wait timeouts, busy databases and server shutdowns: worth retrying.
fn is_transient_db_error(code: Option<&str>) -> bool {
    // MySQL: 1205 lock wait timeout, 1213 deadlock, 1040 too many connections, 2006/2013 gone away, 1927/1053 shutdown.
    // SQLite: 5 SQLITE_BUSY, 6 SQLITE_LOCKED (and their extended codes, which end in the base code's value mod 256).
    matches!(code, Some("1205" | "1213" | "1040" | "2006" | "2013" | "1927" | "1053" | "5" | "6" | "261" | "517" | "262"))
}

/// `pub type Result` of the store layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One change to apply atomically for one transaction.
#[derive(Debug, Clone)]
pub enum Write {
    /// Insert a new global transaction and its branches. `Conflict` if the gid exists (nothing changes).
    Insert {
        /// The row (its `version` is stored as 1, `id` is assigned).
        txn: GlobalTxn,
        /// Its branches, stored in this order.
        branches: Vec<Branch>,
    },
    /// A compare-and-set on an existing transaction.
    Update(TxnUpdate),
}

impl Write {
    /// The gid this write touches.
    pub fn gid(&self) -> &Gid {
        match self {
            Self::Insert { txn, .. } => &txn.gid,
            Self::Update(u) => &u.gid,
        }
    }
}

/// A conditional update of a transaction row, its branches, and new branches, applied together or not at all.
#[derive(Debug, Clone)]
pub struct TxnUpdate {
    /// Which transaction.
    pub gid: Gid,
    /// Applies only while the stored status is this.
    pub expect_status: GlobalStatus,
    /// Applies only while the stored version is this (`None`: status check only, e.g. registerBranch).
    pub expect_version: Option<Version>,
    /// The new status, if it changes. A final status also sets `finish_time`/`rollback_time` and unschedules.
    pub status: Option<GlobalStatus>,
    /// New rollback reason.
    pub rollback_reason: Option<String>,
    /// New workflow result.
    pub result: Option<String>,
    /// New options (e.g. a saga's persisted `retry_count`).
    pub options: Option<TransOptions>,
    /// When the scanner should look next (ignored when the new status is final).
    pub schedule: Schedule,
    /// Status changes of existing branches, by (branch_id, op).
    pub branches: Vec<BranchUpdate>,
    /// Branches to append. If one already exists (same gid, branch_id, op) the write is `DuplicateBranch`.
    pub new_branches: Vec<Branch>,
    /// The time of the change (`update_time`).
    pub now: Millis,
}

impl TxnUpdate {
    /// An update of `txn` conditioned on its current status and version that changes nothing yet.
    pub fn of(txn: &GlobalTxn, now: Millis) -> Self {
        Self {
            gid: txn.gid.clone(),
            expect_status: txn.status,
            expect_version: Some(txn.version),
            status: None,
            rollback_reason: None,
            result: None,
            options: None,
            schedule: Schedule::Keep,
            branches: Vec::new(),
            new_branches: Vec::new(),
            now,
        }
    }
}

/// How an update changes the scan schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// Leave `next_cron_interval` and `next_cron_time` as stored.
    Keep,
    /// Set both.
    At {
        /// The retry interval in seconds from now on.
        interval: i64,
        /// When the scanner should pick it up.
        at: Millis,
    },
}

/// A status change of one branch op.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchUpdate {
    /// Branch id.
    pub branch_id: BranchId,
    /// Op.
    pub op: Op,
    /// New status (`succeed` sets `finish_time`, `failed` sets `rollback_time`).
    pub status: BranchStatus,
}

/// What happened to one write of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Committed; the row now has this version.
    Applied(Version),
    /// The condition did not hold (gid exists / status or version moved / row missing); nothing changed.
    Conflict,
    /// The condition held but a new branch already exists; nothing changed.
    DuplicateBranch,
}

/// Filter and page for listing transactions (`/all`). Newest first by id.
#[derive(Debug, Clone, Default)]
pub struct ScanFilter {
    /// Only ids below this (the cursor).
    pub before_id: Option<i64>,
    /// Page size.
    pub limit: u32,
    /// Only this status.
    pub status: Option<GlobalStatus>,
    /// Only this type.
    pub trans_type: Option<TransType>,
    /// Created at or after.
    pub create_time_start: Option<Millis>,
    /// Created at or before.
    pub create_time_end: Option<Millis>,
}

/// A batch claim of due transactions by the recovery scanner.
#[derive(Debug, Clone)]
pub struct Claim {
    /// Transactions with `next_cron_time <= now` are due.
    pub now: Millis,
    /// Claimed rows get `next_cron_time = lease_until` (so no other scanner takes them meanwhile).
    pub lease_until: Millis,
    /// Written to `owner` of claimed rows.
    pub owner: String,
    /// At most this many.
    pub limit: u32,
    /// Only these partitions (`None`: all).
    pub partitions: Option<Vec<Partition>>,
}

/// The durable store. See the module docs for the contract.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The backend name (`sqlite`, `mysql`), for logs and metrics.
    fn kind(&self) -> &'static str;

    /// Checks that the database answers.
    async fn ping(&self) -> Result<()>;

    /// The database's own clock, in ms since the epoch. Used to anchor [`clock::StoreClock`].
    async fn db_now(&self) -> Result<Millis>;

    /// Applies `writes` in one database transaction and returns one outcome per write, in order.
    /// `Err` means nothing was committed. Not idempotent: an `Update` applied twice bumps the version twice
    /// (the second attempt normally conflicts on the version).
    async fn apply(&self, writes: &[Write]) -> Result<Vec<WriteOutcome>>;

    /// The transaction with this gid.
    async fn find_txn(&self, gid: &Gid) -> Result<Option<GlobalTxn>>;

    /// Its branches in insertion order.
    async fn find_branches(&self, gid: &Gid) -> Result<Vec<Branch>>;

    /// A page of transactions, newest (highest id) first.
    async fn scan_txns(&self, filter: &ScanFilter) -> Result<Vec<GlobalTxn>>;

    /// Atomically claims up to `limit` unfinished due transactions: sets their `next_cron_time` to
    /// `lease_until` and `owner`, and returns them as stored after the claim. Two concurrent claims never
    /// return the same row. A claim does not change the version: the state-changing write of whoever
    /// processes the transaction is what the version guards.
    async fn claim_due(&self, claim: &Claim) -> Result<Vec<GlobalTxn>>;

    /// For unfinished transactions scheduled later than `after`, sets `next_cron_time = now`, at most
    /// `limit` rows. Returns how many changed.
    async fn reset_cron_time(&self, after: Millis, now: Millis, limit: u32) -> Result<u64>;

    /// Sets `next_cron_time = now` for one unfinished transaction. Returns whether it exists.
    async fn reset_next_cron_time(&self, gid: &Gid, now: Millis) -> Result<bool>;

    /// Deletes up to `limit` transactions (and their branches) that became final before `before`.
    async fn delete_finished(&self, before: Millis, limit: u32) -> Result<u64>;

    /// KV records of a category with id above `after_id`, by id, at most `limit`.
    async fn kv_scan(&self, cat: &str, after_id: Option<i64>, limit: u32) -> Result<Vec<KvRecord>>;

    /// The KV record `(cat, k)`.
    async fn kv_find(&self, cat: &str, k: &str) -> Result<Option<KvRecord>>;

    /// Creates `(cat, k) = v` with version 1. `false` if it exists.
    async fn kv_create(&self, cat: &str, k: &str, v: &str, now: Millis) -> Result<bool>;

    /// Sets `v` and bumps the version, only while the stored version is `expect_version`. `false` on a lost race.
    async fn kv_update(&self, cat: &str, k: &str, v: &str, expect_version: i64, now: Millis) -> Result<bool>;

    /// Deletes `(cat, k)`. `false` if it did not exist.
    async fn kv_delete(&self, cat: &str, k: &str) -> Result<bool>;
}

/// A shared store.
pub type DynStore = Arc<dyn Store>;

/// Opens the store a DSN names and runs its migrations: `sqlite://path/to/file.db` (created if missing),
/// `mysql://user:pass@host:3306/db` (the database is created if missing).
pub async fn open(dsn: &str) -> Result<DynStore> {
    let scheme = dsn.split_once("://").map(|(s, _)| s).unwrap_or_default();
    match scheme {
        "sqlite" => open_sqlite(dsn).await,
        "mysql" | "mariadb" => open_mysql(dsn).await,
        other => Err(Error::Config(format!(
            "unsupported store DSN scheme '{other}' in '{}': use sqlite://path or mysql://user:pass@host:port/db",
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
    Err(Error::Config("this build of braid has no sqlite support (feature `sqlite`)".into()))
}

#[cfg(feature = "mysql")]
async fn open_mysql(dsn: &str) -> Result<DynStore> {
    Ok(Arc::new(sql::SqlStore::open_mysql(dsn).await?))
}

#[cfg(not(feature = "mysql"))]
async fn open_mysql(_dsn: &str) -> Result<DynStore> {
    Err(Error::Config("this build of braid has no mysql support (feature `mysql`)".into()))
}

/// The DSN with any password replaced by `***`, for logs and error messages.
pub fn redact_dsn(dsn: &str) -> String {
    let Some((scheme, rest)) = dsn.split_once("://") else {
        return dsn.to_owned();
    };
    let (authority, tail) = rest.split_once('/').map_or((rest, ""), |(a, t)| (a, t));
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return dsn.to_owned();
    };
    let Some((user, _password)) = userinfo.split_once(':') else {
        return dsn.to_owned();
    };
    let sep = if rest.contains('/') { "/" } else { "" };
    format!("{scheme}://{user}:***@{host}{sep}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(redact_dsn("mysql://root:secret@db:3306/braid"), "mysql://root:***@db:3306/braid");
        assert_eq!(redact_dsn("mysql://root@db:3306/braid"), "mysql://root@db:3306/braid");
        assert_eq!(redact_dsn("sqlite://braid-data/braid.db"), "sqlite://braid-data/braid.db");
    }
}
