//! 2-phase message (spec §7.2). A `prepared` msg past its timeout is back-checked through `query_prepared`:
//! SUCCESS submits it, FAILURE fails it, ONGOING/errors retry. A submitted msg waits out its `delay`, then
//! calls every `prepared` action (in order, stopping at the first that does not succeed; or all at once when
//! `concurrent`). A msg never rolls back after submit: every failure is retried.

use super::driver::{Calls, Pass, Step};
use super::kind::{Kind, step_bodies};
use super::{Engine, Error as EngineError, Result as EngineResult, TxnRequest};
use crate::invoke::CallOutcome;
use crate::model::{
    Branch, BranchId, BranchStatus, GlobalStatus, GlobalTxn, Millis, Op, TOPIC_SCHEME,
};

/// `custom_data.delay` in seconds (0 when absent or unreadable).
pub(crate) fn delay_secs(custom_data: &str) -> Result<i64, String> {
    if custom_data.trim().is_empty() {
        return Ok(0);
    }
    let v: serde_json::Value = serde_json::from_str(custom_data)
        .map_err(|e| format!("custom_data is not valid JSON: {e}"))?;
    match v.get("delay") {
        None | Some(serde_json::Value::Null) => Ok(0),
        Some(d) => d
            .as_i64()
            .filter(|d| (0..=crate::model::limits::MAX_TIMEOUT_SECS).contains(d))
            .ok_or_else(|| {
                format!(
                    "custom_data.delay must be an integer from 0 to {}",
                    crate::model::limits::MAX_TIMEOUT_SECS
                )
            }),
    }
}

pub(crate) async fn process(pass: &mut Pass<'_>) -> Step {
    if pass.txn.status == GlobalStatus::Prepared {
        if !pass.timed_out() {
            let timeout = pass.timeout_secs();
            pass.wake_at(pass.txn.create_time.plus_secs(timeout));
            return Ok(());
        }
        let url = pass.txn.query_prepared.clone();
        let outcome = pass
            .call_url(url, "00", Op::Msg.as_str(), Vec::new())
            .await?;
        match outcome {
            // The back-check's SUCCESS is a decision the actions depend on: it is durable before the first
            // action is sent, so a concurrent `abort` cannot fail a message whose actions already run.
            CallOutcome::Success => {
                pass.set_status(GlobalStatus::Submitted, None);
                pass.save().await?;
            }
            CallOutcome::Failure(msg) => {
                pass.set_status(
                    GlobalStatus::Failed,
                    Some(format!("query_prepared answered FAILURE: {msg}")),
                );
                return Ok(());
            }
            // ONGOING from the back-check restarts the interval (not a fault of anyone).
            CallOutcome::Ongoing => {
                pass.error = Some(super::PassError::Ongoing);
                return Ok(());
            }
            other @ CallOutcome::Error(_) => {
                pass.note(&other);
                return Ok(());
            }
        }
    }
    if pass.txn.status != GlobalStatus::Submitted {
        return Ok(());
    }
    let delay = delay_secs(&pass.txn.custom_data).unwrap_or(0);
    if delay > 0 {
        let due = pass.txn.create_time.plus_secs(delay);
        if pass.now < due {
            pass.wake_at(due);
            return Ok(());
        }
    }
    let todo: Vec<usize> = pass
        .branches
        .iter()
        .enumerate()
        .filter(|(_, b)| b.op == Op::Action && b.status == BranchStatus::Prepared)
        .map(|(i, _)| i)
        .collect();
    if pass.txn.options.concurrent {
        let mut calls = Calls::new();
        for &i in &todo {
            let call = pass.start(i).await?;
            calls.push(call);
        }
        while let Some((idx, outcome)) = pass.next(&mut calls).await? {
            record(pass, idx, outcome);
        }
    } else {
        for i in todo {
            let (idx, outcome) = pass.call(i).await?;
            if !record(pass, idx, outcome) {
                break;
            }
        }
    }
    let all_done = pass
        .branches
        .iter()
        .filter(|b| b.op == Op::Action)
        .all(|b| b.status == BranchStatus::Succeed);
    if all_done {
        pass.set_status(GlobalStatus::Succeed, None);
    }
    Ok(())
}

/// Records an action's answer; FAILURE is retried like an error. Returns whether it succeeded.
fn record(pass: &mut Pass<'_>, idx: usize, outcome: CallOutcome) -> bool {
    if outcome.is_success() {
        pass.set_branch(idx, BranchStatus::Succeed);
        true
    } else {
        pass.note(&outcome);
        false
    }
}

/// The 2-phase message type: action branches from its steps (a `topic://` step: one per subscriber),
/// and its pass.
pub(crate) struct Msg;

#[async_trait::async_trait]
impl Kind for Msg {
    fn check_custom_data(&self, custom_data: &str, _steps: usize) -> Result<(), String> {
        delay_secs(custom_data).map(|_| ())
    }

    async fn initial_branches(
        &self,
        engine: &Engine,
        req: &TxnRequest,
        now: Millis,
    ) -> EngineResult<Vec<Branch>> {
        let bodies = step_bodies(req);
        let gid = &req.gid;
        let mut out = Vec::with_capacity(req.steps.len());
        for (i, step) in req.steps.iter().enumerate() {
            let action = step.get("action").cloned().unwrap_or_default();
            let id = BranchId::for_step(i);
            let body = bodies.get(i).cloned().unwrap_or_default();
            let Some(topic) = action.strip_prefix(TOPIC_SCHEME) else {
                out.push(Branch::new(gid, id, Op::Action, action, body, now));
                continue;
            };
            let subscribers = engine.subscribers(topic).await?;
            if subscribers.is_empty() {
                return Err(EngineError::BadRequest(format!(
                    "topic not found: '{topic}' has no subscribers"
                )));
            }
            let single = subscribers.len() == 1;
            for (j, sub) in subscribers.into_iter().enumerate() {
                let bid = if single {
                    id.clone()
                } else {
                    BranchId::new(format!("{id}-{:02}", j + 1))
                };
                out.push(Branch::new(
                    gid,
                    bid,
                    Op::Action,
                    sub.url,
                    body.clone(),
                    now,
                ));
            }
        }
        Ok(out)
    }

    /// A prepared msg that its client aborts fails at once: nothing was sent.
    fn fails_on_abort(&self, status: GlobalStatus) -> bool {
        status == GlobalStatus::Prepared
    }

    /// A submitted msg without delay whose actions all have empty URLs.
    fn calls_nothing(&self, txn: &GlobalTxn, branches: &[Branch]) -> bool {
        txn.status == GlobalStatus::Submitted
            && delay_secs(&txn.custom_data) == Ok(0)
            && branches.iter().all(|b| b.url.is_empty())
    }

    async fn process(&self, pass: &mut Pass<'_>) -> Step {
        process(pass).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_is_read_from_custom_data() {
        assert_eq!(delay_secs(""), Ok(0));
        assert_eq!(delay_secs(r#"{"delay":10}"#), Ok(10));
        assert_eq!(delay_secs(r#"{"other":1}"#), Ok(0));
        assert!(delay_secs(r#"{"delay":"10"}"#).is_err());
        assert!(delay_secs(r#"{"delay":-1}"#).is_err());
    }
}
