//! One processing pass: the state machine of the transaction's type moves an in-memory copy forward by
//! calling branches, and [`Pass::finish`] turns everything it changed into a single conditional write.
//!
//! Why one write per pass is enough: the transaction was durable before any branch was called, and every
//! branch call is at-least-once (the branch's barrier makes it idempotent). If the replica dies mid-pass, the
//! scan finds the transaction when its lease runs out and the next pass repeats the calls whose results were
//! not recorded. What the write protects is the *decision*: a status change (e.g. `submitted` -> `aborting`)
//! and the branch results that justify it land together, or not at all.
//!
//! Retry scheduling (spec §9.2, with a cap): a branch that moved in the pass resets the interval to the base;
//! then ONGOING keeps the interval and an error doubles it, up to `backoff_cap`.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::Instrument;

use super::EngineOptions;
use super::{Inner, msg, saga, tcc, workflow, xa};
use crate::invoke::{BranchCall, CallOutcome};
use crate::model::{
    Branch, BranchStatus, Fence, GlobalStatus, GlobalTxn, Millis, Op, TransOptions, TransType,
};
use crate::store::{BranchUpdate, Schedule, TxnUpdate, Write, WriteOutcome};

/// Why a pass did not finish the transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PassError {
    /// A branch answered ONGOING.
    Ongoing,
    /// A branch failed where failure is not an outcome (e.g. a compensation), or the pass failed.
    Failure(String),
    /// A branch call or the store failed temporarily.
    Error(String),
}

/// What a pass left behind.
#[derive(Debug, Clone)]
pub struct PassResult {
    /// The status after the pass.
    pub status: GlobalStatus,
    /// The rollback reason after the pass.
    pub rollback_reason: String,
    /// Why it is not finished, if a branch said so.
    pub error: Option<PassError>,
}

/// The base retry interval (spec §9.2): the transaction's `retry_interval`; else its `timeout_to_fail` when
/// shorter than the server's interval; else the server's interval.
pub(crate) fn base_interval(options: &TransOptions, opts: &EngineOptions) -> i64 {
    if options.retry_interval > 0 {
        options.retry_interval
    } else if options.timeout_to_fail > 0 && options.timeout_to_fail < opts.retry_interval {
        options.timeout_to_fail
    } else {
        opts.retry_interval
    }
    .max(1)
}

/// The backoff cap: the transaction's (from a `TransactionPolicy`), else the server's.
pub(crate) fn backoff_cap(options: &TransOptions, opts: &EngineOptions) -> i64 {
    if options.backoff_cap > 0 {
        options.backoff_cap
    } else {
        opts.backoff_cap
    }
}

/// The next interval after an error: doubled, at most `cap` (and never below `base`).
pub(crate) fn backoff(current: i64, base: i64, cap: i64) -> i64 {
    current.max(base).saturating_mul(2).min(cap.max(base))
}

/// How the pass wants the next retry scheduled; the most severe wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Retry {
    /// Progress or nothing to report: base interval.
    Reset,
    /// ONGOING: same interval.
    Keep,
    /// Error: doubled interval.
    Backoff,
}

/// A boxed branch-call future: `(index, outcome)`.
pub(crate) type CallFuture = Pin<Box<dyn Future<Output = (usize, CallOutcome)> + Send + 'static>>;

/// The in-memory state of one pass.
pub(crate) struct Pass<'a> {
    pub(crate) inner: &'a Inner,
    pub(crate) txn: GlobalTxn,
    pub(crate) branches: Vec<Branch>,
    pub(crate) now: Millis,
    original: GlobalTxn,
    changed: Vec<bool>,
    retry: Retry,
    wake_at: Option<Millis>,
    pub(crate) error: Option<PassError>,
    /// URL and error of the last call that did not succeed (for the alert webhook).
    last_failed: Arc<Mutex<Option<(String, String)>>>,
    /// The partition epoch the write must carry (passes of the recovery scanner).
    fence: Option<Fence>,
}

