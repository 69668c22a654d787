//! The transaction engine: what the API calls to create and move transactions, and what the recovery
//! scanner calls to resume them. One module per transaction type holds its state machine (spec §7); the
//! [`driver`] runs a processing pass, calls branches, and turns the pass into one conditional store write.
//!
//! Invariants:
//! - A transaction is durable before any of its branches is called (the insert commits first).
//! - A decision is durable before any branch call that depends on it (see [`driver`] for which write
//!   protects which call).
//! - Every write is a compare-and-set on the status and version the pass last wrote; a lost race stops the
//!   pass, and the winner's state stands.
//! - One pass per transaction at a time, across replicas: a pass holds a claim on the row for as long as it
//!   runs (extended before a call it would not cover) and sends no call its claim does not cover; on one
//!   replica the in-flight map also keeps a second pass from starting.
//! - `forceStop` and shutdown cancel the passes in flight on this replica.

mod access;
pub mod allow;
mod driver;
mod kind;
mod msg;
mod saga;
mod tcc;
mod topics;
mod workflow;
mod xa;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use access::TxnFilter;
pub use allow::BranchAllow;
pub use driver::{FAILPOINTS, PassError, PassResult};

pub use crate::store::{ClaimScope, Claimed, Error as StoreError};

use crate::invoke::BranchCaller;
use crate::metrics::Metrics;
use crate::model::{
    Branch, BranchId, Fence, Gid, GlobalStatus, GlobalTxn, Millis, Partition, Protocol,
    TOPIC_SCHEME, TransOptions, TransType, Version,
};
use crate::store::clock::StoreClock;
use crate::store::writer::WriterHandle;
use crate::store::{self, DynStore, Schedule, TxnUpdate, Write, WriteOutcome};

/// Errors the engine reports to the API. Each maps to one HTTP status in `api`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed (HTTP 400). The message names the field.
    #[error("{0}")]
    BadRequest(String),
    /// No such transaction (HTTP 404).
    #[error("{0}")]
    NotFound(String),
    /// A definite business failure (HTTP 409, `dtm_result: FAILURE`).
    #[error("{0}")]
    Failure(String),
    /// Not finished yet (HTTP 425, `dtm_result: ONGOING`).
    #[error("{0}")]
    Ongoing(String),
    /// A branch or pass error that is neither (HTTP 500).
    #[error("{0}")]
    Pass(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] store::Error),
}

impl Error {
    /// A fixed label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad_request",
            Self::NotFound(_) => "not_found",
            Self::Failure(_) => "failure",
            Self::Ongoing(_) => "ongoing",
            Self::Pass(_) => "pass",
            Self::Store(e) => e.metric_label(),
        }
    }
}

/// `Result` of the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Engine defaults (the server's `--retry-interval`, `--timeout-to-fail`, ...).
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Base retry interval in seconds.
    pub retry_interval: i64,
    /// Timeout of prepared msg/tcc/xa transactions in seconds.
    pub timeout_to_fail: i64,
    /// Branch call timeout in seconds.
    pub request_timeout: i64,
    /// Upper bound of the exponential retry backoff in seconds.
    pub backoff_cap: i64,
    /// Number of scan partitions.
    pub partitions: u16,
    /// Where to POST an alert when a branch keeps failing (spec §9.4); `None`: no alerts.
    pub alert_webhook: Option<String>,
    /// Alert once the retry count (log2 of interval / base) reaches this.
    pub alert_retry_limit: i64,
    /// This replica's name: the prefix of the claim tokens its passes write to `owner`.
    pub node_id: String,
    /// Which hosts branch URLs may name (`--branch-allow`).
    pub branch_allow: BranchAllow,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            retry_interval: 10,
            timeout_to_fail: 35,
            request_timeout: 3,
            backoff_cap: 3600,
            partitions: 64,
            alert_webhook: None,
            alert_retry_limit: 3,
            node_id: "braid".to_owned(),
            branch_allow: BranchAllow::default(),
        }
    }
}

