//! 2-phase message scenarios (spec §7.2, DTM's msg_test / msg_options_test / msg_delay_test), on SQLite and
//! MariaDB: plain and topic submits, the back-check of a prepared msg after its timeout, retries of branches
//! (a msg never rolls back once submitted), prepare/submit/abort conflicts, `timeout_to_fail`, `concurrent`,
//! and `delay`.

mod support;

use serde_json::{Value, json};
use support::{Backend, Busi, TestServer, busi, gid};

/// A msg calling `actions` in order, with DTM's test payload (30, no forced results) for each step and
/// `<busi>/QueryPrepared` as the back-check.
fn msg_body(gid: &str, busi: &Busi, actions: &[String]) -> Value {
    let payload = busi::req(30, "", "");
    let steps: Vec<Value> = actions.iter().map(|a| json!({"action": a})).collect();
    json!({
        "gid": gid,
        "trans_type": "msg",
        "steps": steps,
        "payloads": vec![payload; actions.len()],
        "query_prepared": format!("{}/QueryPrepared", busi.url()),
    })
}

/// `<busi>/<route>` for each route.
fn urls(busi: &Busi, routes: &[&str]) -> Vec<String> {
    routes
        .iter()
        .map(|r| format!("{}/{r}", busi.url()))
        .collect()
}

/// The usual two-step msg: TransOut then TransIn.
fn trans_msg(gid: &str, busi: &Busi) -> Value {
    msg_body(gid, busi, &urls(busi, &["TransOut", "TransIn"]))
}

/// `route method branch_id op trans_type` of every call the busi got for `gid`, in arrival order.
fn calls_of(busi: &Busi, gid: &str) -> Vec<String> {
    busi.calls()
        .into_iter()
        .filter(|c| c.gid == gid)
        .map(|c| {
            format!(
                "{} {} {} {} {}",
                c.route, c.method, c.branch_id, c.op, c.trans_type
            )
        })
        .collect()
}

