//! A bank business service for chaos tests: real HTTP on 127.0.0.1, accounts in MariaDB (its own fresh
//! database), every branch behind the SDK's MySQL sub-transaction barrier, and seeded fault injection.
//!
//! - Routes under `/api/bank`: `TransOut`/`TransOutRevert` debit/refund user 1, `TransIn`/`TransInRevert`
//!   credit/reverse user 2 (POST, body `{"amount": n, "fail": bool}`), and `QueryPrepared` (GET), the msg
//!   back-check, answered by the barrier's `query_prepared`. A msg's own local work is
//!   [`Bank::msg_debit`]: debit user 1 behind the msg barrier (branch `00`, op `msg`), as DTM's
//!   `DoAndSubmitDB` does.
//! - Every balance change writes a ledger row `(gid, branch_id, op, user_id, delta)` in the same local
//!   transaction as the barrier row and the balance, so a test can tell exactly which effects of a global
//!   transaction were applied and how often. The ledger has no unique key: an effect applied twice shows
//!   as two rows instead of an error.
//! - Faults, drawn from an RNG seeded by the test: 500 before the barrier (nothing done), 500 after it
//!   committed (the reply is lost), 425 ONGOING (actions only, nothing done), and a stall past the
//!   server's request timeout, before or after the work. A `TransIn` whose body says `"fail": true` fails
//!   with 409 inside the barrier, so the failed attempt leaves no row. Calls run concurrently, so the
//!   order in which they draw from the RNG, and hence the exact faults, vary between runs of one seed.
//! - Whatever the faults, the barrier keeps money conserved: once every transaction is final, the total
//!   of the balances is the initial total. [`Bank::calls`] logs every call for diagnosis.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use braid_client::{BoxFuture, BranchBarrier, Error as SdkError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use serde_json::json;
use sqlx::{MySqlConnection, MySqlPool};

use super::{Backend, drop_database, fresh_dsn, mysql_base};

/// Each user's balance at start.
pub const INITIAL_BALANCE: i64 = 1_000_000;
/// The users: 1 pays, 2 receives.
pub const USERS: [i64; 2] = [1, 2];

/// Probabilities of the injected faults (each between 0 and 1; drawn in this order, first hit wins).
#[derive(Debug, Clone)]
pub struct Faults {
    /// 500 before the barrier: nothing is done.
    pub error_before: f64,
    /// 500 after the barrier committed: the work is done, the reply says otherwise.
    pub error_after: f64,
    /// 425 ONGOING before the barrier (actions only).
    pub ongoing: f64,
    /// Sleep `stall_for` (longer than the server's request timeout) before or after the work.
    pub stall: f64,
    /// How long a stall lasts.
    pub stall_for: Duration,
}

impl Faults {
    /// No faults at all.
    pub fn none() -> Self {
        Self {
            error_before: 0.0,
            error_after: 0.0,
            ongoing: 0.0,
            stall: 0.0,
            stall_for: Duration::ZERO,
        }
    }
}

/// The fault injected into one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    ErrorBefore,
    ErrorAfter,
    Ongoing,
    StallBefore,
    StallAfter,
}

/// What the work of one call did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// A fault answered before the work.
    NotReached,
    /// The balance changed (a ledger row was written).
    Applied,
    /// The barrier made it a no-op (repeat, null compensation, or a late action after its compensation).
    NoOp,
    /// The business failed (409, rolled back).
    Failed,
    /// `QueryPrepared`: the msg's local transaction committed.
    Committed,
    /// `QueryPrepared`: the msg's local transaction did not commit and now never will.
    RolledBack,
    /// A database or barrier error (500).
    Error(String),
}

/// One call the bank received.
#[derive(Debug, Clone)]
pub struct Call {
    pub route: String,
    pub gid: String,
    pub branch_id: String,
    pub op: String,
    pub fault: Fault,
    pub effect: Effect,
    /// The HTTP status answered.
    pub status: u16,
}