impl<'a> Pass<'a> {
    fn new(inner: &'a Inner, txn: GlobalTxn, branches: Vec<Branch>, fence: Option<Fence>) -> Self {
        let changed = vec![false; branches.len()];
        Self {
            inner,
            now: inner.clock.now(),
            original: txn.clone(),
            txn,
            branches,
            changed,
            retry: Retry::Reset,
            wake_at: None,
            error: None,
            last_failed: Arc::new(Mutex::new(None)),
            fence,
        }
    }

    /// The effective timeout of this transaction in seconds (0: none).
    pub(crate) fn timeout_secs(&self) -> i64 {
        self.txn.effective_timeout(self.inner.opts.timeout_to_fail)
    }

    /// Whether the transaction's timeout has passed.
    pub(crate) fn timed_out(&self) -> bool {
        self.txn
            .is_timed_out(self.now, self.inner.opts.timeout_to_fail)
    }

    /// Changes the global status (and the rollback reason, when given).
    pub(crate) fn set_status(&mut self, status: GlobalStatus, reason: Option<String>) {
        self.txn.status = status;
        if let Some(r) = reason {
            self.txn.rollback_reason = r;
        }
    }

    /// Records a branch's new status.
    pub(crate) fn set_branch(&mut self, idx: usize, status: BranchStatus) {
        if let Some(b) = self.branches.get_mut(idx)
            && b.status != status
        {
            b.status = status;
            self.changed[idx] = true;
        }
    }

    /// Notes a call that did not succeed: it decides the retry schedule and what `wait_result` reports.
    pub(crate) fn note(&mut self, outcome: &CallOutcome) {
        let (retry, error) = match outcome {
            CallOutcome::Success => return,
            CallOutcome::Ongoing => (Retry::Keep, PassError::Ongoing),
            CallOutcome::Failure(msg) => (Retry::Backoff, PassError::Failure(msg.clone())),
            CallOutcome::Error(msg) => (Retry::Backoff, PassError::Error(msg.clone())),
        };
        self.retry = self.retry.max(retry);
        if self.error.as_ref().is_none_or(|e| *e == PassError::Ongoing) {
            self.error = Some(error);
        }
    }

    /// Asks the scanner to look again at `at` (e.g. a msg delay) unless something sooner comes up.
    pub(crate) fn wake_at(&mut self, at: Millis) {
        self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
    }

    fn call_timeout(&self) -> Duration {
        let secs = if self.txn.options.request_timeout > 0 {
            self.txn.options.request_timeout
        } else {
            self.inner.opts.request_timeout
        };
        Duration::from_secs(secs.max(1) as u64)
    }

    /// A call of branch `idx` with its own op, as a `'static` future (so several can run at once).
    pub(crate) fn call(&self, idx: usize) -> CallFuture {
        let Some(b) = self.branches.get(idx) else {
            return Box::pin(async move {
                (idx, CallOutcome::Error(format!("no branch at index {idx}")))
            });
        };
        let (url, body, branch_id, op) = (
            b.url.clone(),
            b.bin_data.clone(),
            b.branch_id.to_string(),
            b.op,
        );
        let fut = self.call_url(url, branch_id, op.as_str().to_owned(), body);
        Box::pin(async move { (idx, fut.await.1) })
    }

    /// A call of any URL in this transaction's context (back-checks, resume callbacks).
    pub(crate) fn call_url(
        &self,
        url: String,
        branch_id: String,
        op: String,
        body: Vec<u8>,
    ) -> CallFuture {
        let invoker = self.inner.invoker.clone();
        let metrics = self.inner.metrics.clone();
        let gid = self.txn.gid.to_string();
        let headers = self.txn.options.branch_headers.clone();
        let (protocol, trans_type, timeout) =
            (self.txn.protocol, self.txn.trans_type, self.call_timeout());
        let last_failed = self.last_failed.clone();
        let span =
            tracing::debug_span!("branch_call", braid.branch_id = %branch_id, braid.op = %op);
        Box::pin(
            async move {
                let call = BranchCall {
                    url: &url,
                    protocol,
                    trans_type,
                    gid: &gid,
                    branch_id: &branch_id,
                    op: &op,
                    body: &body,
                    headers: &headers,
                    timeout,
                };
                let outcome = invoker.call(&call).await;
                let status = if outcome.is_success() { "ok" } else { "fail" };
                if let CallOutcome::Error(e) | CallOutcome::Failure(e) = &outcome
                    && let Ok(mut last) = last_failed.lock()
                {
                    *last = Some((url.clone(), e.clone()));
                }
                metrics
                    .branch_process
                    .with_label_values(&[trans_type.as_str(), &branch_id, &op, status])
                    .inc();
                tracing::debug!(outcome = outcome.label(), "branch answered");
                (usize::MAX, outcome)
            }
            .instrument(span),
        )
    }

