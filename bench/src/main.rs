//! `braid-bench`: the load generator of issue 7. See `bench/README.md` for how to run it and what it reports.
//!
//! It starts a braid server itself (the release `braid` binary next to this one, on a fresh SQLite file or a
//! fresh MariaDB database), or targets a running one with `--target`; measures the raw single-row commit rate
//! of the same database; drives the workload; and prints sagas/s, latency from submit to final state,
//! durable commits per transaction, and the CPU and memory of the server and the database.

mod busi;
mod client;
mod load;
mod raw;
mod target;
mod workload;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::load::{LoadOptions, LoadResult};
use crate::raw::RawRate;
use crate::target::{Store, Target};
use crate::workload::Workload;

/// Load generator for braid (issue 7).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// One workload against one store, with the raw commit rate of that store.
    Run(RunArgs),
    /// The whole table: every workload on every store, (b) also open-loop at half its maximum rate.
    Suite(SuiteArgs),
    /// Only the raw single-row commit rate of a store.
    Raw(CommonArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum StoreKind {
    Sqlite,
    Mysql,
    Postgres,
}

#[derive(Debug, Clone, Args)]
struct CommonArgs {
    /// Which store braid runs on (and whose raw commit rate is measured).
    #[arg(long, value_enum, default_value = "mysql")]
    store: StoreKind,
    /// MySQL/MariaDB server, without a database (braid gets a fresh `braid_bench_<id>` database).
    #[arg(
        long,
        env = "BRAID_BENCH_MYSQL",
        default_value = "mysql://root@127.0.0.1:3306"
    )]
    mysql: String,
    /// PostgreSQL server, without a database (braid gets a fresh `braid_bench_<id>` database).
    #[arg(
        long,
        env = "BRAID_BENCH_POSTGRES",
        default_value = "postgres://postgres@127.0.0.1:5432"
    )]
    postgres: String,
    /// Directory for SQLite files (a fresh file per run, removed afterwards).
    #[arg(long, default_value = "target/bench-data")]
    sqlite_dir: PathBuf,
    /// Concurrent clients (closed loop), connections (open loop), and raw-commit connections.
    #[arg(long, short = 'c', default_value_t = 128)]
    clients: usize,
    /// Seconds measured (after the warm-up).
    #[arg(long, short = 'd', default_value_t = 20)]
    duration: u64,
    /// Seconds of warm-up, not measured.
    #[arg(long, default_value_t = 5)]
    warmup: u64,
    /// Seconds of the raw commit measurement (0: skip it).
    #[arg(long, default_value_t = 10)]
    raw_seconds: u64,
    /// Connections of the raw commit measurement (default: as many as `--clients`, at most 64, since
    /// MariaDB's default `max_connections` is 151 and the single-row rate saturates well before).
    #[arg(long)]
    raw_connections: Option<usize>,
}

impl CommonArgs {
    fn raw_connections(&self) -> usize {
        self.raw_connections.unwrap_or(self.clients.min(64)).max(1)
    }

    fn store(&self) -> Store {
        match self.store {
            StoreKind::Sqlite => Store::Sqlite {
                dir: self.sqlite_dir.clone(),
            },
            StoreKind::Mysql => Store::Mysql {
                server: self.mysql.clone(),
            },
            StoreKind::Postgres => Store::Postgres {
                server: self.postgres.clone(),
            },
        }
    }
}

#[derive(Debug, Clone, Args)]
struct ServerArgs {
    /// The braid binary to start (default: `braid` next to this executable, i.e. target/release/braid).
    #[arg(long)]
    braid_bin: Option<PathBuf>,
    /// Benchmark a braid that is already running at this address (host:port of its HTTP API) instead of
    /// starting one. Its store must be the one `--store` names for the raw rate to be comparable.
    #[arg(long)]
    target: Option<SocketAddr>,
    /// With `--target`: the server's pid, for its CPU and RSS.
    #[arg(long, requires = "target")]
    target_pid: Option<u32>,
    /// Extra arguments for `braid serve` (repeat the flag: `--server-arg=--retry-interval --server-arg=5`).
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
}

#[derive(Debug, Clone, Args)]
struct RunArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    server: ServerArgs,
    /// Which workload.
    #[arg(long, short = 'w', value_enum, default_value = "empty")]
    workload: Workload,
    /// Open loop at this many transactions per second (default: closed loop).
    #[arg(long)]
    rate: Option<f64>,
}

