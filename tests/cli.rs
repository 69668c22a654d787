//! The `braid` binary as a user runs it: `migrate`, `serve`, the admin commands against a running server,
//! and configuration errors that name the setting.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::{Backend, fresh_dsn};

fn braid() -> Command {
    Command::new(env!("CARGO_BIN_EXE_braid"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run_json(args: &[&str]) -> (bool, Value, String) {
    let out = braid().args(args).output().expect("braid runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (
        out.status.success(),
        serde_json::from_str(&stdout).unwrap_or(Value::Null),
        stderr,
    )
}

#[tokio::test]
async fn admin_commands_query_list_and_force_stop_a_running_server() {
    let dsn = fresh_dsn(Backend::Sqlite);
    let migrated = braid().args(["migrate", "--store", &dsn]).status().unwrap();
    assert!(migrated.success(), "braid migrate failed");
    let (http, grpc) = (free_port(), free_port());
    let _server = Child(
        braid()
            .args([
                "serve",
                "--bind",
                "127.0.0.1",
                "--store",
                &dsn,
                "--log-level",
                "warn",
            ])
            .args([
                "--http-port",
                &http.to_string(),
                "--grpc-port",
                &grpc.to_string(),
            ])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{http}");
    let client = reqwest::Client::new();
    let mut up = false;
    for _ in 0..100 {
        if client.get(format!("{base}/api/ping")).send().await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "server did not come up");
    let page = client.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    assert!(
        page.text()
            .await
            .unwrap()
            .contains("<title>braid admin</title>")
    );
    // A prepared msg stays unfinished: something to list and force-stop.
    let body = r#"{"gid":"cli-1","trans_type":"msg","steps":[{"action":"http://127.0.0.1:9/x"}],"payloads":["{}"],"query_prepared":"http://127.0.0.1:9/q"}"#;
    let resp = client
        .post(format!("{base}/api/dtmsvr/prepare"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);

    let (ok, q, err) = run_json(&["query", "cli-1", "--server", &base]);
    assert!(ok, "{err}");
    assert_eq!(q["transaction"]["status"], "prepared");
    assert_eq!(q["branches"].as_array().unwrap().len(), 1);

    let (ok, l, err) = run_json(&["list", "--status", "prepared", "--server", &base]);
    assert!(ok, "{err}");
    assert_eq!(l["transactions"][0]["gid"], "cli-1");

    let (ok, _, err) = run_json(&["force-stop", "cli-1", "--server", &base]);
    assert!(ok, "{err}");
    let (_, q, _) = run_json(&["query", "cli-1", "--server", &base]);
    assert_eq!(q["transaction"]["status"], "failed");

    let (ok, _, err) = run_json(&["force-stop", "cli-1", "--server", &base]);
    assert!(!ok, "a second force-stop must fail");
    assert!(err.contains("409"), "{err}");
}

#[test]
fn bad_configuration_exits_with_a_message_naming_the_setting() {
    let out = braid()
        .args(["serve", "--retry-interval", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("retry-interval"));

    let out = braid()
        .args(["serve", "--store", "postgresx://nowhere/db"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("postgresx"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = braid()
        .args(["query", "x", "--server", "http://127.0.0.1:9"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach"));
}