    /// Index of the branch with this id and op.
    pub(crate) fn find(&self, branch_id: &str, op: Op) -> Option<usize> {
        self.branches
            .iter()
            .position(|b| b.branch_id.as_str() == branch_id && b.op == op)
    }

    /// After an error, POSTs the alert JSON when the retry count reached the limit (spec §9.4). Runs in
    /// the background; a failing webhook is only logged and never holds up the transaction. The task is
    /// tracked with the passes, so a graceful shutdown delivers the alerts already raised.
    fn alert(&self, interval: i64, base: i64) {
        let Some(hook) = self.inner.opts.alert_webhook.clone() else {
            return;
        };
        let retry_count = (interval / base.max(1)).max(1).ilog2() as i64;
        if retry_count < self.inner.opts.alert_retry_limit {
            return;
        }
        let (branch, error) = self
            .last_failed
            .lock()
            .ok()
            .and_then(|l| l.clone())
            .unwrap_or_default();
        let body = serde_json::json!({
            "gid": self.txn.gid.as_str(),
            "status": self.txn.status.as_str(),
            "branch": branch,
            "error": error,
            "retry_count": retry_count,
        });
        let invoker = self.inner.invoker.clone();
        let gid = self.txn.gid.clone();
        self.inner.tasks.spawn(async move {
            if let Err(e) = invoker.post_json(&hook, &body).await {
                tracing::warn!(braid.gid = %gid, error = %e, "alert webhook failed");
            }
        });
    }

    /// Logs why the pass's write lost, given the row as stored now. When the row still has the status and
    /// version the pass started from, the version compare-and-set held, so the fence refused the write: this
    /// replica's partition epoch is stale (another replica took the partition over mid-pass).
    fn explain_conflict(&self, stored: &GlobalTxn) {
        let unchanged =
            stored.status == self.original.status && stored.version == self.original.version;
        match self.fence {
            Some(fence) if unchanged => {
                self.inner
                    .metrics
                    .cluster_fenced_rejections
                    .with_label_values(&["write"])
                    .inc();
                tracing::warn!(braid.gid = %self.txn.gid, fence = %fence, "the store refused this pass's write: another replica took the partition over (stale epoch); it will redo the pass");
            }
            _ => {
                tracing::info!(braid.gid = %self.txn.gid, "another actor moved the transaction during this pass; its state stands");
            }
        }
    }

