//! TCC scenarios (spec §7.3, §4.6; DTM's tcc_test), on SQLite and MariaDB. The test plays the TCC client:
//! `prepare`, `registerBranch` per branch, the try call itself, then `submit` or `abort`.

// Panicking is how a test fails; clippy's allow-*-in-tests does not reach the scenario fns and the harness.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::{Value, json};
use support::{Backend, Busi, TestServer, call_branch, gid, tcc_branch};

fn tcc(g: &str) -> Value {
    json!({"gid": g, "trans_type": "tcc"})
}

/// `prepare` must answer 200 SUCCESS.
async fn prepare_ok(ts: &TestServer, body: &Value) {
    let (status, reply) = ts.post("prepare", body).await;
    assert_eq!(
        (status, &reply["dtm_result"]),
        (200, &json!("SUCCESS")),
        "prepare: {reply}"
    );
}

/// Registers a TCC branch for busi `name` (`TransOut`/`TransIn`) and calls its try; returns the try status.
async fn register_and_try(
    ts: &TestServer,
    busi: &Busi,
    g: &str,
    branch_id: &str,
    name: &str,
    data: &str,
) -> u16 {
    let (status, reply) = ts
        .post(
            "registerBranch",
            &tcc_branch(g, branch_id, &busi.url(), name, data),
        )
        .await;
    assert_eq!(status, 200, "registerBranch {branch_id}: {reply}");
    call_branch(
        &format!("{}/{name}", busi.url()),
        g,
        "tcc",
        branch_id,
        "try",
        data,
        &[],
    )
    .await
}

async fn tcc_normal_confirms_in_reverse_registration_order(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;
    let g = gid("tcc-normal");
    let data = support::busi::req(30, "", "");
    prepare_ok(&ts, &tcc(&g)).await;
    assert_eq!(
        register_and_try(&ts, &busi, &g, "01", "TransOut", &data).await,
        200
    );
    assert_eq!(
        register_and_try(&ts, &busi, &g, "02", "TransIn", &data).await,
        200
    );
    assert_eq!(ts.status(&g).await, "prepared");
    ts.submit_ok(&tcc(&g)).await;
    ts.wait_pass(&g).await;

    assert_eq!(ts.status(&g).await, "succeed");
    assert_eq!(
        ts.branches(&g).await,
        [
            ("01", "cancel", "prepared"),
            ("01", "confirm", "succeed"),
            ("02", "cancel", "prepared"),
            ("02", "confirm", "succeed")
        ]
        .map(|(b, o, s)| (b.to_owned(), o.to_owned(), s.to_owned()))
    );
    assert_eq!(
        busi.routes_of(&g),
        ["TransOut", "TransIn", "TransInConfirm", "TransOutConfirm"]
    );
    let confirms: Vec<_> = busi
        .calls()
        .into_iter()
        .filter(|c| c.gid == g && c.op == "confirm")
        .collect();
    for c in &confirms {
        assert_eq!(
            (c.method.as_str(), c.trans_type.as_str(), c.body.as_str()),
            ("POST", "tcc", data.as_str()),
            "{c:?}"
        );
    }
    assert_eq!(
        confirms
            .iter()
            .map(|c| c.branch_id.as_str())
            .collect::<Vec<_>>(),
        ["02", "01"]
    );
    assert_eq!(busi.balances(), (9970, 10030));
    ts.stop().await;
}

