//! Input validation, the same over HTTP, gRPC and JSON-RPC and on every store: the same bad input gets the
//! same refusal (400 / `InvalidArgument` / -32602) naming the same field, every bound is accepted at its
//! maximum and refused one past it, and the hostile inputs found by fuzzing are regression tests here
//! (the two-request hang, overflowing durations, overlong topics and subscriber URLs, malformed protobuf,
//! JSON-RPC's 413, transport details in `wait_result` answers, DTM's Go SDK's `"null"` steps over gRPC).

// Panicking is how a test fails; clippy's allow-*-in-tests does not reach the scenario fns and the harness.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use braid::model::limits;
use braid::proto::dtmgimp::{DtmBranchRequest, DtmRequest, DtmTopicRequest, DtmTransOptions};
use serde_json::{Value, json};
use support::process::BraidProcess;
use support::{Backend, Busi, TestServer, busi, fresh_dsn, gid};
use tonic::Code;

/// A valid saga body whose branches are never reached (port 1 refuses).
fn base(g: &str) -> Value {
    json!({
        "gid": g,
        "trans_type": "saga",
        "steps": [
            {"action": "http://127.0.0.1:1/api/busi/TransOut", "compensate": "http://127.0.0.1:1/api/busi/TransOutRevert"},
            {"action": "http://127.0.0.1:1/api/busi/TransIn", "compensate": "http://127.0.0.1:1/api/busi/TransInRevert"},
        ],
        "payloads": ["{}", "{}"],
    })
}

/// The same request as gRPC's `DtmRequest` (what DTM's SDKs send).
fn to_grpc(body: &Value) -> DtmRequest {
    let s = |k: &str| body[k].as_str().unwrap_or_default().to_owned();
    let n = |k: &str| body[k].as_i64().unwrap_or_default();
    let headers: HashMap<String, String> = body["branch_headers"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default();
    DtmRequest {
        gid: s("gid"),
        trans_type: s("trans_type"),
        steps: body
            .get("steps")
            .map(ToString::to_string)
            .unwrap_or_default(),
        bin_payloads: body["payloads"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|p| p.as_str().unwrap_or_default().as_bytes().to_vec())
                    .collect()
            })
            .unwrap_or_default(),
        query_prepared: s("query_prepared"),
        customed_data: s("custom_data"),
        trans_options: Some(DtmTransOptions {
            timeout_to_fail: n("timeout_to_fail"),
            request_timeout: n("request_timeout"),
            retry_interval: n("retry_interval"),
            retry_limit: n("retry_limit"),
            branch_headers: headers,
            ..DtmTransOptions::default()
        }),
        ..DtmRequest::default()
    }
}

