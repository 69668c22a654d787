//! The gRPC API `dtmgimp.Dtm` (spec §8) and gRPC branch calls (§6.4), on SQLite and MariaDB: a tonic client
//! generated from the committed proto talks to the server (proving the wire format), and the branches are a
//! tonic business service ([`support::GrpcBusi`]). Saga, msg and TCC end to end; topics; error codes.

// Panicking is how a test fails; clippy's allow-*-in-tests does not reach the scenario fns and the harness.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use braid::proto::busi::ReqGrpc;
use braid::proto::dtmgimp::{DtmBranchRequest, DtmRequest, DtmTopicRequest, DtmTransOptions};
use prost::Message as _;
use serde_json::json;
use support::grpc_busi::req_bytes;
use support::{Backend, GrpcBusi, TestServer, gid};
use tonic::Code;

/// A gRPC saga TransOut -> TransIn against `busi`.
fn saga(g: &str, busi: &GrpcBusi, out_result: &str, in_result: &str) -> DtmRequest {
    let steps = json!([
        {"action": busi.url("TransOut"), "compensate": busi.url("TransOutRevert")},
        {"action": busi.url("TransIn"), "compensate": busi.url("TransInRevert")},
    ]);
    let payload = req_bytes(30, out_result, in_result);
    DtmRequest {
        gid: g.to_owned(),
        trans_type: "saga".to_owned(),
        steps: steps.to_string(),
        bin_payloads: vec![payload.clone(), payload],
        ..DtmRequest::default()
    }
}

fn msg(g: &str, busi: &GrpcBusi) -> DtmRequest {
    let steps = json!([{"action": busi.url("TransOut")}, {"action": busi.url("TransIn")}]);
    let payload = req_bytes(30, "", "");
    DtmRequest {
        gid: g.to_owned(),
        trans_type: "msg".to_owned(),
        steps: steps.to_string(),
        bin_payloads: vec![payload.clone(), payload],
        query_prepared: busi.url("QueryPrepared"),
        ..DtmRequest::default()
    }
}

fn just(g: &str, trans_type: &str) -> DtmRequest {
    DtmRequest {
        gid: g.to_owned(),
        trans_type: trans_type.to_owned(),
        ..DtmRequest::default()
    }
}

fn topic(topic: &str, url: &str) -> DtmTopicRequest {
    DtmTopicRequest {
        topic: topic.to_owned(),
        url: url.to_owned(),
        remark: "grpc test".to_owned(),
    }
}

