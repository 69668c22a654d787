//! The sub-transaction barrier (spec §12): makes a branch handler idempotent and safe against null
//! compensation and hanging, by recording each (gid, branch, op) in the business database inside the
//! business's own local transaction.
//!
//! Invariants, for a branch `b` of transaction `g` and a barrier id `n` (the n-th barrier a handler uses):
//! - the row `(g, b, op, n)` is inserted (insert-ignore) in the same local transaction as the business, so
//!   the business runs at most once per op: a repeat finds the row and skips (idempotence);
//! - a compensation (`cancel`, `compensate`, `rollback`) first inserts the row of its origin op (`try`,
//!   `action`). If that insert lands, the origin never ran: the compensation skips the business (null
//!   compensation), and the origin, arriving later, finds its row and skips too (no hanging);
//! - an origin in flight holds its row's lock, so a concurrent compensation waits for it to finish; exactly
//!   one of {origin, null compensation} wins;
//! - the msg op (`DoAndSubmit`) reports [`Error::Duplicated`] instead of skipping silently, because the
//!   back-check already decided the message's fate.
//!
//! The SQL table is DTM's (`dtm_barrier.barrier`, see `sql/` in this crate), so Go, Java and Rust services
//! can share it.

#[cfg(feature = "redis")]
mod redis;
#[cfg(any(feature = "mysql", feature = "postgres"))]
mod sql;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};

#[cfg(any(feature = "mysql", feature = "postgres"))]
pub use sql::{BarrierDatabase, BarrierRow, Entry, create_barrier_table};

use crate::error::{Error, Result};

/// DTM's default barrier table.
pub const DEFAULT_BARRIER_TABLE: &str = "dtm_barrier.barrier";

/// Branch id of the msg `DoAndSubmit` barrier and of the back-check.
pub const MSG_BRANCH_ID: &str = "00";
/// Op of the msg `DoAndSubmit` barrier and of the back-check.
pub const MSG_OP: &str = "msg";
/// Barrier id the back-check uses.
pub const MSG_BARRIER_ID: &str = "01";

/// The barrier of one branch call: who is calling (gid, trans type, branch, op), and a counter giving
/// each barrier use inside the handler its own id (`01`, `02`, ...).
#[derive(Debug)]
pub struct BranchBarrier {
    /// Transaction type (`saga`, `tcc`, `msg`, `xa`, `workflow`).
    pub trans_type: String,
    /// Global transaction id.
    pub gid: String,
    /// Branch id.
    pub branch_id: String,
    /// The op being run (`action`, `compensate`, `try`, `confirm`, `cancel`, `msg`, ...).
    pub op: String,
    barrier_id: AtomicU32,
    table: String,
}

impl Clone for BranchBarrier {
    fn clone(&self) -> Self {
        Self {
            trans_type: self.trans_type.clone(),
            gid: self.gid.clone(),
            branch_id: self.branch_id.clone(),
            op: self.op.clone(),
            barrier_id: AtomicU32::new(self.barrier_id.load(Ordering::SeqCst)),
            table: self.table.clone(),
        }
    }
}

