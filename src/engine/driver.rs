//! One processing pass: the state machine of the transaction's type moves an in-memory copy forward by
//! calling branches, records each decision durably before any call that depends on it, and ends with one
//! conditional write of what is left ([`Pass::finish`]).
//!
//! # Which write protects which call
//! A pass holds a *claim* on its transaction for as long as it runs: the row's `owner` is the pass's token and
//! its `next_cron_time` is when the claim runs out. The claim comes from the write the pass starts from: the
//! insert of a new transaction, the API's `prepared -> submitted` / `prepared -> aborting` write, or the
//! recovery scanner's claim (which bumps the version). Every store write of the pass is a compare-and-set on
//! the version it last wrote, so once another actor moved the transaction or took the claim over, the pass's
//! next write is refused and the pass stops ([`Stop::Lost`]) without sending anything more.
//!
//! | write | made before | why |
//! |---|---|---|
//! | insert / API status change / scanner claim | the first call of the pass | the transaction is durable and claimed before any branch hears of it |
//! | [`Pass::save`] of `aborting` (saga: with the failed action, its reason and the retry count) | the first compensation | an action is never sent again once a compensation of its step was sent: every later pass sees `aborting` and only compensates |
//! | [`Pass::save`] of `aborting` (TCC/XA timed out while `prepared`) | the first cancel/rollback | a late `registerBranch` or `submit` is refused (409), so no commit follows a rollback |
//! | [`Pass::save`] of `submitted` (msg back-check answered SUCCESS) | the first msg action | a concurrent `abort` cannot fail a message whose actions already run |
//! | API `prepared -> submitted` / `-> aborting` (TCC/XA/msg `submit`, `abort`) | every confirm/commit or cancel/rollback | phase two follows a durable decision |
//! | [`Pass::save`] extending the claim | any call that the claim would not cover to its timeout | no call of this pass is in flight once its claim can run out; a pass that cannot extend stops |
//! | [`Pass::finish`] | nothing | the success path keeps its single final write; it also releases the claim |
//!
//! Every call ends within its timeout (the call future carries its deadline), and a call starts only when
//! the claim covers that timeout plus a margin, so two passes of one transaction never have calls in flight at
//! the same time, on one replica or on several.
//!
//! # Crash points
//! Every boundary of a pass is a named failpoint ([`FAILPOINTS`]): before and after each branch call and each
//! store write. The state machines reach the outside only through [`Pass::start`], [`Pass::next`],
//! [`Pass::call`], [`Pass::call_url`] and [`Pass::save`], so every await point of a pass is one of them; a
//! unit test in this module fails when a transaction-type module awaits anything else.
//!
//! Retry scheduling (spec §9.2, with a cap): a branch that moved in the pass resets the interval to the base;
//! then ONGOING keeps the interval and an error doubles it, up to `backoff_cap`.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::EngineOptions;
use super::Inner;
use crate::invoke::{BranchCall, CallOutcome};
use crate::model::{
    Branch, BranchStatus, Fence, GlobalStatus, GlobalTxn, Millis, Op, TransOptions, short_uuid,
};
use crate::store::{BranchUpdate, Schedule, TxnUpdate, Write, WriteOutcome};

/// The failpoints of a pass, in the order a pass meets them (see the module docs). Tests crash a pass at each
/// of them in turn; with the `failpoints` feature off they compile to nothing.
pub const FAILPOINTS: &[&str] = &[
    "pass::before_call",
    "pass::after_call",
    "pass::before_save",
    "pass::after_save",
    "pass::before_finish",
    "pass::after_finish",
];

/// How much longer than a call's timeout a claim must last for the call to start.
const CLAIM_MARGIN_MS: i64 = 1000;

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

