//! Chaos: three `braid serve` replicas share one MariaDB store (`sql` leases, 4/3/1 s lease timing, 1 s
//! scans and retries) and take money sagas (sequential and concurrent, some meant to fail) and two-phase
//! msgs through random replicas, while a killer SIGKILLs a random replica every 2-4 s and restarts it under
//! the same node id (until then, the load's calls to it fail and count as not acknowledged). Every branch is the [`Bank`]'s, behind the SDK's MySQL barrier, with injected 500s
//! (before and after the work), 425s and stalls past the request timeout.
//!
//! When the load stops, the killer stops with all replicas up, and every acknowledged transaction (a
//! submit, or for a msg whose client "died" after it, a prepare answered 200) must become final within
//! 120 s. Then each outcome is checked exactly against the bank's ledger, and the money total against the
//! initial one.
//!
//! `BRAID_CHAOS_SECS` sets the load duration (default 30), `BRAID_CHAOS_SEED` the seed (default random,
//! always printed). A seed fixes the workers' choices (kinds, amounts, pauses) and the killer's; the
//! interleaving of concurrent calls, and so the exact faults, still vary between runs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use braid_client::DtmClient;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use support::bank::{Applied, Bank, Effect, Fault, Faults, INITIAL_BALANCE, USERS};
use support::process::{BraidProcess, CLUSTER_FLAGS};
use support::{Backend, drop_database, fresh_dsn};
use tokio::time::Instant;

const REPLICAS: usize = 3;
const WORKERS: u64 = 3;
/// The branch request timeout the replicas use; the bank's stalls last longer.
const REQUEST_TIMEOUT_SECS: u64 = 2;
/// Beyond [`CLUSTER_FLAGS`]: fast retries and short timeouts.
const FLAGS: &[&str] = &[
    "--retry-interval",
    "1",
    "--backoff-cap",
    "4",
    "--request-timeout",
    "2",
    // Prepared msgs whose client died are back-checked after 3 s.
    "--timeout-to-fail",
    "3",
];

/// The flags of every replica.
fn flags() -> Vec<&'static str> {
    CLUSTER_FLAGS.iter().chain(FLAGS).copied().collect()
}
/// How long acknowledged transactions get to become final once the load and the killing stopped.
const DRAIN_LIMIT: Duration = Duration::from_secs(120);

/// How a msg's client behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MsgPath {
    /// `do_and_submit`: prepare, the local debit behind the msg barrier, submit.
    DoAndSubmit,
    /// `do_and_submit` whose local work fails with FAILURE: the SDK aborts.
    LocalFailure,
    /// Prepare and the local debit, then the client "dies": the back-check must find the commit.
    CrashAfterLocal,
    /// Prepare, then the client "dies" before its local work: the back-check must roll it back.
    CrashBeforeLocal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// TransOut then TransIn; with `fail`, TransIn answers FAILURE.
    Saga { concurrent: bool, fail: bool },
    /// A local debit of user 1 (branch `00`, op `msg`), then TransIn (branch `01`).
    Msg(MsgPath),
}

/// One transaction the load started.
#[derive(Debug, Clone)]
struct Txn {
    gid: String,
    kind: Kind,
    amount: i64,
    /// Its submit (or, for a msg whose client died after it, its prepare) answered 200.
    acked: bool,
    /// The final status it must reach if the server knows it, when the client can tell.
    expect: Option<&'static str>,
}

impl std::fmt::Display for Txn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let acked = if self.acked { "acked" } else { "not acked" };
        write!(
            f,
            "{} ({:?}, amount {}, {acked})",
            self.gid, self.kind, self.amount
        )
    }
}

