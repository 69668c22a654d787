//! Drives a workload: closed loop (N workers, each starting its next transaction when the last one is
//! final) or open loop (transactions start on a fixed schedule at a given rate, whatever the answers; the
//! latency of each counts from its *scheduled* start, so a server that falls behind shows it). Counters,
//! CPU and memory are sampled at the start and end of the measured window, after a warm-up.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, mpsc};

use crate::client::Conn;
use crate::target::{DbProcs, ProcSample, StoreCounters, Target, proc_sample};
use crate::workload::{Worker, Workload};

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

/// How to drive the load.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Which transactions.
    pub workload: Workload,
    /// Closed loop: concurrent clients. Open loop: connections available to serve the schedule.
    pub clients: usize,
    /// Open loop at this many transactions per second (`None`: closed loop).
    pub rate: Option<f64>,
    /// Not measured.
    pub warmup: Duration,
    /// Measured.
    pub duration: Duration,
    /// Unique per run (gids are `b<run_id>-<worker>-<n>`).
    pub run_id: String,
    /// The business service, if the workload uses one.
    pub busi: Option<SocketAddr>,
}

/// Samples at one end of the measured window.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    counters: StoreCounters,
    server: Option<ProcSample>,
    db: Option<ProcSample>,
    me: Option<ProcSample>,
}

async fn sample(target: &Target, db: Option<DbProcs>) -> Sample {
    let counters = match target.store_counters().await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("reading /api/metrics: {e:#}");
            StoreCounters::default()
        }
    };
    Sample {
        at: Instant::now(),
        counters,
        server: target.pid.and_then(proc_sample),
        db: db.and_then(|d| d.sample()),
        me: proc_sample(std::process::id()),
    }
}

/// What a load run measured (over the measured window only).
#[derive(Debug, Clone)]
pub struct LoadResult {
    /// Transactions that reached their final state with every request answered 200.
    pub ok: u64,
    /// Transactions with an error answer or a transport error.
    pub failed: u64,
    /// Length of the window in seconds.
    pub seconds: f64,
    /// Latencies of the successful transactions in microseconds, sorted.
    pub latencies_us: Vec<u32>,
    /// The first error seen, for the report.
    pub first_error: Option<String>,
    /// Store counter deltas over the window.
    pub store: StoreCounters,
    /// Server CPU, in cores (1.0 = one core busy), over the window.
    pub server_cores: Option<f64>,
    /// Server RSS at the end, KiB.
    pub server_rss_kib: Option<u64>,
    /// Database server CPU in cores (MySQL/MariaDB on this machine).
    pub db_cores: Option<f64>,
    /// The load generator's own CPU in cores (includes the business service).
    pub bench_cores: Option<f64>,
    /// Open loop: transactions scheduled in the window but not yet started when it ended (backlog).
    pub backlog: u64,
}

impl LoadResult {
    /// Successful transactions per second.
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.seconds.max(1e-9)
    }

    /// The latency at quantile `q` (0..=1) in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let idx = ((self.latencies_us.len() as f64 * q).ceil() as usize)
            .clamp(1, self.latencies_us.len())
            - 1;
        f64::from(self.latencies_us[idx]) / 1000.0
    }

    /// Durable database commits per successful transaction.
    pub fn commits_per_txn(&self) -> f64 {
        self.store.commits / (self.ok as f64).max(1.0)
    }
}

fn cores(a: Option<ProcSample>, b: Option<ProcSample>, secs: f64) -> Option<f64> {
    Some((b?.cpu_seconds - a?.cpu_seconds) / secs.max(1e-9))
}

/// What each worker hands back.
struct WorkerTally {
    ok: u64,
    failed: u64,
    latencies_us: Vec<u32>,
    first_error: Option<String>,
}

fn worker_for(braid: SocketAddr, busi: Option<SocketAddr>) -> anyhow::Result<Worker> {
    Ok(Worker {
        braid: Conn::new(braid)?,
        busi: busi.map(Conn::new).transpose()?,
        busi_url: busi
            .map(|a| format!("http://{a}/api/busi"))
            .unwrap_or_default(),
    })
}

