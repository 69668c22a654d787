//! The lease contract every backend implements.
//!
//! A lease is named by a [`LeaseKey`] and held by one [`Identity`] at a time, for a duration the holder
//! picks at each acquisition or renewal. The contract:
//! - [`LeaseBackend::acquire`] takes a lease that is missing, free, expired, or already the caller's (then it
//!   is a renewal). It never takes a lease another holder renewed less than its duration ago: "ago" as the
//!   backend judges it (the store clock for `sql`, this process's observation time for `kubernetes`, the
//!   monotonic clock for `local`). Two concurrent acquisitions of one free lease: at most one returns `true`.
//! - `Ok(false)` is a normal answer (someone else holds it, or won the race); `Err` means the backend could
//!   not be asked, and the caller does not know whether it holds the lease.
//! - [`LeaseBackend::release`] gives a lease up if the caller holds it (others may take it at once); it is
//!   idempotent.
//! - [`LeaseBackend::list`] returns the live leases as this replica sees them now.
//!
//! Leases are advisory: clocks and pauses can make two replicas believe they hold one lease for a moment.
//! Partition ownership is therefore fenced in the store as well (see the module docs of [`super`]).

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use super::{Identity, Result};
use crate::model::Partition;

/// What a lease is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LeaseKey {
    /// Membership of the node with this id.
    Member(String),
    /// Ownership of a partition.
    Partition(Partition),
}

impl LeaseKey {
    /// Prefix of membership lease names.
    pub const MEMBER_PREFIX: &'static str = "member/";
    /// Prefix of partition lease names.
    pub const PARTITION_PREFIX: &'static str = "partition/";

    /// The lease name: `member/<node-id>` or `partition/<n>`.
    pub fn name(&self) -> String {
        self.to_string()
    }

    /// Parses a lease name.
    pub fn parse(name: &str) -> Option<Self> {
        if let Some(node) = name.strip_prefix(Self::MEMBER_PREFIX) {
            return (!node.is_empty()).then(|| Self::Member(node.to_owned()));
        }
        let n = name.strip_prefix(Self::PARTITION_PREFIX)?;
        n.parse().ok().map(|n| Self::Partition(Partition(n)))
    }
}

impl fmt::Display for LeaseKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Member(node) => write!(f, "{}{node}", Self::MEMBER_PREFIX),
            Self::Partition(p) => write!(f, "{}{}", Self::PARTITION_PREFIX, p.0),
        }
    }
}

/// A live lease and its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The lease.
    pub key: LeaseKey,
    /// Who holds it.
    pub identity: Identity,
}

/// A lease backend. See the module docs for the contract.
#[async_trait]
pub trait LeaseBackend: Send + Sync + 'static {
    /// The backend's name (`sql`, `kubernetes`, `local`).
    fn kind(&self) -> &'static str;

    /// Acquires or renews `key` for `me` for `duration`. `true` when `me` holds it after the call.
    async fn acquire(&self, key: &LeaseKey, me: &Identity, duration: Duration) -> Result<bool>;

    /// Releases `key` if `me` holds it.
    async fn release(&self, key: &LeaseKey, me: &Identity) -> Result<()>;

    /// Every live lease, as this replica sees it now.
    async fn list(&self) -> Result<Vec<Holder>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_names_round_trip() {
        for key in [
            LeaseKey::Member("braid-0".into()),
            LeaseKey::Member("a/b".into()),
            LeaseKey::Partition(Partition(63)),
        ] {
            assert_eq!(LeaseKey::parse(&key.name()), Some(key.clone()), "{key}");
        }
        assert_eq!(LeaseKey::parse("partition/x"), None);
        assert_eq!(LeaseKey::parse("member/"), None);
        assert_eq!(LeaseKey::parse("other"), None);
    }
}
