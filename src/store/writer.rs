//! Group commit: the single writer task of a store.
//!
//! Every durable state change in the server goes through a [`WriterHandle`]. The [`Writer`] task takes the
//! first queued write, drains whatever else is already queued (up to `max_batch` writes and `max_batch_bytes`
//! estimated bytes, optionally waiting up to `max_wait` for more), applies the batch in one database
//! transaction with [`TxnStore::apply`](super::TxnStore::apply), and only then answers each waiter. So:
//! - no caller hears "done" before its write is durable;
//! - under light load a batch is one write, so latency is one commit;
//! - under heavy load one commit carries many transactions' changes.
//!
//! A batch that fails as a whole is retried write by write, so one bad write cannot fail its neighbours;
//! every waiter gets exactly one answer (its outcome or the error), never a partial one. The exception is a
//! database that cannot be reached at all: then every waiter of the batch gets the (retryable) error at
//! once, instead of one connection timeout per write.
//! On shutdown the queue is closed, the batches in flight finish, the writes already queued are committed,
//! and later calls get [`Error::WriterStopped`].
//!
//! Batch size in bytes: MySQL refuses a statement larger than `max_allowed_packet` and drops the connection,
//! which would fail every write of the batch as "unavailable". The rows of a batch are inserted with
//! multi-row statements, so the writer keeps each batch's estimated size ([`Write::estimated_bytes`]) under
//! `max_batch_bytes` (by default the packet limit less a margin): a write that does not fit starts the next
//! batch. A single write over the limit could never be stored; its caller gets [`Error::TooLarge`] at once
//! and nothing is queued.
//!
//! Pipelining: with `pipeline > 1`, the writer collects and applies the next batch while earlier ones are
//! still committing (each on a connection of its own), so the database's log flush of one batch overlaps
//! the statements of the next (and its group commit merges their flushes). Every waiter is still answered
//! only after the commit of its own batch. Batches in flight at once hold only concurrent writes: a caller
//! that waits for one write's answer before sending the next cannot have both in flight, so no order
//! between them is lost; two batches that touch the same row are serialized by the row lock (a deadlock is
//! a lock conflict, applied again).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{DynStore, Error, Result, Write, WriteOutcome};
use crate::metrics::Metrics;

/// Tuning of the group-commit writer.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Most writes in one database transaction.
    pub max_batch: usize,
    /// How long to wait for more writes after the first one arrives (0: take only what is already queued).
    pub max_wait: Duration,
    /// Queue capacity; callers wait when it is full.
    pub queue: usize,
    /// Most batches committing at once (1: one after the other). More than one only helps a database
    /// that runs several write transactions at once (MySQL); SQLite has one writer at a time.
    pub pipeline: usize,
    /// Most estimated bytes ([`Write::estimated_bytes`]) in one batch; a single write above it is refused
    /// with [`Error::TooLarge`]. Default: [`WriterOptions::batch_bytes_for`] the store's packet limit.
    pub max_batch_bytes: u64,
}

/// The batch byte limit of a store without a packet limit (SQLite), and the most any default allows.
pub const DEFAULT_MAX_BATCH_BYTES: u64 = 64 * 1024 * 1024;

impl Default for WriterOptions {
    fn default() -> Self {
        Self {
            max_batch: 512,
            max_wait: Duration::ZERO,
            queue: 8192,
            pipeline: 1,
            max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
        }
    }
}

impl WriterOptions {
    /// The defaults for a store of this kind ([`StoreBase::kind`](super::StoreBase::kind)): two batches in flight on
    /// MySQL and PostgreSQL, one on SQLite.
    pub fn for_store(kind: &str) -> Self {
        Self {
            pipeline: if matches!(kind, "mysql" | "postgres") {
                2
            } else {
                1
            },
            ..Self::default()
        }
    }

    /// The default batch byte limit for a database whose largest statement is `max_packet` bytes
    /// ([`Store::max_packet_bytes`](super::Store::max_packet_bytes)): the packet less a margin of an
    /// eighth (at least 64 KiB) for what the estimate does not count, and at most
    /// [`DEFAULT_MAX_BATCH_BYTES`]. MariaDB's default 16 MiB packet gives 14 MiB.
    pub fn batch_bytes_for(max_packet: Option<u64>) -> u64 {
        match max_packet {
            None => DEFAULT_MAX_BATCH_BYTES,
            Some(packet) => packet
                .saturating_sub((packet / 8).max(64 * 1024))
                .clamp(1, DEFAULT_MAX_BATCH_BYTES),
        }
    }
}

