//! The lease keeper: membership heartbeat, partition leases, fencing, and the ownership the scanner reads.
//!
//! Every `retry-period` the keeper runs one [`Keeper::step`]:
//! 1. gives up partitions the scanner reported as taken over (their epoch moved on), and partitions whose
//!    last successful renewal is `renew-deadline` old (so it stops before the lease can expire for others);
//! 2. renews its membership lease;
//! 3. renews the partition leases it owns (all at once);
//! 4. lists the live leases, computes the live members and the assignment ([`super::assignment`]);
//! 5. releases owned partitions the assignment gives to another member (the scanner stops first);
//! 6. acquires the free partitions the assignment gives to it, and fences each in the store (epoch + 1)
//!    before the scanner may use it;
//! 7. publishes the [`Ownership`] and the [`ClusterView`], and updates the metrics.
//!
//! A replica whose membership lease is held by another identity (an earlier run with the same node id whose
//! lease has not expired yet, or a misconfigured twin) owns nothing until it gets the lease.
//! On shutdown ([`Keeper::run`] cancelled) it publishes an empty ownership, then releases every lease it
//! holds, so others take over within one retry period instead of one lease duration.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::lease::{Holder, LeaseBackend, LeaseKey};
use super::{ClusterView, Error, Fencing, Identity, LeaseTiming, MemberView, Result, assignment};
use crate::metrics::Metrics;
use crate::model::{Fence, LeaseEpoch, Partition};

/// The keeper's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeeperOptions {
    /// The partition count P.
    pub partitions: u16,
    /// Lease timing.
    pub timing: LeaseTiming,
}

/// A partition this replica owns, and until when it may act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnedPartition {
    /// The partition and the epoch it was taken at.
    pub fence: Fence,
    /// The scanner must not claim in it from this instant on (last renewal + renew deadline).
    pub valid_until: Instant,
}

/// What this replica owns, as published to the scanner.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ownership {
    owned: Vec<OwnedPartition>,
}

impl Ownership {
    /// The fences of the partitions that may be scanned at `now`, by partition.
    pub fn fences_at(&self, now: Instant) -> Vec<Fence> {
        self.owned
            .iter()
            .filter(|o| o.valid_until > now)
            .map(|o| o.fence)
            .collect()
    }

    /// Every owned partition, by partition.
    pub fn partitions(&self) -> Vec<Partition> {
        self.owned.iter().map(|o| o.fence.partition).collect()
    }

    /// How many partitions are owned.
    pub fn len(&self) -> usize {
        self.owned.len()
    }

    /// Whether nothing is owned.
    pub fn is_empty(&self) -> bool {
        self.owned.is_empty()
    }
}

/// A cheap, cloneable handle to a keeper: its published state, and a way to report lost partitions.
#[derive(Clone)]
pub struct KeeperHandle {
    ownership: watch::Receiver<Ownership>,
    view: watch::Receiver<ClusterView>,
    lost: mpsc::Sender<Fence>,
}

impl KeeperHandle {
    /// The current ownership.
    pub fn ownership(&self) -> Ownership {
        self.ownership.borrow().clone()
    }

    /// The cluster as this replica saw it at the last step.
    pub fn view(&self) -> ClusterView {
        self.view.borrow().clone()
    }

    /// Reports that `fence` is stale (a claim found another epoch in the store): the keeper drops the
    /// partition at its next step. Never waits; a full queue drops the report (the lease renewal notices too).
    pub fn report_stale(&self, fence: Fence) {
        let _ = self.lost.try_send(fence);
    }

    /// Waits until the ownership changes; `false` once the keeper is gone.
    pub async fn changed(&mut self) -> bool {
        self.ownership.changed().await.is_ok()
    }
}

/// Most lease and fencing calls in flight at once: each may hold a database connection, and a replica taking
/// over dozens of partitions must not exhaust the database's connection limit.
const CONCURRENCY: usize = 8;

