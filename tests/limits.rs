//! Resource limits against live servers: load shedding (503 + Retry-After, gRPC `Unavailable`) while the
//! probes keep answering, connection caps and timeouts, a GET with a body, the group-commit writer's byte
//! limit on MariaDB (413 for a write that can never fit), and the memory a real `braid serve` process
//! reaches under large concurrent submits.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use braid::proto::dtmgimp::DtmRequest;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::process::BraidProcess;
use support::{Backend, TestServer, fresh_dsn, gid, test_config};

/// A saga of one step with empty URLs (settled at once, no branch service needed) carrying `payload` bytes.
fn big_saga(g: &str, payload: usize) -> Value {
    json!({
        "gid": g,
        "trans_type": "saga",
        "steps": [{"action": "", "compensate": ""}],
        "payloads": ["p".repeat(payload)],
    })
}

/// Opens a POST that declares `declared` body bytes and sends only its first byte, so the server admits it
/// and its handler waits for the rest.
async fn slow_upload(addr: SocketAddr, path: &str, declared: usize) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: braid\r\ncontent-type: application/json\r\ncontent-length: {declared}\r\n\r\n{{"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s
}

/// Waits until `cond` holds (checked every 10 ms), at most `limit`.
async fn eventually(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `(status, Retry-After, body)` of a POST of `body` to `url`.
async fn post(http: &reqwest::Client, url: &str, body: String) -> (u16, Option<String>, String) {
    let r = http
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (r.status().as_u16(), retry, r.text().await.unwrap())
}

fn grpc_saga(g: &str, payload: usize) -> DtmRequest {
    DtmRequest {
        gid: g.to_owned(),
        trans_type: "saga".to_owned(),
        steps: json!([{"action": "", "compensate": ""}]).to_string(),
        bin_payloads: vec![vec![b'p'; payload]],
        ..DtmRequest::default()
    }
}

/// Over the in-flight byte cap and over the request cap, HTTP, JSON-RPC and gRPC answer 503 + Retry-After /
/// `Unavailable` without reading the body, while ping, ready and metrics answer; once the holders go away
/// the same requests succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_limit_requests_get_503_with_retry_after_while_probes_answer() {
    let mut config = test_config(&fresh_dsn(Backend::Sqlite));
    config.limits.max_inflight_bytes = 8 * 1024 * 1024;
    config.limits.max_concurrent_requests = 3;
    let ts = TestServer::start_with(config).await;
    let addr = ts.server.http_addr;
    let metrics = ts.server.metrics.clone();
    let submit = format!("{}/submit", ts.dtm());
    let rpc = format!("http://{addr}/api/json-rpc");

    // Two uploads of 4 MB each hold 8 of the 8 MiB.
    let held = [
        slow_upload(addr, "/api/dtmsvr/submit", 4_000_000).await,
        slow_upload(addr, "/api/dtmsvr/submit", 4_000_000).await,
    ];
    eventually(Duration::from_secs(5), "uploads admitted", || {
        metrics.api_inflight_bytes.get() >= 8_000_000
    })
    .await;
    let (status, retry, body) = post(
        &ts.http,
        &submit,
        big_saga(&gid("lim"), 1_000_000).to_string(),
    )
    .await;
    assert_eq!((status, retry.as_deref()), (503, Some("1")), "{body}");
    assert!(body.contains("max-inflight-bytes"), "{body}");
    let envelope = json!({"jsonrpc": "2.0", "id": 1, "method": "submit", "params": big_saga(&gid("lim"), 500_000)});
    let (status, retry, _) = post(&ts.http, &rpc, envelope.to_string()).await;
    assert_eq!((status, retry.as_deref()), (503, Some("1")));
    // gRPC declares no length: its frames are counted as they arrive, and the call is refused.
    let mut grpc = ts.grpc().await;
    let err = grpc
        .submit(grpc_saga(&gid("lim"), 1_000_000))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    for probe in ["/api/ping", "/api/ready", "/api/metrics"] {
        let (status, _) = ts.request(reqwest::Method::GET, probe, None).await;
        assert_eq!(status, 200, "{probe}");
    }

    // A third upload takes the last request slot: now everything but the probes is refused.
    let third = slow_upload(addr, "/api/dtmsvr/submit", 10).await;
    eventually(Duration::from_secs(5), "third upload admitted", || {
        metrics.api_inflight_requests.get() >= 3
    })
    .await;
    let r = ts
        .http
        .get(format!("{}/newGid", ts.dtm()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    assert!(r.text().await.unwrap().contains("max-concurrent-requests"));
    let err = grpc.new_gid(()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    let (status, _) = ts.request(reqwest::Method::POST, "/api/ping", None).await;
    assert_eq!(status, 200);
    let text = ts.metrics().await;
    for series in [
        r#"braid_api_rejected_total{reason="inflight_bytes",transport="http"} 2"#,
        r#"braid_api_rejected_total{reason="inflight_bytes",transport="grpc"} 1"#,
        r#"braid_api_rejected_total{reason="concurrent_requests",transport="http"} 1"#,
        r#"braid_api_rejected_total{reason="concurrent_requests",transport="grpc"} 1"#,
    ] {
        assert!(text.contains(series), "{series} in\n{text}");
    }

    // The holders go away: what they held is released, and the refused requests now pass.
    drop(held);
    drop(third);
    eventually(Duration::from_secs(5), "holders released", || {
        metrics.api_inflight_requests.get() == 0 && metrics.api_inflight_bytes.get() == 0
    })
    .await;
    let (status, _, body) = post(
        &ts.http,
        &submit,
        big_saga(&gid("lim"), 1_000_000).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    grpc.submit(grpc_saga(&gid("lim"), 1_000_000))
        .await
        .unwrap();
    ts.stop().await;
}

/// The open-file limit after raising it as far as allowed.
fn nofile_limit() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024)
}

/// Thousands of idle sockets and half-sent request heads hold connections, yet ping answers on a new
/// connection and on one that was open before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_and_half_sent_headers_do_not_stop_ping() {
    let ts = TestServer::start(Backend::Sqlite).await;
    let addr = ts.server.http_addr;
    let ping = format!("http://{addr}/api/ping");
    let kept = reqwest::Client::new();
    assert_eq!(kept.get(&ping).send().await.unwrap().status(), 200);

    // Each socket costs this process two descriptors (both ends live here); keep room for the rest.
    let limit = nofile_limit();
    let idle = usize::try_from(limit.saturating_sub(700) / 2)
        .unwrap_or(0)
        .min(2000);
    println!("open file limit {limit}: {idle} idle sockets and 50 half-sent heads");
    let mut sockets = Vec::with_capacity(idle + 50);
    for _ in 0..idle {
        sockets.push(TcpStream::connect(addr).await.unwrap());
    }
    for _ in 0..50 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /api/dtmsvr/submit HTTP/1.1\r\nhost: braid\r\ncontent-le")
            .await
            .unwrap();
        sockets.push(s);
    }
    let gauge = ts
        .server
        .metrics
        .api_connections
        .with_label_values(&["http"]);
    eventually(Duration::from_secs(20), "every socket accepted", || {
        gauge.get() as usize >= idle + 50
    })
    .await;

    let fresh = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let started = Instant::now();
    assert_eq!(fresh.get(&ping).send().await.unwrap().status(), 200);
    let (status, _) = ts.request(reqwest::Method::GET, "/api/ready", None).await;
    assert_eq!(status, 200);
    assert_eq!(kept.get(&ping).send().await.unwrap().status(), 200);
    println!(
        "ping with {} open sockets: {:?}",
        sockets.len(),
        started.elapsed()
    );
    drop(sockets);
    ts.stop().await;
}

/// At the connection cap new clients wait (they are not accepted), a client connected before keeps its
/// answers, and the header-read timeout closes the idle sockets, after which the waiting client is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_wait_until_idle_ones_time_out() {
    let mut config = test_config(&fresh_dsn(Backend::Sqlite));
    config.limits.max_connections = 20;
    config.limits.header_read_timeout = Duration::from_secs(2);
    let ts = TestServer::start_with(config).await;
    let addr = ts.server.http_addr;
    let ping = format!("http://{addr}/api/ping");
    // The gRPC listener shares the slots, so the HTTP client below holds one of them.
    let kept = reqwest::Client::new();
    assert_eq!(kept.get(&ping).send().await.unwrap().status(), 200);
    let mut idle = Vec::new();
    for _ in 0..19 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    let gauge = ts
        .server
        .metrics
        .api_connections
        .with_label_values(&["http"]);
    eventually(Duration::from_secs(5), "19 more accepted", || {
        gauge.get() == 20
    })
    .await;
    assert_eq!(
        kept.get(&ping).send().await.unwrap().status(),
        200,
        "a connected client is still served at the cap"
    );

    let fresh = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    let waiting = tokio::spawn({
        let ping = ping.clone();
        async move {
            let started = Instant::now();
            let status = fresh.get(&ping).send().await.map(|r| r.status().as_u16());
            (status, started.elapsed())
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "a new client waits at the cap");
    let (status, waited) = waiting.await.unwrap();
    assert_eq!(status.unwrap(), 200);
    println!("a new client waited {waited:?} for a slot");
    // The server closed the idle sockets when their header-read time ran out.
    for mut s in idle {
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("closed by the server")
            .unwrap_or(0);
        assert_eq!(n, 0);
    }
    ts.stop().await;
}

/// A GET with a body the handler does not read gets its whole answer: the server closes the connection
/// after the response without resetting it (which used to cut a long answer short).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_with_a_body_gets_the_whole_answer() {
    let ts = TestServer::start(Backend::Sqlite).await;
    let g = gid("getbody");
    ts.submit_ok(&big_saga(&g, 3_000_000)).await;
    let body = vec![b'x'; 2_000_000];
    let mut s = TcpStream::connect(ts.server.http_addr).await.unwrap();
    let head = format!(
        "GET /api/dtmsvr/query?gid={g} HTTP/1.1\r\nhost: braid\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    // The server may answer and stop reading before the body is all sent.
    let _ = s.write_all(&body).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut answer))
        .await
        .expect("answer within 20 s");
    assert!(
        read.is_ok(),
        "read failed after {} bytes: {read:?}",
        answer.len()
    );
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&answer[..split]).to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let declared: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .expect("content-length")
        .trim()
        .parse()
        .unwrap();
    assert!(declared > 6_000_000, "both branches' payloads: {declared}");
    assert_eq!(
        answer.len() - split - 4,
        declared,
        "the whole answer arrived"
    );
    ts.stop().await;
}

