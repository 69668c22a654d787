//! The admin page as an operator meets it: switched off, under a base path, behind tokens, and in a real
//! browser (headless Chromium driven by playwright-core, tests/e2e/admin_page.js) against transactions
//! planted with hostile gids, branch URLs, a rollback reason and branch headers.
//!
//! The browser test installs what it needs through tests/e2e/setup (Debian's `chromium`, node, `npm ci`
//! of the pinned playwright-core) when it is missing. It fails when the browser cannot be had, unless
//! `BRAID_SKIP_E2E=1` says a machine without one may skip it. Screenshots go to target/e2e/.

// Panicking is how a test fails; clippy's allow-*-in-tests does not reach the helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::time::Instant;

use braid::api::admin::BasePath;
use braid::config::Switch;
use serde_json::{Value, json};
use support::{Backend, TestServer};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const ADMIN_TOKEN: &str = "e2e-admin-token";
const CLIENT_TOKEN: &str = "e2e-client-token";

/// A server with tokens and, when given, the page under `base`.
async fn start(ui: Switch, base: &str) -> TestServer {
    let mut config = support::test_config(&support::fresh_dsn(Backend::Sqlite));
    config.auth.token_admin = Some(ADMIN_TOKEN.to_owned());
    config.auth.token_client = Some(CLIENT_TOKEN.to_owned());
    config.admin.ui = ui;
    config.admin.base_path = BasePath::parse(base).unwrap();
    TestServer::start_with(config).await
}

