//! JSON-RPC (spec §5, §6.3; DTM's msg_jrpc_test), on SQLite and MariaDB: the `/api/json-rpc` endpoint with
//! its error codes, and transactions with `protocol: "json-rpc"` whose branches are called over JSON-RPC
//! when their URL names a `method`.

// Panicking is how a test fails; clippy's allow-*-in-tests does not reach the scenario fns and the harness.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::{Value, json};
use support::{Backend, Busi, GrpcBusi, TestServer, gid};

/// The error code of a JSON-RPC reply (0 when there is no error).
fn code(reply: &Value) -> i64 {
    if reply["error"].is_null() {
        0
    } else {
        reply["error"]["code"]
            .as_i64()
            .expect("error.code is a number")
    }
}

fn jrpc_saga(g: &str, busi: &Busi, in_result: &str) -> Value {
    let rpc = |m: &str| format!("{}/json-rpc?method={m}", busi.url());
    let payload = support::busi::req(30, "", in_result);
    json!({
        "gid": g, "trans_type": "saga", "protocol": "json-rpc",
        "steps": [
            {"action": rpc("TransOut"), "compensate": rpc("TransOutRevert")},
            {"action": rpc("TransIn"), "compensate": rpc("TransInRevert")},
        ],
        "payloads": [payload.clone(), payload],
    })
}

fn jrpc_msg(g: &str, busi: &Busi) -> Value {
    let rpc = |m: &str| format!("{}/json-rpc?method={m}", busi.url());
    let payload = support::busi::req(30, "", "");
    json!({
        "gid": g, "trans_type": "msg", "protocol": "json-rpc",
        "steps": [{"action": rpc("TransOut")}, {"action": rpc("TransIn")}],
        "payloads": [payload.clone(), payload],
    })
}

