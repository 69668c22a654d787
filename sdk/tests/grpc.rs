//! gRPC end to end: the SDK's gRPC transport with gRPC branches (`host:port/busi.Busi/Method`, barrier from
//! the `dtm-*` metadata, raw-bytes calls for TCC tries), and workflow resumption by the server through the
//! HTTP callback and through the `workflow.Workflow/Execute` service.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use braid::proto::busi::busi_server::{Busi, BusiServer};
use braid::proto::busi::{BusiReply, ReqGrpc};
use braid_client::workflow::Workflows;
use braid_client::{BranchBarrier, BranchQuery, Error};
use common::{Bank, Braid, Store, gid, mysql_pool};
use prost::Message as _;
use tonic::{Request, Response, Status};

/// The bank behind DTM's `busi.Busi` gRPC service.
struct GrpcBank(Bank);

impl GrpcBank {
    async fn call(&self, out_side: bool, req: Request<ReqGrpc>) -> Result<Response<()>, Status> {
        let bb = BranchBarrier::from_grpc_metadata(req.metadata())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let r = req.into_inner();
        let result = if out_side {
            r.trans_out_result
        } else {
            r.trans_in_result
        };
        self.0.grpc_call(out_side, &bb, r.amount, result).await?;
        Ok(Response::new(()))
    }
}

#[tonic::async_trait]
impl Busi for GrpcBank {
    async fn trans_in(&self, r: Request<ReqGrpc>) -> Result<Response<()>, Status> {
        self.call(false, r).await
    }
    async fn trans_out(&self, r: Request<ReqGrpc>) -> Result<Response<()>, Status> {
        self.call(true, r).await
    }
    async fn trans_in_revert(&self, r: Request<ReqGrpc>) -> Result<Response<()>, Status> {
        self.call(false, r).await
    }
    async fn trans_out_revert(&self, r: Request<ReqGrpc>) -> Result<Response<()>, Status> {
        self.call(true, r).await
    }
    async fn trans_in_confirm(&self, r: Request<ReqGrpc>) -> Result<Response<()>, Status> {
        self.call(false, r).await
    }
    async fn trans_out_confirm(&self, r: Request<ReqGrpc>) -> Result<Response<()>, Status> {
        self.call(true, r).await
    }
    async fn query_prepared(&self, _: Request<ReqGrpc>) -> Result<Response<BusiReply>, Status> {
        Ok(Response::new(BusiReply::default()))
    }
}

async fn serve_grpc<S>(service: S) -> SocketAddr
where
    S: tonic::codegen::Service<
            tonic::codegen::http::Request<tonic::body::Body>,
            Response = tonic::codegen::http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + tonic::server::NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    serve_grpc_on(listener, service);
    addr
}

fn serve_grpc_on<S>(listener: tokio::net::TcpListener, service: S)
where
    S: tonic::codegen::Service<
            tonic::codegen::http::Request<tonic::body::Body>,
            Response = tonic::codegen::http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + tonic::server::NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
            .expect("gRPC test server");
    });
}

