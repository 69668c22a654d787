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
//! - **Nothing is truncated.** Payloads (`custom_data`, `options`, `result`, `rollback_reason`, `bin_data`, KV
//!   values) hold at least 16 MiB on every backend. A value longer than a bounded column (MySQL: URLs and
//!   `query_prepared` 1024, `owner` and KV keys 128, categories 64 characters) is refused with
//!   [`Error::Query`], never cut short.
//! - **One clock.** Times come from the store's [`clock::StoreClock`], anchored to the database's clock, not
//!   from each host's wall clock.
//! - **Fencing.** Every partition has an epoch ([`LeaseEpoch`]) that [`Store::fence_partition`] bumps when a
//!   replica takes the partition over. A fenced write ([`TxnUpdate::fence`], [`ClaimScope::Fenced`]) checks
//!   the stored epoch *inside the same database transaction* as its conditional write, holding a shared lock
//!   on the partition row until commit, so an epoch bump is ordered either wholly before the write (which then
//!   is `Conflict` / claims nothing there) or wholly after it. Writes without a fence (new transactions, API
//!   calls) are guarded by the status and version compare-and-set alone.
//! - **Leases.** The `sql` lease backend keeps its leases in the store ([`Store::lease_acquire`]): a lease is
//!   taken only when it is free, expired on the caller's store clock, or already the caller's.
//!
//! The group-commit [`writer::Writer`] sits in front of `apply` and is the only caller of it in the server.

pub mod clock;
#[cfg(test)]
pub mod conformance;
#[cfg(feature = "mysql")]
pub mod mysql;
mod sql;
#[cfg(feature = "sqlite")]
pub mod sqlite;
#[cfg(test)]
pub mod testing;
pub mod writer;

use std::sync::Arc;

use async_trait::async_trait;

use crate::model::{
    Branch, BranchId, BranchStatus, Fence, Gid, GlobalStatus, GlobalTxn, KvRecord, LeaseEpoch,
    Millis, Op, Partition, TransOptions, TransType, Version,
};

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
    // SQLite reports extended result codes, whose low byte is the primary code: 5 SQLITE_BUSY (and
    // BUSY_RECOVERY, BUSY_SNAPSHOT, BUSY_TIMEOUT), 6 SQLITE_LOCKED (and LOCKED_SHAREDCACHE, ...).
    db.code()
        .and_then(|c| c.parse::<i32>().ok())
        .is_some_and(|c| matches!(c & 0xff, 5 | 6))
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

    /// About how many bytes the write's statements send to the database: every value it stores, plus a
    /// fixed allowance per row for the numbers, enum values and the statement text. An upper estimate, so
    /// the writer can keep a batch below the database's packet limit (see [`writer::WriterOptions`]).
    pub fn estimated_bytes(&self) -> u64 {
        let bytes = match self {
            Self::Insert { txn, branches } => {
                ROW_OVERHEAD
                    + txn.gid.as_str().len()
                    + txn.query_prepared.len()
                    + txn.custom_data.len()
                    + options_bytes(&txn.options)
                    + txn.result.len()
                    + txn.rollback_reason.len()
                    + txn.owner.len()
                    + branches.iter().map(branch_bytes).sum::<usize>()
            }
            Self::Update(u) => {
                ROW_OVERHEAD
                    + u.gid.as_str().len()
                    + u.rollback_reason.as_ref().map_or(0, String::len)
                    + u.result.as_ref().map_or(0, String::len)
                    + u.options.as_ref().map_or(0, options_bytes)
                    + u.owner.as_ref().map_or(0, String::len)
                    + u.branches
                        .iter()
                        .map(|b| ROW_OVERHEAD + u.gid.as_str().len() + b.branch_id.as_str().len())
                        .sum::<usize>()
                    + u.new_branches.iter().map(branch_bytes).sum::<usize>()
            }
        };
        u64::try_from(bytes).unwrap_or(u64::MAX)
    }
}

/// What [`Write::estimated_bytes`] allows per row besides its strings and payloads.
const ROW_OVERHEAD: usize = 256;

fn branch_bytes(b: &Branch) -> usize {
    ROW_OVERHEAD
        + b.gid.as_str().len()
        + b.branch_id.as_str().len()
        + b.url.len()
        + b.bin_data.len()
}

