//! Crash recovery with real processes: `braid serve` runs as a child process on MariaDB; it is killed with
//! SIGKILL while transactions are in flight (and while submits are still arriving), restarted, and every
//! transaction it acknowledged must reach its final state. SIGTERM must drain gracefully.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::{Backend, Busi, drop_database, fresh_dsn, gid, saga_body};

struct Braid {
    child: Child,
    port: u16,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind probe");
    l.local_addr().expect("probe addr").port()
}

impl Braid {
    async fn spawn(dsn: &str, port: u16) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_braid"))
            .args([
                "serve",
                "--bind",
                "127.0.0.1",
                "--http-port",
                &port.to_string(),
                "--store",
                dsn,
            ])
            .args(["--grpc-port", &free_port().to_string()])
            .args([
                "--retry-interval",
                "2",
                "--request-timeout",
                "5",
                "--scan-interval",
                "1",
                "--log-level",
                "warn",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("braid binary starts");
        let b = Self { child, port };
        b.wait_ready().await;
        b
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/api/dtmsvr", self.port)
    }

    async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        for _ in 0..200 {
            if let Ok(r) = client
                .get(format!("http://127.0.0.1:{}/api/ping", self.port))
                .send()
                .await
                && r.status().is_success()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("braid did not answer /api/ping within 10 s");
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill runs")
            .success();
        assert!(ok, "kill {sig} failed");
    }

    async fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait on braid") {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "braid did not exit within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Braid {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn status_of(client: &reqwest::Client, base: &str, gid: &str) -> String {
    let Ok(resp) = client.get(format!("{base}/query?gid={gid}")).send().await else {
        return "<unreachable>".to_owned();
    };
    let body: Value = resp.json_or_null().await;
    body["transaction"]["status"]
        .as_str()
        .unwrap_or("<none>")
        .to_owned()
}

trait JsonOrNull {
    async fn json_or_null(self) -> Value;
}

impl JsonOrNull for reqwest::Response {
    async fn json_or_null(self) -> Value {
        let text = self.text().await.unwrap_or_default();
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }
}

/// Polls until every gid has `want` status, or fails after `limit` listing the stragglers.
async fn wait_all(base: &str, gids: &[String], want: &str, limit: Duration) {
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let mut pending = Vec::new();
        for g in gids {
            let s = status_of(&client, base, g).await;
            if s != want {
                pending.push(format!("{g}={s}"));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_flight_loses_no_accepted_transaction() {
    let busi = Busi::start().await;
    let dsn = fresh_dsn(Backend::Mysql);
    let port = free_port();
    let braid = Braid::spawn(&dsn, port).await;
    let client = reqwest::Client::new();

    // Phase 1: sagas whose TransIn hangs, so the server is mid-pass when it dies.
    busi.delay("TransIn", Duration::from_secs(3));
    let mut accepted = Vec::new();
    for i in 0..10 {
        let g = gid(&format!("crash-{i}"));
        let resp = client
            .post(format!("{}/submit", braid.url()))
            .body(saga_body(&g, &busi.url(), "", "").to_string())
            .send()
            .await
            .expect("submit sent");
        assert_eq!(resp.status().as_u16(), 200);
        accepted.push(g);
    }
    // Phase 2: keep submitting from many tasks while the kill lands; every 200 must survive. Half the
    // tasks submit sagas of empty URLs with wait_result, which braid stores already finished in one
    // grouped write: their 200 says that write committed, so they must be `succeed` after the restart.
    let url = braid.url();
    let busi_url = busi.url();
    let mut submitters = tokio::task::JoinSet::new();
    for t in 0..8 {
        let (url, busi_url) = (url.clone(), busi_url.clone());
        submitters.spawn(async move {
            let client = reqwest::Client::new();
            let mut acked = Vec::new();
            for i in 0..200 {
                let g = gid(&format!("burst-{t}-{i}"));
                let body = if t % 2 == 0 {
                    saga_body(&g, &busi_url, "", "").to_string()
                } else {
                    serde_json::json!({
                        "gid": g,
                        "trans_type": "saga",
                        "steps": [{"action": "", "compensate": ""}, {"action": "", "compensate": ""}],
                        "payloads": ["{}", "{}"],
                        "wait_result": true,
                    })
                    .to_string()
                };
                match client.post(format!("{url}/submit")).body(body).send().await {
                    Ok(r) if r.status().as_u16() == 200 => acked.push(g),
                    _ => break,
                }
            }
            acked
        });
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut braid = braid;
    braid.signal("-KILL");
    braid.wait_exit(Duration::from_secs(5)).await;
    while let Some(acked) = submitters.join_next().await {
        accepted.extend(acked.expect("submitter task"));
    }
    assert!(
        accepted.len() > 10,
        "some burst submits were acknowledged before the kill"
    );

    // Phase 3: restart on the same store; the scanner must finish everything acknowledged.
    busi.delay("TransIn", Duration::ZERO);
    let braid = Braid::spawn(&dsn, port).await;
    wait_all(&braid.url(), &accepted, "succeed", Duration::from_secs(60)).await;
    for g in &accepted[..10] {
        let routes = busi.routes_of(g);
        assert!(
            routes.contains(&"TransOut".to_owned()) && routes.contains(&"TransIn".to_owned()),
            "{g}: {routes:?}"
        );
        assert!(
            !routes.iter().any(|r| r.ends_with("Revert")),
            "{g} was compensated: {routes:?}"
        );
    }
    drop(braid);
    drop_database(&dsn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_running_passes_then_exits_cleanly() {
    let busi = Busi::start().await;
    let dsn = fresh_dsn(Backend::Mysql);
    let mut braid = Braid::spawn(&dsn, free_port()).await;
    busi.delay("TransIn", Duration::from_millis(800));
    let g = gid("drain");
    let client = reqwest::Client::new();
    let resp = client
        .post(format!("{}/submit", braid.url()))
        .body(saga_body(&g, &busi.url(), "", "").to_string())
        .send()
        .await
        .expect("submit sent");
    assert_eq!(resp.status().as_u16(), 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    braid.signal("-TERM");
    let status = braid.wait_exit(Duration::from_secs(15)).await;
    assert!(status.success(), "braid exited with {status}");
    // The pass that was running finished before exit: the store says succeed without any restart.
    let port = free_port();
    let braid = Braid::spawn(&dsn, port).await;
    assert_eq!(status_of(&client, &braid.url(), &g).await, "succeed");
    assert_eq!(busi.routes_of(&g), ["TransOut", "TransIn"]);
    drop(braid);
    drop_database(&dsn).await;
}