fn grpc_req(amount: i64, out: &str, inn: &str) -> Vec<u8> {
    ReqGrpc {
        amount,
        trans_out_result: out.to_owned(),
        trans_in_result: inn.to_owned(),
    }
    .encode_to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_saga_and_tcc_with_grpc_branches() {
    let bank = Bank::start(Store::Mysql(mysql_pool().await)).await;
    let busi = serve_grpc(BusiServer::new(GrpcBank(bank.clone()))).await;
    let url = |m: &str| format!("{busi}/busi.Busi/{m}");
    let braid = Braid::start().await;
    let client = braid.grpc_client();

    let g = gid("grpc-saga");
    client
        .saga(&g)
        .add(url("TransOut"), url("TransOutRevert"), grpc_req(30, "", ""))
        .add(url("TransIn"), url("TransInRevert"), grpc_req(30, "", ""))
        .wait_result(true)
        .submit()
        .await
        .unwrap();
    assert_eq!(braid.status(&g).await, "succeed");
    assert_eq!(bank.routes_of(&g), ["out:action", "in:action"]);
    assert_eq!(bank.balances().await, Bank::moved(30));

    let g = gid("grpc-saga-rollback");
    let err = client
        .saga(&g)
        .add(url("TransOut"), url("TransOutRevert"), grpc_req(30, "", ""))
        .add(
            url("TransIn"),
            url("TransInRevert"),
            grpc_req(30, "", "FAILURE"),
        )
        .wait_result(true)
        .submit()
        .await
        .unwrap_err();
    assert!(err.is_failure(), "{err}");
    assert_eq!(
        bank.routes_of(&g),
        ["out:action", "in:action", "in:compensate", "out:compensate"]
    );
    assert_eq!(
        bank.balances().await,
        Bank::moved(30),
        "unchanged by the rollback"
    );

    // TCC: the SDK calls the tries itself over gRPC, with the dtm-* metadata.
    let g = gid("grpc-tcc");
    client
        .tcc(&g)
        .wait_result(true)
        .run(|tcc| async move {
            for (try_m, confirm_m, cancel_m) in [
                ("TransOut", "TransOutConfirm", "TransOutRevert"),
                ("TransIn", "TransInConfirm", "TransInRevert"),
            ] {
                tcc.call_branch(
                    grpc_req(30, "", ""),
                    &url(try_m),
                    &url(confirm_m),
                    &url(cancel_m),
                )
                .await?;
            }
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(braid.status(&g).await, "succeed");
    assert_eq!(
        bank.routes_of(&g),
        ["out:try", "in:try", "in:confirm", "out:confirm"]
    );
    assert_eq!(bank.balances().await, Bank::moved(60));
    braid.stop().await;
}

/// A workflow of two local steps; the first run crashes (a non-FAILURE error) after step 1.
fn register_counting(workflows: &Workflows, runs: Arc<AtomicU32>, crash_once: Arc<AtomicU32>) {
    workflows.register("counting", move |wf, data| {
        let (runs, crash_once) = (runs.clone(), crash_once.clone());
        async move {
            wf.new_branch()?
                .run(|_bb| async {
                    runs.fetch_add(1, Ordering::SeqCst);
                    Ok(b"one".to_vec())
                })
                .await?;
            if crash_once.swap(0, Ordering::SeqCst) > 0 {
                return Err(Error::other("crash"));
            }
            let two = wf
                .new_branch()?
                .run(|_bb| async {
                    runs.fetch_add(1, Ordering::SeqCst);
                    Ok(b"two".to_vec())
                })
                .await?;
            Ok([data, two].concat())
        }
    });
}

async fn resume(
    State(workflows): State<Workflows>,
    q: BranchQuery,
    body: Bytes,
) -> braid_client::Result<Vec<u8>> {
    workflows.execute_by_query(&q, body.to_vec()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_resumes_a_crashed_workflow_over_http_and_grpc() {
    let braid = Braid::start().await;
    for transport in ["http", "grpc"] {
        let runs = Arc::new(AtomicU32::new(0));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let workflows = if transport == "http" {
            let workflows = Workflows::new(&braid.client(), format!("http://{addr}/resume"));
            let app = Router::new()
                .route("/resume", post(resume))
                .with_state(workflows.clone());
            tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            workflows
        } else {
            // The callback is this service's host:port; the server calls workflow.Workflow/Execute there.
            let workflows = Workflows::new(&braid.grpc_client(), addr.to_string());
            serve_grpc_on(listener, workflows.grpc_service());
            workflows
        };
        register_counting(&workflows, runs.clone(), Arc::new(AtomicU32::new(1)));
        let g = gid(&format!("wf-resume-{transport}"));
        let err = workflows
            .execute("counting", &g, b"in:".to_vec())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("crash"), "{transport}: {err}");
        assert_eq!(braid.status(&g).await, "prepared", "{transport}");
        braid.forward(60);
        let picked = braid.cron_once().await;
        assert!(
            picked.contains(&g),
            "{transport}: the scan picked {picked:?}"
        );
        assert_eq!(braid.status(&g).await, "succeed", "{transport}");
        assert_eq!(
            runs.load(Ordering::SeqCst),
            2,
            "{transport}: step 1 was replayed"
        );
        let result = workflows.execute("counting", &g, Vec::new()).await.unwrap();
        assert_eq!(result, b"in:two", "{transport}");
    }
    braid.stop().await;
}
