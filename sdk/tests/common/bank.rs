//! A test bank: two accounts (user "out" pays, user "in" receives, both start at 10000) in MariaDB,
//! PostgreSQL or Redis, and an axum service whose branch handlers are protected by the SDK's barrier.
//!
//! Routes (POST under `/api/bank/`, the body is `{"amount":30,"trans_out_result":"","trans_in_result":""}`;
//! a result of `FAILURE` makes that action fail inside its local transaction):
//! - saga / msg: `TransOut`, `TransOutCompensate`, `TransIn`, `TransInCompensate`;
//! - TCC (with a `trading_balance`, as DTM's busi): `TransOutTry|Confirm|Cancel`, `TransInTry|Confirm|Cancel`,
//!   and `SleepCancel` (= `TransOutCancel`, then reports and waits for the test: the out-of-order test);
//! - XA (MariaDB): `TransOutXa`, `TransInXa`;
//! - `QueryPrepared` (GET): the msg back-check.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use braid_client::{BranchBarrier, BranchQuery, Error};
use redis::AsyncCommands as _;
use serde_json::{Value, json};
use sqlx::{MySqlPool, PgPool};
use tokio::sync::{Semaphore, mpsc};

/// Where the accounts live.
#[derive(Clone)]
pub enum Store {
    Mysql(MySqlPool),
    Postgres(PgPool),
    Redis(redis::aio::MultiplexedConnection),
}

impl Store {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Mysql(_) => "mysql",
            Self::Postgres(_) => "postgres",
            Self::Redis(_) => "redis",
        }
    }
}

/// The hook of `SleepCancel`: report that the cancel's barrier transaction committed, then wait for a
/// permit before answering.
struct CancelHook {
    finished: mpsc::UnboundedSender<()>,
    can_return: Arc<Semaphore>,
}

struct BankState {
    store: Store,
    out_user: i64,
    in_user: i64,
    hook: Mutex<Option<CancelHook>>,
    calls: Mutex<Vec<(String, String)>>,
}

/// A running bank. Cheap to clone.
#[derive(Clone)]
pub struct Bank {
    state: Arc<BankState>,
    pub addr: SocketAddr,
}

pub const START_BALANCE: i64 = 10_000;
const REDIS_EXPIRE: u64 = 86_400;

fn random_user() -> i64 {
    (uuid_like() & 0x0000_7fff_ffff_ffff) as i64
}

