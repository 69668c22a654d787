//! The state machines with scripted branch answers: a real engine on an in-memory SQLite store and its
//! group-commit writer, but branches that answer what each test says ([`Script`]), and time moved by the
//! store clock. Each test checks the calls made and their order, the stored state and the next retry time.
//! Every call also checks the rule of the driver: a compensation, cancel or rollback is only sent once
//! `aborting` is durable, and a confirm, commit or msg action only once `submitted` is.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::*;
use crate::invoke::{BranchCall, BranchCaller, CallOutcome};
use crate::store::testing::{TestDb, sqlite_memory_store};
use crate::store::writer::{Writer, WriterOptions};

/// Scripted branches: answers queued per `(branch_id, op)` (`SUCCESS` when none is queued), every call
/// recorded, and each call checked against the stored status.
struct Script {
    store: DynStore,
    answers: Mutex<HashMap<(String, String), VecDeque<CallOutcome>>>,
    calls: Mutex<Vec<(String, String)>>,
    violations: Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl BranchCaller for Script {
    async fn call(&self, call: &BranchCall<'_>) -> CallOutcome {
        if let Ok(mut calls) = self.calls.lock() {
            calls.push((call.branch_id.to_owned(), call.op.to_owned()));
        }
        let needed = match call.op {
            "compensate" | "cancel" | "rollback" => Some(GlobalStatus::Aborting),
            "confirm" | "commit" => Some(GlobalStatus::Submitted),
            "action" if call.trans_type == TransType::Msg => Some(GlobalStatus::Submitted),
            _ => None,
        };
        if let Some(needed) = needed {
            let stored = Gid::parse(call.gid)
                .ok()
                .map(|g| async move { self.store.find_txn(&g).await });
            let status = match stored {
                Some(f) => f.await.ok().flatten().map(|t| t.status),
                None => None,
            };
            if status != Some(needed)
                && let Ok(mut v) = self.violations.lock()
            {
                v.push(format!(
                    "{} {}/{} sent while the stored status was {status:?}, not {needed}",
                    call.gid, call.branch_id, call.op
                ));
            }
        }
        self.answers
            .lock()
            .ok()
            .and_then(|mut a| {
                a.get_mut(&(call.branch_id.to_owned(), call.op.to_owned()))
                    .and_then(VecDeque::pop_front)
            })
            .unwrap_or(CallOutcome::Success)
    }

    async fn post_json(&self, _url: &str, _body: &serde_json::Value) -> Result<(), String> {
        Ok(())
    }
}

/// An engine on a fresh in-memory store with scripted branches.
struct Harness {
    engine: Engine,
    script: Arc<Script>,
    clock: StoreClock,
    cancel: CancellationToken,
    db: TestDb,
}

impl Harness {
    async fn new() -> Self {
        let db = sqlite_memory_store().await;
        let metrics = Arc::new(Metrics::new());
        let clock = StoreClock::anchored(Millis(1_700_000_000_000));
        let (writer, handle) =
            Writer::new(db.store.clone(), WriterOptions::default(), metrics.clone());
        let cancel = CancellationToken::new();
        tokio::spawn(writer.run(cancel.clone()));
        let script = Arc::new(Script {
            store: db.store.clone(),
            answers: Mutex::default(),
            calls: Mutex::default(),
            violations: Mutex::default(),
        });
        let engine = Engine::new(
            db.store.clone(),
            handle,
            script.clone(),
            clock.clone(),
            EngineOptions::default(),
            metrics,
        );
        Self {
            engine,
            script,
            clock,
            cancel,
            db,
        }
    }

    /// Queues answers for `(branch_id, op)`.
    fn answer(&self, branch_id: &str, op: &str, outcomes: &[CallOutcome]) {
        if let Ok(mut a) = self.script.answers.lock() {
            a.entry((branch_id.to_owned(), op.to_owned()))
                .or_default()
                .extend(outcomes.iter().cloned());
        }
    }