/// The replicas' API URLs by slot (a killed replica's until it is back on a new port).
type Urls = Arc<RwLock<Vec<String>>>;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_killed_under_load_lose_nothing_and_money_is_conserved() {
    let secs = env_u64("BRAID_CHAOS_SECS").unwrap_or(30);
    let seed = env_u64("BRAID_CHAOS_SEED").unwrap_or_else(|| rand::rng().random());
    eprintln!("chaos: seed {seed}, {secs} s of load (replay: BRAID_CHAOS_SEED={seed})");

    let bank = Bank::start(
        seed,
        Faults {
            error_before: 0.05,
            error_after: 0.05,
            ongoing: 0.05,
            stall: 0.03,
            stall_for: Duration::from_secs(REQUEST_TIMEOUT_SECS + 1),
        },
    )
    .await;
    let initial_total = bank.total().await;
    let dsn = fresh_dsn(Backend::Mysql);
    let mut replicas = Vec::new();
    for slot in 0..REPLICAS {
        replicas.push(BraidProcess::spawn(&dsn, &format!("r{slot}"), &flags()).await);
    }
    let urls: Urls = Arc::new(RwLock::new(
        replicas.iter().map(BraidProcess::url).collect(),
    ));

    let stop_killing = Arc::new(AtomicBool::new(false));
    let killer = tokio::spawn(kill_and_restart(
        dsn.clone(),
        replicas,
        urls.clone(),
        stop_killing.clone(),
        seed,
    ));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..WORKERS {
        workers.spawn(load(w, seed, deadline, urls.clone(), bank.clone()));
    }
    let mut txns = Vec::new();
    while let Some(done) = workers.join_next().await {
        txns.extend(done.expect("load worker"));
    }
    stop_killing.store(true, Ordering::SeqCst);
    let (replicas, kills) = killer.await.expect("killer task");
    let urls: Vec<String> = replicas.iter().map(BraidProcess::url).collect();

    let statuses = drain(&urls, &txns).await;
    drop(replicas);
    // Stalled calls finish their work late; the ledger is read once none is left.
    let idle = bank.wait_idle(Duration::from_secs(30)).await;
    let ledger = bank.ledger().await;
    let report = Report::new(&txns, &statuses, &ledger);
    let total = bank.total().await;
    let balances = bank.balances().await;
    let by_user: HashMap<i64, i64> = bank.ledger_by_user().await.into_iter().collect();
    let calls = bank.calls();
    let count_fault = |f: Fault| calls.iter().filter(|c| c.fault == f).count();

    let n_saga = txns
        .iter()
        .filter(|t| matches!(t.kind, Kind::Saga { .. }))
        .count();
    let n_concurrent = txns
        .iter()
        .filter(|t| {
            matches!(
                t.kind,
                Kind::Saga {
                    concurrent: true,
                    ..
                }
            )
        })
        .count();
    let n_meant_to_fail = txns
        .iter()
        .filter(|t| matches!(t.kind, Kind::Saga { fail: true, .. }))
        .count();
    eprintln!(
        "chaos: seed {seed}, {secs} s, {kills} kills; {} transactions ({n_saga} sagas: {n_concurrent} \
         concurrent, {n_meant_to_fail} meant to fail; {} msgs)",
        txns.len(),
        txns.len() - n_saga,
    );
    eprintln!(
        "chaos: acknowledged {}, succeed {}, failed {}, lost {}, stuck {}, wrong {}; not acknowledged: \
         {} known, {} absent",
        report.acked,
        report.succeed,
        report.failed,
        report.lost.len(),
        report.stuck.len(),
        report.wrong.len(),
        report.unacked_known,
        report.unacked_absent,
    );
    eprintln!(
        "chaos: bank calls {} (500 before {}, 500 after {}, 425 {}, stalls {}), 409 {}; total {total} \
         (initial {initial_total}), balances {balances:?}",
        calls.len(),
        count_fault(Fault::ErrorBefore),
        count_fault(Fault::ErrorAfter),
        count_fault(Fault::Ongoing),
        count_fault(Fault::StallBefore) + count_fault(Fault::StallAfter),
        calls.iter().filter(|c| c.effect == Effect::Failed).count(),
    );
    let problems: Vec<&String> = report
        .lost
        .iter()
        .chain(&report.stuck)
        .chain(&report.wrong)
        .collect();
    for p in problems.iter().take(20) {
        eprintln!("chaos: {p}");
        let gid = p.split_whitespace().next().unwrap_or_default();
        for c in bank.calls_of(gid) {
            eprintln!(
                "    {} {}/{} {:?} -> {:?} {}",
                c.route, c.branch_id, c.op, c.fault, c.effect, c.status
            );
        }
    }

    // Every check, so that one run shows all that broke.
    let mut failures = Vec::new();
    if !idle {
        failures.push("bank calls still running 30 s after the drain".to_owned());
    }
    if report.acked == 0 || (secs >= 10 && kills == 0) {
        failures.push(format!(
            "the load did nothing: {} acknowledged, {kills} kills",
            report.acked
        ));
    }
    for (what, list) in [
        (
            "acknowledged transactions unknown to the server",
            &report.lost,
        ),
        ("transactions not final after the drain", &report.stuck),
        ("wrong outcomes", &report.wrong),
    ] {
        if !list.is_empty() {
            failures.push(format!(
                "{} {what} (listed above), first: {}",
                list.len(),
                list[0]
            ));
        }
    }
    for (user, balance) in &balances {
        let ledger = by_user.get(user).copied().unwrap_or(0);
        if *balance != INITIAL_BALANCE + ledger {
            failures.push(format!(
                "user {user}'s balance {balance} disagrees with the ledger ({INITIAL_BALANCE} + {ledger})"
            ));
        }
    }
    if total != initial_total || balances.len() != USERS.len() {
        failures.push(format!(
            "money was created or destroyed: total {total}, initial {initial_total}"
        ));
    }
    assert!(
        failures.is_empty(),
        "seed {seed} ({secs} s): {}",
        failures.join("; ")
    );

    drop_database(&dsn).await;
    bank.stop().await;
}

