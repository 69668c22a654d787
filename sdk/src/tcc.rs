//! TCC (spec §7.3): the application prepares the global transaction, registers each branch with its
//! confirm and cancel URLs and calls its try itself; if every try succeeded it submits (the server confirms
//! every branch), otherwise it aborts (the server cancels every registered branch).
//!
//! ```no_run
//! # async fn run() -> braid_client::Result<()> {
//! use braid_client::{DtmClient, tcc_global_transaction};
//! let dtm = DtmClient::http("http://localhost:36789/api/dtmsvr");
//! let req = serde_json::json!({"amount": 30});
//! tcc_global_transaction(&dtm, &dtm.new_gid().await?, |tcc| async move {
//!     tcc.call_branch_json(&req, "http://bank1/api/TransOutTry", "http://bank1/api/TransOutConfirm",
//!         "http://bank1/api/TransOutCancel").await?;
//!     tcc.call_branch_json(&req, "http://bank2/api/TransInTry", "http://bank2/api/TransInConfirm",
//!         "http://bank2/api/TransInCancel").await?;
//!     Ok(())
//! })
//! .await
//! # }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use reqwest::Method;
use serde::Serialize;

use crate::client::{DtmClient, branch_query};
use crate::error::{Error, Result};
use crate::model::{BranchRegistration, TCC, TransRequest, option_setters, to_json_bytes};

/// Most sub-branches one branch (or the root) can create.
const MAX_SUB_BRANCHES: u32 = 99;
/// Longest branch id (DTM's limit, so nesting is at most 10 levels deep).
const MAX_BRANCH_ID_LEN: usize = 20;

/// Generates branch ids `01`, `02`, ... under a parent (`""` at the root; `0201`... when nested).
#[derive(Debug, Default)]
pub struct BranchIdGen {
    parent: String,
    counter: AtomicU32,
}

impl BranchIdGen {
    /// A generator of sub-ids of `parent`.
    pub fn new(parent: impl Into<String>) -> Self {
        Self {
            parent: parent.into(),
            counter: AtomicU32::new(0),
        }
    }

    /// The next sub-branch id.
    pub fn next_id(&self) -> Result<String> {
        let n = self.counter.fetch_add(1, Ordering::SeqCst) + 1;
        if n > MAX_SUB_BRANCHES {
            return Err(Error::InvalidArgument(format!(
                "branch '{}' has more than {MAX_SUB_BRANCHES} sub-branches",
                self.parent
            )));
        }
        let id = format!("{}{n:02}", self.parent);
        if id.len() > MAX_BRANCH_ID_LEN {
            return Err(Error::InvalidArgument(format!(
                "branch id '{id}' is longer than {MAX_BRANCH_ID_LEN}: nested too deep"
            )));
        }
        Ok(id)
    }
}

/// A TCC global transaction in progress, handed to the closure of [`TccBuilder::run`]. Cheap to clone, so
/// tries can run concurrently.
#[derive(Debug, Clone)]
pub struct Tcc {
    inner: Arc<TccInner>,
}

#[derive(Debug)]
struct TccInner {
    client: DtmClient,
    gid: String,
    headers: BTreeMap<String, String>,
    ids: BranchIdGen,
}

