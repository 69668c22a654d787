//! TCC (spec §7.3). The client registers branches (`[cancel, confirm]` rows each) and calls the tries
//! itself. Submitted: confirm every branch; aborting (by the client, or by timeout while prepared): cancel
//! every branch, including those whose try failed. Both walk the branches in reverse registration order and
//! stop at the first that does not succeed; the next pass continues from there.

use std::collections::BTreeMap;

use super::Result as EngineResult;
use super::driver::{Pass, Step};
use super::kind::Kind;
use crate::model::{Branch, BranchId, BranchStatus, Gid, GlobalStatus, Millis, Op};

pub(crate) async fn process(pass: &mut Pass<'_>) -> Step {
    phase_two(pass, Op::Confirm, Op::Cancel, true).await
}

/// Shared by TCC and XA: time out a prepared transaction, then run `commit_op` or `rollback_op` on every
/// branch not yet done, in reverse (`reverse = true`) or forward order.
///
/// A timed-out `prepared` transaction is written `aborting` before its first rollback call: from then on a
/// late `registerBranch` or `submit` is refused, so no branch is ever committed after another was rolled
/// back. `submitted` and a client's `aborting` were written by the API before this pass began.
pub(crate) async fn phase_two(
    pass: &mut Pass<'_>,
    commit_op: Op,
    rollback_op: Op,
    reverse: bool,
) -> Step {
    if pass.txn.status == GlobalStatus::Prepared {
        if !pass.timed_out() {
            let timeout = pass.timeout_secs();
            pass.wake_at(pass.txn.create_time.plus_secs(timeout));
            return Ok(());
        }
        let reason = format!("Timeout after {} seconds", pass.timeout_secs());
        pass.set_status(GlobalStatus::Aborting, Some(reason));
        pass.save().await?;
    }
    let (op, done) = match pass.txn.status {
        GlobalStatus::Submitted => (commit_op, GlobalStatus::Succeed),
        GlobalStatus::Aborting => (rollback_op, GlobalStatus::Failed),
        _ => return Ok(()),
    };
    let mut order: Vec<usize> = (0..pass.branches.len())
        .filter(|&i| pass.branches[i].op == op)
        .collect();
    if reverse {
        order.reverse();
    }
    for i in order {
        if pass.branches[i].status == BranchStatus::Succeed {
            continue;
        }
        let (idx, outcome) = pass.call(i).await?;
        if outcome.is_success() {
            pass.set_branch(idx, BranchStatus::Succeed);
        } else {
            pass.note(&outcome);
            return Ok(());
        }
    }
    pass.set_status(done, None);
    Ok(())
}

/// The TCC type: `[cancel, confirm]` rows per registered branch, and its pass.
pub(crate) struct Tcc;

#[async_trait::async_trait]
impl Kind for Tcc {
    fn registered_branches(
        &self,
        gid: &Gid,
        branch_id: &BranchId,
        data: Vec<u8>,
        fields: &BTreeMap<String, String>,
        now: Millis,
    ) -> EngineResult<Vec<Branch>> {
        Ok(phase_two_rows(
            gid,
            branch_id,
            data,
            (Op::Cancel, field(fields, "cancel")),
            (Op::Confirm, field(fields, "confirm")),
            now,
        ))
    }

    fn submit_follows_prepare(&self) -> bool {
        true
    }

    fn rolls_back_on_abort(&self, status: GlobalStatus) -> bool {
        matches!(status, GlobalStatus::Prepared | GlobalStatus::Aborting)
    }

    async fn process(&self, pass: &mut Pass<'_>) -> Step {
        process(pass).await
    }
}

/// A registered field (empty when absent).
pub(crate) fn field(fields: &BTreeMap<String, String>, k: &str) -> String {
    fields.get(k).cloned().unwrap_or_default()
}

/// The two rows of a TCC or XA branch: the rollback row first, then the commit row.
pub(crate) fn phase_two_rows(
    gid: &Gid,
    branch_id: &BranchId,
    data: Vec<u8>,
    (rollback_op, rollback_url): (Op, String),
    (commit_op, commit_url): (Op, String),
    now: Millis,
) -> Vec<Branch> {
    vec![
        Branch::new(
            gid,
            branch_id.clone(),
            rollback_op,
            rollback_url,
            data.clone(),
            now,
        ),
        Branch::new(gid, branch_id.clone(), commit_op, commit_url, data, now),
    ]
}
