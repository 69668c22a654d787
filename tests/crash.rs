//! Crash safety of a pass, on a real server and a business service with barrier semantics ([`Busi`]).
//!
//! - **Crash points.** Each scenario runs once to count how often its first pass meets each failpoint of
//!   [`braid::engine::FAILPOINTS`] (and the submit's own), then once per hit with the pass crashing there: the
//!   pass stops on the spot, its in-memory state is dropped, nothing more is sent or written, as when the
//!   process dies. Recovery (the scanner, after the claim ran out) finishes the transaction. Each run checks:
//!   no action of a step arrives after a compensation of that step was sent; no confirm/commit and
//!   cancel/rollback both reach one transaction; the final status is the one the scenario must reach; the
//!   ledger holds every effect exactly once for `succeed` and none for `failed` (balances conserved);
//!   nothing is left unfinished.
//! - **Against a real barrier.** The saga scenarios again with the bank of `support::bank`: balances, the
//!   SDK's barrier and a ledger in MariaDB; the ledger must show every action's effect exactly once for
//!   `succeed` and nothing left for `failed`. Without the durable `aborting` before the first compensation,
//!   a failing saga crashed after its compensations ends `succeed` here (the reported defect).
//! - **One pass at a time.** A pass longer than the retry interval, with a second replica scanning the same
//!   database, sends each call from one pass only.
//! - **Decisions before phase two.** A branch that registers and a `submit` that arrive while the timeout
//!   pass of a TCC/XA rolls back get 409, and no commit follows a rollback.
//!
//! The failpoints are process-wide, so every test here holds `fail::FailScenario` (one at a time).

// Panicking is how a test fails; clippy's allow-*-in-tests does not reach the scenario fns and the harness.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;
use support::bank::{self, Bank, Faults};
use support::{Backend, Busi, TestServer, busi, gid, saga_body, tcc_branch, test_config};

/// The failpoint a submit meets between its durable write and the first pass.
const SUBMIT_FAILPOINT: &str = "engine::after_submit_write";

/// A transaction to crash: how to start it, and how it must end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    /// Two sequential steps that succeed.
    SagaOk,
    /// Two sequential steps; TransIn answers FAILURE.
    SagaFails,
    /// Two concurrent steps; TransOut answers ONGOING once while TransIn answers FAILURE.
    SagaConcurrentFails,
    /// Two concurrent steps that succeed.
    SagaConcurrentOk,
    /// A msg submitted by the client.
    MsgSubmit,
    /// A prepared msg whose client vanished: the back-check answers SUCCESS.
    MsgBackCheck,
    /// A TCC with two branches, submitted.
    TccSubmit,
    /// A TCC with two branches that times out while prepared.
    TccTimeout,
    /// An XA with two branches, submitted.
    XaSubmit,
    /// An XA with two branches that times out while prepared.
    XaTimeout,
    /// A workflow whose client vanished: braid calls the resume callback.
    WorkflowResume,
}

