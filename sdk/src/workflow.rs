//! Workflow (spec §7.5): a transaction written as ordinary async code. The SDK records every step's result
//! on the server (`registerBranch`), so a re-run (after a crash, driven by the server's resume callback)
//! replays the finished steps instead of running them again, then continues. At the end it runs the commit
//! callbacks (success) or the rollback callbacks (FAILURE) in reverse order and reports the outcome.
//!
//! ```no_run
//! # async fn run() -> braid_client::Result<()> {
//! use braid_client::{DtmClient, Error, workflow::Workflows};
//! let dtm = DtmClient::http("http://localhost:36789/api/dtmsvr");
//! // The server calls this URL (POST, `op` = the workflow name) to resume an unfinished workflow.
//! let workflows = Workflows::new(&dtm, "http://me:8080/api/workflow/resume");
//! workflows.register("transfer", |wf, data| async move {
//!     wf.new_branch()?
//!         .on_rollback(|bb| async move { /* refund, behind bb */ Ok(()) })
//!         .run(|bb| async move { /* withdraw, behind bb */ Ok(Vec::new()) })
//!         .await?;
//!     Ok(data)
//! });
//! workflows.execute("transfer", &dtm.new_gid().await?, b"{}".to_vec()).await?;
//! # Ok(())
//! # }
//! ```
//!
//! Rules: the workflow function must be deterministic in the branches it creates (replay matches steps by
//! branch id); a step returning [`Error::Failure`] is recorded as failed and makes the workflow roll back
//! if the function propagates it; any other error is not recorded, the function stops, nothing is
//! submitted, and the server resumes the workflow later. The server resumes a workflow that is still
//! unfinished after its retry interval even if the first run is still going, so steps must be idempotent
//! (use the barrier each step and callback receives).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use base64::Engine as _;

use crate::BoxFuture;
use crate::barrier::BranchBarrier;
use crate::client::DtmClient;
use crate::error::{Error, Result};
use crate::model::{BranchRegistration, TransOptions, TransRequest, WORKFLOW};
use crate::query::BranchQuery;
use crate::tcc::BranchIdGen;

type Handler = Arc<dyn Fn(Workflow, Vec<u8>) -> BoxFuture<'static, Result<Vec<u8>>> + Send + Sync>;
type Phase2 = Box<dyn FnOnce(BranchBarrier) -> BoxFuture<'static, Result<()>> + Send>;

/// Options of the workflows of a [`Workflows`] registry.
#[derive(Debug, Clone, Default)]
pub struct WorkflowOptions {
    /// Transaction options sent with `prepareWorkflow`.
    pub trans: TransOptions,
    /// Also run the rollback of a step whose action itself returned FAILURE (off by default: a failed
    /// action is expected to have rolled back its own local transaction).
    pub compensate_error_branch: bool,
}

/// The registry of workflow functions of a service, and the way to run them. Cheap to clone.
#[derive(Clone)]
pub struct Workflows {
    client: DtmClient,
    callback: String,
    options: WorkflowOptions,
    handlers: Arc<Mutex<HashMap<String, Handler>>>,
}