    /// The calls so far, as `branch_id/op`, and forgets them.
    fn take_calls(&self) -> Vec<String> {
        self.script
            .calls
            .lock()
            .map(|mut c| c.drain(..).map(|(b, op)| format!("{b}/{op}")).collect())
            .unwrap_or_default()
    }

    async fn txn(&self, gid: &str) -> GlobalTxn {
        self.db
            .store
            .find_txn(&Gid::parse(gid).unwrap())
            .await
            .unwrap()
            .unwrap()
    }

    /// Moves time forward by `secs` and runs one scan by hand; returns the gids it took.
    async fn scan_after(&self, secs: u64) -> Vec<String> {
        self.clock.advance(Duration::from_secs(secs));
        let claimed = self
            .engine
            .claim_due(ClaimScope::All, 60, 100)
            .await
            .unwrap();
        let mut gids = Vec::new();
        for txn in claimed.txns {
            gids.push(txn.gid.to_string());
            let branches = self.engine.load_branches(&txn.gid).await.unwrap();
            self.engine.run_pass_with(txn, branches, None).await;
        }
        gids
    }

    async fn finish(self) {
        let violations = self
            .script
            .violations
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default();
        assert!(violations.is_empty(), "{violations:#?}");
        self.engine.shutdown(Duration::from_secs(1)).await;
        self.cancel.cancel();
        self.db.finish().await;
    }
}

fn saga(gid: &str, steps: usize, options: TransOptions) -> TxnRequest {
    TxnRequest {
        gid: Gid::parse(gid).unwrap(),
        trans_type: TransType::Saga,
        steps: (0..steps)
            .map(|i| {
                BTreeMap::from([
                    ("action".to_owned(), format!("http://busi/a{i}")),
                    ("compensate".to_owned(), format!("http://busi/c{i}")),
                ])
            })
            .collect(),
        payloads: vec![b"{}".to_vec(); steps],
        query_prepared: String::new(),
        custom_data: String::new(),
        protocol: Protocol::Http,
        options: TransOptions {
            wait_result: true,
            ..options
        },
        rollback_reason: String::new(),
        req_extra: BTreeMap::new(),
    }
}

fn failure() -> CallOutcome {
    CallOutcome::Failure("FAILURE".to_owned())
}

fn error() -> CallOutcome {
    CallOutcome::Error("connection refused".to_owned())
}

async fn submit(h: &Harness, req: TxnRequest) -> PassResult {
    match h.engine.submit(req).await.unwrap() {
        SubmitOutcome::Processed(r) => r,
        SubmitOutcome::Accepted => panic!("a wait_result submit reports its pass"),
    }
}

#[tokio::test]
async fn saga_success_is_one_pass_in_step_order() {
    let h = Harness::new().await;
    let r = submit(&h, saga("s-ok", 3, TransOptions::default())).await;
    assert_eq!(r.status, GlobalStatus::Succeed);
    assert_eq!(h.take_calls(), ["01/action", "02/action", "03/action"]);
    let t = h.txn("s-ok").await;
    assert_eq!(t.status, GlobalStatus::Succeed);
    assert_eq!(
        t.next_cron_time, None,
        "a final transaction is never scanned"
    );
    h.finish().await;
}

#[tokio::test]
async fn saga_failure_compensates_in_reverse_once_aborting_is_durable() {
    let h = Harness::new().await;
    h.answer("02", "action", &[failure()]);
    let r = submit(&h, saga("s-fail", 3, TransOptions::default())).await;
    assert_eq!(r.status, GlobalStatus::Failed);
    assert_eq!(
        h.take_calls(),
        ["01/action", "02/action", "02/compensate", "01/compensate"],
        "step 3 never runs; the failed step is compensated too (its action may have half-run)"
    );
    assert_eq!(h.txn("s-fail").await.status, GlobalStatus::Failed);
    h.finish().await;
}

#[tokio::test]
async fn saga_ongoing_retries_after_the_interval_at_the_same_interval() {
    let h = Harness::new().await;
    h.answer(
        "01",
        "action",
        &[CallOutcome::Ongoing, CallOutcome::Ongoing],
    );
    let r = submit(&h, saga("s-ongoing", 2, TransOptions::default())).await;
    assert_eq!(r.status, GlobalStatus::Submitted);
    let t = h.txn("s-ongoing").await;
    let base = EngineOptions::default().retry_interval;
    assert_eq!(t.next_cron_interval, base, "ONGOING keeps the interval");
    assert!(
        h.scan_after(u64::try_from(base).unwrap() / 2)
            .await
            .is_empty(),
        "not due yet"
    );
    assert_eq!(
        h.scan_after(u64::try_from(base).unwrap()).await,
        ["s-ongoing"]
    );
    assert_eq!(h.txn("s-ongoing").await.next_cron_interval, base);
    assert_eq!(
        h.scan_after(u64::try_from(base).unwrap() + 1).await,
        ["s-ongoing"]
    );
    assert_eq!(h.txn("s-ongoing").await.status, GlobalStatus::Succeed);
    assert_eq!(
        h.take_calls(),
        ["01/action", "01/action", "01/action", "02/action"]
    );
    h.finish().await;
}

#[tokio::test]
async fn saga_errors_back_off_exponentially_up_to_the_cap() {
    let h = Harness::new().await;
    h.answer("01", "action", &[error(), error(), error()]);
    let r = submit(&h, saga("s-error", 1, TransOptions::default())).await;
    assert_eq!(r.status, GlobalStatus::Submitted);
    let mut intervals = vec![h.txn("s-error").await.next_cron_interval];
    for _ in 0..2 {
        let wait = u64::try_from(*intervals.last().unwrap()).unwrap() + 1;
        assert_eq!(h.scan_after(wait).await, ["s-error"]);
        intervals.push(h.txn("s-error").await.next_cron_interval);
    }
    assert_eq!(
        intervals,
        [20, 40, 80],
        "doubling from the base interval of 10 s"
    );
    assert_eq!(h.scan_after(81).await, ["s-error"]);
    assert_eq!(h.txn("s-error").await.status, GlobalStatus::Succeed);
    h.finish().await;
}

#[tokio::test]
async fn saga_timeout_to_fail_rolls_back_what_ran() {
    let h = Harness::new().await;
    h.answer("02", "action", &vec![CallOutcome::Ongoing; 5]);
    let options = TransOptions {
        timeout_to_fail: 30,
        ..TransOptions::default()
    };
    submit(&h, saga("s-timeout", 2, options)).await;
    assert_eq!(h.scan_after(31).await, ["s-timeout"]);
    let t = h.txn("s-timeout").await;
    assert_eq!(t.status, GlobalStatus::Failed);
    assert_eq!(t.rollback_reason, "Timeout after 30 seconds");
    assert_eq!(
        h.take_calls(),
        ["01/action", "02/action", "02/compensate", "01/compensate"]
    );
    h.finish().await;
}

#[tokio::test]
async fn saga_retry_limit_spends_one_retry_per_pass_then_rolls_back() {
    let h = Harness::new().await;
    h.answer("01", "action", &vec![error(); 5]);
    let options = TransOptions {
        retry_limit: 2,
        ..TransOptions::default()
    };
    submit(&h, saga("s-limit", 1, options)).await;
    for used in 1..=2 {
        let t = h.txn("s-limit").await;
        assert_eq!(
            (t.status, t.options.retry_count),
            (GlobalStatus::Submitted, used),
            "the retry count is stored"
        );
        assert_eq!(h.scan_after(3600).await, ["s-limit"]);
    }
    let t = h.txn("s-limit").await;
    assert_eq!(t.status, GlobalStatus::Failed);
    assert_eq!(
        t.rollback_reason,
        "RetryCount is greater than RetryLimit, RetryLimit: 2"
    );
    assert_eq!(
        h.take_calls(),
        ["01/action", "01/action", "01/action", "01/compensate"]
    );
    h.finish().await;
}

fn msg(gid: &str) -> TxnRequest {
    TxnRequest {
        trans_type: TransType::Msg,
        query_prepared: "http://busi/QueryPrepared".to_owned(),
        options: TransOptions::default(),
        ..saga(gid, 2, TransOptions::default())
    }
}

#[tokio::test]
async fn msg_back_check_decides_a_prepared_msg() {
    let h = Harness::new().await;
    for g in ["m-fail", "m-ongoing", "m-ok"] {
        h.engine.prepare(msg(g)).await.unwrap();
    }
    h.answer(
        "00",
        "msg",
        &[failure(), CallOutcome::Ongoing, CallOutcome::Success],
    );
    // Scans take due rows earliest first: all three are due at the same time, in creation order.
    let picked = h.scan_after(3600).await;
    assert_eq!(picked.len(), 3, "{picked:?}");
    let statuses: Vec<GlobalStatus> = [
        h.txn("m-fail").await.status,
        h.txn("m-ongoing").await.status,
        h.txn("m-ok").await.status,
    ]
    .to_vec();
    // Which msg got which answer depends on the claim order; the set of outcomes does not.
    let mut sorted: Vec<String> = statuses.iter().map(ToString::to_string).collect();
    sorted.sort();
    assert_eq!(sorted, ["failed", "prepared", "succeed"]);
    let calls = h.take_calls();
    assert_eq!(
        calls.iter().filter(|c| *c == "00/msg").count(),
        3,
        "{calls:?}"
    );
    assert_eq!(
        calls.iter().filter(|c| c.ends_with("/action")).count(),
        2,
        "only the msg the back-check confirmed runs its actions: {calls:?}"
    );
    h.finish().await;
}

#[tokio::test]
async fn msg_submit_runs_actions_and_retries_a_failing_one() {
    let h = Harness::new().await;
    h.engine.prepare(msg("m-submit")).await.unwrap();
    h.answer("02", "action", &[error()]);
    let mut req = msg("m-submit");
    req.options.wait_result = true;
    let r = submit(&h, req).await;
    assert_eq!(r.status, GlobalStatus::Submitted);
    assert_eq!(h.scan_after(3600).await, ["m-submit"]);
    assert_eq!(h.txn("m-submit").await.status, GlobalStatus::Succeed);
    assert_eq!(
        h.take_calls(),
        ["01/action", "02/action", "02/action"],
        "a msg action that succeeded is not called again"
    );
    h.finish().await;
}

async fn tcc_with_two_branches(h: &Harness, gid: &str, options: TransOptions) {
    let g = Gid::parse(gid).unwrap();
    let req = TxnRequest {
        trans_type: TransType::Tcc,
        steps: Vec::new(),
        payloads: Vec::new(),
        options,
        ..saga(gid, 0, TransOptions::default())
    };
    h.engine.prepare(req).await.unwrap();
    for b in ["01", "02"] {
        let fields = BTreeMap::from([
            ("confirm".to_owned(), format!("http://busi/confirm{b}")),
            ("cancel".to_owned(), format!("http://busi/cancel{b}")),
        ]);
        h.engine
            .register_branch(
                &g,
                TransType::Tcc,
                BranchId::new(b),
                b"{}".to_vec(),
                &fields,
            )
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn tcc_submit_confirms_every_branch() {
    let h = Harness::new().await;
    tcc_with_two_branches(&h, "t-ok", TransOptions::default()).await;
    h.answer("02", "confirm", &[CallOutcome::Ongoing]);
    let mut req = saga("t-ok", 0, TransOptions::default());
    req.trans_type = TransType::Tcc;
    let r = submit(&h, req).await;
    assert_eq!(r.status, GlobalStatus::Submitted, "confirm 02 is ongoing");
    assert_eq!(h.scan_after(3600).await, ["t-ok"]);
    assert_eq!(h.txn("t-ok").await.status, GlobalStatus::Succeed);
    let mut calls = h.take_calls();
    calls.sort();
    assert_eq!(
        calls,
        ["01/confirm", "02/confirm", "02/confirm"],
        "the confirms go out together; only the ongoing one is sent again"
    );
    h.finish().await;
}

#[tokio::test]
async fn tcc_timeout_cancels_in_reverse_once_aborting_is_durable() {
    let h = Harness::new().await;
    let options = TransOptions {
        timeout_to_fail: 20,
        ..TransOptions::default()
    };
    tcc_with_two_branches(&h, "t-timeout", options).await;
    assert!(h.scan_after(10).await.is_empty(), "not timed out yet");
    assert_eq!(h.scan_after(11).await, ["t-timeout"]);
    let t = h.txn("t-timeout").await;
    assert_eq!(t.status, GlobalStatus::Failed);
    assert_eq!(t.rollback_reason, "Timeout after 20 seconds");
    assert_eq!(h.take_calls(), ["02/cancel", "01/cancel"]);
    h.finish().await;
}

#[tokio::test]
async fn tcc_abort_by_the_client_cancels() {
    let h = Harness::new().await;
    tcc_with_two_branches(&h, "t-abort", TransOptions::default()).await;
    h.answer("01", "cancel", &[error()]);
    let outcome = h
        .engine
        .abort(
            &Gid::parse("t-abort").unwrap(),
            TransType::Tcc,
            "the client gave up".to_owned(),
        )
        .await
        .unwrap();
    assert!(matches!(
        outcome,
        SubmitOutcome::Accepted | SubmitOutcome::Processed(_)
    ));
    // The abort's pass runs in the background; a scan finishes what it left.
    for _ in 0..3 {
        if h.txn("t-abort").await.status == GlobalStatus::Failed {
            break;
        }
        h.scan_after(3600).await;
    }
    let t = h.txn("t-abort").await;
    assert_eq!(t.status, GlobalStatus::Failed);
    assert_eq!(t.rollback_reason, "the client gave up");
    let calls = h.take_calls();
    assert_eq!(
        calls.iter().filter(|c| c.ends_with("/confirm")).count(),
        0,
        "{calls:?}"
    );
    assert_eq!(
        calls.iter().filter(|c| *c == "01/cancel").count(),
        2,
        "cancel 01 is retried after its error: {calls:?}"
    );
    h.finish().await;
}

#[tokio::test]
async fn xa_timeout_rolls_back_and_submit_commits() {
    let h = Harness::new().await;
    for (g, timeout) in [("x-timeout", 20), ("x-ok", 0)] {
        let gid = Gid::parse(g).unwrap();
        let req = TxnRequest {
            trans_type: TransType::Xa,
            options: TransOptions {
                timeout_to_fail: timeout,
                ..TransOptions::default()
            },
            ..saga(g, 0, TransOptions::default())
        };
        h.engine.prepare(req).await.unwrap();
        let fields = BTreeMap::from([("url".to_owned(), "http://busi/xa".to_owned())]);
        h.engine
            .register_branch(
                &gid,
                TransType::Xa,
                BranchId::new("01"),
                Vec::new(),
                &fields,
            )
            .await
            .unwrap();
    }
    let mut req = saga("x-ok", 0, TransOptions::default());
    req.trans_type = TransType::Xa;
    assert_eq!(submit(&h, req).await.status, GlobalStatus::Succeed);
    assert_eq!(h.take_calls(), ["01/commit"]);
    assert_eq!(h.scan_after(21).await, ["x-timeout"]);
    assert_eq!(h.txn("x-timeout").await.status, GlobalStatus::Failed);
    assert_eq!(h.take_calls(), ["01/rollback"]);
    h.finish().await;
}
