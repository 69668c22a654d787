//! Everything else the API and the recovery scanner need from durable state, so that the engine is the
//! only door to it: reads for `query`/`all`/KV, the cron resets, readiness, the scanner's claims and its
//! housekeeping. Callers never hold the store or the clock.

use std::time::Duration;

use super::{Engine, Result};
use crate::model::{Branch, Gid, GlobalTxn, KvRecord};
use crate::store::{self, Claim, ClaimScope, Claimed, ScanFilter};

/// A page of transactions (`/all`).
pub type TxnFilter = ScanFilter;

impl Engine {
    /// A transaction and its branches (`query`); `None` when there is no such gid.
    pub async fn query(&self, gid: &Gid) -> Result<Option<(GlobalTxn, Vec<Branch>)>> {
        let Some(txn) = self.inner.store.find_txn(gid).await? else {
            return Ok(None);
        };
        let branches = self.inner.store.find_branches(gid).await?;
        Ok(Some((txn, branches)))
    }

    /// One transaction without its branches.
    pub async fn find(&self, gid: &Gid) -> Result<Option<GlobalTxn>> {
        Ok(self.inner.store.find_txn(gid).await?)
    }

    /// A page of transactions, newest first (`all`).
    pub async fn list(&self, filter: &TxnFilter) -> Result<Vec<GlobalTxn>> {
        Ok(self.inner.store.scan_txns(filter).await?)
    }

    /// A page of KV rows of a category (`scanKV`).
    pub async fn kv_scan(
        &self,
        cat: &str,
        after_id: Option<i64>,
        limit: u32,
    ) -> Result<Vec<KvRecord>> {
        Ok(self.inner.store.kv_scan(cat, after_id, limit).await?)
    }

    /// One KV row (`queryKV`).
    pub async fn kv_find(&self, cat: &str, key: &str) -> Result<Option<KvRecord>> {
        Ok(self.inner.store.kv_find(cat, key).await?)
    }

    /// `resetCronTime`: makes up to `limit` unfinished transactions due within `within_secs` due now, except
    /// those a pass holds. Returns how many moved.
    pub async fn reset_cron_time(&self, within_secs: i64, limit: u32) -> Result<u64> {
        let now = self.inner.clock.now();
        Ok(self
            .inner
            .store
            .reset_cron_time(now.plus_secs(within_secs), now, limit)
            .await?)
    }

    /// `resetNextCronTime`: makes one transaction due now (unless a pass holds it). `false` when there is
    /// no such unfinished transaction.
    pub async fn reset_next_cron_time(&self, gid: &Gid) -> Result<bool> {
        let now = self.inner.clock.now();
        Ok(self.inner.store.reset_next_cron_time(gid, now).await?)
    }

    /// Readiness: the store answers a ping within `limit`.
    pub async fn ready(&self, limit: Duration) -> std::result::Result<(), String> {
        match tokio::time::timeout(limit, self.inner.store.ping()).await {
            Err(_) => Err(format!(
                "the store did not answer within {} s",
                limit.as_secs()
            )),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "readiness: store ping failed");
                Err("the store is unavailable".to_owned())
            }
            Ok(Ok(())) => Ok(()),
        }
    }

    /// Claims up to `limit` due transactions in `scope` for `lease_secs` (the recovery scanner). Each
    /// claimed row carries a fresh owner token of this replica, which the pass run on it then holds.
    pub async fn claim_due(
        &self,
        scope: ClaimScope,
        lease_secs: i64,
        limit: u32,
    ) -> store::Result<Claimed> {
        let now = self.inner.clock.now();
        let claim = Claim {
            now,
            lease_until: now.plus_secs(lease_secs.max(1)),
            owner: super::driver::new_token(&self.inner.opts),
            limit: limit.max(1),
            scope,
        };
        self.inner.store.claim_due(&claim).await
    }

    /// The branches of a claimed transaction, for its pass.
    pub async fn load_branches(&self, gid: &Gid) -> store::Result<Vec<Branch>> {
        self.inner.store.find_branches(gid).await
    }

    /// Periodic upkeep: re-anchors the clock to the store's, and with `retention_secs > 0` deletes up to
    /// 1000 finished transactions older than that. Failures are logged; the next round retries.
    pub async fn housekeep(&self, retention_secs: i64) {
        if let Err(e) = self.inner.clock.resync(&self.inner.store).await {
            tracing::warn!(error = %e, "re-reading the store clock failed");
        }
        if retention_secs > 0 {
            let before = self.inner.clock.now().plus_secs(-retention_secs);
            match self.inner.store.delete_finished(before, 1000).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(deleted = n, "deleted finished transactions past retention")
                }
                Err(e) => tracing::warn!(error = %e, "retention cleanup failed"),
            }
        }
    }
}
