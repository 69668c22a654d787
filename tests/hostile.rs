//! Hostile requests against a live `braid serve` process: a proptest generator of requests over HTTP,
//! JSON-RPC and gRPC (malformed and oversized JSON, hostile values in every field, garbage protobuf), sent
//! by a few concurrent callers for a bounded time on each store (`BRAID_HOSTILE_SECS`, default 15; `BRAID_HOSTILE_SEED`
//! replays a run). Throughout: no 5xx answer except 503 (and gRPC: no `Internal`/`Unknown`), `/api/ping`
//! answers every time within a second, and the process's peak memory stays under a bound.

// Panicking is how a test fails; clippy's allow-*-in-tests does not reach the scenario fns and the harness.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use braid::proto::dtmgimp::{DtmBranchRequest, DtmRequest, DtmTopicRequest, DtmTransOptions};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use prost::Message as _;
use serde_json::{Map, Value, json};
use support::Backend;
use support::process::BraidProcess;

/// Peak resident memory the server may reach under this load.
const RSS_BOUND_KIB: u64 = 512 * 1024;

/// One hostile request.
#[derive(Debug, Clone)]
enum Hostile {
    /// An HTTP request under `/api/dtmsvr` (or the JSON-RPC endpoint when `path` is `json-rpc`).
    Http {
        method: &'static str,
        path: String,
        body: Vec<u8>,
    },
    /// Raw bytes to a `dtmgimp.Dtm` method.
    Grpc { method: &'static str, body: Vec<u8> },
}

fn hostile_string() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("::::".to_owned()),
        Just("null".to_owned()),
        Just("topic://".to_owned()),
        Just("topic://t".to_owned()),
        Just("http://127.0.0.1:1/x".to_owned()),
        Just("127.0.0.1:1/busi.Busi/TransOut".to_owned()),
        Just("discovery://svc/x".to_owned()),
        Just("\"; DROP TABLE braid_txn; --".to_owned()),
        Just("line\nbreak\r\0nul".to_owned()),
        Just("{\"orders\":{\"0\":[0]}}".to_owned()),
        Just("{\"delay\":9223372036854775807}".to_owned()),
        "[a-z0-9]{1,12}",
        ".{0,40}",
        (1usize..3000).prop_map(|n| "x".repeat(n)),
        (100usize..1200).prop_map(|n| format!("http://127.0.0.1:1/{}", "p".repeat(n))),
    ]
}

fn hostile_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!(i64::MAX)),
        Just(json!(i64::MIN)),
        Just(json!(u64::MAX)),
        Just(json!(-1)),
        Just(json!(0)),
        Just(json!(1e300)),
        Just(json!(9_223_372_036_854_776_i64)),
        Just(json!("12")),
        (0i64..5000).prop_map(|n| json!(n)),
    ]
}

fn hostile_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        hostile_string().prop_map(Value::String),
        hostile_number(),
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,10}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const FIELDS: &[&str] = &[
    "gid",
    "trans_type",
    "steps",
    "payloads",
    "query_prepared",
    "custom_data",
    "protocol",
    "timeout_to_fail",
    "request_timeout",
    "retry_interval",
    "retry_limit",
    "branch_headers",
    "concurrent",
    "rollback_reason",
    "req_extra",
    "branch_id",
    "op",
    "url",
    "confirm",
    "cancel",
    "data",
    "status",
];

fn trans_type() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!("saga")),
        Just(json!("msg")),
        Just(json!("tcc")),
        Just(json!("xa")),
        Just(json!("workflow")),
        hostile_value(),
    ]
}

fn steps() -> impl Strategy<Value = Value> {
    let step = prop::collection::btree_map(
        prop_oneof![
            Just("action".to_owned()),
            Just("compensate".to_owned()),
            Just("data".to_owned()),
            "[a-z]{1,6}"
        ],
        hostile_string(),
        0..3,
    );
    prop_oneof![
        prop::collection::vec(step, 0..4).prop_map(|v| json!(v)),
        (900usize..1100).prop_map(|n| json!(vec![json!({"action": "http://127.0.0.1:1/a"}); n])),
        hostile_value(),
    ]
}

/// A JSON object with a gid, a trans type, steps and some other fields, each maybe hostile.
fn hostile_object() -> impl Strategy<Value = Value> {
    (
        prop_oneof![hostile_string().prop_map(Value::String), hostile_value()],
        trans_type(),
        steps(),
        prop::collection::vec((prop::sample::select(FIELDS), hostile_value()), 0..6),
    )
        .prop_map(|(gid, tt, steps, extra)| {
            let mut m = Map::new();
            m.insert("gid".to_owned(), gid);
            m.insert("trans_type".to_owned(), tt);
            m.insert("steps".to_owned(), steps);
            for (k, v) in extra {
                m.insert(k.to_owned(), v);
            }
            // A synchronous submit waits for branch calls; the callers here do not.
            m.remove("wait_result");
            Value::Object(m)
        })
}

