//! The sub-transaction barrier (spec §12) on MariaDB, PostgreSQL and Redis: duplicate calls, null
//! compensation, hanging, a failed action's compensation, and DTM's out-of-order TCC test
//! (`tcc_barrier_test`, spec §14.3) against a running braid.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use braid_client::BranchBarrier;
use common::{Bank, Braid, Kind, bank, gid, store};

fn barrier(g: &str, op: &str) -> BranchBarrier {
    BranchBarrier::new("saga", g, "01", op).unwrap()
}

async fn duplicate_action_and_compensation_run_once(kind: Kind) {
    let bank = Bank::start(store(kind).await).await;
    let g = gid("dup");
    // Each delivery builds a fresh barrier from the request, as a handler does.
    bank.adjust(&barrier(&g, "action"), true, -30)
        .await
        .unwrap();
    bank.adjust(&barrier(&g, "action"), true, -30)
        .await
        .unwrap();
    assert_eq!(
        bank.balances().await,
        ((9970, 0), (10_000, 0)),
        "the repeat did nothing"
    );
    bank.adjust(&barrier(&g, "compensate"), true, 30)
        .await
        .unwrap();
    bank.adjust(&barrier(&g, "compensate"), true, 30)
        .await
        .unwrap();
    assert_eq!(
        bank.balances().await,
        Bank::start_balances(),
        "refunded exactly once"
    );
}

async fn null_compensation_then_hanging_action_do_nothing(kind: Kind) {
    let bank = Bank::start(store(kind).await).await;
    let g = gid("null-comp");
    // The compensation arrives first (the action's request was lost or is late): nothing to refund.
    bank.adjust(&barrier(&g, "compensate"), true, 30)
        .await
        .unwrap();
    assert_eq!(
        bank.balances().await,
        Bank::start_balances(),
        "null compensation"
    );
    // The late action must not run any more (hanging), and still answers success.
    bank.adjust(&barrier(&g, "action"), true, -30)
        .await
        .unwrap();
    assert_eq!(
        bank.balances().await,
        Bank::start_balances(),
        "hanging action suppressed"
    );
}

async fn failed_action_rolls_back_its_barrier_and_its_compensation_is_null(kind: Kind) {
    let bank = Bank::start(store(kind).await).await;
    let g = gid("failed-action");
    let err = bank
        .adjust(&barrier(&g, "action"), true, -20_000)
        .await
        .unwrap_err();
    assert!(err.is_failure(), "{err}");
    // The saga compensates a failed action too; its barrier row was rolled back, so this is null.
    bank.adjust(&barrier(&g, "compensate"), true, 20_000)
        .await
        .unwrap();
    assert_eq!(bank.balances().await, Bank::start_balances());
}

async fn two_barriers_in_one_handler_use_ids_01_and_02(kind: Kind) {
    let bank = Bank::start(store(kind).await).await;
    let g = gid("two-barriers");
    let bb = barrier(&g, "action");
    bank.adjust(&bb, true, -10).await.unwrap();
    bank.adjust(&bb, false, 10).await.unwrap();
    // A repeated delivery of the whole handler: both uses are skipped.
    let again = barrier(&g, "action");
    bank.adjust(&again, true, -10).await.unwrap();
    bank.adjust(&again, false, 10).await.unwrap();
    assert_eq!(bank.balances().await, Bank::moved(10));
}