#[derive(Debug, Clone, Args)]
struct SuiteArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    server: ServerArgs,
    /// Stores to run, in order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "sqlite,mysql,postgres"
    )]
    stores: Vec<StoreKind>,
    /// Also write the results table (Markdown) to this file.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Two workers: the generator and the business service share the machine with the server and the
    // database, so they must stay cheap, but one thread can be the bottleneck at 10k+ requests/s.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("braid-bench: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("braid-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Raw(common) => {
            let rate = raw::measure(
                &common.store(),
                &run_id(),
                common.raw_connections(),
                Duration::from_secs(common.raw_seconds.max(1)),
            )
            .await?;
            println!(
                "{}: {:.0} single-row commits/s with {} connections; CPU (cores): database {}, client {}",
                common.store().kind(),
                rate.commits_per_sec,
                rate.connections,
                fmt_opt(rate.db_cores, 2),
                fmt_opt(rate.client_cores, 2)
            );
            Ok(())
        }
        Command::Run(args) => {
            print_machine();
            let store = args.common.store();
            print_store_settings(&store).await;
            let raw = measure_raw(&args.common, &store).await?;
            let row = run_one(
                &args.common,
                &args.server,
                &store,
                args.workload,
                args.rate,
                raw,
            )
            .await?;
            println!("\n{}", table(&[row]));
            Ok(())
        }
        Command::Suite(args) => suite(args).await,
    }
}

fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{:x}", nanos % (1 << 40))
}

/// Prints (and returns) the durability settings of the store's database.
async fn print_store_settings(store: &Store) -> String {
    let s = match store {
        Store::Mysql { server } => raw::mysql_settings(server)
            .await
            .unwrap_or_else(|e| format!("database settings unknown: {e:#}")),
        Store::Postgres { server } => raw::postgres_settings(server)
            .await
            .unwrap_or_else(|e| format!("database settings unknown: {e:#}")),
        Store::Sqlite { dir } => format!(
            "sqlite: files in {}, journal_mode=WAL synchronous=FULL (braid's settings)",
            dir.display()
        ),
    };
    println!("{s}");
    s
}

async fn measure_raw(common: &CommonArgs, store: &Store) -> anyhow::Result<Option<RawRate>> {
    if common.raw_seconds == 0 {
        return Ok(None);
    }
    eprintln!(
        "measuring raw single-row commits on {} ({} connections, {} s)...",
        store.kind(),
        common.raw_connections(),
        common.raw_seconds
    );
    let rate = raw::measure(
        store,
        &run_id(),
        common.raw_connections(),
        Duration::from_secs(common.raw_seconds),
    )
    .await?;
    eprintln!(
        "  {:.0} commits/s; CPU (cores): database {}, client {}",
        rate.commits_per_sec,
        fmt_opt(rate.db_cores, 2),
        fmt_opt(rate.client_cores, 2)
    );
    Ok(Some(rate))
}

/// One line of the results table.
#[derive(Debug, Clone)]
struct Row {
    store: &'static str,
    workload: Workload,
    clients: usize,
    rate: Option<f64>,
    result: LoadResult,
    raw: Option<RawRate>,
}

fn braid_bin(server: &ServerArgs) -> anyhow::Result<PathBuf> {
    if let Some(b) = &server.braid_bin {
        return Ok(b.clone());
    }
    let me = std::env::current_exe().context("locating this executable")?;
    let dir = me.parent().context("executable has no directory")?;
    Ok(dir.join("braid"))
}

