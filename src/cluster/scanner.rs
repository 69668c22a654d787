//! The recovery scanner: every retry, timeout, back-check and crash recovery goes through it.
//!
//! Each round claims a batch of due transactions with one atomic store operation (which moves their
//! `next_cron_time` forward by the lease, so no other scanner takes them meanwhile) and runs a pass for each
//! one. New transactions never wait for it: the replica that accepted them runs their first pass at once.
//! A round that fills its batch is followed by another at once; otherwise the scanner sleeps `interval`.
//!
//! In a server the scanner follows a [`KeeperHandle`]: it claims only in the partitions this replica owns
//! (and only until each one's renew deadline), every claim is fenced with the partitions' epochs, and each
//! pass's write carries its partition's epoch. Partitions a claim finds stale are reported to the keeper.
//! Without a keeper (tests driving it by hand) it claims in every partition, unfenced.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::keeper::KeeperHandle;
use crate::engine::Engine;
use crate::engine::{ClaimScope, StoreError};
use crate::model::{Fence, Gid};

/// Scanner tuning.
#[derive(Debug, Clone)]
pub struct ScannerOptions {
    /// Sleep between rounds that found less than a full batch.
    pub interval: Duration,
    /// Most transactions claimed per round.
    pub batch: u32,
    /// How far a claim pushes `next_cron_time` (seconds): the time a pass has before others may retry it.
    pub lease_secs: i64,
    /// Most passes running at once.
    pub concurrency: usize,
    /// This replica's name (prefix of claim owners).
    pub node_id: String,
    /// Keep finished transactions this long (seconds); 0 keeps them forever.
    pub retention_secs: i64,
}

impl Default for ScannerOptions {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            batch: 100,
            lease_secs: 10,
            concurrency: 64,
            node_id: "braid".to_owned(),
            retention_secs: 7 * 24 * 3600,
        }
    }
}

/// The scanner component.
#[derive(Clone)]
pub struct Scanner {
    engine: Engine,
    opts: ScannerOptions,
    permits: Arc<Semaphore>,
    keeper: Option<KeeperHandle>,
}

impl Scanner {
    /// A scanner driving `engine`.
    pub fn new(engine: Engine, opts: ScannerOptions) -> Self {
        let permits = Arc::new(Semaphore::new(opts.concurrency.max(1)));
        Self {
            engine,
            opts,
            permits,
            keeper: None,
        }
    }

    /// Scans only what `keeper` says this replica owns, fenced (see the module docs).
    #[must_use]
    pub fn with_keeper(mut self, keeper: KeeperHandle) -> Self {
        self.keeper = Some(keeper);
        self
    }

    /// Claims one batch of due transactions and runs their passes; waits for them when `wait` is set
    /// (tests use that as DTM's `CronTransOnce`). Returns the claimed gids.
    pub async fn scan_once(&self, wait: bool) -> Result<Vec<Gid>, StoreError> {
        let fences: Option<Vec<Fence>> = self
            .keeper
            .as_ref()
            .map(|k| k.ownership().fences_at(tokio::time::Instant::now()));
        let scope = match &fences {
            None => ClaimScope::All,
            Some(f) if f.is_empty() => return Ok(Vec::new()),
            Some(f) => ClaimScope::Fenced(f.clone()),
        };
        let claimed = self
            .engine
            .claim_due(scope, self.opts.lease_secs, self.opts.batch)
            .await?;
        let fence_of = |p| fences.iter().flatten().find(|f| f.partition == p).copied();
        for p in &claimed.stale {
            self.engine
                .metrics()
                .cluster_fenced_rejections
                .with_label_values(&["claim"])
                .inc();
            if let (Some(keeper), Some(fence)) = (&self.keeper, fence_of(*p)) {
                tracing::warn!(partition = p.0, fence = %fence, "claim refused: another replica took the partition over");
                keeper.report_stale(fence);
            }
        }
        let mut gids = Vec::with_capacity(claimed.txns.len());
        let mut passes = JoinSet::new();
        for txn in claimed.txns {
            let fence = fence_of(txn.partition);
            gids.push(txn.gid.clone());
            if self.engine.is_inflight(&txn.gid) {
                continue;
            }
            let Ok(permit) = self.permits.clone().acquire_owned().await else {
                break;
            };
            let engine = self.engine.clone();
            if wait {
                passes.spawn(async move {
                    let _permit = permit;
                    // A store error is not "no branches": a pass over none would finish the transaction
                    // without calling anything. Leave it; its claim runs out and a later scan retries it.
                    match engine.load_branches(&txn.gid).await {
                        Ok(branches) => {
                            engine.run_pass_with(txn, branches, fence).await;
                        }
                        Err(e) => {
                            tracing::warn!(braid.gid = %txn.gid, error = %e, "loading branches failed; the scan will retry");
                        }
                    }
                });
            } else {
                drop(permit);
                self.engine.spawn_pass_with(txn, None, fence);
            }
        }
        while passes.join_next().await.is_some() {}
        Ok(gids)
    }

    /// Scans until `cancel` fires. Store errors are counted and retried after `interval`.
    pub async fn run(self, cancel: CancellationToken) {
        let mut last_housekeeping = tokio::time::Instant::now();
        loop {
            let full = match self.scan_once(false).await {
                Ok(gids) => {
                    self.engine_metrics_claimed(gids.len());
                    gids.len() as u32 >= self.opts.batch
                }
                Err(e) => {
                    tracing::warn!(error = %e, "recovery scan failed; retrying");
                    self.engine_metrics_error(&e);
                    false
                }
            };
            if last_housekeeping.elapsed() >= Duration::from_secs(60) {
                last_housekeeping = tokio::time::Instant::now();
                self.housekeeping().await;
            }
            if !full {
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(self.opts.interval) => {}
                }
            } else if cancel.is_cancelled() {
                break;
            }
        }
    }

    /// One replica deletes old transactions at a time: the owner of partition 0 (or a scanner without keeper).
    fn does_housekeeping(&self) -> bool {
        self.keeper.as_ref().is_none_or(|k| {
            k.ownership()
                .partitions()
                .contains(&crate::model::Partition(0))
        })
    }

    fn engine_metrics_claimed(&self, n: usize) {
        self.engine.metrics().scanner_claimed.inc_by(n as u64);
    }

    fn engine_metrics_error(&self, e: &StoreError) {
        self.engine
            .metrics()
            .scanner_errors
            .with_label_values(&[e.metric_label()])
            .inc();
    }

    /// Re-anchors the clock and (on one replica) deletes finished transactions past their retention.
    async fn housekeeping(&self) {
        let retention = if self.does_housekeeping() {
            self.opts.retention_secs
        } else {
            0
        };
        self.engine.housekeep(retention).await;
    }
}
