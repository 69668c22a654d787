//! Saga (spec §7.1). Branches are stored `[c1, a1, c2, a2, ...]`: per step a compensation then an action.
//!
//! Forward: run every runnable `prepared` action (sequential: after the previous one succeeded; concurrent:
//! after its `orders` prerequisites succeeded). A FAILURE marks the action `failed` and turns the saga to
//! `aborting`. ONGOING and errors leave the action `prepared` for the next pass (after the retry interval,
//! with backoff); under `retry_limit` each such pass counts one retry (stored in `retry_count`), and once the
//! limit is used up the saga aborts. DTM retries at once in memory; braid waits, so a failing branch cannot
//! make a pass spin.
//!
//! `aborting` is written (with the failed action, the reason and the retries used) before the first
//! compensation is sent, so no later pass can run an action whose step may have been compensated.
//!
//! Backward: every action that may have run (finished, failed, started in this pass, or runnable now and so
//! possibly started by an earlier pass whose answer was lost) gets its compensation, in reverse dependency
//! order: a step is compensated only after every step that depended on it.

use std::collections::BTreeMap;

use super::driver::{Calls, Pass, Step};
use super::kind::{Kind, step_bodies};
use super::{Engine, Result as EngineResult, TxnRequest};
use crate::invoke::CallOutcome;
use crate::model::{Branch, BranchId, BranchStatus, GlobalStatus, GlobalTxn, Millis, Op};

/// The saga's step graph.
struct Steps {
    action: Vec<usize>,
    compensate: Vec<Option<usize>>,
    /// `prereqs[i]`: steps whose actions must succeed before step i's action runs.
    prereqs: Vec<Vec<usize>>,
}

/// Parsed `custom_data` of a saga: `{"concurrent": bool, "orders": {"<step>": [<prereq steps>]}}`.
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct SagaCustom {
    #[serde(default)]
    pub(crate) concurrent: bool,
    #[serde(default)]
    pub(crate) orders: BTreeMap<String, Vec<usize>>,
}

/// Parses and checks saga custom data against the number of steps. The API calls it to reject bad input.
pub(crate) fn parse_custom(custom_data: &str, steps: usize) -> Result<SagaCustom, String> {
    if custom_data.trim().is_empty() {
        return Ok(SagaCustom::default());
    }
    let custom: SagaCustom = serde_json::from_str(custom_data)
        .map_err(|e| format!("custom_data is not valid saga options: {e}"))?;
    // waiting[i]: prerequisites of step i not yet satisfied; dependents[p]: steps that wait for p.
    let mut waiting = vec![0usize; steps];
    let mut dependents = vec![Vec::new(); steps];
    for (k, prereqs) in &custom.orders {
        let step: usize = k
            .parse()
            .map_err(|_| format!("custom_data.orders key '{k}' is not a step index"))?;
        if step >= steps || prereqs.iter().any(|p| *p >= steps || *p == step) {
            return Err(format!(
                "custom_data.orders entry '{k}' refers to a step outside 0..{steps} or to itself"
            ));
        }
        waiting[step] = prereqs.len();
        for &p in prereqs {
            dependents[p].push(step);
        }
    }
    // A step in a cycle of orders could never run, and the saga would be retried forever: reject it.
    let mut ready: Vec<usize> = (0..steps).filter(|&i| waiting[i] == 0).collect();
    while let Some(p) = ready.pop() {
        for &d in &dependents[p] {
            waiting[d] -= 1;
            if waiting[d] == 0 {
                ready.push(d);
            }
        }
    }
    if let Some(stuck) = waiting.iter().position(|w| *w > 0) {
        return Err(format!(
            "custom_data.orders has a cycle: step {stuck} can never run"
        ));
    }
    Ok(custom)
}

fn build_steps(pass: &Pass<'_>) -> Steps {
    let action: Vec<usize> = pass
        .branches
        .iter()
        .enumerate()
        .filter(|(_, b)| b.op == Op::Action)
        .map(|(i, _)| i)
        .collect();
    let compensate = action
        .iter()
        .map(|&a| pass.find(pass.branches[a].branch_id.as_str(), Op::Compensate))
        .collect();
    let n = action.len();
    let custom = parse_custom(&pass.txn.custom_data, n).unwrap_or_else(|e| {
        tracing::warn!(braid.gid = %pass.txn.gid, error = %e, "ignoring invalid saga custom_data");
        SagaCustom::default()
    });
    let prereqs = if custom.concurrent {
        (0..n)
            .map(|i| {
                custom
                    .orders
                    .get(&i.to_string())
                    .cloned()
                    .unwrap_or_default()
            })
            .collect()
    } else {
        (0..n)
            .map(|i| if i == 0 { Vec::new() } else { vec![i - 1] })
            .collect()
    };
    Steps {
        action,
        compensate,
        prereqs,
    }
}

