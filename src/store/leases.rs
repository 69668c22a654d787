//! Leases of the `sql` lease backend: [`LeaseStore`].

use async_trait::async_trait;

use super::{Result, StoreBase};
use crate::model::Millis;

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

/// Named leases with a holder and an expiry, judged on the caller's store clock (the `sql` lease backend
/// keeps membership and partition leases here). A lease is taken only when it is free, expired at the
/// caller's `now`, or already the caller's.
#[async_trait]
pub trait LeaseStore: StoreBase {
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
}
