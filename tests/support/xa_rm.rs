//! A small XA resource manager for the XA tests (spec §7.4): real MariaDB XA transactions on a balance
//! table in a database of its own, behind an axum service on 127.0.0.1.
//!
//! - `POST /api/xa/{TransOutXa|TransInXa}?gid&branch_id&dtm` (the branch action, called by the test playing
//!   the AP): `XA START '<gid>-<branch_id>'`, move the amount of the JSON body (`busi::req`) on user 1
//!   (TransOut pays) or user 2 (TransIn receives), `registerBranch {trans_type:"xa", url:<phase-2 url>}` at
//!   `dtm`, then `XA END` and `XA PREPARE`. A FAILURE result (queued or in the body, as in the HTTP busi) or
//!   a refused registration ends and rolls back the local XA transaction and answers 409.
//! - `POST /api/xa/phase2?gid&branch_id&op=commit|rollback` (called by braid): `XA COMMIT`/`XA ROLLBACK`.
//!   An unknown xid (XAER_NOTA, 1397) counts as done, so repeated phase-2 calls are harmless. Queue
//!   `ERROR` on route `phase2` to answer 500 without touching the xid, `LOST` to do the work and then
//!   answer 500 (the reply got lost).
//! - [`XaRm::finish`] lists this RM's xids still in `XA RECOVER`, rolls them back (so dropping the database
//!   cannot block on their locks), drops the database and returns the leftovers for the test to assert on.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use sqlx::Connection as _;
use sqlx::mysql::MySqlConnection;

/// One recorded call: (route, gid, branch_id, op).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XaCall {
    pub route: String,
    pub gid: String,
    pub branch_id: String,
    pub op: String,
}

#[derive(Default)]
struct Inner {
    calls: Vec<XaCall>,
    queued: HashMap<String, VecDeque<String>>,
    gids: HashSet<String>,
}

/// A running resource manager. Cheap to clone.
#[derive(Clone)]
pub struct XaRm {
    inner: Arc<Mutex<Inner>>,
    http: reqwest::Client,
    pub addr: SocketAddr,
    /// DSN of the RM's own database.
    pub dsn: String,
    db: String,
}

const XAER_NOTA: u16 = 1397;

/// Runs one statement as plain text: a `&str` without arguments goes over the text protocol, and XA
/// statements cannot be prepared. (`sqlx::raw_sql` would do too, but its future is not provably `Send`
/// in an axum handler.)
async fn exec(conn: &mut MySqlConnection, sql: &str) -> Result<(), sqlx::Error> {
    sqlx::Executor::execute(&mut *conn, sql).await.map(|_| ())
}

fn is_unknown_xid(e: &sqlx::Error) -> bool {
    // `code()` is only the SQLSTATE for MySQL; the error number tells XAER_NOTA apart.
    let number = match e {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
            .map(|m| m.number()),
        _ => None,
    };
    number == Some(XAER_NOTA)
}