pub(crate) async fn process(pass: &mut Pass<'_>) -> Step {
    let steps = build_steps(pass);
    let n = steps.action.len();
    let status_of = |pass: &Pass<'_>, i: usize| pass.branches[steps.action[i]].status;

    if pass.txn.status == GlobalStatus::Submitted && pass.timed_out() {
        let reason = format!("Timeout after {} seconds", pass.timeout_secs());
        pass.set_status(GlobalStatus::Aborting, Some(reason));
    }

    let mut started = vec![false; n];
    let any_failed = |pass: &Pass<'_>| (0..n).any(|i| status_of(pass, i) == BranchStatus::Failed);

    if pass.txn.status == GlobalStatus::Submitted && !any_failed(pass) {
        let mut running = vec![false; n];
        let mut blocked = vec![false; n];
        let mut calls = Calls::new();
        loop {
            if pass.txn.status == GlobalStatus::Submitted && !any_failed(pass) {
                for i in 0..n {
                    let runnable = status_of(pass, i) == BranchStatus::Prepared
                        && !running[i]
                        && !blocked[i]
                        && steps.prereqs[i]
                            .iter()
                            .all(|&p| status_of(pass, p) == BranchStatus::Succeed);
                    if runnable {
                        running[i] = true;
                        started[i] = true;
                        let call = pass.start(steps.action[i]).await?;
                        calls.push(call);
                    }
                }
            }
            let Some((idx, outcome)) = pass.next(&mut calls).await? else {
                break;
            };
            let Some(i) = steps.action.iter().position(|&a| a == idx) else {
                continue;
            };
            running[i] = false;
            match outcome {
                CallOutcome::Success => pass.set_branch(idx, BranchStatus::Succeed),
                CallOutcome::Failure(msg) => {
                    pass.set_branch(idx, BranchStatus::Failed);
                    let b = &pass.branches[idx];
                    let reason = format!("branch {} action {} failed: {msg}", b.branch_id, b.url);
                    pass.set_status(GlobalStatus::Aborting, Some(reason));
                }
                other => {
                    // Under `retry_limit` the action is retried by the next pass, after the retry interval
                    // (with backoff) like any other retry; the count of retries used is stored with the
                    // pass. Once it is used up, the saga rolls back.
                    blocked[i] = true;
                    pass.note(&other);
                    let limit = pass.txn.options.retry_limit;
                    if limit > 0 && pass.txn.status == GlobalStatus::Submitted {
                        if pass.txn.options.retry_count < limit {
                            pass.txn.options.retry_count += 1;
                        } else {
                            let reason = format!(
                                "RetryCount is greater than RetryLimit, RetryLimit: {limit}"
                            );
                            pass.set_status(GlobalStatus::Aborting, Some(reason));
                        }
                    }
                }
            }
        }
        if pass.txn.status == GlobalStatus::Submitted
            && (0..n).all(|i| status_of(pass, i) == BranchStatus::Succeed)
        {
            pass.set_status(GlobalStatus::Succeed, None);
            return Ok(());
        }
    } else if pass.txn.status == GlobalStatus::Submitted && any_failed(pass) {
        // A failure recorded by an earlier pass whose status change was lost.
        pass.set_status(GlobalStatus::Aborting, Some("fail message lost".to_owned()));
    }

    if pass.txn.status != GlobalStatus::Aborting {
        return Ok(());
    }
    // Which actions may have run.
    let possibly_ran: Vec<bool> = (0..n)
        .map(|i| {
            let runnable_now = status_of(pass, i) == BranchStatus::Prepared
                && steps.prereqs[i]
                    .iter()
                    .all(|&p| status_of(pass, p) == BranchStatus::Succeed);
            status_of(pass, i) != BranchStatus::Prepared || started[i] || runnable_now
        })
        .collect();
    let comp_status =
        |pass: &Pass<'_>, i: usize| steps.compensate[i].map(|c| pass.branches[c].status);
    let comp_done = |pass: &Pass<'_>, i: usize| {
        !possibly_ran[i] || comp_status(pass, i) != Some(BranchStatus::Prepared)
    };
    // dependents[i]: steps that listed i as a prerequisite; they are compensated first.
    let mut dependents = vec![Vec::new(); n];
    for (j, ps) in steps.prereqs.iter().enumerate() {
        for &p in ps {
            dependents[p].push(j);
        }
    }
    // The decision to roll back (with the failed action, the reason and the retries used) is durable before
    // the first compensation is sent: from then on no pass runs an action of this saga again.
    let needs_compensation = (0..n).any(|i| !comp_done(pass, i));
    if needs_compensation && pass.txn.status != pass.durable_status() {
        pass.save().await?;
    }
    let mut running = vec![false; n];
    let mut blocked = vec![false; n];
    let mut calls = Calls::new();
    loop {
        for i in 0..n {
            let runnable = !comp_done(pass, i)
                && !running[i]
                && !blocked[i]
                && dependents[i].iter().all(|&j| comp_done(pass, j));
            if runnable && let Some(c) = steps.compensate[i] {
                running[i] = true;
                let call = pass.start(c).await?;
                calls.push(call);
            }
        }
        let Some((idx, outcome)) = pass.next(&mut calls).await? else {
            break;
        };
        let Some(i) = steps.compensate.iter().position(|&c| c == Some(idx)) else {
            continue;
        };
        running[i] = false;
        if outcome.is_success() {
            pass.set_branch(idx, BranchStatus::Succeed);
        } else {
            blocked[i] = true;
            pass.note(&outcome);
        }
    }
    if (0..n).all(|i| comp_done(pass, i)) {
        pass.set_status(GlobalStatus::Failed, None);
    }
    Ok(())
}