async fn tcc_rollback_cancels_every_branch_including_the_failed_try(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;
    let g = gid("tcc-rollback");
    prepare_ok(&ts, &tcc(&g)).await;
    assert_eq!(
        register_and_try(
            &ts,
            &busi,
            &g,
            "01",
            "TransOut",
            &support::busi::req(30, "", "")
        )
        .await,
        200
    );
    let failing = support::busi::req(30, "", "FAILURE");
    assert_eq!(
        register_and_try(&ts, &busi, &g, "02", "TransIn", &failing).await,
        409,
        "the try fails"
    );
    busi.push("TransInRevert", &["ONGOING"]);
    let (status, reply) = ts
        .post(
            "abort",
            &json!({"gid": g, "trans_type": "tcc", "rollback_reason": "TransIn try failed"}),
        )
        .await;
    assert_eq!(status, 200, "abort: {reply}");
    ts.wait_pass(&g).await;
    assert_eq!(
        ts.status(&g).await,
        "aborting",
        "the first cancel is still ONGOING"
    );
    assert_eq!(
        ts.branch_statuses(&g).await,
        ["prepared", "prepared", "prepared", "prepared"]
    );
    assert_eq!(ts.rollback_reason(&g).await, "TransIn try failed");

    ts.cron_forward_expect(11, &g).await;
    assert_eq!(ts.status(&g).await, "failed");
    assert_eq!(
        ts.branch_statuses(&g).await,
        ["succeed", "prepared", "succeed", "prepared"]
    );
    assert_eq!(
        busi.routes_of(&g),
        [
            "TransOut",
            "TransIn",
            "TransInRevert",
            "TransInRevert",
            "TransOutRevert"
        ]
    );
    assert_eq!(
        busi.balances(),
        (10000, 10000),
        "the reservation is released, the failed try changed nothing"
    );
    // A finished TCC cannot be aborted again.
    let (status, _) = ts
        .post("abort", &json!({"gid": g, "trans_type": "tcc"}))
        .await;
    assert_eq!(status, 409);
    ts.stop().await;
}

async fn tcc_timeout_aborts_and_refuses_a_late_registration(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;
    let g = gid("tcc-timeout");
    prepare_ok(&ts, &tcc(&g)).await;
    assert_eq!(
        register_and_try(
            &ts,
            &busi,
            &g,
            "01",
            "TransOut",
            &support::busi::req(30, "", "")
        )
        .await,
        200
    );
    assert!(
        ts.cron_once().await.is_empty(),
        "a prepared TCC is left alone until its timeout"
    );
    busi.push("TransOutRevert", &["ONGOING"]);

    ts.cron_forward_expect(36, &g).await;
    assert_eq!(ts.status(&g).await, "aborting");
    assert_eq!(ts.rollback_reason(&g).await, "Timeout after 35 seconds");
    let late = tcc_branch(
        &g,
        "02",
        &busi.url(),
        "TransIn",
        &support::busi::req(30, "", ""),
    );
    let (status, reply) = ts.post("registerBranch", &late).await;
    assert_eq!(
        (status, &reply["dtm_result"]),
        (409, &json!("FAILURE")),
        "a try after the timeout is refused: {reply}"
    );

    ts.cron_forward_expect(11, &g).await;
    assert_eq!(ts.status(&g).await, "failed");
    assert_eq!(
        ts.branch_statuses(&g).await,
        ["succeed", "prepared"],
        "only the registered branch exists"
    );
    assert_eq!(
        busi.routes_of(&g),
        ["TransOut", "TransOutRevert", "TransOutRevert"]
    );
    assert_eq!(busi.balances(), (10000, 10000));
    let (status, _) = ts.post("registerBranch", &late).await;
    assert_eq!(status, 409, "nor after it failed");
    ts.stop().await;
}

