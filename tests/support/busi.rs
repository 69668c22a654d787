//! The test business service (DTM's `test/busi`, spec §14.2), over real HTTP on 127.0.0.1.
//!
//! - Routes under `/api/busi`: TransOut/TransIn (actions), TransOutRevert/TransInRevert (compensations),
//!   TransOutConfirm/TransInConfirm, the legacy `...Old` variants answering 200 `{"dtm_result": ...}`,
//!   `QueryPrepared` (GET), `TransOutHeaderYes`/`TransOutHeaderNo`, `AlertWebHook` (500 when the alert's gid
//!   contains "Error"), `workflow/resume` (the workflow callback), and a JSON-RPC endpoint `json-rpc`.
//! - [`Busi::wait_calls`] waits for calls that arrive on their own (alerts, callbacks) without sleeping.
//! - Result: first of (the next queued result for that route, the request field, "SUCCESS"). Queue results
//!   with [`Busi::push`]: each queued value is consumed by one call (DTM's one-shot `MainSwitch`).
//! - Every call is recorded ([`Busi::calls`]), with the DTM query parameters, headers and body.
//! - An in-memory ledger with barrier semantics (an action applies once; a compensation reverts only an
//!   applied action, and a compensation that runs first blocks the late action) gives balances to assert:
//!   user 1 pays in TransOut, user 2 receives in TransIn, both start at 10000.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use serde_json::{Value, json};

/// One recorded call.
#[derive(Debug, Clone)]
pub struct Call {
    pub route: String,
    pub method: String,
    pub gid: String,
    pub branch_id: String,
    pub op: String,
    pub trans_type: String,
    pub headers: HashMap<String, String>,
    pub body: String,
}

#[derive(Default)]
struct Inner {
    /// Wakes [`Busi::wait_calls`] whenever a call is recorded.
    arrived: Arc<tokio::sync::Notify>,
    calls: Vec<Call>,
    queued: HashMap<String, VecDeque<String>>,
    delays: HashMap<String, Duration>,
    balances: HashMap<u32, i64>,
    /// Barrier rows: (gid, branch_id, op-kind) already done.
    barrier: HashSet<(String, String, String)>,
}

/// A running business service. Cheap to clone.
#[derive(Clone)]
pub struct Busi {
    inner: Arc<Mutex<Inner>>,
    pub addr: SocketAddr,
}

/// The JSON body of a business call (`trans_out_Result` with the capital R, as in DTM).
pub fn req(amount: i64, out_result: &str, in_result: &str) -> String {
    json!({"amount": amount, "trans_out_Result": out_result, "trans_in_result": in_result})
        .to_string()
}

impl Busi {
    /// Starts the service on an ephemeral port.
    pub async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner {
            balances: HashMap::from([(1, 10_000), (2, 10_000)]),
            ..Default::default()
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind busi");
        let addr = listener.local_addr().expect("busi addr");
        let busi = Self { inner, addr };
        let app = Router::new()
            .route("/api/busi/json-rpc", post(json_rpc))
            .route("/api/busi/workflow/resume", any(workflow_resume))
            .route("/api/busi/{route}", any(handle))
            .with_state(busi.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        busi
    }

    /// `http://127.0.0.1:port/api/busi`.
    pub fn url(&self) -> String {
        format!("http://{}/api/busi", self.addr)
    }

    /// Queues results for `route`; each call consumes one.
    pub fn push(&self, route: &str, results: &[&str]) {
        let mut inner = self.inner.lock().expect("busi lock");
        inner
            .queued
            .entry(route.to_owned())
            .or_default()
            .extend(results.iter().map(|r| (*r).to_owned()));
    }

    /// Makes every call to `route` wait `delay` before answering.
    pub fn delay(&self, route: &str, delay: Duration) {
        self.inner
            .lock()
            .expect("busi lock")
            .delays
            .insert(route.to_owned(), delay);
    }

    /// Waits until `route` has received at least `n` calls and returns them (panics after 20 s without them).
    pub async fn wait_calls(&self, route: &str, n: usize) -> Vec<Call> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let arrived = self.inner.lock().expect("busi lock").arrived.clone();
            let notified = arrived.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let calls: Vec<Call> = self
                .calls()
                .into_iter()
                .filter(|c| c.route == route)
                .collect();
            if calls.len() >= n {
                return calls;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "{route} received {} calls within 20 s, expected {n}: {calls:?}",
                    calls.len()
                );
            }
        }
    }

    /// Calls of `route` received so far.
    pub fn calls_of(&self, route: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.route == route)
            .collect()
    }

    /// Every call received so far.
    pub fn calls(&self) -> Vec<Call> {
        self.inner.lock().expect("busi lock").calls.clone()
    }

    /// Calls of one gid, as `route` names, in arrival order.
    pub fn routes_of(&self, gid: &str) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter(|c| c.gid == gid)
            .map(|c| c.route)
            .collect()
    }

    /// Balance of user 1 (TransOut side) and user 2 (TransIn side).
    pub fn balances(&self) -> (i64, i64) {
        let inner = self.inner.lock().expect("busi lock");
        (inner.balances[&1], inner.balances[&2])
    }
}

fn respond(result: &str, legacy: bool) -> Response {
    if legacy {
        return (StatusCode::OK, axum::Json(json!({"dtm_result": result}))).into_response();
    }
    match result {
        "FAILURE" => (
            StatusCode::CONFLICT,
            axum::Json(json!({"error": "reason:Insufficient balance. FAILURE"})),
        )
            .into_response(),
        "ONGOING" => (
            StatusCode::from_u16(425).unwrap_or(StatusCode::CONFLICT),
            axum::Json(json!({"error": "ONGOING"})),
        )
            .into_response(),
        "ERROR" => (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({"error": "ERROR from user"})),
        )
            .into_response(),
        _ => (StatusCode::OK, "null").into_response(),
    }
}