/// How often a batch rolled back by a lock conflict is applied again before its waiters get the error.
const LOCK_CONFLICT_RETRIES: u32 = 5;

struct Pending {
    write: Write,
    /// Its [`Write::estimated_bytes`], computed once by the caller.
    bytes: u64,
    reply: oneshot::Sender<Result<WriteOutcome>>,
}

/// Cloneable handle to submit writes.
#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<Pending>,
    max_batch_bytes: u64,
    metrics: Arc<Metrics>,
}

impl WriterHandle {
    /// Queues `write` and waits until the batch holding it has committed. A write larger than the batch
    /// byte limit is refused at once with [`Error::TooLarge`] (nothing is queued or written).
    pub async fn write(&self, write: Write) -> Result<WriteOutcome> {
        let bytes = write.estimated_bytes();
        if bytes > self.max_batch_bytes {
            self.metrics
                .store_commit_errors
                .with_label_values(&["too_large"])
                .inc();
            return Err(Error::TooLarge {
                bytes,
                limit: self.max_batch_bytes,
            });
        }
        let (reply, rx) = oneshot::channel();
        // Reserve first and count after: a caller that gives up while the queue is full leaves no count
        // behind, and the count is up before the writer can take (and uncount) the write.
        let permit = self.tx.reserve().await.map_err(|_| Error::WriterStopped)?;
        self.metrics.store_queue_depth.inc();
        permit.send(Pending {
            write,
            bytes,
            reply,
        });
        rx.await.unwrap_or(Err(Error::WriterStopped))
    }
}

/// The writer task. Build with [`Writer::new`], run with [`Writer::run`].
pub struct Writer {
    store: DynStore,
    rx: mpsc::Receiver<Pending>,
    opts: WriterOptions,
    metrics: Arc<Metrics>,
}

impl Writer {
    /// A writer for `store` and the handle that feeds it.
    pub fn new(
        store: DynStore,
        opts: WriterOptions,
        metrics: Arc<Metrics>,
    ) -> (Self, WriterHandle) {
        let (tx, rx) = mpsc::channel(opts.queue.max(1));
        let handle = WriterHandle {
            tx,
            max_batch_bytes: opts.max_batch_bytes,
            metrics: metrics.clone(),
        };
        (
            Self {
                store,
                rx,
                opts,
                metrics,
            },
            handle,
        )
    }

    /// Commits batches until `cancel` fires (then flushes what is queued) or every handle is dropped.
    pub async fn run(self, cancel: CancellationToken) {
        let Self {
            store,
            mut rx,
            opts,
            metrics,
        } = self;
        let committer = Committer { store, metrics };
        let pipeline = opts.pipeline.max(1);
        let mut inflight = FuturesUnordered::new();
        // A write taken from the queue that did not fit in the batch before: it starts the next one.
        let mut carry: Option<Pending> = None;
        loop {
            if cancel.is_cancelled() {
                break;
            }
            if inflight.len() < pipeline
                && let Some(first) = carry.take()
            {
                let (batch, rest) = collect(&mut rx, &opts, first).await;
                carry = rest;
                inflight.push(committer.commit(batch));
                continue;
            }
            // Cancellation first: under a steady stream of writes a receive-first select would never see it.
            // Whatever is queued at that point is committed by the flush below.
            tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                Some(()) = inflight.next(), if !inflight.is_empty() => {}
                p = rx.recv(), if inflight.len() < pipeline && carry.is_none() => {
                    let Some(first) = p else { break };
                    let (batch, rest) = collect(&mut rx, &opts, first).await;
                    carry = rest;
                    inflight.push(committer.commit(batch));
                }
            }
        }
        while inflight.next().await.is_some() {}
        // Flush: nothing queued is dropped unanswered.
        rx.close();
        loop {
            let first = match carry.take() {
                Some(p) => p,
                None => match rx.recv().await {
                    Some(p) => p,
                    None => break,
                },
            };
            let (batch, rest) = collect(&mut rx, &opts, first).await;
            carry = rest;
            committer.commit(batch).await;
        }
    }
}

