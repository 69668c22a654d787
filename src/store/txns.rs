//! Transactions and their branches: [`TxnStore`], the writes it applies and what they give.

use async_trait::async_trait;

use super::{Result, StoreBase};
use crate::model::{
    Branch, BranchId, BranchStatus, Fence, Gid, GlobalStatus, GlobalTxn, Millis, Op, TransOptions,
    TransType, Version,
};

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
    /// the writer can keep a batch below the database's packet limit (see [`super::writer::WriterOptions`]).
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
    /// Sets `owner`, the holder of the row's claim (see [`Claim`](super::Claim)): a pass's token while it
    /// runs, `""` when it ends. `None` leaves it.
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

/// Global transactions and their branches.
///
/// - **Writes are batched.** [`TxnStore::apply`] takes a list of [`Write`]s and applies them in *one*
///   database transaction; each write gets its own [`WriteOutcome`]. A write that loses its condition does
///   not affect the others in the batch. If the call returns `Err`, nothing of the batch was committed.
/// - **Every state change is a compare-and-set.** An [`Write::Update`] applies only when the row still has
///   the expected status (and version, when given); it then bumps the version by one. A lost race is
///   [`WriteOutcome::Conflict`], a normal result, never an error.
/// - **Inserts are conditional.** [`Write::Insert`] of an existing gid is a `Conflict` and changes nothing.
/// - **Final transactions are never scheduled.** A row whose status becomes `succeed` or `failed` gets
///   `next_cron_time = NULL`, so the recovery scan never sees it again.
/// - **Fenced writes.** An update with [`TxnUpdate::fence`] applies only under the partition's current
///   epoch (see [`ClaimStore`](super::ClaimStore) and the module docs).
///
/// The group-commit [`Writer`](super::writer::Writer) sits in front of `apply` and is the only caller of it
/// in the server.
#[async_trait]
pub trait TxnStore: StoreBase {
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
}