/// A write over the writer's byte limit is a 413 naming the limit (HTTP) and `ResourceExhausted` (gRPC),
/// never a 503; smaller writes around it are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_write_gets_413_naming_the_limit() {
    let mut config = test_config(&fresh_dsn(Backend::Sqlite));
    config.writer.max_batch_bytes = Some(1024 * 1024);
    let ts = TestServer::start_with(config).await;
    // Two branches (action and compensate) of 600 kB each.
    let (status, reply) = ts.post("submit", &big_saga(&gid("big"), 600_000)).await;
    assert_eq!(status, 413, "{reply}");
    let message = reply["message"].as_str().unwrap();
    assert!(message.contains("limit of 1048576 bytes"), "{message}");
    let err = ts
        .grpc()
        .await
        .submit(grpc_saga(&gid("big"), 600_000))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    ts.submit_ok(&big_saga(&gid("small"), 300_000)).await;
    ts.stop().await;
}

/// On MariaDB with its real `max_allowed_packet`, six ~3.9 MB submits and forty small ones sent together
/// all succeed: the writer keeps every batch under the packet (none fails as "unavailable"). The writer
/// waits 300 ms for more writes, so they meet in its queue: one batch of all of them (about 47 MB) is
/// what failed before. A msg whose payload fans out to five subscribers can never fit and gets 413.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_and_small_submits_share_the_writer_on_mariadb() {
    let mut config = test_config(&fresh_dsn(Backend::Mysql));
    config.writer.max_wait = Duration::from_millis(300);
    let ts = TestServer::start_with(config).await;
    let http = reqwest::Client::new();
    let submit = format!("{}/submit", ts.dtm());
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..46 {
        let payload = if i % 8 == 0 { 3_900_000 } else { 100 };
        let body = big_saga(&gid("mix"), payload).to_string();
        let (http, submit) = (http.clone(), submit.clone());
        calls.spawn(async move { (payload, post(&http, &submit, body).await) });
    }
    let (mut big, mut small) = (0, 0);
    while let Some(done) = calls.join_next().await {
        let (payload, (status, _, body)) = done.unwrap();
        assert_eq!(status, 200, "payload {payload}: {body}");
        if payload > 100 { big += 1 } else { small += 1 }
    }
    assert_eq!((big, small), (6, 40));
    // Every committed batch stayed within the 16 MiB bucket (the limit is 14 MiB on a 16 MiB packet).
    let text = ts.metrics().await;
    let value = |series: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{series} in\n{text}"))
    };
    let batches = value("braid_store_batch_bytes_count");
    assert!(batches > 0);
    assert_eq!(
        value(r#"braid_store_batch_bytes_bucket{le="16777216"}"#),
        batches
    );

    for i in 0..5 {
        ts.subscribe_ok("fanout", &format!("http://127.0.0.1:9/sub{i}"))
            .await;
    }
    let msg = json!({
        "gid": gid("fanout"),
        "trans_type": "msg",
        "steps": [{"action": "topic://fanout"}],
        "payloads": ["m".repeat(3_900_000)],
    });
    let (status, reply) = ts.post("submit", &msg).await;
    assert_eq!(status, 413, "{reply}");
    let message = reply["message"].as_str().unwrap();
    assert!(message.contains("max_allowed_packet"), "{message}");
    ts.stop().await;
}

