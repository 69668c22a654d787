//! The server under test: a `braid serve` child process on a fresh store (or a server already running), its
//! `/api/metrics`, and the CPU time and memory of processes read from `/proc`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::client::Conn;

/// A store to run against.
#[derive(Debug, Clone)]
pub enum Store {
    /// A fresh SQLite file in this directory (removed afterwards).
    Sqlite {
        /// Directory that holds the database file (and the raw-commit scratch file).
        dir: PathBuf,
    },
    /// A fresh database on this MySQL/MariaDB server (`mysql://user:pass@host:port`, no database),
    /// dropped afterwards.
    Mysql {
        /// Server DSN without a database.
        server: String,
    },
    /// A fresh database on this PostgreSQL server (`postgres://user:pass@host:port`, no database),
    /// dropped afterwards.
    Postgres {
        /// Server DSN without a database.
        server: String,
    },
}

impl Store {
    /// `sqlite`, `mysql` or `postgres`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Sqlite { .. } => "sqlite",
            Self::Mysql { .. } => "mysql",
            Self::Postgres { .. } => "postgres",
        }
    }

    /// The processes of this store's database server on this machine, for their CPU share (none for
    /// SQLite, which runs inside braid).
    pub fn db_procs(&self) -> Option<DbProcs> {
        match self {
            Self::Sqlite { .. } => None,
            Self::Mysql { .. } => Some(DbProcs(&["mariadbd", "mysqld"])),
            Self::Postgres { .. } => Some(DbProcs(&["postgres"])),
        }
    }

    /// A DSN for braid's store, unique to `run_id`.
    pub fn braid_dsn(&self, run_id: &str) -> String {
        match self {
            Self::Sqlite { dir } => format!(
                "sqlite://{}",
                dir.join(format!("braid-{run_id}.db")).display()
            ),
            Self::Mysql { server } | Self::Postgres { server } => {
                format!("{}/braid_bench_{run_id}", server.trim_end_matches('/'))
            }
        }
    }

    /// Removes what [`Store::braid_dsn`] created.
    pub async fn cleanup(&self, run_id: &str) {
        match self {
            Self::Sqlite { dir } => {
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(dir.join(format!("braid-{run_id}.db{suffix}")));
                }
            }
            Self::Mysql { server } => {
                if let Err(e) = crate::raw::mysql_exec(
                    server,
                    &format!("DROP DATABASE IF EXISTS `braid_bench_{run_id}`"),
                )
                .await
                {
                    eprintln!("dropping braid_bench_{run_id}: {e:#}");
                }
            }
            Self::Postgres { server } => {
                if let Err(e) = crate::raw::postgres_exec(
                    server,
                    &format!("DROP DATABASE IF EXISTS braid_bench_{run_id} WITH (FORCE)"),
                )
                .await
                {
                    eprintln!("dropping braid_bench_{run_id}: {e:#}");
                }
            }
        }
    }
}

/// The braid server being measured. A child it started is killed when it is dropped.
pub struct Target {
    /// HTTP address of its API.
    pub addr: SocketAddr,
    /// Its pid, when known (CPU and RSS are read from `/proc/<pid>`).
    pub pid: Option<u32>,
    child: Option<Child>,
}

/// A free TCP port on loopback (bound and released; good enough for a benchmark).
fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("probing for a free port")?;
    Ok(l.local_addr().context("probe address")?.port())
}