async fn tcc_branch_headers_reach_confirm_and_its_retries(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;
    let g = gid("tcc-headers");
    let data = support::busi::req(30, "", "");
    prepare_ok(
        &ts,
        &json!({"gid": g, "trans_type": "tcc", "branch_headers": {"test_header": "yes"}}),
    )
    .await;
    let branch = json!({
        "gid": g, "trans_type": "tcc", "branch_id": "01", "data": data,
        "confirm": format!("{}/TransOutHeaderYes", busi.url()),
        "cancel": format!("{}/TransOutRevert", busi.url()),
    });
    assert_eq!(ts.post("registerBranch", &branch).await.0, 200);
    let try_url = format!("{}/TransOut", busi.url());
    assert_eq!(
        call_branch(
            &try_url,
            &g,
            "tcc",
            "01",
            "try",
            &data,
            &[("test_header", "yes")]
        )
        .await,
        200
    );
    busi.push("TransOutHeaderYes", &["ERROR"]);
    ts.submit_ok(&tcc(&g)).await;
    ts.wait_pass(&g).await;
    assert_eq!(
        ts.status(&g).await,
        "submitted",
        "the first confirm errored"
    );

    ts.cron_forward_expect(21, &g).await;
    assert_eq!(ts.status(&g).await, "succeed");
    let confirms: Vec<_> = busi
        .calls()
        .into_iter()
        .filter(|c| c.gid == g && c.route == "TransOutHeaderYes")
        .collect();
    assert_eq!(confirms.len(), 2);
    for c in &confirms {
        assert_eq!(
            c.headers.get("test_header").map(String::as_str),
            Some("yes"),
            "{c:?}"
        );
    }
    ts.stop().await;
}

async fn tcc_nested_branch_ids_confirm_innermost_last_registered_first(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;
    let g = gid("tcc-nested");
    let data = support::busi::req(10, "", "");
    prepare_ok(&ts, &tcc(&g)).await;
    assert_eq!(
        register_and_try(&ts, &busi, &g, "01", "TransOut", &data).await,
        200
    );
    // The try of 01 is itself a TCC client: it registers its sub-branch 0101 under the same gid.
    assert_eq!(
        register_and_try(&ts, &busi, &g, "0101", "TransIn", &data).await,
        200
    );
    assert_eq!(
        register_and_try(&ts, &busi, &g, "02", "TransIn", &data).await,
        200
    );
    ts.submit_ok(&tcc(&g)).await;
    ts.wait_pass(&g).await;

    assert_eq!(ts.status(&g).await, "succeed");
    let ids: Vec<String> = ts.branches(&g).await.into_iter().map(|b| b.0).collect();
    assert_eq!(ids, ["01", "01", "0101", "0101", "02", "02"]);
    assert_eq!(
        ts.branch_statuses(&g).await,
        [
            "prepared", "succeed", "prepared", "succeed", "prepared", "succeed"
        ]
    );
    let confirmed: Vec<(String, String)> = busi
        .calls()
        .into_iter()
        .filter(|c| c.gid == g && c.op == "confirm")
        .map(|c| (c.branch_id, c.route))
        .collect();
    assert_eq!(
        confirmed,
        [
            ("02", "TransInConfirm"),
            ("0101", "TransInConfirm"),
            ("01", "TransOutConfirm")
        ]
        .map(|(b, r)| (b.to_owned(), r.to_owned()))
    );
    ts.stop().await;
}

async fn register_branch_route_aliases_all_register(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;
    let g = gid("tcc-alias");
    let data = support::busi::req(10, "", "");
    prepare_ok(&ts, &tcc(&g)).await;
    for (route, branch_id) in [
        ("registerBranch", "01"),
        ("registerTccBranch", "02"),
        ("registerXaBranch", "03"),
    ] {
        let (status, reply) = ts
            .post(
                route,
                &tcc_branch(&g, branch_id, &busi.url(), "TransOut", &data),
            )
            .await;
        assert_eq!(
            (status, &reply["dtm_result"]),
            (200, &json!("SUCCESS")),
            "{route}: {reply}"
        );
    }
    let rows: Vec<(String, String)> = ts
        .branches(&g)
        .await
        .into_iter()
        .map(|(b, o, _)| (b, o))
        .collect();
    let want: Vec<(String, String)> = ["01", "02", "03"]
        .iter()
        .flat_map(|b| {
            [
                (b.to_string(), "cancel".to_owned()),
                (b.to_string(), "confirm".to_owned()),
            ]
        })
        .collect();
    assert_eq!(rows, want);
    ts.submit_ok(&tcc(&g)).await;
    ts.wait_pass(&g).await;
    assert_eq!(ts.status(&g).await, "succeed");
    assert_eq!(busi.routes_of(&g), ["TransOutConfirm"; 3]);
    ts.stop().await;
}