async fn json_rpc_endpoint_answers_in_the_envelope(backend: Backend) {
    let ts = TestServer::start(backend).await;
    let reply = ts.json_rpc("newGid", Value::Null).await;
    assert_eq!(
        (&reply["jsonrpc"], &reply["id"], code(&reply)),
        (&json!("2.0"), &json!("1"), 0),
        "{reply}"
    );
    assert_eq!(
        reply["result"]["gid"].as_str().map(str::len),
        Some(22),
        "{reply}"
    );

    let cases: &[(&str, i64)] = &[
        ("{not json", -32700),
        (r#"{"jsonrpc":"2.0","method":"newGid"}"#, -32600),
        (r#"{"jsonrpc":"2.0","id":"","method":"newGid"}"#, -32600),
        (r#"{"jsonrpc":"1.0","id":"7","method":"newGid"}"#, -32600),
        (r#"{"jsonrpc":"2.0","id":"7","method":"fooBar"}"#, -32601),
        // braid answers bad params with JSON-RPC's "invalid params" (DTM: -32603); the message names the field.
        (
            r#"{"jsonrpc":"2.0","id":"7","method":"prepare","params":{"trans_type":"msg"}}"#,
            -32602,
        ),
        (
            r#"{"jsonrpc":"2.0","id":"7","method":"abort","params":{"gid":"no-such-gid","trans_type":"tcc"}}"#,
            -32603,
        ),
        (
            r#"{"jsonrpc":"2.0","id":"7","method":"registerBranch","params":{"gid":"no-such-gid","trans_type":"tcc","branch_id":"01"}}"#,
            -32901,
        ),
    ];
    for (i, (body, want)) in cases.iter().enumerate() {
        let reply = ts.json_rpc_raw(body).await;
        assert_eq!(code(&reply), *want, "case {i}: {body} -> {reply}");
        assert_eq!(reply["result"], Value::Null, "case {i}");
    }
    let reply = ts
        .json_rpc_raw(
            r#"{"jsonrpc":"2.0","id":"7","method":"prepare","params":{"trans_type":"msg"}}"#,
        )
        .await;
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("'gid'"),
        "{reply}"
    );
    let reply = ts
        .json_rpc_raw(r#"{"jsonrpc":"2.0","id":42,"method":"newGid"}"#)
        .await;
    assert_eq!(
        (code(&reply), &reply["id"]),
        (0, &json!(42)),
        "a numeric id is echoed: {reply}"
    );
    ts.stop().await;
}

async fn json_rpc_methods_drive_transactions(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;

    let g = gid("jrpc-api-saga");
    let reply = ts
        .json_rpc("submit", support::saga_body(&g, &busi.url(), "", ""))
        .await;
    assert_eq!(
        (code(&reply), &reply["result"]),
        (0, &Value::Null),
        "{reply}"
    );
    ts.wait_pass(&g).await;
    assert_eq!(ts.status(&g).await, "succeed");

    let g = gid("jrpc-api-tcc");
    assert_eq!(
        code(
            &ts.json_rpc("prepare", json!({"gid": g, "trans_type": "tcc"}))
                .await
        ),
        0
    );
    let data = support::busi::req(30, "", "");
    let reply = ts
        .json_rpc(
            "registerBranch",
            support::tcc_branch(&g, "01", &busi.url(), "TransOut", &data),
        )
        .await;
    assert_eq!(code(&reply), 0, "{reply}");
    let reply = ts
        .json_rpc(
            "registerBranch",
            json!({"gid": g, "trans_type": "tcc", "branch_id": "02", "amount": 1}),
        )
        .await;
    assert_eq!(
        code(&reply),
        -32602,
        "non-string values are refused: {reply}"
    );
    assert_eq!(
        code(
            &ts.json_rpc("submit", json!({"gid": g, "trans_type": "tcc"}))
                .await
        ),
        0
    );
    ts.wait_pass(&g).await;
    assert_eq!(ts.status(&g).await, "succeed");
    assert_eq!(busi.routes_of(&g), ["TransOutConfirm"]);
    let reply = ts
        .json_rpc("prepare", json!({"gid": g, "trans_type": "tcc"}))
        .await;
    assert_eq!(
        code(&reply),
        -32901,
        "prepare of a finished transaction is a FAILURE: {reply}"
    );

    let g = gid("jrpc-api-abort");
    assert_eq!(
        code(
            &ts.json_rpc(
                "prepare",
                json!({"gid": g, "trans_type": "msg", "query_prepared": busi.url()})
            )
            .await
        ),
        0
    );
    assert_eq!(
        code(
            &ts.json_rpc("abort", json!({"gid": g, "trans_type": "msg"}))
                .await
        ),
        0
    );
    assert_eq!(ts.status(&g).await, "failed");

    let g = gid("jrpc-api-wait");
    let mut body = support::saga_body(&g, &busi.url(), "", "FAILURE");
    body["wait_result"] = json!(true);
    let reply = ts.json_rpc("submit", body).await;
    assert_eq!(code(&reply), -32901, "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("Insufficient balance"),
        "{reply}"
    );

    let g = gid("jrpc-api-ongoing");
    busi.push("TransOut", &["ONGOING"]);
    let mut body = support::saga_body(&g, &busi.url(), "", "");
    body["wait_result"] = json!(true);
    let reply = ts.json_rpc("submit", body).await;
    assert_eq!(
        code(&reply),
        -32902,
        "braid reports a wait_result ONGOING as -32902 (DTM: -32603): {reply}"
    );
    ts.stop().await;
}

async fn json_rpc_branches_are_called_with_the_url_method(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;
    let g = gid("jrpc-msg");
    ts.submit_ok(&jrpc_msg(&g, &busi)).await;
    ts.wait_pass(&g).await;
    assert_eq!(ts.status(&g).await, "succeed");
    assert_eq!(busi.routes_of(&g), ["jrpc:TransOut", "jrpc:TransIn"]);
    let call = busi
        .calls()
        .into_iter()
        .find(|c| c.gid == g)
        .expect("a JSON-RPC call");
    let params: Value = serde_json::from_str(&call.body).expect("params are JSON");
    assert_eq!(
        (
            &params["amount"],
            &params["gid"],
            &params["trans_type"],
            &params["branch_id"],
            &params["op"]
        ),
        (
            &json!(30),
            &json!(g),
            &json!("msg"),
            &json!("01"),
            &json!("action")
        ),
        "params = payload + the DTM fields: {params}"
    );

    // A URL without `method` in a json-rpc transaction is a plain HTTP call.
    let g = gid("jrpc-plain");
    let mut body = jrpc_msg(&g, &busi);
    body["steps"][1]["action"] = json!(format!("{}/TransIn", busi.url()));
    ts.submit_ok(&body).await;
    ts.wait_pass(&g).await;
    assert_eq!(busi.routes_of(&g), ["jrpc:TransOut", "TransIn"]);
    ts.stop().await;
}

async fn json_rpc_branch_error_codes_are_honoured(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;

    // msg: -32901 FAILURE and other errors are retried with backoff, -32902 ONGOING at the same interval.
    for (result, interval) in [("FAILURE", 20), ("ONGOING", 10), ("OTHER", 20)] {
        let g = gid(&format!("jrpc-{}", result.to_lowercase()));
        busi.push("json-rpc", &[result]);
        ts.submit_ok(&jrpc_msg(&g, &busi)).await;
        ts.wait_pass(&g).await;
        assert_eq!(ts.status(&g).await, "submitted", "{result}");
        assert_eq!(
            ts.branch_statuses(&g).await,
            ["prepared", "prepared"],
            "{result}"
        );
        assert_eq!(
            ts.query(&g).await["transaction"]["next_cron_interval"],
            interval,
            "{result}"
        );
        ts.cron_forward_expect(interval as u64 + 1, &g).await;
        assert_eq!(ts.status(&g).await, "succeed", "{result}");
        assert_eq!(
            busi.routes_of(&g),
            ["jrpc:TransOut", "jrpc:TransOut", "jrpc:TransIn"],
            "{result}"
        );
    }

    // saga: -32901 on an action rolls back, compensating over JSON-RPC.
    let g = gid("jrpc-saga-rollback");
    busi.push("json-rpc", &["", "FAILURE"]);
    ts.submit_ok(&jrpc_saga(&g, &busi, "")).await;
    ts.wait_pass(&g).await;
    assert_eq!(ts.status(&g).await, "failed");
    assert_eq!(
        ts.branch_statuses(&g).await,
        ["succeed", "succeed", "succeed", "failed"]
    );
    assert_eq!(
        busi.routes_of(&g),
        [
            "jrpc:TransOut",
            "jrpc:TransIn",
            "jrpc:TransInRevert",
            "jrpc:TransOutRevert"
        ]
    );
    assert!(
        ts.rollback_reason(&g).await.contains("business said no"),
        "{}",
        ts.rollback_reason(&g).await
    );
    ts.stop().await;
}

async fn json_rpc_transactions_dispatch_other_urls_as_dtm_does(backend: Backend) {
    let busi = Busi::start().await;
    let grpc = GrpcBusi::start().await;
    let ts = TestServer::start(backend).await;
    let g = gid("jrpc-dispatch");
    // DTM's SDKs send a nil payload as the 4-byte body `null`: it means "no fields", not an error. A URL
    // that is neither http(s) nor names a method is a gRPC target (spec §6.1).
    let body = json!({
        "gid": g, "trans_type": "msg", "protocol": "json-rpc",
        "steps": [
            {"action": format!("{}/json-rpc?method=TransOut", busi.url())},
            {"action": grpc.url("TransIn")},
        ],
        "payloads": ["null", ""],
    });
    ts.submit_ok(&body).await;
    ts.wait_pass(&g).await;
    assert_eq!(ts.status(&g).await, "succeed", "{}", ts.query(&g).await);
    let call = busi
        .calls()
        .into_iter()
        .find(|c| c.gid == g)
        .expect("the JSON-RPC call");
    let params: Value = serde_json::from_str(&call.body).expect("params are JSON");
    assert_eq!(
        params,
        json!({"gid": g, "trans_type": "msg", "branch_id": "01", "op": "action"})
    );
    assert_eq!(grpc.methods_of(&g), ["TransIn"]);
    ts.stop().await;
}

on_every_store!(
    json_rpc_transactions_dispatch_other_urls_as_dtm_does,
    json_rpc_endpoint_answers_in_the_envelope,
    json_rpc_methods_drive_transactions,
    json_rpc_branches_are_called_with_the_url_method,
    json_rpc_branch_error_codes_are_honoured,
);
