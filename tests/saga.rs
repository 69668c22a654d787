//! Saga scenarios (spec §7.1, DTM's saga_test / saga_concurrent_test / saga_options_test /
//! saga_compatible_test), on SQLite and MariaDB.

mod support;

use serde_json::json;
use support::{Backend, Busi, TestServer, gid, saga_body};

async fn saga_normal(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;
    let g = gid("saga-normal");
    ts.submit_ok(&saga_body(&g, &busi.url(), "", "")).await;
    ts.wait_pass(&g).await;
    assert_eq!(ts.branch_statuses(&g).await, ["prepared", "succeed", "prepared", "succeed"]);
    assert_eq!(ts.status(&g).await, "succeed");
    assert_eq!(busi.routes_of(&g), ["TransOut", "TransIn"]);
    let calls = busi.calls();
    let first = &calls[0];
    assert_eq!((first.method.as_str(), first.branch_id.as_str(), first.op.as_str(), first.trans_type.as_str()), ("POST", "01", "action", "saga"));
    assert_eq!(busi.balances(), (9970, 10030));
    ts.stop().await;
}

async fn saga_rollback_compensates_in_reverse_order(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;
    let g = gid("saga-rollback");
    ts.submit_ok(&saga_body(&g, &busi.url(), "", "FAILURE")).await;
    ts.wait_pass(&g).await;
    assert_eq!(ts.branch_statuses(&g).await, ["succeed", "succeed", "succeed", "failed"]);
    assert_eq!(ts.status(&g).await, "failed");
    assert!(ts.rollback_reason(&g).await.contains("Insufficient balance"), "{}", ts.rollback_reason(&g).await);
    assert_eq!(busi.routes_of(&g), ["TransOut", "TransIn", "TransInRevert", "TransOutRevert"]);
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
    assert_eq!(ts.branch_statuses(&g).await, ["prepared", "prepared", "prepared", "prepared"]);
    assert_eq!(ts.status(&g).await, "submitted");
    assert!(ts.cron_once().await.is_empty(), "not due before its retry interval");
    ts.cron_forward_expect(11, &g).await;
    assert_eq!(ts.branch_statuses(&g).await, ["prepared", "succeed", "prepared", "succeed"]);
    assert_eq!(ts.status(&g).await, "succeed");
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
    assert!(reply["message"].as_str().unwrap().contains("Insufficient balance"), "{reply}");
    assert_eq!(ts.status(&g).await, "failed");
    ts.stop().await;
}

on_both_stores!(
    saga_normal,
    saga_rollback_compensates_in_reverse_order,
    saga_ongoing_then_cron_succeeds,
    saga_wait_result_reports_rollback_reason,
);
