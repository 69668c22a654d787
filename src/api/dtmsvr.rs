//! Handlers of `/api/dtmsvr/*` (spec §4.1).

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use super::body::{
    RawBody, TransBody, parse_gid, parse_json, parse_register, parse_trans_type, query_num,
};
use super::request::TopicInput;
use super::{AppState, Error, Result, render};
use crate::engine::{PassError, PassResult, SubmitOutcome, TxnFilter};
use crate::model::{Gid, GlobalStatus, Millis, TransType};

/// `{"dtm_result":"SUCCESS"}`.
fn success() -> Json<Value> {
    Json(json!({"dtm_result": "SUCCESS"}))
}

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/version", get(version))
        .route("/newGid", get(new_gid))
        .route("/prepare", post(prepare))
        .route("/submit", post(submit))
        .route("/abort", post(abort))
        .route("/forceStop", post(force_stop))
        .route("/registerBranch", post(register_branch))
        .route("/registerXaBranch", post(register_branch))
        .route("/registerTccBranch", post(register_branch))
        .route("/prepareWorkflow", post(prepare_workflow))
        .route("/query", get(query))
        .route("/all", get(all))
        .route("/resetCronTime", get(reset_cron_time))
        .route("/resetNextCronTime", post(reset_next_cron_time))
        .route("/subscribe", get(subscribe))
        .route("/unsubscribe", get(unsubscribe))
        .route("/topic/{name}", delete(delete_topic))
        .route("/scanKV", get(scan_kv))
        .route("/queryKV", get(query_kv))
}

/// The routes the admin page calls, served again under its base path when it has one.
pub(crate) fn page_routes() -> Router<AppState> {
    Router::new()
        .route("/version", get(version))
        .route("/all", get(all))
        .route("/query", get(query))
        .route("/forceStop", post(force_stop))
        .route("/resetNextCronTime", post(reset_next_cron_time))
}

async fn version() -> Json<Value> {
    Json(json!({"version": concat!("v", env!("CARGO_PKG_VERSION"))}))
}

async fn new_gid(State(s): State<AppState>) -> Json<Value> {
    Json(json!({"gid": s.engine.new_gid().as_str(), "dtm_result": "SUCCESS"}))
}

async fn prepare(State(s): State<AppState>, RawBody(body): RawBody) -> Result<Json<Value>> {
    let req = parse_json::<TransBody>(&body)?.into_request()?;
    s.engine.prepare(req).await?;
    Ok(success())
}

/// What a submit/abort answers: SUCCESS at once, or the outcome of the synchronous (`wait_result`) pass
/// (spec §4.3). Shared by HTTP, gRPC and JSON-RPC.
pub(crate) fn submit_reply(outcome: SubmitOutcome) -> Result<()> {
    match outcome {
        SubmitOutcome::Accepted => Ok(()),
        // A transaction that turned to `aborting` has its answer: it rolls back. A compensation still to be
        // retried does not change that, so it is a 409 with the reason, as for `failed` (DTM does the same).
        SubmitOutcome::Processed(result) if result.status == GlobalStatus::Aborting => {
            Err(rolled_back(result.rollback_reason))
        }
        SubmitOutcome::Processed(result) => pass_reply(result),
    }
}

/// 409 with the rollback reason (DTM's text when there is none).
fn rolled_back(rollback_reason: String) -> Error {
    if rollback_reason.is_empty() {
        Error::Failure("wait result not return success".to_owned())
    } else {
        Error::Failure(rollback_reason)
    }
}

fn pass_reply(result: PassResult) -> Result<()> {
    match result.status {
        GlobalStatus::Succeed => Ok(()),
        GlobalStatus::Failed => Err(rolled_back(result.rollback_reason)),
        _ => match result.error {
            Some(PassError::Ongoing) => Err(Error::Ongoing("ONGOING".to_owned())),
            Some(PassError::Failure(m)) => Err(Error::Internal(m)),
            // A transport error (connection refused, a protocol error, ...) would tell any caller what
            // listens where: the detail goes to the log, the caller gets a generic reason.
            Some(PassError::Error(m)) => {
                tracing::info!(error = %m, "a branch call of a wait_result submit failed");
                Err(Error::Internal(
                    "a branch call failed; the transaction will be retried".to_owned(),
                ))
            }
            None => Err(Error::Failure(format!(
                "wait result not return success: status is '{}'",
                result.status
            ))),
        },
    }
}

