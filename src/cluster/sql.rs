//! The `sql` lease backend: leases are rows of `braid_lease` in the shared store (see
//! [`crate::store::LeaseStore::lease_acquire`]). Expiry is judged on the store clock, which every replica
//! anchors to the database's clock, so hosts with skewed wall clocks agree on it.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::lease::{Holder, LeaseBackend, LeaseKey};
use super::{Error, Identity, Result};
use crate::store::LeaseStore;
use crate::store::clock::StoreClock;

/// Leases in the store.
pub struct SqlLeases {
    store: Arc<dyn LeaseStore>,
    clock: StoreClock,
}

impl SqlLeases {
    /// Leases in `store`, times from `clock`.
    pub fn new(store: Arc<dyn LeaseStore>, clock: StoreClock) -> Self {
        Self { store, clock }
    }
}

#[async_trait]
impl LeaseBackend for SqlLeases {
    fn kind(&self) -> &'static str {
        "sql"
    }

    async fn acquire(&self, key: &LeaseKey, me: &Identity, duration: Duration) -> Result<bool> {
        let ms = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
        Ok(self
            .store
            .lease_acquire(&key.name(), &me.to_string(), self.clock.now(), ms)
            .await?)
    }

    async fn release(&self, key: &LeaseKey, me: &Identity) -> Result<()> {
        self.store
            .lease_release(&key.name(), &me.to_string())
            .await?;
        Ok(())
    }

    async fn list(&self) -> Result<Vec<Holder>> {
        let rows = self.store.lease_list("", self.clock.now()).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let Some(key) = LeaseKey::parse(&row.name) else {
                continue;
            };
            let identity =
                Identity::from_str(&row.holder).map_err(|reason| Error::MalformedLease {
                    name: row.name.clone(),
                    reason,
                })?;
            out.push(Holder { key, identity });
        }
        Ok(out)
    }
}
