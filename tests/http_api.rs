//! The HTTP admin API and topics (spec §4, §13; DTM's api_test and topic_test), on SQLite and MariaDB: version,
//! newGid, query, all (filters and cursor paging), scanKV/queryKV, metrics, resetCronTime, forceStop,
//! resetNextCronTime, subscribe/unsubscribe/delete topic, concurrent subscribes, ping, and what malformed input
//! gets (400 naming the field, 404 for unknown gids and routes, 413 for oversized bodies).
//!
//! Where braid deliberately differs from DTM, braid's answer is asserted: 400 instead of 500 for bad input, 404
//! instead of 500 for an unknown gid, 409/404 instead of 500 for topic conflicts, `[]` instead of `null` for an
//! `all?gid=` miss.

mod support;

use base64::Engine as _;
use reqwest::Method;
use serde_json::{Value, json};
use support::{Backend, Busi, TestServer, busi, gid};

/// A two-step msg (TransOut, TransIn) with the back-check URL.
fn msg_body(gid: &str, busi: &Busi) -> Value {
    let payload = busi::req(30, "", "");
    json!({
        "gid": gid,
        "trans_type": "msg",
        "steps": [{"action": format!("{}/TransOut", busi.url())}, {"action": format!("{}/TransIn", busi.url())}],
        "payloads": [payload.clone(), payload],
        "query_prepared": format!("{}/QueryPrepared", busi.url()),
    })
}

/// The message of an error reply.
fn message(reply: &Value) -> String {
    reply["message"].as_str().unwrap_or_default().to_owned()
}

/// Asserts a 400 whose message names `field`.
#[track_caller]
fn assert_bad_request((status, reply): (u16, Value), field: &str, what: &str) {
    assert_eq!(status, 400, "{what}: {reply}");
    assert!(
        message(&reply).contains(field),
        "{what}: the message should name '{field}': {reply}"
    );
}

