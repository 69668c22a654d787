//! Saga scenarios (spec §7.1, DTM's saga_test / saga_concurrent_test / saga_options_test /
//! saga_compatible_test), on SQLite and MariaDB.
//!
//! Branch status arrays are in stored order `[c1, a1, c2, a2]`. Balances: user 1 pays in TransOut, user 2
//! receives in TransIn, both start at 10000; the busi ledger has barrier semantics, so a repeated call or a
//! compensation of an action that never applied changes nothing.

// Panicking is how a test fails; clippy's allow-*-in-tests does not reach the scenario fns and the harness.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use support::busi::req;
use support::{Backend, Busi, TestServer, gid, saga_body};

const ALL_PREPARED: [&str; 4] = ["prepared", "prepared", "prepared", "prepared"];
const SUCCEEDED: [&str; 4] = ["prepared", "succeed", "prepared", "succeed"];
const ROLLED_BACK: [&str; 4] = ["succeed", "succeed", "succeed", "failed"];

/// `body` with `custom_data` set to the JSON text of `custom`.
fn with_custom(mut body: Value, custom: Value) -> Value {
    body["custom_data"] = json!(custom.to_string());
    body
}

/// `next_cron_interval` and the seconds between `update_time` and `next_cron_time`, as `query` shows them.
/// The pass that writes the schedule sets both times from the same instant, so the gap is the interval the
/// scanner will wait.
async fn schedule(ts: &TestServer, gid: &str) -> (i64, i64) {
    let q = ts.query(gid).await;
    let t = &q["transaction"];
    let time = |k: &str| {
        chrono::DateTime::parse_from_rfc3339(t[k].as_str().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{k} of {gid} is not RFC 3339 ({e}): {t}"))
    };
    let interval = t["next_cron_interval"]
        .as_i64()
        .unwrap_or_else(|| panic!("no next_cron_interval: {t}"));
    (
        interval,
        (time("next_cron_time") - time("update_time")).num_seconds(),
    )
}

/// The routes in arrival order, sorted within `[from, to)` (calls made concurrently arrive in any order).
fn sorted_within(mut routes: Vec<String>, from: usize, to: usize) -> Vec<String> {
    routes[from..to].sort();
    routes
}

// ---- saga_test -------------------------------------------------------------------------------------------

async fn saga_normal(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;
    let g = gid("saga-normal");
    ts.submit_ok(&saga_body(&g, &busi.url(), "", "")).await;
    ts.wait_pass(&g).await;
    assert_eq!(ts.branch_statuses(&g).await, SUCCEEDED);
    assert_eq!(ts.status(&g).await, "succeed");
    assert_eq!(busi.routes_of(&g), ["TransOut", "TransIn"]);
    let calls = busi.calls();
    let first = &calls[0];
    assert_eq!(
        (
            first.method.as_str(),
            first.branch_id.as_str(),
            first.op.as_str(),
            first.trans_type.as_str()
        ),
        ("POST", "01", "action", "saga")
    );
    assert_eq!(
        first.headers.get("content-type").map(String::as_str),
        Some("application/json")
    );
    assert_eq!(first.body, req(30, "", ""), "the step payload is the body");
    assert_eq!(
        (calls[1].branch_id.as_str(), calls[1].op.as_str()),
        ("02", "action")
    );
    assert_eq!(busi.balances(), (9970, 10030));
    ts.stop().await;
}

async fn saga_rollback_compensates_in_reverse_order(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;
    let g = gid("saga-rollback");
    ts.submit_ok(&saga_body(&g, &busi.url(), "", "FAILURE"))
        .await;
    ts.wait_pass(&g).await;
    assert_eq!(ts.branch_statuses(&g).await, ROLLED_BACK);
    assert_eq!(ts.status(&g).await, "failed");
    assert!(
        ts.rollback_reason(&g)
            .await
            .contains("Insufficient balance"),
        "{}",
        ts.rollback_reason(&g).await
    );
    assert_eq!(
        busi.routes_of(&g),
        ["TransOut", "TransIn", "TransInRevert", "TransOutRevert"]
    );
    let calls = busi.calls();
    assert_eq!(
        (calls[2].branch_id.as_str(), calls[2].op.as_str()),
        ("02", "compensate")
    );
    assert_eq!(
        calls[2].body,
        req(30, "", "FAILURE"),
        "a compensation gets its step's body"
    );
    assert_eq!(busi.balances(), (10000, 10000), "money returned");
    ts.stop().await;
}

async fn saga_ongoing_then_cron_succeeds(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;
    let g = gid("saga-ongoing");
    busi.push("TransOut", &["ONGOING"]);
    ts.submit_ok(&saga_body(&g, &busi.url(), "", "")).await;
    ts.wait_pass(&g).await;
    assert_eq!(ts.branch_statuses(&g).await, ALL_PREPARED);
    assert_eq!(ts.status(&g).await, "submitted");
    assert!(
        ts.cron_once().await.is_empty(),
        "not due before its retry interval"
    );
    ts.cron_forward_expect(11, &g).await;
    assert_eq!(ts.branch_statuses(&g).await, SUCCEEDED);
    assert_eq!(ts.status(&g).await, "succeed");
    assert_eq!(busi.routes_of(&g), ["TransOut", "TransOut", "TransIn"]);
    ts.stop().await;
}

async fn saga_compensation_error_stays_aborting_until_cron(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;
    let g = gid("saga-comp-error");
    busi.push("TransOutRevert", &["ERROR"]);
    ts.submit_ok(&saga_body(&g, &busi.url(), "", "FAILURE"))
        .await;
    ts.wait_pass(&g).await;
    assert_eq!(ts.status(&g).await, "aborting");
    assert_eq!(
        ts.branch_statuses(&g).await,
        ["prepared", "succeed", "succeed", "failed"]
    );
    assert_eq!(
        busi.routes_of(&g),
        ["TransOut", "TransIn", "TransInRevert", "TransOutRevert"]
    );
    assert_eq!(
        busi.balances(),
        (9970, 10000),
        "TransOut is not compensated yet"
    );
    assert_eq!(
        schedule(&ts, &g).await,
        (20, 20),
        "a compensation error backs off"
    );
    assert!(
        ts.cron_once().await.is_empty(),
        "not due before its backoff"
    );

    ts.cron_forward_expect(21, &g).await;
    assert_eq!(ts.status(&g).await, "failed");
    assert_eq!(ts.branch_statuses(&g).await, ROLLED_BACK);
    assert_eq!(
        busi.routes_of(&g),
        [
            "TransOut",
            "TransIn",
            "TransInRevert",
            "TransOutRevert",
            "TransOutRevert"
        ]
    );
    assert!(
        ts.rollback_reason(&g)
            .await
            .contains("Insufficient balance"),
        "the reason of the first pass stays"
    );
    assert_eq!(busi.balances(), (10000, 10000));
    ts.stop().await;
}

async fn saga_submit_while_running_is_joined_and_after_success_refused(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;
    let g = gid("saga-submit-twice");
    // Keep the first pass busy so that the second submit arrives while it runs.
    busi.delay("TransOut", Duration::from_millis(500));
    let body = saga_body(&g, &busi.url(), "", "");
    ts.submit_ok(&body).await;
    ts.submit_ok(&body).await;
    ts.wait_pass(&g).await;
    assert_eq!(ts.status(&g).await, "succeed");
    assert_eq!(ts.branch_statuses(&g).await, SUCCEEDED);

    let (status, reply) = ts.post("submit", &body).await;
    assert_eq!(status, 409, "{reply}");
    assert_eq!(reply["dtm_result"], "FAILURE");
    assert!(
        reply["message"]
            .as_str()
            .unwrap_or_default()
            .contains("succeed"),
        "{reply}"
    );
    assert_eq!(
        busi.routes_of(&g),
        ["TransOut", "TransIn"],
        "each branch ran once"
    );
    assert_eq!(busi.balances(), (9970, 10030));
    ts.stop().await;
}

async fn saga_resubmit_of_submitted_saga_runs_the_stored_branches(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;
    let g = gid("saga-resubmit");
    busi.push("TransOut", &["ONGOING"]);
    ts.submit_ok(&saga_body(&g, &busi.url(), "", "")).await;
    ts.wait_pass(&g).await;
    assert_eq!(ts.status(&g).await, "submitted");

    // braid runs the stored branches again (DTM would use the new request's; spec §16.8).
    let mut again = saga_body(&g, &busi.url(), "", "");
    again["payloads"] = json!([req(50, "", ""), req(50, "", "")]);
    ts.submit_ok(&again).await;
    ts.wait_pass(&g).await;
    assert_eq!(ts.status(&g).await, "succeed");
    assert_eq!(ts.branch_statuses(&g).await, SUCCEEDED);
    assert_eq!(busi.routes_of(&g), ["TransOut", "TransOut", "TransIn"]);
    assert!(
        busi.calls().iter().all(|c| c.body == req(30, "", "")),
        "the stored bodies are sent"
    );
    assert_eq!(busi.balances(), (9970, 10030));
    ts.stop().await;
}

async fn saga_empty_urls_succeed_at_once(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;
    let url = busi.url();

    let g = gid("saga-empty-url");
    let payload = req(30, "", "");
    ts.submit_ok(&json!({
        "gid": g,
        "trans_type": "saga",
        "steps": [{"action": format!("{url}/TransOut"), "compensate": ""}, {"action": "", "compensate": ""}],
        "payloads": [payload, payload],
    }))
    .await;
    ts.wait_pass(&g).await;
    assert_eq!(ts.branch_statuses(&g).await, SUCCEEDED);
    assert_eq!(ts.status(&g).await, "succeed");
    assert_eq!(busi.routes_of(&g), ["TransOut"]);

    let g = gid("saga-empty-comp");
    let payload = req(30, "", "FAILURE");
    ts.submit_ok(&json!({
        "gid": g,
        "trans_type": "saga",
        "steps": [
            {"action": format!("{url}/TransOut"), "compensate": ""},
            {"action": format!("{url}/TransIn"), "compensate": ""},
        ],
        "payloads": [payload, payload],
    }))
    .await;
    ts.wait_pass(&g).await;
    assert_eq!(
        ts.branch_statuses(&g).await,
        ROLLED_BACK,
        "empty compensations succeed at once"
    );
    assert_eq!(ts.status(&g).await, "failed");
    assert_eq!(busi.routes_of(&g), ["TransOut", "TransIn"]);
    assert_eq!(
        busi.balances(),
        (9940, 10000),
        "nothing to compensate TransOut with"
    );
    ts.stop().await;
}

// ---- saga_concurrent_test --------------------------------------------------------------------------------

async fn saga_concurrent_normal(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;
    let g = gid("sagacon-normal");
    ts.submit_ok(&with_custom(
        saga_body(&g, &busi.url(), "", ""),
        json!({"concurrent": true}),
    ))
    .await;
    ts.wait_pass(&g).await;
    assert_eq!(ts.branch_statuses(&g).await, SUCCEEDED);
    assert_eq!(ts.status(&g).await, "succeed");
    assert_eq!(
        sorted_within(busi.routes_of(&g), 0, 2),
        ["TransIn", "TransOut"]
    );
    assert_eq!(busi.balances(), (9970, 10030));
    ts.stop().await;
}

async fn saga_concurrent_rollback_with_ongoing_compensation(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;
    let g = gid("sagacon-rollback");
    busi.push("TransOutRevert", &["ONGOING"]);
    ts.submit_ok(&with_custom(
        saga_body(&g, &busi.url(), "FAILURE", ""),
        json!({"concurrent": true}),
    ))
    .await;
    ts.wait_pass(&g).await;
    assert_eq!(ts.status(&g).await, "aborting");
    assert_eq!(
        ts.branch_statuses(&g).await,
        ["prepared", "failed", "succeed", "succeed"]
    );
    assert!(
        ts.rollback_reason(&g)
            .await
            .contains("Insufficient balance"),
        "{}",
        ts.rollback_reason(&g).await
    );
    let routes = busi.routes_of(&g);
    assert_eq!(
        sorted_within(sorted_within(routes, 0, 2), 2, 4),
        ["TransIn", "TransOut", "TransInRevert", "TransOutRevert"]
    );
    assert_eq!(
        schedule(&ts, &g).await,
        (10, 10),
        "ONGOING keeps the interval"
    );

    ts.cron_forward_expect(11, &g).await;
    assert_eq!(ts.status(&g).await, "failed");
    assert_eq!(
        ts.branch_statuses(&g).await,
        ["succeed", "failed", "succeed", "succeed"]
    );
    assert_eq!(busi.routes_of(&g).len(), 5);
    assert_eq!(busi.routes_of(&g)[4], "TransOutRevert");
    assert_eq!(busi.balances(), (10000, 10000));
    ts.stop().await;
}

async fn saga_concurrent_order_trans_out_failure_never_calls_trans_in(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;
    let g = gid("sagacon-order-out");
    let custom = json!({"concurrent": true, "orders": {"1": [0]}});
    ts.submit_ok(&with_custom(
        saga_body(&g, &busi.url(), "FAILURE", ""),
        custom,
    ))
    .await;
    ts.wait_pass(&g).await;
    assert_eq!(ts.status(&g).await, "failed");
    assert_eq!(
        ts.branch_statuses(&g).await,
        ["succeed", "failed", "prepared", "prepared"]
    );
    assert_eq!(
        busi.routes_of(&g),
        ["TransOut", "TransOutRevert"],
        "step 2 never ran, so it is not compensated"
    );
    assert_eq!(busi.balances(), (10000, 10000));
    ts.stop().await;
}

async fn saga_concurrent_order_trans_in_failure_compensates_dependents_first(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;
    let g = gid("sagacon-order-in");
    let custom = json!({"concurrent": true, "orders": {"1": [0]}});
    ts.submit_ok(&with_custom(
        saga_body(&g, &busi.url(), "", "FAILURE"),
        custom,
    ))
    .await;
    ts.wait_pass(&g).await;
    assert_eq!(ts.status(&g).await, "failed");
    assert_eq!(ts.branch_statuses(&g).await, ROLLED_BACK);
    assert_eq!(
        busi.routes_of(&g),
        ["TransOut", "TransIn", "TransInRevert", "TransOutRevert"]
    );
    assert_eq!(busi.balances(), (10000, 10000));
    ts.stop().await;
}

async fn saga_concurrent_ongoing_committed_by_cron(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;
    let g = gid("sagacon-ongoing");
    busi.push("TransOut", &["ONGOING"]);
    ts.submit_ok(&with_custom(
        saga_body(&g, &busi.url(), "", ""),
        json!({"concurrent": true}),
    ))
    .await;
    ts.wait_pass(&g).await;
    assert_eq!(ts.status(&g).await, "submitted");
    assert_eq!(
        ts.branch_statuses(&g).await,
        ["prepared", "prepared", "prepared", "succeed"]
    );

    ts.cron_forward_expect(11, &g).await;
    assert_eq!(ts.status(&g).await, "succeed");
    assert_eq!(ts.branch_statuses(&g).await, SUCCEEDED);
    assert_eq!(
        sorted_within(busi.routes_of(&g), 0, 2),
        ["TransIn", "TransOut", "TransOut"]
    );
    assert_eq!(busi.balances(), (9970, 10030));
    ts.stop().await;
}

// ---- saga_options_test -----------------------------------------------------------------------------------

async fn saga_retry_interval_is_kept_on_ongoing(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;
    let g = gid("saga-retry-ongoing");
    let mut body = saga_body(&g, &busi.url(), "", "");
    body["retry_interval"] = json!(150);
    busi.push("TransOut", &["ONGOING"]);
    ts.submit_ok(&body).await;
    ts.wait_pass(&g).await;
    assert_eq!(ts.status(&g).await, "submitted");
    assert_eq!(ts.query(&g).await["transaction"]["retry_interval"], 150);
    assert_eq!(
        schedule(&ts, &g).await,
        (150, 150),
        "ONGOING keeps the base interval"
    );

    ts.forward(100);
    assert!(
        ts.cron_once().await.is_empty(),
        "not due 100 s into a 150 s interval"
    );
    ts.cron_forward_expect(51, &g).await;
    assert_eq!(ts.status(&g).await, "succeed");
    assert_eq!(ts.branch_statuses(&g).await, SUCCEEDED);
    ts.stop().await;
}

async fn saga_retry_interval_doubles_on_error(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;
    let g = gid("saga-retry-error");
    let mut body = saga_body(&g, &busi.url(), "", "");
    body["retry_interval"] = json!(150);
    busi.push("TransOut", &["ERROR"]);
    ts.submit_ok(&body).await;
    ts.wait_pass(&g).await;
    assert_eq!(ts.status(&g).await, "submitted");
    assert_eq!(ts.branch_statuses(&g).await, ALL_PREPARED);
    assert_eq!(
        schedule(&ts, &g).await,
        (300, 300),
        "an error doubles the interval"
    );

    ts.forward(160);
    assert!(
        ts.cron_once().await.is_empty(),
        "one base interval is not enough after an error"
    );
    ts.cron_forward_expect(150, &g).await;
    assert_eq!(ts.status(&g).await, "succeed");
    assert_eq!(ts.branch_statuses(&g).await, SUCCEEDED);
    ts.stop().await;
}

async fn saga_backoff_is_capped(backend: Backend) {
    let busi = Busi::start().await;
    let mut config = support::test_config(&support::fresh_dsn(backend));
    config.retry.backoff_cap = Duration::from_secs(40);
    let ts = TestServer::start_with(config).await;
    let g = gid("saga-backoff-cap");
    busi.push("TransOut", &["ERROR"; 4]);
    ts.submit_ok(&saga_body(&g, &busi.url(), "", "")).await;
    ts.wait_pass(&g).await;
    let mut seen = vec![schedule(&ts, &g).await];
    for _ in 0..3 {
        ts.cron_forward_expect(41, &g).await;
        seen.push(schedule(&ts, &g).await);
    }
    assert_eq!(
        seen,
        [(20, 20), (40, 40), (40, 40), (40, 40)],
        "doubling stops at the server's backoff cap"
    );
    ts.cron_forward_expect(41, &g).await;
    assert_eq!(ts.status(&g).await, "succeed");
    assert_eq!(
        busi.routes_of(&g),
        [
            "TransOut", "TransOut", "TransOut", "TransOut", "TransOut", "TransIn"
        ]
    );
    ts.stop().await;
}

async fn saga_backoff_restarts_after_progress(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;
    let g = gid("saga-backoff-progress");
    busi.push("TransOut", &["ERROR", "ERROR"]);
    busi.push("TransIn", &["ERROR"]);
    ts.submit_ok(&saga_body(&g, &busi.url(), "", "")).await;
    ts.wait_pass(&g).await;
    ts.cron_forward_expect(21, &g).await;
    assert_eq!(schedule(&ts, &g).await, (40, 40));
    // TransOut succeeds, then TransIn errs: the success resets the interval before the error doubles it.
    ts.cron_forward_expect(41, &g).await;
    assert_eq!(
        ts.branch_statuses(&g).await,
        ["prepared", "succeed", "prepared", "prepared"]
    );
    assert_eq!(
        schedule(&ts, &g).await,
        (20, 20),
        "spec §9.2: a branch success resets the interval"
    );
    ts.cron_forward_expect(21, &g).await;
    assert_eq!(ts.status(&g).await, "succeed");
    ts.stop().await;
}

async fn saga_timeout_to_fail_aborts_and_compensates(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;
    let g = gid("saga-timeout");
    let mut body = saga_body(&g, &busi.url(), "", "");
    body["timeout_to_fail"] = json!(1800);
    busi.push("TransOut", &["ONGOING", "ONGOING"]);
    ts.submit_ok(&body).await;
    ts.wait_pass(&g).await;
    assert_eq!(ts.status(&g).await, "submitted");
    ts.cron_forward_expect(11, &g).await;
    assert_eq!(ts.status(&g).await, "submitted", "not timed out yet");
    assert_eq!(ts.branch_statuses(&g).await, ALL_PREPARED);

    ts.cron_forward_expect(3600, &g).await;
    assert_eq!(ts.status(&g).await, "failed");
    assert_eq!(
        ts.branch_statuses(&g).await,
        ["succeed", "prepared", "prepared", "prepared"]
    );
    assert_eq!(ts.rollback_reason(&g).await, "Timeout after 1800 seconds");
    assert_eq!(
        busi.routes_of(&g),
        ["TransOut", "TransOut", "TransOutRevert"],
        "the possibly started step is compensated"
    );
    assert_eq!(busi.balances(), (10000, 10000));
    ts.stop().await;
}

async fn saga_request_timeout_slow_branch_is_retried(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;
    let g = gid("saga-request-timeout");
    let mut body = saga_body(&g, &busi.url(), "", "");
    body["request_timeout"] = json!(1);
    // Slower than the transaction's 1 s, faster than the server's default 3 s.
    busi.delay("TransOut", Duration::from_millis(1500));
    ts.submit_ok(&body).await;
    ts.wait_pass(&g).await;
    assert_eq!(ts.status(&g).await, "submitted");
    assert_eq!(ts.branch_statuses(&g).await, ALL_PREPARED);
    assert_eq!(busi.routes_of(&g), ["TransOut"]);
    assert_eq!(
        schedule(&ts, &g).await,
        (20, 20),
        "a timed-out call counts as an error"
    );

    busi.delay("TransOut", Duration::ZERO);
    ts.cron_forward_expect(21, &g).await;
    assert_eq!(ts.status(&g).await, "succeed");
    assert_eq!(busi.routes_of(&g), ["TransOut", "TransOut", "TransIn"]);
    assert_eq!(busi.balances(), (9970, 10030));
    ts.stop().await;
}

async fn saga_wait_result_normal(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;
    let g = gid("saga-wait-normal");
    let mut body = saga_body(&g, &busi.url(), "", "");
    body["wait_result"] = json!(true);
    let (status, reply) = ts.post("submit", &body).await;
    assert_eq!((status, reply), (200, json!({"dtm_result": "SUCCESS"})));
    assert_eq!(
        ts.status(&g).await,
        "succeed",
        "finished when submit answers"
    );
    assert_eq!(ts.branch_statuses(&g).await, SUCCEEDED);
    assert_eq!(busi.routes_of(&g), ["TransOut", "TransIn"]);
    ts.stop().await;
}

async fn saga_wait_result_ongoing_then_cron(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;
    let g = gid("saga-wait-ongoing");
    let mut body = saga_body(&g, &busi.url(), "", "");
    body["wait_result"] = json!(true);
    busi.push("TransOut", &["ONGOING"]);
    let (status, reply) = ts.post("submit", &body).await;
    assert_eq!(status, 425, "{reply}");
    assert_eq!(reply["dtm_result"], "ONGOING");
    assert_eq!(ts.status(&g).await, "submitted");
    assert_eq!(ts.branch_statuses(&g).await, ALL_PREPARED);

    ts.cron_forward_expect(11, &g).await;
    assert_eq!(ts.status(&g).await, "succeed");
    assert_eq!(ts.branch_statuses(&g).await, SUCCEEDED);
    ts.stop().await;
}

async fn saga_wait_result_reports_rollback_reason(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;
    let g = gid("saga-wait");
    let mut body = saga_body(&g, &busi.url(), "", "FAILURE");
    body["wait_result"] = json!(true);
    let (status, reply) = ts.post("submit", &body).await;
    assert_eq!(status, 409, "{reply}");
    assert_eq!(reply["dtm_result"], "FAILURE");
    assert!(
        reply["message"]
            .as_str()
            .unwrap()
            .contains("Insufficient balance"),
        "{reply}"
    );
    assert_eq!(ts.status(&g).await, "failed");
    assert_eq!(ts.branch_statuses(&g).await, ROLLED_BACK);
    ts.stop().await;
}

async fn saga_wait_result_reports_rollback_while_compensation_is_pending(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;
    let g = gid("saga-wait-comp-error");
    let mut body = saga_body(&g, &busi.url(), "", "FAILURE");
    body["wait_result"] = json!(true);
    busi.push("TransOutRevert", &["ERROR"]);
    let (status, reply) = ts.post("submit", &body).await;
    // The outcome is decided (the saga rolls back); a compensation still to retry does not change it.
    assert_eq!(status, 409, "{reply}");
    assert_eq!(reply["dtm_result"], "FAILURE");
    assert!(
        reply["message"]
            .as_str()
            .unwrap_or_default()
            .contains("Insufficient balance"),
        "{reply}"
    );
    assert_eq!(ts.status(&g).await, "aborting");
    ts.cron_forward_expect(21, &g).await;
    assert_eq!(ts.status(&g).await, "failed");
    ts.stop().await;
}

async fn saga_branch_headers_sent_on_first_call_and_cron_retry(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;
    let url = busi.url();
    let g = gid("saga-headers");
    busi.push("TransOutHeaderYes", &["ONGOING"]);
    ts.submit_ok(&json!({
        "gid": g,
        "trans_type": "saga",
        "steps": [{"action": format!("{url}/TransOutHeaderYes"), "compensate": ""}],
        "payloads": ["null"],
        "branch_headers": {"test_header": "test"},
    }))
    .await;
    ts.wait_pass(&g).await;
    assert_eq!(ts.status(&g).await, "submitted");
    ts.cron_forward_expect(11, &g).await;
    assert_eq!(
        ts.status(&g).await,
        "succeed",
        "TransOutHeaderYes fails without the header"
    );
    let calls: Vec<_> = busi.calls().into_iter().filter(|c| c.gid == g).collect();
    assert_eq!(calls.len(), 2);
    for c in &calls {
        assert_eq!(
            c.headers.get("test_header").map(String::as_str),
            Some("test"),
            "{c:?}"
        );
        assert_eq!(
            c.headers.get("content-type").map(String::as_str),
            Some("application/json")
        );
        assert_eq!((c.method.as_str(), c.body.as_str()), ("POST", "null"));
    }

    let g = gid("saga-headers-no");
    ts.submit_ok(&json!({
        "gid": g,
        "trans_type": "saga",
        "steps": [{"action": format!("{url}/TransOutHeaderNo"), "compensate": ""}],
        "payloads": ["null"],
    }))
    .await;
    ts.wait_pass(&g).await;
    assert_eq!(
        ts.status(&g).await,
        "succeed",
        "no header unless configured"
    );
    ts.stop().await;
}

async fn saga_retry_limit_retries_after_the_interval_then_succeeds(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;
    let g = gid("saga-retry-limit-3");
    let mut body = saga_body(&g, &busi.url(), "", "");
    body["retry_limit"] = json!(3);
    busi.push("TransIn", &["ERROR", "ERROR", "ERROR"]);
    ts.submit_ok(&body).await;
    ts.wait_pass(&g).await;
    // A retry waits for the retry interval (with backoff): each pass spends one of the retries.
    for used in 1..=3 {
        assert_eq!(ts.status(&g).await, "submitted");
        assert_eq!(
            ts.query(&g).await["transaction"]["retry_count"],
            used,
            "one retry per pass"
        );
        assert!(
            ts.cron_once().await.is_empty(),
            "nothing is retried before its interval"
        );
        ts.cron_forward_expect(3600, &g).await;
    }
    assert_eq!(ts.status(&g).await, "succeed");
    assert_eq!(ts.branch_statuses(&g).await, SUCCEEDED);
    assert_eq!(
        busi.routes_of(&g),
        ["TransOut", "TransIn", "TransIn", "TransIn", "TransIn"]
    );
    assert_eq!(
        ts.query(&g).await["transaction"]["retry_count"],
        3,
        "braid persists the retries used"
    );
    assert_eq!(busi.balances(), (9970, 10030));
    ts.stop().await;
}

async fn saga_retry_limit_exhausted_aborts(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;
    let g = gid("saga-retry-limit-1");
    let mut body = saga_body(&g, &busi.url(), "", "");
    body["retry_limit"] = json!(1);
    busi.push("TransIn", &["ERROR", "ERROR", "ERROR"]);
    ts.submit_ok(&body).await;
    ts.wait_pass(&g).await;
    assert_eq!(ts.status(&g).await, "submitted", "the one retry waits");
    ts.cron_forward_expect(3600, &g).await;
    assert_eq!(ts.status(&g).await, "failed");
    assert_eq!(
        ts.branch_statuses(&g).await,
        ["succeed", "succeed", "succeed", "prepared"]
    );
    assert_eq!(
        ts.rollback_reason(&g).await,
        "RetryCount is greater than RetryLimit, RetryLimit: 1"
    );
    assert_eq!(
        busi.routes_of(&g),
        [
            "TransOut",
            "TransIn",
            "TransIn",
            "TransInRevert",
            "TransOutRevert"
        ]
    );
    assert_eq!(busi.balances(), (10000, 10000));
    ts.stop().await;
}

// ---- saga_compatible_test --------------------------------------------------------------------------------

async fn saga_legacy_step_data_is_the_body(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;
    let url = busi.url();
    let steps = |out: &str, inn: &str| {
        json!([
            {"action": format!("{url}/TransOut"), "compensate": format!("{url}/TransOutRevert"), "data": out},
            {"action": format!("{url}/TransIn"), "compensate": format!("{url}/TransInRevert"), "data": inn},
        ])
    };
    let out_data = r#"{"amount":30,"step":"out"}"#;
    let in_data = r#"{"amount":30,"step":"in"}"#;
    let g = gid("saga-legacy");
    let raw =
        json!({"gid": g, "trans_type": "saga", "steps": steps(out_data, in_data)}).to_string();
    let (status, reply) = ts.post_raw("submit", &raw).await;
    assert_eq!(status, 200, "{reply}");
    ts.wait_pass(&g).await;
    assert_eq!(ts.status(&g).await, "succeed");
    assert_eq!(ts.branch_statuses(&g).await, SUCCEEDED);
    let bodies: Vec<_> = busi
        .calls()
        .into_iter()
        .filter(|c| c.gid == g)
        .map(|c| (c.route, c.method, c.body))
        .collect();
    assert_eq!(
        bodies,
        [
            (
                "TransOut".to_owned(),
                "POST".to_owned(),
                out_data.to_owned()
            ),
            ("TransIn".to_owned(), "POST".to_owned(), in_data.to_owned()),
        ]
    );
    let stored: Vec<Value> = ts.query(&g).await["branches"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let b64 = |s: &str| json!(base64::engine::general_purpose::STANDARD.encode(s));
    let bin: Vec<&Value> = stored.iter().map(|b| &b["bin_data"]).collect();
    assert_eq!(
        bin,
        [&b64(out_data), &b64(out_data), &b64(in_data), &b64(in_data)]
    );
    assert_eq!(busi.balances(), (9970, 10030));

    let g = gid("saga-legacy-rollback");
    let failing_in = r#"{"amount":30,"trans_in_result":"FAILURE"}"#;
    let raw =
        json!({"gid": g, "trans_type": "saga", "steps": steps(out_data, failing_in)}).to_string();
    assert_eq!(ts.post_raw("submit", &raw).await.0, 200);
    ts.wait_pass(&g).await;
    assert_eq!(ts.status(&g).await, "failed");
    assert_eq!(ts.branch_statuses(&g).await, ROLLED_BACK);
    let calls: Vec<_> = busi.calls().into_iter().filter(|c| c.gid == g).collect();
    assert_eq!(calls[2].route, "TransInRevert");
    assert_eq!(calls[2].body, failing_in);
    assert_eq!(
        busi.balances(),
        (9970, 10030),
        "the second saga's effects were undone"
    );
    ts.stop().await;
}

async fn saga_legacy_failure_in_a_200_body_rolls_back(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;
    let url = busi.url();
    let old_saga = |g: &str, in_result: &str| {
        let payload = req(30, "", in_result);
        json!({
            "gid": g,
            "trans_type": "saga",
            "steps": [
                {"action": format!("{url}/TransOutOld"), "compensate": format!("{url}/TransOutRevertOld")},
                {"action": format!("{url}/TransInOld"), "compensate": format!("{url}/TransInRevertOld")},
            ],
            "payloads": [payload, payload],
        })
    };
    let g = gid("saga-old-ok");
    ts.submit_ok(&old_saga(&g, "")).await;
    ts.wait_pass(&g).await;
    assert_eq!(
        ts.status(&g).await,
        "succeed",
        "200 {{\"dtm_result\":\"SUCCESS\"}} is a success"
    );
    assert_eq!(busi.balances(), (9970, 10030));

    let g = gid("saga-old-failure");
    ts.submit_ok(&old_saga(&g, "FAILURE")).await;
    ts.wait_pass(&g).await;
    assert_eq!(ts.status(&g).await, "failed");
    assert_eq!(ts.branch_statuses(&g).await, ROLLED_BACK);
    assert!(
        ts.rollback_reason(&g)
            .await
            .contains(r#""dtm_result":"FAILURE""#),
        "{}",
        ts.rollback_reason(&g).await
    );
    assert_eq!(
        busi.routes_of(&g),
        [
            "TransOutOld",
            "TransInOld",
            "TransInRevertOld",
            "TransOutRevertOld"
        ]
    );
    assert_eq!(
        busi.balances(),
        (9970, 10030),
        "the failed saga changed nothing"
    );
    ts.stop().await;
}

async fn saga_steps_without_body_are_called_with_get(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;
    let url = busi.url();
    let g = gid("saga-no-body");
    ts.submit_ok(&json!({
        "gid": g,
        "trans_type": "saga",
        "steps": [{"action": format!("{url}/TransOut"), "compensate": format!("{url}/TransOutRevert")}],
    }))
    .await;
    ts.wait_pass(&g).await;
    assert_eq!(ts.status(&g).await, "succeed");
    let calls: Vec<_> = busi.calls().into_iter().filter(|c| c.gid == g).collect();
    assert_eq!(calls.len(), 1);
    assert_eq!(
        (calls[0].method.as_str(), calls[0].body.as_str()),
        ("GET", ""),
        "spec §6.2: no body, GET"
    );
    ts.stop().await;
}

// ---- bad input -------------------------------------------------------------------------------------------

async fn saga_bad_submits_are_rejected_and_not_stored(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;
    let url = busi.url();
    let g = |n: usize| format!("saga-bad-{n}-{}", braid::model::short_uuid());
    let valid = |gid: &str| saga_body(gid, &url, "", "");
    let patched = |gid: &str, key: &str, v: Value| {
        let mut b = valid(gid);
        b[key] = v;
        b
    };
    let custom = |gid: &str, c: &str| patched(gid, "custom_data", json!(c));
    let gids: Vec<String> = (0..15).map(g).collect();
    let mut no_gid = valid("x");
    if let Some(o) = no_gid.as_object_mut() {
        o.remove("gid");
    }
    let cases: Vec<(String, &str)> = vec![
        (
            patched(&gids[0], "trans_type", json!("sagaa")).to_string(),
            "trans_type",
        ),
        (no_gid.to_string(), "gid"),
        (patched(&gids[1], "gid", json!(42)).to_string(), "gid"),
        (patched(&gids[2], "steps", json!("x")).to_string(), "steps"),
        (
            patched(&gids[3], "steps", json!([{"action": 1}])).to_string(),
            "steps[0].action",
        ),
        (
            patched(&gids[4], "payloads", json!([1, 2])).to_string(),
            "payloads[0]",
        ),
        (
            patched(&gids[5], "retry_limit", json!("3")).to_string(),
            "retry_limit",
        ),
        (
            patched(&gids[6], "wait_result", json!("yes")).to_string(),
            "wait_result",
        ),
        (
            patched(&gids[7], "timeout_to_fail", json!(-1)).to_string(),
            "timeout_to_fail",
        ),
        (
            patched(&gids[8], "branch_headers", json!(["a"])).to_string(),
            "branch_headers",
        ),
        (
            patched(&gids[9], "branch_headers", json!({"bad header": "x"})).to_string(),
            "branch_headers",
        ),
        (
            custom(&gids[10], r#"{"concurrent":true,"orders":{"2":[0]}}"#).to_string(),
            "custom_data.orders",
        ),
        (
            custom(
                &gids[11],
                r#"{"concurrent":true,"orders":{"0":[1],"1":[0]}}"#,
            )
            .to_string(),
            "custom_data.orders",
        ),
        (
            custom(&gids[12], r#"{"concurrent":true,"orders":{"1":["0"]}}"#).to_string(),
            "custom_data",
        ),
        (custom(&gids[13], "not json").to_string(), "custom_data"),
        (
            patched(&gids[14], "custom_data", json!({"concurrent": true})).to_string(),
            "custom_data",
        ),
        ("{not json".to_owned(), "JSON"),
    ];
    for (i, (body, field)) in cases.iter().enumerate() {
        let (status, reply) = ts.post_raw("submit", body).await;
        assert_eq!(status, 400, "case {i} ({field}): {reply}");
        let message = reply["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(field),
            "case {i}: the message should name '{field}': {reply}"
        );
    }
    for g in &gids {
        assert_eq!(
            ts.query(g).await["transaction"],
            Value::Null,
            "{g} must not be stored"
        );
    }
    assert!(busi.calls().is_empty(), "no branch was called");
    ts.stop().await;
}

on_every_store!(
    saga_normal,
    saga_rollback_compensates_in_reverse_order,
    saga_ongoing_then_cron_succeeds,
    saga_compensation_error_stays_aborting_until_cron,
    saga_submit_while_running_is_joined_and_after_success_refused,
    saga_resubmit_of_submitted_saga_runs_the_stored_branches,
    saga_empty_urls_succeed_at_once,
    saga_concurrent_normal,
    saga_concurrent_rollback_with_ongoing_compensation,
    saga_concurrent_order_trans_out_failure_never_calls_trans_in,
    saga_concurrent_order_trans_in_failure_compensates_dependents_first,
    saga_concurrent_ongoing_committed_by_cron,
    saga_retry_interval_is_kept_on_ongoing,
    saga_retry_interval_doubles_on_error,
    saga_backoff_is_capped,
    saga_backoff_restarts_after_progress,
    saga_timeout_to_fail_aborts_and_compensates,
    saga_request_timeout_slow_branch_is_retried,
    saga_wait_result_normal,
    saga_wait_result_ongoing_then_cron,
    saga_wait_result_reports_rollback_reason,
    saga_wait_result_reports_rollback_while_compensation_is_pending,
    saga_branch_headers_sent_on_first_call_and_cron_retry,
    saga_retry_limit_retries_after_the_interval_then_succeeds,
    saga_retry_limit_exhausted_aborts,
    saga_legacy_step_data_is_the_body,
    saga_legacy_failure_in_a_200_body_rolls_back,
    saga_steps_without_body_are_called_with_get,
    saga_bad_submits_are_rejected_and_not_stored,
);