/// One ledger row group: how often `(gid, branch_id, op)` was applied and the sum of its deltas.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    pub count: i64,
    pub delta: i64,
}

/// The branch routes (`TransOut`, `TransOutRevert`, `TransIn`, `TransInRevert`): which user each moves
/// money for, and in which direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Out,
    OutRevert,
    In,
    InRevert,
}

impl Route {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "TransOut" => Self::Out,
            "TransOutRevert" => Self::OutRevert,
            "TransIn" => Self::In,
            "TransInRevert" => Self::InRevert,
            _ => return None,
        })
    }

    fn user(self) -> i64 {
        match self {
            Self::Out | Self::OutRevert => 1,
            Self::In | Self::InRevert => 2,
        }
    }

    /// The balance change for `amount`.
    fn delta(self, amount: i64) -> i64 {
        match self {
            Self::Out | Self::InRevert => -amount,
            Self::OutRevert | Self::In => amount,
        }
    }

    fn is_action(self) -> bool {
        matches!(self, Self::Out | Self::In)
    }
}

/// The body of a branch call.
#[derive(Debug, Deserialize)]
pub struct BranchReq {
    pub amount: i64,
    /// A `TransIn` that must fail with FAILURE.
    #[serde(default)]
    pub fail: bool,
}

struct Inner {
    pool: MySqlPool,
    dsn: String,
    barrier_table: String,
    faults: Faults,
    rng: Mutex<StdRng>,
    calls: Mutex<Vec<Call>>,
    in_flight: AtomicUsize,
}

/// A running bank. Cheap to clone.
#[derive(Clone)]
pub struct Bank {
    inner: Arc<Inner>,
    pub addr: SocketAddr,
}

