//! Two-phase messages (spec §7.2): branches that must all eventually succeed once the local business
//! committed. [`Msg::do_and_submit`] is the transactional-outbox replacement: prepare, run the local business
//! behind the msg barrier, then submit; the server's back-check (`query_prepared`) settles a crash between.
//!
//! ```no_run
//! # async fn run(pool: sqlx::MySqlPool) -> braid_client::Result<()> {
//! use braid_client::{DtmClient, Msg};
//! let dtm = DtmClient::http("http://localhost:36789/api/dtmsvr");
//! let msg = Msg::new(&dtm, dtm.new_gid().await?)
//!     .add_json("http://bank2/api/TransIn", &serde_json::json!({"amount": 30}));
//! msg.do_and_submit_db("http://bank1/api/QueryPrepared", &pool, |conn| {
//!     Box::pin(async move {
//!         sqlx::query("UPDATE dtm_busi.user_account SET balance = balance - 30 WHERE user_id = 1")
//!             .execute(&mut *conn)
//!             .await?;
//!         Ok(())
//!     })
//! })
//! .await
//! # }
//! ```

use std::collections::BTreeMap;
use std::future::Future;

use reqwest::Method;
use serde::Serialize;

use crate::barrier::{BranchBarrier, MSG_BRANCH_ID, MSG_OP};
use crate::client::{DtmClient, branch_query};
use crate::error::{Error, Result};
use crate::model::{MSG, TransRequest, option_setters, to_json_bytes};

/// A message under construction.
#[derive(Debug, Clone)]
pub struct Msg {
    client: DtmClient,
    req: TransRequest,
    delay: u64,
    deferred: Option<String>,
}

option_setters!(Msg);

impl Msg {
    /// A new message with id `gid`.
    pub fn new(client: &DtmClient, gid: impl Into<String>) -> Self {
        Self {
            client: client.clone(),
            req: TransRequest {
                gid: gid.into(),
                trans_type: MSG,
                ..TransRequest::default()
            },
            delay: 0,
            deferred: None,
        }
    }

    /// Adds a branch: `action` (a URL) receives `payload`.
    #[must_use]
    pub fn add(mut self, action: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        self.req
            .steps
            .push(BTreeMap::from([("action".to_owned(), action.into())]));
        self.req.payloads.push(payload.into());
        self
    }

    /// Adds a branch whose payload is `payload` as JSON.
    #[must_use]
    pub fn add_json<T: Serialize + ?Sized>(self, action: impl Into<String>, payload: &T) -> Self {
        let step = self.req.steps.len();
        match to_json_bytes(&format!("the payload of step {step}"), payload) {
            Ok(bytes) => self.add(action, bytes),
            Err(e) => {
                let mut m = self.add(action, Vec::new());
                m.deferred.get_or_insert(e.to_string());
                m
            }
        }
    }

    /// Adds a branch per subscriber of `topic` (see the server's `subscribe`).
    #[must_use]
    pub fn add_topic(self, topic: &str, payload: impl Into<Vec<u8>>) -> Self {
        self.add(format!("topic://{topic}"), payload)
    }

    /// Calls the branches only `secs` seconds after the message was created.
    #[must_use]
    pub fn delay(mut self, secs: u64) -> Self {
        self.delay = secs;
        self
    }

    /// Runs the branches in parallel (HTTP only: DTM's gRPC API has no such option).
    #[must_use]
    pub fn concurrent(mut self, concurrent: bool) -> Self {
        self.req.concurrent = concurrent;
        self
    }

    fn build(&self, query_prepared: &str) -> Result<TransRequest> {
        if let Some(e) = &self.deferred {
            return Err(Error::InvalidArgument(e.clone()));
        }
        if self.req.gid.is_empty() {
            return Err(Error::InvalidArgument("the msg has no gid".to_owned()));
        }
        let mut req = self.req.clone();
        req.query_prepared = query_prepared.to_owned();
        if self.delay > 0 {
            req.custom_data = serde_json::json!({"delay": self.delay}).to_string();
        }
        Ok(req)
    }

    /// Phase one: records the message as `prepared`. If it is neither submitted nor aborted before its
    /// timeout, the server asks `query_prepared` whether the local business committed.
    pub async fn prepare(&self, query_prepared: &str) -> Result<()> {
        self.client
            .trans_call("prepare", &self.build(query_prepared)?)
            .await
    }

    /// Phase two: the branches will all be called until they succeed.
    pub async fn submit(&self) -> Result<()> {
        self.client.trans_call("submit", &self.build("")?).await
    }

    /// Drops a prepared message: no branch is called.
    pub async fn abort(&self) -> Result<()> {
        self.client.trans_call("abort", &self.build("")?).await
    }

    /// The barrier `DoAndSubmit` runs the local business behind (branch `00`, op `msg`).
    pub fn barrier(&self) -> Result<BranchBarrier> {
        BranchBarrier::new(MSG, &self.req.gid, MSG_BRANCH_ID, MSG_OP)
    }

    /// Prepare, run `business` (which must use the given barrier, e.g. [`BranchBarrier::call`]), then
    /// submit (spec §7.2):
    /// - the business succeeded: submit;
    /// - it failed with [`Error::Failure`]: abort, and return the failure;
    /// - it failed otherwise (the outcome is unknown: a timeout, a lost connection): ask `query_prepared`
    ///   as the server would; FAILURE there aborts, SUCCESS submits; the business error is returned;
    /// - the back-check already ran (it beat the business to the barrier): [`Error::Duplicated`].
    pub async fn do_and_submit<F, Fut>(&self, query_prepared: &str, business: F) -> Result<()>
    where
        F: FnOnce(BranchBarrier) -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        let bb = self.barrier()?;
        self.prepare(query_prepared).await?;
        let business_result = business(bb).await;
        let mut check = Ok(());
        if let Err(e) = &business_result
            && !e.is_failure()
        {
            let query = branch_query(
                self.client.dtm_param(),
                &self.req.gid,
                MSG,
                MSG_BRANCH_ID,
                MSG_OP,
            );
            check = self
                .client
                .call_branch(
                    Method::GET,
                    query_prepared,
                    &query,
                    &self.req.options.branch_headers,
                    None,
                )
                .await
                .map(drop);
        }
        let failed = matches!(&business_result, Err(e) if e.is_failure())
            || matches!(&check, Err(e) if e.is_failure());
        if failed {
            // The message dies either way: the server's back-check answers FAILURE too.
            let _ = self.abort().await;
        } else if check.is_ok() {
            let submitted = self.submit().await;
            if business_result.is_ok() {
                return submitted;
            }
        }
        business_result.and(check)
    }

    /// [`Msg::do_and_submit`] with the business in a new transaction of `pool`, behind the SQL barrier.
    #[cfg(any(feature = "mysql", feature = "postgres"))]
    pub async fn do_and_submit_db<DB, F>(
        &self,
        query_prepared: &str,
        pool: &sqlx::Pool<DB>,
        business: F,
    ) -> Result<()>
    where
        DB: crate::barrier::BarrierDatabase,
        F: for<'t> FnOnce(&'t mut DB::Connection) -> crate::BoxFuture<'t, Result<()>>,
    {
        self.do_and_submit(query_prepared, |bb| async move {
            bb.call_with_pool(pool, business).await
        })
        .await
    }
}