fn uuid_like() -> u64 {
    let g = braid_client::new_gid();
    g.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn redis_key(user: i64) -> String {
    format!("braid-sdk-test-account-{user}")
}

/// The branch body.
pub fn req(amount: i64, out_result: &str, in_result: &str) -> Value {
    json!({"amount": amount, "trans_out_result": out_result, "trans_in_result": in_result})
}

impl Bank {
    /// Creates two fresh accounts in `store` and serves the bank on an ephemeral port.
    pub async fn start(store: Store) -> Self {
        let (out_user, in_user) = (random_user(), random_user());
        match &store {
            Store::Mysql(pool) => {
                for u in [out_user, in_user] {
                    sqlx::query(
                        "INSERT INTO braid_sdk_test.user_account (user_id, balance) VALUES (?, ?)",
                    )
                    .bind(u)
                    .bind(START_BALANCE)
                    .execute(pool)
                    .await
                    .expect("account");
                }
            }
            Store::Postgres(pool) => {
                for u in [out_user, in_user] {
                    sqlx::query("INSERT INTO braid_sdk_test.user_account (user_id, balance) VALUES ($1, $2)")
                        .bind(u)
                        .bind(START_BALANCE)
                        .execute(pool)
                        .await
                        .expect("account");
                }
            }
            Store::Redis(conn) => {
                let mut conn = conn.clone();
                for u in [out_user, in_user] {
                    let _: () = conn
                        .set_ex(redis_key(u), START_BALANCE, REDIS_EXPIRE)
                        .await
                        .expect("account");
                }
            }
        }
        let state = Arc::new(BankState {
            store,
            out_user,
            in_user,
            hook: Mutex::new(None),
            calls: Mutex::new(Vec::new()),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind bank");
        let addr = listener.local_addr().expect("bank addr");
        let app = Router::new()
            .route("/api/bank/{route}", any(handle))
            .with_state(state.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { state, addr }
    }

    /// `http://127.0.0.1:port/api/bank`.
    pub fn url(&self) -> String {
        format!("http://{}/api/bank", self.addr)
    }

    /// `url()/route`.
    pub fn at(&self, route: &str) -> String {
        format!("{}/{route}", self.url())
    }

    pub fn out_user(&self) -> i64 {
        self.state.out_user
    }

    pub fn in_user(&self) -> i64 {
        self.state.in_user
    }

    pub fn store(&self) -> &Store {
        &self.state.store
    }

    /// Installs the `SleepCancel` hook: returns the "cancel committed" receiver and the permits that let
    /// the cancels answer.
    pub fn sleep_cancel(&self) -> (mpsc::UnboundedReceiver<()>, Arc<Semaphore>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let permits = Arc::new(Semaphore::new(0));
        *self.state.hook.lock().unwrap() = Some(CancelHook {
            finished: tx,
            can_return: permits.clone(),
        });
        (rx, permits)
    }

    /// Routes called for `gid`, in arrival order.
    pub fn routes_of(&self, gid: &str) -> Vec<String> {
        self.state
            .calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, g)| g == gid)
            .map(|(r, _)| r.clone())
            .collect()
    }

    /// `((out balance, out trading), (in balance, in trading))`; Redis has no trading balance.
    pub async fn balances(&self) -> ((i64, i64), (i64, i64)) {
        let s = &self.state;
        let mut out = Vec::new();
        for u in [s.out_user, s.in_user] {
            let row: (i64, i64) = match &s.store {
                Store::Mysql(pool) => sqlx::query_as(
                    "SELECT balance, trading_balance FROM braid_sdk_test.user_account WHERE user_id = ?",
                )
                .bind(u)
                .fetch_one(pool)
                .await
                .expect("balance"),
                Store::Postgres(pool) => sqlx::query_as(
                    "SELECT balance, trading_balance FROM braid_sdk_test.user_account WHERE user_id = $1",
                )
                .bind(u)
                .fetch_one(pool)
                .await
                .expect("balance"),
                Store::Redis(conn) => {
                    let v: i64 = conn.clone().get(redis_key(u)).await.expect("balance");
                    (v, 0)
                }
            };
            out.push(row);
        }
        (out[0], out[1])
    }

    /// The untouched starting balances.
    pub fn start_balances() -> ((i64, i64), (i64, i64)) {
        ((START_BALANCE, 0), (START_BALANCE, 0))
    }

    /// Balances after `amount` moved from out to in.
    pub fn moved(amount: i64) -> ((i64, i64), (i64, i64)) {
        ((START_BALANCE - amount, 0), (START_BALANCE + amount, 0))
    }

    /// A gRPC branch call: `out_side` picks the account, the barrier's op picks saga or TCC behaviour
    /// (`action`/`compensate`, `try`/`confirm`/`cancel`), `result` may force a FAILURE.
    pub async fn grpc_call(
        &self,
        out_side: bool,
        bb: &BranchBarrier,
        amount: i64,
        result: String,
    ) -> braid_client::Result<()> {
        let st = &self.state;
        let (user, delta) = if out_side {
            (st.out_user, -amount)
        } else {
            (st.in_user, amount)
        };
        st.calls.lock().unwrap().push((
            format!("{}:{}", if out_side { "out" } else { "in" }, bb.op),
            bb.gid.clone(),
        ));
        match bb.op.as_str() {
            "action" => saga_adjust(st, bb, user, delta, result).await,
            "compensate" => saga_adjust(st, bb, user, -delta, String::new()).await,
            phase @ ("try" | "confirm" | "cancel") => tcc(st, bb, phase, user, delta, result).await,
            other => Err(Error::other(format!("unexpected op {other}"))),
        }
    }

    /// Runs a barrier-protected saga-style balance change directly (for barrier tests without a server).
    pub async fn adjust(
        &self,
        bb: &BranchBarrier,
        out_side: bool,
        delta: i64,
    ) -> braid_client::Result<()> {
        let user = if out_side {
            self.state.out_user
        } else {
            self.state.in_user
        };
        saga_adjust(&self.state, bb, user, delta, String::new()).await
    }
}

/// Rewrites `?` placeholders as `$1, $2, ...` for Postgres.
fn pg_sql(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push_str(&format!("${n}"));
        } else {
            out.push(c);
        }
    }
    out
}