/// Runs `futs` with at most [`CONCURRENCY`] at a time; results in input order.
async fn join_all<F: Future>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    futures::stream::iter(futs)
        .buffered(CONCURRENCY)
        .collect()
        .await
}

/// `fut`, failing with [`Error::Timeout`] after `limit`: a hung backend call must not stall the keeper (the
/// scanner stops at the renew deadline anyway, but the keeper should keep trying).
async fn bounded<T>(
    what: &'static str,
    limit: std::time::Duration,
    fut: impl Future<Output = Result<T>>,
) -> Result<T> {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or(Err(Error::Timeout { what, after: limit }))
}

struct Held {
    epoch: LeaseEpoch,
    /// When the last successful renewal (or the acquisition) was sent.
    renewed_at: Instant,
}

/// The keeper component.
pub struct Keeper {
    backend: Arc<dyn LeaseBackend>,
    fencing: Arc<dyn Fencing>,
    me: Identity,
    opts: KeeperOptions,
    metrics: Arc<Metrics>,
    owned: BTreeMap<Partition, Held>,
    member_renewed: Option<Instant>,
    ownership_tx: watch::Sender<Ownership>,
    view_tx: watch::Sender<ClusterView>,
    lost_rx: mpsc::Receiver<Fence>,
}

impl Keeper {
    /// A keeper for `me` over `backend`, fencing in `fencing`.
    pub fn new(
        opts: KeeperOptions,
        backend: Arc<dyn LeaseBackend>,
        fencing: Arc<dyn Fencing>,
        me: Identity,
        metrics: Arc<Metrics>,
    ) -> (Self, KeeperHandle) {
        let (ownership_tx, ownership) = watch::channel(Ownership::default());
        let (view_tx, view) = watch::channel(ClusterView {
            node_id: me.node_id().to_owned(),
            partitions: opts.partitions,
            members: Vec::new(),
        });
        let (lost, lost_rx) = mpsc::channel(1024);
        let keeper = Self {
            backend,
            fencing,
            me,
            opts,
            metrics,
            owned: BTreeMap::new(),
            member_renewed: None,
            ownership_tx,
            view_tx,
            lost_rx,
        };
        let handle = KeeperHandle {
            ownership,
            view,
            lost,
        };
        (keeper, handle)
    }

    /// This replica's lease identity.
    pub fn identity(&self) -> &Identity {
        &self.me
    }