/// The cases: a change to the base body and the field the refusal must name.
fn bad_inputs(g: &str) -> Vec<(&'static str, Value, &'static str)> {
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut b = base(g);
        edit(&mut b);
        b
    };
    let long_url = format!("http://127.0.0.1:1/{}", "x".repeat(limits::MAX_URL));
    vec![
        ("no gid", with(&|b| b["gid"] = json!("")), "gid"),
        (
            "gid too long",
            with(&|b| b["gid"] = json!("g".repeat(limits::MAX_GID + 1))),
            "gid",
        ),
        (
            "unknown trans_type",
            with(&|b| b["trans_type"] = json!("sag")),
            "trans_type",
        ),
        (
            "retry_limit huge (the two-request hang)",
            with(&|b| b["retry_limit"] = json!(1_000_000_000_000_i64)),
            "retry_limit",
        ),
        (
            "retry_limit negative",
            with(&|b| b["retry_limit"] = json!(-1)),
            "retry_limit",
        ),
        (
            "timeout_to_fail that overflows in milliseconds",
            with(&|b| b["timeout_to_fail"] = json!(9_223_372_036_854_776_i64)),
            "timeout_to_fail",
        ),
        (
            "retry_interval i64::MAX",
            with(&|b| b["retry_interval"] = json!(i64::MAX)),
            "retry_interval",
        ),
        (
            "request_timeout over an hour",
            with(&|b| b["request_timeout"] = json!(limits::MAX_REQUEST_TIMEOUT_SECS + 1)),
            "request_timeout",
        ),
        (
            "an action that is no URL",
            with(&|b| b["steps"][0]["action"] = json!("::::")),
            "steps[0].action",
        ),
        (
            "a compensation URL over the column width",
            with(&|b| b["steps"][1]["compensate"] = json!(long_url)),
            "steps[1].compensate",
        ),
        (
            "too many steps",
            with(&|b| {
                b["steps"] = json!(vec![
                    json!({"action": "http://127.0.0.1:1/a"});
                    limits::MAX_STEPS + 1
                ]);
                b["payloads"] = json!(vec!["{}"; limits::MAX_STEPS + 1]);
            }),
            "steps",
        ),
        (
            "a header name that cannot be sent",
            with(&|b| b["branch_headers"] = json!({"bad header": "x"})),
            "branch_headers",
        ),
        (
            "a header value that cannot be sent",
            with(&|b| b["branch_headers"] = json!({"x-trace": "a\nb"})),
            "branch_headers",
        ),
        (
            "saga orders out of range",
            with(&|b| b["custom_data"] = json!(r#"{"orders":{"5":[0]}}"#)),
            "custom_data",
        ),
        (
            "a msg back-check URL that is no URL",
            with(&|b| {
                b["trans_type"] = json!("msg");
                b["query_prepared"] = json!("::::");
            }),
            "query_prepared",
        ),
        (
            "a msg topic over the column width",
            with(&|b| {
                b["trans_type"] = json!("msg");
                b["query_prepared"] = json!("http://127.0.0.1:1/q");
                b["steps"][0]["action"] =
                    json!(format!("topic://{}", "t".repeat(limits::MAX_TOPIC + 1)));
            }),
            "steps[0].action",
        ),
    ]
}

async fn the_same_bad_input_gets_the_same_refusal_over_every_protocol(backend: Backend) {
    let ts = TestServer::start(backend).await;
    let mut grpc = ts.grpc().await;
    let g = gid("bad");
    for (case, body, field) in bad_inputs(&g) {
        let named = format!("field '{field}'");
        let (status, reply) = ts.post("submit", &body).await;
        assert_eq!(status, 400, "HTTP, {case}: {reply}");
        assert!(reply.to_string().contains(&named), "HTTP, {case}: {reply}");

        let reply = ts.json_rpc("submit", body.clone()).await;
        assert_eq!(reply["error"]["code"], -32602, "JSON-RPC, {case}: {reply}");
        let message = reply["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(&named), "JSON-RPC, {case}: {reply}");

        let err = grpc.submit(to_grpc(&body)).await.expect_err(case);
        assert_eq!(err.code(), Code::InvalidArgument, "gRPC, {case}: {err:?}");
        assert!(err.message().contains(&named), "gRPC, {case}: {err:?}");
    }
    assert_eq!(
        ts.query(&g).await["transaction"],
        json!(null),
        "nothing stored"
    );

    // Each bound at its maximum is accepted, over each protocol.
    let at_max = |g: &str| {
        let url = format!("http://127.0.0.1:1/{}", "x".repeat(limits::MAX_URL - 19));
        assert_eq!(url.len(), limits::MAX_URL);
        let mut b = base(g);
        b["trans_type"] = json!("msg");
        b["query_prepared"] = json!(url);
        b["steps"][0]["action"] = json!(url);
        b["retry_limit"] = json!(limits::MAX_RETRY_LIMIT);
        b["timeout_to_fail"] = json!(limits::MAX_TIMEOUT_SECS);
        b["retry_interval"] = json!(limits::MAX_RETRY_INTERVAL_SECS);
        b["request_timeout"] = json!(limits::MAX_REQUEST_TIMEOUT_SECS);
        b
    };
    let long_gid = |tag: &str| format!("{tag}{}", "g".repeat(limits::MAX_GID - tag.len()));
    let (status, reply) = ts.post("prepare", &at_max(&long_gid("h"))).await;
    assert_eq!(status, 200, "{reply}");
    let reply = ts.json_rpc("prepare", at_max(&long_gid("j"))).await;
    assert_eq!(reply["error"], json!(null), "{reply}");
    grpc.prepare(to_grpc(&at_max(&long_gid("r"))))
        .await
        .expect("gRPC prepare at the maxima");
    for tag in ["h", "j", "r"] {
        assert_eq!(ts.status(&long_gid(tag)).await, "prepared");
    }
    ts.stop().await;
}

async fn register_branch_is_checked_once_for_every_protocol(backend: Backend) {
    let ts = TestServer::start(backend).await;
    let mut grpc = ts.grpc().await;
    let g = gid("reg");
    let (status, reply) = ts
        .post("prepare", &json!({"gid": g, "trans_type": "tcc"}))
        .await;
    assert_eq!(status, 200, "{reply}");
    let cases = [
        ("no branch id", "", "http://127.0.0.1:1/c", "branch_id"),
        (
            "branch id too long",
            &*"1".repeat(limits::MAX_BRANCH_ID + 1),
            "http://127.0.0.1:1/c",
            "branch_id",
        ),
        ("a confirm URL that is no URL", "01", "::::", "confirm"),
    ];
    for (case, branch_id, confirm, field) in cases {
        let named = format!("field '{field}'");
        let body = json!({"gid": g, "trans_type": "tcc", "branch_id": branch_id,
            "confirm": confirm, "cancel": "http://127.0.0.1:1/x", "data": "{}"});
        let (status, reply) = ts.post("registerBranch", &body).await;
        assert_eq!(status, 400, "HTTP, {case}: {reply}");
        assert!(reply.to_string().contains(&named), "HTTP, {case}: {reply}");
        let reply = ts.json_rpc("registerBranch", body).await;
        assert_eq!(reply["error"]["code"], -32602, "JSON-RPC, {case}: {reply}");
        assert!(
            reply.to_string().contains(&named),
            "JSON-RPC, {case}: {reply}"
        );
        let err = grpc
            .register_branch(DtmBranchRequest {
                gid: g.clone(),
                trans_type: "tcc".to_owned(),
                branch_id: branch_id.to_owned(),
                op: "try".to_owned(),
                data: HashMap::from([
                    ("confirm".to_owned(), confirm.to_owned()),
                    ("cancel".to_owned(), "http://127.0.0.1:1/x".to_owned()),
                ]),
                busi_payload: b"{}".to_vec(),
            })
            .await
            .expect_err(case);
        assert_eq!(err.code(), Code::InvalidArgument, "gRPC, {case}: {err:?}");
        assert!(err.message().contains(&named), "gRPC, {case}: {err:?}");
    }
    assert!(ts.branches(&g).await.is_empty(), "no branch was stored");
    ts.stop().await;
}

/// Topic names and subscriber URLs at the width of the store's columns are accepted, one past it refused
/// with 400 (was 500 on MariaDB), over HTTP and gRPC; a msg to the topic then runs.
async fn topic_and_subscriber_bounds_are_the_same_on_every_store(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;
    let mut grpc = ts.grpc().await;
    let topic = "t".repeat(limits::MAX_TOPIC);
    let long_topic = format!("{topic}t");
    let base_url = format!("{}/TransOut?pad=", busi.url());
    let url = format!("{base_url}{}", "p".repeat(limits::MAX_URL - base_url.len()));
    assert_eq!(url.len(), limits::MAX_URL);
    let long_url = format!("{url}p");
    let subscribe =
        |topic: &str, url: &str| format!("subscribe?topic={topic}&url={}&remark=r", urlencode(url));

    let (status, reply) = ts.get(&subscribe(&long_topic, &url)).await;
    assert_eq!(status, 400, "{reply}");
    assert!(reply.to_string().contains("field 'topic'"), "{reply}");
    let (status, reply) = ts.get(&subscribe(&topic, &long_url)).await;
    assert_eq!(status, 400, "{reply}");
    assert!(reply.to_string().contains("field 'url'"), "{reply}");
    let (status, reply) = ts.get(&subscribe(&topic, "::::")).await;
    assert_eq!(status, 400, "{reply}");
    for (t, u, field) in [(&long_topic, &url, "topic"), (&topic, &long_url, "url")] {
        let err = grpc
            .subscribe(DtmTopicRequest {
                topic: t.clone(),
                url: u.clone(),
                remark: String::new(),
            })
            .await
            .expect_err("over the bound");
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(
            err.message().contains(&format!("field '{field}'")),
            "{err:?}"
        );
    }

    let (status, reply) = ts.get(&subscribe(&topic, &url)).await;
    assert_eq!(status, 200, "{reply}");
    let g = gid("topic-max");
    let body = json!({"gid": g, "trans_type": "msg", "steps": [{"action": format!("topic://{topic}")}],
        "payloads": [busi::req(30, "", "")], "query_prepared": format!("{}/QueryPrepared", busi.url())});
    ts.submit_ok(&body).await;
    ts.wait_pass(&g).await;
    assert_eq!(ts.status(&g).await, "succeed");
    assert_eq!(busi.routes_of(&g), ["TransOut"]);
    ts.stop().await;
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// DTM's Go SDK sends `Steps: "null"` over gRPC for TCC, XA and workflow; DTM reads it as no steps.
async fn grpc_null_steps_from_dtm_go_sdk_are_no_steps(backend: Backend) {
    let ts = TestServer::start(backend).await;
    let mut grpc = ts.grpc().await;
    for trans_type in ["tcc", "xa"] {
        let g = gid(trans_type);
        let req = DtmRequest {
            gid: g.clone(),
            trans_type: trans_type.to_owned(),
            steps: "null".to_owned(),
            customed_data: String::new(),
            trans_options: Some(DtmTransOptions::default()),
            ..DtmRequest::default()
        };
        grpc.prepare(req.clone())
            .await
            .expect("Prepare with Steps \"null\"");
        assert_eq!(ts.status(&g).await, "prepared");
        grpc.submit(req).await.expect("Submit with Steps \"null\"");
        ts.wait_pass(&g).await;
        assert_eq!(
            ts.status(&g).await,
            "succeed",
            "{trans_type} without branches"
        );
    }
    let g = gid("wf");
    let reply = grpc
        .prepare_workflow(DtmRequest {
            gid: g.clone(),
            trans_type: "workflow".to_owned(),
            steps: "null".to_owned(),
            customed_data: r#"{"name":"wf","data":"e30="}"#.to_owned(),
            trans_options: Some(DtmTransOptions::default()),
            ..DtmRequest::default()
        })
        .await
        .expect("PrepareWorkflow with Steps \"null\"")
        .into_inner();
    assert_eq!(
        reply.transaction.map(|t| t.status),
        Some("prepared".to_owned())
    );
    ts.stop().await;
}

on_every_store!(
    the_same_bad_input_gets_the_same_refusal_over_every_protocol,
    register_branch_is_checked_once_for_every_protocol,
    topic_and_subscriber_bounds_are_the_same_on_every_store,
    grpc_null_steps_from_dtm_go_sdk_are_no_steps,
);

/// A protobuf message that does not decode is the caller's fault: `InvalidArgument`, not `Internal`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_protobuf_is_invalid_argument() {
    let ts = TestServer::start(Backend::Sqlite).await;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", ts.server.grpc_addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut raw = tonic::client::Grpc::new(channel);
    raw.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/dtmgimp.Dtm/Submit");
    // Field 1 (gid) claims 100 bytes and brings 2.
    let garbage = vec![0x0a, 100, b'a', b'b'];
    let err = raw
        .unary::<Vec<u8>, Vec<u8>, _>(
            tonic::Request::new(garbage),
            path,
            braid::invoke::grpc::RawCodec,
        )
        .await
        .expect_err("garbage is refused");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    ts.stop().await;
}

/// JSON-RPC answers a body over the limit in its envelope, not with plain text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_rpc_413_is_a_json_rpc_error() {
    let ts = TestServer::start(Backend::Sqlite).await;
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":"1","method":"submit","params":{{"gid":"{}"}}}}"#,
        "g".repeat(braid::api::MAX_BODY_BYTES)
    );
    let reply = ts.json_rpc_raw(&big).await;
    assert_eq!(reply["error"]["code"], -32600, "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("limit"),
        "{reply}"
    );
    ts.stop().await;
}