async fn run_one(
    common: &CommonArgs,
    server: &ServerArgs,
    store: &Store,
    workload: Workload,
    rate: Option<f64>,
    raw: Option<RawRate>,
) -> anyhow::Result<Row> {
    let id = run_id();
    let busi = if workload.needs_busi() {
        Some(busi::Busi::start().await?)
    } else {
        None
    };
    let target = match server.target {
        Some(addr) => Target::attach(addr, server.target_pid).await?,
        None => {
            if let Store::Sqlite { dir } = store {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            Target::spawn(
                &braid_bin(server)?,
                &store.braid_dsn(&id),
                &server.server_args,
            )
            .await?
        }
    };
    let db_procs = store.db_procs();
    let mode = match rate {
        Some(r) => format!("open loop at {r:.0}/s over {} connections", common.clients),
        None => format!("closed loop, {} clients", common.clients),
    };
    eprintln!(
        "{} / {}: {mode}, {} s after {} s warm-up...",
        store.kind(),
        workload.name(),
        common.duration,
        common.warmup
    );
    let opts = LoadOptions {
        workload,
        clients: common.clients,
        rate,
        warmup: Duration::from_secs(common.warmup),
        duration: Duration::from_secs(common.duration.max(1)),
        run_id: id.clone(),
        busi: busi.as_ref().map(|b| b.addr),
    };
    let result = load::run(&target, db_procs, &opts).await;
    if server.target.is_none() {
        target.stop().await;
        store.cleanup(&id).await;
    }
    let result = result?;
    let row = Row {
        store: store.kind(),
        workload,
        clients: common.clients,
        rate,
        result,
        raw,
    };
    print_row(&row, busi.as_ref().map(busi::Busi::calls));
    Ok(row)
}

fn print_row(row: &Row, busi_calls: Option<u64>) {
    let r = &row.result;
    let s = &r.store;
    println!("--- {} / {}", row.store, row.workload.name());
    println!(
        "  transactions/s {:>9.1}   ok {}  failed {}  window {:.1} s{}",
        r.rate(),
        r.ok,
        r.failed,
        r.seconds,
        row.rate
            .map(|x| format!("  offered {x:.0}/s  backlog at end {}", r.backlog))
            .unwrap_or_default()
    );
    println!(
        "  submit->final  p50 {:.2} ms  p99 {:.2} ms  p999 {:.2} ms  max {:.2} ms",
        r.quantile_ms(0.5),
        r.quantile_ms(0.99),
        r.quantile_ms(0.999),
        r.quantile_ms(1.0)
    );
    println!(
        "  durable commits/txn {:.3}   writes/txn {:.2}   writes/commit {:.1}   mean commit {:.2} ms",
        r.commits_per_txn(),
        s.writes / (r.ok as f64).max(1.0),
        s.writes / s.batches.max(1.0),
        1000.0 * s.commit_seconds / s.batches.max(1.0)
    );
    println!(
        "  CPU (cores): server {}  database {}  bench {}   server RSS {}",
        fmt_opt(r.server_cores, 2),
        fmt_opt(r.db_cores, 2),
        fmt_opt(r.bench_cores, 2),
        r.server_rss_kib
            .map(|k| format!("{:.0} MiB", k as f64 / 1024.0))
            .unwrap_or_else(|| "-".to_owned())
    );
    if let Some(raw) = row.raw {
        println!(
            "  raw single-row commits/s {:.0} ({} connections)   ratio txn/s / raw {:.2}",
            raw.commits_per_sec,
            raw.connections,
            r.rate() / raw.commits_per_sec
        );
    }
    if let Some(calls) = busi_calls {
        println!("  business service calls {calls}");
    }
    if let Some(e) = &r.first_error {
        println!("  first error: {e}");
    }
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "-".to_owned())
}

fn table(rows: &[Row]) -> String {
    let mut t = String::new();
    t.push_str("| store | workload | load | txn/s | p50 ms | p99 ms | p999 ms | commits/txn | writes/commit | server CPU | server RSS | DB CPU | bench CPU | raw commits/s | txn/s ÷ raw | failed |\n");
    t.push_str("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for row in rows {
        let r = &row.result;
        let load = match row.rate {
            Some(x) => format!("open {x:.0}/s"),
            None => format!("closed, {} clients", row.clients),
        };
        let raw = row.raw.map(|x| x.commits_per_sec);
        let _ = writeln!(
            t,
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.3} | {:.1} | {} | {} | {} | {} | {} | {} | {} |",
            row.store,
            row.workload.name(),
            load,
            r.rate(),
            r.quantile_ms(0.5),
            r.quantile_ms(0.99),
            r.quantile_ms(0.999),
            r.commits_per_txn(),
            r.store.writes / r.store.batches.max(1.0),
            fmt_opt(r.server_cores, 2),
            r.server_rss_kib
                .map(|k| format!("{:.0} MiB", k as f64 / 1024.0))
                .unwrap_or_else(|| "-".to_owned()),
            fmt_opt(r.db_cores, 2),
            fmt_opt(r.bench_cores, 2),
            fmt_opt(raw, 0),
            fmt_opt(raw.map(|x| r.rate() / x), 2),
            r.failed,
        );
    }
    t
}

