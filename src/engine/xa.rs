//! XA (spec §7.4). Resource managers prepare their local XA transactions and register `[rollback, commit]`
//! rows. Submitted: commit every branch in registration order; aborting (or timed out while prepared): roll
//! every branch back. A branch whose phase 2 has not landed stays `prepared` (visible in `query`) and is
//! retried with backoff until its resource manager confirms; [`stuck_phase2`] counts such transactions for
//! the `braid_xa_phase2_stuck_transactions` gauge, so nobody has to find them by hand (DTM #470).

use std::collections::BTreeMap;

use super::driver::{Pass, Step, base_interval};
use super::kind::Kind;
use super::tcc::{field, phase_two, phase_two_rows};
use super::{EngineOptions, Inner, Result as EngineResult};
use crate::model::{Branch, BranchId, Gid, GlobalStatus, Millis, Op, TransType};
use crate::store::{self, ScanFilter};

/// Most XA transactions [`stuck_phase2`] looks at (newest first), to bound the cost of a scrape.
const STUCK_SCAN_LIMIT: usize = 10_000;

pub(crate) async fn process(pass: &mut Pass<'_>) -> Step {
    phase_two(pass, Op::Commit, Op::Rollback, false).await
}

/// XA transactions in phase 2 (`submitted`: commit, `aborting`: rollback) whose last attempt did not land:
/// their retry interval has grown past the base interval, which only a failed phase-2 call does.
/// Returns `(commit, rollback)` counts.
pub(crate) async fn stuck_phase2(inner: &Inner) -> store::Result<(i64, i64)> {
    let commit = count_stuck(inner, GlobalStatus::Submitted).await?;
    let rollback = count_stuck(inner, GlobalStatus::Aborting).await?;
    Ok((commit, rollback))
}

async fn count_stuck(inner: &Inner, status: GlobalStatus) -> store::Result<i64> {
    let mut filter = ScanFilter {
        limit: 1000,
        status: Some(status),
        trans_type: Some(TransType::Xa),
        ..ScanFilter::default()
    };
    let (mut seen, mut stuck) = (0usize, 0i64);
    loop {
        let page = inner.store.scan_txns(&filter).await?;
        seen += page.len();
        stuck += page
            .iter()
            .filter(|t| is_retrying(t.next_cron_interval, &t.options, &inner.opts))
            .count() as i64;
        match page.last() {
            Some(last) if page.len() == filter.limit as usize && seen < STUCK_SCAN_LIMIT => {
                filter.before_id = Some(last.id)
            }
            _ => return Ok(stuck),
        }
    }
}

fn is_retrying(interval: i64, options: &crate::model::TransOptions, opts: &EngineOptions) -> bool {
    interval > base_interval(options, opts)
}

/// The XA type: `[rollback, commit]` rows per registered branch (one URL for both), and its pass.
pub(crate) struct Xa;

#[async_trait::async_trait]
impl Kind for Xa {
    fn registered_branches(
        &self,
        gid: &Gid,
        branch_id: &BranchId,
        data: Vec<u8>,
        fields: &BTreeMap<String, String>,
        now: Millis,
    ) -> EngineResult<Vec<Branch>> {
        let url = field(fields, "url");
        Ok(phase_two_rows(
            gid,
            branch_id,
            data,
            (Op::Rollback, url.clone()),
            (Op::Commit, url),
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