/// A `wait_result` submit whose branch cannot be reached answers a generic reason: whether a port is
/// closed or speaks another protocol is not told to the caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_result_does_not_tell_transport_details() {
    let ts = TestServer::start(Backend::Sqlite).await;
    let mut answers = Vec::new();
    // Port 1 refuses; a listener that answers garbage is a protocol error.
    let garbage = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let garbage_addr = garbage.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt as _;
        while let Ok((mut conn, _)) = garbage.accept().await {
            let _ = conn.write_all(b"SSH-2.0-not-http\r\n\r\n").await;
        }
    });
    for target in [
        "http://127.0.0.1:1/x".to_owned(),
        format!("http://{garbage_addr}/x"),
    ] {
        let g = gid("wait");
        let mut body = base(&g);
        body["steps"] = json!([{"action": target, "compensate": ""}]);
        body["payloads"] = json!(["{}"]);
        body["wait_result"] = json!(true);
        body["request_timeout"] = json!(2);
        let (status, reply) = ts.post("submit", &body).await;
        assert_eq!(status, 500, "{reply}");
        answers.push(reply.to_string());
    }
    assert_eq!(answers[0], answers[1], "the same answer for both");
    for a in &answers {
        for leak in [
            "refused",
            "127.0.0.1",
            "connect",
            "protocol",
            "error sending",
        ] {
            assert!(!a.to_lowercase().contains(leak), "{a} tells '{leak}'");
        }
    }
    ts.stop().await;
}

