//! A two-phase message with `do_and_submit`: the local debit of user 1 and the promise to credit user 2
//! commit together. The debit runs behind the msg barrier; if the process dies between the local commit
//! and the submit, the server asks `QueryPrepared`, which answers from the barrier table.
//!
//! Run braid (`cargo run --release` in the repository root) and MariaDB on 127.0.0.1:3306, then:
//! `cargo run -p braid-client --example msg_do_and_submit`

mod shared;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use braid_client::{BranchBarrier, DtmClient, Error, Result};
use serde::{Deserialize, Serialize};
use sqlx::MySqlPool;

#[derive(Serialize, Deserialize)]
struct TransReq {
    amount: i64,
}

/// The message's branch: credit user 2 (idempotent thanks to the barrier; a message branch is retried
/// until it succeeds).
async fn trans_in(
    State(pool): State<MySqlPool>,
    bb: BranchBarrier,
    Json(req): Json<TransReq>,
) -> Result<&'static str> {
    bb.call(pool.begin().await?, move |tx| {
        Box::pin(async move {
            sqlx::query("UPDATE braid_example.account SET balance = balance + ? WHERE user_id = 2")
                .bind(req.amount)
                .execute(&mut *tx)
                .await?;
            Ok(())
        })
    })
    .await
    .map(|()| "SUCCESS")
}

/// The back-check: SUCCESS if the local transaction committed, FAILURE (409) if it never will.
async fn query_prepared(State(pool): State<MySqlPool>, bb: BranchBarrier) -> Result<&'static str> {
    bb.query_prepared(&pool).await.map(|()| "SUCCESS")
}

async fn pay(dtm: &DtmClient, pool: &MySqlPool, bank: &str, amount: i64) -> Result<()> {
    let msg = dtm
        .msg(dtm.new_gid().await?)
        .add_json(format!("{bank}/TransIn"), &TransReq { amount })
        .wait_result(true);
    msg.do_and_submit_db(&format!("{bank}/QueryPrepared"), pool, move |tx| {
        Box::pin(async move {
            let done = sqlx::query(
                "UPDATE braid_example.account SET balance = balance - ? WHERE user_id = 1 AND balance >= ?",
            )
            .bind(amount)
            .bind(amount)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 0 {
                return Err(Error::failure("insufficient balance"));
            }
            Ok(())
        })
    })
    .await
}

#[tokio::main]
async fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let pool = shared::setup_mysql().await?;
    let app = Router::new()
        .route("/api/bank/TransIn", post(trans_in))
        .route("/api/bank/QueryPrepared", get(query_prepared))
        .with_state(pool.clone());
    let bank = shared::serve(app).await?;
    let dtm = DtmClient::http(shared::dtm_url());

    pay(&dtm, &pool, &bank, 30).await?;
    println!("paid 30; balances {:?}", shared::balances(&pool).await?);
    match pay(&dtm, &pool, &bank, 1_000_000).await {
        Err(e) if e.is_failure() => println!("oversized payment aborted: {}", e.message()),
        other => println!("unexpected outcome of the oversized payment: {other:?}"),
    }
    println!("balances {:?}", shared::balances(&pool).await?);
    Ok(())
}
