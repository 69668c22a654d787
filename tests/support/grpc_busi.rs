//! The gRPC test business service (DTM's `busi.Busi` on gRPC, spec §14.2) plus the workflow resume service
//! (`workflow.Workflow/Execute`), served by tonic on an ephemeral port of 127.0.0.1.
//!
//! - Result of a call: first of (the next queued result for that method, the request field
//!   `TransOutResult`/`TransInResult` for TransOut/TransIn, "SUCCESS"). `FAILURE` answers `Aborted`,
//!   `ONGOING` answers `FailedPrecondition`, `ERROR` answers `Internal` (spec §2.1).
//! - Every call is recorded with its metadata (`dtm-gid`, `dtm-op`, ..., and any `branch_headers`).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use braid::proto::busi::busi_server::{Busi, BusiServer};
use braid::proto::busi::{BusiReply, ReqGrpc};
use braid::proto::workflow::WorkflowData;
use braid::proto::workflow::workflow_server::{Workflow, WorkflowServer};
use prost::Message as _;
use tonic::{Request, Response, Status};

/// One recorded gRPC call.
#[derive(Debug, Clone)]
pub struct GrpcCall {
    /// Method name, e.g. `TransOut` or `Execute`.
    pub method: String,
    /// Every ASCII metadata entry.
    pub metadata: HashMap<String, String>,
    /// The decoded request (`ReqGrpc` for busi methods; default for `Execute`).
    pub req: ReqGrpc,
    /// The raw `WorkflowData.Data` of an `Execute` call.
    pub workflow_data: Vec<u8>,
}

impl GrpcCall {
    /// A metadata value, or "".
    pub fn md(&self, key: &str) -> &str {
        self.metadata
            .get(key)
            .map(String::as_str)
            .unwrap_or_default()
    }
}

#[derive(Default)]
struct Inner {
    calls: Vec<GrpcCall>,
    queued: HashMap<String, VecDeque<String>>,
    arrived: Arc<tokio::sync::Notify>,
}

/// A running gRPC business service. Cheap to clone.
#[derive(Clone)]
pub struct GrpcBusi {
    inner: Arc<Mutex<Inner>>,
    pub addr: SocketAddr,
}

/// The prost-encoded `ReqGrpc` (what a gRPC branch stores as its body).
pub fn req_bytes(amount: i64, out_result: &str, in_result: &str) -> Vec<u8> {
    ReqGrpc {
        amount,
        trans_out_result: out_result.to_owned(),
        trans_in_result: in_result.to_owned(),
    }
    .encode_to_vec()
}

