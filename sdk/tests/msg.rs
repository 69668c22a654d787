//! `Msg::do_and_submit` (spec §7.2) with the barrier on MariaDB, PostgreSQL and Redis, against a running
//! braid: success, business failure, back-check first (DUPLICATED), unknown business outcome settled by
//! the back-check, and prepare failure. The local business takes 30 from user "out"; the message's branch
//! gives 30 to user "in".

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use braid_client::{BranchBarrier, Error, Msg};
use common::{Bank, Braid, Kind, bank, gid, store};

fn msg(braid: &Braid, bank: &Bank, g: &str) -> Msg {
    braid
        .client()
        .msg(g)
        .add_json(bank.at("TransIn"), &bank::req(30, "", ""))
        .wait_result(true)
}

/// The local business: take `amount` from user "out" behind the msg barrier.
async fn take(bank: &Bank, bb: BranchBarrier, amount: i64) -> braid_client::Result<()> {
    bank.adjust(&bb, true, -amount).await
}

async fn do_and_submit_commits_then_delivers(kind: Kind) {
    let bank = Bank::start(store(kind).await).await;
    let braid = Braid::start().await;
    let g = gid("msg-ok");
    msg(&braid, &bank, &g)
        .do_and_submit(&bank.at("QueryPrepared"), |bb| take(&bank, bb, 30))
        .await
        .unwrap();
    assert_eq!(braid.status(&g).await, "succeed");
    assert_eq!(braid.branch_statuses(&g).await, ["succeed"]);
    assert_eq!(bank.balances().await, Bank::moved(30));
    assert_eq!(bank.routes_of(&g), ["TransIn"]);
    braid.stop().await;
}

async fn do_and_submit_business_failure_aborts(kind: Kind) {
    let bank = Bank::start(store(kind).await).await;
    let braid = Braid::start().await;
    let g = gid("msg-busi-fail");
    let err = msg(&braid, &bank, &g)
        .do_and_submit(&bank.at("QueryPrepared"), |bb| take(&bank, bb, 20_000))
        .await
        .unwrap_err();
    assert!(err.is_failure(), "{err}");
    assert_eq!(braid.status(&g).await, "failed");
    assert_eq!(bank.balances().await, Bank::start_balances());
    assert!(bank.routes_of(&g).is_empty(), "no branch was called");
    braid.stop().await;
}

async fn back_check_first_makes_the_business_duplicated(kind: Kind) {
    let bank = Bank::start(store(kind).await).await;
    let braid = Braid::start().await;
    let g = gid("msg-dup");
    // The server's back-check (or a stray one) wins the race to the barrier.
    let resp = reqwest::Client::new()
        .get(bank.at("QueryPrepared"))
        .query(&[
            ("gid", g.as_str()),
            ("trans_type", "msg"),
            ("branch_id", "00"),
            ("op", "msg"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 409, "back-check: never committed");
    let err = msg(&braid, &bank, &g)
        .do_and_submit(&bank.at("QueryPrepared"), |bb| take(&bank, bb, 30))
        .await
        .unwrap_err();
    assert!(err.is_duplicated(), "{err}");
    assert_eq!(braid.status(&g).await, "failed");
    assert_eq!(bank.balances().await, Bank::start_balances());
    assert_eq!(bank.routes_of(&g), ["QueryPrepared", "QueryPrepared"]);
    braid.stop().await;
}

async fn unknown_business_outcome_is_settled_by_the_back_check(kind: Kind) {
    let bank = Bank::start(store(kind).await).await;
    let braid = Braid::start().await;
    let g = gid("msg-unknown");
    // The business committed, but its caller saw an error (a lost reply): the SDK asks the back-check,
    // which finds the commit, so the message is submitted; the caller still gets the error.
    let err = msg(&braid, &bank, &g)
        .do_and_submit(&bank.at("QueryPrepared"), |bb| async {
            take(&bank, bb, 30).await?;
            Err(Error::other("connection reset after commit"))
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("connection reset"), "{err}");
    assert_eq!(braid.status(&g).await, "succeed");
    assert_eq!(bank.balances().await, Bank::moved(30));
    braid.stop().await;
}

async fn prepare_failure_skips_the_business(kind: Kind) {
    let bank = Bank::start(store(kind).await).await;
    let braid = Braid::start().await;
    let g = gid("msg-prepare-fail");
    // The gid is taken by a finished saga, so prepare is refused.
    braid
        .client()
        .saga(&g)
        .add("", "", "{}")
        .wait_result(true)
        .submit()
        .await
        .unwrap();
    let ran = Arc::new(AtomicBool::new(false));
    let err = msg(&braid, &bank, &g)
        .do_and_submit(&bank.at("QueryPrepared"), |bb| {
            let (ran, bank) = (ran.clone(), &bank);
            async move {
                ran.store(true, Ordering::SeqCst);
                take(bank, bb, 30).await
            }
        })
        .await
        .unwrap_err();
    assert!(err.is_failure(), "prepare refused: {err}");
    assert!(!ran.load(Ordering::SeqCst), "the business did not run");
    assert_eq!(bank.balances().await, Bank::start_balances());
    braid.stop().await;
}

on_all_stores!(
    do_and_submit_commits_then_delivers,
    do_and_submit_business_failure_aborts,
    back_check_first_makes_the_business_duplicated,
    unknown_business_outcome_is_settled_by_the_back_check,
    prepare_failure_skips_the_business,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn do_and_submit_db_runs_the_business_in_the_barrier_transaction() {
    let pool = common::mysql_pool().await;
    let bank = Bank::start(common::Store::Mysql(pool.clone())).await;
    let braid = Braid::start().await;
    let g = gid("msg-db");
    let out_user = bank.out_user();
    msg(&braid, &bank, &g)
        .do_and_submit_db(&bank.at("QueryPrepared"), &pool, move |conn| {
            Box::pin(async move {
                sqlx::query(
                    "UPDATE braid_sdk_test.user_account SET balance = balance - 30 WHERE user_id = ?",
                )
                .bind(out_user)
                .execute(&mut *conn)
                .await?;
                Ok(())
            })
        })
        .await
        .unwrap();
    assert_eq!(braid.status(&g).await, "succeed");
    assert_eq!(bank.balances().await, Bank::moved(30));
    // The back-check now finds the committed business.
    let bb = BranchBarrier::new("msg", &g, "00", "msg").unwrap();
    bb.query_prepared(&pool).await.unwrap();
    braid.stop().await;
}