/// DTM's `tcc_barrier_test`: a branch is registered but its try is not called; the transaction times out
/// and braid cancels it while a second delivery of the same cancel arrives (braid itself runs one pass at a
/// time, so the test sends the duplicate); while both cancels are in flight (their barrier transactions
/// committed), the late try arrives and must answer 200 without touching the balances.
async fn tcc_out_of_order_try_after_concurrent_cancels(kind: Kind) {
    let bank = Bank::start(store(kind).await).await;
    let a = Braid::start().await;
    let (mut cancel_finished, cancel_can_return) = bank.sleep_cancel();
    let g = gid(&format!("tcc-disorder-{}", bank.store().name()));
    let body = bank::req(30, "", "");
    let body_bytes = serde_json::to_vec(&body).unwrap();
    let client = a.client();
    let outcome = client
        .tcc(&g)
        .run(|tcc| {
            let (a, bank) = (&a, &bank);
            let cancel_finished = &mut cancel_finished;
            let cancel_can_return = cancel_can_return.clone();
            let body_bytes = body_bytes.clone();
            async move {
                let branch_id = tcc.new_branch_id()?;
                tcc.register_branch(
                    &branch_id,
                    &body_bytes,
                    &bank.at("TransOutConfirm"),
                    &bank.at("SleepCancel"),
                )
                .await?;
                // Replica A: the prepared TCC times out; its pass cancels the branch and blocks in it.
                a.forward(300);
                let first = tokio::spawn({
                    let scanner = a.server.scanner.clone();
                    async move { scanner.scan_once(true).await.expect("scan A") }
                });
                cancel_finished
                    .recv()
                    .await
                    .expect("first cancel committed");
                // A second cancel of the same branch arrives while the first is in flight (a delivery
                // the network repeated, or a client's own retry): braid runs one pass at a time, so the
                // test sends it itself, with the query braid sends.
                let second = tokio::spawn({
                    let url = bank.at("SleepCancel");
                    let query = [
                        ("dtm", a.dtm()),
                        ("gid", tcc.gid().to_owned()),
                        ("branch_id", branch_id.clone()),
                        ("trans_type", "tcc".to_owned()),
                        ("op", "cancel".to_owned()),
                    ];
                    let body = body_bytes.clone();
                    async move {
                        reqwest::Client::new()
                            .post(url)
                            .query(&query)
                            .body(body)
                            .send()
                            .await
                            .expect("second cancel sent")
                            .status()
                            .as_u16()
                    }
                });
                cancel_finished
                    .recv()
                    .await
                    .expect("second cancel committed");
                // The late try.
                let resp = reqwest::Client::new()
                    .post(bank.at("TransOutTry"))
                    .query(&[
                        ("dtm", a.dtm().as_str()),
                        ("gid", tcc.gid()),
                        ("branch_id", branch_id.as_str()),
                        ("trans_type", "tcc"),
                        ("op", "try"),
                    ])
                    .body(body_bytes.clone())
                    .send()
                    .await
                    .expect("try sent");
                assert_eq!(resp.status().as_u16(), 200, "the late try answers success");
                assert_eq!(
                    bank.balances().await,
                    Bank::start_balances(),
                    "the late try changed nothing"
                );
                cancel_can_return.add_permits(2);
                let picked_a = first.await.expect("scan A task");
                assert_eq!(picked_a.len(), 1, "replica A picked the transaction");
                assert_eq!(second.await.expect("second cancel task"), 200);
                assert_eq!(
                    a.status(tcc.gid()).await,
                    "failed",
                    "the timeout pass finished the transaction"
                );
                Ok(())
            }
        })
        .await;
    let err = outcome.expect_err("a cancelled TCC cannot be submitted");
    assert!(err.is_failure(), "submit refused with FAILURE: {err}");
    assert_eq!(a.status(&g).await, "failed");
    assert_eq!(bank.balances().await, Bank::start_balances());
    assert_eq!(
        bank.routes_of(&g),
        ["SleepCancel", "SleepCancel", "TransOutTry"],
        "two cancels, then the try"
    );
    a.stop().await;
}

on_all_stores!(
    duplicate_action_and_compensation_run_once,
    null_compensation_then_hanging_action_do_nothing,
    failed_action_rolls_back_its_barrier_and_its_compensation_is_null,
    two_barriers_in_one_handler_use_ids_01_and_02,
    tcc_out_of_order_try_after_concurrent_cancels,
);