impl std::fmt::Debug for Workflows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workflows")
            .field("callback", &self.callback)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Workflows {
    /// A registry whose workflows the server resumes by calling `callback` (HTTP: a URL this service
    /// serves with [`Workflows::execute_by_query`]; gRPC: `host:port` of this service's
    /// `workflow.Workflow` server, see [`Workflows::grpc_service`]).
    pub fn new(client: &DtmClient, callback: impl Into<String>) -> Self {
        Self {
            client: client.clone(),
            callback: callback.into(),
            options: WorkflowOptions::default(),
            handlers: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Sets the options of every workflow run through this registry.
    #[must_use]
    pub fn with_options(mut self, options: WorkflowOptions) -> Self {
        self.options = options;
        self
    }

    /// Registers (or replaces) the workflow function `name`. It receives the workflow handle and the
    /// input data, and returns the workflow's result.
    pub fn register<F, Fut>(&self, name: &str, handler: F)
    where
        F: Fn(Workflow, Vec<u8>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<u8>>> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |wf, data| Box::pin(handler(wf, data)));
        self.handlers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_owned(), handler);
    }

    /// Runs workflow `name` as transaction `gid` with input `data` (or resumes it if `gid` exists), and
    /// returns its result. A rolled-back workflow is [`Error::Failure`] with its rollback reason.
    pub async fn execute(&self, name: &str, gid: &str, data: Vec<u8>) -> Result<Vec<u8>> {
        let handler = self
            .handlers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
            .ok_or_else(|| {
                Error::InvalidArgument(format!("workflow '{name}' is not registered"))
            })?;
        if gid.is_empty() {
            return Err(Error::InvalidArgument("the workflow has no gid".to_owned()));
        }
        let req = TransRequest {
            gid: gid.to_owned(),
            trans_type: WORKFLOW,
            query_prepared: self.callback.clone(),
            custom_data: serde_json::json!({
                "name": name,
                "data": base64::engine::general_purpose::STANDARD.encode(&data),
            })
            .to_string(),
            options: self.options.trans.clone(),
            ..TransRequest::default()
        };
        let progresses = self.client.prepare_workflow(&req).await?;
        match progresses.status.as_str() {
            "succeed" => {
                return base64::engine::general_purpose::STANDARD
                    .decode(&progresses.result)
                    .map_err(|e| {
                        Error::InvalidArgument(format!(
                            "stored result of workflow {gid} is not base64: {e}"
                        ))
                    });
            }
            "failed" => return Err(Error::Failure(progresses.rollback_reason)),
            _ => {}
        }
        let wf = Workflow {
            inner: Arc::new(WfInner {
                client: self.client.clone(),
                gid: gid.to_owned(),
                recorded: progresses
                    .progresses
                    .into_iter()
                    .map(|p| ((p.branch_id.clone(), p.op.clone()), p))
                    .collect(),
                ids: BranchIdGen::new(""),
                compensate_error_branch: self.options.compensate_error_branch,
                phase2: Mutex::new(Phase2Lists::default()),
            }),
        };
        let outcome = handler(wf.clone(), data).await;
        match &outcome {
            Ok(_) => wf.run_phase2("commit").await?,
            Err(e) if e.is_failure() => wf.run_phase2("rollback").await?,
            // Neither: not recorded, not submitted; the server resumes the workflow later.
            Err(_) => return outcome,
        }
        let mut extra = BTreeMap::new();
        match &outcome {
            Ok(result) => {
                extra.insert("status".to_owned(), "succeed".to_owned());
                extra.insert(
                    "result".to_owned(),
                    base64::engine::general_purpose::STANDARD.encode(result),
                );
            }
            Err(e) => {
                extra.insert("status".to_owned(), "failed".to_owned());
                extra.insert("rollback_reason".to_owned(), e.message());
            }
        }
        let submit = TransRequest {
            gid: gid.to_owned(),
            trans_type: WORKFLOW,
            req_extra: extra,
            ..TransRequest::default()
        };
        self.client.trans_call("submit", &submit).await?;
        outcome
    }

    /// The resume callback: the server POSTs the workflow input to the callback URL with `gid`, and the
    /// workflow name as `op`. Answer with the result (an axum handler can return it directly).
    pub async fn execute_by_query(&self, query: &BranchQuery, body: Vec<u8>) -> Result<Vec<u8>> {
        query.require_gid()?;
        self.execute(&query.op, &query.gid, body).await
    }

    /// A tonic service `workflow.Workflow` that resumes workflows when the server calls
    /// `Execute` (gRPC workflows register this service's `host:port` as callback).
    #[cfg(feature = "grpc")]
    pub fn grpc_service(
        &self,
    ) -> crate::proto::workflow::workflow_server::WorkflowServer<GrpcResume> {
        crate::proto::workflow::workflow_server::WorkflowServer::new(GrpcResume {
            workflows: self.clone(),
        })
    }
}

/// The gRPC resume service of [`Workflows::grpc_service`].
#[cfg(feature = "grpc")]
#[derive(Debug, Clone)]
pub struct GrpcResume {
    workflows: Workflows,
}

#[cfg(feature = "grpc")]
#[tonic::async_trait]
impl crate::proto::workflow::workflow_server::Workflow for GrpcResume {
    async fn execute(
        &self,
        request: tonic::Request<crate::proto::workflow::WorkflowData>,
    ) -> Result<tonic::Response<()>, tonic::Status> {
        let md = request.metadata();
        let get = |k: &str| {
            md.get(format!("dtm-{k}").as_str())
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let (gid, name) = (get("gid"), get("op"));
        let data = request.into_inner().data;
        self.workflows.execute(&name, &gid, data).await?;
        Ok(tonic::Response::new(()))
    }
}

#[derive(Default)]
struct Phase2Lists {
    /// (branch id, callback) in registration order.
    rollbacks: Vec<(String, Phase2)>,
    commits: Vec<(String, Phase2)>,
}

struct WfInner {
    client: DtmClient,
    gid: String,
    /// Recorded results by (branch id, op).
    recorded: HashMap<(String, String), crate::model::Progress>,
    ids: BranchIdGen,
    compensate_error_branch: bool,
    phase2: Mutex<Phase2Lists>,
}

/// A running workflow, handed to the workflow function. Cheap to clone.
#[derive(Clone)]
pub struct Workflow {
    inner: Arc<WfInner>,
}

impl std::fmt::Debug for Workflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workflow")
            .field("gid", &self.inner.gid)
            .finish_non_exhaustive()
    }
}

impl Workflow {
    /// The global transaction id.
    pub fn gid(&self) -> &str {
        &self.inner.gid
    }

    /// A new step (`01`, `02`, ... in creation order).
    pub fn new_branch(&self) -> Result<WfBranch> {
        Ok(WfBranch {
            wf: self.clone(),
            branch_id: self.inner.ids.next_id()?,
        })
    }