async fn submit(State(s): State<AppState>, RawBody(body): RawBody) -> Result<Json<Value>> {
    let req = parse_json::<TransBody>(&body)?.into_request()?;
    submit_reply(s.engine.submit(req).await?)?;
    Ok(success())
}

async fn abort(State(s): State<AppState>, RawBody(body): RawBody) -> Result<Json<Value>> {
    let b: TransBody = parse_json(&body)?;
    let gid = parse_gid(&b.gid)?;
    let trans_type = parse_trans_type(&b.trans_type)?;
    submit_reply(s.engine.abort(&gid, trans_type, b.rollback_reason).await?)?;
    Ok(success())
}

#[derive(serde::Deserialize)]
struct GidBody {
    #[serde(default)]
    gid: Option<String>,
}

fn gid_of(body: &[u8]) -> Result<Gid> {
    let b: GidBody = parse_json(body)?;
    parse_gid(b.gid.as_deref().unwrap_or_default())
}

async fn force_stop(State(s): State<AppState>, RawBody(body): RawBody) -> Result<Json<Value>> {
    s.engine.force_stop(&gid_of(&body)?).await?;
    Ok(success())
}

async fn register_branch(State(s): State<AppState>, RawBody(body): RawBody) -> Result<Json<Value>> {
    let b = parse_register(&body)?;
    s.engine
        .register_branch(&b.gid, b.trans_type, b.branch_id, b.data, &b.fields)
        .await?;
    Ok(success())
}

async fn prepare_workflow(
    State(s): State<AppState>,
    RawBody(body): RawBody,
) -> Result<Json<Value>> {
    let mut req = parse_json::<TransBody>(&body)?.into_request()?;
    req.trans_type = TransType::Workflow;
    let (txn, branches) = s.engine.prepare_workflow(req).await?;
    let progresses: Vec<Value> = branches.iter().map(render::branch).collect();
    Ok(Json(
        json!({"transaction": render::txn(&txn), "progresses": progresses}),
    ))
}

async fn query(
    State(s): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>> {
    let raw = q.get("gid").map(String::as_str).unwrap_or_default();
    if raw.is_empty() {
        return Err(Error::BadRequest(
            "query parameter 'gid' is required (no gid specified)".to_owned(),
        ));
    }
    let gid = parse_gid(raw)?;
    let Some((txn, branches)) = s.engine.query(&gid).await? else {
        return Ok(Json(json!({"transaction": null, "branches": []})));
    };
    let branches: Vec<Value> = branches.iter().map(render::branch).collect();
    Ok(Json(
        json!({"transaction": render::txn(&txn), "branches": branches}),
    ))
}

async fn all(
    State(s): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>> {
    if let Some(raw) = q.get("gid").filter(|g| !g.is_empty()) {
        let gid = parse_gid(raw)?;
        let found: Vec<Value> = s.engine.find(&gid).await?.iter().map(render::txn).collect();
        return Ok(Json(json!({"transactions": found, "next_position": ""})));
    }
    let limit: u32 = query_num(&q, "limit", 100)?;
    if limit == 0 || limit > 1000 {
        return Err(Error::BadRequest(format!(
            "query parameter 'limit' must be between 1 and 1000, got {limit}"
        )));
    }
    let status = match q.get("status").filter(|v| !v.is_empty()) {
        Some(v) => Some(
            v.parse::<GlobalStatus>()
                .map_err(|e| Error::BadRequest(format!("query parameter 'status': {e}")))?,
        ),
        None => None,
    };
    let trans_type = match q.get("transType").filter(|v| !v.is_empty()) {
        Some(v) => Some(
            v.parse::<TransType>()
                .map_err(|e| Error::BadRequest(format!("query parameter 'transType': {e}")))?,
        ),
        None => None,
    };
    let position: i64 = query_num(&q, "position", 0)?;
    let start: i64 = query_num(&q, "createTimeStart", 0)?;
    let end: i64 = query_num(&q, "createTimeEnd", 0)?;
    let filter = TxnFilter {
        before_id: (position > 0).then_some(position),
        limit,
        status,
        trans_type,
        create_time_start: (start > 0).then_some(Millis(start)),
        create_time_end: (end > 0).then_some(Millis(end)),
    };
    let txns = s.engine.list(&filter).await?;
    let next = if txns.len() == limit as usize {
        txns.last().map(|t| t.id.to_string()).unwrap_or_default()
    } else {
        String::new()
    };
    let list: Vec<Value> = txns.iter().map(render::txn).collect();
    Ok(Json(json!({"transactions": list, "next_position": next})))
}

async fn reset_cron_time(
    State(s): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>> {
    let default_timeout = 3 * s.engine.options().timeout_to_fail;
    let timeout: i64 = query_num(&q, "timeout", default_timeout)?;
    let limit: u32 = query_num(&q, "limit", 100)?;
    if limit == 0 {
        return Err(Error::BadRequest(
            "query parameter 'limit' must be positive".to_owned(),
        ));
    }
    let count = s.engine.reset_cron_time(timeout, limit).await?;
    Ok(Json(
        json!({"has_remaining": count == u64::from(limit), "succeed_count": count}),
    ))
}

async fn reset_next_cron_time(
    State(s): State<AppState>,
    RawBody(body): RawBody,
) -> Result<Json<Value>> {
    let gid = gid_of(&body)?;
    if !s.engine.reset_next_cron_time(&gid).await? {
        return Err(Error::NotFound(format!("no transaction with gid '{gid}'")));
    }
    Ok(success())
}

fn required<'a>(q: &'a HashMap<String, String>, name: &str) -> Result<&'a str> {
    q.get(name)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| Error::BadRequest(format!("query parameter '{name}' is required")))
}

