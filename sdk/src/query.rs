//! [`BranchQuery`]: the DTM query parameters a branch request carries.

use std::collections::HashMap;

use crate::barrier::BranchBarrier;
use crate::error::{Error, Result};

/// The query parameters the transaction manager (or an SDK) sends with a branch call (spec §6.2): `gid`,
/// `trans_type`, `branch_id`, `op`, plus `dtm` (the transaction manager's address, when an SDK calls) and
/// `phase2_url` (XA).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BranchQuery {
    /// The transaction manager's address (HTTP URL or gRPC `host:port`), when an SDK made the call.
    pub dtm: String,
    /// Global id.
    pub gid: String,
    /// Transaction type.
    pub trans_type: String,
    /// Branch id.
    pub branch_id: String,
    /// Op.
    pub op: String,
    /// XA: the URL the transaction manager calls for phase 2.
    pub phase2_url: String,
}

impl BranchQuery {
    /// Reads the parameters from `(key, value)` pairs; missing ones are empty.
    pub fn from_pairs<I, K, V>(pairs: I) -> Self
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
        Self {
            dtm: get("dtm"),
            gid: get("gid"),
            trans_type: get("trans_type"),
            branch_id: get("branch_id"),
            op: get("op"),
            phase2_url: get("phase2_url"),
        }
    }

    /// Reads the parameters from a raw query string.
    pub fn from_query_str(query: &str) -> Self {
        Self::from_pairs(form_urlencoded::parse(
            query.trim_start_matches('?').as_bytes(),
        ))
    }

    /// The barrier of this call.
    pub fn barrier(&self) -> Result<BranchBarrier> {
        BranchBarrier::new(&self.trans_type, &self.gid, &self.branch_id, &self.op)
    }

    /// Fails unless `gid` is present.
    pub(crate) fn require_gid(&self) -> Result<()> {
        if self.gid.is_empty() {
            return Err(Error::InvalidArgument(
                "branch call without a 'gid' query parameter".to_owned(),
            ));
        }
        Ok(())
    }
}