impl GrpcBusi {
    /// Starts the service on an ephemeral port.
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// Starts the service on an ephemeral port, over TLS with `tls` when given.
    pub async fn start_with(tls: Option<tonic::transport::ServerTlsConfig>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind grpc busi");
        let addr = listener.local_addr().expect("grpc busi addr");
        let busi = Self {
            inner: Arc::default(),
            addr,
        };
        let (svc, wf) = (
            BusiServer::new(busi.clone()),
            WorkflowServer::new(busi.clone()),
        );
        let mut server = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            server = server.tls_config(tls).expect("gRPC busi TLS config");
        }
        tokio::spawn(async move {
            let _ = server
                .add_service(svc)
                .add_service(wf)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await;
        });
        busi
    }

    /// `grpcs://localhost:port/busi.Busi/<method>`: a gRPC branch URL over TLS.
    pub fn tls_url(&self, method: &str) -> String {
        format!("grpcs://localhost:{}/busi.Busi/{method}", self.addr.port())
    }

    /// `127.0.0.1:port/busi.Busi/<method>`: a gRPC branch URL as DTM writes it.
    pub fn url(&self, method: &str) -> String {
        format!("{}/busi.Busi/{method}", self.addr)
    }

    /// `127.0.0.1:port`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Queues results for `method`; each call consumes one.
    pub fn push(&self, method: &str, results: &[&str]) {
        let mut inner = self.inner.lock().expect("grpc busi lock");
        inner
            .queued
            .entry(method.to_owned())
            .or_default()
            .extend(results.iter().map(|r| (*r).to_owned()));
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<GrpcCall> {
        self.inner.lock().expect("grpc busi lock").calls.clone()
    }

    /// Calls of one gid (by `dtm-gid` metadata), as method names, in arrival order.
    pub fn methods_of(&self, gid: &str) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter(|c| c.md("dtm-gid") == gid)
            .map(|c| c.method)
            .collect()
    }

    /// Waits until `method` has received at least `n` calls and returns them (panics after 20 s).
    pub async fn wait_calls(&self, method: &str, n: usize) -> Vec<GrpcCall> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let arrived = self.inner.lock().expect("grpc busi lock").arrived.clone();
            let notified = arrived.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let calls: Vec<GrpcCall> = self
                .calls()
                .into_iter()
                .filter(|c| c.method == method)
                .collect();
            if calls.len() >= n {
                return calls;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "{method} received {} calls within 20 s, expected {n}",
                    calls.len()
                );
            }
        }
    }

    /// A client for calling the service directly (the test playing a TCC client calls tries this way).
    pub async fn client(
        &self,
    ) -> braid::proto::busi::busi_client::BusiClient<tonic::transport::Channel> {
        braid::proto::busi::busi_client::BusiClient::connect(format!("http://{}", self.addr))
            .await
            .expect("grpc busi client connects")
    }

    fn answer<T>(
        &self,
        method: &str,
        metadata: &tonic::metadata::MetadataMap,
        req: ReqGrpc,
        data: Vec<u8>,
        ok: T,
    ) -> Result<Response<T>, Status> {
        let metadata = metadata
            .iter()
            .filter_map(|kv| match kv {
                tonic::metadata::KeyAndValueRef::Ascii(k, v) => {
                    Some((k.to_string(), v.to_str().unwrap_or_default().to_owned()))
                }
                tonic::metadata::KeyAndValueRef::Binary(..) => None,
            })
            .collect();
        let from_request = match method {
            "TransOut" => req.trans_out_result.clone(),
            "TransIn" => req.trans_in_result.clone(),
            _ => String::new(),
        };
        let queued = {
            let mut inner = self.inner.lock().expect("grpc busi lock");
            inner.calls.push(GrpcCall {
                method: method.to_owned(),
                metadata,
                req,
                workflow_data: data,
            });
            inner.arrived.notify_waiters();
            inner.queued.get_mut(method).and_then(VecDeque::pop_front)
        };
        let result = queued.filter(|r| !r.is_empty()).unwrap_or(from_request);
        match result.as_str() {
            "FAILURE" => Err(Status::aborted("reason:Insufficient balance")),
            "ONGOING" => Err(Status::failed_precondition("ONGOING")),
            "ERROR" => Err(Status::internal("ERROR from user")),
            _ => Ok(Response::new(ok)),
        }
    }

    fn busi(&self, method: &str, req: Request<ReqGrpc>) -> Result<Response<()>, Status> {
        let md = req.metadata().clone();
        self.answer(method, &md, req.into_inner(), Vec::new(), ())
    }
}

#[tonic::async_trait]
impl Busi for GrpcBusi {
    async fn trans_in(&self, req: Request<ReqGrpc>) -> Result<Response<()>, Status> {
        self.busi("TransIn", req)
    }

    async fn trans_out(&self, req: Request<ReqGrpc>) -> Result<Response<()>, Status> {
        self.busi("TransOut", req)
    }

    async fn trans_in_revert(&self, req: Request<ReqGrpc>) -> Result<Response<()>, Status> {
        self.busi("TransInRevert", req)
    }

    async fn trans_out_revert(&self, req: Request<ReqGrpc>) -> Result<Response<()>, Status> {
        self.busi("TransOutRevert", req)
    }

    async fn trans_in_confirm(&self, req: Request<ReqGrpc>) -> Result<Response<()>, Status> {
        self.busi("TransInConfirm", req)
    }

    async fn trans_out_confirm(&self, req: Request<ReqGrpc>) -> Result<Response<()>, Status> {
        self.busi("TransOutConfirm", req)
    }

    async fn query_prepared(&self, req: Request<ReqGrpc>) -> Result<Response<BusiReply>, Status> {
        let md = req.metadata().clone();
        self.answer(
            "QueryPrepared",
            &md,
            req.into_inner(),
            Vec::new(),
            BusiReply {
                message: "a busi reply".to_owned(),
            },
        )
    }
}

#[tonic::async_trait]
impl Workflow for GrpcBusi {
    async fn execute(&self, req: Request<WorkflowData>) -> Result<Response<()>, Status> {
        let md = req.metadata().clone();
        self.answer(
            "Execute",
            &md,
            ReqGrpc::default(),
            req.into_inner().data,
            (),
        )
    }
}