impl Scenario {
    /// The final status the transaction must reach (`None`: the workflow's client decides it).
    fn expected(self) -> Option<&'static str> {
        match self {
            Self::SagaOk
            | Self::SagaConcurrentOk
            | Self::MsgSubmit
            | Self::MsgBackCheck
            | Self::TccSubmit
            | Self::XaSubmit => Some("succeed"),
            Self::SagaFails | Self::SagaConcurrentFails | Self::TccTimeout | Self::XaTimeout => {
                Some("failed")
            }
            Self::WorkflowResume => None,
        }
    }

    /// Starts the transaction and runs its first pass (synchronously: `wait_result`, or a scan).
    async fn drive(self, ts: &TestServer, busi: &Busi, g: &str) {
        let url = busi.url();
        let data = busi::req(30, "", "");
        match self {
            Self::SagaOk | Self::SagaFails | Self::SagaConcurrentFails | Self::SagaConcurrentOk => {
                let in_result = if matches!(self, Self::SagaFails | Self::SagaConcurrentFails) {
                    "FAILURE"
                } else {
                    ""
                };
                let mut body = saga_body(g, &url, "", in_result);
                body["wait_result"] = json!(true);
                if matches!(self, Self::SagaConcurrentFails | Self::SagaConcurrentOk) {
                    body["custom_data"] = json!(r#"{"concurrent":true}"#);
                }
                if matches!(self, Self::SagaConcurrentFails) {
                    busi.push("TransOut", &["ONGOING"]);
                }
                ts.post("submit", &body).await;
            }
            Self::MsgSubmit | Self::MsgBackCheck => {
                let body = json!({
                    "gid": g,
                    "trans_type": "msg",
                    "steps": [{"action": format!("{url}/TransOut")}, {"action": format!("{url}/TransIn")}],
                    "payloads": [data, data],
                    "query_prepared": format!("{url}/QueryPrepared"),
                    "wait_result": true,
                });
                let (status, reply) = ts.post("prepare", &body).await;
                assert_eq!(status, 200, "{reply}");
                submit_or_abandon(ts, g, "msg", matches!(self, Self::MsgSubmit)).await;
            }
            Self::TccSubmit | Self::TccTimeout => {
                let (status, reply) = ts
                    .post("prepare", &json!({"gid": g, "trans_type": "tcc"}))
                    .await;
                assert_eq!(status, 200, "{reply}");
                for (b, name) in [("01", "TransOut"), ("02", "TransIn")] {
                    let (status, reply) = ts
                        .post("registerBranch", &tcc_branch(g, b, &url, name, &data))
                        .await;
                    assert_eq!(status, 200, "{reply}");
                }
                submit_or_abandon(ts, g, "tcc", matches!(self, Self::TccSubmit)).await;
            }
            Self::XaSubmit | Self::XaTimeout => {
                let (status, reply) = ts
                    .post("prepare", &json!({"gid": g, "trans_type": "xa"}))
                    .await;
                assert_eq!(status, 200, "{reply}");
                for b in ["01", "02"] {
                    let branch = json!({"gid": g, "trans_type": "xa", "branch_id": b, "url": format!("{url}/Xa{b}")});
                    let (status, reply) = ts.post("registerBranch", &branch).await;
                    assert_eq!(status, 200, "{reply}");
                }
                submit_or_abandon(ts, g, "xa", matches!(self, Self::XaSubmit)).await;
            }
            Self::WorkflowResume => {
                let custom = json!({"name": "wf-crash", "data": ""}).to_string();
                let body = json!({"gid": g, "trans_type": "workflow", "custom_data": custom,
                    "query_prepared": format!("{url}/workflow/resume")});
                let (status, reply) = ts.post("prepareWorkflow", &body).await;
                assert_eq!(status, 200, "{reply}");
                ts.forward(60);
                ts.cron_once().await;
            }
        }
    }
}

/// The client submits the prepared `g` (synchronously), or vanishes: its timeout passes and a scan picks
/// the transaction up.
async fn submit_or_abandon(ts: &TestServer, g: &str, trans_type: &str, submit: bool) {
    if submit {
        ts.post(
            "submit",
            &json!({"gid": g, "trans_type": trans_type, "wait_result": true}),
        )
        .await;
    } else {
        ts.forward(60);
        ts.cron_once().await;
    }
}

/// Scans (after the claims and retry intervals ran out) until `g` is final; panics when it stays unfinished.
async fn recover(ts: &TestServer, g: &str) -> String {
    for _ in 0..12 {
        let status = ts.status(g).await;
        if status == "succeed" || status == "failed" {
            return status;
        }
        ts.forward(3600);
        ts.cron_once().await;
    }
    panic!(
        "{g} is stuck in '{}': {}",
        ts.status(g).await,
        ts.query(g).await
    );
}