fn body_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => hostile_object().prop_map(|v| v.to_string().into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..200),
        1 => Just(b"{\"gid\":".to_vec()),
        1 => Just(Vec::new()),
        1 => (1usize..6).prop_map(|mb| format!("{{\"gid\":\"{}\"}}", "g".repeat(mb << 20)).into_bytes()),
    ]
}

const POSTS: &[&str] = &[
    "prepare",
    "submit",
    "abort",
    "forceStop",
    "registerBranch",
    "registerTccBranch",
    "registerXaBranch",
    "prepareWorkflow",
    "resetNextCronTime",
];

const GETS: &[&str] = &[
    "query",
    "all",
    "resetCronTime",
    "subscribe",
    "unsubscribe",
    "scanKV",
    "queryKV",
    "newGid",
];

fn query_string() -> impl Strategy<Value = String> {
    prop::collection::vec(
        (
            prop_oneof![
                Just("gid"),
                Just("topic"),
                Just("url"),
                Just("remark"),
                Just("limit"),
                Just("position"),
                Just("cat"),
                Just("key"),
                Just("status"),
                Just("transType"),
            ],
            hostile_string(),
        ),
        0..4,
    )
    .prop_map(|pairs| {
        pairs
            .into_iter()
            .map(|(k, v)| format!("{k}={}", encode(&v)))
            .collect::<Vec<_>>()
            .join("&")
    })
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn grpc_message() -> impl Strategy<Value = Vec<u8>> {
    let request = (hostile_object(), hostile_number(), hostile_number()).prop_map(|(o, a, b)| {
        let s = |k: &str| o[k].as_str().unwrap_or_default().to_owned();
        DtmRequest {
            gid: s("gid"),
            trans_type: s("trans_type"),
            steps: o["steps"].to_string(),
            bin_payloads: vec![s("custom_data").into_bytes()],
            query_prepared: s("query_prepared"),
            customed_data: s("custom_data"),
            trans_options: Some(DtmTransOptions {
                timeout_to_fail: a.as_i64().unwrap_or(-1),
                retry_limit: b.as_i64().unwrap_or(i64::MAX),
                branch_headers: [(s("op"), s("url"))].into_iter().collect(),
                ..DtmTransOptions::default()
            }),
            ..DtmRequest::default()
        }
        .encode_to_vec()
    });
    let branch = (hostile_string(), hostile_string(), hostile_string()).prop_map(|(g, id, url)| {
        DtmBranchRequest {
            gid: g,
            trans_type: "tcc".to_owned(),
            branch_id: id,
            op: "try".to_owned(),
            data: [("confirm".to_owned(), url)].into_iter().collect(),
            busi_payload: Vec::new(),
        }
        .encode_to_vec()
    });
    let topic = (hostile_string(), hostile_string()).prop_map(|(t, u)| {
        DtmTopicRequest {
            topic: t,
            url: u,
            remark: String::new(),
        }
        .encode_to_vec()
    });
    prop_oneof![
        4 => request,
        2 => branch,
        2 => topic,
        2 => prop::collection::vec(any::<u8>(), 0..100),
    ]
}

fn hostile() -> impl Strategy<Value = Hostile> {
    prop_oneof![
        5 => (prop::sample::select(POSTS), body_bytes()).prop_map(|(route, body)| Hostile::Http {
            method: "POST",
            path: format!("api/dtmsvr/{route}"),
            body,
        }),
        2 => (prop::sample::select(GETS), query_string()).prop_map(|(route, q)| Hostile::Http {
            method: "GET",
            path: format!("api/dtmsvr/{route}?{q}"),
            body: Vec::new(),
        }),
        1 => hostile_string().prop_map(|name| Hostile::Http {
            method: "DELETE",
            path: format!("api/dtmsvr/topic/{}", encode(&name)),
            body: Vec::new(),
        }),
        2 => (
            prop_oneof![
                prop::sample::select(&["prepare", "submit", "abort", "registerBranch", "newGid"][..])
                    .prop_map(str::to_owned),
                "[a-zA-Z]{0,8}",
            ],
            hostile_object(),
        )
            .prop_map(|(method, params)| Hostile::Http {
                method: "POST",
                path: "api/json-rpc".to_owned(),
                body: json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
                    .to_string()
                    .into_bytes(),
            }),
        3 => (
            prop::sample::select(&[
                "Submit", "Prepare", "Abort", "RegisterBranch", "PrepareWorkflow",
                "Subscribe", "Unsubscribe", "DeleteTopic", "NewGid",
            ][..]),
            grpc_message(),
        )
            .prop_map(|(method, body)| Hostile::Grpc { method, body }),
    ]
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// What went wrong with one answer, if anything.
async fn send(
    http: &reqwest::Client,
    grpc: &mut tonic::client::Grpc<tonic::transport::Channel>,
    base: &str,
    req: &Hostile,
) -> Option<String> {
    match req {
        Hostile::Http { method, path, body } => {
            let url = format!("{base}/{path}");
            let builder = match *method {
                "GET" => http.get(url),
                "DELETE" => http.delete(url),
                _ => http.post(url).header("content-type", "application/json"),
            };
            let resp = match builder.body(body.clone()).send().await {
                Ok(r) => r,
                // A body over the limit is answered 413 before it is read; the client may then see its
                // write fail instead of the answer.
                Err(_) if body.len() > braid::api::MAX_BODY_BYTES => return None,
                Err(e) => return Some(format!("no answer: {e:?}")),
            };
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap_or_default();
            (status >= 500 && status != 503).then(|| format!("{status} {text:.300}"))
        }
        Hostile::Grpc { method, body } => {
            if grpc.ready().await.is_err() {
                return Some("gRPC channel not ready".to_owned());
            }
            let path =
                tonic::codegen::http::uri::PathAndQuery::try_from(format!("/dtmgimp.Dtm/{method}"))
                    .unwrap();
            let outcome = grpc
                .unary::<Vec<u8>, Vec<u8>, _>(
                    tonic::Request::new(body.clone()),
                    path,
                    braid::invoke::grpc::RawCodec,
                )
                .await;
            match outcome {
                Err(s) if matches!(s.code(), tonic::Code::Internal | tonic::Code::Unknown) => {
                    Some(format!("{:?} {:.300}", s.code(), s.message()))
                }
                _ => None,
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_do_not_hurt_the_server_on_sqlite() {
    hostile_requests_do_not_hurt_the_server(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_do_not_hurt_the_server_on_mariadb() {
    hostile_requests_do_not_hurt_the_server(Backend::Mysql).await;
}

async fn hostile_requests_do_not_hurt_the_server(backend: Backend) {
    let secs: u64 = std::env::var("BRAID_HOSTILE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    let seed: u64 = std::env::var("BRAID_HOSTILE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand_seed);
    println!("hostile ({backend:?}): seed {seed} (BRAID_HOSTILE_SEED={seed} replays), {secs} s");
    let dsn = support::fresh_dsn(backend);
    let braid = BraidProcess::spawn(
        &dsn,
        "hostile",
        &["--retry-interval", "1", "--scan-interval", "1"],
    )
    .await;
    let base = format!("http://127.0.0.1:{}", braid.port);
    let stop = Arc::new(AtomicBool::new(false));

    // The watcher: ping every 100 ms, each within a second.
    let pinger = {
        let stop = stop.clone();
        let url = format!("{base}/api/ping");
        tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(1))
                .build()
                .unwrap();
            let (mut pings, mut slowest) = (0u32, Duration::ZERO);
            while !stop.load(Ordering::SeqCst) {
                let asked = Instant::now();
                let ok = http
                    .get(&url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                assert!(ok, "ping failed after {pings} pings");
                pings += 1;
                slowest = slowest.max(asked.elapsed());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (pings, slowest)
        })
    };

    let sent = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut callers = Vec::new();
    for caller in 0..4u64 {
        let (base, sent) = (base.clone(), sent.clone());
        let grpc_url = format!("http://127.0.0.1:{}", braid.grpc_port);
        callers.push(tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap();
            let channel = tonic::transport::Endpoint::from_shared(grpc_url)
                .unwrap()
                .connect_lazy();
            let mut grpc = tonic::client::Grpc::new(channel);
            // proptest's strategies are not Send: a thread generates, the caller sends.
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Hostile>(16);
            std::thread::spawn(move || {
                let mut seed_bytes = [0u8; 32];
                seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
                seed_bytes[8..16].copy_from_slice(&caller.to_le_bytes());
                let mut runner = TestRunner::new_with_rng(
                    Config::default(),
                    TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
                );
                let strategy = hostile();
                loop {
                    let Ok(tree) = strategy.new_tree(&mut runner) else {
                        return;
                    };
                    if tx.blocking_send(tree.current()).is_err() {
                        return;
                    }
                }
            });
            while Instant::now() < deadline {
                let req = rx.recv().await.expect("the generator runs");
                if let Some(problem) = send(&http, &mut grpc, &base, &req).await {
                    panic!("seed {seed}: {problem:.300}\nrequest: {}", show(&req));
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for c in callers {
        c.await.unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    let (pings, slowest) = pinger.await.unwrap();
    let rss = peak_rss_kib(braid.child.id());
    println!(
        "hostile ({backend:?}): {} requests, {pings} pings (slowest {slowest:?}), peak RSS {} MiB",
        sent.load(Ordering::Relaxed),
        rss / 1024
    );
    assert!(rss > 0 && rss < RSS_BOUND_KIB, "peak RSS {rss} KiB");
    drop(braid);
    support::drop_database(&dsn).await;
}

/// A request for a failure message: bodies as text, cut short.
fn show(req: &Hostile) -> String {
    let (what, body) = match req {
        Hostile::Http { method, path, body } => (format!("{method} /{path}"), body),
        Hostile::Grpc { method, body } => (format!("gRPC {method}"), body),
    };
    let text = String::from_utf8_lossy(body);
    format!("{what:.300} ({} bytes): {text:.300}", body.len())
}

fn rand_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
}