/// The saga type: branches from its steps, and its pass.
pub(crate) struct Saga;

#[async_trait::async_trait]
impl Kind for Saga {
    fn check_custom_data(&self, custom_data: &str, steps: usize) -> Result<(), String> {
        parse_custom(custom_data, steps).map(|_| ())
    }

    /// Per step a compensation, then an action, with the step's body.
    async fn initial_branches(
        &self,
        _engine: &Engine,
        req: &TxnRequest,
        now: Millis,
    ) -> EngineResult<Vec<Branch>> {
        let bodies = step_bodies(req);
        let mut out = Vec::with_capacity(req.steps.len() * 2);
        for (i, step) in req.steps.iter().enumerate() {
            let id = BranchId::for_step(i);
            let url = |k: &str| step.get(k).cloned().unwrap_or_default();
            let body = bodies.get(i).cloned().unwrap_or_default();
            out.push(Branch::new(
                &req.gid,
                id.clone(),
                Op::Compensate,
                url("compensate"),
                body.clone(),
                now,
            ));
            out.push(Branch::new(
                &req.gid,
                id,
                Op::Action,
                url("action"),
                body,
                now,
            ));
        }
        Ok(out)
    }

    /// A submitted saga whose actions all have empty URLs: an empty URL succeeds without a call, so no
    /// action fails and no compensation runs.
    fn calls_nothing(&self, txn: &GlobalTxn, branches: &[Branch]) -> bool {
        txn.status == GlobalStatus::Submitted
            && branches
                .iter()
                .filter(|b| b.op == Op::Action)
                .all(|b| b.url.is_empty())
    }

    async fn process(&self, pass: &mut Pass<'_>) -> Step {
        process(pass).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_data_is_checked_against_steps() {
        assert!(parse_custom("", 2).is_ok());
        let c = parse_custom(r#"{"concurrent":true,"orders":{"1":[0]}}"#, 2).unwrap();
        assert!(c.concurrent);
        assert_eq!(c.orders["1"], vec![0]);
        assert!(
            parse_custom(r#"{"orders":{"2":[0]}}"#, 2)
                .unwrap_err()
                .contains("'2'")
        );
        assert!(parse_custom(r#"{"orders":{"1":[1]}}"#, 2).is_err());
        assert!(parse_custom(r#"{"orders":{"x":[0]}}"#, 2).is_err());
        let cycle = parse_custom(r#"{"orders":{"0":[2],"1":[0],"2":[1]}}"#, 3).unwrap_err();
        assert!(cycle.contains("cycle"), "{cycle}");
        assert!(
            parse_custom(r#"{"orders":{"1":[0,0],"2":[0,1]}}"#, 3).is_ok(),
            "a diamond with a repeat is fine"
        );
        assert!(parse_custom("not json", 2).is_err());
    }
}