    /// Steps every retry period until `cancel` fires, then gives everything up (see the module docs).
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut ticks = tokio::time::interval(self.opts.timing.retry_period);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                _ = ticks.tick() => self.step().await,
            }
        }
        self.release_all().await;
    }

    /// Publishes an empty ownership and releases every lease held (shutdown).
    pub async fn release_all(&mut self) {
        let released: Vec<Partition> = self.owned.keys().copied().collect();
        self.owned.clear();
        self.publish_ownership();
        let limit = self.call_limit();
        let me = &self.me;
        let backend = &self.backend;
        let results = join_all(released.iter().copied().map(|p| async move {
            let released = bounded(
                "releasing a partition lease",
                limit,
                backend.release(&LeaseKey::Partition(p), me),
            )
            .await;
            (p, released)
        }))
        .await;
        for (p, r) in results {
            if let Err(e) = r {
                tracing::warn!(partition = p.0, error = %e, "releasing a partition lease failed; it expires by itself");
            }
        }
        let member = LeaseKey::Member(self.me.node_id().to_owned());
        if let Err(e) = bounded(
            "releasing the membership lease",
            limit,
            self.backend.release(&member, &self.me),
        )
        .await
        {
            tracing::warn!(error = %e, "releasing the membership lease failed; it expires by itself");
        }
        self.member_renewed = None;
        tracing::info!(
            released = released.len(),
            "released partition and membership leases"
        );
    }

    /// One round (see the module docs). Never fails: backend errors are counted, logged and retried at the
    /// next step, and ownership lapses by itself at the renew deadline.
    pub async fn step(&mut self) {
        let started = Instant::now();
        let timing = self.opts.timing;
        self.take_lost_reports().await;
        self.drop_past_deadline(started);

        let limit = self.call_limit();
        let member = LeaseKey::Member(self.me.node_id().to_owned());
        match bounded(
            "renewing the membership lease",
            limit,
            self.backend
                .acquire(&member, &self.me, timing.lease_duration),
        )
        .await
        {
            Ok(true) => self.member_renewed = Some(started),
            Ok(false) => tracing::warn!(
                node_id = self.me.node_id(),
                "the membership lease of this node id is held by another replica (an earlier run of this \
                 node, or another replica started with the same --node-id); waiting for it to expire"
            ),
            Err(e) => {
                self.metrics.cluster_lease_renew_failures.inc();
                tracing::warn!(error = %e, "renewing the membership lease failed");
            }
        }
        let is_member = self
            .member_renewed
            .is_some_and(|t| started.duration_since(t) < timing.renew_deadline);

        self.renew_owned(started).await;

        match bounded("listing leases", limit, self.backend.list()).await {
            Ok(holders) => {
                self.rebalance(&holders, is_member, started).await;
                self.publish_view(&holders, is_member);
            }
            Err(e) => {
                tracing::warn!(error = %e, "listing leases failed; keeping the partitions owned");
            }
        }
        self.drop_past_deadline(Instant::now());
        self.publish_ownership();
    }

    async fn take_lost_reports(&mut self) {
        while let Ok(fence) = self.lost_rx.try_recv() {
            let p = fence.partition;
            if self.owned.get(&p).is_some_and(|h| h.epoch == fence.epoch) {
                self.owned.remove(&p);
                self.metrics.cluster_lease_losses.inc();
                tracing::warn!(
                    partition = p.0,
                    epoch = fence.epoch.0,
                    "another replica took this partition over (its epoch moved on); giving it up"
                );
                self.publish_ownership();
                let limit = self.call_limit();
                let key = LeaseKey::Partition(p);
                let release = self.backend.release(&key, &self.me);
                if let Err(e) = bounded("releasing a partition lease", limit, release).await {
                    tracing::debug!(partition = p.0, error = %e, "releasing a lost partition lease failed");
                }
            }
        }
    }

    fn drop_past_deadline(&mut self, now: Instant) {
        let deadline = self.opts.timing.renew_deadline;
        let late: Vec<Partition> = self
            .owned
            .iter()
            .filter(|(_, h)| now.duration_since(h.renewed_at) >= deadline)
            .map(|(p, _)| *p)
            .collect();
        if late.is_empty() {
            return;
        }
        for p in &late {
            self.owned.remove(p);
        }
        self.metrics.cluster_lease_losses.inc_by(late.len() as u64);
        tracing::warn!(
            partitions = ?late.iter().map(|p| p.0).collect::<Vec<_>>(),
            "could not renew partition leases within the renew deadline; stopped scanning them"
        );
    }

    async fn renew_owned(&mut self, started: Instant) {
        let duration = self.opts.timing.lease_duration;
        let limit = self.call_limit();
        let keys: Vec<Partition> = self.owned.keys().copied().collect();
        let me = &self.me;
        let backend = &self.backend;
        let results = join_all(keys.iter().copied().map(|p| async move {
            bounded(
                "renewing a partition lease",
                limit,
                backend.acquire(&LeaseKey::Partition(p), me, duration),
            )
            .await
        }))
        .await;
        let (mut lost, mut failed) = (Vec::new(), None);
        for (p, r) in keys.into_iter().zip(results) {
            match r {
                Ok(true) => {
                    if let Some(h) = self.owned.get_mut(&p) {
                        h.renewed_at = started;
                    }
                }
                Ok(false) => {
                    self.owned.remove(&p);
                    lost.push(p.0);
                }
                Err(e) => {
                    self.metrics.cluster_lease_renew_failures.inc();
                    failed = Some(e);
                }
            }
        }
        if !lost.is_empty() {
            self.metrics.cluster_lease_losses.inc_by(lost.len() as u64);
            tracing::warn!(partitions = ?lost, "partition leases were taken by other replicas; stopped scanning them");
        }
        if let Some(e) = failed {
            tracing::warn!(error = %e, "renewing partition leases failed; retrying until the renew deadline");
        }
    }

    /// The live members' node ids: holders of membership leases, with this replica only while it is one.
    fn members(&self, holders: &[Holder], is_member: bool) -> BTreeSet<String> {
        let mut members: BTreeSet<String> = holders
            .iter()
            .filter(|h| matches!(h.key, LeaseKey::Member(_)))
            .map(|h| h.identity.node_id().to_owned())
            .collect();
        if is_member {
            members.insert(self.me.node_id().to_owned());
        } else {
            members.remove(self.me.node_id());
        }
        members
    }

    async fn rebalance(&mut self, holders: &[Holder], is_member: bool, started: Instant) {
        let members = self.members(holders, is_member);
        let refs: Vec<&str> = members.iter().map(String::as_str).collect();
        let target = assignment::assign(self.opts.partitions, &refs);
        let mine: BTreeSet<Partition> = if is_member {
            target
                .iter()
                .filter(|(_, m)| m.as_str() == self.me.node_id())
                .map(|(p, _)| *p)
                .collect()
        } else {
            BTreeSet::new()
        };

        // Release what now belongs to someone else: stop scanning first, then give the lease up.
        let release: Vec<Partition> = self
            .owned
            .keys()
            .filter(|p| !mine.contains(p))
            .copied()
            .collect();
        if !release.is_empty() {
            for p in &release {
                self.owned.remove(p);
            }
            self.publish_ownership();
            let limit = self.call_limit();
            let me = &self.me;
            let backend = &self.backend;
            join_all(release.iter().copied().map(|p| async move {
                let key = LeaseKey::Partition(p);
                let released = bounded(
                    "releasing a partition lease",
                    limit,
                    backend.release(&key, me),
                );
                if let Err(e) = released.await {
                    tracing::warn!(partition = p.0, error = %e, "releasing a partition lease failed; it expires by itself");
                }
            }))
            .await;
            self.metrics
                .cluster_lease_releases
                .inc_by(release.len() as u64);
            tracing::info!(partitions = ?release.iter().map(|p| p.0).collect::<Vec<_>>(), "released partitions that now belong to other members");
        }

        // Acquire what is ours and free (or already held by this identity).
        let held_by: BTreeMap<Partition, &Identity> = holders
            .iter()
            .filter_map(|h| match h.key {
                LeaseKey::Partition(p) => Some((p, &h.identity)),
                LeaseKey::Member(_) => None,
            })
            .collect();
        let wanted: Vec<Partition> = mine
            .iter()
            .filter(|p| !self.owned.contains_key(p))
            .filter(|p| held_by.get(p).is_none_or(|h| **h == self.me))
            .copied()
            .collect();
        if wanted.is_empty() {
            return;
        }
        let duration = self.opts.timing.lease_duration;
        let limit = self.call_limit();
        let me = &self.me;
        let owner = self.me.to_string();
        let backend = &self.backend;
        let fencing = &self.fencing;
        let owner = &owner;
        let results = join_all(wanted.iter().copied().map(|p| async move {
            let key = LeaseKey::Partition(p);
            match bounded(
                "acquiring a partition lease",
                limit,
                backend.acquire(&key, me, duration),
            )
            .await
            {
                Ok(true) => {}
                Ok(false) => return (p, None),
                Err(e) => {
                    tracing::debug!(partition = p.0, error = %e, "acquiring a partition lease failed");
                    return (p, None);
                }
            }
            match bounded("fencing a partition", limit, fencing.fence(p, owner)).await {
                Ok(epoch) => (p, Some(epoch)),
                Err(e) => {
                    tracing::warn!(partition = p.0, error = %e, "fencing a newly acquired partition failed; releasing it");
                    let _ = backend.release(&key, me).await;
                    (p, None)
                }
            }
        }))
        .await;
        let mut taken = Vec::new();
        for (p, epoch) in results {
            if let Some(epoch) = epoch {
                self.owned.insert(
                    p,
                    Held {
                        epoch,
                        renewed_at: started,
                    },
                );
                taken.push(p.0);
            }
        }
        if !taken.is_empty() {
            self.metrics
                .cluster_lease_acquisitions
                .inc_by(taken.len() as u64);
            tracing::info!(partitions = ?taken, "took partitions over");
        }
    }

    /// The time limit of one backend call: the renew deadline (a call that takes longer is useless anyway).
    fn call_limit(&self) -> std::time::Duration {
        self.opts.timing.renew_deadline
    }

    fn publish_ownership(&self) {
        let deadline = self.opts.timing.renew_deadline;
        let owned: Vec<OwnedPartition> = self
            .owned
            .iter()
            .map(|(p, h)| OwnedPartition {
                fence: Fence {
                    partition: *p,
                    epoch: h.epoch,
                },
                valid_until: h.renewed_at + deadline,
            })
            .collect();
        self.metrics
            .cluster_partitions_owned
            .set(owned.len() as i64);
        self.ownership_tx.send_if_modified(|current| {
            let next = Ownership { owned };
            if *current == next {
                false
            } else {
                *current = next;
                true
            }
        });
    }

    fn publish_view(&self, holders: &[Holder], is_member: bool) {
        let members = self.members(holders, is_member);
        let mut by_node: BTreeMap<String, BTreeSet<u16>> = members
            .iter()
            .map(|m| (m.clone(), BTreeSet::new()))
            .collect();
        for h in holders {
            if let LeaseKey::Partition(p) = h.key
                && h.identity.node_id() != self.me.node_id()
            {
                by_node
                    .entry(h.identity.node_id().to_owned())
                    .or_default()
                    .insert(p.0);
            }
        }
        if is_member || !self.owned.is_empty() {
            by_node.insert(
                self.me.node_id().to_owned(),
                self.owned.keys().map(|p| p.0).collect(),
            );
        }
        self.metrics.cluster_members.set(members.len() as i64);
        let view = ClusterView {
            node_id: self.me.node_id().to_owned(),
            partitions: self.opts.partitions,
            members: by_node
                .into_iter()
                .map(|(node_id, ps)| MemberView {
                    node_id,
                    partitions: ps.into_iter().collect(),
                })
                .collect(),
        };
        self.view_tx.send_replace(view);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use async_trait::async_trait;
    use tokio::task::JoinHandle;

    use super::*;
    use crate::cluster::local::LocalLeases;

    const P: u16 = 64;

    fn small_timing() -> LeaseTiming {
        LeaseTiming {
            lease_duration: Duration::from_secs(4),
            renew_deadline: Duration::from_secs(3),
            retry_period: Duration::from_secs(1),
        }
    }

    /// Epochs in memory, with the history of who took which epoch.
    #[derive(Default)]
    struct MemFencing {
        epochs: Mutex<HashMap<Partition, u64>>,
        taken: Mutex<Vec<(Partition, LeaseEpoch, String)>>,
    }

    #[async_trait]
    impl Fencing for MemFencing {
        async fn fence(&self, p: Partition, owner: &str) -> Result<LeaseEpoch> {
            let mut epochs = self.epochs.lock().unwrap();
            let e = epochs.entry(p).or_insert(0);
            *e += 1;
            let epoch = LeaseEpoch(*e);
            self.taken
                .lock()
                .unwrap()
                .push((p, epoch, owner.to_owned()));
            Ok(epoch)
        }
    }

    /// A backend whose calls hang (until the keeper's time limit) while `down` is set: the keeper is stuck
    /// mid-step, and only the published `valid_until` keeps the scanner from acting past the deadline.
    struct Flaky {
        inner: LocalLeases,
        down: Arc<AtomicBool>,
    }

    #[async_trait]
    impl LeaseBackend for Flaky {
        fn kind(&self) -> &'static str {
            "flaky"
        }
        async fn acquire(&self, key: &LeaseKey, me: &Identity, d: Duration) -> Result<bool> {
            if self.down.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            self.inner.acquire(key, me, d).await
        }
        async fn release(&self, key: &LeaseKey, me: &Identity) -> Result<()> {
            if self.down.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            self.inner.release(key, me).await
        }
        async fn list(&self) -> Result<Vec<Holder>> {
            if self.down.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            self.inner.list().await
        }
    }

    struct Node {
        handle: KeeperHandle,
        cancel: CancellationToken,
        task: JoinHandle<()>,
    }

    struct Cluster {
        leases: LocalLeases,
        fencing: Arc<MemFencing>,
        nodes: BTreeMap<String, Node>,
    }

    impl Cluster {
        fn new() -> Self {
            Self {
                leases: LocalLeases::new(),
                fencing: Arc::new(MemFencing::default()),
                nodes: BTreeMap::new(),
            }
        }

        fn start_with(&mut self, name: &str, backend: Arc<dyn LeaseBackend>) {
            let (keeper, handle) = Keeper::new(
                KeeperOptions {
                    partitions: P,
                    timing: small_timing(),
                },
                backend,
                self.fencing.clone(),
                Identity::new(name),
                Arc::new(Metrics::new()),
            );
            let cancel = CancellationToken::new();
            let task = tokio::spawn(keeper.run(cancel.clone()));
            self.nodes.insert(
                name.to_owned(),
                Node {
                    handle,
                    cancel,
                    task,
                },
            );
        }

        fn start(&mut self, name: &str) {
            let backend = Arc::new(self.leases.clone());
            self.start_with(name, backend);
        }

        async fn stop(&mut self, name: &str) {
            let node = self.nodes.remove(name).unwrap();
            node.cancel.cancel();
            node.task.await.unwrap();
        }

        fn crash(&mut self, name: &str) {
            self.nodes.remove(name).unwrap().task.abort();
        }

        /// Partitions each node may scan now; panics if two may scan one partition at once.
        fn owners(&self) -> BTreeMap<Partition, String> {
            let now = Instant::now();
            let mut owners = BTreeMap::new();
            for (name, node) in &self.nodes {
                for f in node.handle.ownership().fences_at(now) {
                    if let Some(other) = owners.insert(f.partition, name.clone()) {
                        panic!("{} owned by both {other} and {name}", f.partition);
                    }
                }
            }
            owners
        }

        fn counts(&self) -> BTreeMap<String, usize> {
            let mut c: BTreeMap<String, usize> =
                self.nodes.keys().map(|n| (n.clone(), 0)).collect();
            for name in self.owners().values() {
                *c.entry(name.clone()).or_default() += 1;
            }
            c
        }

        /// Runs for `secs` seconds of (paused) time, checking exclusive ownership every 100 ms.
        async fn run_for(&self, secs: u64) {
            for _ in 0..secs * 10 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                self.owners();
            }
        }

        fn balanced(&self) -> bool {
            let n = self.nodes.len();
            let (lo, hi) = (usize::from(P) / n, usize::from(P).div_ceil(n));
            self.owners().len() == usize::from(P)
                && self.counts().values().all(|c| (lo..=hi).contains(c))
        }

        fn epochs_have_one_owner_each(&self) {
            let taken = self.fencing.taken.lock().unwrap();
            let mut seen = BTreeMap::new();
            for (p, e, owner) in taken.iter() {
                if let Some(first) = seen.insert((*p, *e), owner.clone()) {
                    panic!("{p}@{e} taken by {first} and {owner}");
                }
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn keepers_share_partitions_evenly_and_rebalance_on_joins_and_leaves() {
        let mut c = Cluster::new();
        for n in ["a", "b", "c"] {
            c.start(n);
        }
        c.run_for(5).await;
        assert!(c.balanced(), "3 members: {:?}", c.counts());

        c.start("d");
        c.start("e");
        c.run_for(5).await;
        assert!(c.balanced(), "5 members: {:?}", c.counts());

        // Clean stops release at once; the others take over within a few retry periods.
        c.stop("a").await;
        c.stop("b").await;
        c.stop("c").await;
        c.run_for(3).await;
        assert!(c.balanced(), "2 members: {:?}", c.counts());
        c.epochs_have_one_owner_each();
        let views: Vec<ClusterView> = c.nodes.values().map(|n| n.handle.view()).collect();
        for v in &views {
            assert_eq!(v.partitions, P);
            assert_eq!(
                v.members
                    .iter()
                    .map(|m| m.node_id.as_str())
                    .collect::<Vec<_>>(),
                vec!["d", "e"],
                "{v:?}"
            );
            let total: usize = v.members.iter().map(|m| m.partitions.len()).sum();
            assert_eq!(total, usize::from(P), "{v:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn crashed_keepers_partitions_move_after_lease_expiry_not_before() {
        let mut c = Cluster::new();
        c.start("a");
        c.start("b");
        c.run_for(3).await;
        assert!(c.balanced(), "{:?}", c.counts());
        let crashed_at = Instant::now();
        c.crash("a");
        let timing = small_timing();
        let mut took_all = None;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let owned = c.counts()["b"];
            if owned == usize::from(P) {
                took_all = Some(crashed_at.elapsed());
                break;
            }
        }
        let took = took_all.expect("b took every partition over");
        // a renewed at most one retry period before the crash; its leases expire a lease duration after that,
        // and b tries again every retry period.
        assert!(
            took >= timing.lease_duration - timing.retry_period,
            "b took over too early: {took:?}"
        );
        assert!(
            took <= timing.lease_duration + timing.retry_period,
            "b took over too late: {took:?}"
        );
        c.epochs_have_one_owner_each();
    }

    #[tokio::test(start_paused = true)]
    async fn a_keeper_that_cannot_renew_stops_before_others_take_over() {
        let mut c = Cluster::new();
        let down = Arc::new(AtomicBool::new(false));
        c.start_with(
            "a",
            Arc::new(Flaky {
                inner: c.leases.clone(),
                down: down.clone(),
            }),
        );
        c.start("b");
        c.run_for(3).await;
        assert!(c.balanced(), "{:?}", c.counts());
        down.store(true, Ordering::SeqCst);
        // `owners()` panics whenever a and b may both scan a partition; b ends up with everything.
        c.run_for(8).await;
        assert_eq!(c.counts()["a"], 0);
        assert_eq!(c.counts()["b"], usize::from(P));
        // Back up: a rejoins and gets its share back.
        down.store(false, Ordering::SeqCst);
        c.run_for(5).await;
        assert!(c.balanced(), "{:?}", c.counts());
        c.epochs_have_one_owner_each();
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_report_gives_the_partition_up_and_retakes_it_at_a_new_epoch() {
        let mut c = Cluster::new();
        c.start("a");
        c.run_for(2).await;
        let handle = c.nodes["a"].handle.clone();
        let first = handle.ownership().fences_at(Instant::now())[0];
        handle.report_stale(first);
        c.run_for(3).await;
        let again = handle
            .ownership()
            .fences_at(Instant::now())
            .into_iter()
            .find(|f| f.partition == first.partition)
            .expect("taken again");
        assert!(again.epoch > first.epoch, "{again} after {first}");
        assert_eq!(handle.ownership().len(), usize::from(P));
    }
}
