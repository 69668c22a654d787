//! XA (spec §7.4). Resource managers prepare their local XA transactions and register `[rollback, commit]`
//! rows. Submitted: commit every branch in registration order; aborting (or timed out while prepared): roll
//! every branch back. A branch whose phase 2 has not landed stays `prepared` (visible in `query` and in the
//! `braid_engine_inflight`/retry metrics) and is retried until its resource manager confirms.

use super::driver::Pass;
use super::tcc::phase_two;
use crate::model::Op;

pub(crate) async fn process(pass: &mut Pass<'_>) {
    phase_two(pass, Op::Commit, Op::Rollback, false).await;
}