/// Takes `first` and whatever else is queued (up to `max_batch` writes and `max_batch_bytes`, waiting up to
/// `max_wait` for more). Returns the batch and the write that was taken but did not fit, if any.
async fn collect(
    rx: &mut mpsc::Receiver<Pending>,
    opts: &WriterOptions,
    first: Pending,
) -> (Vec<Pending>, Option<Pending>) {
    let mut bytes = first.bytes;
    let mut batch = Vec::with_capacity(16);
    batch.push(first);
    // Adds `p` unless it would take the batch over the byte limit; then hands it back.
    let mut add = |batch: &mut Vec<Pending>, p: Pending| {
        if bytes.saturating_add(p.bytes) > opts.max_batch_bytes {
            return Some(p);
        }
        bytes += p.bytes;
        batch.push(p);
        None
    };
    while batch.len() < opts.max_batch {
        match rx.try_recv() {
            Ok(p) => {
                if let Some(over) = add(&mut batch, p) {
                    return (batch, Some(over));
                }
            }
            Err(_) => break,
        }
    }
    if !opts.max_wait.is_zero() {
        let deadline = Instant::now() + opts.max_wait;
        while batch.len() < opts.max_batch {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(p)) => {
                    if let Some(over) = add(&mut batch, p) {
                        return (batch, Some(over));
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
    }
    (batch, None)
}

/// What committing a batch needs (shared by the batches in flight).
struct Committer {
    store: DynStore,
    metrics: Arc<Metrics>,
}

impl Committer {
    /// Applies a batch; when the database rolled it back for a lock conflict (a deadlock with a concurrent
    /// claim, say), nothing was applied, so it is applied again, a few times with a short pause.
    async fn apply_retrying_lock_conflicts(&self, writes: &[Write]) -> Result<Vec<WriteOutcome>> {
        let mut attempt = 0u32;
        loop {
            match self.store.apply(writes).await {
                Err(e) if e.is_lock_conflict() && attempt < LOCK_CONFLICT_RETRIES => {
                    attempt += 1;
                    self.metrics
                        .store_commit_errors
                        .with_label_values(&["lock_conflict_retried"])
                        .inc();
                    tracing::debug!(error = %e, attempt, "batch hit a lock conflict; applying it again");
                    tokio::time::sleep(Duration::from_millis(2 * u64::from(attempt))).await;
                }
                other => return other,
            }
        }
    }

    async fn commit(&self, batch: Vec<Pending>) {
        self.metrics.store_queue_depth.sub(batch.len() as i64);
        let bytes: u64 = batch.iter().map(|p| p.bytes).sum();
        let (writes, replies): (Vec<Write>, Vec<_>) =
            batch.into_iter().map(|p| (p.write, p.reply)).unzip();
        let started = Instant::now();
        let result = self.apply_retrying_lock_conflicts(&writes).await;
        self.metrics
            .store_commit_duration
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(outcomes) => {
                self.metrics.store_commits.inc();
                self.metrics.store_batch_size.observe(writes.len() as f64);
                self.metrics.store_batch_bytes.observe(bytes as f64);
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(Ok(outcome));
                }
            }
            Err(e) if writes.len() == 1 => {
                self.metrics
                    .store_commit_errors
                    .with_label_values(&[e.metric_label()])
                    .inc();
                tracing::warn!(error = %e, gid = %writes[0].gid(), "store write failed");
                if let Some(reply) = replies.into_iter().next() {
                    let _ = reply.send(Err(e));
                }
            }
            Err(e) => {
                self.metrics
                    .store_commit_errors
                    .with_label_values(&[e.metric_label()])
                    .inc();
                // No connection at all: retrying write by write would wait out one connection timeout per
                // write while every other caller queues up. Answer all of them with the (retryable) error.
                let copies: Option<Vec<Error>> =
                    replies.iter().map(|_| e.connection_copy()).collect();
                if let Some(copies) = copies {
                    tracing::warn!(error = %e, batch = writes.len(), "store unreachable; batch failed");
                    for (reply, err) in replies.into_iter().zip(copies) {
                        let _ = reply.send(Err(err));
                    }
                    return;
                }
                tracing::warn!(error = %e, batch = writes.len(), "batch commit failed; retrying its writes one by one");
                for (write, reply) in writes.into_iter().zip(replies) {
                    let single = std::slice::from_ref(&write);
                    let result = self
                        .apply_retrying_lock_conflicts(single)
                        .await
                        .map(|mut o| o.pop().unwrap_or(WriteOutcome::Conflict));
                    match &result {
                        Ok(_) => {
                            self.metrics.store_commits.inc();
                            self.metrics.store_batch_size.observe(1.0);
                        }
                        Err(e) => {
                            self.metrics
                                .store_commit_errors
                                .with_label_values(&[e.metric_label()])
                                .inc();
                            tracing::warn!(error = %e, gid = %write.gid(), "store write failed");
                        }
                    }
                    let _ = reply.send(result);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use tokio::task::JoinSet;

    use super::*;
    use crate::model::{Op, Version};
    use crate::store::testing::{T0, TestDb, branch, gid, txn};
    use crate::store::{
        ClaimStore, KvStore, LeaseStore, Maintenance, ScanFilter, StoreBase, TxnStore, TxnUpdate,
    };

    impl WriterHandle {
        /// Writes in the queue (sent, or with a slot reserved), not yet taken by the writer.
        fn queued(&self) -> usize {
            self.tx.max_capacity() - self.tx.capacity()
        }
    }

    fn insert(g: &str) -> Write {
        Write::Insert {
            txn: txn(g),
            branches: vec![branch(g, "01", Op::Action)],
        }
    }

    fn insert_with_payload(g: &str, payload: usize) -> Write {
        let mut b = branch(g, "01", Op::Action);
        b.bin_data = vec![b'x'; payload];
        Write::Insert {
            txn: txn(g),
            branches: vec![b],
        }
    }

    type Answers = BTreeMap<String, Result<WriteOutcome>>;

    /// Starts one task per write, each calling `handle.write`, and returns once all of them are queued. A
    /// writer started afterwards finds them all waiting, so batching does not depend on timing.
    async fn queue_all(
        handle: &WriterHandle,
        writes: Vec<Write>,
    ) -> JoinSet<(String, Result<WriteOutcome>)> {
        let n = writes.len();
        let mut tasks = JoinSet::new();
        for w in writes {
            let h = handle.clone();
            tasks.spawn(async move { (w.gid().to_string(), h.write(w).await) });
        }
        while handle.queued() < n || handle.metrics.store_queue_depth.get() < n as i64 {
            tokio::task::yield_now().await;
        }
        tasks
    }

    async fn answers(mut tasks: JoinSet<(String, Result<WriteOutcome>)>) -> Answers {
        let mut out = BTreeMap::new();
        while let Some(joined) = tasks.join_next().await {
            let (g, answer) = joined.unwrap();
            assert!(
                out.insert(g.clone(), answer).is_none(),
                "{g} answered twice"
            );
        }
        out
    }

    async fn stored_gids(db: &TestDb) -> BTreeSet<String> {
        let all = db
            .store
            .scan_txns(&ScanFilter {
                limit: 10_000,
                ..ScanFilter::default()
            })
            .await
            .unwrap();
        all.into_iter().map(|t| t.gid.to_string()).collect()
    }

    /// 200 concurrent writers all get `Applied` after their row is stored, in far fewer commits than writes.
    async fn check_batches_concurrent_writes(db: &TestDb) {
        let metrics = Arc::new(Metrics::new());
        let opts = WriterOptions {
            max_batch: 64,
            ..WriterOptions::for_store(db.store.kind())
        };
        let (writer, handle) = Writer::new(db.store.clone(), opts, metrics.clone());
        let names: Vec<String> = (0..200).map(|i| format!("gc-{i:03}")).collect();
        let tasks = queue_all(&handle, names.iter().map(|g| insert(g)).collect()).await;
        assert_eq!(metrics.store_queue_depth.get(), 200);

        let cancel = CancellationToken::new();
        let running = tokio::spawn(writer.run(cancel.clone()));
        let answers = answers(tasks).await;
        assert_eq!(answers.len(), 200);
        for (g, answer) in &answers {
            assert_eq!(
                *answer.as_ref().unwrap(),
                WriteOutcome::Applied(Version(1)),
                "{g}"
            );
        }

        let commits = metrics.store_commits.get();
        assert!(
            (4..200).contains(&commits),
            "200 writes in batches of at most 64: {commits} commits"
        );
        assert_eq!(metrics.store_batch_size.get_sample_count(), commits);
        assert_eq!(metrics.store_batch_size.get_sample_sum(), 200.0);
        assert_eq!(metrics.store_queue_depth.get(), 0);
        assert_eq!(
            stored_gids(db).await,
            names.iter().cloned().collect::<BTreeSet<_>>()
        );
        for g in &names {
            assert_eq!(
                db.store.find_branches(&gid(g)).await.unwrap().len(),
                1,
                "branch of {g}"
            );
        }

        cancel.cancel();
        running.await.unwrap();
    }

    /// A write that fails fails alone: the batch is retried write by write, and its neighbours (including a
    /// mere `Conflict`) get their own outcomes.
    async fn check_bad_write_does_not_fail_neighbours(db: &TestDb) {
        let metrics = Arc::new(Metrics::new());
        let opts = WriterOptions::for_store(db.store.kind());
        let (writer, handle) = Writer::new(db.store.clone(), opts, metrics.clone());
        // The same branch twice violates the branch unique key: an error, which fails the whole batch.
        let bad = Write::Insert {
            txn: txn("gc-bad"),
            branches: vec![
                branch("gc-bad", "01", Op::Action),
                branch("gc-bad", "01", Op::Action),
            ],
        };
        let missing = Write::Update(TxnUpdate::of(&txn("gc-missing"), T0));
        let tasks = queue_all(&handle, vec![insert("gc-a"), bad, insert("gc-b"), missing]).await;

        let cancel = CancellationToken::new();
        let running = tokio::spawn(writer.run(cancel.clone()));
        let answers = answers(tasks).await;
        assert_eq!(
            answers["gc-a"].as_ref().unwrap(),
            &WriteOutcome::Applied(Version(1))
        );
        assert_eq!(
            answers["gc-b"].as_ref().unwrap(),
            &WriteOutcome::Applied(Version(1))
        );
        assert_eq!(
            answers["gc-missing"].as_ref().unwrap(),
            &WriteOutcome::Conflict
        );
        let err = answers["gc-bad"].as_ref().unwrap_err();
        assert!(
            matches!(err, Error::Query(_)) && !err.is_retryable(),
            "{err:?}"
        );

        // One failed batch, then a commit for each good write and one more failure for the bad one.
        assert_eq!(metrics.store_commits.get(), 3);
        assert_eq!(
            metrics
                .store_commit_errors
                .with_label_values(&["query"])
                .get(),
            2
        );
        assert_eq!(
            stored_gids(db).await,
            BTreeSet::from(["gc-a".to_owned(), "gc-b".to_owned()])
        );
        assert_eq!(
            db.store.find_branches(&gid("gc-bad")).await.unwrap(),
            Vec::new()
        );

        cancel.cancel();
        running.await.unwrap();
    }

    /// Batches stay under the byte limit (a write that does not fit starts the next batch) and every waiter is
    /// answered; a write that can never fit is refused at once with `TooLarge`, naming the limit, and nothing
    /// of it is stored.
    async fn check_batches_by_bytes(db: &TestDb) {
        let metrics = Arc::new(Metrics::new());
        let one = insert_with_payload("gb-00", 10_000).estimated_bytes();
        let limit = 3 * one + one / 2;
        let opts = WriterOptions {
            max_batch_bytes: limit,
            ..WriterOptions::for_store(db.store.kind())
        };
        let (writer, handle) = Writer::new(db.store.clone(), opts, metrics.clone());
        let names: Vec<String> = (0..10).map(|i| format!("gb-{i:02}")).collect();
        let writes = names.iter().map(|g| insert_with_payload(g, 10_000));
        let tasks = queue_all(&handle, writes.collect()).await;

        let err = handle
            .write(insert_with_payload("gb-huge", 40_000))
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::TooLarge { bytes, limit: l } if l == limit && bytes > limit),
            "{err:?}"
        );
        assert!(!err.is_retryable());
        assert_eq!(err.metric_label(), "too_large");
        assert!(err.to_string().contains(&limit.to_string()), "{err}");

        let cancel = CancellationToken::new();
        let running = tokio::spawn(writer.run(cancel.clone()));
        let answers = answers(tasks).await;
        assert_eq!(answers.len(), 10);
        for (g, answer) in &answers {
            assert_eq!(
                *answer.as_ref().unwrap(),
                WriteOutcome::Applied(Version(1)),
                "{g}"
            );
        }
        // Three writes per batch: 3 + 3 + 3 + 1.
        assert_eq!(metrics.store_commits.get(), 4);
        assert_eq!(metrics.store_batch_bytes.get_sample_count(), 4);
        assert_eq!(
            metrics.store_batch_bytes.get_sample_sum(),
            (10 * one) as f64
        );
        assert_eq!(metrics.store_queue_depth.get(), 0);
        assert_eq!(
            stored_gids(db).await,
            names.iter().cloned().collect::<BTreeSet<_>>()
        );
        cancel.cancel();
        running.await.unwrap();
    }

    #[test]
    fn batch_bytes_leave_a_margin_under_the_packet() {
        assert_eq!(
            WriterOptions::batch_bytes_for(None),
            DEFAULT_MAX_BATCH_BYTES
        );
        assert_eq!(
            WriterOptions::batch_bytes_for(Some(16 * 1024 * 1024)),
            14 * 1024 * 1024
        );
        assert_eq!(
            WriterOptions::batch_bytes_for(Some(1024 * 1024 * 1024)),
            DEFAULT_MAX_BATCH_BYTES
        );
        assert_eq!(WriterOptions::batch_bytes_for(Some(1024)), 1);
    }

    /// On cancel the writer commits what is queued, answers every waiter, and later writes are refused.
    async fn check_cancel_flushes_then_refuses(db: &TestDb) {
        let metrics = Arc::new(Metrics::new());
        let (writer, handle) =
            Writer::new(db.store.clone(), WriterOptions::default(), metrics.clone());
        let names: Vec<String> = (0..20).map(|i| format!("gc-q{i:02}")).collect();
        let tasks = queue_all(&handle, names.iter().map(|g| insert(g)).collect()).await;

        let cancel = CancellationToken::new();
        cancel.cancel();
        // Cancelled before it starts: it only flushes the queue, then returns.
        writer.run(cancel).await;
        let answers = answers(tasks).await;
        assert_eq!(answers.len(), 20);
        assert!(
            answers
                .values()
                .all(|a| matches!(a, Ok(WriteOutcome::Applied(Version(1))))),
            "{answers:?}"
        );
        assert_eq!(
            stored_gids(db).await,
            names.iter().cloned().collect::<BTreeSet<_>>()
        );

        let late = handle.write(insert("gc-late")).await;
        assert!(matches!(late, Err(Error::WriterStopped)), "{late:?}");
        assert!(late.is_err_and(|e| e.is_retryable()));
        assert_eq!(db.store.find_txn(&gid("gc-late")).await.unwrap(), None);
        assert_eq!(metrics.store_queue_depth.get(), 0);
    }

    /// Without a cancel, the writer runs until every handle is gone, and answers everything queued.
    async fn check_stops_when_handles_drop(db: &TestDb) {
        let metrics = Arc::new(Metrics::new());
        let (writer, handle) = Writer::new(db.store.clone(), WriterOptions::default(), metrics);
        let tasks = queue_all(&handle, vec![insert("gc-d1"), insert("gc-d2")]).await;
        drop(handle);
        writer.run(CancellationToken::new()).await;
        let answers = answers(tasks).await;
        assert!(
            answers
                .values()
                .all(|a| matches!(a, Ok(WriteOutcome::Applied(Version(1))))),
            "{answers:?}"
        );
        assert_eq!(
            stored_gids(db).await,
            BTreeSet::from(["gc-d1".to_owned(), "gc-d2".to_owned()])
        );
    }

    /// A store whose `apply` calls each wait for their own go-ahead (call `k` waits for `release(k)`), and
    /// that counts the batches it committed. Everything else goes straight to the real store.
    struct GatedStore {
        inner: DynStore,
        gates: Vec<tokio::sync::Semaphore>,
        calls: std::sync::atomic::AtomicUsize,
        committed: std::sync::atomic::AtomicUsize,
    }

    impl GatedStore {
        fn new(inner: DynStore, calls: usize) -> Arc<Self> {
            Arc::new(Self {
                inner,
                gates: (0..calls).map(|_| tokio::sync::Semaphore::new(0)).collect(),
                calls: 0.into(),
                committed: 0.into(),
            })
        }

        fn release(&self, call: usize) {
            self.gates[call].add_permits(1);
        }

        fn started(&self) -> usize {
            self.calls.load(std::sync::atomic::Ordering::SeqCst)
        }

        fn committed(&self) -> usize {
            self.committed.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    #[async_trait::async_trait]
    impl StoreBase for GatedStore {
        fn kind(&self) -> &'static str {
            self.inner.kind()
        }
        async fn ping(&self) -> Result<()> {
            self.inner.ping().await
        }
        async fn db_now(&self) -> Result<crate::model::Millis> {
            self.inner.db_now().await
        }
    }

    #[async_trait::async_trait]
    impl TxnStore for GatedStore {
        async fn apply(&self, writes: &[Write]) -> Result<Vec<WriteOutcome>> {
            let call = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let gate = self.gates.get(call).expect("a gate for every call");
            gate.acquire().await.expect("gate open").forget();
            let outcomes = self.inner.apply(writes).await;
            self.committed
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            outcomes
        }
        async fn find_txn(&self, g: &crate::model::Gid) -> Result<Option<crate::model::GlobalTxn>> {
            self.inner.find_txn(g).await
        }
        async fn find_branches(&self, g: &crate::model::Gid) -> Result<Vec<crate::model::Branch>> {
            self.inner.find_branches(g).await
        }
        async fn scan_txns(&self, f: &ScanFilter) -> Result<Vec<crate::model::GlobalTxn>> {
            self.inner.scan_txns(f).await
        }
    }

    #[async_trait::async_trait]
    impl ClaimStore for GatedStore {
        async fn claim_due(&self, c: &crate::store::Claim) -> Result<crate::store::Claimed> {
            self.inner.claim_due(c).await
        }
        async fn init_partitions(&self, count: u16) -> Result<u16> {
            self.inner.init_partitions(count).await
        }
        async fn fence_partition(
            &self,
            p: crate::model::Partition,
            owner: &str,
            now: crate::model::Millis,
        ) -> Result<crate::model::LeaseEpoch> {
            self.inner.fence_partition(p, owner, now).await
        }
        async fn partition_fences(&self) -> Result<Vec<crate::store::PartitionFence>> {
            self.inner.partition_fences().await
        }
    }

    #[async_trait::async_trait]
    impl LeaseStore for GatedStore {
        async fn lease_acquire(
            &self,
            name: &str,
            holder: &str,
            now: crate::model::Millis,
            duration_ms: i64,
        ) -> Result<bool> {
            self.inner
                .lease_acquire(name, holder, now, duration_ms)
                .await
        }
        async fn lease_release(&self, name: &str, holder: &str) -> Result<bool> {
            self.inner.lease_release(name, holder).await
        }
        async fn lease_list(
            &self,
            prefix: &str,
            now: crate::model::Millis,
        ) -> Result<Vec<crate::store::LeaseRecord>> {
            self.inner.lease_list(prefix, now).await
        }
    }

    #[async_trait::async_trait]
    impl Maintenance for GatedStore {
        async fn reset_cron_time(
            &self,
            after: crate::model::Millis,
            now: crate::model::Millis,
            limit: u32,
        ) -> Result<u64> {
            self.inner.reset_cron_time(after, now, limit).await
        }
        async fn reset_next_cron_time(
            &self,
            g: &crate::model::Gid,
            now: crate::model::Millis,
        ) -> Result<bool> {
            self.inner.reset_next_cron_time(g, now).await
        }
        async fn delete_finished(&self, before: crate::model::Millis, limit: u32) -> Result<u64> {
            self.inner.delete_finished(before, limit).await
        }
    }

    #[async_trait::async_trait]
    impl KvStore for GatedStore {
        async fn kv_scan(
            &self,
            cat: &str,
            after_id: Option<i64>,
            limit: u32,
        ) -> Result<Vec<crate::model::KvRecord>> {
            self.inner.kv_scan(cat, after_id, limit).await
        }
        async fn kv_find(&self, cat: &str, k: &str) -> Result<Option<crate::model::KvRecord>> {
            self.inner.kv_find(cat, k).await
        }
        async fn kv_create(
            &self,
            cat: &str,
            k: &str,
            v: &str,
            now: crate::model::Millis,
        ) -> Result<bool> {
            self.inner.kv_create(cat, k, v, now).await
        }
        async fn kv_update(
            &self,
            cat: &str,
            k: &str,
            v: &str,
            expect_version: i64,
            now: crate::model::Millis,
        ) -> Result<bool> {
            self.inner.kv_update(cat, k, v, expect_version, now).await
        }
        async fn kv_delete(&self, cat: &str, k: &str) -> Result<bool> {
            self.inner.kv_delete(cat, k).await
        }
    }

    /// Lets every other task run for a while (so an answer that could arrive, would).
    async fn settle() {
        for _ in 0..200 {
            tokio::task::yield_now().await;
        }
    }

    /// No waiter hears anything before the commit of its own batch, also with two batches in flight: the
    /// second batch is collected and applied while the first still waits, each batch's waiters are
    /// answered when (and only when) that batch commits, in whatever order the commits finish, and each
    /// answered write is in the store by then.
    async fn check_no_reply_before_commit(db: &TestDb) {
        let gated = GatedStore::new(db.store.clone(), 2);
        let metrics = Arc::new(Metrics::new());
        // Five writes queued before the writer starts, three per batch: batch 0 takes three, batch 1 the
        // other two, and both are in flight at once.
        let opts = WriterOptions {
            pipeline: 2,
            max_batch: 3,
            ..WriterOptions::default()
        };
        let (writer, handle) = Writer::new(gated.clone(), opts, metrics.clone());
        let names: Vec<String> = (0..5).map(|i| format!("gate-{i}")).collect();
        let mut tasks = queue_all(&handle, names.iter().map(|g| insert(g)).collect()).await;
        let cancel = CancellationToken::new();
        let running = tokio::spawn(writer.run(cancel.clone()));
        while gated.started() < 2 {
            tokio::task::yield_now().await;
        }
        settle().await;
        assert!(
            tasks.try_join_next().is_none(),
            "answered before any commit"
        );
        assert_eq!(gated.committed(), 0);
        assert_eq!(
            stored_gids(db).await,
            BTreeSet::new(),
            "nothing committed yet"
        );

        // The second batch commits first: exactly its two waiters are answered, each with its row stored.
        gated.release(1);
        let mut early = BTreeSet::new();
        for _ in 0..2 {
            let (g, answer) = tasks.join_next().await.unwrap().unwrap();
            assert_eq!(answer.unwrap(), WriteOutcome::Applied(Version(1)), "{g}");
            assert!(
                db.store.find_txn(&gid(&g)).await.unwrap().is_some(),
                "{g} answered but not stored"
            );
            early.insert(g);
        }
        settle().await;
        assert!(
            tasks.try_join_next().is_none(),
            "batch 0 answered before its commit"
        );
        assert_eq!(stored_gids(db).await, early, "only batch 1 is committed");

        gated.release(0);
        let rest = answers(tasks).await;
        assert_eq!(rest.len(), 3);
        for (g, a) in &rest {
            assert_eq!(
                a.as_ref().unwrap(),
                &WriteOutcome::Applied(Version(1)),
                "{g}"
            );
            assert!(!early.contains(g), "{g} answered twice");
        }
        assert_eq!(metrics.store_commits.get(), 2);
        assert_eq!(
            stored_gids(db).await,
            names.iter().cloned().collect::<BTreeSet<_>>()
        );
        cancel.cancel();
        running.await.unwrap();
    }

    /// A caller that gives up while the queue is full leaves the queue-depth gauge as it was.
    #[tokio::test]
    async fn abandoned_write_leaves_no_queue_depth() {
        let store = crate::store::testing::sqlite_memory_store().await;
        // The store is never used (no writer runs), so the clock can stand still.
        tokio::time::pause();
        let metrics = Arc::new(Metrics::new());
        let opts = WriterOptions {
            queue: 1,
            ..WriterOptions::default()
        };
        let (_writer, handle) = Writer::new(store.store.clone(), opts, metrics.clone());
        let queued = tokio::spawn({
            let h = handle.clone();
            async move { h.write(insert("gc-first")).await }
        });
        while handle.queued() < 1 || metrics.store_queue_depth.get() < 1 {
            tokio::task::yield_now().await;
        }
        // The queue is full and the writer is not running: this write waits for room, then gives up.
        let waited =
            tokio::time::timeout(Duration::from_secs(1), handle.write(insert("gc-second"))).await;
        assert!(waited.is_err(), "the second write cannot be queued");
        assert_eq!(metrics.store_queue_depth.get(), 1);
        queued.abort();
    }

    /// When the database cannot be reached, a batch fails at once for all its waiters: one attempt, no
    /// write-by-write retries.
    #[tokio::test]
    async fn unreachable_store_fails_the_batch_at_once() {
        let store = crate::store::sql::SqlStore::open_sqlite("sqlite://:memory:")
            .await
            .unwrap();
        store.pool.close().await;
        let metrics = Arc::new(Metrics::new());
        let (writer, handle) =
            Writer::new(Arc::new(store), WriterOptions::default(), metrics.clone());
        let tasks = queue_all(
            &handle,
            vec![insert("gc-u1"), insert("gc-u2"), insert("gc-u3")],
        )
        .await;
        drop(handle);
        writer.run(CancellationToken::new()).await;
        let answers = answers(tasks).await;
        assert_eq!(answers.len(), 3);
        for (g, answer) in &answers {
            let err = answer.as_ref().unwrap_err();
            assert!(
                matches!(err, Error::Unavailable(sqlx::Error::PoolClosed)) && err.is_retryable(),
                "{g}: {err:?}"
            );
        }
        assert_eq!(
            metrics
                .store_commit_errors
                .with_label_values(&["unavailable"])
                .get(),
            1
        );
        assert_eq!(metrics.store_commits.get(), 0);
    }

    macro_rules! writer_tests {
        ($backend:ident, $fresh:path) => {
            mod $backend {
                crate::store::testing::db_tests!($fresh;
                    check_batches_concurrent_writes,
                    check_batches_by_bytes,
                    check_bad_write_does_not_fail_neighbours,
                    check_cancel_flushes_then_refuses,
                    check_stops_when_handles_drop,
                    check_no_reply_before_commit,
                );
            }
        };
    }

    #[cfg(feature = "sqlite")]
    writer_tests!(sqlite, crate::store::testing::sqlite_store);
    #[cfg(feature = "mysql")]
    writer_tests!(mysql, crate::store::testing::mysql_store);
    #[cfg(feature = "postgres")]
    writer_tests!(postgres, crate::store::testing::postgres_store);
}