fn forced(result: &str) -> braid_client::Result<()> {
    if result == "FAILURE" {
        return Err(Error::failure("reason:forced by the test"));
    }
    Ok(())
}

/// Runs `sql` (MySQL placeholders) with `args` behind the barrier; `must_affect`: no row changed is an
/// "Insufficient balance" FAILURE.
async fn guarded_sql(
    st: &BankState,
    bb: &BranchBarrier,
    sql: &'static str,
    args: Vec<i64>,
    result: String,
    must_affect: bool,
) -> braid_client::Result<()> {
    match &st.store {
        Store::Mysql(pool) => {
            bb.call_with_pool(pool, move |c| {
                Box::pin(async move {
                    forced(&result)?;
                    let mut q = sqlx::query(sql);
                    for a in args {
                        q = q.bind(a);
                    }
                    let done = q.execute(&mut *c).await?;
                    if must_affect && done.rows_affected() == 0 {
                        return Err(Error::failure("Insufficient balance"));
                    }
                    Ok(())
                })
            })
            .await
        }
        Store::Postgres(pool) => {
            let sql = pg_sql(sql);
            bb.call_with_pool(pool, move |c| {
                Box::pin(async move {
                    forced(&result)?;
                    let mut q = sqlx::query(&sql);
                    for a in args {
                        q = q.bind(a);
                    }
                    let done = q.execute(&mut *c).await?;
                    if must_affect && done.rows_affected() == 0 {
                        return Err(Error::failure("Insufficient balance"));
                    }
                    Ok(())
                })
            })
            .await
        }
        Store::Redis(_) => Err(Error::other("no SQL on the redis bank")),
    }
}

async fn saga_adjust(
    st: &BankState,
    bb: &BranchBarrier,
    user: i64,
    delta: i64,
    result: String,
) -> braid_client::Result<()> {
    if let Store::Redis(conn) = &st.store {
        forced(&result)?;
        return bb
            .redis_check_adjust_amount(&mut conn.clone(), &redis_key(user), delta, REDIS_EXPIRE)
            .await;
    }
    guarded_sql(
        st,
        bb,
        "UPDATE braid_sdk_test.user_account SET balance = balance + ? WHERE user_id = ? AND balance + ? >= 0",
        vec![delta, user, delta],
        result,
        true,
    )
    .await
}

/// TCC on the trading balance (DTM's busi): try reserves, confirm moves, cancel releases.
async fn tcc(
    st: &BankState,
    bb: &BranchBarrier,
    phase: &str,
    user: i64,
    delta: i64,
    result: String,
) -> braid_client::Result<()> {
    if let Store::Redis(conn) = &st.store {
        forced(&result)?;
        let change = match phase {
            "try" => delta,
            "cancel" => -delta,
            _ => return Ok(()),
        };
        return bb
            .redis_check_adjust_amount(&mut conn.clone(), &redis_key(user), change, REDIS_EXPIRE)
            .await;
    }
    let (sql, args, must): (&'static str, Vec<i64>, bool) = match phase {
        "try" => (
            "UPDATE braid_sdk_test.user_account SET trading_balance = trading_balance + ? \
             WHERE user_id = ? AND trading_balance + ? + balance >= 0",
            vec![delta, user, delta],
            true,
        ),
        "confirm" => (
            "UPDATE braid_sdk_test.user_account SET trading_balance = trading_balance - ?, balance = balance + ? \
             WHERE user_id = ?",
            vec![delta, delta, user],
            false,
        ),
        _ => (
            "UPDATE braid_sdk_test.user_account SET trading_balance = trading_balance - ? WHERE user_id = ?",
            vec![delta, user],
            false,
        ),
    };
    guarded_sql(st, bb, sql, args, result, must).await
}