impl XaRm {
    /// Creates a fresh database with users 1 and 2 at 10000 and starts the service on an ephemeral port.
    pub async fn start() -> Self {
        let db = format!("braid_xa_{}", braid::model::short_uuid().to_lowercase());
        let base = super::mysql_base();
        let mut admin = MySqlConnection::connect(&format!("{base}/"))
            .await
            .expect("connect to MariaDB");
        exec(&mut admin, &format!("CREATE DATABASE `{db}`"))
            .await
            .expect("create RM database");
        admin.close().await.ok();
        let dsn = format!("{base}/{db}");
        let mut conn = MySqlConnection::connect(&dsn)
            .await
            .expect("connect to RM database");
        exec(&mut conn, "CREATE TABLE user_account (user_id INT PRIMARY KEY, balance BIGINT NOT NULL) ENGINE=InnoDB")
            .await
            .expect("create balance table");
        exec(
            &mut conn,
            "INSERT INTO user_account VALUES (1, 10000), (2, 10000)",
        )
        .await
        .expect("seed balances");
        conn.close().await.ok();

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind xa rm");
        let addr = listener.local_addr().expect("xa rm addr");
        let rm = Self {
            inner: Arc::default(),
            http: reqwest::Client::new(),
            addr,
            dsn,
            db,
        };
        let app = Router::new()
            .route("/api/xa/phase2", post(phase2))
            .route("/api/xa/{route}", post(action))
            .with_state(rm.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        rm
    }

    /// The URL braid calls for phase 2.
    pub fn phase2_url(&self) -> String {
        format!("http://{}/api/xa/phase2", self.addr)
    }

    /// Queues results for `route` (`TransOutXa`, `TransInXa`, `phase2`); each call consumes one.
    pub fn push(&self, route: &str, results: &[&str]) {
        let mut inner = self.inner.lock().expect("xa rm lock");
        inner
            .queued
            .entry(route.to_owned())
            .or_default()
            .extend(results.iter().map(|r| (*r).to_owned()));
    }

    /// Every call received so far.
    pub fn calls(&self) -> Vec<XaCall> {
        self.inner.lock().expect("xa rm lock").calls.clone()
    }

    /// The phase-2 calls of `gid` as `(branch_id, op)`, in arrival order.
    pub fn phase2_of(&self, gid: &str) -> Vec<(String, String)> {
        self.calls()
            .into_iter()
            .filter(|c| c.gid == gid && c.route == "phase2")
            .map(|c| (c.branch_id, c.op))
            .collect()
    }

    /// The test as AP: calls a branch action the way DTM's XA client does. Returns the HTTP status.
    pub async fn call_action(
        &self,
        route: &str,
        dtm: &str,
        gid: &str,
        branch_id: &str,
        body: &str,
    ) -> u16 {
        let url = format!("http://{}/api/xa/{route}", self.addr);
        let resp = self
            .http
            .post(url)
            .query(&[
                ("gid", gid),
                ("branch_id", branch_id),
                ("trans_type", "xa"),
                ("op", "action"),
                ("dtm", dtm),
            ])
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .expect("xa action sent");
        resp.status().as_u16()
    }

    /// Balances of user 1 (TransOut side) and user 2 (TransIn side), as committed.
    pub async fn balances(&self) -> (i64, i64) {
        let mut conn = MySqlConnection::connect(&self.dsn)
            .await
            .expect("connect to RM database");
        let rows: Vec<(i32, i64)> =
            sqlx::query_as("SELECT user_id, balance FROM user_account ORDER BY user_id")
                .fetch_all(&mut conn)
                .await
                .expect("read balances");
        conn.close().await.ok();
        let get = |u: i32| {
            rows.iter()
                .find(|r| r.0 == u)
                .map(|r| r.1)
                .expect("user row exists")
        };
        (get(1), get(2))
    }

    /// The xids of this RM's transactions that MariaDB still holds prepared (`XA RECOVER`).
    pub async fn recover(&self) -> Vec<String> {
        let gids = self.inner.lock().expect("xa rm lock").gids.clone();
        let mut conn = MySqlConnection::connect(&self.dsn)
            .await
            .expect("connect to RM database");
        let rows = sqlx::Executor::fetch_all(&mut conn, "XA RECOVER")
            .await
            .expect("XA RECOVER works");
        conn.close().await.ok();
        rows.iter()
            .filter_map(|row| {
                use sqlx::Row as _;
                let data: Vec<u8> = row.try_get("data").ok()?;
                Some(String::from_utf8_lossy(&data).into_owned())
            })
            .filter(|xid| gids.iter().any(|g| xid.starts_with(&format!("{g}-"))))
            .collect()
    }

    /// Returns the xids left prepared, after rolling them back and dropping the RM database.
    pub async fn finish(self) -> Vec<String> {
        let leftovers = self.recover().await;
        let mut conn = MySqlConnection::connect(&self.dsn)
            .await
            .expect("connect to RM database");
        for xid in &leftovers {
            let _ = exec(&mut conn, &format!("XA ROLLBACK '{xid}'")).await;
        }
        let _ = exec(&mut conn, &format!("DROP DATABASE IF EXISTS `{}`", self.db)).await;
        conn.close().await.ok();
        leftovers
    }

    fn record(&self, route: &str, q: &HashMap<String, String>) -> Option<String> {
        let get = |k: &str| q.get(k).cloned().unwrap_or_default();
        let mut inner = self.inner.lock().expect("xa rm lock");
        inner.gids.insert(get("gid"));
        inner.calls.push(XaCall {
            route: route.to_owned(),
            gid: get("gid"),
            branch_id: get("branch_id"),
            op: get("op"),
        });
        inner.queued.get_mut(route).and_then(VecDeque::pop_front)
    }
}

fn fail(status: StatusCode, msg: String) -> Response {
    (status, axum::Json(json!({"error": msg}))).into_response()
}

async fn action(
    State(rm): State<XaRm>,
    Path(route): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let queued = rm.record(&route, &q);
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let field = |k: &str| {
        parsed
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let (user, sign, from_request) = match route.as_str() {
        "TransOutXa" => (1, -1, field("trans_out_Result")),
        "TransInXa" => (2, 1, field("trans_in_result")),
        _ => return fail(StatusCode::NOT_FOUND, format!("no XA route {route}")),
    };
    let result = queued.filter(|r| !r.is_empty()).unwrap_or(from_request);
    let amount = parsed.get("amount").and_then(Value::as_i64).unwrap_or(0);
    let (gid, branch_id, dtm) = (
        &q["gid"],
        &q["branch_id"],
        q.get("dtm").cloned().unwrap_or_default(),
    );
    let xid = format!("{gid}-{branch_id}");
    let mut conn = match MySqlConnection::connect(&rm.dsn).await {
        Ok(c) => c,
        Err(e) => return fail(StatusCode::INTERNAL_SERVER_ERROR, format!("connect: {e}")),
    };
    let outcome = async {
        exec(&mut conn, &format!("XA START '{xid}'")).await.map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        let local = async {
            if result == "FAILURE" {
                return Err((StatusCode::CONFLICT, "reason:Insufficient balance. FAILURE".to_owned()));
            }
            let sql = format!("UPDATE user_account SET balance = balance + {} WHERE user_id = {user}", sign * amount);
            exec(&mut conn, &sql).await.map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            let reg = json!({"gid": gid, "trans_type": "xa", "branch_id": branch_id, "url": rm.phase2_url()});
            let resp = rm
                .http
                .post(format!("{dtm}/registerBranch"))
                .body(reg.to_string())
                .send()
                .await
                .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            let status = resp.status();
            if status != StatusCode::OK {
                let text = resp.text().await.unwrap_or_default();
                return Err((status, format!("registerBranch answered {status}: {text}")));
            }
            Ok(())
        }
        .await;
        exec(&mut conn, &format!("XA END '{xid}'")).await.map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        match local {
            Ok(()) => exec(&mut conn, &format!("XA PREPARE '{xid}'")).await.map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
            Err(e) => {
                let _ = exec(&mut conn, &format!("XA ROLLBACK '{xid}'")).await;
                Err(e)
            }
        }
    }
    .await;
    conn.close().await.ok();
    match outcome {
        Ok(()) => (StatusCode::OK, "null").into_response(),
        Err((status, msg)) => fail(status, msg),
    }
}

async fn phase2(State(rm): State<XaRm>, Query(q): Query<HashMap<String, String>>) -> Response {
    let queued = rm.record("phase2", &q);
    if queued.as_deref() == Some("ERROR") {
        return fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            "phase 2 unavailable".to_owned(),
        );
    }
    let get = |k: &str| q.get(k).cloned().unwrap_or_default();
    let xid = format!("{}-{}", get("gid"), get("branch_id"));
    let verb = match get("op").as_str() {
        "commit" => "COMMIT",
        "rollback" => "ROLLBACK",
        other => {
            return fail(
                StatusCode::BAD_REQUEST,
                format!("unknown phase-2 op '{other}'"),
            );
        }
    };
    let mut conn = match MySqlConnection::connect(&rm.dsn).await {
        Ok(c) => c,
        Err(e) => return fail(StatusCode::INTERNAL_SERVER_ERROR, format!("connect: {e}")),
    };
    let done = exec(&mut conn, &format!("XA {verb} '{xid}'")).await;
    conn.close().await.ok();
    match done {
        Ok(()) => {}
        Err(e) if is_unknown_xid(&e) => {}
        Err(e) => {
            return fail(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("XA {verb} '{xid}': {e}"),
            );
        }
    }
    if queued.as_deref() == Some("LOST") {
        return fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            "phase 2 done, reply lost".to_owned(),
        );
    }
    (StatusCode::OK, "null").into_response()
}
