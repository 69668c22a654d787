//! Group commit: the single writer task of a store.
//!
//! Every durable state change in the server goes through a [`WriterHandle`]. The [`Writer`] task takes the
//! first queued write, drains whatever else is already queued (up to `max_batch`, optionally waiting up to
//! `max_wait` for more), applies the batch in one database transaction with [`Store::apply`], and only then
//! answers each waiter. So:
//! - no caller hears "done" before its write is durable;
//! - under light load a batch is one write, so latency is one commit;
//! - under heavy load one commit carries many transactions' changes.
//!
//! A batch that fails as a whole is retried write by write, so one bad write cannot fail its neighbours;
//! every waiter gets exactly one answer (its outcome or the error), never a partial one.
//! On shutdown the queue is closed, the writes already queued are committed, and later calls get
//! [`Error::WriterStopped`].

use std::sync::Arc;
use std::time::Duration;

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
}

impl Default for WriterOptions {
    fn default() -> Self {
        Self {
            max_batch: 512,
            max_wait: Duration::ZERO,
            queue: 8192,
        }
    }
}

struct Pending {
    write: Write,
    reply: oneshot::Sender<Result<WriteOutcome>>,
}

/// Cloneable handle to submit writes.
#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<Pending>,
    metrics: Arc<Metrics>,
}

impl WriterHandle {
    /// Queues `write` and waits until the batch holding it has committed.
    pub async fn write(&self, write: Write) -> Result<WriteOutcome> {
        let (reply, rx) = oneshot::channel();
        self.metrics.store_queue_depth.inc();
        if self.tx.send(Pending { write, reply }).await.is_err() {
            self.metrics.store_queue_depth.dec();
            return Err(Error::WriterStopped);
        }
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
    pub async fn run(mut self, cancel: CancellationToken) {
        loop {
            let first = tokio::select! {
                biased;
                p = self.rx.recv() => p,
                () = cancel.cancelled() => None,
            };
            let Some(first) = first else { break };
            let batch = self.collect(first).await;
            self.commit(batch).await;
        }
        // Flush: nothing queued is dropped unanswered.
        self.rx.close();
        while let Some(first) = self.rx.recv().await {
            let batch = self.collect(first).await;
            self.commit(batch).await;
        }
    }

    async fn collect(&mut self, first: Pending) -> Vec<Pending> {
        let mut batch = Vec::with_capacity(16);
        batch.push(first);
        while batch.len() < self.opts.max_batch {
            match self.rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        if !self.opts.max_wait.is_zero() {
            let deadline = Instant::now() + self.opts.max_wait;
            while batch.len() < self.opts.max_batch {
                match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                    Ok(Some(p)) => batch.push(p),
                    Ok(None) | Err(_) => break,
                }
            }
        }
        batch
    }

    async fn commit(&self, batch: Vec<Pending>) {
        self.metrics.store_queue_depth.sub(batch.len() as i64);
        let (writes, replies): (Vec<Write>, Vec<_>) =
            batch.into_iter().map(|p| (p.write, p.reply)).unzip();
        let started = Instant::now();
        let result = self.store.apply(&writes).await;
        self.metrics
            .store_commit_duration
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(outcomes) => {
                self.metrics.store_commits.inc();
                self.metrics.store_batch_size.observe(writes.len() as f64);
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
                tracing::warn!(error = %e, batch = writes.len(), "batch commit failed; retrying its writes one by one");
                for (write, reply) in writes.into_iter().zip(replies) {
                    let single = std::slice::from_ref(&write);
                    let result = self
                        .store
                        .apply(single)
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
