//! Rescheduling and retention: [`Maintenance`].

use async_trait::async_trait;

use super::{Result, StoreBase};
use crate::model::{Gid, Millis};

/// Operations that reschedule or remove transactions outside the engine's passes: the admin API's
/// `resetCronTime` / `resetNextCronTime` and the retention of finished transactions. Rows under a live
/// claim (see [`ClaimStore`](super::ClaimStore)) are never rescheduled.
#[async_trait]
pub trait Maintenance: StoreBase {
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
}