async fn register_branch_rejects_non_string_values_naming_the_key(backend: Backend) {
    let ts = TestServer::start(backend).await;
    let g = gid("tcc-badreg");
    prepare_ok(&ts, &tcc(&g)).await;
    let cases = [
        (
            json!({"gid": g, "trans_type": "tcc", "branch_id": "01", "amount": 30}),
            "'amount'",
        ),
        (
            json!({"gid": g, "trans_type": "tcc", "branch_id": 1}),
            "'branch_id'",
        ),
        (
            json!({"gid": g, "trans_type": "tcc", "branch_id": "01", "data": {"amount": 30}}),
            "'data'",
        ),
    ];
    for (i, (body, key)) in cases.iter().enumerate() {
        let (status, reply) = ts.post("registerBranch", body).await;
        assert_eq!(status, 400, "case {i}: {reply}");
        assert!(
            reply["message"].as_str().unwrap_or_default().contains(key),
            "case {i}: {reply} should name {key}"
        );
    }
    let (status, reply) = ts.post_raw("registerBranch", "[1, 2]").await;
    assert_eq!(status, 400, "not an object: {reply}");
    let (status, reply) = ts.post_raw("registerBranch", "{not json").await;
    assert_eq!(status, 400, "{reply}");
    assert!(
        reply["message"]
            .as_str()
            .unwrap_or_default()
            .contains("not a valid JSON"),
        "a syntax error blames the body, not a field: {reply}"
    );
    assert!(ts.branches(&g).await.is_empty(), "nothing was registered");
    ts.stop().await;
}

async fn register_branch_needs_a_prepared_transaction(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;
    let data = support::busi::req(10, "", "");
    let unknown = gid("tcc-unknown");
    let (status, reply) = ts
        .post(
            "registerBranch",
            &tcc_branch(&unknown, "01", &busi.url(), "TransOut", &data),
        )
        .await;
    assert_eq!(
        (status, &reply["dtm_result"]),
        (409, &json!("FAILURE")),
        "unknown gid: {reply}"
    );
    assert!(
        reply["message"]
            .as_str()
            .unwrap_or_default()
            .contains(&unknown),
        "{reply}"
    );

    let g = gid("tcc-finished");
    prepare_ok(&ts, &tcc(&g)).await;
    assert_eq!(
        register_and_try(&ts, &busi, &g, "01", "TransOut", &data).await,
        200
    );
    let (status, reply) = ts
        .post(
            "registerBranch",
            &tcc_branch(&g, "01", &busi.url(), "TransOut", &data),
        )
        .await;
    assert_eq!(status, 409, "the same branch twice: {reply}");
    ts.submit_ok(&tcc(&g)).await;
    ts.wait_pass(&g).await;
    assert_eq!(ts.status(&g).await, "succeed");
    let (status, reply) = ts
        .post(
            "registerBranch",
            &tcc_branch(&g, "02", &busi.url(), "TransIn", &data),
        )
        .await;
    assert_eq!(
        (status, &reply["dtm_result"]),
        (409, &json!("FAILURE")),
        "finished gid: {reply}"
    );
    assert_eq!(ts.branches(&g).await.len(), 2, "nothing was added");
    let (status, _) = ts.post("submit", &tcc(&g)).await;
    assert_eq!(status, 409, "a finished TCC cannot be submitted again");
    ts.stop().await;
}

on_every_store!(
    tcc_normal_confirms_in_reverse_registration_order,
    tcc_rollback_cancels_every_branch_including_the_failed_try,
    tcc_timeout_aborts_and_refuses_a_late_registration,
    tcc_branch_headers_reach_confirm_and_its_retries,
    tcc_nested_branch_ids_confirm_innermost_last_registered_first,
    register_branch_route_aliases_all_register,
    register_branch_rejects_non_string_values_naming_the_key,
    register_branch_needs_a_prepared_transaction,
);