impl Bank {
    /// Creates a fresh database with users 1 and 2 at [`INITIAL_BALANCE`], the barrier and ledger tables,
    /// and serves the routes on an ephemeral port. Faults are drawn from an RNG seeded with `seed`.
    pub async fn start(seed: u64, faults: Faults) -> Self {
        let dsn = fresh_dsn(Backend::Mysql);
        let db = dsn
            .rsplit('/')
            .next()
            .expect("a fresh MySQL DSN ends in the database name")
            .to_owned();
        let admin = MySqlPool::connect(&format!("{}/", mysql_base()))
            .await
            .expect("bank connects to MariaDB");
        sqlx::query(&format!("CREATE DATABASE `{db}`"))
            .execute(&admin)
            .await
            .expect("create the bank database");
        admin.close().await;
        let pool = sqlx::mysql::MySqlPoolOptions::new()
            .max_connections(32)
            .connect(&dsn)
            .await
            .expect("bank pool");
        let barrier_table = format!("{db}.barrier");
        braid_client::create_barrier_table(&pool, &barrier_table)
            .await
            .expect("create the barrier table");
        for stmt in [
            "CREATE TABLE account (user_id BIGINT PRIMARY KEY, balance BIGINT NOT NULL)",
            "CREATE TABLE ledger (
               id BIGINT PRIMARY KEY AUTO_INCREMENT,
               gid VARCHAR(128) NOT NULL,
               branch_id VARCHAR(128) NOT NULL,
               op VARCHAR(45) NOT NULL,
               user_id BIGINT NOT NULL,
               delta BIGINT NOT NULL,
               KEY (gid))",
        ] {
            sqlx::query(stmt)
                .execute(&pool)
                .await
                .expect("create bank table");
        }
        for user in USERS {
            sqlx::query("INSERT INTO account (user_id, balance) VALUES (?, ?)")
                .bind(user)
                .bind(INITIAL_BALANCE)
                .execute(&pool)
                .await
                .expect("open account");
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind bank");
        let addr = listener.local_addr().expect("bank addr");
        let bank = Self {
            inner: Arc::new(Inner {
                pool,
                dsn,
                barrier_table,
                faults,
                rng: Mutex::new(StdRng::seed_from_u64(seed)),
                calls: Mutex::new(Vec::new()),
                in_flight: AtomicUsize::new(0),
            }),
            addr,
        };
        let app = Router::new()
            .route("/api/bank/QueryPrepared", get(query_prepared))
            .route("/api/bank/{route}", post(branch))
            .with_state(bank.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("bank service stopped: {e}");
            }
        });
        bank
    }

    /// `http://127.0.0.1:port/api/bank`.
    pub fn url(&self) -> String {
        format!("http://{}/api/bank", self.addr)
    }

    /// The bank's database pool.
    pub fn pool(&self) -> &MySqlPool {
        &self.inner.pool
    }

    /// A barrier on the bank's own barrier table.
    pub fn barrier(&self, bb: BranchBarrier) -> BranchBarrier {
        bb.with_table(self.inner.barrier_table.clone())
    }

    /// The msg's local work, to run behind its msg barrier (e.g. inside `Msg::do_and_submit`): debit user
    /// 1 by `amount` and write the ledger row `(gid, "00", "msg")`. With `fail` it fails with FAILURE
    /// instead, before touching anything.
    pub fn msg_debit(
        &self,
        gid: &str,
        amount: i64,
        fail: bool,
    ) -> impl for<'t> FnOnce(&'t mut MySqlConnection) -> BoxFuture<'t, braid_client::Result<()>>
    + Send
    + 'static {
        let gid = gid.to_owned();
        move |conn| {
            Box::pin(async move {
                if fail {
                    return Err(SdkError::failure("the msg's local work is meant to fail"));
                }
                move_money(
                    conn,
                    &gid,
                    braid_client::barrier::MSG_BRANCH_ID,
                    "msg",
                    1,
                    -amount,
                )
                .await
            })
        }
    }

    /// The sum of all balances.
    pub async fn total(&self) -> i64 {
        self.balances().await.iter().map(|(_, b)| b).sum()
    }

    /// `(user_id, balance)` of every account.
    pub async fn balances(&self) -> Vec<(i64, i64)> {
        sqlx::query_as("SELECT user_id, balance FROM account ORDER BY user_id")
            .fetch_all(&self.inner.pool)
            .await
            .expect("read balances")
    }

    /// The ledger grouped by `(gid, branch_id, op)`.
    pub async fn ledger(&self) -> std::collections::HashMap<(String, String, String), Applied> {
        let rows: Vec<(String, String, String, i64, i64)> = sqlx::query_as(
            "SELECT gid, branch_id, op, COUNT(*), CAST(SUM(delta) AS SIGNED) FROM ledger \
             GROUP BY gid, branch_id, op",
        )
        .fetch_all(&self.inner.pool)
        .await
        .expect("read the ledger");
        rows.into_iter()
            .map(|(gid, branch, op, count, delta)| ((gid, branch, op), Applied { count, delta }))
            .collect()
    }

    /// The sum of ledger deltas per user.
    pub async fn ledger_by_user(&self) -> Vec<(i64, i64)> {
        sqlx::query_as(
            "SELECT user_id, CAST(SUM(delta) AS SIGNED) FROM ledger GROUP BY user_id ORDER BY user_id",
        )
        .fetch_all(&self.inner.pool)
        .await
        .expect("read the ledger")
    }

    /// Every call received so far.
    pub fn calls(&self) -> Vec<Call> {
        self.inner.calls.lock().expect("bank lock").clone()
    }

    /// The calls of one transaction.
    pub fn calls_of(&self, gid: &str) -> Vec<Call> {
        self.inner
            .calls
            .lock()
            .expect("bank lock")
            .iter()
            .filter(|c| c.gid == gid)
            .cloned()
            .collect()
    }

    /// Waits until no call is being handled (stalled calls finish their work late); false after `limit`.
    pub async fn wait_idle(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while self.inner.in_flight.load(Ordering::SeqCst) > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
    }

    /// Closes the pool and drops the bank's database.
    pub async fn stop(self) {
        self.inner.pool.close().await;
        drop_database(&self.inner.dsn).await;
    }

    fn draw_fault(&self, action: bool) -> Fault {
        let f = &self.inner.faults;
        let Ok(mut rng) = self.inner.rng.lock() else {
            return Fault::None;
        };
        let roll: f64 = rng.random();
        let after: bool = rng.random();
        let mut edge = f.error_before;
        if roll < edge {
            return Fault::ErrorBefore;
        }
        edge += f.error_after;
        if roll < edge {
            return Fault::ErrorAfter;
        }
        if action {
            edge += f.ongoing;
            if roll < edge {
                return Fault::Ongoing;
            }
        }
        edge += f.stall;
        if roll < edge {
            return if after {
                Fault::StallAfter
            } else {
                Fault::StallBefore
            };
        }
        Fault::None
    }

    fn record(&self, bb: &BranchBarrier, route: &str, fault: Fault, effect: Effect, status: u16) {
        if let Ok(mut calls) = self.inner.calls.lock() {
            calls.push(Call {
                route: route.to_owned(),
                gid: bb.gid.clone(),
                branch_id: bb.branch_id.clone(),
                op: bb.op.clone(),
                fault,
                effect,
                status,
            });
        }
    }

    /// Runs `route`'s balance change behind the barrier; says whether it was applied.
    async fn apply(&self, bb: &BranchBarrier, route: Route, req: &BranchReq) -> Effect {
        let applied = Arc::new(AtomicBool::new(false));
        let ran = applied.clone();
        let (gid, branch_id, op) = (bb.gid.clone(), bb.branch_id.clone(), bb.op.clone());
        let (fail, delta) = (route == Route::In && req.fail, route.delta(req.amount));
        let result = bb
            .call_with_pool(&self.inner.pool, move |conn| {
                Box::pin(async move {
                    if fail {
                        return Err(SdkError::failure("TransIn is meant to fail"));
                    }
                    move_money(conn, &gid, &branch_id, &op, route.user(), delta).await?;
                    ran.store(true, Ordering::SeqCst);
                    Ok(())
                })
            })
            .await;
        match result {
            Ok(()) if applied.load(Ordering::SeqCst) => Effect::Applied,
            Ok(()) => Effect::NoOp,
            Err(e) if e.is_failure() => Effect::Failed,
            Err(e) => Effect::Error(e.to_string()),
        }
    }
}

