//! What keeps braid safe to expose that needs no configuration: the admin page's escaping and its
//! Content-Security-Policy, the refusal of cross-site requests (CSRF), and secrets that are never shown
//! (sensitive branch headers in `query`/`all`, store passwords in logs and errors).

// Panicking is how a test fails; clippy's allow-*-in-tests does not reach the scenario fns and the harness.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::json;
use support::{Backend, TestServer, gid};

const HOSTILE: &[&str] = &[
    r#"x" onmouseover="alert(1)" y=""#,
    "<img src=x onerror=alert(1)>",
    "'><script>alert(1)</script>",
    "`${alert(1)}`",
    "&lt;already&gt;",
];

/// The page's `text()` (every value goes through it before it lands in markup) run by node on hostile
/// strings: nothing that can end an attribute, open a tag or start a template survives.
#[test]
fn the_admin_page_escapes_every_character_that_changes_markup() {
    let script = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api/admin.js"),
    )
    .unwrap();
    let escapes = script
        .lines()
        .filter(|l| l.starts_with("const ESCAPES") || l.starts_with("function text("))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(escapes.contains("function text("), "{escapes}");
    let program = format!(
        "{escapes}\nconsole.log(JSON.stringify({}.map(text)));",
        serde_json::to_string(HOSTILE).unwrap()
    );
    let Ok(out) = std::process::Command::new("node")
        .args(["-e", &program])
        .output()
    else {
        eprintln!("node is not installed; skipping the escaping check");
        return;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let escaped: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
    for (raw, e) in HOSTILE.iter().zip(&escaped) {
        for c in ['<', '>', '"', '\'', '`'] {
            assert!(!e.contains(c), "{raw:?} -> {e:?} keeps {c:?}");
        }
    }
    assert_eq!(escaped[4], "&amp;lt;already&amp;gt;", "& is escaped first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_page_runs_no_inline_script_under_a_strict_policy() {
    let ts = TestServer::start(Backend::Sqlite).await;
    let http = reqwest::Client::new();
    for (path, kind) in [
        ("/admin", "text/html"),
        ("/admin.js", "text/javascript"),
        ("/admin.css", "text/css"),
    ] {
        let r = http
            .get(format!("http://{}{path}", ts.server.http_addr))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path}");
        let h = |n: &str| {
            r.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        assert!(h("content-type").starts_with(kind), "{path}");
        let csp = h("content-security-policy");
        assert!(csp.contains("script-src 'self'"), "{csp}");
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert_eq!(h("x-content-type-options"), "nosniff");
    }
    let page = http
        .get(format!("http://{}/admin", ts.server.http_addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!page.contains("<script>"), "no inline script");
    assert!(page.contains(r#"<script src="/admin.js">"#));
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_requests_are_refused_and_sdks_are_not() {
    let ts = TestServer::start(Backend::Sqlite).await;
    let g = gid("csrf");
    let (status, reply) = ts
        .post("prepare", &json!({"gid": g, "trans_type": "tcc"}))
        .await;
    assert_eq!(
        status, 200,
        "an SDK (no Origin, no Sec-Fetch-Site) works: {reply}"
    );
    let http = reqwest::Client::new();
    let base = ts.dtm();
    let force_stop = |origin: Option<&str>, content_type: &str| {
        let mut req = http
            .post(format!("{base}/forceStop"))
            .header("content-type", content_type)
            .body(json!({"gid": g}).to_string());
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        req.send()
    };
    let host = ts.server.http_addr.to_string();
    let status = |r: reqwest::Response| r.status().as_u16();
    assert_eq!(
        status(
            force_stop(Some("https://evil.example"), "application/json")
                .await
                .unwrap()
        ),
        403,
        "another origin"
    );
    assert_eq!(
        status(force_stop(Some("null"), "application/json").await.unwrap()),
        403,
        "an opaque origin"
    );
    assert_eq!(
        status(force_stop(None, "text/plain").await.unwrap()),
        415,
        "a body a cross-site form could send"
    );
    assert_eq!(
        status(
            force_stop(None, "application/x-www-form-urlencoded")
                .await
                .unwrap()
        ),
        415
    );
    let img = http
        .get(format!("{base}/subscribe"))
        .query(&[("topic", "t"), ("url", "http://127.0.0.1:1/x")])
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(img.status().as_u16(), 403, "a cross-site <img> subscribe");
    assert_eq!(ts.status(&g).await, "prepared", "nothing was stopped");
    // The admin page itself: same origin, JSON.
    let own = format!("http://{host}");
    assert_eq!(
        status(force_stop(Some(&own), "application/json").await.unwrap()),
        200
    );
    assert_eq!(ts.status(&g).await, "failed");
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensitive_branch_headers_are_masked_in_query_and_all() {
    let ts = TestServer::start(Backend::Sqlite).await;
    let g = gid("secret");
    let body = json!({"gid": g, "trans_type": "tcc", "branch_headers": {
        "Authorization": "Bearer s3cr3t", "X-Api-Key": "k3y", "X-Trace": "visible"}});
    let (status, reply) = ts.post("prepare", &body).await;
    assert_eq!(status, 200, "{reply}");
    let query = ts.query(&g).await.to_string();
    let (_, all) = ts.get("all").await;
    for shown in [query, all.to_string()] {
        assert!(
            !shown.contains("s3cr3t") && !shown.contains("k3y"),
            "{shown}"
        );
        assert!(
            shown.contains("visible") && shown.contains("***"),
            "{shown}"
        );
    }
    ts.stop().await;
}

/// Every route x {anonymous, client, admin, wrong token}, with tokens configured and the default
/// anonymous role (client): the expected status of each, and DTM-style clients without a token still
/// run transactions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_each_role_as_documented() {
    let mut config = support::test_config(&support::fresh_dsn(Backend::Sqlite));
    config.auth.token_admin = Some("admin-secret".to_owned());
    config.auth.token_client = Some("client-secret".to_owned());
    config.auth.metrics_token = Some("metrics-secret".to_owned());
    let ts = TestServer::start_with(config).await;
    let http = reqwest::Client::new();
    let base = format!("http://{}", ts.server.http_addr);
    let g = gid("auth");
    // (method, path, body, needs): "open", "client", "admin", "metrics".
    let routes: Vec<(&str, String, Option<serde_json::Value>, &str)> = vec![
        ("GET", "/api/ping".into(), None, "open"),
        ("GET", "/api/ready".into(), None, "open"),
        ("GET", "/admin".into(), None, "open"),
        ("GET", "/api/metrics".into(), None, "metrics"),
        ("GET", "/api/dtmsvr/newGid".into(), None, "client"),
        ("GET", "/api/dtmsvr/version".into(), None, "client"),
        (
            "POST",
            "/api/dtmsvr/prepare".into(),
            Some(json!({"gid": g, "trans_type": "tcc"})),
            "client",
        ),
        ("GET", format!("/api/dtmsvr/query?gid={g}"), None, "client"),
        (
            "POST",
            "/api/json-rpc".into(),
            Some(json!({"jsonrpc": "2.0", "id": "1", "method": "newGid"})),
            "client",
        ),
        ("GET", "/api/dtmsvr/all".into(), None, "admin"),
        ("GET", "/api/dtmsvr/scanKV?cat=topics".into(), None, "admin"),
        (
            "GET",
            "/api/dtmsvr/subscribe?topic=t&url=http://127.0.0.1:1/x".into(),
            None,
            "admin",
        ),
        (
            "POST",
            "/api/dtmsvr/resetNextCronTime".into(),
            Some(json!({"gid": g})),
            "admin",
        ),
        ("GET", "/api/braid/cluster".into(), None, "admin"),
        (
            "POST",
            "/api/dtmsvr/forceStop".into(),
            Some(json!({"gid": "nobody"})),
            "admin",
        ),
    ];
    for (method, path, body, needs) in &routes {
        for (who, token) in [
            ("anonymous", None),
            ("client", Some("client-secret")),
            ("admin", Some("admin-secret")),
            ("wrong", Some("nope")),
            ("metrics", Some("metrics-secret")),
        ] {
            let mut req = http.request(method.parse().unwrap(), format!("{base}{path}"));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            if let Some(b) = body {
                req = req
                    .header("content-type", "application/json")
                    .body(b.to_string());
            }
            let status = req.send().await.unwrap().status().as_u16();
            let expected_ok = match (*needs, who) {
                ("open", _) => true,
                ("metrics", w) => w == "metrics",
                ("client", w) => w != "wrong" && w != "metrics",
                ("admin", w) => w == "admin",
                _ => unreachable!(),
            };
            let refused = matches!(status, 401 | 403);
            assert_eq!(!refused, expected_ok, "{method} {path} as {who}: {status}");
            if refused {
                let expected = if who == "client" && *needs == "admin" {
                    403
                } else {
                    401
                };
                assert_eq!(status, expected, "{method} {path} as {who}");
            }
        }
    }
    // gRPC: the same roles through the `authorization` metadata.
    let mut grpc = ts.grpc().await;
    let with = |token: Option<&str>, msg: braid::proto::dtmgimp::DtmTopicRequest| {
        let mut r = tonic::Request::new(msg);
        if let Some(t) = token {
            r.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        r
    };
    let topic = || braid::proto::dtmgimp::DtmTopicRequest {
        topic: "grpc-t".to_owned(),
        url: "http://127.0.0.1:1/x".to_owned(),
        remark: String::new(),
    };
    let err = grpc.subscribe(with(None, topic())).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    let err = grpc
        .subscribe(with(Some("client-secret"), topic()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    grpc.subscribe(with(Some("admin-secret"), topic()))
        .await
        .expect("admin subscribes");
    grpc.new_gid(()).await.expect("anonymous NewGid (client)");
    let metrics = http
        .get(format!("{base}/api/metrics"))
        .bearer_auth("metrics-secret")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"braid_auth_failures_total{reason="forbidden"}"#),
        "{metrics}"
    );
    assert!(!metrics.contains("secret\""), "no token in any label");
    ts.stop().await;
}

/// `--branch-allow`: a URL outside it is refused where the transaction is created, over every protocol,
/// naming the field and the URL; without an allowlist, link-local (metadata) addresses are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn branch_urls_outside_the_allowlist_are_refused() {
    let open = TestServer::start(Backend::Sqlite).await;
    let metadata = "http://169.254.169.254/latest/meta-data";
    let body = json!({"gid": gid("meta"), "trans_type": "saga",
        "steps": [{"action": metadata, "compensate": ""}], "payloads": ["{}"]});
    let (status, reply) = open.post("submit", &body).await;
    assert_eq!(status, 400, "{reply}");
    assert!(reply.to_string().contains("steps[0].action"), "{reply}");
    open.stop().await;

    let mut config = support::test_config(&support::fresh_dsn(Backend::Sqlite));
    config.branches.allow = Some("*.svc.cluster.local,127.0.0.1".to_owned());
    let ts = TestServer::start_with(config).await;
    let inside = "http://127.0.0.1:1/api/busi/TransOut";
    let outside = "http://evil.example/steal";
    let saga = |url: &str| {
        json!({"gid": gid("allow"), "trans_type": "saga",
            "steps": [{"action": inside, "compensate": url}], "payloads": ["{}"]})
    };
    let (status, reply) = ts.post("prepare", &saga(outside)).await;
    assert_eq!(status, 400, "{reply}");
    assert!(
        reply.to_string().contains("steps[0].compensate") && reply.to_string().contains(outside),
        "{reply}"
    );
    let (status, reply) = ts.post("prepare", &saga(inside)).await;
    assert_eq!(status, 200, "{reply}");
    let reply = ts.json_rpc("submit", saga(outside)).await;
    assert_eq!(reply["error"]["code"], -32602, "{reply}");
    let g = gid("allow-tcc");
    let (status, _) = ts
        .post("prepare", &json!({"gid": g, "trans_type": "tcc"}))
        .await;
    assert_eq!(status, 200);
    let (status, reply) = ts
        .post(
            "registerBranch",
            &json!({"gid": g, "trans_type": "tcc", "branch_id": "01",
                "confirm": outside, "cancel": inside, "data": "{}"}),
        )
        .await;
    assert_eq!(status, 400, "{reply}");
    assert!(reply.to_string().contains("'confirm'"), "{reply}");
    let (status, reply) = ts
        .get(&format!(
            "subscribe?topic=t&url={}",
            "http%3A%2F%2Fevil.example%2Fx"
        ))
        .await;
    assert_eq!(status, 400, "{reply}");
    let mut grpc = ts.grpc().await;
    let err = grpc
        .subscribe(braid::proto::dtmgimp::DtmTopicRequest {
            topic: "t".to_owned(),
            url: outside.to_owned(),
            remark: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    ts.stop().await;
}

/// A password holding every character that has a meaning in a URL.
/// (`%zz` is no escape, so it stands for itself.)
const HARD_PASSWORD: &str = "p@ss/w:rd?#%zz &x";

/// Creates a database user `user` with [`HARD_PASSWORD`] on the test server of `backend`, allowed to
/// create databases.
async fn create_user(backend: Backend, user: &str) {
    sqlx::any::install_default_drivers();
    let (admin, statements) = match backend {
        Backend::Mysql => (
            format!("{}/", support::mysql_base()),
            vec![
                format!("CREATE USER '{user}'@'%' IDENTIFIED BY '{HARD_PASSWORD}'"),
                format!("GRANT ALL PRIVILEGES ON *.* TO '{user}'@'%'"),
            ],
        ),
        Backend::Postgres => (
            format!("{}/postgres", support::postgres_base()),
            vec![format!(
                "CREATE ROLE {user} LOGIN CREATEDB PASSWORD '{HARD_PASSWORD}'"
            )],
        ),
        Backend::Sqlite => unreachable!("sqlite has no users"),
    };
    let pool = sqlx::AnyPool::connect(&admin).await.unwrap();
    for statement in statements {
        sqlx::query(&statement).execute(&pool).await.unwrap();
    }
    pool.close().await;
}

/// The DSN of `backend`'s test server for `user` with `password` written as is, and database `db`.
fn dsn_for(backend: Backend, user: &str, password: &str, db: &str) -> String {
    let base = match backend {
        Backend::Mysql => support::mysql_base(),
        Backend::Postgres => support::postgres_base(),
        Backend::Sqlite => unreachable!("sqlite has no users"),
    };
    let (scheme, rest) = base.split_once("://").unwrap();
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let auth = if password.is_empty() {
        user.to_owned()
    } else {
        format!("{user}:{password}")
    };
    format!("{scheme}://{auth}@{host}/{db}")
}

/// A password with `@ / : ? # %` and a space works written raw in the DSN and from
/// `--store-password-file`, on MySQL and PostgreSQL; and a wrong one is refused at once (not retried as if
/// the database were down) with an error that does not show it. (The test PostgreSQL trusts local
/// connections, so there a wrong password is not refused: only the DSN's parsing is checked.)
async fn any_character_works_in_a_store_password(backend: Backend) {
    let user = format!("braid_pw_{}", braid::model::short_uuid().to_lowercase());
    create_user(backend, &user).await;
    let db = format!("braid_it_{}", braid::model::short_uuid().to_lowercase());

    let raw = dsn_for(backend, &user, HARD_PASSWORD, &db);
    let store = braid::store::open(&raw)
        .await
        .unwrap_or_else(|e| panic!("raw password in the DSN: {e}"));
    store.ping().await.unwrap();
    drop(store);

    let dir = std::env::temp_dir().join(format!("braid-pw-{user}"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("password");
    std::fs::write(&file, format!("{HARD_PASSWORD}\n")).unwrap();
    let mut config = braid::config::Config::default();
    config.store.dsn = dsn_for(backend, &user, "stale", &db);
    config.store.password_file = Some(file);
    let dsn = config.store_dsn().unwrap();
    let store = braid::store::open(&dsn)
        .await
        .unwrap_or_else(|e| panic!("password from the file: {e}"));
    store.ping().await.unwrap();
    drop(store);

    if backend == Backend::Mysql {
        let wrong = dsn_for(backend, &user, "wr/ng#pass", &db);
        let err = braid::store::open(&wrong)
            .await
            .err()
            .expect("wrong password refused");
        let shown = format!("{err} {err:?}");
        assert!(
            !err.is_retryable(),
            "a wrong password is not an outage: {shown}"
        );
        assert!(
            !shown.contains("wr/ng#pass") && !shown.contains("wr%2Fng"),
            "{shown}"
        );
    }

    let base = match backend {
        Backend::Mysql => support::mysql_base(),
        _ => support::postgres_base(),
    };
    support::drop_database(&format!("{base}/{db}")).await;
    drop_user(backend, &user).await;
    std::fs::remove_dir_all(&dir).unwrap();
}

async fn drop_user(backend: Backend, user: &str) {
    let (admin, statement) = match backend {
        Backend::Mysql => (
            format!("{}/", support::mysql_base()),
            format!("DROP USER IF EXISTS '{user}'@'%'"),
        ),
        Backend::Postgres => (
            format!("{}/postgres", support::postgres_base()),
            format!("DROP ROLE IF EXISTS {user}"),
        ),
        Backend::Sqlite => unreachable!("sqlite has no users"),
    };
    let pool = sqlx::AnyPool::connect(&admin).await.unwrap();
    sqlx::query(&statement).execute(&pool).await.unwrap();
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_character_works_in_a_mysql_password() {
    any_character_works_in_a_store_password(Backend::Mysql).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_character_works_in_a_postgres_password() {
    any_character_works_in_a_store_password(Backend::Postgres).await;
}

/// What the server logs while it cannot open its store never shows the DSN's password: the start-up
/// retries against a port nothing listens on, and the refusal of a wrong password.
#[test]
fn the_store_password_never_appears_in_the_log() {
    let secret = "s3cr/et#pw";
    let closed = support::process::free_port();
    for dsn in [
        format!("mysql://root:{secret}@127.0.0.1:{closed}/braid"),
        format!("postgres://postgres:{secret}@127.0.0.1:{closed}/braid"),
    ] {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_braid"))
            .args(["serve", "--bind", "127.0.0.1", "--store", &dsn])
            .args([
                "--http-port",
                "0",
                "--grpc-port",
                "0",
                "--log-level",
                "debug",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Two retry rounds (every 3 s), then stop it.
        std::thread::sleep(std::time::Duration::from_secs(4));
        child.kill().unwrap();
        let out = child.wait_with_output().unwrap();
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(log.contains("store not reachable yet"), "{log}");
        assert!(log.contains("***"), "{log}");
        for shown in [secret, "s3cr%2Fet", "s3cr/et"] {
            assert!(!log.contains(shown), "{shown} in the log of {dsn}:\n{log}");
        }
    }
}

fn sha256_hex(token: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn tokens_yaml(entries: &[(&str, &str, &str)]) -> String {
    entries
        .iter()
        .map(|(name, role, token)| {
            format!(
                "- name: {name}\n  role: {role}\n  sha256: {}\n",
                sha256_hex(token)
            )
        })
        .collect()
}

/// `GET /api/dtmsvr/all` (an admin route) with `token`: the status.
async fn all_with(http: &reqwest::Client, base: &str, token: Option<&str>) -> u16 {
    let mut req = http.get(format!("{base}/api/dtmsvr/all"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap().status().as_u16()
}

/// Tokens from `--auth-tokens-file` work by role, a changed file is picked up without a restart, and a
/// broken edit keeps the tokens in force instead of opening or closing the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tokens_file_is_reloaded_when_it_changes() {
    let dir = std::env::temp_dir().join(format!("braid-tokens-{}", braid::model::short_uuid()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tokens.yaml");
    std::fs::write(
        &file,
        tokens_yaml(&[("ops", "admin", "ops-1"), ("ci", "client", "ci-1")]),
    )
    .unwrap();
    let mut config = support::test_config(&support::fresh_dsn(Backend::Sqlite));
    config.auth.tokens_file = Some(file.clone());
    let ts = TestServer::start_with(config).await;
    let http = reqwest::Client::new();
    let base = format!("http://{}", ts.server.http_addr);

    assert_eq!(all_with(&http, &base, Some("ops-1")).await, 200);
    assert_eq!(all_with(&http, &base, Some("ci-1")).await, 403);
    assert_eq!(
        all_with(&http, &base, None).await,
        401,
        "anonymous is client"
    );
    let new_gid = http
        .get(format!("{base}/api/dtmsvr/newGid"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        new_gid.status(),
        200,
        "DTM SDKs without a token still run transactions"
    );

    // Rotation: ops-1 is replaced by ops-2.
    std::fs::write(&file, tokens_yaml(&[("ops", "admin", "ops-2")])).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while all_with(&http, &base, Some("ops-2")).await != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the new token never worked"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(all_with(&http, &base, Some("ops-1")).await, 401);
    assert_eq!(all_with(&http, &base, Some("ci-1")).await, 401);

    // A broken edit: the tokens in force stay.
    std::fs::write(&file, "- name: ops\n  role: superuser\n").unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    assert_eq!(all_with(&http, &base, Some("ops-2")).await, 200);
    assert_eq!(all_with(&http, &base, None).await, 401);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A tokens file that is missing or invalid at start stops the start with an error naming it.
#[test]
fn a_bad_tokens_file_at_start_is_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("braid-tokens-{}", braid::model::short_uuid()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "- name: ops\n  role: admin\n  sha256: nothex\n").unwrap();
    for (file, want) in [
        (bad, "sha256 must be 64 hex digits"),
        (dir.join("missing.yaml"), "cannot read it"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_braid"))
            .args([
                "serve",
                "--bind",
                "127.0.0.1",
                "--http-port",
                "0",
                "--grpc-port",
                "0",
            ])
            .args(["--store", "sqlite://:memory:"])
            .arg("--auth-tokens-file")
            .arg(&file)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(
            err.contains(&file.display().to_string()) && err.contains(want),
            "{err}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--max-steps` bounds the steps of a saga (400 naming the field), and `--sensitive-headers` adds names
/// whose values `query` masks (branches still get them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_steps_and_extra_sensitive_headers_are_configurable() {
    let dsn = support::fresh_dsn(Backend::Sqlite);
    let braid = support::process::BraidProcess::spawn(
        &dsn,
        "limits",
        &[
            "--max-steps",
            "2",
            "--sensitive-headers",
            "x-sig*, X-Tenant-Pin",
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let saga = |g: &str, n: usize| {
        let steps: Vec<_> = (0..n)
            .map(
                |_| json!({"action": "http://127.0.0.1:1/a", "compensate": "http://127.0.0.1:1/c"}),
            )
            .collect();
        json!({
            "gid": g, "trans_type": "saga", "steps": steps, "payloads": vec![""; n],
            "branch_headers": {"X-Signature": "sig-value", "x-tenant-pin": "1234", "X-Team": "pay"},
        })
    };
    let too_many = http
        .post(format!("{}/prepare", braid.url()))
        .header("content-type", "application/json")
        .body(saga(&gid("steps"), 3).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(too_many.status(), 400);
    let body = too_many.text().await.unwrap();
    assert!(
        body.contains("steps") && body.contains("max-steps"),
        "{body}"
    );

    let g = gid("steps");
    let ok = http
        .post(format!("{}/prepare", braid.url()))
        .header("content-type", "application/json")
        .body(saga(&g, 2).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200, "{}", ok.text().await.unwrap());
    let shown = http
        .get(format!("{}/query?gid={g}", braid.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !shown.contains("sig-value") && !shown.contains("1234"),
        "{shown}"
    );
    assert!(
        shown.contains("\"pay\""),
        "other headers stay visible: {shown}"
    );
    drop(braid);
    support::drop_database(&dsn).await;
}

/// Submits a one-step saga (no compensation) to `target` on `ts` and waits for its final status.
async fn one_step_saga(ts: &TestServer, target: &str) -> (String, String) {
    let g = gid("resolve");
    let body = json!({"gid": g, "trans_type": "saga",
        "steps": [{"action": target, "compensate": ""}], "payloads": ["{}"]});
    let (status, reply) = ts.post("submit", &body).await;
    assert_eq!(status, 200, "{reply}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let s = ts.status(&g).await;
        if s == "succeed" || s == "failed" {
            return (g, s);
        }
        assert!(std::time::Instant::now() < deadline, "{g} stuck at {s}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A name inside `--branch-allow` is checked again when it resolves: with networks listed, a name that
/// resolves outside them is never called (the branch fails without a request, and is not retried); with
/// names only, the same call goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_resolves_outside_the_allowlist_is_not_called() {
    let busi = support::Busi::start().await;
    let port = busi
        .url()
        .split(':')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let by_name = format!("http://localhost:{port}/api/busi/TransOut");

    let mut config = support::test_config(&support::fresh_dsn(Backend::Sqlite));
    config.branches.allow = Some("localhost,10.0.0.0/8".to_owned());
    let ts = TestServer::start_with(config).await;
    let (g, status) = one_step_saga(&ts, &by_name).await;
    assert_eq!(status, "failed");
    assert!(
        busi.routes_of(&g).is_empty(),
        "no request reached the branch"
    );
    let shown = ts.query(&g).await.to_string();
    assert!(
        shown.contains("--branch-allow"),
        "the reason is kept: {shown}"
    );
    ts.stop().await;

    let mut config = support::test_config(&support::fresh_dsn(Backend::Sqlite));
    config.branches.allow = Some("localhost".to_owned());
    let ts = TestServer::start_with(config).await;
    let (g, status) = one_step_saga(&ts, &by_name).await;
    assert_eq!(status, "succeed");
    assert_eq!(busi.routes_of(&g), vec!["TransOut".to_owned()]);
    ts.stop().await;
}
