//! The cluster with real processes: `braid serve` replicas share one MariaDB database (the `sql` lease
//! backend, lease timing 4/3/1 s). Scaling 3 -> 5 -> 2 rebalances the partitions; a SIGKILLed replica's
//! partitions are taken over within lease duration + 2 s and its work finishes; a SIGSTOPped replica that
//! wakes after losing its partitions has every stale write refused. Plus the `kubernetes` backend: several
//! electors through real `kube::Client`s against the in-process fake API server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use braid::model::{Gid, Partition};
use serde_json::json;
use sqlx::Row;
use support::process::{BraidProcess, CLUSTER_FLAGS};
use support::{Backend, Busi, drop_database, fresh_dsn, gid, saga_body};

const P: u16 = 64;

/// The multi-replica tests run one at a time: each starts up to five servers, and the take-over bound is
/// measured in real time on a 2-core machine.
static REPLICAS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const LEASE_DURATION: Duration = Duration::from_secs(4);

async fn spawn(dsn: &str, node: &str, extra: &[&str]) -> BraidProcess {
    let mut flags: Vec<&str> = CLUSTER_FLAGS.to_vec();
    flags.extend_from_slice(extra);
    BraidProcess::spawn(dsn, node, &flags).await
}

/// Each replica's own partitions, if together they hold every partition exactly once.
async fn full_ownership(replicas: &[&BraidProcess]) -> Option<BTreeMap<String, Vec<u16>>> {
    let mut seen = BTreeSet::new();
    let mut out = BTreeMap::new();
    for r in replicas {
        let own = r.own_partitions().await?;
        for p in &own {
            if !seen.insert(*p) {
                return None;
            }
        }
        out.insert(r.node_id.clone(), own);
    }
    (seen.len() == usize::from(P)).then_some(out)
}

