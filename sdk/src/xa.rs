//! XA (spec §7.4) with MySQL/MariaDB local XA transactions (feature `mysql`).
//!
//! - Application side: [`xa_global_transaction`] prepares the global transaction, calls each branch with
//!   [`Xa::call_branch`], then submits (the server commits every branch) or, on error, aborts (the server
//!   rolls every registered branch back).
//! - Resource-manager side: [`local_transaction`] is the whole handler of an XA branch URL. For the action
//!   it runs `XA START`, the barrier row, the business, `registerBranch`, `XA END`, `XA PREPARE`; for the
//!   server's phase-2 call (`op=commit|rollback`, same URL) it runs `XA COMMIT`/`XA ROLLBACK`.
//!
//! A prepared XA transaction stays attached to its MySQL session until the session ends, and nobody else
//! can commit it meanwhile, so the connection that prepared it is closed (not returned to the pool).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use reqwest::Method;
use serde::Serialize;
use sqlx::{Connection as _, MySql, MySqlConnection, MySqlPool};

use crate::BoxFuture;
use crate::barrier::{BarrierDatabase, BarrierRow};
use crate::client::{DtmClient, branch_query};
use crate::error::{Error, Result};
use crate::model::{BranchRegistration, TransRequest, XA, option_setters, to_json_bytes};
use crate::query::BranchQuery;
use crate::tcc::BranchIdGen;

/// The barrier id of the XA barrier row.
const XA_BARRIER_ID: &str = "01";
/// MySQL error 1397 `XAER_NOTA`: unknown XID (already committed or rolled back, or never prepared).
const XAER_NOTA: &str = "1397";

/// An XA global transaction in progress, handed to the closure of [`XaBuilder::run`].
#[derive(Debug, Clone)]
pub struct Xa {
    inner: Arc<XaInner>,
}

#[derive(Debug)]
struct XaInner {
    client: DtmClient,
    gid: String,
    headers: BTreeMap<String, String>,
    ids: BranchIdGen,
}

impl Xa {
    /// The global transaction id.
    pub fn gid(&self) -> &str {
        &self.inner.gid
    }

    /// Calls a resource manager's XA branch: POST `url` with `op=action`, `phase2_url=url` and `body`.
    /// Returns the response body.
    pub async fn call_branch(&self, body: impl Into<Vec<u8>>, url: &str) -> Result<Vec<u8>> {
        let branch_id = self.inner.ids.next_id()?;
        let c = &self.inner.client;
        let mut query = branch_query(c.dtm_param(), &self.inner.gid, XA, &branch_id, "action");
        query.push(("phase2_url", url));
        c.call_branch(
            Method::POST,
            url,
            &query,
            &self.inner.headers,
            Some(body.into()),
        )
        .await
    }

    /// [`Xa::call_branch`] with `body` as JSON.
    pub async fn call_branch_json<T: Serialize + ?Sized>(
        &self,
        body: &T,
        url: &str,
    ) -> Result<Vec<u8>> {
        self.call_branch(to_json_bytes("the XA branch body", body)?, url)
            .await
    }
}

/// An XA global transaction with its options, before it runs.
#[derive(Debug, Clone)]
pub struct XaBuilder {
    client: DtmClient,
    req: TransRequest,
}

option_setters!(XaBuilder);

impl XaBuilder {
    /// An XA global transaction with id `gid`.
    pub fn new(client: &DtmClient, gid: impl Into<String>) -> Self {
        Self {
            client: client.clone(),
            req: TransRequest {
                gid: gid.into(),
                trans_type: XA,
                ..TransRequest::default()
            },
        }
    }

    /// Prepares, runs `body` (which calls the branches), then submits; if `body` fails, aborts and returns
    /// its error.
    pub async fn run<F, Fut, T>(&self, body: F) -> Result<T>
    where
        F: FnOnce(Xa) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        if self.req.gid.is_empty() {
            return Err(Error::InvalidArgument("the XA has no gid".to_owned()));
        }
        self.client.trans_call("prepare", &self.req).await?;
        let xa = Xa {
            inner: Arc::new(XaInner {
                client: self.client.clone(),
                gid: self.req.gid.clone(),
                headers: self.req.options.branch_headers.clone(),
                ids: BranchIdGen::new(""),
            }),
        };
        match body(xa).await {
            Ok(v) => {
                self.client.trans_call("submit", &self.req).await?;
                Ok(v)
            }
            Err(e) => {
                let mut abort = self.req.clone();
                abort.rollback_reason = e.to_string();
                let _ = self.client.trans_call("abort", &abort).await;
                Err(e)
            }
        }
    }
}

/// DTM's `XaGlobalTransaction`: [`XaBuilder::run`] with default options.
pub async fn xa_global_transaction<F, Fut, T>(client: &DtmClient, gid: &str, body: F) -> Result<T>
where
    F: FnOnce(Xa) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    XaBuilder::new(client, gid).run(body).await
}