/// Every 2-4 s, SIGKILLs a random replica and restarts it under the same node id after 0.3-1.5 s, until
/// `stop`; returns the replicas, all up, and the number of kills.
async fn kill_and_restart(
    dsn: String,
    mut replicas: Vec<BraidProcess>,
    urls: Urls,
    stop: Arc<AtomicBool>,
    seed: u64,
) -> (Vec<BraidProcess>, u32) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x6b69_6c6c);
    let mut kills = 0;
    loop {
        let due = Instant::now() + Duration::from_millis(rng.random_range(2000..4000));
        while Instant::now() < due && !stop.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if stop.load(Ordering::SeqCst) {
            return (replicas, kills);
        }
        // The load keeps sending to the dead replica until it is back: those calls fail, unacknowledged.
        let slot = rng.random_range(0..replicas.len());
        replicas[slot].signal("-KILL");
        replicas[slot].wait_exit(Duration::from_secs(5)).await;
        kills += 1;
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1500))).await;
        replicas[slot] = BraidProcess::spawn(&dsn, &format!("r{slot}"), &flags()).await;
        urls.write().unwrap()[slot] = replicas[slot].url();
    }
}

/// A random replica's URL.
fn pick(urls: &Urls, rng: &mut StdRng) -> String {
    let urls = urls.read().unwrap();
    urls[rng.random_range(0..urls.len())].clone()
}

/// One load worker: starts transactions through random replicas until `deadline`.
async fn load(w: u64, seed: u64, deadline: Instant, urls: Urls, bank: Bank) -> Vec<Txn> {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_add(w.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client");
    let mut txns = Vec::new();
    let mut i = 0;
    while Instant::now() < deadline {
        let dtm = DtmClient::http_with(pick(&urls, &mut rng), http.clone());
        let gid = format!("chaos-{seed}-{w}-{i}");
        i += 1;
        let amount = rng.random_range(1..=100);
        let kind = match rng.random_range(0..100) {
            0..30 => Kind::Saga {
                concurrent: false,
                fail: rng.random_bool(0.25),
            },
            30..55 => Kind::Saga {
                concurrent: true,
                fail: rng.random_bool(0.25),
            },
            55..85 => Kind::Msg(MsgPath::DoAndSubmit),
            85..90 => Kind::Msg(MsgPath::LocalFailure),
            90..95 => Kind::Msg(MsgPath::CrashAfterLocal),
            _ => Kind::Msg(MsgPath::CrashBeforeLocal),
        };
        txns.push(start(&dtm, &bank, gid, kind, amount).await);
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..250))).await;
    }
    txns
}