/// The two-request hang: hostile sagas (failing branches, the largest retry limit) retry only after their
/// interval, so they neither starve `/api/ping` nor other transactions; `forceStop` ends them and SIGTERM
/// ends the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_transactions_cannot_stop_the_server() {
    let busi = Busi::start().await;
    // The hostile sagas' branch service, which always fails.
    let failing = Busi::start().await;
    let mut braid = BraidProcess::spawn(
        &fresh_dsn(Backend::Sqlite),
        "hostile",
        &["--retry-interval", "1", "--scan-interval", "1"],
    )
    .await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let post = |route: &str, body: Value| {
        http.post(format!("{}/{route}", braid.url()))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };
    // The inputs of the original report are refused outright.
    let reply = post(
        "submit",
        json!({"gid": gid("hot"), "trans_type": "saga", "retry_limit": 1_000_000_000_000_i64,
            "steps": [{"action": "::::", "compensate": ""}], "payloads": ["{}"]}),
    )
    .await
    .unwrap();
    assert_eq!(reply.status().as_u16(), 400);
    // What is left: valid sagas whose branches always fail, with the most retries allowed.
    let hot: Vec<String> = (0..2).map(|i| gid(&format!("hot{i}"))).collect();
    for g in &hot {
        failing.push("TransOut", &vec!["ERROR"; 500]);
        let body = json!({"gid": g, "trans_type": "saga", "retry_limit": limits::MAX_RETRY_LIMIT,
            "retry_interval": 1,
            "steps": [{"action": format!("{}/TransOut", failing.url()), "compensate": ""}],
            "payloads": [busi::req(1, "", "")]});
        let reply = post("submit", body).await.unwrap();
        assert_eq!(reply.status().as_u16(), 200);
    }
    let watched = Instant::now();
    let mut slowest = Duration::ZERO;
    while watched.elapsed() < Duration::from_secs(5) {
        let asked = Instant::now();
        let ping = http
            .get(format!("http://127.0.0.1:{}/api/ping", braid.port))
            .send()
            .await
            .unwrap();
        assert_eq!(ping.status().as_u16(), 200);
        slowest = slowest.max(asked.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(slowest < Duration::from_secs(1), "ping took {slowest:?}");
    // Another caller's saga goes through meanwhile.
    let other = gid("other");
    let reply = post("submit", {
        let mut b = support::saga_body(&other, &busi.url(), "", "");
        b["wait_result"] = json!(true);
        b
    })
    .await
    .unwrap();
    assert_eq!(reply.status().as_u16(), 200);
    // Every retry waited its interval (1 s, doubling): a handful of calls in 5 s, not a spin.
    for g in &hot {
        let calls = failing.routes_of(g).len();
        assert!((1..=8).contains(&calls), "{g}: {calls} calls in 5 s");
        let reply = post("forceStop", json!({"gid": g})).await.unwrap();
        assert_eq!(reply.status().as_u16(), 200);
    }
    braid.signal("-TERM");
    let exit = braid.wait_exit(Duration::from_secs(10)).await;
    assert!(exit.success(), "{exit:?}");
}