impl Tcc {
    /// The TCC a branch handler belongs to, from its query parameters (`dtm`, `gid`, `branch_id`): for
    /// nested TCC, where a try registers sub-branches `<branch_id>01`, `<branch_id>02`...
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
        let (dtm, gid) = (get("dtm"), get("gid"));
        if dtm.is_empty() || gid.is_empty() {
            return Err(Error::InvalidArgument(
                "a nested TCC needs the 'dtm' and 'gid' query parameters".to_owned(),
            ));
        }
        Ok(Self::with_parent(
            &DtmClient::from_dtm_param(&dtm)?,
            gid,
            get("branch_id"),
        ))
    }

    /// A TCC handle on an existing global transaction, creating sub-branches of `parent_branch`.
    pub fn with_parent(
        client: &DtmClient,
        gid: impl Into<String>,
        parent_branch: impl Into<String>,
    ) -> Self {
        Self {
            inner: Arc::new(TccInner {
                client: client.clone(),
                gid: gid.into(),
                headers: BTreeMap::new(),
                ids: BranchIdGen::new(parent_branch),
            }),
        }
    }

    /// The global transaction id.
    pub fn gid(&self) -> &str {
        &self.inner.gid
    }

    /// A new branch id (for registering a branch by hand).
    pub fn new_branch_id(&self) -> Result<String> {
        self.inner.ids.next_id()
    }

    /// Registers a branch (`confirm` and `cancel` URLs, `body`) without calling its try.
    pub async fn register_branch(
        &self,
        branch_id: &str,
        body: &[u8],
        confirm_url: &str,
        cancel_url: &str,
    ) -> Result<()> {
        self.inner
            .client
            .register_branch(&BranchRegistration {
                gid: self.inner.gid.clone(),
                trans_type: TCC,
                branch_id: branch_id.to_owned(),
                data: body.to_vec(),
                fields: BTreeMap::from([
                    ("confirm".to_owned(), confirm_url.to_owned()),
                    ("cancel".to_owned(), cancel_url.to_owned()),
                ]),
            })
            .await
    }

    /// Registers a new branch and calls its try (POST `try_url` with the DTM query parameters and `body`).
    /// Returns the try's response body. A try FAILURE is [`Error::Failure`].
    pub async fn call_branch(
        &self,
        body: impl Into<Vec<u8>>,
        try_url: &str,
        confirm_url: &str,
        cancel_url: &str,
    ) -> Result<Vec<u8>> {
        let body = body.into();
        let branch_id = self.new_branch_id()?;
        self.register_branch(&branch_id, &body, confirm_url, cancel_url)
            .await?;
        let c = &self.inner.client;
        let query = branch_query(c.dtm_param(), &self.inner.gid, TCC, &branch_id, "try");
        c.call_branch(
            Method::POST,
            try_url,
            &query,
            &self.inner.headers,
            Some(body),
        )
        .await
    }

    /// [`Tcc::call_branch`] with `body` as JSON.
    pub async fn call_branch_json<T: Serialize + ?Sized>(
        &self,
        body: &T,
        try_url: &str,
        confirm_url: &str,
        cancel_url: &str,
    ) -> Result<Vec<u8>> {
        let bytes = to_json_bytes("the TCC branch body", body)?;
        self.call_branch(bytes, try_url, confirm_url, cancel_url)
            .await
    }
}

/// A TCC global transaction with its options, before it runs.
#[derive(Debug, Clone)]
pub struct TccBuilder {
    client: DtmClient,
    req: TransRequest,
}

option_setters!(TccBuilder);

impl TccBuilder {
    /// A TCC global transaction with id `gid`.
    pub fn new(client: &DtmClient, gid: impl Into<String>) -> Self {
        Self {
            client: client.clone(),
            req: TransRequest {
                gid: gid.into(),
                trans_type: TCC,
                ..TransRequest::default()
            },
        }
    }

    /// Prepares the transaction, runs `body` (which calls the branches), then submits; if `body` fails,
    /// aborts with the error as rollback reason and returns that error.
    pub async fn run<F, Fut, T>(&self, body: F) -> Result<T>
    where
        F: FnOnce(Tcc) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        if self.req.gid.is_empty() {
            return Err(Error::InvalidArgument("the TCC has no gid".to_owned()));
        }
        self.client.trans_call("prepare", &self.req).await?;
        let tcc = Tcc {
            inner: Arc::new(TccInner {
                client: self.client.clone(),
                gid: self.req.gid.clone(),
                headers: self.req.options.branch_headers.clone(),
                ids: BranchIdGen::new(""),
            }),
        };
        match body(tcc).await {
            Ok(v) => {
                self.client.trans_call("submit", &self.req).await?;
                Ok(v)
            }
            Err(e) => {
                let mut abort = self.req.clone();
                abort.rollback_reason = e.to_string();
                // The business error is what the caller needs; a failed abort is retried by timeout.
                let _ = self.client.trans_call("abort", &abort).await;
                Err(e)
            }
        }
    }
}

/// DTM's `TccGlobalTransaction`: [`TccBuilder::run`] with default options.
pub async fn tcc_global_transaction<F, Fut, T>(client: &DtmClient, gid: &str, body: F) -> Result<T>
where
    F: FnOnce(Tcc) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    TccBuilder::new(client, gid).run(body).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_ids_nest_and_are_bounded() {
        let root = BranchIdGen::new("");
        assert_eq!(root.next_id().unwrap(), "01");
        assert_eq!(root.next_id().unwrap(), "02");
        let nested = BranchIdGen::new("02");
        assert_eq!(nested.next_id().unwrap(), "0201");
        for _ in 1..99 {
            nested.next_id().unwrap();
        }
        assert!(nested.next_id().is_err(), "a 100th sub-branch is refused");
        let deep = BranchIdGen::new("010101010101010101");
        assert_eq!(deep.next_id().unwrap(), "01010101010101010101");
        let too_deep = BranchIdGen::new("0101010101010101010");
        assert!(too_deep.next_id().is_err());
    }
}