/// The options JSON: the fixed fields fit in the row allowance; headers and the policy name add theirs.
fn options_bytes(o: &TransOptions) -> usize {
    ROW_OVERHEAD
        + o.policy.len()
        + o.branch_headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + 8)
            .sum::<usize>()
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
    /// When the scanner should look next. Ignored when the row's status after the write is final (a new
    /// final status, or an update of a row that already is final): a final row is never scheduled.
    pub schedule: Schedule,
    /// Status changes of existing branches, by (branch_id, op). One naming no stored branch changes nothing.
    pub branches: Vec<BranchUpdate>,
    /// Branches to append. If one already exists (same gid, branch_id, op), or the list names one twice, the
    /// write is `DuplicateBranch` (when the condition holds; otherwise it is `Conflict`).
    pub new_branches: Vec<Branch>,
    /// The time of the change (`update_time`).
    pub now: Millis,
    /// Fencing: applies only while the stored epoch of this partition is the given one (else `Conflict`).
    /// The recovery scanner's passes set it; `None` for writes that no partition owner makes (the API's).
    pub fence: Option<Fence>,
    /// Sets `owner`, the holder of the row's claim (see [`Claim`]): a pass's token while it runs, `""` when
    /// it ends. `None` leaves it.
    pub owner: Option<String>,
    /// Applies only while nobody holds a live claim on the row at this time: its `owner` is empty, or it has
    /// no `next_cron_time`, or that time is at or before this one (else `Conflict`). A pass that starts
    /// without a claim (an API call re-running a transaction) takes one this way, so it never runs beside
    /// another actor's pass.
    pub unclaimed_at: Option<Millis>,
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
            fence: None,
            owner: None,
            unclaimed_at: None,
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
    /// Written to `owner` of claimed rows: the claim's holder until `lease_until`.
    pub owner: String,
    /// At most this many.
    pub limit: u32,
    /// Which partitions, and whether fenced.
    pub scope: ClaimScope,
}

/// Which partitions a [`Claim`] takes rows from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimScope {
    /// Every partition, unfenced (a single replica driving the scan by hand, tests).
    All,
    /// These partitions, unfenced (an empty list: none).
    Partitions(Vec<Partition>),
    /// These partitions, each only while its stored epoch is the given one. Partitions whose epoch moved on
    /// contribute no rows and are reported in [`Claimed::stale`].
    Fenced(Vec<Fence>),
}

/// What a claim took.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Claimed {
    /// The claimed rows as stored after the claim, in no particular order.
    pub txns: Vec<GlobalTxn>,
    /// Partitions of a fenced claim whose stored epoch is not the claimed one (the claimer lost them).
    pub stale: Vec<Partition>,
}

/// A partition's fencing row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionFence {
    /// The partition.
    pub partition: Partition,
    /// Its current epoch (0: never taken).
    pub epoch: LeaseEpoch,
    /// Who took it at this epoch.
    pub owner: String,
    /// When (store clock).
    pub fenced_at: Millis,
}

