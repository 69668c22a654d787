//! Setup shared by the examples: configuration from the environment, the example's accounts table, and
//! serving the bank's branch handlers. The interesting code is in each example's own file.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;

use sqlx::MySqlPool;

/// `name` from the environment, or `default`.
pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// The braid (or DTM) HTTP API: `BRAID_DTM`, default a local `cargo run --release`.
pub fn dtm_url() -> String {
    env_or("BRAID_DTM", "http://127.0.0.1:36789/api/dtmsvr")
}

/// Connects to MariaDB (`MYSQL_URL`), creates DTM's barrier table and the example's accounts, and resets
/// users 1 and 2 to 10000.
pub async fn setup_mysql() -> Result<MySqlPool, Box<dyn std::error::Error>> {
    let pool = MySqlPool::connect(&env_or("MYSQL_URL", "mysql://root@127.0.0.1:3306/")).await?;
    braid_client::create_barrier_table(&pool, braid_client::barrier::DEFAULT_BARRIER_TABLE).await?;
    for stmt in [
        "CREATE DATABASE IF NOT EXISTS braid_example",
        "CREATE TABLE IF NOT EXISTS braid_example.account (
           user_id bigint PRIMARY KEY,
           balance bigint NOT NULL,
           trading_balance bigint NOT NULL DEFAULT 0)",
        "REPLACE INTO braid_example.account (user_id, balance, trading_balance) VALUES (1, 10000, 0), (2, 10000, 0)",
    ] {
        sqlx::raw_sql(stmt).execute(&pool).await?;
    }
    Ok(pool)
}

/// The balances of users 1 and 2.
pub async fn balances(pool: &MySqlPool) -> Result<(i64, i64), sqlx::Error> {
    let b1: i64 = sqlx::query_scalar("SELECT balance FROM braid_example.account WHERE user_id = 1")
        .fetch_one(pool)
        .await?;
    let b2: i64 = sqlx::query_scalar("SELECT balance FROM braid_example.account WHERE user_id = 2")
        .fetch_one(pool)
        .await?;
    Ok((b1, b2))
}

/// Serves `app` on `BANK_ADDR` (default 127.0.0.1:8081) in the background; returns its base URL.
pub async fn serve(app: axum::Router) -> Result<String, Box<dyn std::error::Error>> {
    let addr: SocketAddr = env_or("BANK_ADDR", "127.0.0.1:8081").parse()?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("bank service stopped: {e}");
        }
    });
    Ok(format!("http://{addr}/api/bank"))
}