/// Changes `user`'s balance by `delta` and writes the ledger row, on the open transaction `conn`.
async fn move_money(
    conn: &mut MySqlConnection,
    gid: &str,
    branch_id: &str,
    op: &str,
    user: i64,
    delta: i64,
) -> braid_client::Result<()> {
    sqlx::query("UPDATE account SET balance = balance + ? WHERE user_id = ?")
        .bind(delta)
        .bind(user)
        .execute(&mut *conn)
        .await?;
    sqlx::query("INSERT INTO ledger (gid, branch_id, op, user_id, delta) VALUES (?, ?, ?, ?, ?)")
        .bind(gid)
        .bind(branch_id)
        .bind(op)
        .bind(user)
        .bind(delta)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Counts a call as in flight until dropped.
struct InFlight(Arc<Inner>);

impl InFlight {
    fn new(bank: &Bank) -> Self {
        bank.inner.in_flight.fetch_add(1, Ordering::SeqCst);
        Self(bank.inner.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

fn reply(status: StatusCode, result: &str) -> Response {
    (status, axum::Json(json!({"dtm_result": result}))).into_response()
}

fn too_early() -> StatusCode {
    StatusCode::from_u16(425).unwrap_or(StatusCode::CONFLICT)
}

/// The answer for an effect: SUCCESS for done or no-op, FAILURE (409) for a business failure or a msg
/// that never committed, 500 for a database error.
fn answer(effect: &Effect) -> (StatusCode, &'static str) {
    match effect {
        Effect::Failed | Effect::RolledBack => (StatusCode::CONFLICT, "FAILURE"),
        Effect::Error(_) | Effect::NotReached => (StatusCode::INTERNAL_SERVER_ERROR, "ERROR"),
        Effect::Applied | Effect::NoOp | Effect::Committed => (StatusCode::OK, "SUCCESS"),
    }
}

/// The faults that answer before the work; `None` when the work should run.
async fn before(bank: &Bank, fault: Fault) -> Option<(StatusCode, &'static str)> {
    match fault {
        Fault::ErrorBefore => Some((StatusCode::INTERNAL_SERVER_ERROR, "ERROR")),
        Fault::Ongoing => Some((too_early(), "ONGOING")),
        Fault::StallBefore => {
            tokio::time::sleep(bank.inner.faults.stall_for).await;
            None
        }
        Fault::None | Fault::ErrorAfter | Fault::StallAfter => None,
    }
}

/// The faults that strike after the work.
async fn after(bank: &Bank, fault: Fault, answer: (StatusCode, &'static str)) -> Response {
    match fault {
        Fault::ErrorAfter => reply(StatusCode::INTERNAL_SERVER_ERROR, "ERROR"),
        Fault::StallAfter => {
            tokio::time::sleep(bank.inner.faults.stall_for).await;
            reply(answer.0, answer.1)
        }
        Fault::None | Fault::ErrorBefore | Fault::Ongoing | Fault::StallBefore => {
            reply(answer.0, answer.1)
        }
    }
}

/// Runs a call in its own task, so that it finishes (and is recorded) even when the caller gives up and
/// hangs up: a stalled call still does its work, late.
async fn detached<F>(work: F) -> Response
where
    F: Future<Output = Response> + Send + 'static,
{
    tokio::spawn(work).await.unwrap_or_else(|e| {
        (StatusCode::INTERNAL_SERVER_ERROR, format!("bank task: {e}")).into_response()
    })
}

async fn branch(
    State(bank): State<Bank>,
    Path(name): Path<String>,
    bb: BranchBarrier,
    body: Bytes,
) -> Response {
    let in_flight = InFlight::new(&bank);
    detached(async move {
        let _in_flight = in_flight;
        branch_call(bank, name, bb, body).await
    })
    .await
}

async fn branch_call(bank: Bank, name: String, bb: BranchBarrier, body: Bytes) -> Response {
    let bb = bank.barrier(bb);
    let Some(route) = Route::parse(&name) else {
        return (StatusCode::NOT_FOUND, format!("no route {name}")).into_response();
    };
    let req: BranchReq = match serde_json::from_slice(&body) {
        Ok(req) => req,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("bad body: {e}")).into_response(),
    };
    let fault = bank.draw_fault(route.is_action());
    if let Some((status, result)) = before(&bank, fault).await {
        bank.record(&bb, &name, fault, Effect::NotReached, status.as_u16());
        return reply(status, result);
    }
    let effect = bank.apply(&bb, route, &req).await;
    let resp = after(&bank, fault, answer(&effect)).await;
    bank.record(&bb, &name, fault, effect, resp.status().as_u16());
    resp
}

async fn query_prepared(State(bank): State<Bank>, bb: BranchBarrier) -> Response {
    let in_flight = InFlight::new(&bank);
    detached(async move {
        let _in_flight = in_flight;
        query_prepared_call(bank, bb).await
    })
    .await
}

async fn query_prepared_call(bank: Bank, bb: BranchBarrier) -> Response {
    let bb = bank.barrier(bb);
    let fault = bank.draw_fault(false);
    if let Some((status, result)) = before(&bank, fault).await {
        bank.record(
            &bb,
            "QueryPrepared",
            fault,
            Effect::NotReached,
            status.as_u16(),
        );
        return reply(status, result);
    }
    let effect = match bb.query_prepared(&bank.inner.pool).await {
        Ok(()) => Effect::Committed,
        Err(e) if e.is_failure() => Effect::RolledBack,
        Err(e) => Effect::Error(e.to_string()),
    };
    let resp = after(&bank, fault, answer(&effect)).await;
    bank.record(&bb, "QueryPrepared", fault, effect, resp.status().as_u16());
    resp
}
