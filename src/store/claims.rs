//! The recovery scanner's claims of due transactions, and partition fencing: [`ClaimStore`].

use async_trait::async_trait;

use super::{Result, StoreBase};
use crate::model::{Fence, GlobalTxn, LeaseEpoch, Millis, Partition};

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

/// Claims of due transactions, and the fencing epochs of partitions.
///
/// - **Claims are exclusive.** A claimed row belongs to its claim's `owner` until `lease_until`: no other
///   claim takes it, and the rescheduling calls of [`Maintenance`](super::Maintenance) leave it alone.
/// - **Fencing.** Every partition has an epoch ([`LeaseEpoch`]) that [`ClaimStore::fence_partition`] bumps
///   when a replica takes the partition over. A fenced claim ([`ClaimScope::Fenced`]) or write
///   ([`TxnUpdate::fence`](super::TxnUpdate::fence)) checks the stored epoch inside its own database
///   transaction (see the module docs).
#[async_trait]
pub trait ClaimStore: StoreBase {
    /// Atomically claims up to `limit` unfinished due transactions (`next_cron_time <= now`, earliest first,
    /// in the claim's [`ClaimScope`]): sets their `next_cron_time` to `lease_until` and `owner`, bumps their
    /// version by one, changes nothing else, and returns them as stored after the claim (in no particular
    /// order). Two concurrent claims never return the same row. The version bump is what makes a claim
    /// exclusive: a pass whose claim ran out and was taken over loses its next compare-and-set, so it can
    /// neither record a decision nor extend its claim after another pass started. A fenced claim takes rows
    /// only from partitions whose stored epoch equals the claimed one, checked in the claim's database
    /// transaction; the others are listed in [`Claimed::stale`]. MySQL claims lock with `FOR UPDATE SKIP
    /// LOCKED`, so concurrent claimers pass each other's rows by instead of waiting.
    async fn claim_due(&self, claim: &Claim) -> Result<Claimed>;

    /// Records the partition count at the first start and returns the recorded one (which the caller must
    /// compare with its own: a different count would put transactions in the wrong partitions). Creates the
    /// fencing rows of partitions `0..count` (epoch 0). Idempotent; concurrent first starts agree on one count.
    async fn init_partitions(&self, count: u16) -> Result<u16>;

    /// Takes partition `p` over for `owner`: bumps its epoch by one and returns the new epoch. Every call
    /// returns a distinct epoch, so no two owners ever share one. Waits for fenced writes of the partition
    /// that are in flight (they commit under the old epoch first). `Corrupt` if the partition has no row
    /// ([`ClaimStore::init_partitions`] not run).
    async fn fence_partition(&self, p: Partition, owner: &str, now: Millis) -> Result<LeaseEpoch>;

    /// Every partition's fencing row, by partition.
    async fn partition_fences(&self) -> Result<Vec<PartitionFence>>;
}