/// The goals of issue 7, judged from the rows (a report, not an assertion).
fn goals(rows: &[Row]) -> String {
    let mut g = String::new();
    for store in ["sqlite", "mysql", "postgres"] {
        let find = |w: Workload, open: bool| {
            rows.iter()
                .find(|r| r.store == store && r.workload == w && r.rate.is_some() == open)
        };
        let Some(a) = find(Workload::Empty, false) else {
            continue;
        };
        let _ = writeln!(g, "{store}:");
        let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
        if let Some(raw) = a.raw {
            let ratio = a.result.rate() / raw.commits_per_sec;
            let _ = writeln!(
                g,
                "  (a) sagas/s ÷ raw commits/s = {ratio:.2} (goal ≥ 1.0): {}",
                verdict(ratio >= 1.0)
            );
        }
        let rate = a.result.rate();
        let _ = writeln!(
            g,
            "  (a) sagas/s = {rate:.0} (goal ≥ 10875): {}{}",
            verdict(rate >= 10_875.0),
            if rate < 10_875.0 {
                format!(", {:.0}% of the goal", 100.0 * rate / 10_875.0)
            } else {
                String::new()
            }
        );
        for w in [Workload::Empty, Workload::Busi] {
            if let Some(r) = find(w, false) {
                let c = r.result.commits_per_txn();
                let _ = writeln!(
                    g,
                    "  {} durable commits per saga at load = {c:.3} (goal ≤ 0.5): {}",
                    w.name(),
                    verdict(c <= 0.5)
                );
            }
        }
        if let Some(b) = find(Workload::Busi, true) {
            let p99 = b.result.quantile_ms(0.99);
            let _ = writeln!(
                g,
                "  (b) p99 submit->final at {:.0}/s (half the maximum) = {p99:.2} ms (goal ≤ 10 ms): {}",
                b.rate.unwrap_or_default(),
                verdict(p99 <= 10.0)
            );
        }
    }
    g
}

async fn suite(args: SuiteArgs) -> anyhow::Result<()> {
    if args.server.target.is_some() {
        bail!("suite starts its own servers; use `run --target` for a running one");
    }
    let machine = print_machine();
    let mut rows = Vec::new();
    let mut settings = Vec::new();
    for kind in &args.stores {
        let common = CommonArgs {
            store: *kind,
            ..args.common.clone()
        };
        let store = common.store();
        settings.push(print_store_settings(&store).await);
        let raw = measure_raw(&common, &store).await?;
        for workload in [
            Workload::Empty,
            Workload::Busi,
            Workload::Msg,
            Workload::Tcc,
        ] {
            let row = run_one(&common, &args.server, &store, workload, None, raw).await?;
            let max = row.result.rate();
            rows.push(row);
            if workload == Workload::Busi && max > 0.0 {
                let half = max / 2.0;
                let row = run_one(&common, &args.server, &store, workload, Some(half), raw).await?;
                rows.push(row);
            }
        }
    }
    let mut report = String::new();
    let _ = writeln!(report, "{machine}");
    for s in &settings {
        let _ = writeln!(report, "{s}");
    }
    let _ = writeln!(
        report,
        "{} s measured after {} s warm-up per row; {} clients/connections; raw commits: {} connections, {} s.\n",
        args.common.duration,
        args.common.warmup,
        args.common.clients,
        args.common.raw_connections(),
        args.common.raw_seconds
    );
    report.push_str(&table(&rows));
    let _ = writeln!(
        report,
        "\nload average after the run: {} (above ~0.5 the machine was busy with other work)\n",
        load_average()
    );
    report.push_str(&goals(&rows));
    println!("\n{report}");
    if let Some(out) = &args.out {
        std::fs::write(out, &report).with_context(|| format!("writing {}", out.display()))?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}

/// The 1, 5 and 15 minute load averages.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Prints (and returns) the machine and database settings the numbers depend on.
fn print_machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map(|kib| format!("{:.1} GiB", kib as f64 / 1024.0 / 1024.0))
        .unwrap_or_else(|| "unknown".to_owned());
    let load = load_average();
    let s =
        format!("machine: {cores} cores ({cpu}), {mem} RAM; load average before the run: {load}");
    println!("{s}");
    s
}