/// GET `path` with an optional token: (status, body).
async fn get(ts: &TestServer, path: &str, token: Option<&str>) -> (u16, String) {
    let mut req = ts.http.get(format!("http://{}{path}", ts.server.http_addr));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_can_be_switched_off_and_moved_under_a_base_path() {
    // Off: no page, no files; the API is unchanged.
    let ts = start(Switch::Off, "").await;
    for path in ["/", "/admin", "/admin.js", "/admin.css"] {
        assert_eq!(
            get(&ts, path, None).await.0,
            404,
            "{path} with the page off"
        );
        assert_eq!(get(&ts, path, Some(ADMIN_TOKEN)).await.0, 404, "{path}");
    }
    assert_eq!(
        get(&ts, "/api/dtmsvr/all", Some(ADMIN_TOKEN)).await.0,
        200,
        "the API stays"
    );
    ts.stop().await;

    // Under a base path: the shell and files are open and point at the prefix; nothing of the page is at
    // the root; the data routes under the prefix all need admin.
    let ts = start(Switch::On, "/ops/braid").await;
    for path in [
        "/ops/braid",
        "/ops/braid/",
        "/ops/braid/admin",
        "/ops/braid/admin.js",
        "/ops/braid/admin.css",
    ] {
        let (status, body) = get(&ts, path, None).await;
        assert_eq!(status, 200, "{path} is open");
        if !path.ends_with(".js") && !path.ends_with(".css") {
            assert!(
                body.contains(r#"<script src="/ops/braid/admin.js">"#)
                    && body.contains(r#"href="/ops/braid/admin.css""#)
                    && body.contains(r#"<meta name="braid-base" content="/ops/braid">"#),
                "{path}: {body}"
            );
            assert!(
                !body.contains("<script>") && !body.contains("style="),
                "no inline script or style (the policy would block it): {body}"
            );
        }
    }
    for path in ["/", "/admin", "/admin.js", "/ops/braidx/admin"] {
        assert_eq!(
            get(&ts, path, Some(ADMIN_TOKEN)).await.0,
            404,
            "{path} is not the page"
        );
    }
    for route in ["version", "all", "query?gid=nobody"] {
        let path = format!("/ops/braid/api/dtmsvr/{route}");
        assert_eq!(get(&ts, &path, None).await.0, 401, "{path} anonymous");
        assert_eq!(get(&ts, &path, Some(CLIENT_TOKEN)).await.0, 403, "{path}");
        assert_eq!(get(&ts, &path, Some("nope")).await.0, 401, "{path}");
        let status = get(&ts, &path, Some(ADMIN_TOKEN)).await.0;
        assert!(status == 200 || status == 404, "{path} as admin: {status}");
    }
    assert_eq!(
        get(&ts, "/ops/braid/api/dtmsvr/newGid", Some(ADMIN_TOKEN))
            .await
            .0,
        404,
        "only the routes the page calls live under the prefix"
    );
    // The prefixed state-changing routes keep the cross-site and JSON-only rules.
    let g = support::gid("prefixed");
    let (status, reply) = ts
        .post("prepare", &json!({"gid": g, "trans_type": "tcc"}))
        .await;
    assert_eq!(status, 200, "{reply}");
    let stop = |origin: Option<&str>, content_type: &str| {
        let mut req = ts
            .http
            .post(format!(
                "http://{}/ops/braid/api/dtmsvr/forceStop",
                ts.server.http_addr
            ))
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", content_type)
            .body(json!({"gid": g}).to_string());
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        req.send()
    };
    let status = |r: reqwest::Response| r.status().as_u16();
    assert_eq!(
        status(
            stop(Some("https://evil.example"), "application/json")
                .await
                .unwrap()
        ),
        403
    );
    assert_eq!(status(stop(None, "text/plain").await.unwrap()), 415);
    assert_eq!(ts.status(&g).await, "prepared");
    assert_eq!(status(stop(None, "application/json").await.unwrap()), 200);
    assert_eq!(ts.status(&g).await, "failed");
    ts.stop().await;
}

/// The browser, or why there is none.
fn browser() -> Result<PathBuf, String> {
    let name = std::env::var("BRAID_CHROMIUM").unwrap_or_else(|_| "chromium".to_owned());
    let candidates: Vec<PathBuf> = if name.contains('/') {
        vec![PathBuf::from(&name)]
    } else {
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|dir| dir.join(&name))
            .collect()
    };
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        format!("no `{name}` browser (set BRAID_CHROMIUM, or apt-get install chromium)")
    })
}

/// What the browser test needs: the browser, node and playwright-core; installed by tests/e2e/setup when
/// missing. `None`: missing, and `BRAID_SKIP_E2E=1` allows skipping.
fn e2e_tools() -> Option<PathBuf> {
    let e2e = Path::new(ROOT).join("tests/e2e");
    let present = || {
        let chromium = browser()?;
        let playwright = e2e.join("node_modules/playwright-core/package.json");
        if !playwright.is_file() {
            return Err("playwright-core is not installed in tests/e2e (npm ci)".to_owned());
        }
        Ok(chromium)
    };
    if let Ok(found) = present() {
        return Some(found);
    }
    let setup = std::process::Command::new("bash")
        .arg(e2e.join("setup"))
        .output();
    let why = match (present(), setup) {
        (Ok(found), _) => return Some(found),
        (Err(why), Ok(out)) => format!(
            "{why}, even after tests/e2e/setup ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
        (Err(why), Err(e)) => format!("{why}; tests/e2e/setup did not run: {e}"),
    };
    if std::env::var("BRAID_SKIP_E2E").is_ok_and(|v| v == "1") {
        eprintln!("BRAID_SKIP_E2E=1: the admin page's browser test is skipped: {why}");
        return None;
    }
    panic!("the admin page's browser test cannot run: {why} (BRAID_SKIP_E2E=1 skips it)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_browser_hostile_values_stay_text_and_an_operator_force_stops_with_a_token() {
    let Some(chromium) = e2e_tools() else { return };
    let ts = start(Switch::On, "/ops/braid").await;
    operator_scenario(&ts, &chromium, "/ops/braid", true, "tokens").await;
    ts.stop().await;
}

/// The same at the root without tokens (a laptop): no prompt, the page works at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_browser_the_page_at_the_root_without_tokens_needs_no_prompt() {
    let Some(chromium) = e2e_tools() else { return };
    let ts = TestServer::start(Backend::Sqlite).await;
    operator_scenario(&ts, &chromium, "", false, "open").await;
    ts.stop().await;
}

/// Plants the hostile transactions, runs tests/e2e/admin_page.js on the page under `base` (through the
/// token prompt when `tokens`), and checks the outcome through the API; screenshots go to
/// target/e2e/`shots`.
async fn operator_scenario(
    ts: &TestServer,
    chromium: &Path,
    base: &str,
    tokens: bool,
    shots: &str,
) {
    let started = Instant::now();
    // Hostile values in every place the page shows. Each would set window.__pwned if it ran.
    let saga_gid = r##"x" onmouseover="window.__pwned=1" y=""##;
    let prepared_gid = "<img src=x onerror=window.__pwned=2>";
    let aborted_gid = "</script><script>window.__pwned=3</script>";
    let reason = r#"'><svg onload=window.__pwned=4>"#;
    let urls = [
        r#"http://127.0.0.1:1/a"><img src=x onerror=window.__pwned=5>"#,
        "http://127.0.0.1:1/b'><iframe src=javascript:window.__pwned=6>",
    ];
    let header = r#""><img src=x onerror=window.__pwned=7>`${window.__pwned=8}`"#;
    let secret = "Bearer e2e-branch-secret";

    let (status, reply) = ts
        .post(
            "prepare",
            &json!({"gid": prepared_gid, "trans_type": "tcc"}),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    let (status, reply) = ts
        .post("prepare", &json!({"gid": aborted_gid, "trans_type": "tcc"}))
        .await;
    assert_eq!(status, 200, "{reply}");
    let (status, reply) = ts
        .post(
            "abort",
            &json!({"gid": aborted_gid, "trans_type": "tcc", "rollback_reason": reason}),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    // A saga whose branches cannot be reached: it stays submitted, retrying, until force-stopped.
    ts.submit_ok(&json!({
        "gid": saga_gid,
        "trans_type": "saga",
        "steps": [{"action": urls[0], "compensate": urls[1]}],
        "payloads": ["{}"],
        "branch_headers": {"X-Note": header, "Authorization": secret},
    }))
    .await;
    ts.wait_pass(saga_gid).await;
    let status_of = async |g: &str| -> String {
        let body = ts
            .http
            .get(format!("{}/query", ts.dtm()))
            .query(&[("gid", g)])
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let r: Value = serde_json::from_slice(&body).unwrap();
        r["transaction"]["status"].as_str().unwrap_or("").to_owned()
    };
    assert_eq!(status_of(saga_gid).await, "submitted");
    assert_eq!(status_of(aborted_gid).await, "failed");

    let shots = Path::new(ROOT).join("target/e2e").join(shots);
    let _ = std::fs::remove_dir_all(&shots);
    let input = json!({
        "url": format!("http://{}{base}/admin", ts.server.http_addr),
        "adminToken": tokens.then_some(ADMIN_TOKEN),
        "clientToken": tokens.then_some(CLIENT_TOKEN),
        "gids": {"saga": saga_gid, "prepared": prepared_gid, "aborted": aborted_gid},
        "reason": reason,
        "urls": urls,
        "header": header,
        "secret": secret,
        "shots": shots,
        "browser": chromium,
    });
    let script = Path::new(ROOT).join("tests/e2e/admin_page.js");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .arg(script)
            .env("BRAID_E2E", input.to_string())
            .output()
    })
    .await
    .unwrap()
    .expect("run node");
    assert!(
        out.status.success(),
        "the browser run failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let seen: Value = serde_json::from_slice(&out.stdout).expect("the script's report");
    assert_eq!(seen["dialogs"].as_array().map(Vec::len), Some(1), "{seen}");
    assert_eq!(seen["dialogs"][0]["type"], "confirm", "{seen}");

    // What the operator did, seen through the API.
    assert_eq!(status_of(saga_gid).await, "failed", "force-stopped");
    assert_eq!(status_of(prepared_gid).await, "prepared", "untouched");
    let mut expected = vec!["3-list", "4-filtered", "5-detail", "6-stopped"];
    if tokens {
        expected.extend(["1-token-prompt", "2-client-token-refused"]);
    }
    for shot in expected {
        let file = shots.join(format!("{shot}.png"));
        let len = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        assert!(len > 1000, "{} is missing or empty", file.display());
    }
    eprintln!(
        "admin page in a browser ({}): {:.1} s, screenshots in {}",
        if tokens {
            "tokens, base path"
        } else {
            "open, root"
        },
        started.elapsed().as_secs_f64(),
        shots.display()
    );
}
