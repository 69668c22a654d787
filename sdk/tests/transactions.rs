//! The SDK against a running braid (in-process, SQLite store): saga, TCC, XA, workflow and msg, happy and
//! rollback paths, over HTTP and gRPC, with barrier-protected branches on MariaDB and balances asserted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use braid_client::workflow::Workflows;
use braid_client::{BranchBarrier, DtmClient, Error, Tcc};
use common::{Bank, Braid, Store, bank, gid, mysql_pool};

async fn mysql_bank() -> Bank {
    Bank::start(Store::Mysql(mysql_pool().await)).await
}

async fn saga(
    client: &DtmClient,
    bank: &Bank,
    g: &str,
    out: &str,
    inn: &str,
) -> braid_client::Result<()> {
    let req = bank::req(30, out, inn);
    client
        .saga(g)
        .add_json(bank.at("TransOut"), bank.at("TransOutCompensate"), &req)
        .add_json(bank.at("TransIn"), bank.at("TransInCompensate"), &req)
        .wait_result(true)
        .submit()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saga_commits_over_http_and_grpc() {
    let bank = mysql_bank().await;
    let braid = Braid::start().await;
    for (client, name) in [(braid.client(), "http"), (braid.grpc_client(), "grpc")] {
        let g = gid(&format!("saga-ok-{name}"));
        saga(&client, &bank, &g, "", "").await.unwrap();
        assert_eq!(braid.status(&g).await, "succeed", "{name}");
        assert_eq!(
            braid.branch_statuses(&g).await,
            ["prepared", "succeed", "prepared", "succeed"],
            "{name}"
        );
        assert_eq!(bank.routes_of(&g), ["TransOut", "TransIn"], "{name}");
    }
    assert_eq!(bank.balances().await, Bank::moved(60));
    braid.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saga_rollback_compensates_and_reports_the_reason() {
    let bank = mysql_bank().await;
    let braid = Braid::start().await;
    let g = gid("saga-rollback");
    let err = saga(&braid.client(), &bank, &g, "", "FAILURE")
        .await
        .unwrap_err();
    assert!(err.is_failure(), "{err}");
    assert!(err.to_string().contains("forced by the test"), "{err}");
    assert_eq!(braid.status(&g).await, "failed");
    assert_eq!(
        braid.branch_statuses(&g).await,
        ["succeed", "succeed", "succeed", "failed"]
    );
    // TransIn failed inside its barrier transaction, so its compensation was a null compensation.
    assert_eq!(
        bank.routes_of(&g),
        [
            "TransOut",
            "TransIn",
            "TransInCompensate",
            "TransOutCompensate"
        ]
    );
    assert_eq!(bank.balances().await, Bank::start_balances());
    braid.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_saga_with_orders_and_every_option() {
    let bank = mysql_bank().await;
    let braid = Braid::start().await;
    let g = gid("saga-options");
    let req = bank::req(30, "", "");
    braid
        .client()
        .saga(&g)
        .add_json(bank.at("TransOut"), bank.at("TransOutCompensate"), &req)
        .add_json(bank.at("TransIn"), bank.at("TransInCompensate"), &req)
        .concurrent(true)
        .add_branch_order(1, &[0])
        .custom_data(r#"{"note":"kept"}"#)
        .retry_interval(15)
        .timeout_to_fail(1800)
        .request_timeout(6)
        .retry_limit(3)
        .branch_header("test_header", "yes")
        .wait_result(true)
        .submit()
        .await
        .unwrap();
    assert_eq!(braid.status(&g).await, "succeed");
    assert_eq!(
        bank.routes_of(&g),
        ["TransOut", "TransIn"],
        "order 1 after 0"
    );
    let txn = braid.query(&g).await["transaction"].clone();
    let custom: serde_json::Value =
        serde_json::from_str(txn["custom_data"].as_str().unwrap()).unwrap();
    assert_eq!(
        custom,
        serde_json::json!({"note": "kept", "concurrent": true, "orders": {"1": [0]}})
    );
    let options = txn["options"].as_str().unwrap_or_default().to_owned();
    for needle in [
        "\"retry_interval\":15",
        "\"timeout_to_fail\":1800",
        "\"request_timeout\":6",
        "\"retry_limit\":3",
        "test_header",
    ] {
        assert!(options.contains(needle), "{needle} in {options}");
    }
    assert_eq!(bank.balances().await, Bank::moved(30));
    braid.stop().await;
}

async fn tcc_transfer(
    client: &DtmClient,
    bank: &Bank,
    g: &str,
    inn: &str,
) -> braid_client::Result<()> {
    let req = bank::req(30, "", inn);
    client
        .tcc(g)
        .wait_result(true)
        .run(|tcc| async move {
            tcc.call_branch_json(
                &req,
                &bank.at("TransOutTry"),
                &bank.at("TransOutConfirm"),
                &bank.at("TransOutCancel"),
            )
            .await?;
            tcc.call_branch_json(
                &req,
                &bank.at("TransInTry"),
                &bank.at("TransInConfirm"),
                &bank.at("TransInCancel"),
            )
            .await?;
            Ok(())
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcc_confirms_over_http_and_grpc() {
    let bank = mysql_bank().await;
    let braid = Braid::start().await;
    for (client, name) in [(braid.client(), "http"), (braid.grpc_client(), "grpc")] {
        let g = gid(&format!("tcc-ok-{name}"));
        tcc_transfer(&client, &bank, &g, "").await.unwrap();
        assert_eq!(braid.status(&g).await, "succeed", "{name}");
        assert_eq!(
            braid.branch_statuses(&g).await,
            ["prepared", "succeed", "prepared", "succeed"],
            "{name}"
        );
        assert_eq!(
            bank.routes_of(&g),
            [
                "TransOutTry",
                "TransInTry",
                "TransInConfirm",
                "TransOutConfirm"
            ],
            "{name}: confirms in reverse order"
        );
    }
    assert_eq!(bank.balances().await, Bank::moved(60));
    braid.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcc_try_failure_cancels_every_branch() {
    let bank = mysql_bank().await;
    let braid = Braid::start().await;
    let g = gid("tcc-rollback");
    let err = tcc_transfer(&braid.client(), &bank, &g, "FAILURE")
        .await
        .unwrap_err();
    assert!(err.is_failure(), "{err}");
    assert_eq!(braid.status(&g).await, "failed");
    assert_eq!(
        braid.branch_statuses(&g).await,
        ["succeed", "prepared", "succeed", "prepared"]
    );
    assert_eq!(
        bank.routes_of(&g),
        [
            "TransOutTry",
            "TransInTry",
            "TransInCancel",
            "TransOutCancel"
        ]
    );
    assert_eq!(bank.balances().await, Bank::start_balances());
    braid.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_tcc_branch_ids_extend_the_parent() {
    let braid = Braid::start().await;
    let client = braid.client();
    let g = gid("tcc-nested");
    let query = [
        ("dtm", braid.dtm()),
        ("gid", g.clone()),
        ("branch_id", "02".to_owned()),
    ];
    let nested = Tcc::from_query(query.iter().map(|(k, v)| (*k, v.as_str()))).unwrap();
    assert_eq!(nested.gid(), g);
    assert_eq!(nested.new_branch_id().unwrap(), "0201");
    assert_eq!(nested.new_branch_id().unwrap(), "0202");
    // Registering a sub-branch needs the global transaction: prepared by the root.
    client
        .tcc(&g)
        .wait_result(true)
        .run(|tcc| async move {
            assert_eq!(tcc.new_branch_id()?, "01");
            let sub = Tcc::with_parent(&client, tcc.gid(), "01");
            sub.register_branch(&sub.new_branch_id()?, b"{}", "", "")
                .await?;
            Ok(())
        })
        .await
        .unwrap();
    let q = braid.query(&g).await;
    let ids: Vec<&str> = q["branches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["branch_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["0101", "0101"],
        "[cancel, confirm] of sub-branch 0101"
    );
    assert_eq!(braid.status(&g).await, "succeed");
    braid.stop().await;
}

async fn xa_transfer(
    client: &DtmClient,
    bank: &Bank,
    g: &str,
    inn: &str,
) -> braid_client::Result<()> {
    let req = bank::req(30, "", inn);
    client
        .xa(g)
        .wait_result(true)
        .run(|xa| async move {
            xa.call_branch_json(&req, &bank.at("TransOutXa")).await?;
            xa.call_branch_json(&req, &bank.at("TransInXa")).await?;
            Ok(())
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xa_commits_both_local_transactions() {
    let bank = mysql_bank().await;
    let braid = Braid::start().await;
    let g = gid("xa-ok");
    xa_transfer(&braid.client(), &bank, &g, "").await.unwrap();
    assert_eq!(braid.status(&g).await, "succeed");
    assert_eq!(
        braid.branch_statuses(&g).await,
        ["prepared", "succeed", "prepared", "succeed"]
    );
    assert_eq!(
        bank.routes_of(&g),
        ["TransOutXa", "TransInXa", "TransOutXa", "TransInXa"],
        "two actions, then two commits in order"
    );
    assert_eq!(bank.balances().await, Bank::moved(30));
    braid.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xa_failure_rolls_back_the_prepared_branch() {
    let bank = mysql_bank().await;
    let braid = Braid::start().await;
    let g = gid("xa-rollback");
    let err = xa_transfer(&braid.client(), &bank, &g, "FAILURE")
        .await
        .unwrap_err();
    assert!(err.is_failure(), "{err}");
    assert_eq!(braid.status(&g).await, "failed");
    // Only TransOut registered (TransIn failed before registering): [rollback, commit].
    assert_eq!(braid.branch_statuses(&g).await, ["succeed", "prepared"]);
    assert_eq!(
        bank.routes_of(&g),
        ["TransOutXa", "TransInXa", "TransOutXa"],
        "TransOut rolled back"
    );
    assert_eq!(bank.balances().await, Bank::start_balances());
    // The rollback left its barrier row: a late duplicate action is refused.
    let resp = reqwest::Client::new()
        .post(bank.at("TransOutXa"))
        .query(&[
            ("dtm", braid.dtm().as_str()),
            ("gid", g.as_str()),
            ("branch_id", "01"),
            ("trans_type", "xa"),
            ("op", "action"),
            ("phase2_url", bank.at("TransOutXa").as_str()),
        ])
        .body(serde_json::to_vec(&bank::req(30, "", "")).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 409);
    assert_eq!(bank.balances().await, Bank::start_balances());
    braid.stop().await;
}

/// Calls a bank route from a workflow step, passing the step's barrier on in the query string.
async fn post(url: String, bb: BranchBarrier, body: Vec<u8>) -> braid_client::Result<Vec<u8>> {
    let resp = reqwest::Client::new()
        .post(&url)
        .query(&bb.query_pairs())
        .body(body)
        .send()
        .await
        .map_err(|e| Error::other(e.to_string()))?;
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    match braid_client::outcome_of_http(status, &text) {
        braid_client::Outcome::Success => Ok(text.into_bytes()),
        braid_client::Outcome::Failure => Err(Error::failure(text)),
        _ => Err(Error::other(text)),
    }
}

/// A transfer workflow: TransOut then TransIn, each with its compensation as rollback; it stops with a
/// non-FAILURE error after TransOut while `fail_after_out` is positive.
fn register_transfer(workflows: &Workflows, bank: &Bank, fail_after_out: Arc<AtomicU32>) {
    let bank = bank.clone();
    workflows.register("transfer", move |wf, data| {
        let (bank, fail_after_out) = (bank.clone(), fail_after_out.clone());
        async move {
            let (out, out_comp) = (bank.at("TransOut"), bank.at("TransOutCompensate"));
            let (inn, in_comp) = (bank.at("TransIn"), bank.at("TransInCompensate"));
            let body = data.clone();
            wf.new_branch()?
                .on_rollback({
                    let body = body.clone();
                    move |bb| async move { post(out_comp, bb, body).await.map(drop) }
                })
                .run(|bb| post(out, bb, body.clone()))
                .await?;
            if fail_after_out.load(Ordering::SeqCst) > 0 {
                fail_after_out.fetch_sub(1, Ordering::SeqCst);
                return Err(Error::other("crash between the steps"));
            }
            wf.new_branch()?
                .on_rollback({
                    let body = body.clone();
                    move |bb| async move { post(in_comp, bb, body).await.map(drop) }
                })
                .run(|bb| post(inn, bb, body.clone()))
                .await?;
            Ok(b"done".to_vec())
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflow_commits_and_resumes_without_repeating_steps() {
    let bank = mysql_bank().await;
    let braid = Braid::start().await;
    let workflows = Workflows::new(&braid.client(), bank.at("WorkflowResume"));
    let crashes = Arc::new(AtomicU32::new(1));
    register_transfer(&workflows, &bank, crashes);
    let g = gid("wf-ok");
    let input = serde_json::to_vec(&bank::req(30, "", "")).unwrap();
    // First run stops after TransOut with an error that is not FAILURE: nothing is submitted.
    let err = workflows
        .execute("transfer", &g, input.clone())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("crash"), "{err}");
    assert_eq!(braid.status(&g).await, "prepared");
    // The resume (what the server's callback triggers) replays TransOut and finishes.
    let query = braid_client::BranchQuery {
        gid: g.clone(),
        op: "transfer".to_owned(),
        ..Default::default()
    };
    let result = workflows.execute_by_query(&query, input).await.unwrap();
    assert_eq!(result, b"done");
    assert_eq!(braid.status(&g).await, "succeed");
    assert_eq!(
        bank.routes_of(&g),
        ["TransOut", "TransIn"],
        "TransOut ran once"
    );
    assert_eq!(bank.balances().await, Bank::moved(30));
    // A finished workflow returns its stored result.
    let again = workflows
        .execute("transfer", &g, b"ignored".to_vec())
        .await
        .unwrap();
    assert_eq!(again, b"done");
    braid.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflow_failure_runs_the_rollbacks_in_reverse() {
    let bank = mysql_bank().await;
    let braid = Braid::start().await;
    let workflows = Workflows::new(&braid.client(), bank.at("WorkflowResume"));
    register_transfer(&workflows, &bank, Arc::new(AtomicU32::new(0)));
    let g = gid("wf-rollback");
    let input = serde_json::to_vec(&bank::req(30, "", "FAILURE")).unwrap();
    let err = workflows.execute("transfer", &g, input).await.unwrap_err();
    assert!(err.is_failure(), "{err}");
    assert_eq!(braid.status(&g).await, "failed");
    // TransIn failed (its own rollback is skipped: it rolled back locally); TransOut is compensated.
    assert_eq!(
        bank.routes_of(&g),
        ["TransOut", "TransIn", "TransOutCompensate"]
    );
    assert_eq!(bank.balances().await, Bank::start_balances());
    let stored = workflows
        .execute("transfer", &g, Vec::new())
        .await
        .unwrap_err();
    assert!(
        stored.is_failure(),
        "a failed workflow stays failed: {stored}"
    );
    braid.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_gid_comes_from_the_server_over_both_transports() {
    let braid = Braid::start().await;
    let a = braid.client().new_gid().await.unwrap();
    let b = braid.grpc_client().new_gid().await.unwrap();
    assert!(!a.is_empty() && !b.is_empty() && a != b);
    assert_eq!(braid_client::new_gid().len(), 22);
    braid.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msg_with_topic_and_grpc_prepare_submit() {
    let bank = mysql_bank().await;
    let braid = Braid::start().await;
    let topic = gid("topic");
    let resp = reqwest::Client::new()
        .get(format!("{}/subscribe", braid.dtm()))
        .query(&[
            ("topic", topic.as_str()),
            ("url", bank.at("TransIn").as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let g = gid("msg-topic");
    let client = braid.grpc_client();
    let msg = client
        .msg(&g)
        .add_topic(&topic, serde_json::to_vec(&bank::req(30, "", "")).unwrap())
        .wait_result(true);
    msg.prepare(&bank.at("QueryPrepared")).await.unwrap();
    assert_eq!(braid.status(&g).await, "prepared");
    msg.submit().await.unwrap();
    assert_eq!(braid.status(&g).await, "succeed");
    assert_eq!(bank.routes_of(&g), ["TransIn"]);
    assert_eq!(bank.balances().await.1, (10_030, 0));
    // Prepare then abort: nothing is delivered.
    let g2 = gid("msg-abort");
    let m2 = braid.client().msg(&g2).add(bank.at("TransIn"), "{}");
    m2.prepare(&bank.at("QueryPrepared")).await.unwrap();
    m2.abort().await.unwrap();
    assert_eq!(braid.status(&g2).await, "failed");
    assert!(bank.routes_of(&g2).is_empty());
    braid.stop().await;
}