/// A lease row of the `sql` lease backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    /// The lease name (`member/<node>` or `partition/<n>`).
    pub name: String,
    /// The holder's identity.
    pub holder: String,
    /// When the current holder took it (store clock).
    pub acquired_at: Millis,
    /// Its last renewal.
    pub renewed_at: Millis,
    /// When it expires unless renewed.
    pub expires_at: Millis,
    /// How often it changed hands.
    pub transitions: u64,
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

    /// The largest statement, bound values included, the database accepts, when it has such a limit
    /// (MySQL: `max_allowed_packet`, read from the server). `None` (the default, SQLite): no limit below
    /// what memory allows. The group-commit writer keeps each batch below it.
    async fn max_packet_bytes(&self) -> Result<Option<u64>> {
        Ok(None)
    }

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

    /// Atomically claims up to `limit` unfinished due transactions (`next_cron_time <= now`, earliest first,
    /// in the claim's [`ClaimScope`]): sets their `next_cron_time` to `lease_until` and `owner`, bumps their
    /// version by one, changes nothing else, and returns them as stored after the claim (in no particular
    /// order). Two concurrent claims never return the same row. The version bump is what makes a claim
    /// exclusive: a pass whose claim ran out and was taken over loses its next compare-and-set, so it can
    /// neither record a decision nor extend its claim after another pass started. A fenced claim takes rows only from
    /// partitions whose stored epoch equals the claimed one, checked in the claim's database transaction;
    /// the others are listed in [`Claimed::stale`]. MySQL claims lock with `FOR UPDATE SKIP LOCKED`, so
    /// concurrent claimers pass each other's rows by instead of waiting.
    async fn claim_due(&self, claim: &Claim) -> Result<Claimed>;

    /// Records the partition count at the first start and returns the recorded one (which the caller must
    /// compare with its own: a different count would put transactions in the wrong partitions). Creates the
    /// fencing rows of partitions `0..count` (epoch 0). Idempotent; concurrent first starts agree on one count.
    async fn init_partitions(&self, count: u16) -> Result<u16>;

    /// Takes partition `p` over for `owner`: bumps its epoch by one and returns the new epoch. Every call
    /// returns a distinct epoch, so no two owners ever share one. Waits for fenced writes of the partition
    /// that are in flight (they commit under the old epoch first). `Corrupt` if the partition has no row
    /// ([`Store::init_partitions`] not run).
    async fn fence_partition(&self, p: Partition, owner: &str, now: Millis) -> Result<LeaseEpoch>;

    /// Every partition's fencing row, by partition.
    async fn partition_fences(&self) -> Result<Vec<PartitionFence>>;

    /// Acquires the lease `name` for `holder` until `now + duration_ms`, or renews it when `holder` already
    /// holds it. Succeeds only when the lease does not exist, is free, has `expires_at <= now`, or is
    /// `holder`'s; a change of holder resets `acquired_at` and counts a transition. `false` when another
    /// holder's lease is live or a concurrent acquire won. Idempotent for the holder.
    async fn lease_acquire(
        &self,
        name: &str,
        holder: &str,
        now: Millis,
        duration_ms: i64,
    ) -> Result<bool>;

    /// Releases (deletes) the lease `name` if `holder` holds it; `false` if it did not.
    async fn lease_release(&self, name: &str, holder: &str) -> Result<bool>;

    /// Leases whose name starts with `prefix` and that are live at `now` (`expires_at > now`), by name.
    async fn lease_list(&self, prefix: &str, now: Millis) -> Result<Vec<LeaseRecord>>;

    /// For unfinished transactions scheduled later than `after`, sets `next_cron_time = now`, at most
    /// `limit` rows. Rows under a live claim (non-empty `owner`, `next_cron_time > now`) are being processed
    /// and stay as they are. Returns how many changed.
    async fn reset_cron_time(&self, after: Millis, now: Millis, limit: u32) -> Result<u64>;

    /// Sets `next_cron_time = now` for one unfinished transaction (also one that had no schedule), unless a
    /// live claim holds it (it is being processed now). Returns whether the gid exists; a final transaction
    /// exists but stays unscheduled.
    async fn reset_next_cron_time(&self, gid: &Gid, now: Millis) -> Result<bool>;

    /// Deletes up to `limit` final transactions (and their branches) last updated before `before`; that is
    /// when they became final, unless a later update touched them. Returns how many were deleted.
    async fn delete_finished(&self, before: Millis, limit: u32) -> Result<u64>;

    /// KV records of a category with id above `after_id`, by id, at most `limit`.
    async fn kv_scan(&self, cat: &str, after_id: Option<i64>, limit: u32) -> Result<Vec<KvRecord>>;

    /// The KV record `(cat, k)`.
    async fn kv_find(&self, cat: &str, k: &str) -> Result<Option<KvRecord>>;

    /// Creates `(cat, k) = v` with version 1. `false` if it exists.
    async fn kv_create(&self, cat: &str, k: &str, v: &str, now: Millis) -> Result<bool>;

    /// Sets `v` and bumps the version, only while the stored version is `expect_version`. `false` on a lost race.
    async fn kv_update(
        &self,
        cat: &str,
        k: &str,
        v: &str,
        expect_version: i64,
        now: Millis,
    ) -> Result<bool>;

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
