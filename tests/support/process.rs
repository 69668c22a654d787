//! `braid serve` as a child process: spawn with extra flags, signal, wait, read its HTTP endpoints.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// Lease timing small enough for tests (4/3/1 s) on a shared database, with 1-second scans.
pub const CLUSTER_FLAGS: &[&str] = &[
    "--lease-backend",
    "sql",
    "--lease-duration",
    "4",
    "--lease-renew-deadline",
    "3",
    "--lease-retry-period",
    "1",
    "--scan-interval",
    "1",
];

/// A free TCP port on 127.0.0.1 (bound and released).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind probe");
    l.local_addr().expect("probe addr").port()
}

/// A running `braid serve` child. Killed (SIGKILL) when dropped.
pub struct BraidProcess {
    pub child: Child,
    pub port: u16,
    pub grpc_port: u16,
    pub node_id: String,
    http: reqwest::Client,
}

impl BraidProcess {
    /// Starts `braid serve` on `dsn` as `node_id` with `extra` flags, and waits until it answers.
    pub async fn spawn(dsn: &str, node_id: &str, extra: &[&str]) -> Self {
        let port = free_port();
        let grpc_port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_braid"))
            .args(["serve", "--bind", "127.0.0.1", "--store", dsn])
            .args(["--http-port", &port.to_string()])
            .args(["--grpc-port", &grpc_port.to_string()])
            .args(["--node-id", node_id, "--log-level", "warn"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("braid binary starts");
        let b = Self {
            child,
            port,
            grpc_port,
            node_id: node_id.to_owned(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("http client"),
        };
        b.wait_ready().await;
        b
    }

    /// `http://127.0.0.1:port/api/dtmsvr`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/api/dtmsvr", self.port)
    }

    async fn wait_ready(&self) {
        for _ in 0..300 {
            if let Ok(r) = self
                .http
                .get(format!("http://127.0.0.1:{}/api/ping", self.port))
                .send()
                .await
                && r.status().is_success()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{} did not answer /api/ping within 15 s", self.node_id);
    }

    /// `GET /api/braid/cluster`, or `None` when it does not answer.
    pub async fn cluster(&self) -> Option<Value> {
        let r = self
            .http
            .get(format!("http://127.0.0.1:{}/api/braid/cluster", self.port))
            .send()
            .await
            .ok()?;
        serde_json::from_str(&r.text().await.ok()?).ok()
    }

    /// The partitions this replica says it holds itself.
    pub async fn own_partitions(&self) -> Option<Vec<u16>> {
        let view = self.cluster().await?;
        view["members"]
            .as_array()?
            .iter()
            .find(|m| m["node_id"] == self.node_id.as_str())
            .map(|m| {
                m["partitions"]
                    .as_array()
                    .map(|ps| {
                        ps.iter()
                            .filter_map(|p| p.as_u64())
                            .map(|p| p as u16)
                            .collect()
                    })
                    .unwrap_or_default()
            })
            .or(Some(Vec::new()))
    }

    /// The value of a metric line (`name{labels}` as rendered), 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let Ok(r) = self
            .http
            .get(format!("http://127.0.0.1:{}/api/metrics", self.port))
            .send()
            .await
        else {
            return 0.0;
        };
        let text = r.text().await.unwrap_or_default();
        text.lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|rest| rest.trim().parse().ok())
            })
            .unwrap_or(0.0)
    }

    /// Sends a signal (`-KILL`, `-TERM`, `-STOP`, `-CONT`).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill runs")
            .success();
        assert!(ok, "kill {sig} {} failed", self.node_id);
    }

    /// Waits for the process to exit.
    pub async fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait on braid") {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} did not exit within {limit:?}",
                self.node_id
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for BraidProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
