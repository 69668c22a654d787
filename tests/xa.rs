//! XA scenarios (spec §7.4; DTM's xa_test) with real MariaDB XA transactions in a test resource manager
//! ([`support::XaRm`]), on SQLite and MariaDB stores. The test plays the AP: `prepare`, the branch actions
//! (each RM registers its branch and `XA PREPARE`s), then `submit` or `abort`. Every scenario ends by
//! asserting that MariaDB holds none of its xids prepared (`XA RECOVER`).

// Panicking is how a test fails; clippy's allow-*-in-tests does not reach the scenario fns and the harness.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::{Value, json};
use support::{Backend, TestServer, XaRm, gid};

fn xa(g: &str) -> Value {
    json!({"gid": g, "trans_type": "xa"})
}

fn rows(list: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
    list.iter()
        .map(|(b, o, s)| ((*b).to_owned(), (*o).to_owned(), (*s).to_owned()))
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

/// The value of a gauge sample line `name{labels} value` in the Prometheus text.
fn gauge(metrics: &str, sample: &str) -> i64 {
    metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(sample)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or_else(|| panic!("no sample {sample} in:\n{metrics}"))
}

const STUCK_COMMIT: &str = r#"braid_xa_phase2_stuck_transactions{op="commit"}"#;
const STUCK_ROLLBACK: &str = r#"braid_xa_phase2_stuck_transactions{op="rollback"}"#;

/// `prepare` plus both branch actions (TransOut pays 30 as branch 01, TransIn receives it as 02).
async fn prepare_two_branches(ts: &TestServer, rm: &XaRm, g: &str) {
    let (status, reply) = ts.post("prepare", &xa(g)).await;
    assert_eq!(status, 200, "prepare: {reply}");
    let body = support::busi::req(30, "", "");
    assert_eq!(
        rm.call_action("TransOutXa", &ts.dtm(), g, "01", &body)
            .await,
        200
    );
    assert_eq!(
        rm.call_action("TransInXa", &ts.dtm(), g, "02", &body).await,
        200
    );
}

async fn xa_normal_commits_every_branch_in_registration_order(backend: Backend) {
    let rm = XaRm::start().await;
    let ts = TestServer::start(backend).await;
    let g = gid("xa-normal");
    prepare_two_branches(&ts, &rm, &g).await;
    assert_eq!(
        ts.branches(&g).await,
        rows(&[
            ("01", "rollback", "prepared"),
            ("01", "commit", "prepared"),
            ("02", "rollback", "prepared"),
            ("02", "commit", "prepared")
        ])
    );
    let mut held = rm.recover().await;
    held.sort();
    assert_eq!(
        held,
        [format!("{g}-01"), format!("{g}-02")],
        "both local transactions are prepared"
    );
    assert_eq!(
        rm.balances().await,
        (10000, 10000),
        "nothing is committed before phase 2"
    );

    ts.submit_ok(&xa(&g)).await;
    ts.wait_pass(&g).await;
    assert_eq!(ts.status(&g).await, "succeed");
    assert_eq!(
        ts.branch_statuses(&g).await,
        ["prepared", "succeed", "prepared", "succeed"]
    );
    assert_eq!(
        rm.phase2_of(&g),
        pairs(&[("01", "commit"), ("02", "commit")])
    );
    assert_eq!(rm.balances().await, (9970, 10030));
    ts.stop().await;
    assert_eq!(
        rm.finish().await,
        Vec::<String>::new(),
        "XA RECOVER lists none of the test's xids"
    );
}

async fn xa_rollback_when_a_branch_fails_before_registering(backend: Backend) {
    let rm = XaRm::start().await;
    let ts = TestServer::start(backend).await;
    let g = gid("xa-rollback");
    let (status, _) = ts.post("prepare", &xa(&g)).await;
    assert_eq!(status, 200);
    assert_eq!(
        rm.call_action(
            "TransOutXa",
            &ts.dtm(),
            &g,
            "01",
            &support::busi::req(30, "", "")
        )
        .await,
        200
    );
    let failing = support::busi::req(30, "", "FAILURE");
    assert_eq!(
        rm.call_action("TransInXa", &ts.dtm(), &g, "02", &failing)
            .await,
        409,
        "TransIn fails locally"
    );
    let (status, reply) = ts
        .post(
            "abort",
            &json!({"gid": g, "trans_type": "xa", "rollback_reason": "TransIn failed"}),
        )
        .await;
    assert_eq!(status, 200, "abort: {reply}");
    ts.wait_pass(&g).await;

    assert_eq!(ts.status(&g).await, "failed");
    assert_eq!(ts.rollback_reason(&g).await, "TransIn failed");
    assert_eq!(
        ts.branches(&g).await,
        rows(&[("01", "rollback", "succeed"), ("01", "commit", "prepared")])
    );
    assert_eq!(rm.phase2_of(&g), pairs(&[("01", "rollback")]));
    assert_eq!(rm.balances().await, (10000, 10000));
    ts.stop().await;
    assert_eq!(
        rm.finish().await,
        Vec::<String>::new(),
        "XA RECOVER lists none of the test's xids"
    );
}

async fn xa_duplicate_commit_is_harmless(backend: Backend) {
    let rm = XaRm::start().await;
    let ts = TestServer::start(backend).await;
    let g = gid("xa-dup");
    prepare_two_branches(&ts, &rm, &g).await;
    // The RM commits branch 01 but its reply is lost: braid must retry, and the retry must not hurt.
    rm.push("phase2", &["LOST"]);
    ts.submit_ok(&xa(&g)).await;
    ts.wait_pass(&g).await;
    assert_eq!(ts.status(&g).await, "submitted");
    assert_eq!(
        ts.branch_statuses(&g).await,
        ["prepared", "prepared", "prepared", "prepared"]
    );
    assert_eq!(
        rm.recover().await,
        [format!("{g}-02")],
        "01 is committed, 02 still prepared"
    );

    ts.cron_forward_expect(21, &g).await;
    assert_eq!(ts.status(&g).await, "succeed");
    assert_eq!(
        rm.phase2_of(&g),
        pairs(&[("01", "commit"), ("01", "commit"), ("02", "commit")])
    );
    assert_eq!(rm.balances().await, (9970, 10030), "moved exactly once");
    // A stray third commit (e.g. from another replica) changes nothing either.
    let extra = reqwest::Client::new()
        .post(rm.phase2_url())
        .query(&[
            ("gid", g.as_str()),
            ("trans_type", "xa"),
            ("branch_id", "01"),
            ("op", "commit"),
        ])
        .send()
        .await
        .expect("phase 2 call sent");
    assert_eq!(extra.status().as_u16(), 200);
    assert_eq!(rm.balances().await, (9970, 10030));
    ts.stop().await;
    assert_eq!(
        rm.finish().await,
        Vec::<String>::new(),
        "XA RECOVER lists none of the test's xids"
    );
}

async fn xa_prepared_timeout_rolls_back(backend: Backend) {
    let rm = XaRm::start().await;
    let ts = TestServer::start(backend).await;
    let g = gid("xa-timeout");
    let (status, _) = ts.post("prepare", &xa(&g)).await;
    assert_eq!(status, 200);
    assert_eq!(
        rm.call_action(
            "TransOutXa",
            &ts.dtm(),
            &g,
            "01",
            &support::busi::req(30, "", "")
        )
        .await,
        200
    );
    // A second AP died right after prepare, before any branch.
    let empty = gid("xa-timeout-empty");
    assert_eq!(ts.post("prepare", &xa(&empty)).await.0, 200);
    assert!(
        ts.cron_once().await.is_empty(),
        "a prepared XA is left alone until its timeout"
    );
    rm.push("phase2", &["ERROR"]);

    ts.forward(36);
    let mut picked = ts.cron_once().await;
    picked.sort();
    let mut want = vec![g.clone(), empty.clone()];
    want.sort();
    assert_eq!(picked, want);
    assert_eq!(ts.status(&empty).await, "failed", "nothing to roll back");
    assert_eq!(
        ts.status(&g).await,
        "aborting",
        "the rollback did not land yet"
    );
    assert_eq!(ts.rollback_reason(&g).await, "Timeout after 35 seconds");
    assert_eq!(gauge(&ts.metrics().await, STUCK_ROLLBACK), 1);
    assert_eq!(rm.recover().await, [format!("{g}-01")]);
    // A branch that arrives after the timeout cannot register, so its RM rolls its local work back.
    let late = support::busi::req(30, "", "");
    assert_eq!(
        rm.call_action("TransInXa", &ts.dtm(), &g, "02", &late)
            .await,
        409
    );
    assert_eq!(
        rm.recover().await,
        [format!("{g}-01")],
        "the late branch left nothing prepared"
    );

    ts.cron_forward_expect(21, &g).await;
    assert_eq!(ts.status(&g).await, "failed");
    assert_eq!(
        ts.branches(&g).await,
        rows(&[("01", "rollback", "succeed"), ("01", "commit", "prepared")])
    );
    assert_eq!(
        rm.phase2_of(&g),
        pairs(&[("01", "rollback"), ("01", "rollback")])
    );
    assert_eq!(gauge(&ts.metrics().await, STUCK_ROLLBACK), 0);
    assert_eq!(rm.balances().await, (10000, 10000));
    ts.stop().await;
    assert_eq!(
        rm.finish().await,
        Vec::<String>::new(),
        "XA RECOVER lists none of the test's xids"
    );
}

async fn xa_undelivered_phase2_stays_visible_and_is_retried_until_it_lands(backend: Backend) {
    let rm = XaRm::start().await;
    let ts = TestServer::start(backend).await;
    let g = gid("xa-stuck");
    prepare_two_branches(&ts, &rm, &g).await;
    rm.push("phase2", &["ERROR", "ERROR"]);
    ts.submit_ok(&xa(&g)).await;
    ts.wait_pass(&g).await;

    assert_eq!(ts.status(&g).await, "submitted");
    assert_eq!(
        ts.branches(&g).await,
        rows(&[
            ("01", "rollback", "prepared"),
            ("01", "commit", "prepared"),
            ("02", "rollback", "prepared"),
            ("02", "commit", "prepared")
        ]),
        "the undelivered commit stays visible as prepared"
    );
    assert_eq!(
        ts.query(&g).await["transaction"]["next_cron_interval"],
        20,
        "retried with backoff"
    );
    let metrics = ts.metrics().await;
    assert_eq!(gauge(&metrics, STUCK_COMMIT), 1);
    assert_eq!(gauge(&metrics, STUCK_ROLLBACK), 0);
    assert!(
        metrics.contains(
            r#"dtm_branch_process_total{branchtype="commit",model="xa",status="fail"} 1"#
        ),
        "{metrics}"
    );
    assert_eq!(
        rm.recover().await.len(),
        2,
        "the RM still holds both branches prepared"
    );

    assert!(
        ts.cron_once().await.is_empty(),
        "not due before its backoff"
    );
    ts.cron_forward_expect(21, &g).await;
    assert_eq!(ts.status(&g).await, "submitted");
    assert_eq!(ts.query(&g).await["transaction"]["next_cron_interval"], 40);
    ts.cron_forward_expect(41, &g).await;
    assert_eq!(ts.status(&g).await, "succeed");
    assert_eq!(
        ts.branch_statuses(&g).await,
        ["prepared", "succeed", "prepared", "succeed"]
    );
    assert_eq!(
        rm.phase2_of(&g),
        pairs(&[
            ("01", "commit"),
            ("01", "commit"),
            ("01", "commit"),
            ("02", "commit")
        ])
    );
    assert_eq!(gauge(&ts.metrics().await, STUCK_COMMIT), 0);
    assert_eq!(rm.balances().await, (9970, 10030));
    ts.stop().await;
    assert_eq!(
        rm.finish().await,
        Vec::<String>::new(),
        "XA RECOVER lists none of the test's xids"
    );
}

on_every_store!(
    xa_normal_commits_every_branch_in_registration_order,
    xa_rollback_when_a_branch_fails_before_registering,
    xa_duplicate_commit_is_harmless,
    xa_prepared_timeout_rolls_back,
    xa_undelivered_phase2_stays_visible_and_is_retried_until_it_lands,
);