/// The invariants of one finished run of `scenario` (see the module docs).
fn check_run(scenario: Scenario, busi: &Busi, g: &str, status: &str, at: &str) {
    let calls: Vec<_> = busi.calls().into_iter().filter(|c| c.gid == g).collect();
    let mut compensated = BTreeMap::new();
    for (i, c) in calls.iter().enumerate() {
        match c.op.as_str() {
            "compensate" => {
                compensated.entry(c.branch_id.clone()).or_insert(i);
            }
            "action" if c.trans_type == "saga" => assert!(
                !compensated.contains_key(&c.branch_id),
                "{scenario:?} crashed {at}: the action of step {} was sent after its compensation: {:?}",
                c.branch_id,
                calls.iter().map(|c| (&c.route, &c.op)).collect::<Vec<_>>()
            ),
            _ => {}
        }
    }
    let has = |op: &str| calls.iter().any(|c| c.op == op);
    assert!(
        !(has("confirm") && has("cancel")),
        "{scenario:?} crashed {at}: both confirm and cancel were sent"
    );
    assert!(
        !(has("commit") && has("rollback")),
        "{scenario:?} crashed {at}: both commit and rollback were sent"
    );
    if let Some(expected) = scenario.expected() {
        assert_eq!(status, expected, "{scenario:?} crashed {at}");
    }
    if matches!(
        scenario,
        Scenario::SagaOk
            | Scenario::SagaFails
            | Scenario::SagaConcurrentFails
            | Scenario::SagaConcurrentOk
    ) {
        let balances = busi.balances();
        if status == "succeed" {
            assert_eq!(
                balances,
                (9970, 10030),
                "{scenario:?} crashed {at}: every effect once"
            );
        } else {
            assert_eq!(
                balances,
                (10000, 10000),
                "{scenario:?} crashed {at}: no effect left"
            );
        }
    }
}

/// Lets recovery finish `g` and checks the run. A workflow stays with its client: recovery must call its
/// resume callback again.
async fn settle(ts: &TestServer, scenario: Scenario, busi: &Busi, g: &str, at: &str) {
    if scenario.expected().is_none() {
        let before = busi.calls_of("workflow/resume").len();
        ts.forward(3600);
        ts.cron_once().await;
        assert!(
            busi.calls_of("workflow/resume").len() > before,
            "{scenario:?} crashed {at}: a later scan calls the resume callback"
        );
        check_run(scenario, busi, g, "prepared", at);
    } else {
        let status = recover(ts, g).await;
        check_run(scenario, busi, g, &status, at);
    }
}