/// Waits until the replicas hold every partition once, each between floor(P/n) and ceil(P/n)+1.
async fn wait_balanced(replicas: &[&BraidProcess], limit: Duration) -> BTreeMap<String, Vec<u16>> {
    let n = replicas.len();
    let (lo, hi) = (usize::from(P) / n, usize::from(P).div_ceil(n) + 1);
    let deadline = tokio::time::Instant::now() + limit;
    let mut last = None;
    loop {
        if let Some(owned) = full_ownership(replicas).await {
            if owned.values().all(|ps| (lo..=hi).contains(&ps.len())) {
                return owned;
            }
            last = Some(owned);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{n} replicas not balanced within {limit:?} (each {lo}..={hi}); last full view: {:?}",
            last.map(|o| o
                .iter()
                .map(|(k, v)| (k.clone(), v.len()))
                .collect::<Vec<_>>())
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Samples `braid_partition` until stopped: every (partition, epoch) must have one owner, and epochs never
/// go back. Returns the number of distinct (partition, epoch) pairs seen.
struct EpochSampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<usize>,
}

impl EpochSampler {
    fn start(dsn: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let dsn = dsn.to_owned();
        let stop2 = stop.clone();
        let task = tokio::spawn(async move {
            sqlx::any::install_default_drivers();
            let pool = sqlx::AnyPool::connect(&dsn)
                .await
                .expect("sampler connects");
            let mut owner_of: HashMap<(i64, i64), String> = HashMap::new();
            let mut latest: HashMap<i64, i64> = HashMap::new();
            while !stop2.load(Ordering::SeqCst) {
                // MySQL's Any driver reads VARCHAR columns as bytes unless cast.
                let sql = if dsn.starts_with("mysql:") {
                    "SELECT partition_id, epoch, CAST(owner AS CHAR) AS owner FROM braid_partition"
                } else {
                    "SELECT partition_id, epoch, owner FROM braid_partition"
                };
                let rows = sqlx::query(sql)
                    .fetch_all(&pool)
                    .await
                    .expect("read braid_partition");
                for row in rows {
                    let p: i64 = row.get("partition_id");
                    let e: i64 = row.get("epoch");
                    let owner: String = row.get("owner");
                    if e == 0 {
                        continue;
                    }
                    let prev = latest.insert(p, e).unwrap_or(0);
                    assert!(e >= prev, "epoch of p{p} went back from {prev} to {e}");
                    if let Some(first) = owner_of.insert((p, e), owner.clone()) {
                        assert_eq!(first, owner, "p{p} epoch {e} has two owners");
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            pool.close().await;
            owner_of.len()
        });
        Self { stop, task }
    }

    async fn finish(self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("sampler task")
    }
}

async fn replicas_split_partitions_and_rebalance_when_scaled_3_5_2(backend: Backend) {
    let _serial = REPLICAS.lock().await;
    let dsn = fresh_dsn(backend);
    let r0 = spawn(&dsn, "r0", &[]).await;
    let sampler = EpochSampler::start(&dsn);
    let r1 = spawn(&dsn, "r1", &[]).await;
    let r2 = spawn(&dsn, "r2", &[]).await;
    let three = wait_balanced(&[&r0, &r1, &r2], Duration::from_secs(30)).await;
    eprintln!(
        "3 replicas: {:?}",
        three.values().map(Vec::len).collect::<Vec<_>>()
    );

    // Every replica sees the same members and P.
    let view = r1.cluster().await.unwrap();
    assert_eq!(view["node_id"], "r1");
    assert_eq!(view["partitions"], P);
    let members: Vec<&str> = view["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["node_id"].as_str().unwrap())
        .collect();
    assert_eq!(members, ["r0", "r1", "r2"]);
    assert_eq!(r0.metric("braid_cluster_members").await, 3.0);

    let r3 = spawn(&dsn, "r3", &[]).await;
    let r4 = spawn(&dsn, "r4", &[]).await;
    let five = wait_balanced(&[&r0, &r1, &r2, &r3, &r4], Duration::from_secs(30)).await;
    eprintln!(
        "5 replicas: {:?}",
        five.values().map(Vec::len).collect::<Vec<_>>()
    );
    // Rendezvous: most partitions of the three stayed where they were.
    let stayed = three
        .iter()
        .map(|(node, ps)| ps.iter().filter(|p| five[node].contains(p)).count())
        .sum::<usize>();
    assert!(
        stayed >= 32,
        "only {stayed} of 64 partitions stayed put when 2 joined"
    );

    // Scale down to two: clean stops release their partitions.
    let (mut r0, mut r1, mut r2) = (r0, r1, r2);
    for r in [&r0, &r1, &r2] {
        r.signal("-TERM");
    }
    for r in [&mut r0, &mut r1, &mut r2] {
        let status = r.wait_exit(Duration::from_secs(20)).await;
        assert!(status.success(), "{} exited with {status}", r.node_id);
    }
    let two = wait_balanced(&[&r3, &r4], Duration::from_secs(30)).await;
    assert!(two.values().all(|ps| ps.len() == 32), "{two:?}");
    let epochs = sampler.finish().await;
    assert!(
        epochs > usize::from(P),
        "partitions changed hands ({epochs} epochs seen)"
    );
    drop((r3, r4));
    drop_database(&dsn).await;
}

async fn sigkilled_replicas_partitions_are_taken_over_within_lease_duration_and_its_work_completes(
    backend: Backend,
) {
    let _serial = REPLICAS.lock().await;
    let busi = Busi::start().await;
    let dsn = fresh_dsn(backend);
    let flags = ["--retry-interval", "1", "--request-timeout", "10"];
    let r0 = spawn(&dsn, "r0", &flags).await;
    let r1 = spawn(&dsn, "r1", &flags).await;
    let r2 = spawn(&dsn, "r2", &flags).await;
    let owned = wait_balanced(&[&r0, &r1, &r2], Duration::from_secs(30)).await;
    let victims: BTreeSet<u16> = owned["r0"].iter().copied().collect();

    // Sagas in r0's partitions, submitted to r0, whose TransIn hangs: r0 dies mid-pass.
    busi.delay("TransIn", Duration::from_secs(3));
    let client = reqwest::Client::new();
    let mut gids = Vec::new();
    let mut i = 0;
    while gids.len() < 12 {
        let g = gid(&format!("kill-{i}"));
        i += 1;
        if !victims.contains(&Partition::of(&Gid::parse(&g).unwrap(), P).0) {
            continue;
        }
        let resp = client
            .post(format!("{}/submit", r0.url()))
            .body(saga_body(&g, &busi.url(), "", "").to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        gids.push(g);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut r0 = r0;
    r0.signal("-KILL");
    let killed = tokio::time::Instant::now();
    r0.wait_exit(Duration::from_secs(5)).await;

    // r1 and r2 own everything within lease duration + 2 s.
    let limit = LEASE_DURATION + Duration::from_secs(2);
    let took = loop {
        if full_ownership(&[&r1, &r2]).await.is_some() {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < limit,
            "r1 and r2 did not own all partitions within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("takeover after SIGKILL: {:.2} s", took.as_secs_f64());

    busi.delay("TransIn", Duration::ZERO);
    wait_all(&r1.url(), &gids, "succeed", Duration::from_secs(60)).await;
    for g in &gids {
        let routes = busi.routes_of(g);
        assert!(
            routes.contains(&"TransOut".to_owned()) && routes.contains(&"TransIn".to_owned()),
            "{g}: {routes:?}"
        );
        assert!(
            !routes.iter().any(|r| r.ends_with("Revert")),
            "{g}: {routes:?}"
        );
    }
    drop((r1, r2));
    drop_database(&dsn).await;
}

async fn a_stopped_replica_that_wakes_after_losing_its_partitions_writes_nothing(backend: Backend) {
    let _serial = REPLICAS.lock().await;
    let busi = Busi::start().await;
    let dsn = fresh_dsn(backend);
    // A claim keeps a transaction for retry-interval seconds: longer than the take-over, so the new owner
    // has not touched r0's claimed transactions when r0 wakes; only the fence can refuse r0's writes.
    let flags = ["--retry-interval", "12", "--request-timeout", "20"];
    let r0 = spawn(&dsn, "r0", &flags).await;
    let r1 = spawn(&dsn, "r1", &flags).await;
    let r2 = spawn(&dsn, "r2", &flags).await;
    let owned = wait_balanced(&[&r0, &r1, &r2], Duration::from_secs(30)).await;
    let victims: BTreeSet<u16> = owned["r0"].iter().copied().collect();

    // Prepared msgs in r0's partitions, prepared through r1: nothing runs until their 1 s timeout, then
    // r0's scanner back-checks them, and the back-check hangs.
    busi.delay("QueryPrepared", Duration::from_secs(3));
    let client = reqwest::Client::new();
    let mut gids = Vec::new();
    let mut i = 0;
    while gids.len() < 6 {
        let g = gid(&format!("stop-{i}"));
        i += 1;
        if !victims.contains(&Partition::of(&Gid::parse(&g).unwrap(), P).0) {
            continue;
        }
        let body = json!({
            "gid": g,
            "trans_type": "msg",
            "steps": [{"action": format!("{}/TransIn", busi.url())}],
            "payloads": [support::busi::req(30, "", "")],
            "query_prepared": format!("{}/QueryPrepared", busi.url()),
            "timeout_to_fail": 1,
        });
        let resp = client
            .post(format!("{}/prepare", r1.url()))
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status().as_u16(),
            200,
            "{}",
            resp.text().await.unwrap()
        );
        gids.push(g);
    }
    let watcher = StatusWatcher::start(&dsn, &gids);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !gids
        .iter()
        .all(|g| busi.routes_of(g).contains(&"QueryPrepared".to_owned()))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "r0 never back-checked all msgs"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    r0.signal("-STOP");
    let stopped = tokio::time::Instant::now();

    // r1 and r2 take r0's partitions over (new epochs in the store).
    loop {
        if full_ownership(&[&r1, &r2]).await.is_some() {
            break;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(15),
            "no take-over while r0 is stopped"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    busi.delay("QueryPrepared", Duration::ZERO);
    let before_wake = watcher.snapshot();
    r0.signal("-CONT");

    // r0's passes finish with stale epochs: each write is refused, none lands.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let rejected = loop {
        let n = r0
            .metric("braid_cluster_fenced_rejections_total{op=\"write\"}")
            .await;
        if n >= gids.len() as f64 {
            break n;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "r0 had {n} fenced write rejections, expected {}",
            gids.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("stale writes refused: {rejected}");
    for g in &gids {
        assert_eq!(
            watcher.snapshot()[g],
            before_wake[g],
            "{g} changed when the stale replica woke"
        );
    }

    // The new owners finish every msg, and no transaction ever went back.
    wait_all(&r1.url(), &gids, "succeed", Duration::from_secs(60)).await;
    let history = watcher.finish().await;
    for g in &gids {
        assert_eq!(
            history[g].last().map(|s| s.0.as_str()),
            Some("succeed"),
            "{g}"
        );
    }
    drop((r0, r1, r2));
    drop_database(&dsn).await;
}

on_shared_stores!(
    replicas_split_partitions_and_rebalance_when_scaled_3_5_2,
    sigkilled_replicas_partitions_are_taken_over_within_lease_duration_and_its_work_completes,
    a_stopped_replica_that_wakes_after_losing_its_partitions_writes_nothing,
);

fn status_rank(s: &str) -> u8 {
    match s {
        "prepared" => 0,
        "submitted" | "aborting" => 1,
        _ => 2,
    }
}

/// Polls the status and version of some transactions in the store; panics if one ever goes back.
struct StatusWatcher {
    latest: Arc<std::sync::Mutex<HashMap<String, (String, i64)>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<HashMap<String, Vec<(String, i64)>>>,
}

impl StatusWatcher {
    fn start(dsn: &str, gids: &[String]) -> Self {
        let (dsn, gids) = (dsn.to_owned(), gids.to_vec());
        let latest = Arc::new(std::sync::Mutex::new(HashMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (latest2, stop2) = (latest.clone(), stop.clone());
        let task = tokio::spawn(async move {
            sqlx::any::install_default_drivers();
            let pool = sqlx::AnyPool::connect(&dsn)
                .await
                .expect("watcher connects");
            let mut history: HashMap<String, Vec<(String, i64)>> = HashMap::new();
            loop {
                let done = stop2.load(Ordering::SeqCst);
                let sql = if dsn.starts_with("mysql:") {
                    "SELECT CAST(status AS CHAR) AS status, version FROM braid_txn WHERE gid = ?"
                } else {
                    "SELECT status, version FROM braid_txn WHERE gid = $1"
                };
                for g in &gids {
                    let row = sqlx::query(sql)
                        .bind(g)
                        .fetch_one(&pool)
                        .await
                        .expect("read braid_txn");
                    let now: (String, i64) = (row.get("status"), row.get("version"));
                    let seen = history.entry(g.clone()).or_default();
                    if let Some(prev) = seen.last() {
                        assert!(
                            now.1 >= prev.1 && status_rank(&now.0) >= status_rank(&prev.0),
                            "{g} went back from {prev:?} to {now:?}"
                        );
                    }
                    if seen.last() != Some(&now) {
                        seen.push(now.clone());
                    }
                    latest2.lock().unwrap().insert(g.clone(), now);
                }
                if done {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            pool.close().await;
            history
        });
        Self { latest, stop, task }
    }

    fn snapshot(&self) -> HashMap<String, (String, i64)> {
        self.latest.lock().unwrap().clone()
    }

    async fn finish(self) -> HashMap<String, Vec<(String, i64)>> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("watcher task")
    }
}

/// Polls until every gid has `want` status, or fails after `limit` listing the stragglers.
async fn wait_all(base: &str, gids: &[String], want: &str, limit: Duration) {
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let mut pending = Vec::new();
        for g in gids {
            let status = match client.get(format!("{base}/query?gid={g}")).send().await {
                Ok(r) => r
                    .text()
                    .await
                    .ok()
                    .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                    .and_then(|v| v["transaction"]["status"].as_str().map(str::to_owned)),
                Err(_) => None,
            };
            if status.as_deref() != Some(want) {
                pending.push(format!("{g}={status:?}"));
            }
        }
        if pending.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not {want} after {limit:?}: {pending:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_with_another_partition_count_refuses_to_start() {
    let _serial = REPLICAS.lock().await;
    let dsn = fresh_dsn(Backend::Mysql);
    let r0 = spawn(&dsn, "r0", &[]).await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_braid"))
        .args([
            "serve",
            "--bind",
            "127.0.0.1",
            "--store",
            &dsn,
            "--node-id",
            "r1",
        ])
        .args(["--http-port", &support::process::free_port().to_string()])
        .args(["--grpc-port", &support::process::free_port().to_string()])
        .args(["--partitions", "32"])
        .output()
        .expect("braid runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("set up with 64 partitions") && err.contains("--partitions 32"),
        "{err}"
    );
    drop(r0);
    drop_database(&dsn).await;
}

mod kubernetes {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use async_trait::async_trait;
    use braid::cluster::keeper::{Keeper, KeeperHandle, KeeperOptions};
    use braid::cluster::kubernetes::KubeLeases;
    use braid::cluster::{Fencing, Identity, LeaseTiming};
    use braid::metrics::Metrics;
    use braid::model::{LeaseEpoch, Partition};
    use tokio::time::Instant;
    use tokio_util::sync::CancellationToken;

    use crate::support::kube_api::{EventType, FakeKube};

    const P: u16 = 16;
    const NS: &str = "default";

    #[derive(Default)]
    struct MemFencing(Mutex<BTreeMap<Partition, u64>>);

    #[async_trait]
    impl Fencing for MemFencing {
        async fn fence(&self, p: Partition, _owner: &str) -> braid::cluster::Result<LeaseEpoch> {
            let mut m = self.0.lock().unwrap();
            let e = m.entry(p).or_insert(0);
            *e += 1;
            Ok(LeaseEpoch(*e))
        }
    }

    struct Elector {
        handle: KeeperHandle,
        cancel: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    }

    fn start(fake: &FakeKube, fencing: &Arc<MemFencing>, pod: &str) -> Elector {
        // Each elector has its own client and lease cache, as separate pods would.
        let backend = Arc::new(KubeLeases::new(fake.client(NS), NS, "braid"));
        let (keeper, handle) = Keeper::new(
            KeeperOptions {
                partitions: P,
                timing: LeaseTiming {
                    lease_duration: Duration::from_secs(3),
                    renew_deadline: Duration::from_secs(2),
                    retry_period: Duration::from_secs(1),
                },
            },
            backend,
            fencing.clone(),
            Identity::new(pod),
            Arc::new(Metrics::new()),
        );
        let cancel = CancellationToken::new();
        let task = tokio::spawn(keeper.run(cancel.clone()));
        Elector {
            handle,
            cancel,
            task,
        }
    }

    /// Partitions each elector may act on now; panics when two may act on one.
    fn owners(electors: &BTreeMap<String, Elector>) -> BTreeMap<Partition, String> {
        let now = Instant::now();
        let mut owners = BTreeMap::new();
        for (name, e) in electors {
            for f in e.handle.ownership().fences_at(now) {
                if let Some(other) = owners.insert(f.partition, name.clone()) {
                    panic!("{} held by both {other} and {name}", f.partition);
                }
            }
        }
        owners
    }

    async fn run_for(electors: &BTreeMap<String, Elector>, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            owners(electors);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_all_owned(electors: &BTreeMap<String, Elector>, limit: Duration) {
        let end = Instant::now() + limit;
        while owners(electors).len() < usize::from(P) {
            assert!(
                Instant::now() < end,
                "not all partitions owned within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kubernetes_electors_never_hold_one_lease_together() {
        let fake = FakeKube::start().await;
        let fencing = Arc::new(MemFencing::default());
        let mut electors: BTreeMap<String, Elector> = ["pod-a", "pod-b", "pod-c", "pod-d"]
            .into_iter()
            .map(|p| (p.to_owned(), start(&fake, &fencing, p)))
            .collect();
        wait_all_owned(&electors, Duration::from_secs(10)).await;
        run_for(&electors, Duration::from_secs(2)).await;
        let counts = |electors: &BTreeMap<String, Elector>| {
            let mut c = BTreeMap::new();
            for n in owners(electors).values() {
                *c.entry(n.clone()).or_insert(0) += 1;
            }
            c
        };
        assert!(
            counts(&electors).values().all(|c| *c == 4),
            "{:?}",
            counts(&electors)
        );

        // One pod crashes (its leases stay until they expire), one stops cleanly, a new one joins.
        electors.remove("pod-a").unwrap().task.abort();
        let b = electors.remove("pod-b").unwrap();
        b.cancel.cancel();
        b.task.await.unwrap();
        electors.insert("pod-e".into(), start(&fake, &fencing, "pod-e"));
        run_for(&electors, Duration::from_secs(6)).await;
        wait_all_owned(&electors, Duration::from_secs(5)).await;
        assert_eq!(
            counts(&electors)
                .values()
                .copied()
                .collect::<Vec<_>>()
                .iter()
                .sum::<i32>(),
            i32::from(P)
        );
        for e in electors.values() {
            e.cancel.cancel();
        }
        for (_, e) in electors {
            e.task.await.unwrap();
        }

        // The fake's history: a lease changes holder only when it was released, or when its holder had not
        // renewed it for a full lease duration (as the fake's clock measures).
        let mut last: BTreeMap<String, (String, Instant, u64)> = BTreeMap::new();
        let mut takeovers = 0;
        let mut writes = 0;
        for ev in fake.history("leases") {
            let name = ev.name.clone();
            if ev.event == EventType::Deleted {
                last.remove(&name);
                continue;
            }
            writes += 1;
            let spec = &ev.object["spec"];
            let holder = spec["holderIdentity"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let secs = spec["leaseDurationSeconds"].as_u64().unwrap_or(0);
            let at = Instant::from_std(ev.at);
            if let Some((prev, prev_at, prev_secs)) = last.get(&name)
                && !prev.is_empty()
                && !holder.is_empty()
                && *prev != holder
            {
                takeovers += 1;
                let idle = at.duration_since(*prev_at);
                assert!(
                    idle >= Duration::from_secs(*prev_secs),
                    "{name} moved from {prev} to {holder} after only {idle:?} of a {prev_secs}s lease"
                );
            }
            last.insert(name, (holder, at, secs));
        }
        assert!(takeovers >= 1, "the crashed pod's leases were taken over");
        assert!(writes > 50, "{writes} writes");
        // Clean shutdowns released everything: no partition lease has a holder, no member lease is left.
        for (name, obj) in fake.objects("leases", NS) {
            if name.contains("-m-") {
                assert!(
                    name.ends_with("pod-a"),
                    "only the crashed pod leaves its member lease behind: {obj}"
                );
            } else {
                let holder = obj["spec"]["holderIdentity"].as_str().unwrap_or_default();
                assert!(
                    holder.is_empty() || holder.starts_with("pod-a_"),
                    "{name} still held by {holder}"
                );
            }
        }
    }
}