    /// Writes the pass's changes with one conditional update and reports the result.
    async fn finish(self) -> PassResult {
        let now = self.inner.clock.now();
        let base = base_interval(&self.txn.options, &self.inner.opts);
        // A branch that moved in this pass is progress: it resets the interval to the base before any
        // ONGOING keeps it or an error doubles it (spec §9.2), so an earlier backoff does not carry over.
        let progressed = self.changed.iter().any(|c| *c);
        let current = if progressed {
            base
        } else {
            self.original.next_cron_interval.max(base)
        };
        let interval = match self.retry {
            Retry::Reset => base,
            Retry::Keep => current,
            Retry::Backoff => backoff(
                current,
                base,
                backoff_cap(&self.txn.options, &self.inner.opts),
            ),
        };
        let mut at = now.plus_secs(interval);
        if let Some(w) = self.wake_at
            && (self.retry == Retry::Reset || w < at)
        {
            at = w;
        }
        let mut update = TxnUpdate::of(&self.original, now);
        update.fence = self.fence;
        if self.txn.status != self.original.status {
            update.status = Some(self.txn.status);
        }
        if self.txn.rollback_reason != self.original.rollback_reason {
            update.rollback_reason = Some(self.txn.rollback_reason.clone());
        }
        if self.txn.options != self.original.options {
            update.options = Some(self.txn.options.clone());
        }
        update.schedule = Schedule::At { interval, at };
        update.branches = self
            .branches
            .iter()
            .zip(&self.changed)
            .filter(|(_, changed)| **changed)
            .map(|(b, _)| BranchUpdate {
                branch_id: b.branch_id.clone(),
                op: b.op,
                status: b.status,
            })
            .collect();

        if self.retry == Retry::Backoff {
            self.alert(interval, base);
        }
        let model = self.txn.trans_type.as_str();
        let metrics = &self.inner.metrics;
        let result = match self.inner.writer.write(Write::Update(update)).await {
            Ok(WriteOutcome::Applied(_)) => {
                if self.txn.status.is_final() {
                    metrics
                        .transactions_finished
                        .with_label_values(&[model, self.txn.status.as_str()])
                        .inc();
                }
                PassResult {
                    status: self.txn.status,
                    rollback_reason: self.txn.rollback_reason,
                    error: self.error,
                }
            }
            Ok(WriteOutcome::Conflict | WriteOutcome::DuplicateBranch) => {
                match self.inner.store.find_txn(&self.txn.gid).await {
                    Ok(Some(t)) => {
                        self.explain_conflict(&t);
                        PassResult {
                            status: t.status,
                            rollback_reason: t.rollback_reason,
                            error: None,
                        }
                    }
                    Ok(None) | Err(_) => PassResult {
                        status: self.original.status,
                        rollback_reason: self.original.rollback_reason,
                        error: Some(PassError::Error(
                            "transaction changed concurrently".to_owned(),
                        )),
                    },
                }
            }
            Err(e) => {
                tracing::warn!(braid.gid = %self.txn.gid, error = %e, "recording the pass failed; the scan will repeat it");
                PassResult {
                    status: self.original.status,
                    rollback_reason: self.original.rollback_reason,
                    error: Some(PassError::Error(format!("store: {e}"))),
                }
            }
        };
        let ok = if result.error.is_none() { "ok" } else { "fail" };
        metrics
            .transaction_process
            .with_label_values(&[model, ok])
            .inc();
        result
    }
}

/// Whether the first pass of a new transaction can run without calling anything: a submitted saga whose
/// actions all have empty URLs (an empty URL succeeds without a call, so no action fails and no
/// compensation runs), or a submitted msg without delay whose actions all have empty URLs.
fn calls_nothing(txn: &GlobalTxn, branches: &[Branch]) -> bool {
    match (txn.trans_type, txn.status) {
        (TransType::Saga, GlobalStatus::Submitted) => branches
            .iter()
            .filter(|b| b.op == Op::Action)
            .all(|b| b.url.is_empty()),
        (TransType::Msg, GlobalStatus::Submitted) => {
            msg::delay_secs(&txn.custom_data) == Ok(0) && branches.iter().all(|b| b.url.is_empty())
        }
        _ => false,
    }
}

/// The first pass of a transaction that is not stored yet, settled in memory, for the one write that
/// stores the transaction and its outcome together (see [`run_unstored`]).
pub(crate) struct Settled {
    /// The row as the pass leaves it (final status, its finish or rollback time, unscheduled).
    pub(crate) txn: GlobalTxn,
    /// The branches as the pass leaves them.
    pub(crate) branches: Vec<Branch>,
    /// What the pass reports.
    pub(crate) result: PassResult,
}

