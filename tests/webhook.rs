//! The alert webhook (spec §9.4, §6.5; DTM's msg_webhook_test), on SQLite and MariaDB: with
//! `alert_retry_limit` 3, a branch that keeps erroring raises an alert from its 3rd consecutive failure on,
//! and a webhook that fails itself is only logged, never holding up the transaction.

// Panicking is how a test fails; clippy's allow-*-in-tests does not reach the scenario fns and the harness.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::{Value, json};
use support::{Backend, Busi, TestServer, fresh_dsn, gid, test_config};

async fn start_with_alerts(backend: Backend, busi: &Busi) -> TestServer {
    let mut config = test_config(&fresh_dsn(backend));
    config.alert.webhook = Some(format!("{}/AlertWebHook", busi.url()));
    config.alert.retry_limit = 3;
    TestServer::start_with(config).await
}

fn msg(g: &str, busi: &Busi) -> Value {
    let payload = support::busi::req(30, "", "");
    json!({
        "gid": g, "trans_type": "msg",
        "steps": [{"action": format!("{}/TransOut", busi.url())}, {"action": format!("{}/TransIn", busi.url())}],
        "payloads": [payload.clone(), payload],
    })
}

/// The alerts received for `gid`, as parsed bodies in arrival order.
fn alerts_of(busi: &Busi, g: &str) -> Vec<Value> {
    busi.calls_of("AlertWebHook")
        .into_iter()
        .filter(|c| c.gid == g)
        .map(|c| serde_json::from_str(&c.body).expect("alert body is JSON"))
        .collect()
}

async fn alert_fires_from_the_third_consecutive_failure_on(backend: Backend) {
    let busi = Busi::start().await;
    let ts = start_with_alerts(backend, &busi).await;
    let g = gid("webhook");
    busi.push("TransIn", &["ERROR", "ERROR", "ERROR", "ERROR"]);
    ts.submit_ok(&msg(&g, &busi)).await;
    ts.wait_pass(&g).await;
    // Failures 2..4 come from the scan; the interval doubles each time (20, 40, 80, 160).
    for wait in [21, 41, 81] {
        ts.cron_forward_expect(wait, &g).await;
        assert_eq!(ts.status(&g).await, "submitted");
    }
    let hooks = busi.wait_calls("AlertWebHook", 2).await;
    assert_eq!(ts.query(&g).await["transaction"]["next_cron_interval"], 160);
    ts.cron_forward_expect(161, &g).await;
    assert_eq!(ts.status(&g).await, "succeed");
    ts.stop().await; // Delivers any alert still in flight.

    assert_eq!(
        hooks.len(),
        2,
        "alerts on the 3rd and 4th failure only: {hooks:?}"
    );
    let alerts = alerts_of(&busi, &g);
    assert_eq!(alerts.len(), 2, "{alerts:?}");
    for (alert, retry_count) in alerts.iter().zip([3, 4]) {
        assert_eq!(alert["gid"], json!(g), "{alert}");
        assert_eq!(alert["status"], "submitted", "{alert}");
        assert_eq!(
            alert["branch"],
            json!(format!("{}/TransIn", busi.url())),
            "{alert}"
        );
        assert!(
            alert["error"]
                .as_str()
                .unwrap_or_default()
                .contains("ERROR from user"),
            "{alert}"
        );
        assert_eq!(alert["retry_count"], retry_count, "{alert}");
        let mut keys: Vec<&String> = alert
            .as_object()
            .expect("alert is an object")
            .keys()
            .collect();
        keys.sort();
        assert_eq!(keys, ["branch", "error", "gid", "retry_count", "status"]);
    }
    assert_eq!(
        busi.calls()
            .iter()
            .filter(|c| c.route == "AlertWebHook" && c.method != "POST")
            .count(),
        0
    );
}

async fn a_failing_webhook_never_blocks_the_transaction(backend: Backend) {
    let busi = Busi::start().await;
    let ts = start_with_alerts(backend, &busi).await;
    // The busi webhook answers 500 to any alert whose gid contains "Error".
    let g = gid("webhookError");
    busi.push("TransIn", &["ERROR", "ERROR", "ERROR"]);
    ts.submit_ok(&msg(&g, &busi)).await;
    ts.wait_pass(&g).await;
    ts.cron_forward_expect(21, &g).await;
    ts.cron_forward_expect(41, &g).await;
    busi.wait_calls("AlertWebHook", 1).await;
    ts.cron_forward_expect(81, &g).await;
    assert_eq!(
        ts.status(&g).await,
        "succeed",
        "the transaction went on despite the failing hook"
    );
    assert_eq!(
        busi.routes_of(&g),
        [
            "TransOut",
            "TransIn",
            "TransIn",
            "TransIn",
            "AlertWebHook",
            "TransIn"
        ]
    );
    ts.stop().await;
    assert_eq!(alerts_of(&busi, &g).len(), 1);
}

async fn no_alert_without_a_webhook_or_below_the_limit(backend: Backend) {
    let busi = Busi::start().await;
    // No webhook configured: failures are retried, nothing is posted anywhere.
    let ts = TestServer::start(backend).await;
    let g = gid("nohook");
    busi.push("TransIn", &["ERROR", "ERROR", "ERROR"]);
    ts.submit_ok(&msg(&g, &busi)).await;
    ts.wait_pass(&g).await;
    for wait in [21, 41, 81] {
        ts.cron_forward_expect(wait, &g).await;
    }
    assert_eq!(ts.status(&g).await, "succeed");
    ts.stop().await;
    assert!(busi.calls_of("AlertWebHook").is_empty());

    // ONGOING is not a failure: it never raises an alert, however often it repeats.
    let ts = start_with_alerts(backend, &busi).await;
    let g = gid("ongoing");
    busi.push("TransIn", &["ONGOING", "ONGOING", "ONGOING", "ONGOING"]);
    ts.submit_ok(&msg(&g, &busi)).await;
    ts.wait_pass(&g).await;
    for _ in 0..4 {
        ts.cron_forward_expect(11, &g).await;
    }
    assert_eq!(ts.status(&g).await, "succeed");
    ts.stop().await;
    assert!(
        busi.calls_of("AlertWebHook").is_empty(),
        "{:?}",
        busi.calls_of("AlertWebHook")
    );
}

on_every_store!(
    alert_fires_from_the_third_consecutive_failure_on,
    a_failing_webhook_never_blocks_the_transaction,
    no_alert_without_a_webhook_or_below_the_limit,
);
