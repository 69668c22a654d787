//! The in-process lease backend: for `braid serve` alone on SQLite, and for tests that run several electors
//! in one process (share one [`LocalLeases`] between them). Expiry is judged on tokio's monotonic clock, so
//! tests with paused time control it exactly.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::lease::{Holder, LeaseBackend, LeaseKey};
use super::{Identity, Result};

/// In-process leases. Cloning shares them.
#[derive(Clone, Default)]
pub struct LocalLeases {
    leases: Arc<Mutex<BTreeMap<LeaseKey, (Identity, Instant)>>>,
}

impl LocalLeases {
    /// An empty lease table.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut BTreeMap<LeaseKey, (Identity, Instant)>) -> T) -> T {
        // A poisoned lock only means another elector panicked mid-update of a plain map; the map is intact.
        let mut guard = self
            .leases
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut guard)
    }
}

#[async_trait]
impl LeaseBackend for LocalLeases {
    fn kind(&self) -> &'static str {
        "local"
    }

    async fn acquire(&self, key: &LeaseKey, me: &Identity, duration: Duration) -> Result<bool> {
        let now = Instant::now();
        Ok(self.with(|leases| match leases.get(key) {
            Some((holder, expires)) if holder != me && *expires > now => false,
            _ => {
                leases.insert(key.clone(), (me.clone(), now + duration));
                true
            }
        }))
    }

    async fn release(&self, key: &LeaseKey, me: &Identity) -> Result<()> {
        self.with(|leases| {
            if leases.get(key).is_some_and(|(holder, _)| holder == me) {
                leases.remove(key);
            }
        });
        Ok(())
    }

    async fn list(&self) -> Result<Vec<Holder>> {
        let now = Instant::now();
        Ok(self.with(|leases| {
            leases
                .iter()
                .filter(|(_, (_, expires))| *expires > now)
                .map(|(key, (identity, _))| Holder {
                    key: key.clone(),
                    identity: identity.clone(),
                })
                .collect()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Partition;

    #[tokio::test(start_paused = true)]
    async fn leases_expire_and_only_the_holder_renews_or_releases() {
        let leases = LocalLeases::new();
        let (a, b) = (Identity::new("a"), Identity::new("b"));
        let key = LeaseKey::Partition(Partition(3));
        let d = Duration::from_secs(4);
        assert!(leases.acquire(&key, &a, d).await.unwrap());
        assert!(!leases.acquire(&key, &b, d).await.unwrap());
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(leases.acquire(&key, &a, d).await.unwrap(), "renewal");
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(
            !leases.acquire(&key, &b, d).await.unwrap(),
            "renewed 3 s ago"
        );
        leases.release(&key, &b).await.unwrap();
        assert_eq!(
            leases.list().await.unwrap().len(),
            1,
            "b cannot release a's lease"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(leases.list().await.unwrap().is_empty(), "expired");
        assert!(leases.acquire(&key, &b, d).await.unwrap());
        leases.release(&key, &b).await.unwrap();
        assert!(leases.list().await.unwrap().is_empty());
    }
}