async fn grpc_new_gid_returns_a_fresh_gid(backend: Backend) {
    let ts = TestServer::start(backend).await;
    let mut client = ts.grpc().await;
    let a = client.new_gid(()).await.expect("NewGid").into_inner().gid;
    let b = client.new_gid(()).await.expect("NewGid").into_inner().gid;
    assert_eq!(a.len(), 22, "{a}");
    assert_ne!(a, b);
    let metrics = ts.metrics().await;
    assert!(
        metrics.contains(r#"dtm_server_process_total{api="newgid",status="ok",type="grpc"} 2"#),
        "{metrics}"
    );
    ts.stop().await;
}

async fn grpc_saga_runs_end_to_end_with_dtm_metadata(backend: Backend) {
    let busi = GrpcBusi::start().await;
    let ts = TestServer::start(backend).await;
    let mut client = ts.grpc().await;

    let g = gid("grpc-saga");
    client
        .submit(saga(&g, &busi, "", ""))
        .await
        .expect("Submit");
    ts.wait_pass(&g).await;
    assert_eq!(ts.status(&g).await, "succeed");
    assert_eq!(
        ts.branch_statuses(&g).await,
        ["prepared", "succeed", "prepared", "succeed"]
    );
    assert_eq!(ts.query(&g).await["transaction"]["protocol"], "grpc");
    assert_eq!(busi.methods_of(&g), ["TransOut", "TransIn"]);
    let calls = busi.calls();
    let first = calls
        .iter()
        .find(|c| c.md("dtm-gid") == g)
        .expect("a call of the saga");
    assert_eq!(
        (
            first.md("dtm-trans_type"),
            first.md("dtm-branch_id"),
            first.md("dtm-op")
        ),
        ("saga", "01", "action")
    );
    assert!(
        first.metadata.contains_key("dtm-dtm"),
        "{:?}",
        first.metadata
    );
    assert_eq!(
        first.req,
        ReqGrpc {
            amount: 30,
            ..ReqGrpc::default()
        },
        "the stored bytes arrive as the request"
    );

    let g = gid("grpc-saga-rollback");
    client
        .submit(saga(&g, &busi, "", "FAILURE"))
        .await
        .expect("Submit");
    ts.wait_pass(&g).await;
    assert_eq!(ts.status(&g).await, "failed");
    assert_eq!(
        ts.branch_statuses(&g).await,
        ["succeed", "succeed", "succeed", "failed"]
    );
    assert!(
        ts.rollback_reason(&g)
            .await
            .contains("Insufficient balance"),
        "{}",
        ts.rollback_reason(&g).await
    );
    assert_eq!(
        busi.methods_of(&g),
        ["TransOut", "TransIn", "TransInRevert", "TransOutRevert"]
    );
    let metrics = ts.metrics().await;
    assert!(
        metrics.contains(r#"dtm_server_process_total{api="submit",status="ok",type="grpc"} 2"#),
        "{metrics}"
    );
    ts.stop().await;
}

async fn grpc_msg_is_back_checked_through_grpc_query_prepared(backend: Backend) {
    let busi = GrpcBusi::start().await;
    let ts = TestServer::start(backend).await;
    let mut client = ts.grpc().await;

    let g = gid("grpc-msg");
    client.prepare(msg(&g, &busi)).await.expect("Prepare");
    client.submit(just(&g, "msg")).await.expect("Submit");
    ts.wait_pass(&g).await;
    assert_eq!(ts.status(&g).await, "succeed");
    assert_eq!(busi.methods_of(&g), ["TransOut", "TransIn"]);

    // The AP died after prepare: the back-check decides. First ONGOING, then SUCCESS.
    let g = gid("grpc-msg-check");
    client.prepare(msg(&g, &busi)).await.expect("Prepare");
    busi.push("QueryPrepared", &["ONGOING"]);
    ts.cron_forward_expect(36, &g).await;
    assert_eq!(ts.status(&g).await, "prepared");
    ts.cron_forward_expect(11, &g).await;
    assert_eq!(ts.status(&g).await, "succeed");
    assert_eq!(
        busi.methods_of(&g),
        ["QueryPrepared", "QueryPrepared", "TransOut", "TransIn"]
    );
    let check = busi
        .calls()
        .into_iter()
        .find(|c| c.md("dtm-gid") == g)
        .expect("back-check call");
    assert_eq!(
        (
            check.md("dtm-trans_type"),
            check.md("dtm-branch_id"),
            check.md("dtm-op")
        ),
        ("msg", "00", "msg")
    );
    assert_eq!(
        check.req,
        ReqGrpc::default(),
        "the back-check sends an empty message"
    );

    let g = gid("grpc-msg-fail");
    client.prepare(msg(&g, &busi)).await.expect("Prepare");
    busi.push("QueryPrepared", &["FAILURE"]);
    ts.cron_forward_expect(36, &g).await;
    assert_eq!(ts.status(&g).await, "failed");
    assert_eq!(ts.branch_statuses(&g).await, ["prepared", "prepared"]);
    assert_eq!(busi.methods_of(&g), ["QueryPrepared"]);
    ts.stop().await;
}

async fn grpc_tcc_registers_branches_and_confirms_them(backend: Backend) {
    let busi = GrpcBusi::start().await;
    let ts = TestServer::start(backend).await;
    let mut client = ts.grpc().await;
    let mut rm = busi.client().await;

    for (g, confirm) in [(gid("grpc-tcc"), true), (gid("grpc-tcc-abort"), false)] {
        client.prepare(just(&g, "tcc")).await.expect("Prepare");
        for (branch_id, name) in [("01", "TransOut"), ("02", "TransIn")] {
            let data = [
                ("confirm".to_owned(), busi.url(&format!("{name}Confirm"))),
                ("cancel".to_owned(), busi.url(&format!("{name}Revert"))),
            ];
            let branch = DtmBranchRequest {
                gid: g.clone(),
                trans_type: "tcc".to_owned(),
                branch_id: branch_id.to_owned(),
                data: data.into(),
                busi_payload: req_bytes(30, "", ""),
                ..DtmBranchRequest::default()
            };
            client
                .register_branch(branch)
                .await
                .expect("RegisterBranch");
            // The client calls the try itself, with the DTM metadata.
            let mut try_req = tonic::Request::new(
                ReqGrpc::decode(req_bytes(30, "", "").as_slice()).expect("ReqGrpc"),
            );
            try_req
                .metadata_mut()
                .insert("dtm-gid", g.parse().expect("ascii gid"));
            try_req
                .metadata_mut()
                .insert("dtm-op", "try".parse().expect("ascii"));
            let tried = if name == "TransOut" {
                rm.trans_out(try_req).await
            } else {
                rm.trans_in(try_req).await
            };
            tried.expect("try succeeds");
        }
        if confirm {
            client.submit(just(&g, "tcc")).await.expect("Submit");
        } else {
            client.abort(just(&g, "tcc")).await.expect("Abort");
        }
        ts.wait_pass(&g).await;
        let (want_status, want_methods, want_rows) = if confirm {
            (
                "succeed",
                ["TransOut", "TransIn", "TransInConfirm", "TransOutConfirm"],
                ["prepared", "succeed", "prepared", "succeed"],
            )
        } else {
            (
                "failed",
                ["TransOut", "TransIn", "TransInRevert", "TransOutRevert"],
                ["succeed", "prepared", "succeed", "prepared"],
            )
        };
        assert_eq!(ts.status(&g).await, want_status, "{g}");
        assert_eq!(busi.methods_of(&g), want_methods, "{g}");
        assert_eq!(ts.branch_statuses(&g).await, want_rows, "{g}");
        let phase2 = busi
            .calls()
            .into_iter()
            .filter(|c| c.md("dtm-gid") == g && c.md("dtm-op") != "try")
            .collect::<Vec<_>>();
        for c in &phase2 {
            assert_eq!(
                c.req.amount, 30,
                "BusiPayload is the phase-2 request: {c:?}"
            );
            assert_eq!(c.md("dtm-trans_type"), "tcc");
        }
    }
    ts.stop().await;
}

async fn grpc_topics_subscribe_unsubscribe_delete(backend: Backend) {
    let busi = GrpcBusi::start().await;
    let ts = TestServer::start(backend).await;
    let mut client = ts.grpc().await;
    let name = format!("grpc_trans_{}", braid::model::short_uuid());

    client
        .subscribe(topic(&name, &busi.url("TransOut")))
        .await
        .expect("Subscribe");
    client
        .subscribe(topic(&name, &busi.url("TransIn")))
        .await
        .expect("Subscribe");
    let dup = client
        .subscribe(topic(&name, &busi.url("TransIn")))
        .await
        .expect_err("a url subscribes once");
    assert_eq!(dup.code(), Code::Aborted, "{dup:?}");
    let (_, kv) = ts.get(&format!("queryKV?cat=topics&key={name}")).await;
    assert_eq!(kv["kv"][0]["version"], 2, "{kv}");

    // A msg to the topic fans out to both subscribers.
    let g = gid("grpc-topic");
    let req = DtmRequest {
        gid: g.clone(),
        trans_type: "msg".to_owned(),
        steps: json!([{"action": format!("topic://{name}")}]).to_string(),
        bin_payloads: vec![req_bytes(30, "", "")],
        ..DtmRequest::default()
    };
    client.submit(req).await.expect("Submit");
    ts.wait_pass(&g).await;
    assert_eq!(ts.status(&g).await, "succeed");
    let ids: Vec<String> = ts.branches(&g).await.into_iter().map(|b| b.0).collect();
    assert_eq!(ids, ["01-01", "01-02"]);
    assert_eq!(busi.methods_of(&g), ["TransOut", "TransIn"]);

    client
        .unsubscribe(topic(&name, &busi.url("TransOut")))
        .await
        .expect("Unsubscribe");
    let again = client
        .unsubscribe(topic(&name, &busi.url("TransOut")))
        .await
        .expect_err("not subscribed any more");
    assert_eq!(again.code(), Code::NotFound, "{again:?}");
    client
        .delete_topic(topic(&name, ""))
        .await
        .expect("DeleteTopic");
    let gone = client
        .delete_topic(topic(&name, ""))
        .await
        .expect_err("already deleted");
    assert_eq!(gone.code(), Code::NotFound, "{gone:?}");
    let (_, kv) = ts.get(&format!("queryKV?cat=topics&key={name}")).await;
    assert_eq!(kv["kv"], json!([]));
    let empty = client
        .subscribe(topic("", "x"))
        .await
        .expect_err("topic is required");
    assert_eq!(empty.code(), Code::InvalidArgument, "{empty:?}");
    ts.stop().await;
}

async fn grpc_errors_map_to_status_codes(backend: Backend) {
    let busi = GrpcBusi::start().await;
    let ts = TestServer::start(backend).await;
    let mut client = ts.grpc().await;

    let g = gid("grpc-no-type");
    let err = client
        .submit(just(&g, ""))
        .await
        .expect_err("Submit without TransType");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    // Fields are named as in the JSON API, the same over every protocol.
    assert!(err.message().contains("'trans_type'"), "{err:?}");
    let mut bad_steps = saga(&g, &busi, "", "");
    bad_steps.steps = "{not json".to_owned();
    let err = client.submit(bad_steps).await.expect_err("bad Steps");
    assert_eq!(
        (err.code(), err.message().contains("'steps'")),
        (Code::InvalidArgument, true),
        "{err:?}"
    );
    assert_eq!(
        ts.query(&g).await["transaction"],
        json!(null),
        "nothing was stored"
    );

    let wait = Some(DtmTransOptions {
        wait_result: true,
        ..DtmTransOptions::default()
    });
    let failed = gid("grpc-wait-failure");
    let g = failed.clone();
    let err = client
        .submit(DtmRequest {
            trans_options: wait.clone(),
            ..saga(&g, &busi, "", "FAILURE")
        })
        .await
        .expect_err("a FAILURE outcome");
    assert_eq!(err.code(), Code::Aborted, "{err:?}");
    assert!(err.message().contains("Insufficient balance"), "{err:?}");
    assert_eq!(ts.status(&g).await, "failed");

    let g = gid("grpc-wait-ongoing");
    busi.push("TransOut", &["ONGOING"]);
    let err = client
        .submit(DtmRequest {
            trans_options: wait,
            ..saga(&g, &busi, "", "")
        })
        .await
        .expect_err("an ONGOING outcome");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_eq!(ts.status(&g).await, "submitted");

    // A prepare of a finished transaction is a FAILURE too.
    let err = client
        .prepare(just(&failed, "msg"))
        .await
        .expect_err("prepare after the end");
    assert_eq!(err.code(), Code::Aborted, "{err:?}");
    let metrics = ts.metrics().await;
    assert!(
        metrics.contains(r#"dtm_server_process_total{api="submit",status="fail",type="grpc"} 4"#),
        "{metrics}"
    );
    ts.stop().await;
}

async fn grpc_branch_headers_arrive_as_metadata(backend: Backend) {
    let busi = GrpcBusi::start().await;
    let ts = TestServer::start(backend).await;
    let mut client = ts.grpc().await;
    let g = gid("grpc-headers");
    let headers = [
        ("test_header".to_owned(), "yes".to_owned()),
        ("X-Trace-Id".to_owned(), "abc".to_owned()),
    ];
    let options = DtmTransOptions {
        branch_headers: headers.into(),
        ..DtmTransOptions::default()
    };
    busi.push("TransIn", &["ERROR"]);
    client
        .submit(DtmRequest {
            trans_options: Some(options),
            ..saga(&g, &busi, "", "")
        })
        .await
        .expect("Submit");
    ts.wait_pass(&g).await;
    assert_eq!(ts.status(&g).await, "submitted", "TransIn errored once");
    ts.cron_forward_expect(21, &g).await;
    assert_eq!(ts.status(&g).await, "succeed");
    let calls: Vec<_> = busi
        .calls()
        .into_iter()
        .filter(|c| c.md("dtm-gid") == g)
        .collect();
    assert_eq!(
        calls.iter().map(|c| c.method.as_str()).collect::<Vec<_>>(),
        ["TransOut", "TransIn", "TransIn"]
    );
    for c in &calls {
        assert_eq!(
            (c.md("test_header"), c.md("x-trace-id")),
            ("yes", "abc"),
            "{:?}",
            c.metadata
        );
    }
    ts.stop().await;
}

on_every_store!(
    grpc_new_gid_returns_a_fresh_gid,
    grpc_saga_runs_end_to_end_with_dtm_metadata,
    grpc_msg_is_back_checked_through_grpc_query_prepared,
    grpc_tcc_registers_branches_and_confirms_them,
    grpc_topics_subscribe_unsubscribe_delete,
    grpc_errors_map_to_status_codes,
    grpc_branch_headers_arrive_as_metadata,
);

/// Server reflection (what grpcurl uses without `-proto`) lists DTM's service, and only the services braid
/// serves, and describes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_reflection_lists_and_describes_dtms_service() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let ts = TestServer::start(Backend::Sqlite).await;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", ts.server.grpc_addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let ask = |req: MessageRequest| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(req),
    };
    let requests = vec![
        ask(MessageRequest::ListServices(String::new())),
        ask(MessageRequest::FileContainingSymbol("dtmgimp.Dtm".into())),
    ];
    let mut answers = client
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .expect("reflection answers")
        .into_inner();
    let listed = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = listed.message_response else {
        panic!("not a service list: {listed:?}");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(
        names,
        ["dtmgimp.Dtm", "grpc.reflection.v1.ServerReflection"]
    );
    let described = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::FileDescriptorResponse(files)) = described.message_response else {
        panic!("not a file descriptor: {described:?}");
    };
    let file =
        prost_types::FileDescriptorProto::decode(&files.file_descriptor_proto[0][..]).unwrap();
    let service = file
        .service
        .iter()
        .find(|s| s.name() == "Dtm")
        .expect("Dtm service");
    let methods: Vec<&str> = service.method.iter().map(|m| m.name()).collect();
    for m in ["NewGid", "Submit", "Prepare", "Abort", "RegisterBranch"] {
        assert!(methods.contains(&m), "{m} missing: {methods:?}");
    }
    ts.stop().await;
}

/// A gRPC branch named by a host inside `--branch-allow` is checked again when it connects: with networks
/// listed, a name resolving outside them is never called and the saga fails without retries; with names
/// only, the same saga succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_branch_names_are_checked_against_the_addresses_they_resolve_to() {
    let busi = GrpcBusi::start().await;
    let by_name = |method: &str| {
        format!(
            "localhost:{}/busi.Busi/{method}",
            busi.host().rsplit(':').next().unwrap()
        )
    };
    for (allow, want) in [("localhost,10.0.0.0/8", "failed"), ("localhost", "succeed")] {
        let mut config = support::test_config(&support::fresh_dsn(Backend::Sqlite));
        config.branches.allow = Some(allow.to_owned());
        let ts = TestServer::start_with(config).await;
        let g = gid("grpc-resolve");
        let steps = json!([{"action": by_name("TransOut"), "compensate": ""}]);
        let req = DtmRequest {
            gid: g.clone(),
            trans_type: "saga".to_owned(),
            steps: steps.to_string(),
            bin_payloads: vec![req_bytes(30, "", "")],
            ..DtmRequest::default()
        };
        ts.grpc().await.submit(req).await.expect("submit");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        let status = loop {
            let s = ts.status(&g).await;
            if s == "succeed" || s == "failed" {
                break s;
            }
            assert!(std::time::Instant::now() < deadline, "{g} stuck at {s}");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        assert_eq!(status, want, "allow {allow}");
        let calls = busi.methods_of(&g);
        if want == "failed" {
            assert!(calls.is_empty(), "no call went out: {calls:?}");
            assert!(ts.query(&g).await.to_string().contains("--branch-allow"));
        } else {
            assert_eq!(calls, ["TransOut"]);
        }
        ts.stop().await;
    }
}