/// A field of every branch in stored order.
async fn branch_field(ts: &TestServer, gid: &str, field: &str) -> Vec<String> {
    let q = ts.query(gid).await;
    q["branches"]
        .as_array()
        .map(|bs| {
            bs.iter()
                .map(|b| b[field].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Submit without prepare: created as `submitted`, actions called in order with POST, the payload as body and
/// DTM's four query parameters; then `succeed`.
async fn msg_normal(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;
    let g = gid("msg-normal");
    ts.submit_ok(&trans_msg(&g, &busi)).await;
    ts.wait_pass(&g).await;
    assert_eq!(ts.branch_statuses(&g).await, ["succeed", "succeed"]);
    assert_eq!(ts.status(&g).await, "succeed");
    assert_eq!(branch_field(&ts, &g, "branch_id").await, ["01", "02"]);
    assert_eq!(branch_field(&ts, &g, "op").await, ["action", "action"]);
    assert_eq!(
        calls_of(&busi, &g),
        ["TransOut POST 01 action msg", "TransIn POST 02 action msg"]
    );
    let calls = busi.calls();
    assert_eq!(
        calls[0].body,
        busi::req(30, "", ""),
        "the step payload is the body"
    );
    assert_eq!(busi.balances(), (9970, 10030));
    ts.stop().await;
}

/// A `topic://` step fans out to every subscriber (`01-01`, `01-02`); a topic with one subscriber gets the
/// plain step id.
async fn msg_topic_fans_out_to_subscribers(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;
    ts.subscribe_ok("http_trans", &format!("{}/TransOut", busi.url()))
        .await;
    ts.subscribe_ok("http_trans", &format!("{}/TransIn", busi.url()))
        .await;

    let g = gid("msg-topic");
    ts.submit_ok(&msg_body(&g, &busi, &["topic://http_trans".to_owned()]))
        .await;
    ts.wait_pass(&g).await;
    assert_eq!(ts.status(&g).await, "succeed");
    assert_eq!(ts.branch_statuses(&g).await, ["succeed", "succeed"]);
    assert_eq!(branch_field(&ts, &g, "branch_id").await, ["01-01", "01-02"]);
    assert_eq!(
        branch_field(&ts, &g, "url").await,
        urls(&busi, &["TransOut", "TransIn"])
    );
    assert_eq!(
        calls_of(&busi, &g),
        [
            "TransOut POST 01-01 action msg",
            "TransIn POST 01-02 action msg"
        ]
    );

    ts.subscribe_ok("single", &format!("{}/TransIn", busi.url()))
        .await;
    let g = gid("msg-topic-single");
    let actions = vec![
        "topic://single".to_owned(),
        format!("{}/TransOut", busi.url()),
    ];
    ts.submit_ok(&msg_body(&g, &busi, &actions)).await;
    ts.wait_pass(&g).await;
    assert_eq!(ts.status(&g).await, "succeed");
    assert_eq!(branch_field(&ts, &g, "branch_id").await, ["01", "02"]);
    assert_eq!(
        calls_of(&busi, &g),
        ["TransIn POST 01 action msg", "TransOut POST 02 action msg"]
    );
    ts.stop().await;
}

/// A prepared msg is left alone until its timeout (35 s by default); then the back-check decides:
/// ONGOING keeps it prepared, SUCCESS submits it and runs the actions in the same pass (TestMsgTimeoutSuccess).
async fn msg_prepared_is_back_checked_after_timeout(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;
    let g = gid("msg-backcheck");
    let (status, reply) = ts.post("prepare", &trans_msg(&g, &busi)).await;
    assert_eq!(
        (status, &reply["dtm_result"]),
        (200, &json!("SUCCESS")),
        "{reply}"
    );
    assert_eq!(ts.status(&g).await, "prepared");
    assert_eq!(ts.branch_statuses(&g).await, ["prepared", "prepared"]);

    assert!(
        ts.cron_once().await.is_empty(),
        "a fresh prepared msg is not due"
    );
    ts.forward(30);
    ts.cron_once().await;
    assert!(
        calls_of(&busi, &g).is_empty(),
        "no back-check before the 35 s timeout"
    );

    busi.push("QueryPrepared", &["ONGOING"]);
    ts.cron_forward_expect(6, &g).await;
    assert_eq!(ts.status(&g).await, "prepared");
    assert_eq!(calls_of(&busi, &g), ["QueryPrepared GET 00 msg msg"]);
    assert_eq!(busi.calls()[0].body, "", "the back-check has no body");

    busi.push("TransIn", &["ONGOING"]);
    ts.cron_forward_expect(11, &g).await;
    assert_eq!(ts.status(&g).await, "submitted");
    assert_eq!(ts.branch_statuses(&g).await, ["succeed", "prepared"]);

    ts.cron_forward_expect(11, &g).await;
    assert_eq!(ts.status(&g).await, "succeed");
    assert_eq!(ts.branch_statuses(&g).await, ["succeed", "succeed"]);
    assert_eq!(
        calls_of(&busi, &g),
        [
            "QueryPrepared GET 00 msg msg",
            "QueryPrepared GET 00 msg msg",
            "TransOut POST 01 action msg",
            "TransIn POST 02 action msg",
            "TransIn POST 02 action msg",
        ]
    );
    ts.stop().await;
}

/// Back-check FAILURE: the msg fails, its branches stay prepared and are never called (TestMsgTimeoutFailed).
async fn msg_back_check_failure_fails_it(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;
    let g = gid("msg-backcheck-fail");
    let (status, reply) = ts.post("prepare", &trans_msg(&g, &busi)).await;
    assert_eq!(status, 200, "{reply}");
    busi.push("QueryPrepared", &["FAILURE"]);
    ts.cron_forward_expect(36, &g).await;
    assert_eq!(ts.status(&g).await, "failed");
    assert_eq!(ts.branch_statuses(&g).await, ["prepared", "prepared"]);
    let reason = ts.rollback_reason(&g).await;
    assert!(
        reason.contains("Insufficient balance"),
        "the back-check's answer is the reason: {reason}"
    );
    assert_eq!(calls_of(&busi, &g), ["QueryPrepared GET 00 msg msg"]);

    ts.forward(600);
    assert!(
        ts.cron_once().await.is_empty(),
        "a failed msg is never scanned again"
    );
    let (status, reply) = ts.post("submit", &trans_msg(&g, &busi)).await;
    assert_eq!(status, 409, "{reply}");
    assert_eq!(reply["dtm_result"], "FAILURE");
    assert!(
        reply["message"]
            .as_str()
            .unwrap_or_default()
            .contains("cannot submit"),
        "{reply}"
    );
    assert_eq!(calls_of(&busi, &g).len(), 1);
    ts.stop().await;
}

/// A back-check that errors (HTTP 500) is retried with backoff: the interval doubles to 20 s.
async fn msg_back_check_error_backs_off(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;
    let g = gid("msg-backcheck-error");
    let (status, reply) = ts.post("prepare", &trans_msg(&g, &busi)).await;
    assert_eq!(status, 200, "{reply}");
    busi.push("QueryPrepared", &["ERROR"]);
    ts.cron_forward_expect(36, &g).await;
    assert_eq!(ts.status(&g).await, "prepared");
    assert_eq!(ts.query(&g).await["transaction"]["next_cron_interval"], 20);
    ts.forward(11);
    assert!(
        ts.cron_once().await.is_empty(),
        "backoff: not due after 11 s"
    );
    ts.cron_forward_expect(10, &g).await;
    assert_eq!(ts.status(&g).await, "succeed");
    assert_eq!(
        calls_of(&busi, &g),
        [
            "QueryPrepared GET 00 msg msg",
            "QueryPrepared GET 00 msg msg",
            "TransOut POST 01 action msg",
            "TransIn POST 02 action msg",
        ]
    );
    ts.stop().await;
}

/// A submit of a msg that is already `submitted` is accepted and runs another pass over the stored branches.
async fn msg_resubmit_while_submitted(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;
    let g = gid("msg-resubmit");
    busi.push("TransOut", &["ONGOING", "ONGOING"]);
    ts.submit_ok(&trans_msg(&g, &busi)).await;
    ts.wait_pass(&g).await;
    assert_eq!(ts.status(&g).await, "submitted");
    ts.submit_ok(&trans_msg(&g, &busi)).await;
    ts.wait_pass(&g).await;
    assert_eq!(ts.status(&g).await, "submitted");
    assert_eq!(
        ts.branch_statuses(&g).await,
        ["prepared", "prepared"],
        "still two branches"
    );
    ts.submit_ok(&trans_msg(&g, &busi)).await;
    ts.wait_pass(&g).await;
    assert_eq!(ts.status(&g).await, "succeed");
    assert_eq!(
        calls_of(&busi, &g),
        [
            "TransOut POST 01 action msg",
            "TransOut POST 01 action msg",
            "TransOut POST 01 action msg",
            "TransIn POST 02 action msg",
        ]
    );
    ts.stop().await;
}

/// A branch answering ONGOING stops the (sequential) pass; the scan finishes it after the retry interval.
async fn msg_branch_ongoing_then_cron_succeeds(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;
    let g = gid("msg-ongoing");
    busi.push("TransOut", &["ONGOING"]);
    ts.submit_ok(&trans_msg(&g, &busi)).await;
    ts.wait_pass(&g).await;
    assert_eq!(ts.status(&g).await, "submitted");
    assert_eq!(ts.branch_statuses(&g).await, ["prepared", "prepared"]);
    assert_eq!(
        calls_of(&busi, &g),
        ["TransOut POST 01 action msg"],
        "sequential: TransIn waits for TransOut"
    );

    assert!(
        ts.cron_once().await.is_empty(),
        "not due before its retry interval"
    );
    ts.cron_forward_expect(11, &g).await;
    assert_eq!(ts.status(&g).await, "succeed");
    assert_eq!(ts.branch_statuses(&g).await, ["succeed", "succeed"]);
    assert_eq!(
        calls_of(&busi, &g),
        [
            "TransOut POST 01 action msg",
            "TransOut POST 01 action msg",
            "TransIn POST 02 action msg"
        ]
    );
    ts.stop().await;
}

/// A branch FAILURE after submit is retried with backoff (interval 10 -> 20 s); a msg never rolls back.
async fn msg_branch_failure_is_retried(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;
    let g = gid("msg-failure");
    busi.push("TransIn", &["FAILURE"]);
    ts.submit_ok(&trans_msg(&g, &busi)).await;
    ts.wait_pass(&g).await;
    assert_eq!(ts.status(&g).await, "submitted");
    assert_eq!(ts.branch_statuses(&g).await, ["succeed", "prepared"]);
    assert_eq!(ts.rollback_reason(&g).await, "");
    assert_eq!(
        ts.query(&g).await["transaction"]["next_cron_interval"],
        20,
        "backoff doubled the interval"
    );

    ts.forward(11);
    assert!(
        ts.cron_once().await.is_empty(),
        "backoff: not due after 11 s"
    );
    ts.cron_forward_expect(10, &g).await;
    assert_eq!(ts.status(&g).await, "succeed");
    assert_eq!(ts.branch_statuses(&g).await, ["succeed", "succeed"]);
    assert_eq!(
        calls_of(&busi, &g),
        [
            "TransOut POST 01 action msg",
            "TransIn POST 02 action msg",
            "TransIn POST 02 action msg"
        ]
    );
    assert_eq!(busi.balances(), (9970, 10030));
    ts.stop().await;
}

/// Prepare is idempotent while prepared (a second body is ignored), submit moves it on, and a prepare or
/// submit after it finished is refused with 409 (TestMsgAbnormal).
async fn msg_prepare_twice_then_submit(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;
    let g = gid("msg-abnormal");
    let body = trans_msg(&g, &busi);
    let (status, reply) = ts.post("prepare", &body).await;
    assert_eq!(status, 200, "{reply}");
    let other = msg_body(&g, &busi, &urls(&busi, &["TransIn"]));
    let (status, reply) = ts.post("prepare", &other).await;
    assert_eq!(
        (status, &reply["dtm_result"]),
        (200, &json!("SUCCESS")),
        "a repeated prepare is accepted: {reply}"
    );
    assert_eq!(
        ts.branch_statuses(&g).await,
        ["prepared", "prepared"],
        "the repeated prepare's body is ignored"
    );

    ts.submit_ok(&body).await;
    ts.wait_pass(&g).await;
    assert_eq!(ts.status(&g).await, "succeed");
    assert_eq!(
        calls_of(&busi, &g),
        ["TransOut POST 01 action msg", "TransIn POST 02 action msg"]
    );

    let (status, reply) = ts.post("prepare", &body).await;
    assert_eq!(status, 409, "{reply}");
    assert_eq!(reply["dtm_result"], "FAILURE");
    let message = reply["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("current status 'succeed', cannot prepare"),
        "{reply}"
    );
    let (status, reply) = ts.post("submit", &body).await;
    assert_eq!(status, 409, "{reply}");
    assert!(
        reply["message"]
            .as_str()
            .unwrap_or_default()
            .contains("current status 'succeed', cannot submit"),
        "{reply}"
    );
    ts.stop().await;
}

/// Abort of a prepared msg fails it at once without calling anything; a submitted msg cannot be aborted.
async fn msg_abort_of_prepared_fails_it(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;
    let g = gid("msg-abort");
    let (status, reply) = ts.post("prepare", &trans_msg(&g, &busi)).await;
    assert_eq!(status, 200, "{reply}");
    let abort = json!({"gid": g, "trans_type": "msg", "rollback_reason": "local business failed"});
    let (status, reply) = ts.post("abort", &abort).await;
    assert_eq!(
        (status, &reply["dtm_result"]),
        (200, &json!("SUCCESS")),
        "{reply}"
    );
    assert_eq!(ts.status(&g).await, "failed");
    assert_eq!(ts.branch_statuses(&g).await, ["prepared", "prepared"]);
    assert_eq!(ts.rollback_reason(&g).await, "local business failed");
    ts.forward(60);
    assert!(
        ts.cron_once().await.is_empty(),
        "an aborted msg is never back-checked"
    );
    assert!(calls_of(&busi, &g).is_empty());
    let (status, reply) = ts.post("abort", &abort).await;
    assert_eq!(status, 409, "abort of a failed msg: {reply}");
    assert_eq!(reply["dtm_result"], "FAILURE");

    let g = gid("msg-abort-submitted");
    busi.push("TransOut", &["ONGOING"]);
    ts.submit_ok(&trans_msg(&g, &busi)).await;
    ts.wait_pass(&g).await;
    let (status, reply) = ts
        .post("abort", &json!({"gid": g, "trans_type": "msg"}))
        .await;
    assert_eq!(status, 409, "{reply}");
    let message = reply["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("trans type: 'msg' current status 'submitted', cannot abort"),
        "{reply}"
    );
    assert_eq!(ts.status(&g).await, "submitted");
    ts.stop().await;
}

/// A topic with no subscribers is refused (400 in braid, 500 in DTM) with "topic not found", and nothing is
/// stored; the same once the last subscriber has left.
async fn msg_unknown_topic_is_rejected(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;
    let g = gid("msg-no-topic");
    let body = msg_body(&g, &busi, &["topic://non_existent_topic".to_owned()]);
    for route in ["submit", "prepare"] {
        let (status, reply) = ts.post(route, &body).await;
        assert_eq!(status, 400, "{route}: {reply}");
        assert!(
            reply["message"]
                .as_str()
                .unwrap_or_default()
                .contains("topic not found"),
            "{route}: {reply}"
        );
    }
    assert_eq!(
        ts.query(&g).await,
        json!({"transaction": null, "branches": []})
    );

    let url = format!("{}/TransIn", busi.url());
    ts.subscribe_ok("gone", &url).await;
    let (status, reply) = ts
        .get_with("unsubscribe", &[("topic", "gone"), ("url", &url)])
        .await;
    assert_eq!(status, 200, "{reply}");
    let (status, reply) = ts
        .post("submit", &msg_body(&g, &busi, &["topic://gone".to_owned()]))
        .await;
    assert_eq!(status, 400, "{reply}");
    assert!(
        reply["message"]
            .as_str()
            .unwrap_or_default()
            .contains("topic not found"),
        "{reply}"
    );
    assert_eq!(ts.query(&g).await["transaction"], Value::Null);
    assert!(busi.calls().is_empty());
    ts.stop().await;
}

/// `timeout_to_fail` 120 replaces the 35 s default: no back-check at +60, one after +120
/// (TestMsgOptionsTimeoutCustom).
async fn msg_custom_timeout_to_fail(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;
    let g = gid("msg-timeout-custom");
    let mut body = trans_msg(&g, &busi);
    body["timeout_to_fail"] = json!(120);
    let (status, reply) = ts.post("prepare", &body).await;
    assert_eq!(status, 200, "{reply}");
    ts.forward(60);
    assert!(ts.cron_once().await.is_empty(), "not due at +60");
    assert_eq!(ts.status(&g).await, "prepared");
    assert!(calls_of(&busi, &g).is_empty(), "no back-check at +60");

    ts.cron_forward_expect(61, &g).await;
    assert_eq!(ts.status(&g).await, "succeed");
    assert_eq!(ts.branch_statuses(&g).await, ["succeed", "succeed"]);
    assert_eq!(
        calls_of(&busi, &g),
        [
            "QueryPrepared GET 00 msg msg",
            "TransOut POST 01 action msg",
            "TransIn POST 02 action msg"
        ]
    );
    ts.stop().await;
}

/// `concurrent`: every prepared action is called in the same pass, even when an earlier one is not done.
async fn msg_concurrent_calls_every_branch(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;
    let g = gid("msg-concurrent");
    let mut body = trans_msg(&g, &busi);
    body["concurrent"] = json!(true);
    busi.push("TransOut", &["ONGOING"]);
    ts.submit_ok(&body).await;
    ts.wait_pass(&g).await;
    assert_eq!(ts.status(&g).await, "submitted");
    assert_eq!(ts.branch_statuses(&g).await, ["prepared", "succeed"]);
    let mut calls = calls_of(&busi, &g);
    calls.sort();
    assert_eq!(
        calls,
        ["TransIn POST 02 action msg", "TransOut POST 01 action msg"]
    );
    let options: Value = serde_json::from_str(
        ts.query(&g).await["transaction"]["options"]
            .as_str()
            .unwrap_or("{}"),
    )
    .unwrap_or_default();
    assert_eq!(options["concurrent"], true, "the option is stored");

    ts.cron_forward_expect(11, &g).await;
    assert_eq!(ts.status(&g).await, "succeed");
    assert_eq!(ts.branch_statuses(&g).await, ["succeed", "succeed"]);
    assert_eq!(
        calls_of(&busi, &g).len(),
        3,
        "only the unfinished branch is called again"
    );
    ts.stop().await;
}

/// `custom_data.delay` 10: the submit pass calls nothing; the scan leaves it alone at +0 and +8 and runs it
/// at +12 (TestMsgDelayNormal).
async fn msg_delay(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;
    let g = gid("msg-delay");
    let mut body = trans_msg(&g, &busi);
    body["custom_data"] = json!(json!({"delay": 10}).to_string());
    ts.submit_ok(&body).await;
    ts.wait_pass(&g).await;
    assert_eq!(ts.status(&g).await, "submitted");
    assert_eq!(ts.branch_statuses(&g).await, ["prepared", "prepared"]);
    assert!(
        calls_of(&busi, &g).is_empty(),
        "nothing is called before the delay"
    );

    assert!(ts.cron_once().await.is_empty(), "not due at +0");
    ts.forward(8);
    assert!(ts.cron_once().await.is_empty(), "not due at +8");
    assert!(calls_of(&busi, &g).is_empty());
    ts.cron_forward_expect(4, &g).await;
    assert_eq!(ts.status(&g).await, "succeed");
    assert_eq!(ts.branch_statuses(&g).await, ["succeed", "succeed"]);
    assert_eq!(
        calls_of(&busi, &g),
        ["TransOut POST 01 action msg", "TransIn POST 02 action msg"]
    );

    let (status, reply) = ts
        .post("submit", &{
            let mut b = trans_msg(&gid("msg-bad-delay"), &busi);
            b["custom_data"] = json!(r#"{"delay":"soon"}"#);
            b
        })
        .await;
    assert_eq!(status, 400, "{reply}");
    assert!(
        reply["message"]
            .as_str()
            .unwrap_or_default()
            .contains("delay"),
        "{reply}"
    );
    ts.stop().await;
}

/// `wait_result`: the submit answers after one pass: 200 when it succeeded, 425 while a branch is ONGOING.
async fn msg_wait_result(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;
    let g = gid("msg-wait");
    let mut body = trans_msg(&g, &busi);
    body["wait_result"] = json!(true);
    ts.submit_ok(&body).await;
    assert_eq!(
        ts.status(&g).await,
        "succeed",
        "done when the submit returns"
    );

    let g = gid("msg-wait-ongoing");
    let mut body = trans_msg(&g, &busi);
    body["wait_result"] = json!(true);
    busi.push("TransOut", &["ONGOING"]);
    let (status, reply) = ts.post("submit", &body).await;
    assert_eq!(status, 425, "{reply}");
    assert_eq!(reply["dtm_result"], "ONGOING");
    assert_eq!(ts.status(&g).await, "submitted");
    ts.cron_forward_expect(11, &g).await;
    assert_eq!(ts.status(&g).await, "succeed");
    ts.stop().await;
}

on_every_store!(
    msg_normal,
    msg_topic_fans_out_to_subscribers,
    msg_prepared_is_back_checked_after_timeout,
    msg_back_check_failure_fails_it,
    msg_back_check_error_backs_off,
    msg_resubmit_while_submitted,
    msg_branch_ongoing_then_cron_succeeds,
    msg_branch_failure_is_retried,
    msg_prepare_twice_then_submit,
    msg_abort_of_prepared_fails_it,
    msg_unknown_topic_is_rejected,
    msg_custom_timeout_to_fail,
    msg_concurrent_calls_every_branch,
    msg_delay,
    msg_wait_result,
);