/// Why a pass stopped early: it sends nothing more and writes nothing more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stop {
    /// Another actor moved the transaction or took its claim over (a lost compare-and-set).
    Lost,
    /// The store did not record a decision or a claim extension; the claim runs out and a later pass
    /// repeats the work.
    Store(String),
    /// The pass was cancelled (`forceStop` on this replica, shutdown).
    Cancelled,
    /// A failpoint stood in for a crash of the process.
    #[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
    Crashed,
}

/// The result of a step of a pass.
pub(crate) type Step<T = ()> = Result<T, Stop>;

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

/// A branch call's timeout in seconds: the transaction's `request_timeout`, else the server's.
pub(crate) fn call_timeout_secs(options: &TransOptions, opts: &EngineOptions) -> i64 {
    if options.request_timeout > 0 {
        options.request_timeout
    } else {
        opts.request_timeout
    }
    .max(1)
}

/// How long a claim lasts when a pass takes or extends it, in seconds: the base retry interval (a crashed
/// pass is retried as soon as a failed one would be), but long enough for one call and the margin.
pub(crate) fn claim_secs(options: &TransOptions, opts: &EngineOptions) -> i64 {
    base_interval(options, opts).max(call_timeout_secs(options, opts).saturating_add(2))
}

/// A new claim token: the replica's name and a random suffix (stored in `owner`).
pub(crate) fn new_token(opts: &EngineOptions) -> String {
    format!("{}:{}", opts.node_id, short_uuid())
}

/// The `op` label of the branch-call metric: a fixed set, so callers cannot mint series (a workflow resume
/// call's op is the workflow's name).
fn op_label(op: &str) -> &'static str {
    match op.parse::<Op>() {
        Ok(op) => op.as_str(),
        Err(_) => "callback",
    }
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

/// Calls in flight of one pass.
pub(crate) type Calls = FuturesUnordered<CallFuture>;

/// The in-memory state of one pass.
pub(crate) struct Pass<'a> {
    pub(crate) inner: &'a Inner,
    pub(crate) txn: GlobalTxn,
    pub(crate) branches: Vec<Branch>,
    pub(crate) now: Millis,
    /// The row as this pass last wrote (or read) it: what its next compare-and-set expects.
    original: GlobalTxn,
    /// Branches changed since the last write.
    changed: Vec<bool>,
    /// Whether a branch moved in this pass (also in a write already made).
    progressed: bool,
    retry: Retry,
    wake_at: Option<Millis>,
    pub(crate) error: Option<PassError>,
    /// URL and error of the last call that did not succeed (for the alert webhook).
    last_failed: Arc<Mutex<Option<(String, String)>>>,
    /// The partition epoch the write must carry (passes of the recovery scanner).
    fence: Option<Fence>,
    /// This pass's claim token (the row's `owner` while the pass holds the claim).
    token: String,
    /// Whether the row's claim is this pass's; when not, its first write takes it, and only if it is free.
    claimed: bool,
    /// When the claim runs out (store clock).
    claim_until: Millis,
    cancel: CancellationToken,
}