async fn handle(
    State(st): State<Arc<BankState>>,
    Path(route): Path<String>,
    q: BranchQuery,
    body: Bytes,
) -> Response {
    st.calls
        .lock()
        .unwrap()
        .push((route.clone(), q.gid.clone()));
    match dispatch(&st, &route, &q, &body).await {
        Ok(()) => braid_client::success(),
        Err(e) => e.into_response(),
    }
}

async fn dispatch(
    st: &BankState,
    route: &str,
    q: &BranchQuery,
    body: &[u8],
) -> braid_client::Result<()> {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let amount = v["amount"].as_i64().unwrap_or(0);
    let out_result = v["trans_out_result"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let in_result = v["trans_in_result"].as_str().unwrap_or_default().to_owned();
    let (out, inn) = (st.out_user, st.in_user);
    if route.ends_with("Xa") {
        let Store::Mysql(pool) = &st.store else {
            return Err(Error::other("XA needs the MariaDB bank"));
        };
        let (user, delta, result) = if route == "TransOutXa" {
            (out, -amount, out_result)
        } else {
            (inn, amount, in_result)
        };
        return braid_client::xa::local_transaction(pool, q, move |c| {
            Box::pin(async move {
                forced(&result)?;
                let done = sqlx::query(
                    "UPDATE braid_sdk_test.user_account SET balance = balance + ? WHERE user_id = ? AND balance + ? >= 0",
                )
                .bind(delta)
                .bind(user)
                .bind(delta)
                .execute(&mut *c)
                .await?;
                if done.rows_affected() == 0 {
                    return Err(Error::failure("Insufficient balance"));
                }
                Ok(())
            })
        })
        .await;
    }
    let bb = q.barrier()?;
    match route {
        "TransOut" => saga_adjust(st, &bb, out, -amount, out_result).await,
        "TransOutCompensate" => saga_adjust(st, &bb, out, amount, String::new()).await,
        "TransIn" => saga_adjust(st, &bb, inn, amount, in_result).await,
        "TransInCompensate" => saga_adjust(st, &bb, inn, -amount, String::new()).await,
        "TransOutTry" => tcc(st, &bb, "try", out, -amount, out_result).await,
        "TransOutConfirm" => tcc(st, &bb, "confirm", out, -amount, String::new()).await,
        "TransOutCancel" => tcc(st, &bb, "cancel", out, -amount, String::new()).await,
        "TransInTry" => tcc(st, &bb, "try", inn, amount, in_result).await,
        "TransInConfirm" => tcc(st, &bb, "confirm", inn, amount, String::new()).await,
        "TransInCancel" => tcc(st, &bb, "cancel", inn, amount, String::new()).await,
        "SleepCancel" => {
            let res = tcc(st, &bb, "cancel", out, -amount, String::new()).await;
            let hook = st
                .hook
                .lock()
                .unwrap()
                .as_ref()
                .map(|h| (h.finished.clone(), h.can_return.clone()));
            if let Some((finished, can_return)) = hook {
                let _ = finished.send(());
                let permit = can_return.acquire().await.expect("semaphore open");
                permit.forget();
            }
            res
        }
        "QueryPrepared" => match &st.store {
            Store::Mysql(pool) => bb.query_prepared(pool).await,
            Store::Postgres(pool) => bb.query_prepared(pool).await,
            Store::Redis(conn) => {
                bb.redis_query_prepared(&mut conn.clone(), REDIS_EXPIRE)
                    .await
            }
        },
        other => Err(Error::other(format!("no route {other}"))),
    }
}
