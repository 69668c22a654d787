//! The gRPC API: service `dtmgimp.Dtm` (spec §8) on `--grpc-port`. Requests become the same engine calls as
//! over HTTP; errors map to gRPC codes in one place (`From<api::Error> for Status`): FAILURE is `Aborted`,
//! ONGOING is `FailedPrecondition`, bad input is `InvalidArgument`.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Instant;

use tonic::{Request, Response, Status};

use super::dtmsvr::{add_subscriber, remove_subscriber, remove_topic, submit_reply};
use super::request::{self, BranchInput, Invalid, TransInput};
use super::{AppState, Error};
use crate::engine::TxnRequest;
use crate::model::{Protocol, TransType};
use crate::proto::dtmgimp::dtm_server::{Dtm, DtmServer};
use crate::proto::dtmgimp::{
    DtmBranchRequest, DtmGidReply, DtmProgress, DtmProgressesReply, DtmRequest, DtmTopicRequest,
    DtmTransaction,
};

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        match e {
            Error::BadRequest(m) => Status::invalid_argument(m),
            Error::PayloadTooLarge(m) => Status::resource_exhausted(m),
            Error::NotFound(m) => Status::not_found(m),
            Error::Forbidden(m) => Status::permission_denied(m),
            Error::Unauthorized(m) => Status::unauthenticated(m),
            Error::UnsupportedMediaType(m) => Status::invalid_argument(m),
            Error::Failure(m) => Status::aborted(m),
            Error::Ongoing(m) => Status::failed_precondition(m),
            Error::Unavailable(m) => Status::unavailable(m),
            Error::Internal(m) => Status::internal(m),
        }
    }
}

impl From<crate::engine::Error> for Status {
    fn from(e: crate::engine::Error) -> Self {
        Error::from(e).into()
    }
}

/// The `dtmgimp.Dtm` service.
pub struct DtmService {
    state: AppState,
}

/// The tonic server for `state`.
pub fn service(state: AppState) -> DtmServer<DtmService> {
    DtmServer::new(DtmService { state }).max_decoding_message_size(super::MAX_BODY_BYTES)
}

impl DtmService {
    /// Checks the `authorization` metadata against what `method` needs.
    fn authorize<T>(&self, req: &Request<T>, method: &str) -> Result<(), Status> {
        let token = super::auth::bearer(
            req.metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok()),
        );
        self.state
            .auth
            .check(token, super::auth::grpc_need(method))
            .map_err(|denied| {
                super::auth::refused(&self.state, denied, method);
                Status::from(denied.error())
            })
    }

    /// Runs one API call, counting and timing it under DTM's metric names (`type="grpc"`, `api` = the
    /// lower-cased method name, as for HTTP routes).
    async fn tracked<T>(
        &self,
        api: &'static str,
        call: impl Future<Output = Result<Response<T>, Status>>,
    ) -> Result<Response<T>, Status> {
        let started = Instant::now();
        let result = call.await;
        let status = if result.is_ok() { "ok" } else { "fail" };
        let metrics = &self.state.metrics;
        metrics
            .server_process
            .with_label_values(&["grpc", api, status])
            .inc();
        metrics
            .server_response_duration
            .with_label_values(&["grpc", api])
            .observe(started.elapsed().as_secs_f64());
        result
    }
}

fn invalid(e: Invalid) -> Status {
    Status::invalid_argument(e.to_string())
}

/// A `DtmRequest` as the raw input of the one validation (protocol gRPC; bodies from `BinPayloads`).
/// DTM's Go SDK sends `Steps` as the JSON text `"null"` for TCC, XA and workflow: no steps, as DTM reads it.
pub(crate) fn to_request(r: DtmRequest) -> Result<TxnRequest, Status> {
    let steps: Vec<BTreeMap<String, String>> = match r.steps.trim() {
        "" | "null" => Vec::new(),
        text => serde_json::from_str::<Option<_>>(text)
            .map_err(|e| {
                invalid(Invalid {
                    field: "steps".to_owned(),
                    problem: format!("is not a JSON array of string maps: {e}"),
                })
            })?
            .unwrap_or_default(),
    };
    let o = r.trans_options.unwrap_or_default();
    TransInput {
        gid: r.gid,
        trans_type: r.trans_type,
        steps,
        payloads: r.bin_payloads,
        query_prepared: r.query_prepared,
        custom_data: r.customed_data,
        protocol: Protocol::Grpc.as_str().to_owned(),
        wait_result: o.wait_result,
        timeout_to_fail: o.timeout_to_fail,
        request_timeout: o.request_timeout,
        retry_interval: o.retry_interval,
        retry_limit: o.retry_limit,
        branch_headers: o.branch_headers.into_iter().collect(),
        concurrent: false,
        rollback_reason: r.rollback_reason,
        req_extra: r.req_extra.into_iter().collect(),
    }
    .validate()
    .map_err(invalid)
}