impl<'a> Pass<'a> {
    /// A pass over `txn`. With `claimed`, the row's `owner` and `next_cron_time` are this pass's claim (the
    /// write that produced `txn` took it); otherwise the pass takes a claim with its first write.
    fn new(
        inner: &'a Inner,
        txn: GlobalTxn,
        branches: Vec<Branch>,
        fence: Option<Fence>,
        claimed: bool,
        cancel: CancellationToken,
    ) -> Self {
        let changed = vec![false; branches.len()];
        let (token, claim_until) = if claimed {
            (txn.owner.clone(), txn.next_cron_time.unwrap_or(Millis(0)))
        } else {
            (new_token(&inner.opts), Millis(0))
        };
        Self {
            inner,
            now: inner.clock.now(),
            original: txn.clone(),
            txn,
            branches,
            changed,
            progressed: false,
            retry: Retry::Reset,
            wake_at: None,
            error: None,
            last_failed: Arc::new(Mutex::new(None)),
            fence,
            token,
            claimed,
            claim_until,
            cancel,
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

    /// The status as this pass last wrote (or read) it: what the store holds unless another actor moved it.
    pub(crate) fn durable_status(&self) -> GlobalStatus {
        self.original.status
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
        let secs = call_timeout_secs(&self.txn.options, &self.inner.opts);
        Duration::from_secs(u64::try_from(secs).unwrap_or(1))
    }

    /// Starts a call of branch `idx` with its own op. Before it is sent: the pass must not be cancelled,
    /// and its claim must cover the call's whole timeout (else it is extended first, see [`Pass::save`]).
    pub(crate) async fn start(&mut self, idx: usize) -> Step<CallFuture> {
        let Some(b) = self.branches.get(idx) else {
            return Ok(Box::pin(async move {
                (idx, CallOutcome::Error(format!("no branch at index {idx}")))
            }));
        };
        let (url, body, branch_id, op) = (
            b.url.clone(),
            b.bin_data.clone(),
            b.branch_id.to_string(),
            b.op.as_str().to_owned(),
        );
        self.start_request(idx, url, branch_id, op, body).await
    }

    /// Starts a call of any URL in this transaction's context (back-checks, resume callbacks); its answer
    /// comes with index `usize::MAX`.
    async fn start_request(
        &mut self,
        idx: usize,
        url: String,
        branch_id: String,
        op: String,
        body: Vec<u8>,
    ) -> Step<CallFuture> {
        if self.cancel.is_cancelled() {
            return Err(Stop::Cancelled);
        }
        let timeout = self.call_timeout();
        // An empty URL succeeds without a call: nothing to claim, nothing that can crash in between.
        if !url.is_empty() {
            self.cover(timeout).await?;
            fail::fail_point!("pass::before_call", |_| Err(Stop::Crashed));
        }
        let deadline = Instant::now() + timeout;
        let invoker = self.inner.invoker.clone();
        let metrics = self.inner.metrics.clone();
        let gid = self.txn.gid.to_string();
        let headers = self.txn.options.branch_headers.clone();
        let (protocol, trans_type) = (self.txn.protocol, self.txn.trans_type);
        let last_failed = self.last_failed.clone();
        let span =
            tracing::debug_span!("branch_call", braid.branch_id = %branch_id, braid.op = %op);
        Ok(Box::pin(
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
                // The deadline holds however late the future is first polled: a call is never sent, and never
                // outlives, the time its claim was checked for.
                let outcome = if Instant::now() >= deadline {
                    CallOutcome::Error("the call was not sent before its deadline".to_owned())
                } else {
                    tokio::time::timeout_at(deadline, invoker.call(&call))
                        .await
                        .unwrap_or_else(|_| {
                            CallOutcome::Error(format!("no answer within {timeout:?}"))
                        })
                };
                let status = if outcome.is_success() { "ok" } else { "fail" };
                if let CallOutcome::Error(e) | CallOutcome::Failure(e) = &outcome
                    && let Ok(mut last) = last_failed.lock()
                {
                    *last = Some((url.clone(), e.clone()));
                }
                metrics
                    .branch_process
                    .with_label_values(&[trans_type.as_str(), op_label(&op), status])
                    .inc();
                tracing::debug!(outcome = outcome.label(), "branch answered");
                (idx, outcome)
            }
            .instrument(span),
        ))
    }

    /// The next answer among `calls` (`None` when none is in flight). A cancelled pass stops waiting (its
    /// calls in flight are dropped).
    pub(crate) async fn next(&mut self, calls: &mut Calls) -> Step<Option<(usize, CallOutcome)>> {
        let next = tokio::select! {
            biased;
            () = self.cancel.cancelled() => return Err(Stop::Cancelled),
            next = calls.next() => next,
        };
        if next.is_some() {
            fail::fail_point!("pass::after_call", |_| Err(Stop::Crashed));
        }
        Ok(next)
    }

    /// Calls branch `idx` and waits for its answer.
    pub(crate) async fn call(&mut self, idx: usize) -> Step<(usize, CallOutcome)> {
        let mut calls = Calls::new();
        let call = self.start(idx).await?;
        calls.push(call);
        match self.next(&mut calls).await? {
            Some(answer) => Ok(answer),
            None => Ok((idx, CallOutcome::Error("no answer".to_owned()))),
        }
    }

    /// Calls any URL in this transaction's context (back-checks, resume callbacks) and waits for the answer.
    pub(crate) async fn call_url(
        &mut self,
        url: String,
        branch_id: &str,
        op: &str,
        body: Vec<u8>,
    ) -> Step<CallOutcome> {
        let mut calls = Calls::new();
        let call = self
            .start_request(usize::MAX, url, branch_id.to_owned(), op.to_owned(), body)
            .await?;
        calls.push(call);
        match self.next(&mut calls).await? {
            Some((_, outcome)) => Ok(outcome),
            None => Ok(CallOutcome::Error("no answer".to_owned())),
        }
    }

    /// Makes sure the claim lasts for a call of `timeout` and the margin; extends it otherwise.
    async fn cover(&mut self, timeout: Duration) -> Step {
        let needed = i64::try_from(timeout.as_millis())
            .unwrap_or(i64::MAX)
            .saturating_add(CLAIM_MARGIN_MS);
        let now = self.inner.clock.now();
        if self.claimed && self.claim_until.0.saturating_sub(now.0) >= needed {
            return Ok(());
        }
        self.save().await
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
                tracing::info!(braid.gid = %self.txn.gid, "another actor moved the transaction or took its claim during this pass; its state stands");
            }
        }
    }

    /// The conditional update carrying everything this pass changed since its last write.
    fn changes(&self, now: Millis) -> TxnUpdate {
        let mut update = TxnUpdate::of(&self.original, now);
        update.fence = self.fence;
        if !self.claimed {
            update.unclaimed_at = Some(now);
        }
        if self.txn.status != self.original.status {
            update.status = Some(self.txn.status);
        }
        if self.txn.rollback_reason != self.original.rollback_reason {
            update.rollback_reason = Some(self.txn.rollback_reason.clone());
        }
        if self.txn.options != self.original.options {
            update.options = Some(self.txn.options.clone());
        }
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
        update
    }

    /// Records everything the pass decided so far (status, reason, retry count, branch results) with one
    /// compare-and-set through the group-commit writer, and extends the claim. The pass goes on only once
    /// the write committed: this is what makes a decision durable before the calls that depend on it. A
    /// lost compare-and-set stops the pass ([`Stop::Lost`]), a store error too ([`Stop::Store`]).
    pub(crate) async fn save(&mut self) -> Step {
        fail::fail_point!("pass::before_save", |_| Err(Stop::Crashed));
        let now = self.inner.clock.now();
        let until = now.plus_secs(claim_secs(&self.txn.options, &self.inner.opts));
        let mut update = self.changes(now);
        update.owner = Some(self.token.clone());
        update.schedule = Schedule::At {
            interval: self.original.next_cron_interval,
            at: until,
        };
        match self.inner.writer.write(Write::Update(update)).await {
            Ok(WriteOutcome::Applied(version)) => {
                self.progressed |= self.changed.iter().any(|c| *c);
                self.changed.fill(false);
                self.original = GlobalTxn {
                    version,
                    update_time: now,
                    next_cron_time: Some(until),
                    owner: self.token.clone(),
                    ..self.txn.clone()
                };
                self.claimed = true;
                self.claim_until = until;
            }
            Ok(WriteOutcome::Conflict | WriteOutcome::DuplicateBranch) => return Err(Stop::Lost),
            Err(e) => {
                tracing::warn!(braid.gid = %self.txn.gid, error = %e, "recording a decision of the pass failed; it stops and a later pass repeats it");
                return Err(Stop::Store(e.to_string()));
            }
        }
        fail::fail_point!("pass::after_save", |_| Err(Stop::Crashed));
        Ok(())
    }

    /// Writes what is left of the pass's changes with one conditional update, schedules the next retry,
    /// releases the claim, and reports the result.
    async fn finish(&mut self) -> Step<PassResult> {
        fail::fail_point!("pass::before_finish", |_| Err(Stop::Crashed));
        let now = self.inner.clock.now();
        let base = base_interval(&self.txn.options, &self.inner.opts);
        // A branch that moved in this pass is progress: it resets the interval to the base before any
        // ONGOING keeps it or an error doubles it (spec §9.2), so an earlier backoff does not carry over.
        let progressed = self.progressed || self.changed.iter().any(|c| *c);
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
        let mut update = self.changes(now);
        update.owner = Some(String::new());
        update.schedule = Schedule::At { interval, at };

        if self.retry == Retry::Backoff {
            self.alert(interval, base);
        }
        let model = self.txn.trans_type.as_str();
        let metrics = &self.inner.metrics;
        match self.inner.writer.write(Write::Update(update)).await {
            Ok(WriteOutcome::Applied(_)) => {
                if self.txn.status.is_final() {
                    metrics
                        .transactions_finished
                        .with_label_values(&[model, self.txn.status.as_str()])
                        .inc();
                }
            }
            Ok(WriteOutcome::Conflict | WriteOutcome::DuplicateBranch) => return Err(Stop::Lost),
            Err(e) => {
                tracing::warn!(braid.gid = %self.txn.gid, error = %e, "recording the pass failed; the scan will repeat it");
                return Err(Stop::Store(e.to_string()));
            }
        }
        fail::fail_point!("pass::after_finish", |_| Err(Stop::Crashed));
        Ok(PassResult {
            status: self.txn.status,
            rollback_reason: self.txn.rollback_reason.clone(),
            error: self.error.clone(),
        })
    }

    /// What a pass that stopped early reports: the stored state when another actor moved it, else the state
    /// the pass last made durable with the reason it stopped.
    async fn stopped(&self, stop: Stop) -> PassResult {
        let durable = |error: PassError| PassResult {
            status: self.original.status,
            rollback_reason: self.original.rollback_reason.clone(),
            error: Some(error),
        };
        match stop {
            Stop::Lost | Stop::Cancelled => match self.inner.store.find_txn(&self.txn.gid).await {
                Ok(Some(t)) => {
                    if stop == Stop::Lost {
                        self.explain_conflict(&t);
                    }
                    PassResult {
                        status: t.status,
                        rollback_reason: t.rollback_reason,
                        error: (!t.status.is_final()).then_some(PassError::Ongoing),
                    }
                }
                Ok(None) | Err(_) => durable(PassError::Error(
                    "transaction changed concurrently".to_owned(),
                )),
            },
            Stop::Store(e) => durable(PassError::Error(format!("store: {e}"))),
            Stop::Crashed => durable(PassError::Error("the pass crashed".to_owned())),
        }
    }

    /// Ends the pass: the final write, or what a pass that stopped early reports. Counts it.
    async fn conclude(&mut self, processed: Step) -> PassResult {
        let result = match processed {
            Ok(()) => self.finish().await,
            Err(stop) => Err(stop),
        };
        let result = match result {
            Ok(result) => result,
            Err(stop) => {
                tracing::debug!(braid.gid = %self.txn.gid, reason = ?stop, "the pass stopped early");
                self.stopped(stop).await
            }
        };
        let ok = if result.error.is_none() { "ok" } else { "fail" };
        self.inner
            .metrics
            .transaction_process
            .with_label_values(&[self.txn.trans_type.as_str(), ok])
            .inc();
        result
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
/// ([`Kind::calls_nothing`](super::kind::Kind::calls_nothing)) and ends in a final status; `None` otherwise (the caller stores the transaction and
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
    let kind = super::kind::of(txn.trans_type);
    if !kind.calls_nothing(txn, branches) {
        return None;
    }
    // A new transaction on the replica that received it: not a scanner pass, so no fence. The insert that
    // follows is its claim.
    let mut pass = Pass::new(
        inner,
        txn.clone(),
        branches.to_vec(),
        None,
        true,
        CancellationToken::new(),
    );
    let processed = kind.process(&mut pass).await;
    if processed.is_err() || !pass.txn.status.is_final() || pass.error.is_some() {
        return None;
    }
    let now = pass.now;
    let mut txn = pass.txn;
    txn.update_time = now;
    txn.next_cron_time = None;
    txn.owner = String::new();
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

/// Runs one pass of `txn` and records it. With `claimed`, `txn` is the row as the write that claimed it for
/// this pass left it (see [`Pass::new`]).
pub(crate) async fn run(
    inner: &Inner,
    txn: GlobalTxn,
    branches: Vec<Branch>,
    fence: Option<Fence>,
    claimed: bool,
    cancel: CancellationToken,
) -> PassResult {
    let span =
        tracing::info_span!("pass", braid.gid = %txn.gid, braid.trans_type = %txn.trans_type);
    async move {
        let mut pass = Pass::new(inner, txn, branches, fence, claimed, cancel);
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
        let processed = super::kind::of(pass.txn.trans_type)
            .process(&mut pass)
            .await;
        let result = pass.conclude(processed).await;
        tracing::debug!(status = %result.status, "pass done");
        result
    }
    .instrument(span)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every await point of a state machine is a pass boundary with its failpoints (see the module docs):
    /// a transaction-type module that awaits anything else fails here, so a new await point is noticed.
    #[test]
    fn state_machines_await_only_pass_boundaries() {
        const BOUNDARIES: &[&str] = &[
            "pass.start(",
            "pass.next(",
            "pass.call(",
            "pass.call_url(",
            "pass.save(",
            // TCC's phase two, shared with XA; its own awaits are checked in tcc.rs.
            "phase_two(pass,",
        ];
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/engine");
        for file in ["saga.rs", "msg.rs", "tcc.rs", "xa.rs", "workflow.rs"] {
            let text = std::fs::read_to_string(dir.join(file)).unwrap();
            // Only the state machine: the module's tests, the gauge queries (`stuck_phase2`) and the creation
            // rules are not a pass.
            let code = text.split("#[cfg(test)]").next().unwrap();
            let code = code
                .split("pub(crate) async fn stuck_phase2")
                .next()
                .unwrap();
            // The type's creation rules (its `Kind` impl, whose `process` only forwards here) follow the
            // state machine.
            let code = code.split("impl Kind for").next().unwrap();
            // Statements, whatever the line breaks: each `.await` and the code before it back to the
            // previous statement boundary.
            let flat = code
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .replace(" .", ".");
            for (at, _) in flat.match_indices(".await") {
                let start = flat[..at].rfind([';', '{', '}']).map_or(0, |i| i + 1);
                let statement = &flat[start..at];
                assert!(
                    BOUNDARIES.iter().any(|b| statement.contains(b)),
                    "src/engine/{file}: an await that is not a pass boundary: {statement}.await"
                );
            }
        }
    }

    #[test]
    fn claims_cover_a_call() {
        let opts = EngineOptions::default();
        let with = |retry_interval, request_timeout| TransOptions {
            retry_interval,
            request_timeout,
            ..Default::default()
        };
        assert_eq!(claim_secs(&with(0, 0), &opts), 10, "the base interval");
        assert_eq!(
            claim_secs(&with(1, 0), &opts),
            5,
            "a call of 3 s and 2 s more"
        );
        assert_eq!(claim_secs(&with(1, 30), &opts), 32);
        assert_eq!(claim_secs(&with(60, 30), &opts), 60);
        assert_eq!(op_label("compensate"), "compensate");
        assert_eq!(op_label("\"; DROP TABLE braid_txn; --"), "callback");
    }

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