/// The XA transaction id of a branch: `'<gid>-<branch_id>'`, quoted for SQL.
fn xid(query: &BranchQuery) -> String {
    let raw = format!("{}-{}", query.gid, query.branch_id);
    format!("'{}'", raw.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Runs a statement with the text protocol (XA statements cannot be prepared). Boxed so the future's
/// `Send`-ness is settled here, with concrete lifetimes.
fn exec<'a>(conn: &'a mut MySqlConnection, sql: String) -> BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        sqlx::Executor::execute(conn, sql.as_str()).await?;
        Ok(())
    })
}

fn is_xaer_nota(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some(XAER_NOTA) || d.message().contains("XAER_NOTA"))
}

/// The whole handler of an XA branch URL on the resource manager (see the module docs): the action when
/// `op` is `action`, phase 2 when it is `commit` or `rollback`.
pub fn local_transaction<'a, F>(
    pool: &'a MySqlPool,
    query: &'a BranchQuery,
    business: F,
) -> BoxFuture<'a, Result<()>>
where
    F: for<'t> FnOnce(&'t mut MySqlConnection) -> BoxFuture<'t, Result<()>> + Send + 'a,
{
    Box::pin(async move {
        query.require_gid()?;
        match query.op.as_str() {
            "commit" | "rollback" => phase2(pool, query).await,
            _ => action(pool, query, business).await,
        }
    })
}

fn barrier_row<'a>(query: &'a BranchQuery, reason: &'a str) -> BarrierRow<'a> {
    BarrierRow {
        trans_type: XA,
        gid: &query.gid,
        branch_id: &query.branch_id,
        op: "action",
        barrier_id: XA_BARRIER_ID,
        reason,
    }
}

async fn action<F>(pool: &MySqlPool, query: &BranchQuery, business: F) -> Result<()>
where
    F: for<'t> FnOnce(&'t mut MySqlConnection) -> BoxFuture<'t, Result<()>> + Send,
{
    if query.dtm.is_empty() || query.phase2_url.is_empty() {
        return Err(Error::InvalidArgument(
            "an XA branch call needs the 'dtm' and 'phase2_url' query parameters".to_owned(),
        ));
    }
    let xid = xid(query);
    let mut conn = pool.acquire().await?;
    exec(&mut conn, format!("XA START {xid}")).await?;
    let work = async {
        // A rollback that came first inserted this row: the branch must not run any more.
        let inserted = MySql::insert_ignore(
            &mut conn,
            crate::barrier::DEFAULT_BARRIER_TABLE,
            barrier_row(query, "action"),
        )
        .await?;
        if inserted == 0 {
            return Err(Error::failure(format!(
                "XA branch {} of {} was already rolled back",
                query.branch_id, query.gid
            )));
        }
        business(&mut conn).await?;
        DtmClient::from_dtm_param(&query.dtm)?
            .register_branch(&BranchRegistration {
                gid: query.gid.clone(),
                trans_type: XA,
                branch_id: query.branch_id.clone(),
                data: Vec::new(),
                fields: BTreeMap::from([("url".to_owned(), query.phase2_url.clone())]),
            })
            .await
    }
    .await;
    match work {
        Ok(()) => {
            exec(&mut conn, format!("XA END {xid}")).await?;
            exec(&mut conn, format!("XA PREPARE {xid}")).await?;
            // Detach the prepared transaction from this session so phase 2 can run anywhere.
            conn.detach().close().await?;
            Ok(())
        }
        Err(e) => {
            // Best effort: if these fail, closing the session rolls the XA transaction back.
            let ended = exec(&mut conn, format!("XA END {xid}")).await;
            if ended.is_err() || exec(&mut conn, format!("XA ROLLBACK {xid}")).await.is_err() {
                let _ = conn.detach().close().await;
            }
            Err(e)
        }
    }
}

async fn phase2(pool: &MySqlPool, query: &BranchQuery) -> Result<()> {
    let xid = xid(query);
    let verb = if query.op == "commit" {
        "COMMIT"
    } else {
        "ROLLBACK"
    };
    let mut conn = pool.acquire().await?;
    match exec(&mut conn, format!("XA {verb} {xid}")).await {
        Ok(()) => {}
        Err(Error::Sql(e)) if is_xaer_nota(&e) => {}
        Err(e) => return Err(e),
    }
    if query.op == "rollback" {
        // Blocks a late action: its barrier insert finds this row.
        MySql::insert_ignore(
            &mut conn,
            crate::barrier::DEFAULT_BARRIER_TABLE,
            barrier_row(query, "rollback"),
        )
        .await?;
    }
    Ok(())
}