/// `VmHWM` (peak resident set) of a process, in kB.
fn peak_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The documented memory bound: 32 concurrent 4 MiB submits to a `braid serve --max-inflight-bytes 32Mi`
/// process keep its peak RSS under 800 MiB (measured about 540 MiB; the same load with the limit lifted
/// peaks at about 1.1 GiB). Refused submits are retried after their Retry-After, so all of them land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_concurrent_submits_keep_the_process_rss_bounded() {
    const BOUND_KB: u64 = 800 * 1024;
    let braid = BraidProcess::spawn(
        &fresh_dsn(Backend::Sqlite),
        "rss",
        &["--max-inflight-bytes", "32Mi"],
    )
    .await;
    let before = peak_rss_kb(braid.child.id());
    let http = reqwest::Client::new();
    let submit = format!("{}/submit", braid.url());
    let payload = 4 * 1024 * 1024 - 200;
    // All bodies first, then all requests at once.
    let bodies: Vec<String> = (0..32)
        .map(|_| big_saga(&gid("rss"), payload).to_string())
        .collect();
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(bodies.len()));
    let mut calls = tokio::task::JoinSet::new();
    for body in bodies {
        assert!(body.len() <= braid::api::MAX_BODY_BYTES);
        let (http, submit, start) = (http.clone(), submit.clone(), start.clone());
        calls.spawn(async move {
            start.wait().await;
            let mut refused = 0;
            loop {
                let (status, retry, reply) = post(&http, &submit, body.clone()).await;
                if status != 503 {
                    return (status, refused, reply);
                }
                assert_eq!(retry.as_deref(), Some("1"));
                refused += 1;
                // A tenth of the asked second: the test wants the server busy, not idle.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }
    let mut refused = 0;
    while let Some(done) = calls.join_next().await {
        let (status, r, reply) = done.unwrap();
        assert_eq!(status, 200, "{reply}");
        refused += r;
    }
    let peak = peak_rss_kb(braid.child.id());
    println!(
        "peak RSS: {before} kB at start, {peak} kB after 32 x 4 MiB submits ({refused} refused and retried)"
    );
    assert!(
        refused > 0,
        "32 x 4 MiB is over 32 MiB in flight: some must wait"
    );
    assert!(peak < BOUND_KB, "peak RSS {peak} kB over {BOUND_KB} kB");
}