/// The gids of an `all` reply, in reply order.
fn gids_of(reply: &Value) -> Vec<String> {
    reply["transactions"]
        .as_array()
        .map(|ts| {
            ts.iter()
                .map(|t| t["gid"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The current time on the server's store clock, in ms.
fn now_ms(ts: &TestServer) -> i64 {
    ts.server.clock.now().0
}

/// Prepares a msg with `timeout_to_fail` 1000: it sits with a `next_cron_time` far in the future.
async fn prepare_far(ts: &TestServer, busi: &Busi, prefix: &str) -> String {
    let g = gid(prefix);
    let mut body = msg_body(&g, busi);
    body["timeout_to_fail"] = json!(1000);
    let (status, reply) = ts.post("prepare", &body).await;
    assert_eq!(status, 200, "{reply}");
    g
}

/// `version`, `newGid`, `/api/ping`, unknown routes.
async fn api_version_new_gid_ping(backend: Backend) {
    let ts = TestServer::start(backend).await;
    let (status, reply) = ts.get("version").await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        reply,
        json!({"version": concat!("v", env!("CARGO_PKG_VERSION"))})
    );

    let (status, first) = ts.get("newGid").await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["dtm_result"], "SUCCESS");
    let gid = first["gid"].as_str().unwrap_or_default();
    assert_eq!(gid.len(), 22, "{first}");
    assert!(gid.chars().all(|c| c.is_ascii_alphanumeric()), "{first}");
    let (_, second) = ts.get("newGid").await;
    assert_ne!(first["gid"], second["gid"]);

    for method in [Method::GET, Method::POST, Method::HEAD] {
        let (status, reply) = ts.request(method.clone(), "/api/ping", None).await;
        assert_eq!(status, 200, "{method} /api/ping");
        if method != Method::HEAD {
            assert_eq!(reply, json!({"msg": "pong"}));
        }
    }

    for path in ["/api/dtmsvr/nope", "/nope", "/api/dtmsvr/topic/"] {
        let (status, reply) = ts.request(Method::GET, path, None).await;
        assert_eq!(status, 404, "{path}: {reply}");
        assert!(
            !message(&reply).is_empty(),
            "{path}: a JSON message: {reply}"
        );
    }
    ts.stop().await;
}

/// `query`: the transaction and branch JSON of spec §3.1/§3.2; 400 without a gid; `null`/`[]` for an unknown
/// one (TestAPIQuery).
async fn api_query(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;
    let g = gid("api-query");
    ts.submit_ok(&msg_body(&g, &busi)).await;
    ts.wait_pass(&g).await;

    let q = ts.query(&g).await;
    let t = &q["transaction"];
    assert_eq!(t["gid"], g.as_str());
    assert_eq!(t["trans_type"], "msg");
    assert_eq!(t["status"], "succeed");
    assert_eq!(t["protocol"], "http");
    assert_eq!(t["query_prepared"], format!("{}/QueryPrepared", busi.url()));
    assert_eq!(t["concurrent"], false);
    assert!(t["id"].as_i64().unwrap_or(0) > 0, "{t}");
    let options: Value =
        serde_json::from_str(t["options"].as_str().unwrap_or_default()).unwrap_or_default();
    assert_eq!(
        options,
        json!({"concurrent": false}),
        "options is the JSON text of the options: {t}"
    );
    for key in ["create_time", "update_time", "finish_time"] {
        let text = t[key].as_str().unwrap_or_default();
        assert!(
            chrono::DateTime::parse_from_rfc3339(text).is_ok(),
            "{key} is RFC 3339: {t}"
        );
    }
    for absent in [
        "rollback_reason",
        "rollback_time",
        "next_cron_time",
        "custom_data",
        "result",
        "ext_data",
    ] {
        assert!(
            t.get(absent).is_none(),
            "{absent} is omitted when empty: {t}"
        );
    }

    let branches = q["branches"].as_array().cloned().unwrap_or_default();
    assert_eq!(branches.len(), 2, "{q}");
    let b = &branches[0];
    assert_eq!(
        (b["gid"].as_str(), b["branch_id"].as_str(), b["op"].as_str()),
        (Some(g.as_str()), Some("01"), Some("action"))
    );
    assert_eq!(b["status"], "succeed");
    assert_eq!(b["url"], format!("{}/TransOut", busi.url()));
    let bin = base64::engine::general_purpose::STANDARD
        .decode(b["bin_data"].as_str().unwrap_or_default());
    assert_eq!(
        bin.ok(),
        Some(busi::req(30, "", "").into_bytes()),
        "bin_data is the base64 payload: {b}"
    );
    for key in ["id", "create_time", "update_time", "finish_time"] {
        assert!(b.get(key).is_some(), "branch {key}: {b}");
    }

    assert_bad_request(ts.get("query?gid=").await, "gid", "empty gid");
    assert_bad_request(ts.get("query").await, "gid", "no gid");
    let (status, reply) = ts.get("query?gid=1").await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply, json!({"transaction": null, "branches": []}));
    ts.stop().await;
}

/// `all`: newest first, cursor paging with `position`/`limit`/`next_position`, filters on status, transType and
/// a creation-time range in ms, gid lookup, and 400s naming bad parameters (TestAPIAll).
async fn api_all(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;
    let start = now_ms(&ts);
    let mut msgs = Vec::new();
    for i in 0..3 {
        let g = gid(&format!("api-all-{i}"));
        ts.submit_ok(&msg_body(&g, &busi)).await;
        ts.wait_pass(&g).await;
        msgs.push(g);
    }
    let end = now_ms(&ts);
    ts.forward(600);
    let later = now_ms(&ts);
    let saga = gid("api-all-saga");
    busi.push("TransOut", &["ONGOING"]);
    ts.submit_ok(&support::saga_body(&saga, &busi.url(), "", ""))
        .await;
    ts.wait_pass(&saga).await;
    let prepared = prepare_far(&ts, &busi, "api-all-prepared").await;
    let newest_first = [
        prepared.clone(),
        saga.clone(),
        msgs[2].clone(),
        msgs[1].clone(),
        msgs[0].clone(),
    ];

    let (status, page1) = ts.get_with("all", &[("limit", "1")]).await;
    assert_eq!(status, 200, "{page1}");
    assert_eq!(gids_of(&page1), [prepared.as_str()]);
    let pos1 = page1["next_position"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(
        pos1,
        page1["transactions"][0]["id"].to_string(),
        "the cursor is the last id of a full page"
    );
    let (_, page2) = ts
        .get_with("all", &[("limit", "1"), ("position", &pos1)])
        .await;
    assert_eq!(gids_of(&page2), [saga.as_str()]);
    let pos2 = page2["next_position"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(!pos2.is_empty() && pos2 != pos1, "{page2}");
    let (_, rest) = ts
        .get_with("all", &[("limit", "1000"), ("position", &pos1)])
        .await;
    assert_eq!(gids_of(&rest), newest_first[1..]);
    assert_eq!(rest["next_position"], "", "a short page ends the scan");
    let (_, everything) = ts.get("all").await;
    assert_eq!(
        gids_of(&everything),
        newest_first,
        "default limit 100, newest first"
    );

    let window = |from: i64, to: i64| {
        [
            ("createTimeStart", from.to_string()),
            ("createTimeEnd", to.to_string()),
        ]
    };
    let [a, b] = window(start - 60_000, end + 60_000);
    let params = [
        ("limit", "10"),
        ("status", "succeed"),
        ("transType", "msg"),
        (a.0, &a.1),
        (b.0, &b.1),
    ];
    let (status, found) = ts.get_with("all", &params).await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(
        gids_of(&found),
        [msgs[2].as_str(), msgs[1].as_str(), msgs[0].as_str()]
    );
    assert_eq!(found["next_position"], "");
    let [a, b] = window(start - 600_000, start - 300_000);
    let (_, none) = ts
        .get_with("all", &[("status", "succeed"), (a.0, &a.1), (b.0, &b.1)])
        .await;
    assert_eq!(
        none["transactions"],
        json!([]),
        "nothing was created five minutes earlier: {none}"
    );
    assert_eq!(none["next_position"], "");
    let (_, recent) = ts
        .get_with("all", &[("createTimeStart", &later.to_string())])
        .await;
    assert_eq!(gids_of(&recent), [prepared.as_str(), saga.as_str()]);
    let (_, submitted) = ts.get_with("all", &[("status", "submitted")]).await;
    assert_eq!(gids_of(&submitted), [saga.as_str()]);
    let (_, sagas) = ts.get_with("all", &[("transType", "saga")]).await;
    assert_eq!(gids_of(&sagas), [saga.as_str()]);
    let (_, prepared_msgs) = ts
        .get_with("all", &[("transType", "msg"), ("status", "prepared")])
        .await;
    assert_eq!(gids_of(&prepared_msgs), [prepared.as_str()]);

    let (_, one) = ts.get_with("all", &[("gid", &msgs[1])]).await;
    assert_eq!(gids_of(&one), [msgs[1].as_str()]);
    assert_eq!(one["transactions"][0]["status"], "succeed");
    let (status, missing) = ts.get_with("all", &[("gid", "no-such-gid")]).await;
    assert_eq!(status, 200, "{missing}");
    assert_eq!(
        missing["transactions"],
        json!([]),
        "braid answers [] where DTM answers null: {missing}"
    );

    for (params, field) in [
        (vec![("limit", "abc")], "limit"),
        (vec![("limit", "0")], "limit"),
        (vec![("limit", "-1")], "limit"),
        (vec![("status", "bogus")], "status"),
        (vec![("transType", "bogus")], "transType"),
        (vec![("position", "x")], "position"),
        (vec![("createTimeStart", "yesterday")], "createTimeStart"),
        (vec![("createTimeEnd", "1.5")], "createTimeEnd"),
    ] {
        assert_bad_request(
            ts.get_with("all", &params).await,
            field,
            &format!("all {params:?}"),
        );
    }
    ts.stop().await;
}

/// `scanKV` pages a category by id; `queryKV` reads one key (TestAPIScanKV, TestAPIQueryKV).
async fn api_scan_kv_and_query_kv(backend: Backend) {
    let ts = TestServer::start(backend).await;
    for i in 0..3 {
        ts.subscribe_ok(&format!("test_topic{i}"), "http://dtm/test1")
            .await;
    }
    let (status, page1) = ts
        .get_with("scanKV", &[("cat", "topics"), ("limit", "1")])
        .await;
    assert_eq!(status, 200, "{page1}");
    assert_eq!(page1["kv"].as_array().map(Vec::len), Some(1), "{page1}");
    assert_eq!(page1["kv"][0]["k"], "test_topic0");
    let pos1 = page1["next_position"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(!pos1.is_empty(), "{page1}");
    let (_, page2) = ts
        .get_with(
            "scanKV",
            &[("cat", "topics"), ("limit", "1"), ("position", &pos1)],
        )
        .await;
    assert_eq!(page2["kv"][0]["k"], "test_topic1");
    let pos2 = page2["next_position"].as_str().unwrap_or_default();
    assert!(!pos2.is_empty() && pos2 != pos1, "{page2}");
    let (_, rest) = ts
        .get_with(
            "scanKV",
            &[("cat", "topics"), ("limit", "1000"), ("position", &pos1)],
        )
        .await;
    let keys: Vec<&str> = rest["kv"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|kv| kv["k"].as_str())
        .collect();
    assert_eq!(keys, ["test_topic1", "test_topic2"]);
    assert_eq!(rest["next_position"], "");
    let (_, other) = ts.get_with("scanKV", &[("cat", "other")]).await;
    assert_eq!(other, json!({"kv": [], "next_position": ""}));
    // No category, as DTM answers it: the empty category, which holds nothing.
    for params in [&[][..], &[("cat", "")][..]] {
        let (status, none) = ts.get_with("scanKV", params).await;
        assert_eq!(status, 200, "{none}");
        assert_eq!(none, json!({"kv": [], "next_position": ""}));
    }

    let (status, one) = ts
        .get_with("queryKV", &[("cat", "topics"), ("key", "test_topic2")])
        .await;
    assert_eq!(status, 200, "{one}");
    let kv = &one["kv"][0];
    assert_eq!(one["kv"].as_array().map(Vec::len), Some(1), "{one}");
    assert_eq!(
        (kv["cat"].as_str(), kv["k"].as_str(), kv["version"].as_i64()),
        (Some("topics"), Some("test_topic2"), Some(1))
    );
    let subscribers: Value =
        serde_json::from_str(kv["v"].as_str().unwrap_or_default()).unwrap_or_default();
    assert_eq!(
        subscribers,
        json!([{"url": "http://dtm/test1", "remark": "for test"}])
    );
    for key in ["id", "create_time", "update_time"] {
        assert!(kv.get(key).is_some(), "kv {key}: {kv}");
    }
    let (status, none) = ts
        .get_with(
            "queryKV",
            &[("cat", "topics"), ("key", "non_existent_topic")],
        )
        .await;
    assert_eq!(status, 200, "{none}");
    assert_eq!(none, json!({"kv": []}));

    assert_bad_request(
        ts.get_with("scanKV", &[("cat", "topics"), ("limit", "x")])
            .await,
        "limit",
        "scanKV limit",
    );
    assert_bad_request(
        ts.get_with("scanKV", &[("cat", "topics"), ("limit", "0")])
            .await,
        "limit",
        "scanKV limit 0",
    );
    assert_bad_request(
        ts.get_with("scanKV", &[("cat", "topics"), ("position", "x")])
            .await,
        "position",
        "position",
    );
    assert_bad_request(ts.get("queryKV?key=x").await, "cat", "queryKV without cat");
    ts.stop().await;
}

/// `/api/metrics`: Prometheus text with DTM's names; API requests are labelled by route (TestDtmMetrics).
async fn api_metrics(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;
    let g = gid("api-metrics");
    ts.submit_ok(&msg_body(&g, &busi)).await;
    ts.wait_pass(&g).await;
    let (status, _) = ts.get("query?gid=").await;
    assert_eq!(status, 400);
    ts.subscribe_ok("metrics_topic", "http://dtm/test1").await;
    let (status, _) = ts
        .request(Method::DELETE, "/api/dtmsvr/topic/metrics_topic", None)
        .await;
    assert_eq!(status, 200);

    let url = format!("http://{}/api/metrics", ts.server.http_addr);
    let Ok(resp) = ts.http.get(url).send().await else {
        panic!("GET /api/metrics failed");
    };
    assert_eq!(resp.status().as_u16(), 200);
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok());
    assert!(
        content_type.unwrap_or_default().starts_with("text/plain"),
        "{content_type:?}"
    );
    let text = resp.text().await.unwrap_or_default();
    let line = |name: &str, labels: &[&str]| {
        text.lines()
            .any(|l| l.starts_with(&format!("{name}{{")) && labels.iter().all(|lb| l.contains(lb)))
    };
    assert!(
        line(
            "dtm_server_process_total",
            &[r#"api="submit""#, r#"status="ok""#, r#"type="http""#]
        ),
        "{text}"
    );
    assert!(
        line(
            "dtm_server_process_total",
            &[r#"api="query""#, r#"status="fail""#]
        ),
        "a 400 counts as fail: {text}"
    );
    assert!(
        line(
            "dtm_server_process_total",
            &[r#"api="topic""#, r#"status="ok""#]
        ),
        "route label, not the topic: {text}"
    );
    assert!(
        line("dtm_server_response_duration_count", &[r#"api="submit""#]),
        "{text}"
    );
    assert!(
        line(
            "dtm_transaction_process_total",
            &[r#"model="msg""#, r#"status="ok""#]
        ),
        "{text}"
    );
    assert!(
        line(
            "dtm_branch_process_total",
            &[r#"branchtype="action""#, r#"model="msg""#]
        ),
        "{text}"
    );
    assert!(text.contains("dtm_server_info"), "{text}");
    assert!(!text.contains(&g), "no gid in any label");
    ts.stop().await;
}

/// `resetCronTime` pulls forward transactions scheduled beyond `now + timeout`, `limit` at a time;
/// `has_remaining` is `succeed_count == limit` (TestAPIResetCronTime).
async fn api_reset_cron_time(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;
    let far = [
        prepare_far(&ts, &busi, "api-reset-a").await,
        prepare_far(&ts, &busi, "api-reset-b").await,
    ];
    let saga = gid("api-reset-saga");
    busi.push("TransOut", &["ONGOING"]);
    ts.submit_ok(&support::saga_body(&saga, &busi.url(), "", ""))
        .await;
    ts.wait_pass(&saga).await;
    assert!(ts.cron_once().await.is_empty(), "nothing is due yet");

    let (status, reply) = ts.get_with("resetCronTime", &[("timeout", "2000")]).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        reply,
        json!({"has_remaining": false, "succeed_count": 0}),
        "nothing beyond +2000 s"
    );
    let (_, reply) = ts.get_with("resetCronTime", &[("limit", "1")]).await;
    assert_eq!(reply, json!({"has_remaining": true, "succeed_count": 1}));
    let (_, reply) = ts.get_with("resetCronTime", &[("limit", "1")]).await;
    assert_eq!(
        reply,
        json!({"has_remaining": true, "succeed_count": 1}),
        "a full page always reports more"
    );
    let (_, reply) = ts.get("resetCronTime").await;
    assert_eq!(
        reply,
        json!({"has_remaining": false, "succeed_count": 0}),
        "the saga is due at +10 s, not beyond 105 s"
    );

    let mut picked = ts.cron_once().await;
    picked.sort();
    let mut want = far.to_vec();
    want.sort();
    assert_eq!(
        picked, want,
        "the reset transactions are due now; the saga is not"
    );
    for g in &far {
        assert_eq!(
            ts.status(g).await,
            "prepared",
            "picked early, but not back-checked before its timeout"
        );
    }
    assert!(busi.routes_of(&far[0]).is_empty() && busi.routes_of(&far[1]).is_empty());

    assert_bad_request(
        ts.get_with("resetCronTime", &[("timeout", "soon")]).await,
        "timeout",
        "timeout",
    );
    assert_bad_request(
        ts.get_with("resetCronTime", &[("limit", "0")]).await,
        "limit",
        "limit 0",
    );
    assert_bad_request(
        ts.get_with("resetCronTime", &[("limit", "many")]).await,
        "limit",
        "limit",
    );
    ts.stop().await;
}

/// `forceStop`: an unfinished transaction becomes `failed` without any branch call; a finished one is 409
/// (TestAPIForceStoppedNormal/Abnormal). Unknown gid: 404; no gid: 400.
async fn api_force_stop(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;
    let saga = gid("api-stop-saga");
    busi.push("TransOut", &["ONGOING"]);
    ts.submit_ok(&support::saga_body(&saga, &busi.url(), "", ""))
        .await;
    ts.wait_pass(&saga).await;
    assert_eq!(ts.status(&saga).await, "submitted");
    let (status, reply) = ts.post("forceStop", &json!({"gid": saga})).await;
    assert_eq!((status, &reply), (200, &json!({"dtm_result": "SUCCESS"})));
    assert_eq!(ts.status(&saga).await, "failed");
    assert_eq!(
        ts.branch_statuses(&saga).await,
        ["prepared", "prepared", "prepared", "prepared"]
    );
    assert!(ts.query(&saga).await["transaction"]["rollback_time"].is_string());

    let msg = prepare_far(&ts, &busi, "api-stop-msg").await;
    let (status, reply) = ts.post("forceStop", &json!({"gid": msg})).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(ts.status(&msg).await, "failed");
    ts.forward(2000);
    assert!(
        ts.cron_once().await.is_empty(),
        "force-stopped transactions are never scanned again"
    );
    assert_eq!(
        busi.routes_of(&saga),
        ["TransOut"],
        "only the call before the stop"
    );
    assert!(busi.routes_of(&msg).is_empty());

    let (status, reply) = ts.post("forceStop", &json!({"gid": saga})).await;
    assert_eq!(status, 409, "{reply}");
    assert_eq!(reply["dtm_result"], "FAILURE");
    let done = gid("api-stop-done");
    ts.submit_ok(&msg_body(&done, &busi)).await;
    ts.wait_pass(&done).await;
    let (status, reply) = ts.post("forceStop", &json!({"gid": done})).await;
    assert_eq!(status, 409, "{reply}");
    assert!(message(&reply).contains("succeed"), "{reply}");
    assert_eq!(ts.status(&done).await, "succeed");

    let (status, reply) = ts.post("forceStop", &json!({"gid": "no-such-gid"})).await;
    assert_eq!(status, 404, "{reply}");
    assert_bad_request(
        ts.post("forceStop", &json!({})).await,
        "gid",
        "forceStop without gid",
    );
    assert_bad_request(
        ts.post("forceStop", &json!({"gid": 7})).await,
        "gid",
        "forceStop with a number",
    );
    ts.stop().await;
}

/// `resetNextCronTime` makes one transaction due now (TestAPIResetNextCronTime).
async fn api_reset_next_cron_time(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;
    let g = prepare_far(&ts, &busi, "api-next-cron").await;
    let before = ts.query(&g).await["transaction"]["next_cron_time"].clone();
    assert!(ts.cron_once().await.is_empty());
    let (status, reply) = ts.post("resetNextCronTime", &json!({"gid": g})).await;
    assert_eq!((status, &reply), (200, &json!({"dtm_result": "SUCCESS"})));
    let after = ts.query(&g).await["transaction"]["next_cron_time"].clone();
    assert_ne!(before, after, "next_cron_time moved");
    assert_eq!(ts.cron_once().await, [g]);

    let done = gid("api-next-cron-done");
    ts.submit_ok(&msg_body(&done, &busi)).await;
    ts.wait_pass(&done).await;
    let (status, reply) = ts.post("resetNextCronTime", &json!({"gid": done})).await;
    assert_eq!(status, 200, "accepted whatever the status: {reply}");
    assert!(
        ts.cron_once().await.is_empty(),
        "a finished transaction stays unscheduled"
    );
    assert_eq!(ts.status(&done).await, "succeed");

    let (status, reply) = ts
        .post("resetNextCronTime", &json!({"gid": "no-such-gid"}))
        .await;
    assert_eq!(status, 404, "{reply}");
    assert_bad_request(
        ts.post_raw("resetNextCronTime", "{").await,
        "JSON",
        "bad JSON",
    );
    ts.stop().await;
}

/// Subscribe, unsubscribe and delete a topic, including every error case (TestTopicNormal).
async fn topic_subscribe_unsubscribe_delete(backend: Backend) {
    let ts = TestServer::start(backend).await;
    let topic = "test_topic_TestTopicNormal";
    let sub = |topic: &'static str, url: &'static str| {
        ts.get_with(
            "subscribe",
            &[("topic", topic), ("url", url), ("remark", "r")],
        )
    };
    let unsub = |topic: &'static str, url: &'static str| {
        ts.get_with("unsubscribe", &[("topic", topic), ("url", url)])
    };

    let (status, reply) = sub(topic, "http://dtm/test1").await;
    assert_eq!((status, &reply), (200, &json!({"dtm_result": "SUCCESS"})));
    let (status, reply) = sub(topic, "http://dtm/test1").await;
    assert_eq!(status, 409, "repeated subscription: {reply}");
    assert!(message(&reply).contains("this url exists"), "{reply}");
    assert_bad_request(sub("", "http://dtm/test1").await, "topic", "empty topic");
    assert_bad_request(sub(topic, "").await, "url", "empty url");
    assert_bad_request(
        ts.get_with("subscribe", &[("url", "http://dtm/test1")])
            .await,
        "topic",
        "no topic",
    );
    let (status, reply) = sub(topic, "http://dtm/test2").await;
    assert_eq!(status, 200, "{reply}");
    let (_, kv) = ts
        .get_with("queryKV", &[("cat", "topics"), ("key", topic)])
        .await;
    assert_eq!(kv["kv"][0]["version"], 2, "{kv}");
    let v: Value =
        serde_json::from_str(kv["kv"][0]["v"].as_str().unwrap_or_default()).unwrap_or_default();
    assert_eq!(
        v,
        json!([{"url": "http://dtm/test1", "remark": "r"}, {"url": "http://dtm/test2", "remark": "r"}])
    );

    let (status, reply) = unsub(topic, "http://dtm/test1").await;
    assert_eq!((status, &reply), (200, &json!({"dtm_result": "SUCCESS"})));
    let (status, reply) = unsub(topic, "http://dtm/test1").await;
    assert_eq!(status, 404, "repeated unsubscription: {reply}");
    assert_bad_request(unsub("", "http://dtm/test1").await, "topic", "empty topic");
    assert_bad_request(unsub(topic, "").await, "url", "empty url");
    let (status, reply) = unsub("non_existent_topic", "http://dtm/test1").await;
    assert_eq!(status, 404, "unknown topic: {reply}");
    assert!(message(&reply).contains("non_existent_topic"), "{reply}");
    let (status, reply) = unsub(topic, "http://dtm/test2").await;
    assert_eq!(status, 200, "{reply}");
    let (status, reply) = unsub(topic, "http://dtm/test2").await;
    assert_eq!(status, 404, "empty topic: {reply}");

    let (status, reply) = ts
        .request(
            Method::DELETE,
            "/api/dtmsvr/topic/non_existent_testDeleteTopic",
            None,
        )
        .await;
    assert_eq!(status, 404, "{reply}");
    let (status, reply) = ts
        .request(Method::DELETE, &format!("/api/dtmsvr/topic/{topic}"), None)
        .await;
    assert_eq!((status, &reply), (200, &json!({"dtm_result": "SUCCESS"})));
    let (_, kv) = ts
        .get_with("queryKV", &[("cat", "topics"), ("key", topic)])
        .await;
    assert_eq!(kv, json!({"kv": []}));
    let (status, _) = ts
        .request(Method::DELETE, &format!("/api/dtmsvr/topic/{topic}"), None)
        .await;
    assert_eq!(status, 404, "deleted twice");
    ts.stop().await;
}

/// 20 subscribes of one topic at once all succeed and each bumps the version once; so do 20 unsubscribes
/// (TestConcurrentUpdateTopic, where braid expects every call to succeed).
async fn topic_concurrent_subscribes(backend: Backend) {
    let ts = TestServer::start(backend).await;
    let topic = "concurrent_topic";
    let urls: Vec<String> = (0..20).map(|i| format!("http://dtm/test{i}")).collect();
    let replies = futures::future::join_all(
        urls.iter()
            .map(|u| ts.get_with("subscribe", &[("topic", topic), ("url", u)])),
    )
    .await;
    for (i, (status, reply)) in replies.iter().enumerate() {
        assert_eq!(*status, 200, "subscribe {i}: {reply}");
    }
    let (_, kv) = ts
        .get_with("queryKV", &[("cat", "topics"), ("key", topic)])
        .await;
    assert_eq!(
        kv["kv"][0]["version"], 20,
        "one version per subscribe: {kv}"
    );
    let v: Vec<Value> =
        serde_json::from_str(kv["kv"][0]["v"].as_str().unwrap_or_default()).unwrap_or_default();
    let mut stored: Vec<&str> = v.iter().filter_map(|s| s["url"].as_str()).collect();
    stored.sort_unstable();
    let mut want: Vec<&str> = urls.iter().map(String::as_str).collect();
    want.sort_unstable();
    assert_eq!(stored, want, "no subscriber lost");

    let replies = futures::future::join_all(
        urls.iter()
            .map(|u| ts.get_with("unsubscribe", &[("topic", topic), ("url", u)])),
    )
    .await;
    for (i, (status, reply)) in replies.iter().enumerate() {
        assert_eq!(*status, 200, "unsubscribe {i}: {reply}");
    }
    let (_, kv) = ts
        .get_with("queryKV", &[("cat", "topics"), ("key", topic)])
        .await;
    assert_eq!(kv["kv"][0]["version"], 40, "{kv}");
    assert_eq!(kv["kv"][0]["v"], "[]");
    ts.stop().await;
}

/// Malformed bodies get 400 with a message naming the field, and nothing is stored.
async fn api_malformed_input_is_400(backend: Backend) {
    let ts = TestServer::start(backend).await;
    let cases: &[(&str, &str, &str)] = &[
        ("submit", "{not json", "JSON"),
        ("submit", "", "empty"),
        ("submit", r#"{"trans_type":"saga"}"#, "gid"),
        ("submit", r#"{"gid":1,"trans_type":"saga"}"#, "gid"),
        ("submit", r#"{"gid":"g1"}"#, "trans_type"),
        (
            "submit",
            r#"{"gid":"g1","trans_type":"bogus"}"#,
            "trans_type",
        ),
        (
            "submit",
            r#"{"gid":"g1","trans_type":"saga","steps":"x"}"#,
            "steps",
        ),
        (
            "submit",
            r#"{"gid":"g1","trans_type":"saga","steps":[{"action":1}]}"#,
            "steps[0].action",
        ),
        (
            "submit",
            r#"{"gid":"g1","trans_type":"msg","payloads":[1]}"#,
            "payloads[0]",
        ),
        (
            "submit",
            r#"{"gid":"g1","trans_type":"msg","timeout_to_fail":"x"}"#,
            "timeout_to_fail",
        ),
        (
            "submit",
            r#"{"gid":"g1","trans_type":"msg","retry_interval":-1}"#,
            "retry_interval",
        ),
        (
            "submit",
            r#"{"gid":"g1","trans_type":"msg","wait_result":"yes"}"#,
            "wait_result",
        ),
        (
            "submit",
            r#"{"gid":"g1","trans_type":"msg","concurrent":1}"#,
            "concurrent",
        ),
        (
            "submit",
            r#"{"gid":"g1","trans_type":"msg","branch_headers":{"a":1}}"#,
            "branch_headers.a",
        ),
        (
            "submit",
            r#"{"gid":"g1","trans_type":"msg","protocol":"smtp"}"#,
            "protocol",
        ),
        (
            "submit",
            r#"{"gid":"g1","trans_type":"saga","custom_data":"{\"orders\":{\"5\":[0]}}"}"#,
            "orders",
        ),
        ("prepare", "[1,2", "JSON"),
        (
            "prepare",
            r#"{"gid":"g1","trans_type":"msg","query_prepared":3}"#,
            "query_prepared",
        ),
        ("abort", "{", "JSON"),
        ("abort", r#"{"gid":"g1"}"#, "trans_type"),
        ("abort", r#"{"trans_type":"tcc"}"#, "gid"),
        (
            "registerBranch",
            r#"{"gid":"g1","trans_type":"tcc","branch_id":"01","data":{"a":1}}"#,
            "data",
        ),
        (
            "registerBranch",
            r#"{"gid":"g1","trans_type":"tcc"}"#,
            "branch_id",
        ),
        ("registerBranch", "not json", "JSON"),
        ("forceStop", "{]", "JSON"),
        (
            "prepareWorkflow",
            r#"{"gid":["g1"],"trans_type":"workflow"}"#,
            "gid",
        ),
    ];
    for (route, body, field) in cases {
        assert_bad_request(
            ts.post_raw(route, body).await,
            field,
            &format!("{route} {body}"),
        );
    }
    let (_, all) = ts.get("all").await;
    assert_eq!(all["transactions"], json!([]), "nothing stored: {all}");

    for (route, body) in [
        ("abort", json!({"gid": "no-such-gid", "trans_type": "tcc"})),
        ("resetNextCronTime", json!({"gid": "no-such-gid"})),
    ] {
        let (status, reply) = ts.post(route, &body).await;
        assert_eq!(status, 404, "{route} of an unknown gid: {reply}");
    }
    let (status, reply) = ts.request(Method::GET, "/api/dtmsvr/submit", None).await;
    assert_eq!(status, 405, "wrong method: {reply}");
    ts.stop().await;
}

/// A body over the limit (4 MiB) is refused with 413 and a JSON message, and nothing is stored.
async fn api_body_over_limit_is_413(backend: Backend) {
    let ts = TestServer::start(backend).await;
    let big = "x".repeat(braid::api::MAX_BODY_BYTES + 1);
    let body = json!({"gid": "too-big", "trans_type": "saga", "steps": [{"action": ""}], "payloads": [big]}).to_string();
    let (status, reply) = ts.post_raw("submit", &body).await;
    assert_eq!(status, 413, "{reply}");
    assert!(message(&reply).contains("limit"), "a JSON message: {reply}");
    assert_eq!(ts.query("too-big").await["transaction"], Value::Null);

    let fits = json!({"gid": "fits", "trans_type": "saga", "steps": [{"action": ""}], "payloads": ["x".repeat(1024 * 1024)]});
    let (status, reply) = ts.post("submit", &fits).await;
    assert_eq!(status, 200, "1 MiB is fine: {reply}");
    ts.stop().await;
}

on_every_store!(
    api_version_new_gid_ping,
    api_query,
    api_all,
    api_scan_kv_and_query_kv,
    api_metrics,
    api_reset_cron_time,
    api_force_stop,
    api_reset_next_cron_time,
    topic_subscribe_unsubscribe_delete,
    topic_concurrent_subscribes,
    api_malformed_input_is_400,
    api_body_over_limit_is_413,
);
