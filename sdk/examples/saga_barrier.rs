//! The bank-transfer saga with barrier-protected branches.
//!
//! A bank service (axum) moves money between two accounts in MariaDB. Each branch handler runs its SQL
//! behind the sub-transaction barrier, so the transaction manager may retry, reorder or duplicate calls
//! safely. The program submits a transfer that succeeds, then one that fails and is compensated.
//!
//! Run braid (`cargo run --release` in the repository root) and MariaDB on 127.0.0.1:3306, then:
//! `cargo run -p braid-client --example saga_barrier`
//! (`BRAID_DTM`, `MYSQL_URL` and `BANK_ADDR` override the defaults.)

mod shared;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use braid_client::{BranchBarrier, DtmClient, Error, Result};
use serde::{Deserialize, Serialize};
use sqlx::MySqlPool;

#[derive(Serialize, Deserialize)]
struct TransReq {
    amount: i64,
}

/// Adds `delta` to `user`'s balance behind the barrier; refusing to go below zero is a FAILURE, which
/// makes the saga roll back.
async fn adjust(pool: &MySqlPool, bb: &BranchBarrier, user: i64, delta: i64) -> Result<()> {
    bb.call(pool.begin().await?, move |tx| {
        Box::pin(async move {
            let done = sqlx::query(
                "UPDATE braid_example.account SET balance = balance + ? \
                 WHERE user_id = ? AND balance + ? >= 0",
            )
            .bind(delta)
            .bind(user)
            .bind(delta)
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

// The `BranchBarrier` extractor reads gid, trans_type, branch_id and op from the query string; returning
// `braid_client::Error` answers FAILURE as 409, anything else as 500 (retried).
async fn trans_out(
    State(pool): State<MySqlPool>,
    bb: BranchBarrier,
    Json(req): Json<TransReq>,
) -> Result<&'static str> {
    adjust(&pool, &bb, 1, -req.amount).await.map(|()| "SUCCESS")
}

async fn trans_out_compensate(
    State(pool): State<MySqlPool>,
    bb: BranchBarrier,
    Json(req): Json<TransReq>,
) -> Result<&'static str> {
    adjust(&pool, &bb, 1, req.amount).await.map(|()| "SUCCESS")
}

async fn trans_in(
    State(pool): State<MySqlPool>,
    bb: BranchBarrier,
    Json(req): Json<TransReq>,
) -> Result<&'static str> {
    adjust(&pool, &bb, 2, req.amount).await.map(|()| "SUCCESS")
}

async fn trans_in_compensate(
    State(pool): State<MySqlPool>,
    bb: BranchBarrier,
    Json(req): Json<TransReq>,
) -> Result<&'static str> {
    adjust(&pool, &bb, 2, -req.amount).await.map(|()| "SUCCESS")
}

async fn transfer(dtm: &DtmClient, bank: &str, amount: i64) -> Result<()> {
    let req = TransReq { amount };
    dtm.saga(dtm.new_gid().await?)
        .add_json(
            format!("{bank}/TransOut"),
            format!("{bank}/TransOutCompensate"),
            &req,
        )
        .add_json(
            format!("{bank}/TransIn"),
            format!("{bank}/TransInCompensate"),
            &req,
        )
        .wait_result(true)
        .submit()
        .await
}

#[tokio::main]
async fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let pool = shared::setup_mysql().await?;
    let app = Router::new()
        .route("/api/bank/TransOut", post(trans_out))
        .route("/api/bank/TransOutCompensate", post(trans_out_compensate))
        .route("/api/bank/TransIn", post(trans_in))
        .route("/api/bank/TransInCompensate", post(trans_in_compensate))
        .with_state(pool.clone());
    let bank = shared::serve(app).await?;
    let dtm = DtmClient::http(shared::dtm_url());

    transfer(&dtm, &bank, 30).await?;
    println!(
        "transfer of 30 succeeded; balances {:?}",
        shared::balances(&pool).await?
    );

    match transfer(&dtm, &bank, 1_000_000).await {
        Err(e) if e.is_failure() => println!("transfer of 1000000 rolled back: {}", e.message()),
        other => println!("unexpected outcome of the oversized transfer: {other:?}"),
    }
    println!(
        "balances after the rollback {:?}",
        shared::balances(&pool).await?
    );
    Ok(())
}