    fn barrier(&self, branch_id: &str, op: &str) -> Result<BranchBarrier> {
        BranchBarrier::new(WORKFLOW, &self.inner.gid, branch_id, op)
    }

    async fn record(&self, branch_id: &str, op: &str, status: &str, data: Vec<u8>) -> Result<()> {
        self.inner
            .client
            .register_branch(&BranchRegistration {
                gid: self.inner.gid.clone(),
                trans_type: WORKFLOW,
                branch_id: branch_id.to_owned(),
                data,
                fields: BTreeMap::from([
                    ("op".to_owned(), op.to_owned()),
                    ("status".to_owned(), status.to_owned()),
                ]),
            })
            .await
    }

    fn recorded(&self, branch_id: &str, op: &str) -> Option<&crate::model::Progress> {
        self.inner
            .recorded
            .get(&(branch_id.to_owned(), op.to_owned()))
    }

    /// Runs the commits or the rollbacks in reverse registration order, each recorded so that it runs
    /// once. Phase-2 callbacks must not fail for good: FAILURE is treated as a retryable error.
    async fn run_phase2(&self, op: &str) -> Result<()> {
        let list = {
            let mut lists = self
                .inner
                .phase2
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if op == "commit" {
                std::mem::take(&mut lists.commits)
            } else {
                std::mem::take(&mut lists.rollbacks)
            }
        };
        for (branch_id, callback) in list.into_iter().rev() {
            if self.recorded(&branch_id, op).is_some() {
                continue;
            }
            match callback(self.barrier(&branch_id, op)?).await {
                Ok(()) => self.record(&branch_id, op, "succeed", Vec::new()).await?,
                Err(e) if e.is_failure() => {
                    return Err(Error::Other(format!(
                        "{op} of branch {branch_id} of {} returned FAILURE, which phase 2 cannot honour; it is retried: {}",
                        self.inner.gid,
                        e.message()
                    )));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// One step of a workflow: optional phase-2 callbacks, then its action ([`WfBranch::run`]).
pub struct WfBranch {
    wf: Workflow,
    branch_id: String,
}

impl std::fmt::Debug for WfBranch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WfBranch")
            .field("branch_id", &self.branch_id)
            .finish_non_exhaustive()
    }
}

impl WfBranch {
    /// The branch id.
    pub fn branch_id(&self) -> &str {
        &self.branch_id
    }

    /// The callback that undoes this step if the workflow fails. It gets a barrier with op `rollback`,
    /// which pairs with the action's barrier (op `action`) for null compensation and hanging.
    #[must_use]
    pub fn on_rollback<F, Fut>(self, callback: F) -> Self
    where
        F: FnOnce(BranchBarrier) -> Fut + Send + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        self.wf
            .inner
            .phase2
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .rollbacks
            .push((
                self.branch_id.clone(),
                Box::new(move |bb| Box::pin(callback(bb))),
            ));
        self
    }

    /// The callback that finishes this step if the workflow succeeds (TCC-style confirm).
    #[must_use]
    pub fn on_commit<F, Fut>(self, callback: F) -> Self
    where
        F: FnOnce(BranchBarrier) -> Fut + Send + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        self.wf
            .inner
            .phase2
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .commits
            .push((
                self.branch_id.clone(),
                Box::new(move |bb| Box::pin(callback(bb))),
            ));
        self
    }

    /// Runs the step's action once: replays the recorded result if this step already ran, otherwise runs
    /// `action` (with a barrier of op `action`) and records its success or FAILURE. Other errors are not
    /// recorded: the step runs again when the workflow is resumed.
    pub async fn run<F, Fut>(self, action: F) -> Result<Vec<u8>>
    where
        F: FnOnce(BranchBarrier) -> Fut,
        Fut: Future<Output = Result<Vec<u8>>>,
    {
        let wf = &self.wf;
        let result = if let Some(p) = wf.recorded(&self.branch_id, "action") {
            match p.status.as_str() {
                "succeed" => Ok(p.data.clone()),
                _ => Err(Error::Failure(
                    String::from_utf8_lossy(&p.data).into_owned(),
                )),
            }
        } else {
            let result = action(wf.barrier(&self.branch_id, "action")?).await;
            match &result {
                Ok(data) => {
                    wf.record(&self.branch_id, "action", "succeed", data.clone())
                        .await?
                }
                Err(e) if e.is_failure() => {
                    wf.record(
                        &self.branch_id,
                        "action",
                        "failed",
                        e.message().into_bytes(),
                    )
                    .await?
                }
                Err(_) => {}
            }
            result
        };
        if matches!(&result, Err(e) if e.is_failure()) && !wf.inner.compensate_error_branch {
            let mut lists = wf
                .inner
                .phase2
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            lists.rollbacks.retain(|(id, _)| *id != self.branch_id);
        }
        result
    }
}