/// Runs the load against `target` and measures it.
pub async fn run(
    target: &Target,
    db: Option<DbProcs>,
    opts: &LoadOptions,
) -> anyhow::Result<LoadResult> {
    let phase = Arc::new(AtomicU8::new(WARMUP));
    let clients = opts.clients.max(1);
    let mut workers = tokio::task::JoinSet::new();
    // Open loop: a schedule of start times that any idle worker takes from.
    let schedule = opts.rate.map(|rate| {
        let (tx, rx) = mpsc::unbounded_channel::<Instant>();
        let rx = Arc::new(Mutex::new(rx));
        let phase = phase.clone();
        let generator = tokio::spawn(async move {
            let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
            let start = Instant::now();
            let mut n: u64 = 0;
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            while phase.load(Ordering::Relaxed) != STOP {
                tick.tick().await;
                let now = Instant::now();
                loop {
                    let due = start + interval.mul_f64(n as f64);
                    if due > now || tx.send(due).is_err() {
                        break;
                    }
                    n += 1;
                }
            }
        });
        (rx, generator)
    });

    for w in 0..clients {
        let mut worker = worker_for(target.addr, opts.busi)?;
        let phase = phase.clone();
        let workload = opts.workload;
        let run_id = opts.run_id.clone();
        let tickets = schedule.as_ref().map(|(rx, _)| rx.clone());
        workers.spawn(async move {
            let mut tally = WorkerTally {
                ok: 0,
                failed: 0,
                latencies_us: Vec::with_capacity(1 << 14),
                first_error: None,
            };
            let mut n: u64 = 0;
            loop {
                if phase.load(Ordering::Relaxed) == STOP {
                    break;
                }
                let start = match &tickets {
                    None => Instant::now(),
                    Some(rx) => {
                        let next = rx.lock().await.recv().await;
                        match next {
                            Some(due) => {
                                // Wait for the scheduled start; a late start still counts from `due`.
                                tokio::time::sleep_until(due.into()).await;
                                due
                            }
                            None => break,
                        }
                    }
                };
                let gid = format!("b{run_id}-{w}-{n}");
                n += 1;
                let outcome = worker.run_one(workload, &gid).await;
                let elapsed = start.elapsed();
                if phase.load(Ordering::Relaxed) != MEASURE {
                    continue;
                }
                match outcome {
                    Ok(()) => {
                        tally.ok += 1;
                        tally
                            .latencies_us
                            .push(u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX));
                    }
                    Err(e) => {
                        tally.failed += 1;
                        if tally.first_error.is_none() {
                            tally.first_error = Some(format!("{gid}: {e:#}"));
                        }
                    }
                }
            }
            tally
        });
    }

    tokio::time::sleep(opts.warmup).await;
    let before = sample(target, db).await;
    phase.store(MEASURE, Ordering::Relaxed);
    tokio::time::sleep(opts.duration).await;
    phase.store(STOP, Ordering::Relaxed);
    let after = sample(target, db).await;
    let seconds = (after.at - before.at).as_secs_f64();

    let mut backlog = 0;
    if let Some((rx, generator)) = schedule {
        let _ = generator.await;
        let mut rx = rx.lock().await;
        rx.close();
        while rx.try_recv().is_ok() {
            backlog += 1;
        }
    }
    let mut result = LoadResult {
        ok: 0,
        failed: 0,
        seconds,
        latencies_us: Vec::new(),
        first_error: None,
        store: after.counters - before.counters,
        server_cores: cores(before.server, after.server, seconds),
        server_rss_kib: after.server.map(|s| s.rss_kib),
        db_cores: cores(before.db, after.db, seconds),
        bench_cores: cores(before.me, after.me, seconds),
        backlog,
    };
    while let Some(joined) = workers.join_next().await {
        let tally = joined?;
        result.ok += tally.ok;
        result.failed += tally.failed;
        result.latencies_us.extend(tally.latencies_us);
        if result.first_error.is_none() {
            result.first_error = tally.first_error;
        }
    }
    result.latencies_us.sort_unstable();
    Ok(result)
}