/// Announced after every processing pass (the tests' "transaction processed" signal).
#[derive(Debug, Clone)]
pub struct PassEvent {
    /// Which transaction.
    pub gid: Gid,
    /// Its status after the pass (as this pass left it).
    pub status: GlobalStatus,
    /// What the pass reported (status, rollback reason, why it is not finished).
    pub result: PassResult,
}

/// Checks `custom_data` for a transaction type: saga `orders` must name existing steps, msg `delay` must be
/// a non-negative integer, workflow data must be JSON. The message names the problem.
pub fn validate_custom_data(
    trans_type: TransType,
    custom_data: &str,
    steps: usize,
) -> Result<(), String> {
    kind::of(trans_type).check_custom_data(custom_data, steps)
}

/// What a [`OptionDefaults`] source sees of a transaction being created.
#[derive(Debug, Clone)]
pub struct NewTxn<'a> {
    /// The gid.
    pub gid: &'a str,
    /// The transaction type.
    pub trans_type: TransType,
    /// The branch URLs known at creation: saga and msg step URLs (not `topic://` ones), and the back-check
    /// URL.
    pub branch_urls: Vec<&'a str>,
}

/// Supplies defaults for the options a new transaction did not set (Kubernetes `TransactionPolicy`
/// objects). The filled options are stored with the transaction, so later changes of the source affect
/// new transactions only.
pub trait OptionDefaults: Send + Sync {
    /// Fills the options `options` left unset (zero values, missing headers); never overrides a set one.
    fn fill(&self, txn: &NewTxn<'_>, options: &mut TransOptions);
}

/// A create request (prepare, submit, prepareWorkflow), already validated by the API.
#[derive(Debug, Clone)]
pub struct TxnRequest {
    /// Global id.
    pub gid: Gid,
    /// Transaction type.
    pub trans_type: TransType,
    /// saga/msg steps: `action`, `compensate`, legacy `data`.
    pub steps: Vec<BTreeMap<String, String>>,
    /// Step bodies.
    pub payloads: Vec<Vec<u8>>,
    /// msg back-check URL / workflow callback.
    pub query_prepared: String,
    /// Custom data (JSON text).
    pub custom_data: String,
    /// Branch protocol.
    pub protocol: Protocol,
    /// Options.
    pub options: TransOptions,
    /// Rollback reason (abort).
    pub rollback_reason: String,
    /// Workflow submit: `status`, `rollback_reason`, `result`.
    pub req_extra: BTreeMap<String, String>,
}

/// What a submit did.
#[derive(Debug)]
pub enum SubmitOutcome {
    /// Accepted; processing continues in the background.
    Accepted,
    /// `wait_result`: the result of the synchronous pass.
    Processed(PassResult),
}

/// The engine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) store: DynStore,
    pub(crate) writer: WriterHandle,
    pub(crate) invoker: Arc<dyn BranchCaller>,
    pub(crate) clock: StoreClock,
    pub(crate) opts: EngineOptions,
    pub(crate) metrics: Arc<Metrics>,
    /// Passes running on this replica, with the token that cancels each.
    inflight: Mutex<HashMap<Gid, CancellationToken>>,
    defaults: OnceLock<Arc<dyn OptionDefaults>>,
    events: broadcast::Sender<PassEvent>,
    tasks: TaskTracker,
    /// Cancels every pass (shutdown); each pass's token is a child of it.
    cancel: CancellationToken,
    topic_lock: topics::TopicLock,
}

/// Removes a gid from the in-flight map when the pass ends, however it ends.
struct InflightGuard<'a> {
    inner: &'a Inner,
    gid: Gid,
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut set) = self.inner.inflight.lock() {
            set.remove(&self.gid);
        }
    }
}

impl Engine {
    /// A new engine.
    pub fn new(
        store: DynStore,
        writer: WriterHandle,
        invoker: Arc<dyn BranchCaller>,
        clock: StoreClock,
        opts: EngineOptions,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (events, _) = broadcast::channel(4096);
        Self {
            inner: Arc::new(Inner {
                store,
                writer,
                invoker,
                clock,
                opts,
                metrics,
                inflight: Mutex::new(HashMap::new()),
                defaults: OnceLock::new(),
                events,
                tasks: TaskTracker::new(),
                cancel: CancellationToken::new(),
                topic_lock: topics::TopicLock::default(),
            }),
        }
    }