/// Starts one transaction and records what its client can tell about it.
async fn start(dtm: &DtmClient, bank: &Bank, gid: String, kind: Kind, amount: i64) -> Txn {
    let bank_url = bank.url();
    let (acked, expect) = match kind {
        Kind::Saga { concurrent, fail } => {
            let submitted = dtm
                .saga(&gid)
                .add_json(
                    format!("{bank_url}/TransOut"),
                    format!("{bank_url}/TransOutRevert"),
                    &json!({"amount": amount}),
                )
                .add_json(
                    format!("{bank_url}/TransIn"),
                    format!("{bank_url}/TransInRevert"),
                    &json!({"amount": amount, "fail": fail}),
                )
                .concurrent(concurrent)
                .submit()
                .await;
            (
                submitted.is_ok(),
                Some(if fail { "failed" } else { "succeed" }),
            )
        }
        Kind::Msg(path) => {
            let msg = dtm
                .msg(&gid)
                .add_json(format!("{bank_url}/TransIn"), &json!({"amount": amount}));
            let query_prepared = format!("{bank_url}/QueryPrepared");
            match path {
                MsgPath::DoAndSubmit | MsgPath::LocalFailure => {
                    let fail = path == MsgPath::LocalFailure;
                    let done = msg
                        .do_and_submit(&query_prepared, |bb| {
                            let bank = bank.clone();
                            let gid = gid.clone();
                            async move {
                                bank.barrier(bb)
                                    .call_with_pool(bank.pool(), bank.msg_debit(&gid, amount, fail))
                                    .await
                            }
                        })
                        .await;
                    match done {
                        Ok(()) => (true, Some("succeed")),
                        // A FAILURE comes from the local work, which runs only after the prepare.
                        Err(e) if fail && e.is_failure() => (true, Some("failed")),
                        Err(_) if fail => (false, Some("failed")),
                        Err(_) => (false, None),
                    }
                }
                MsgPath::CrashAfterLocal => {
                    if msg.prepare(&query_prepared).await.is_err() {
                        // The client gives up before its local work, as `do_and_submit` would.
                        (false, Some("failed"))
                    } else {
                        let bb = bank.barrier(msg.barrier().expect("msg barrier"));
                        let local = bb
                            .call_with_pool(bank.pool(), bank.msg_debit(&gid, amount, false))
                            .await;
                        (true, local.is_ok().then_some("succeed"))
                    }
                }
                MsgPath::CrashBeforeLocal => {
                    let prepared = msg.prepare(&query_prepared).await;
                    (prepared.is_ok(), Some("failed"))
                }
            }
        }
    };
    Txn {
        gid,
        kind,
        amount,
        acked,
        expect,
    }
}

/// The status a replica reports: `Ok(None)` when it does not know the gid, `Err` when it did not answer.
async fn status_of(http: &reqwest::Client, url: &str, gid: &str) -> Result<Option<String>, String> {
    let resp = http
        .get(format!("{url}/query"))
        .query(&[("gid", gid)])
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let code = resp.status().as_u16();
    let body: Value = serde_json::from_str(&resp.text().await.map_err(|e| e.to_string())?)
        .map_err(|e| format!("HTTP {code}: {e}"))?;
    if code != 200 {
        return Err(format!("HTTP {code}: {body}"));
    }
    Ok(body["transaction"]["status"].as_str().map(str::to_owned))
}

fn is_final(status: &str) -> bool {
    matches!(status, "succeed" | "failed")
}

/// Polls every transaction until each is final or unknown, or `DRAIN_LIMIT` passed; returns the last
/// status seen (`None`: unknown to the server).
async fn drain(urls: &[String], txns: &[Txn]) -> HashMap<String, Result<Option<String>, String>> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("http client");
    let started = Instant::now();
    let mut last = HashMap::new();
    let mut pending: Vec<&Txn> = txns.iter().collect();
    let mut round = 0;
    while !pending.is_empty() {
        let mut next = Vec::new();
        for (i, t) in pending.into_iter().enumerate() {
            let status = status_of(&http, &urls[(i + round) % urls.len()], &t.gid).await;
            if !matches!(&status, Ok(None)) && !matches!(&status, Ok(Some(s)) if is_final(s)) {
                next.push(t);
            }
            last.insert(t.gid.clone(), status);
        }
        pending = next;
        round += 1;
        if started.elapsed() > DRAIN_LIMIT {
            break;
        }
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    eprintln!(
        "chaos: drain took {:.1} s, {} not final",
        started.elapsed().as_secs_f64(),
        pending.len()
    );
    last
}

/// The outcome counts and every problem found, one line each starting with the gid.
#[derive(Default)]
struct Report {
    acked: usize,
    succeed: usize,
    failed: usize,
    unacked_known: usize,
    unacked_absent: usize,
    lost: Vec<String>,
    stuck: Vec<String>,
    wrong: Vec<String>,
}