impl Target {
    /// Starts `braid serve` on `dsn` and waits until `/api/ping` answers.
    pub async fn spawn(bin: &Path, dsn: &str, extra_args: &[String]) -> anyhow::Result<Self> {
        let port = free_port()?;
        let grpc = free_port()?;
        let child = Command::new(bin)
            .args(["serve", "--bind", "127.0.0.1", "--log-level", "warn"])
            .args(["--http-port", &port.to_string()])
            .args(["--grpc-port", &grpc.to_string()])
            .args(["--store", dsn])
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (build it first: cargo build --release)",
                    bin.display()
                )
            })?;
        let addr: SocketAddr = format!("127.0.0.1:{port}")
            .parse()
            .context("server address")?;
        let target = Self {
            addr,
            pid: Some(child.id()),
            child: Some(child),
        };
        target.wait_ready(Duration::from_secs(30)).await?;
        Ok(target)
    }

    /// A server that is already running at `addr` (optionally with its pid, for CPU and RSS).
    pub async fn attach(addr: SocketAddr, pid: Option<u32>) -> anyhow::Result<Self> {
        let target = Self {
            addr,
            pid,
            child: None,
        };
        target.wait_ready(Duration::from_secs(5)).await?;
        Ok(target)
    }

    async fn wait_ready(&self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        let mut conn = Conn::new(self.addr)?;
        loop {
            if let Ok(r) = conn.get("/api/ping").await
                && r.status.is_success()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "braid at {} did not answer /api/ping in {limit:?}",
                    self.addr
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The store counters of `/api/metrics` now.
    pub async fn store_counters(&self) -> anyhow::Result<StoreCounters> {
        let mut conn = Conn::new(self.addr)?;
        let reply = conn.get("/api/metrics").await?;
        if !reply.status.is_success() {
            bail!("/api/metrics answered {}", reply.status);
        }
        let text = String::from_utf8_lossy(&reply.body);
        let value = |name: &str| -> f64 {
            text.lines()
                .find_map(|l| {
                    let rest = l.strip_prefix(name)?;
                    rest.strip_prefix(' ')?.trim().parse::<f64>().ok()
                })
                .unwrap_or(0.0)
        };
        Ok(StoreCounters {
            commits: value("braid_store_commits_total"),
            writes: value("braid_store_batch_size_sum"),
            batches: value("braid_store_batch_size_count"),
            commit_seconds: value("braid_store_commit_duration_seconds_sum"),
        })
    }

    /// Kills the child this bench started (by its own handle) and waits for it; an attached server is left alone.
    pub async fn stop(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = tokio::task::spawn_blocking(move || child.wait()).await;
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Counters of the group-commit writer (from `/api/metrics`).
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreCounters {
    /// `braid_store_commits_total`: durable database commits.
    pub commits: f64,
    /// Writes carried by those commits (sum of `braid_store_batch_size`).
    pub writes: f64,
    /// Committed batches (count of `braid_store_batch_size`).
    pub batches: f64,
    /// Seconds spent applying and committing.
    pub commit_seconds: f64,
}

impl std::ops::Sub for StoreCounters {
    type Output = Self;
    fn sub(self, o: Self) -> Self {
        Self {
            commits: self.commits - o.commits,
            writes: self.writes - o.writes,
            batches: self.batches - o.batches,
            commit_seconds: self.commit_seconds - o.commit_seconds,
        }
    }
}

/// CPU time (user + system) and memory of one process.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    /// CPU seconds used so far.
    pub cpu_seconds: f64,
    /// Resident set size in KiB now.
    pub rss_kib: u64,
}

/// Linux reports `/proc/<pid>/stat` times in USER_HZ, which is 100 on every Linux ABI braid runs on.
const USER_HZ: f64 = 100.0;

/// Reads `/proc/<pid>/stat` and `/proc/<pid>/status`. `None` when the process is gone or not Linux.
pub fn proc_sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: fields start after the last ')'.
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the name: state(0) ppid(1) ... utime is field 14 of the line, index 11 here; stime index 12.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Some(ProcSample {
        cpu_seconds: (utime + stime) / USER_HZ,
        rss_kib,
    })
}

/// The processes of a local database server, by command name: all of them, since PostgreSQL serves each
/// connection from a process of its own.
#[derive(Debug, Clone, Copy)]
pub struct DbProcs(&'static [&'static str]);

impl DbProcs {
    /// The summed CPU time and memory of the server's processes now; `None` when none runs here.
    pub fn sample(&self) -> Option<ProcSample> {
        let entries = std::fs::read_dir("/proc").ok()?;
        let mut total: Option<ProcSample> = None;
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) else {
                continue;
            };
            if !self.0.contains(&comm.trim()) {
                continue;
            }
            if let Some(s) = proc_sample(pid) {
                let t = total.get_or_insert(ProcSample {
                    cpu_seconds: 0.0,
                    rss_kib: 0,
                });
                t.cpu_seconds += s.cpu_seconds;
                t.rss_kib += s.rss_kib;
            }
        }
        total
    }
}