impl BranchBarrier {
    /// A barrier for an explicit branch. Every part is required.
    pub fn new(
        trans_type: impl Into<String>,
        gid: impl Into<String>,
        branch_id: impl Into<String>,
        op: impl Into<String>,
    ) -> Result<Self> {
        let bb = Self {
            trans_type: trans_type.into(),
            gid: gid.into(),
            branch_id: branch_id.into(),
            op: op.into(),
            barrier_id: AtomicU32::new(0),
            table: DEFAULT_BARRIER_TABLE.to_owned(),
        };
        for (name, v) in [
            ("trans_type", &bb.trans_type),
            ("gid", &bb.gid),
            ("branch_id", &bb.branch_id),
            ("op", &bb.op),
        ] {
            if v.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "barrier parameter '{name}' is missing"
                )));
            }
        }
        Ok(bb)
    }

    /// The barrier from a branch request's query parameters `trans_type`, `gid`, `branch_id`, `op` (what
    /// the transaction manager sends, spec §6.2). Accepts any `(key, value)` pairs, e.g. a `HashMap`.
    pub fn from_query<I, K, V>(pairs: I) -> Result<Self>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let q: HashMap<String, String> = pairs
            .into_iter()
            .map(|(k, v)| (k.as_ref().to_owned(), v.as_ref().to_owned()))
            .collect();
        let get = |k: &str| q.get(k).cloned().unwrap_or_default();
        Self::new(get("trans_type"), get("gid"), get("branch_id"), get("op"))
    }

    /// The barrier from a raw query string (`gid=..&trans_type=..&branch_id=..&op=..`).
    pub fn from_query_str(query: &str) -> Result<Self> {
        Self::from_query(form_urlencoded::parse(
            query.trim_start_matches('?').as_bytes(),
        ))
    }

    /// The barrier from the `dtm-*` metadata of a gRPC branch call (spec §6.4).
    #[cfg(feature = "grpc")]
    pub fn from_grpc_metadata(md: &tonic::metadata::MetadataMap) -> Result<Self> {
        let get = |k: &str| {
            md.get(format!("dtm-{k}").as_str())
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        Self::new(get("trans_type"), get("gid"), get("branch_id"), get("op"))
    }

    /// Uses another barrier table than `dtm_barrier.barrier` (a trusted name, not user input).
    #[must_use]
    pub fn with_table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// The barrier table.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The next barrier id: `01` on the first use, `02` on the second... Each use of the barrier inside
    /// one handler takes the next id (for barriers on stores this crate does not cover).
    pub fn next_barrier_id(&self) -> String {
        format!("{:02}", self.barrier_id.fetch_add(1, Ordering::SeqCst) + 1)
    }

    /// The op whose row a compensation pre-inserts (`try` for `cancel`, `action` for `compensate` and
    /// `rollback`); empty for other ops.
    pub fn origin_op(&self) -> &'static str {
        origin_op(&self.op)
    }

    /// The query parameters that identify this branch, for passing it on to a service that runs its own
    /// barrier (e.g. a workflow step calling a branch over HTTP).
    pub fn query_pairs(&self) -> [(&'static str, &str); 4] {
        [
            ("gid", self.gid.as_str()),
            ("trans_type", self.trans_type.as_str()),
            ("branch_id", self.branch_id.as_str()),
            ("op", self.op.as_str()),
        ]
    }
}

/// See [`BranchBarrier::origin_op`].
pub(crate) fn origin_op(op: &str) -> &'static str {
    match op {
        "cancel" => "try",
        "compensate" | "rollback" => "action",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_query_reads_the_four_parameters_and_counts_barrier_ids() {
        let bb = BranchBarrier::from_query_str(
            "?dtm=x&gid=g1&trans_type=tcc&branch_id=01&op=cancel&other=1",
        )
        .unwrap();
        assert_eq!(
            (
                bb.trans_type.as_str(),
                bb.gid.as_str(),
                bb.branch_id.as_str(),
                bb.op.as_str()
            ),
            ("tcc", "g1", "01", "cancel")
        );
        assert_eq!(bb.origin_op(), "try");
        assert_eq!(bb.next_barrier_id(), "01");
        assert_eq!(bb.next_barrier_id(), "02");
        assert_eq!(bb.table(), DEFAULT_BARRIER_TABLE);
        let missing = BranchBarrier::from_query([("gid", "g1")]).unwrap_err();
        assert!(missing.to_string().contains("trans_type"), "{missing}");
    }

    #[test]
    fn origin_ops_follow_dtm() {
        assert_eq!(origin_op("cancel"), "try");
        assert_eq!(origin_op("compensate"), "action");
        assert_eq!(origin_op("rollback"), "action");
        assert_eq!(origin_op("try"), "");
        assert_eq!(origin_op("msg"), "");
    }
}