/// Runs the first pass of a new transaction before it is stored, when that pass cannot call any branch
/// ([`calls_nothing`]) and ends in a final status; `None` otherwise (the caller stores the transaction and
/// runs the pass as usual).
///
/// Why this is safe: the rule is "no branch is called before the transaction is durable", and this pass
/// calls no branch at all. Its whole outcome goes into the insert, so the client hears of the transaction
/// only once the transaction *and* its outcome are durable: one durable write instead of two (the insert,
/// then the pass's update). If the insert does not commit, nothing happened anywhere.
pub(crate) async fn run_unstored(
    inner: &Inner,
    txn: &GlobalTxn,
    branches: &[Branch],
) -> Option<Settled> {
    if !calls_nothing(txn, branches) {
        return None;
    }
    // A new transaction on the replica that received it: not a scanner pass, so no fence.
    let mut pass = Pass::new(inner, txn.clone(), branches.to_vec(), None);
    match pass.txn.trans_type {
        TransType::Saga => saga::process(&mut pass).await,
        TransType::Msg => msg::process(&mut pass).await,
        TransType::Tcc | TransType::Xa | TransType::Workflow => return None,
    }
    if !pass.txn.status.is_final() || pass.error.is_some() {
        return None;
    }
    let now = pass.now;
    let mut txn = pass.txn;
    txn.update_time = now;
    txn.next_cron_time = None;
    match txn.status {
        GlobalStatus::Succeed => txn.finish_time = Some(now),
        GlobalStatus::Failed => txn.rollback_time = Some(now),
        GlobalStatus::Prepared | GlobalStatus::Submitted | GlobalStatus::Aborting => {}
    }
    let mut branches = pass.branches;
    for (b, changed) in branches.iter_mut().zip(&pass.changed) {
        if !*changed {
            continue;
        }
        b.update_time = now;
        match b.status {
            BranchStatus::Succeed => b.finish_time = Some(now),
            BranchStatus::Failed => b.rollback_time = Some(now),
            BranchStatus::Prepared => {}
        }
    }
    let result = PassResult {
        status: txn.status,
        rollback_reason: txn.rollback_reason.clone(),
        error: None,
    };
    Some(Settled {
        txn,
        branches,
        result,
    })
}

/// Counts a settled pass once its insert committed, as [`Pass::finish`] counts a recorded one.
pub(crate) fn record_settled(inner: &Inner, settled: &Settled) {
    let model = settled.txn.trans_type.as_str();
    inner
        .metrics
        .transaction_handled_duration
        .with_label_values(&[model])
        .observe(0.0);
    inner
        .metrics
        .transactions_finished
        .with_label_values(&[model, settled.txn.status.as_str()])
        .inc();
    inner
        .metrics
        .transaction_process
        .with_label_values(&[model, "ok"])
        .inc();
}

/// Runs one pass of `txn` and records it.
pub(crate) async fn run(
    inner: &Inner,
    txn: GlobalTxn,
    branches: Vec<Branch>,
    fence: Option<Fence>,
) -> PassResult {
    let span =
        tracing::info_span!("pass", braid.gid = %txn.gid, braid.trans_type = %txn.trans_type);
    async move {
        let mut pass = Pass::new(inner, txn, branches, fence);
        let age = pass.now.0.saturating_sub(pass.txn.create_time.0) as f64 / 1000.0;
        inner
            .metrics
            .transaction_handled_duration
            .with_label_values(&[pass.txn.trans_type.as_str()])
            .observe(age);
        if pass.txn.status.is_final() {
            return PassResult {
                status: pass.txn.status,
                rollback_reason: pass.txn.rollback_reason,
                error: None,
            };
        }
        match pass.txn.trans_type {
            TransType::Saga => saga::process(&mut pass).await,
            TransType::Msg => msg::process(&mut pass).await,
            TransType::Tcc => tcc::process(&mut pass).await,
            TransType::Xa => xa::process(&mut pass).await,
            TransType::Workflow => workflow::process(&mut pass).await,
        }
        let result = pass.finish().await;
        tracing::debug!(status = %result.status, "pass done");
        result
    }
    .instrument(span)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_interval_follows_dtm_rules() {
        let opts = EngineOptions::default();
        let with = |retry_interval, timeout_to_fail| TransOptions {
            retry_interval,
            timeout_to_fail,
            ..Default::default()
        };
        assert_eq!(base_interval(&with(0, 0), &opts), 10);
        assert_eq!(base_interval(&with(150, 0), &opts), 150);
        assert_eq!(base_interval(&with(0, 4), &opts), 4);
        assert_eq!(base_interval(&with(0, 1800), &opts), 10);
    }

    proptest::proptest! {
        #[test]
        fn backoff_doubles_within_bounds(current in 0i64..100_000, base in 1i64..1000, cap in 1i64..100_000) {
            let next = backoff(current, base, cap);
            proptest::prop_assert!(next <= cap.max(base));
            proptest::prop_assert!(next >= base.min(cap.max(base)));
            if current.max(base) * 2 <= cap {
                proptest::prop_assert_eq!(next, current.max(base) * 2);
            }
        }
    }
}