/// How often the first pass(es) of `scenario` meet each failpoint, in a run without crashes.
async fn count_hits(ts: &TestServer, scenario: Scenario) -> Vec<(&'static str, usize)> {
    let points: Vec<&'static str> = braid::engine::FAILPOINTS
        .iter()
        .copied()
        .chain([SUBMIT_FAILPOINT])
        .collect();
    let counters: Vec<Arc<AtomicUsize>> = points.iter().map(|_| Arc::default()).collect();
    for (p, c) in points.iter().zip(&counters) {
        let c = c.clone();
        fail::cfg_callback(*p, move || {
            c.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
    }
    let busi = Busi::start().await;
    let g = gid(&format!("crash-count-{scenario:?}").to_lowercase());
    scenario.drive(ts, &busi, &g).await;
    for p in &points {
        fail::remove(p);
    }
    settle(ts, scenario, &busi, &g, "nowhere").await;
    points
        .into_iter()
        .zip(counters)
        .map(|(p, c)| (p, c.load(Ordering::SeqCst)))
        .collect()
}

/// Crashes `scenario` at every hit of every failpoint in turn and checks each recovery.
async fn crash_everywhere(scenario: Scenario) {
    let _failpoints = fail::FailScenario::setup();
    let ts = TestServer::start(Backend::Sqlite).await;
    let hits = count_hits(&ts, scenario).await;
    assert!(
        hits.iter()
            .any(|(p, n)| *p == "pass::before_call" && *n > 0),
        "{scenario:?} calls a branch in its first pass: {hits:?}"
    );
    let mut crashes = 0;
    for (point, n) in hits {
        for skip in 0..n {
            let actions = if skip == 0 {
                "1*return->off".to_owned()
            } else {
                format!("{skip}*off->1*return->off")
            };
            fail::cfg(point, &actions).unwrap();
            let busi = Busi::start().await;
            let g = gid(&format!("crash-{scenario:?}").to_lowercase());
            scenario.drive(&ts, &busi, &g).await;
            fail::remove(point);
            settle(
                &ts,
                scenario,
                &busi,
                &g,
                &format!("at {point} hit {}", skip + 1),
            )
            .await;
            crashes += 1;
        }
    }
    println!("{scenario:?}: {crashes} crash points recovered");
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saga_recovers_from_a_crash_at_every_point() {
    crash_everywhere(Scenario::SagaOk).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_saga_recovers_from_a_crash_at_every_point() {
    crash_everywhere(Scenario::SagaFails).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_failing_saga_recovers_from_a_crash_at_every_point() {
    crash_everywhere(Scenario::SagaConcurrentFails).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_saga_recovers_from_a_crash_at_every_point() {
    crash_everywhere(Scenario::SagaConcurrentOk).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msg_recovers_from_a_crash_at_every_point() {
    crash_everywhere(Scenario::MsgSubmit).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msg_back_check_recovers_from_a_crash_at_every_point() {
    crash_everywhere(Scenario::MsgBackCheck).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcc_recovers_from_a_crash_at_every_point() {
    crash_everywhere(Scenario::TccSubmit).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcc_timeout_recovers_from_a_crash_at_every_point() {
    crash_everywhere(Scenario::TccTimeout).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xa_recovers_from_a_crash_at_every_point() {
    crash_everywhere(Scenario::XaSubmit).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xa_timeout_recovers_from_a_crash_at_every_point() {
    crash_everywhere(Scenario::XaTimeout).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflow_resume_recovers_from_a_crash_at_every_point() {
    crash_everywhere(Scenario::WorkflowResume).await;
}

/// A pass longer than the retry interval (slow branches), with a second replica scanning the same MariaDB
/// database all along: every call comes from the one pass (the claim is extended before each call it would
/// not cover), and the second replica never takes the transaction over.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_long_pass_runs_on_one_replica_only() {
    let _failpoints = fail::FailScenario::setup();
    let dsn = support::fresh_dsn(Backend::Mysql);
    let a = TestServer::start_with(test_config(&dsn)).await;
    let b = TestServer::start_with(test_config(&dsn)).await;
    let busi = Busi::start().await;
    for route in ["TransOut", "TransIn"] {
        busi.delay(route, Duration::from_millis(1500));
    }
    let g = gid("one-pass");
    let mut body = saga_body(&g, &busi.url(), "", "");
    // Five steps of 1.5 s each: 7.5 s, well past the first claim (request_timeout + 2 s = 4 s), so the
    // pass has to renew its claim while it runs or the other replica takes the saga over.
    for _ in 0..3 {
        body["steps"]
            .as_array_mut()
            .unwrap()
            .push(json!({"action": format!("{}/TransOut", busi.url()), "compensate": format!("{}/TransOutRevert", busi.url())}));
        body["payloads"]
            .as_array_mut()
            .unwrap()
            .push(json!(busi::req(0, "", "")));
    }
    body["retry_interval"] = json!(1);
    body["request_timeout"] = json!(2);

    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scans = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut picked = Vec::new();
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                picked.extend(b.cron_once().await);
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            b.server.stop().await;
            picked
        })
    };
    a.submit_ok(&body).await;
    a.wait_pass(&g).await;
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let picked = scans.await.unwrap();
    assert_eq!(a.status(&g).await, "succeed");
    assert!(
        picked.is_empty(),
        "the other replica took over a transaction in flight: {picked:?}"
    );
    assert_eq!(
        busi.routes_of(&g),
        ["TransOut", "TransIn", "TransOut", "TransOut", "TransOut"],
        "each action once, from one pass"
    );
    a.stop().await;
}

/// A TCC or XA whose timeout pass is rolling back (its first cancel/rollback is slow): a branch that
/// registers and a `submit` that arrive meanwhile get 409, since `aborting` was written before the first
/// rollback call; the transaction ends `failed` and no branch is ever sent confirm/commit.
async fn late_register_and_submit_are_refused(trans_type: &str) {
    let _failpoints = fail::FailScenario::setup();
    let ts = Arc::new(TestServer::start(Backend::Sqlite).await);
    let busi = Busi::start().await;
    let url = busi.url();
    let g = gid(&format!("{trans_type}-late"));
    let data = busi::req(30, "", "");
    let branch = |b: &str, name: &str| match trans_type {
        "tcc" => tcc_branch(&g, b, &url, name, &data),
        _ => {
            json!({"gid": g, "trans_type": "xa", "branch_id": b, "url": format!("{url}/{name}Xa")})
        }
    };
    let (status, reply) = ts
        .post(
            "prepare",
            &json!({"gid": g, "trans_type": trans_type, "timeout_to_fail": 1}),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    let (status, reply) = ts.post("registerBranch", &branch("01", "TransOut")).await;
    assert_eq!(status, 200, "{reply}");
    // The rollback of branch 01 takes a while: the window in which the late calls arrive.
    let slow = if trans_type == "tcc" {
        "TransOutRevert"
    } else {
        "TransOutXa"
    };
    busi.delay(slow, Duration::from_millis(1500));
    ts.forward(2);
    let scanner = {
        let ts = ts.clone();
        tokio::spawn(async move { ts.cron_once().await })
    };
    busi.wait_calls(slow, 1).await;

    let (status, reply) = ts.post("registerBranch", &branch("02", "TransIn")).await;
    assert_eq!(status, 409, "a late registerBranch is refused: {reply}");
    let (status, reply) = ts
        .post("submit", &json!({"gid": g, "trans_type": trans_type}))
        .await;
    assert_eq!(status, 409, "a late submit is refused: {reply}");
    scanner.await.unwrap();

    let status = recover(&ts, &g).await;
    assert_eq!(status, "failed");
    let ops: Vec<String> = busi
        .calls()
        .into_iter()
        .filter(|c| c.gid == g)
        .map(|c| c.op)
        .collect();
    assert!(
        ops.iter()
            .all(|op| op == "cancel" || op == "rollback" || op.is_empty()),
        "only rollbacks were sent: {ops:?}"
    );
    Arc::into_inner(ts).unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xa_late_register_and_submit_get_409_while_rolling_back() {
    late_register_and_submit_are_refused("xa").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcc_late_register_and_submit_get_409_while_rolling_back() {
    late_register_and_submit_are_refused("tcc").await;
}

/// A saga against the bank: accounts and the sub-transaction barrier in MariaDB, through the SDK.
async fn bank_saga(ts: &TestServer, bank: &Bank, g: &str, concurrent: bool, fails: bool) {
    let url = bank.url();
    let mut body = json!({
        "gid": g,
        "trans_type": "saga",
        "steps": [
            {"action": format!("{url}/TransOut"), "compensate": format!("{url}/TransOutRevert")},
            {"action": format!("{url}/TransIn"), "compensate": format!("{url}/TransInRevert")},
        ],
        "payloads": [json!({"amount": 30}).to_string(), json!({"amount": 30, "fail": fails}).to_string()],
        "wait_result": true,
    });
    if concurrent {
        body["custom_data"] = json!(r#"{"concurrent":true}"#);
    }
    ts.post("submit", &body).await;
}

/// The bank's ledger for `g` after recovery: a `succeed` saga has each action's effect exactly once and no
/// compensation; a `failed` one has nothing left (what an action did, its compensation undid, each once).
async fn check_bank(bank: &Bank, g: &str, status: &str, fails: bool, at: &str) {
    assert_eq!(
        status,
        if fails { "failed" } else { "succeed" },
        "crashed {at}"
    );
    let ledger: BTreeMap<(String, String), (i64, i64)> = bank
        .ledger()
        .await
        .into_iter()
        .filter(|((gid, _, _), _)| gid == g)
        .map(|((_, branch, op), a)| ((branch, op), (a.count, a.delta)))
        .collect();
    let key = |b: &str, op: &str| (b.to_owned(), op.to_owned());
    if status == "succeed" {
        let expected = BTreeMap::from([
            (key("01", "action"), (1, -30)),
            (key("02", "action"), (1, 30)),
        ]);
        assert_eq!(ledger, expected, "crashed {at}: every effect exactly once");
    } else {
        for ((branch, op), (count, _)) in &ledger {
            assert_eq!(
                *count, 1,
                "crashed {at}: {branch}/{op} applied {count} times"
            );
        }
        let net: i64 = ledger.values().map(|(_, d)| d).sum();
        assert_eq!(net, 0, "crashed {at}: effects left behind: {ledger:?}");
        for b in ["01", "02"] {
            assert_eq!(
                ledger.contains_key(&key(b, "action")),
                ledger.contains_key(&key(b, "compensate")),
                "crashed {at}: {b} has an action without its compensation or the reverse: {ledger:?}"
            );
        }
    }
    assert_eq!(
        bank.total().await,
        2 * bank::INITIAL_BALANCE,
        "crashed {at}: money conserved"
    );
}

/// The saga scenarios once more, against a real barrier in MariaDB instead of the in-memory ledger:
/// every hit of every failpoint, sequential and concurrent, succeeding and failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saga_crash_points_hold_against_a_real_barrier() {
    let _failpoints = fail::FailScenario::setup();
    let ts = TestServer::start(Backend::Sqlite).await;
    let bank = Bank::start(1, Faults::none()).await;
    let mut crashes = 0;
    for (concurrent, fails) in [(false, false), (false, true), (true, false), (true, true)] {
        let name = format!("bank-{}-{}", if concurrent { "conc" } else { "seq" }, fails);
        let points: Vec<&'static str> = braid::engine::FAILPOINTS
            .iter()
            .copied()
            .chain([SUBMIT_FAILPOINT])
            .collect();
        let counters: Vec<Arc<AtomicUsize>> = points.iter().map(|_| Arc::default()).collect();
        for (p, c) in points.iter().zip(&counters) {
            let c = c.clone();
            fail::cfg_callback(*p, move || {
                c.fetch_add(1, Ordering::SeqCst);
            })
            .unwrap();
        }
        let g = gid(&format!("{name}-count"));
        bank_saga(&ts, &bank, &g, concurrent, fails).await;
        for p in &points {
            fail::remove(p);
        }
        let status = recover(&ts, &g).await;
        check_bank(&bank, &g, &status, fails, "nowhere").await;
        for (point, counter) in points.iter().zip(&counters) {
            for skip in 0..counter.load(Ordering::SeqCst) {
                let actions = if skip == 0 {
                    "1*return->off".to_owned()
                } else {
                    format!("{skip}*off->1*return->off")
                };
                fail::cfg(*point, &actions).unwrap();
                let g = gid(&name);
                bank_saga(&ts, &bank, &g, concurrent, fails).await;
                fail::remove(point);
                let at = format!("{name} at {point} hit {}", skip + 1);
                let status = recover(&ts, &g).await;
                check_bank(&bank, &g, &status, fails, &at).await;
                crashes += 1;
            }
        }
    }
    println!("bank sagas: {crashes} crash points recovered");
    assert!(crashes > 20, "{crashes}");
    bank.stop().await;
    ts.stop().await;
}