/// Applies the ledger effect of a successful call, once per (gid, branch), with barrier semantics.
fn apply_ledger(inner: &mut Inner, route: &str, gid: &str, branch_id: &str, amount: i64) {
    let (user, sign, is_comp) = match route {
        "TransOut" | "TransOutOld" => (1, -1, false),
        "TransIn" | "TransInOld" => (2, 1, false),
        "TransOutRevert" | "TransOutRevertOld" => (1, 1, true),
        "TransInRevert" | "TransInRevertOld" => (2, -1, true),
        _ => return,
    };
    let key = |kind: &str| {
        (
            gid.to_owned(),
            branch_id.to_owned(),
            format!("{user}-{kind}"),
        )
    };
    if is_comp {
        // Insert the action's row too: a late action finds it and does nothing (no hanging).
        let action_was_applied = !inner.barrier.insert(key("action"));
        if inner.barrier.insert(key("compensate")) && action_was_applied {
            *inner.balances.entry(user).or_default() += sign * amount;
        }
    } else if inner.barrier.insert(key("action")) {
        *inner.balances.entry(user).or_default() += sign * amount;
    }
}

async fn handle(
    State(busi): State<Busi>,
    Path(route): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    method: axum::http::Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body_text = String::from_utf8_lossy(&body).into_owned();
    let parsed: Value = serde_json::from_str(&body_text).unwrap_or(Value::Null);
    let field = |k: &str| {
        parsed
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    // The alert webhook carries the gid in its JSON body, everything else in the query string.
    let gid = q.get("gid").cloned().unwrap_or_else(|| field("gid"));
    let call = Call {
        route: route.clone(),
        method: method.to_string(),
        gid,
        branch_id: q.get("branch_id").cloned().unwrap_or_default(),
        op: q.get("op").cloned().unwrap_or_default(),
        trans_type: q.get("trans_type").cloned().unwrap_or_default(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
            .collect(),
        body: body_text,
    };
    busi.record(call.clone());
    let (queued, delay) = {
        let mut inner = busi.inner.lock().expect("busi lock");
        let queued = inner.queued.get_mut(&route).and_then(VecDeque::pop_front);
        (queued, inner.delays.get(&route).copied())
    };
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    let from_request = match route.as_str() {
        "TransOut" | "TransOutOld" => field("trans_out_Result"),
        "TransIn" | "TransInOld" => field("trans_in_result"),
        _ => String::new(),
    };
    let mut result = queued.filter(|r| !r.is_empty()).unwrap_or(from_request);
    if result.is_empty() {
        result = "SUCCESS".to_owned();
    }
    match route.as_str() {
        "TransOutHeaderYes" if !call.headers.contains_key("test_header") => {
            result = "ERROR".to_owned()
        }
        "TransOutHeaderNo" if call.headers.contains_key("test_header") => {
            result = "ERROR".to_owned()
        }
        "AlertWebHook" if call.gid.contains("Error") => result = "ERROR".to_owned(),
        _ => {}
    }
    if result == "SUCCESS" {
        let amount = parsed.get("amount").and_then(Value::as_i64).unwrap_or(0);
        let mut inner = busi.inner.lock().expect("busi lock");
        apply_ledger(&mut inner, &route, &call.gid, &call.branch_id, amount);
    }
    respond(&result, route.ends_with("Old"))
}

impl Busi {
    fn record(&self, call: Call) {
        let mut inner = self.inner.lock().expect("busi lock");
        inner.calls.push(call);
        inner.arrived.notify_waiters();
    }
}

/// The workflow resume callback (`query_prepared` of HTTP workflows): recorded as route `workflow/resume`,
/// the workflow name in `op`; answers the next queued result of that route, else SUCCESS.
async fn workflow_resume(
    State(busi): State<Busi>,
    Query(q): Query<HashMap<String, String>>,
    method: axum::http::Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(
        State(busi),
        Path("workflow/resume".to_owned()),
        Query(q),
        method,
        headers,
        body,
    )
    .await
}

/// A JSON-RPC 2.0 business endpoint: the method name is the route; results as for HTTP, errors as codes.
async fn json_rpc(State(busi): State<Busi>, headers: HeaderMap, body: Bytes) -> Response {
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let method = parsed["method"].as_str().unwrap_or_default().to_owned();
    let params = parsed["params"].clone();
    let call = Call {
        route: format!("jrpc:{method}"),
        method: "POST".to_owned(),
        gid: params["gid"].as_str().unwrap_or_default().to_owned(),
        branch_id: params["branch_id"].as_str().unwrap_or_default().to_owned(),
        op: params["op"].as_str().unwrap_or_default().to_owned(),
        trans_type: params["trans_type"].as_str().unwrap_or_default().to_owned(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
            .collect(),
        body: params.to_string(),
    };
    let queued = {
        let mut inner = busi.inner.lock().expect("busi lock");
        inner
            .queued
            .get_mut("json-rpc")
            .and_then(VecDeque::pop_front)
    };
    busi.record(call);
    // The messages avoid the words FAILURE/ONGOING on purpose: the HTTP body check (spec §2.2) would
    // classify them before the error code is looked at, and these results must exercise the codes.
    let error = match queued.as_deref() {
        Some("FAILURE") => json!({"code": -32901, "message": "business said no"}),
        Some("ONGOING") => json!({"code": -32902, "message": "not done yet"}),
        Some("OTHER") => json!({"code": -23977, "message": "something else went wrong"}),
        _ => Value::Null,
    };
    axum::Json(json!({"jsonrpc": "2.0", "id": parsed["id"], "result": null, "error": error}))
        .into_response()
}