#[tonic::async_trait]
impl Dtm for DtmService {
    async fn new_gid(&self, req: Request<()>) -> Result<Response<DtmGidReply>, Status> {
        self.authorize(&req, "NewGid")?;
        self.tracked("newgid", async move {
            Ok(Response::new(DtmGidReply {
                gid: self.state.engine.new_gid().to_string(),
            }))
        })
        .await
    }

    async fn submit(&self, req: Request<DtmRequest>) -> Result<Response<()>, Status> {
        self.authorize(&req, "Submit")?;
        self.tracked("submit", async move {
            let req = to_request(req.into_inner())?;
            // Boxed: a submit pass is a large future, and this one is nested in the tracking wrapper.
            submit_reply(Box::pin(self.state.engine.submit(req)).await?)?;
            Ok(Response::new(()))
        })
        .await
    }

    async fn prepare(&self, req: Request<DtmRequest>) -> Result<Response<()>, Status> {
        self.authorize(&req, "Prepare")?;
        self.tracked("prepare", async move {
            self.state
                .engine
                .prepare(to_request(req.into_inner())?)
                .await?;
            Ok(Response::new(()))
        })
        .await
    }

    async fn abort(&self, req: Request<DtmRequest>) -> Result<Response<()>, Status> {
        self.authorize(&req, "Abort")?;
        self.tracked("abort", async move {
            let r = req.into_inner();
            let gid = request::gid(&r.gid).map_err(invalid)?;
            let trans_type = request::trans_type(&r.trans_type).map_err(invalid)?;
            submit_reply(
                self.state
                    .engine
                    .abort(&gid, trans_type, r.rollback_reason)
                    .await?,
            )?;
            Ok(Response::new(()))
        })
        .await
    }

    async fn register_branch(
        &self,
        req: Request<DtmBranchRequest>,
    ) -> Result<Response<()>, Status> {
        self.authorize(&req, "RegisterBranch")?;
        self.tracked("registerbranch", async move {
            let r = req.into_inner();
            let b = BranchInput {
                gid: r.gid,
                trans_type: r.trans_type,
                branch_id: r.branch_id,
                data: r.busi_payload,
                fields: r.data.into_iter().collect(),
            }
            .validate()
            .map_err(invalid)?;
            self.state
                .engine
                .register_branch(&b.gid, b.trans_type, b.branch_id, b.data, &b.fields)
                .await?;
            Ok(Response::new(()))
        })
        .await
    }

    async fn prepare_workflow(
        &self,
        req: Request<DtmRequest>,
    ) -> Result<Response<DtmProgressesReply>, Status> {
        self.authorize(&req, "PrepareWorkflow")?;
        self.tracked("prepareworkflow", async move {
            let mut r = to_request(req.into_inner())?;
            r.trans_type = TransType::Workflow;
            let (txn, branches) = self.state.engine.prepare_workflow(r).await?;
            Ok(Response::new(DtmProgressesReply {
                transaction: Some(DtmTransaction {
                    gid: txn.gid.to_string(),
                    status: txn.status.to_string(),
                    rollback_reason: txn.rollback_reason,
                    result: txn.result,
                }),
                progresses: branches
                    .into_iter()
                    .map(|b| DtmProgress {
                        status: b.status.to_string(),
                        bin_data: b.bin_data,
                        branch_id: b.branch_id.to_string(),
                        op: b.op.to_string(),
                    })
                    .collect(),
            }))
        })
        .await
    }

    async fn subscribe(&self, req: Request<DtmTopicRequest>) -> Result<Response<()>, Status> {
        self.authorize(&req, "Subscribe")?;
        self.tracked("subscribe", async move {
            let r = req.into_inner();
            add_subscriber(&self.state, &r.topic, &r.url, &r.remark).await?;
            Ok(Response::new(()))
        })
        .await
    }

    async fn unsubscribe(&self, req: Request<DtmTopicRequest>) -> Result<Response<()>, Status> {
        self.authorize(&req, "Unsubscribe")?;
        self.tracked("unsubscribe", async move {
            let r = req.into_inner();
            remove_subscriber(&self.state, &r.topic, &r.url).await?;
            Ok(Response::new(()))
        })
        .await
    }

    async fn delete_topic(&self, req: Request<DtmTopicRequest>) -> Result<Response<()>, Status> {
        self.authorize(&req, "DeleteTopic")?;
        self.tracked("deletetopic", async move {
            remove_topic(&self.state, &req.into_inner().topic).await?;
            Ok(Response::new(()))
        })
        .await
    }
}
