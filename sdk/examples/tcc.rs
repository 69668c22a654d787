//! A TCC transfer: each bank branch reserves in `try`, applies in `confirm`, releases in `cancel`, all
//! behind the barrier (which also handles a cancel that arrives before its try, and a try that arrives
//! after its cancel).
//!
//! Run braid (`cargo run --release` in the repository root) and MariaDB on 127.0.0.1:3306, then:
//! `cargo run -p braid-client --example tcc`

mod shared;

use axum::extract::{Path, State};
use axum::routing::post;
use axum::{Json, Router};
use braid_client::{BranchBarrier, DtmClient, Error, Result};
use serde::{Deserialize, Serialize};
use sqlx::MySqlPool;

#[derive(Serialize, Deserialize)]
struct TransReq {
    amount: i64,
}

/// `/api/bank/{user}/{phase}`: user 1 pays, user 2 receives; phase is Try, Confirm or Cancel.
async fn branch(
    State(pool): State<MySqlPool>,
    Path((user, phase)): Path<(i64, String)>,
    bb: BranchBarrier,
    Json(req): Json<TransReq>,
) -> Result<&'static str> {
    let delta = if user == 1 { -req.amount } else { req.amount };
    let (sql, must_change) = match phase.as_str() {
        // Reserve: the trading balance holds the pending change; the available balance must cover it.
        "Try" => (
            "UPDATE braid_example.account SET trading_balance = trading_balance + ? \
             WHERE user_id = ? AND balance + trading_balance + ? >= 0",
            true,
        ),
        "Confirm" => (
            "UPDATE braid_example.account SET balance = balance + ?, trading_balance = trading_balance - ? \
             WHERE user_id = ?",
            false,
        ),
        "Cancel" => (
            "UPDATE braid_example.account SET trading_balance = trading_balance - ? WHERE user_id = ?",
            false,
        ),
        other => return Err(Error::other(format!("unknown phase {other}"))),
    };
    let binds: Vec<i64> = match phase.as_str() {
        "Try" => vec![delta, user, delta],
        "Confirm" => vec![delta, delta, user],
        _ => vec![delta, user],
    };
    bb.call(pool.begin().await?, move |tx| {
        Box::pin(async move {
            let mut q = sqlx::query(sql);
            for b in binds {
                q = q.bind(b);
            }
            if q.execute(&mut *tx).await?.rows_affected() == 0 && must_change {
                return Err(Error::failure("insufficient balance"));
            }
            Ok(())
        })
    })
    .await
    .map(|()| "SUCCESS")
}

async fn transfer(dtm: &DtmClient, bank: &str, amount: i64) -> Result<()> {
    let req = TransReq { amount };
    // `braid_client::tcc_global_transaction(dtm, gid, ..)` is the same with default options; waiting for
    // the result makes the confirms (or cancels) finish before `run` returns.
    dtm.tcc(dtm.new_gid().await?)
        .wait_result(true)
        .run(|tcc| async move {
            for user in [1, 2] {
                tcc.call_branch_json(
                    &req,
                    &format!("{bank}/{user}/Try"),
                    &format!("{bank}/{user}/Confirm"),
                    &format!("{bank}/{user}/Cancel"),
                )
                .await?;
            }
            Ok(())
        })
        .await
}

#[tokio::main]
async fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let pool = shared::setup_mysql().await?;
    let app = Router::new()
        .route("/api/bank/{user}/{phase}", post(branch))
        .with_state(pool.clone());
    let bank = shared::serve(app).await?;
    let dtm = DtmClient::http(shared::dtm_url());

    transfer(&dtm, &bank, 30).await?;
    println!(
        "TCC transfer of 30 confirmed; balances {:?}",
        shared::balances(&pool).await?
    );
    match transfer(&dtm, &bank, 1_000_000).await {
        Err(e) if e.is_failure() => println!("oversized TCC transfer aborted: {}", e.message()),
        other => println!("unexpected outcome of the oversized transfer: {other:?}"),
    }
    println!("balances {:?}", shared::balances(&pool).await?);
    Ok(())
}