    /// Installs the source of option defaults for new transactions (once, at start-up). Returns `false`
    /// when one was installed already.
    pub fn set_option_defaults(&self, defaults: Arc<dyn OptionDefaults>) -> bool {
        self.inner.defaults.set(defaults).is_ok()
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// The options.
    pub fn options(&self) -> &EngineOptions {
        &self.inner.opts
    }

    /// Subscribes to pass events.
    pub fn events(&self) -> broadcast::Receiver<PassEvent> {
        self.inner.events.subscribe()
    }

    /// Whether a pass for `gid` runs on this replica now.
    pub fn is_inflight(&self, gid: &Gid) -> bool {
        self.inner
            .inflight
            .lock()
            .map(|s| s.contains_key(gid))
            .unwrap_or(false)
    }

    /// Stops taking background passes and waits (up to `grace`) for the running ones; then cancels those
    /// still running (they send nothing more and write nothing more; the recovery scan resumes them once
    /// their claims run out) and waits for them to stop.
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.tasks.close();
        if tokio::time::timeout(grace, self.inner.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                running = self.inner.tasks.len(),
                "shutdown grace ended with passes still running; cancelling them, the recovery scan will resume them"
            );
            self.inner.cancel.cancel();
            if tokio::time::timeout(Duration::from_secs(5), self.inner.tasks.wait())
                .await
                .is_err()
            {
                tracing::warn!(
                    running = self.inner.tasks.len(),
                    "passes did not stop after being cancelled"
                );
            }
        }
    }

    /// Cancels the pass of `gid` running on this replica, if any.
    fn cancel_pass(&self, gid: &Gid) {
        if let Ok(set) = self.inner.inflight.lock()
            && let Some(token) = set.get(gid)
        {
            token.cancel();
        }
    }

    /// Refreshes the gauges that are read from the store (called before each metrics scrape). A store
    /// error leaves them as they were and is logged.
    pub async fn refresh_store_gauges(&self) {
        match xa::stuck_phase2(&self.inner).await {
            Ok((commit, rollback)) => {
                let gauge = &self.inner.metrics.xa_phase2_stuck;
                gauge.with_label_values(&["commit"]).set(commit);
                gauge.with_label_values(&["rollback"]).set(rollback);
            }
            Err(e) => {
                tracing::warn!(error = %e, "counting XA transactions stuck in phase 2 failed")
            }
        }
    }

    /// `newGid`.
    pub fn new_gid(&self) -> Gid {
        Gid::generate()
    }

    fn base_interval(&self, options: &TransOptions) -> i64 {
        driver::base_interval(options, &self.inner.opts)
    }

    fn build_txn(&self, req: &TxnRequest, status: GlobalStatus, now: Millis) -> GlobalTxn {
        let mut options = req.options.clone();
        options.retry_count = 0;
        if let Some(defaults) = self.inner.defaults.get() {
            let urls = req
                .steps
                .iter()
                .flat_map(|s| {
                    s.iter()
                        .filter(|(k, _)| k.as_str() != "data")
                        .map(|(_, v)| v.as_str())
                })
                .chain(std::iter::once(req.query_prepared.as_str()))
                .filter(|u| !u.is_empty() && !u.starts_with(TOPIC_SCHEME))
                .collect();
            let new = NewTxn {
                gid: req.gid.as_str(),
                trans_type: req.trans_type,
                branch_urls: urls,
            };
            defaults.fill(&new, &mut options);
        }
        let base = self.base_interval(&options);
        let mut txn = GlobalTxn {
            id: 0,
            gid: req.gid.clone(),
            trans_type: req.trans_type,
            status,
            query_prepared: req.query_prepared.clone(),
            protocol: req.protocol,
            custom_data: req.custom_data.clone(),
            options,
            create_time: now,
            update_time: now,
            finish_time: None,
            rollback_time: None,
            result: String::new(),
            rollback_reason: String::new(),
            next_cron_interval: base,
            next_cron_time: Some(now.plus_secs(base)),
            owner: String::new(),
            version: Version(1),
            partition: Partition::of(&req.gid, self.inner.opts.partitions),
        };
        if status == GlobalStatus::Prepared {
            // A prepared tcc/xa/msg needs nothing until its timeout: look at it exactly then.
            let timeout = txn.effective_timeout(self.inner.opts.timeout_to_fail);
            if timeout > 0 && kind::of(req.trans_type).wakes_at_timeout() {
                txn.next_cron_time = Some(now.plus_secs(timeout));
            }
        } else {
            // A new submitted transaction is claimed by the first pass that the accepting replica runs.
            txn.owner = driver::new_token(&self.inner.opts);
            txn.next_cron_time =
                Some(now.plus_secs(driver::claim_secs(&txn.options, &self.inner.opts)));
        }
        txn
    }

    /// The branches a create request implies: saga `[compensate, action]` per step; msg one `action` per step
    /// (topics fan out to their subscribers); none for the other types.
    async fn build_branches(&self, req: &TxnRequest, now: Millis) -> Result<Vec<Branch>> {
        kind::of(req.trans_type)
            .initial_branches(self, req, now)
            .await
    }

    /// The request's branch and callback URLs against the allowlist.
    fn check_urls(&self, req: &TxnRequest) -> Result<()> {
        let steps = req.steps.iter().enumerate().flat_map(|(i, step)| {
            step.iter()
                .filter(|(k, _)| k.as_str() != "data")
                .map(move |(k, v)| (format!("steps[{i}].{k}"), v.as_str()))
        });
        let callback = std::iter::once(("query_prepared".to_owned(), req.query_prepared.as_str()));
        self.inner.opts.branch_allow.check(steps.chain(callback))
    }

    async fn load(&self, gid: &Gid) -> Result<GlobalTxn> {
        self.inner
            .store
            .find_txn(gid)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no transaction with gid '{gid}'")))
    }

    /// `prepare`: stores the transaction as `prepared` (msg, tcc, xa). Idempotent while it stays prepared.
    pub async fn prepare(&self, req: TxnRequest) -> Result<()> {
        self.check_urls(&req)?;
        let now = self.inner.clock.now();
        let txn = self.build_txn(&req, GlobalStatus::Prepared, now);
        let branches = self.build_branches(&req, now).await?;
        match self
            .inner
            .writer
            .write(Write::Insert { txn, branches })
            .await?
        {
            WriteOutcome::Applied(_) => Ok(()),
            WriteOutcome::Conflict | WriteOutcome::DuplicateBranch => {
                let existing = self.load(&req.gid).await?;
                if existing.status == GlobalStatus::Prepared {
                    Ok(())
                } else {
                    Err(Error::Failure(format!(
                        "current status '{}', cannot prepare",
                        existing.status
                    )))
                }
            }
        }
    }

    /// `submit`: stores (or moves a prepared one to) `submitted` and processes it, synchronously when
    /// `wait_result` is set. Workflow submits record the client's final result instead.
    pub async fn submit(&self, req: TxnRequest) -> Result<SubmitOutcome> {
        self.check_urls(&req)?;
        if req.trans_type == TransType::Workflow {
            return self
                .submit_workflow(&req)
                .await
                .map(|()| SubmitOutcome::Accepted);
        }
        let now = self.inner.clock.now();
        let txn = self.build_txn(&req, GlobalStatus::Submitted, now);
        let branches = self.build_branches(&req, now).await?;
        let wait = req.options.wait_result;
        // A tcc or xa submit follows its prepare, so its gid nearly always exists: a read finds it without
        // spending a write (and a place in the writer's batch) on an insert that can only conflict.
        let stored = if kind::of(req.trans_type).submit_follows_prepare() {
            self.inner.store.find_txn(&req.gid).await?
        } else {
            None
        };
        let (txn, branches, claimed) = if let Some(existing) = stored {
            self.submit_existing(&req, existing, now).await?
        } else {
            // What the insert protects: the transaction exists durably before any branch is called, so a
            // crash after this leaves it to the recovery scan. When its first pass calls no branch at all (a
            // saga of empty URLs, DTM's benchEmptyUrl), that pass is settled in memory first and its outcome
            // inserted with the row: one durable write for the whole transaction.
            let settled = driver::run_unstored(&self.inner, &txn, &branches).await;
            let insert = match &settled {
                Some(s) => Write::Insert {
                    txn: s.txn.clone(),
                    branches: s.branches.clone(),
                },
                None => Write::Insert {
                    txn: txn.clone(),
                    branches: branches.clone(),
                },
            };
            let inserted = self.inner.writer.write(insert).await?;
            if let (WriteOutcome::Applied(_), Some(settled)) = (inserted, settled) {
                driver::record_settled(&self.inner, &settled);
                let _ = self.inner.events.send(PassEvent {
                    gid: settled.txn.gid.clone(),
                    status: settled.txn.status,
                    result: settled.result.clone(),
                });
                return Ok(if wait || settled.txn.options.wait_result {
                    SubmitOutcome::Processed(settled.result)
                } else {
                    SubmitOutcome::Accepted
                });
            }
            match inserted {
                // The insert is the first pass's claim (`owner`, `next_cron_time`).
                WriteOutcome::Applied(version) => (GlobalTxn { version, ..txn }, branches, true),
                WriteOutcome::Conflict | WriteOutcome::DuplicateBranch => {
                    let existing = self.load(&req.gid).await?;
                    self.submit_existing(&req, existing, now).await?
                }
            }
        };
        fail::fail_point!("engine::after_submit_write", |_| Ok(
            SubmitOutcome::Accepted
        ));
        if wait || txn.options.wait_result {
            Ok(SubmitOutcome::Processed(
                self.run_pass(txn, branches, claimed).await,
            ))
        } else {
            self.spawn_pass(txn, Some(branches), claimed);
            Ok(SubmitOutcome::Accepted)
        }
    }

    /// An API decision (`prepared -> submitted`, `prepared -> aborting`) that also claims the row for the pass
    /// that follows it. Returns the row as the write leaves it (except its new version) and the write.
    fn decide(
        &self,
        existing: GlobalTxn,
        status: GlobalStatus,
        reason: Option<String>,
        now: Millis,
    ) -> (GlobalTxn, TxnUpdate) {
        let mut update = TxnUpdate::of(&existing, now);
        update.status = Some(status);
        update.rollback_reason.clone_from(&reason);
        let base = self.base_interval(&existing.options);
        let token = driver::new_token(&self.inner.opts);
        let until = now.plus_secs(driver::claim_secs(&existing.options, &self.inner.opts));
        update.schedule = Schedule::At {
            interval: base,
            at: until,
        };
        update.owner = Some(token.clone());
        let rollback_reason = reason.unwrap_or_else(|| existing.rollback_reason.clone());
        let txn = GlobalTxn {
            status,
            rollback_reason,
            next_cron_interval: base,
            next_cron_time: Some(until),
            owner: token,
            update_time: now,
            ..existing
        };
        (txn, update)
    }

    /// `submit` of a gid that exists: a prepared one becomes `submitted` (a durable write before any of its
    /// branches is called, so a crash cannot leave confirmed branches under a transaction the scan would
    /// time out and cancel; the write is also the claim of the pass that follows); a submitted one is
    /// processed again by a pass that must first take the claim (it stops if another pass holds it); any
    /// other status is refused. Returns the transaction, its branches and whether the pass holds the claim.
    async fn submit_existing(
        &self,
        req: &TxnRequest,
        existing: GlobalTxn,
        now: Millis,
    ) -> Result<(GlobalTxn, Vec<Branch>, bool)> {
        match existing.status {
            GlobalStatus::Prepared => {
                let (txn, update) = self.decide(existing, GlobalStatus::Submitted, None, now);
                match self.inner.writer.write(Write::Update(update)).await? {
                    WriteOutcome::Applied(version) => {
                        let branches = self.inner.store.find_branches(&req.gid).await?;
                        Ok((GlobalTxn { version, ..txn }, branches, true))
                    }
                    WriteOutcome::Conflict | WriteOutcome::DuplicateBranch => {
                        Err(Error::Ongoing(format!(
                            "transaction '{}' changed while being submitted; retry",
                            req.gid
                        )))
                    }
                }
            }
            GlobalStatus::Submitted => {
                let branches = self.inner.store.find_branches(&req.gid).await?;
                Ok((existing, branches, false))
            }
            other => Err(Error::Failure(format!(
                "current status '{other}', cannot submit"
            ))),
        }
    }

    async fn submit_workflow(&self, req: &TxnRequest) -> Result<()> {
        let existing = self.load(&req.gid).await?;
        let status = match req.req_extra.get("status").map(String::as_str) {
            Some("succeed") => GlobalStatus::Succeed,
            Some("failed") => GlobalStatus::Failed,
            other => {
                return Err(Error::BadRequest(format!(
                    "req_extra.status must be 'succeed' or 'failed' for a workflow submit, got {other:?}"
                )));
            }
        };
        if existing.status != GlobalStatus::Prepared {
            return Err(Error::Failure(format!(
                "current status '{}', cannot submit",
                existing.status
            )));
        }
        let mut update = TxnUpdate::of(&existing, self.inner.clock.now());
        update.expect_version = None;
        update.status = Some(status);
        update.rollback_reason = req.req_extra.get("rollback_reason").cloned();
        update.result = req.req_extra.get("result").cloned();
        match self.inner.writer.write(Write::Update(update)).await? {
            WriteOutcome::Applied(_) => {
                self.inner
                    .metrics
                    .transactions_finished
                    .with_label_values(&["workflow", status.as_str()])
                    .inc();
                Ok(())
            }
            WriteOutcome::Conflict | WriteOutcome::DuplicateBranch => Err(Error::Failure(format!(
                "workflow '{}' is no longer prepared, cannot submit",
                req.gid
            ))),
        }
    }

    /// `abort`: a prepared msg fails at once; a tcc/xa in `prepared` or `aborting` rolls back.
    pub async fn abort(
        &self,
        gid: &Gid,
        trans_type: TransType,
        reason: String,
    ) -> Result<SubmitOutcome> {
        let existing = self.load(gid).await?;
        let now = self.inner.clock.now();
        if kind::of(existing.trans_type).fails_on_abort(existing.status) {
            let mut update = TxnUpdate::of(&existing, now);
            update.status = Some(GlobalStatus::Failed);
            update.rollback_reason = Some(reason);
            return match self.inner.writer.write(Write::Update(update)).await? {
                WriteOutcome::Applied(_) => {
                    self.inner
                        .metrics
                        .transactions_finished
                        .with_label_values(&["msg", "failed"])
                        .inc();
                    // A back-check pass running here stops; one elsewhere loses its next write.
                    self.cancel_pass(gid);
                    Ok(SubmitOutcome::Accepted)
                }
                _ => Err(Error::Ongoing(format!(
                    "transaction '{gid}' changed while being aborted; retry"
                ))),
            };
        }
        let abortable = existing.trans_type == trans_type
            && kind::of(trans_type).rolls_back_on_abort(existing.status);
        if !abortable {
            return Err(Error::Failure(format!(
                "trans type: '{}' current status '{}', cannot abort",
                existing.trans_type, existing.status
            )));
        }
        // A prepared one is written `aborting` before any rollback call (and the write claims it for the
        // pass); one that is `aborting` already is rolled back by a pass that must take the claim first.
        let (txn, claimed) = if existing.status == GlobalStatus::Prepared {
            let (txn, update) = self.decide(existing, GlobalStatus::Aborting, Some(reason), now);
            match self.inner.writer.write(Write::Update(update)).await? {
                WriteOutcome::Applied(version) => (GlobalTxn { version, ..txn }, true),
                _ => {
                    return Err(Error::Ongoing(format!(
                        "transaction '{gid}' changed while being aborted; retry"
                    )));
                }
            }
        } else {
            (existing, false)
        };
        let branches = self.inner.store.find_branches(gid).await?;
        if txn.options.wait_result {
            Ok(SubmitOutcome::Processed(
                self.run_pass(txn, branches, claimed).await,
            ))
        } else {
            self.spawn_pass(txn, Some(branches), claimed);
            Ok(SubmitOutcome::Accepted)
        }
    }

    /// `forceStop`: marks an unfinished transaction `failed` without calling any branch.
    pub async fn force_stop(&self, gid: &Gid) -> Result<()> {
        for _ in 0..5 {
            let existing = self.load(gid).await?;
            if existing.status.is_final() {
                return Err(Error::Failure(format!(
                    "global transaction force stop error: status is '{}'",
                    existing.status
                )));
            }
            let mut update = TxnUpdate::of(&existing, self.inner.clock.now());
            update.status = Some(GlobalStatus::Failed);
            update.rollback_reason = Some("force stopped".to_owned());
            if let WriteOutcome::Applied(_) = self.inner.writer.write(Write::Update(update)).await?
            {
                self.inner
                    .metrics
                    .transactions_finished
                    .with_label_values(&[existing.trans_type.as_str(), "failed"])
                    .inc();
                // A pass of it running here stops now; one on another replica stops at its next write
                // (the version moved), which comes before any call its claim does not cover.
                self.cancel_pass(gid);
                return Ok(());
            }
        }
        Err(Error::Ongoing(format!(
            "transaction '{gid}' keeps changing; retry the force stop"
        )))
    }

    /// `registerBranch` for tcc (`confirm`/`cancel`), xa (`url`) and workflow (`op`, `status`): appends
    /// branch rows while the transaction is `prepared`.
    pub async fn register_branch(
        &self,
        gid: &Gid,
        trans_type: TransType,
        branch_id: BranchId,
        data: Vec<u8>,
        fields: &BTreeMap<String, String>,
    ) -> Result<()> {
        self.inner.opts.branch_allow.check(
            ["confirm", "cancel", "url"]
                .into_iter()
                .filter_map(|k| fields.get(k).map(|v| (k.to_owned(), v.as_str()))),
        )?;
        let now = self.inner.clock.now();
        let branches =
            kind::of(trans_type).registered_branches(gid, &branch_id, data, fields, now)?;
        let update = TxnUpdate {
            gid: gid.clone(),
            expect_status: GlobalStatus::Prepared,
            expect_version: None,
            status: None,
            rollback_reason: None,
            result: None,
            options: None,
            schedule: Schedule::Keep,
            branches: Vec::new(),
            new_branches: branches,
            now,
            fence: None,
            owner: None,
            unclaimed_at: None,
        };
        match self.inner.writer.write(Write::Update(update)).await? {
            WriteOutcome::Applied(_) => Ok(()),
            WriteOutcome::Conflict => Err(Error::Failure(format!(
                "no trans with gid: {gid} status: prepared found"
            ))),
            WriteOutcome::DuplicateBranch => Err(Error::Failure(format!(
                "branch {branch_id} of {gid} is already registered"
            ))),
        }
    }

    /// `prepareWorkflow`: creates the workflow as `prepared`, or returns the stored one and its progress.
    pub async fn prepare_workflow(&self, req: TxnRequest) -> Result<(GlobalTxn, Vec<Branch>)> {
        self.check_urls(&req)?;
        let now = self.inner.clock.now();
        let txn = self.build_txn(&req, GlobalStatus::Prepared, now);
        match self
            .inner
            .writer
            .write(Write::Insert {
                txn,
                branches: Vec::new(),
            })
            .await?
        {
            WriteOutcome::Applied(_) | WriteOutcome::Conflict | WriteOutcome::DuplicateBranch => {}
        }
        let txn = self.load(&req.gid).await?;
        let branches = self.inner.store.find_branches(&req.gid).await?;
        Ok((txn, branches))
    }

    /// Runs a pass in the background (tracked, so shutdown waits for it). Loads the branches if not given.
    /// `claimed`: whether the write that produced `txn` claimed it for this pass.
    fn spawn_pass(&self, txn: GlobalTxn, branches: Option<Vec<Branch>>, claimed: bool) {
        self.spawn_pass_inner(txn, branches, None, claimed);
    }

    /// Runs a pass of a transaction the recovery scanner claimed, in the background: `txn` is the row as the
    /// claim left it, and the pass's writes carry `fence` (see [`Engine::run_pass_with`]).
    pub fn spawn_pass_with(
        &self,
        txn: GlobalTxn,
        branches: Option<Vec<Branch>>,
        fence: Option<Fence>,
    ) {
        self.spawn_pass_inner(txn, branches, fence, true);
    }

    fn spawn_pass_inner(
        &self,
        txn: GlobalTxn,
        branches: Option<Vec<Branch>>,
        fence: Option<Fence>,
        claimed: bool,
    ) {
        let engine = self.clone();
        self.inner.tasks.spawn(async move {
            let branches = match branches {
                Some(b) => b,
                None => match engine.inner.store.find_branches(&txn.gid).await {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::warn!(braid.gid = %txn.gid, error = %e, "loading branches failed; the scan will retry");
                        return;
                    }
                },
            };
            engine.run_pass_inner(txn, branches, fence, claimed).await;
        });
    }

    /// The stored state of `txn` as a pass result (when the pass that moved it is not ours to report).
    async fn stored_result(&self, txn: &GlobalTxn) -> PassResult {
        match self.inner.store.find_txn(&txn.gid).await {
            Ok(Some(t)) => PassResult {
                status: t.status,
                rollback_reason: t.rollback_reason,
                error: None,
            },
            Ok(None) | Err(_) => PassResult {
                status: txn.status,
                rollback_reason: txn.rollback_reason.clone(),
                error: Some(PassError::Error(
                    "could not read the transaction back".to_owned(),
                )),
            },
        }
    }

    /// Runs one processing pass now (see [`Engine::spawn_pass`] for `claimed`).
    async fn run_pass(&self, txn: GlobalTxn, branches: Vec<Branch>, claimed: bool) -> PassResult {
        self.run_pass_inner(txn, branches, None, claimed).await
    }

    /// Runs a pass of a transaction the recovery scanner claimed, now: `txn` is the row as the claim left it.
    /// The pass's writes are fenced: they apply only while the partition's stored epoch is `fence`'s (the
    /// epoch the scanner owns the partition at).
    pub async fn run_pass_with(
        &self,
        txn: GlobalTxn,
        branches: Vec<Branch>,
        fence: Option<Fence>,
    ) -> PassResult {
        self.run_pass_inner(txn, branches, fence, true).await
    }

    /// Runs one pass now. If a pass for this gid is already running here, waits for it and reports its
    /// outcome instead of running a second one.
    async fn run_pass_inner(
        &self,
        txn: GlobalTxn,
        branches: Vec<Branch>,
        fence: Option<Fence>,
        claimed: bool,
    ) -> PassResult {
        let mut events = self.inner.events.subscribe();
        let cancel = self.inner.cancel.child_token();
        let first = match self.inner.inflight.lock() {
            Ok(mut set) => match set.entry(txn.gid.clone()) {
                std::collections::hash_map::Entry::Occupied(_) => false,
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(cancel.clone());
                    true
                }
            },
            Err(_) => false,
        };
        if !first {
            loop {
                match events.recv().await {
                    Ok(ev) if ev.gid == txn.gid => return ev.result,
                    Ok(_) => {}
                    // Missed events (or none will come): if the other pass is over, report what it stored.
                    Err(
                        broadcast::error::RecvError::Lagged(_)
                        | broadcast::error::RecvError::Closed,
                    ) => {
                        if !self.is_inflight(&txn.gid) {
                            return self.stored_result(&txn).await;
                        }
                        events = self.inner.events.subscribe();
                        if !self.is_inflight(&txn.gid) {
                            return self.stored_result(&txn).await;
                        }
                    }
                }
            }
        }
        let guard = InflightGuard {
            inner: &self.inner,
            gid: txn.gid.clone(),
        };
        let gid = txn.gid.clone();
        let gauge = self
            .inner
            .metrics
            .engine_inflight
            .with_label_values(&[txn.trans_type.as_str()]);
        gauge.inc();
        let result = driver::run(&self.inner, txn, branches, fence, claimed, cancel).await;
        gauge.dec();
        // Leave the in-flight set before announcing, so a waiter that missed the event can run its own pass.
        drop(guard);
        let _ = self.inner.events.send(PassEvent {
            gid,
            status: result.status,
            result: result.clone(),
        });
        result
    }
}

#[cfg(test)]
mod tests;