async fn subscribe(
    State(s): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>> {
    let topic = required(&q, "topic")?;
    let url = required(&q, "url")?;
    let remark = q.get("remark").cloned().unwrap_or_default();
    add_subscriber(&s, topic, url, &remark).await?;
    Ok(success())
}

/// Adds `url` to `topic` (creating the topic); a duplicate url is a FAILURE.
pub(crate) async fn add_subscriber(
    s: &AppState,
    topic: &str,
    url: &str,
    remark: &str,
) -> Result<()> {
    TopicInput {
        topic: topic.to_owned(),
        url: url.to_owned(),
        remark: remark.to_owned(),
    }
    .validate()?;
    Ok(s.engine.subscribe(topic, url, remark).await?)
}

async fn unsubscribe(
    State(s): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>> {
    remove_subscriber(&s, required(&q, "topic")?, required(&q, "url")?).await?;
    Ok(success())
}

/// Removes `url` from `topic`.
pub(crate) async fn remove_subscriber(s: &AppState, topic: &str, url: &str) -> Result<()> {
    let input = TopicInput {
        topic: topic.to_owned(),
        url: url.to_owned(),
        remark: String::new(),
    };
    input.validate_topic()?;
    if url.is_empty() {
        return Err(Error::BadRequest("field 'url' is required".to_owned()));
    }
    Ok(s.engine.unsubscribe(topic, url).await?)
}

async fn delete_topic(State(s): State<AppState>, Path(name): Path<String>) -> Result<Json<Value>> {
    remove_topic(&s, &name).await?;
    Ok(success())
}

/// Deletes a topic.
pub(crate) async fn remove_topic(s: &AppState, name: &str) -> Result<()> {
    TopicInput {
        topic: name.to_owned(),
        ..TopicInput::default()
    }
    .validate_topic()?;
    Ok(s.engine.delete_topic(name).await?)
}

async fn scan_kv(
    State(s): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>> {
    let position: i64 = query_num(&q, "position", 0)?;
    let limit: u32 = query_num(&q, "limit", 100)?;
    if limit == 0 || limit > 1000 {
        return Err(Error::BadRequest(format!(
            "query parameter 'limit' must be between 1 and 1000, got {limit}"
        )));
    }
    // As DTM: no category is the empty one, which holds nothing.
    let cat = match q.get("cat").map(String::as_str) {
        None | Some("") => return Ok(Json(json!({"kv": [], "next_position": ""}))),
        Some(_) => required(&q, "cat")?,
    };
    let rows = s
        .engine
        .kv_scan(cat, (position > 0).then_some(position), limit)
        .await?;
    let next = if rows.len() == limit as usize {
        rows.last().map(|r| r.id.to_string()).unwrap_or_default()
    } else {
        String::new()
    };
    let kv: Vec<Value> = rows.iter().map(render::kv).collect();
    Ok(Json(json!({"kv": kv, "next_position": next})))
}

async fn query_kv(
    State(s): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>> {
    let cat = required(&q, "cat")?;
    let key = q.get("key").map(String::as_str).unwrap_or_default();
    let rows = if key.is_empty() {
        s.engine.kv_scan(cat, None, 1000).await?
    } else {
        s.engine.kv_find(cat, key).await?.into_iter().collect()
    };
    let kv: Vec<Value> = rows.iter().map(render::kv).collect();
    Ok(Json(json!({"kv": kv})))
}