impl Report {
    fn new(
        txns: &[Txn],
        statuses: &HashMap<String, Result<Option<String>, String>>,
        ledger: &HashMap<(String, String, String), Applied>,
    ) -> Self {
        let mut by_gid: HashMap<&str, BTreeMap<(&str, &str), Applied>> = HashMap::new();
        for ((gid, branch, op), applied) in ledger {
            by_gid
                .entry(gid.as_str())
                .or_default()
                .insert((branch.as_str(), op.as_str()), *applied);
        }
        let ours: HashSet<&str> = txns.iter().map(|t| t.gid.as_str()).collect();
        let mut r = Self::default();
        for t in txns {
            let effects = by_gid.remove(t.gid.as_str()).unwrap_or_default();
            r.acked += usize::from(t.acked);
            let status = match statuses.get(&t.gid) {
                Some(Ok(Some(s))) => s.as_str(),
                Some(Ok(None)) => {
                    if t.acked {
                        r.lost.push(format!("{t}: unknown to query"));
                    } else {
                        r.unacked_absent += 1;
                        if !effects.is_empty() {
                            r.wrong.push(format!(
                                "{t}: unknown to the server, yet effects {effects:?}"
                            ));
                        }
                    }
                    continue;
                }
                Some(Err(e)) => {
                    r.stuck.push(format!("{t}: query failed: {e}"));
                    continue;
                }
                None => {
                    r.stuck.push(format!("{t}: never queried"));
                    continue;
                }
            };
            if !t.acked {
                r.unacked_known += 1;
            }
            if !is_final(status) {
                r.stuck.push(format!("{t}: still {status}"));
                continue;
            }
            if status == "succeed" {
                r.succeed += 1;
            } else {
                r.failed += 1;
            }
            if let Some(want) = t.expect
                && want != status
            {
                r.wrong
                    .push(format!("{t}: ended {status}, expected {want}"));
            }
            if let Some(why) = effects_disagree(t, status, &effects) {
                r.wrong.push(format!(
                    "{t}: ended {status} but {why}; effects {effects:?}"
                ));
            }
        }
        for (gid, effects) in by_gid {
            if !ours.contains(gid) {
                r.wrong
                    .push(format!("{gid}: effects of no transaction: {effects:?}"));
            }
        }
        r
    }
}

/// Why the ledger rows of `t` do not fit its final `status`, if they do not.
fn effects_disagree(
    t: &Txn,
    status: &str,
    effects: &BTreeMap<(&str, &str), Applied>,
) -> Option<String> {
    let mut why = String::new();
    for ((branch, op), a) in effects {
        if a.count > 1 {
            let _ = write!(why, "{branch}/{op} applied {} times; ", a.count);
        }
    }
    let once = |delta: i64| Applied { count: 1, delta };
    let expected_success: BTreeMap<(&str, &str), Applied> = match t.kind {
        Kind::Saga { .. } => BTreeMap::from([
            (("01", "action"), once(-t.amount)),
            (("02", "action"), once(t.amount)),
        ]),
        Kind::Msg(_) => BTreeMap::from([
            (("00", "msg"), once(-t.amount)),
            (("01", "action"), once(t.amount)),
        ]),
    };
    match (t.kind, status) {
        (_, "succeed") if *effects != expected_success => {
            let _ = write!(
                why,
                "the debit and the credit are not each applied exactly once (want {expected_success:?})"
            );
        }
        (Kind::Saga { .. }, "failed") => {
            for branch in ["01", "02"] {
                let count = |op| effects.get(&(branch, op)).map_or(0, |a: &Applied| a.count);
                if count("action") != count("compensate") {
                    let _ = write!(
                        why,
                        "branch {branch}: {} actions applied, {} compensations; ",
                        count("action"),
                        count("compensate")
                    );
                }
            }
            let net: i64 = effects.values().map(|a| a.delta).sum();
            if net != 0 {
                let _ = write!(why, "a net effect of {net} is left");
            }
        }
        (Kind::Msg(_), "failed") if !effects.is_empty() => {
            let _ = write!(why, "a failed msg has effects");
        }
        _ => {}
    }
    (!why.is_empty()).then_some(why)
}
