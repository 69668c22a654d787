//! Workflow, server side (spec §7.5, §4.7; DTM's workflow_*_test), on SQLite and MariaDB. The client SDK
//! drives a workflow; the server stores its progress, records its final result, and resumes it through the
//! callback (HTTP `query_prepared`, or gRPC `workflow.Workflow/Execute`) when the client died mid-way.

// Panicking is how a test fails; clippy's allow-*-in-tests does not reach the scenario fns and the harness.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use base64::Engine as _;
use braid::proto::dtmgimp::{DtmBranchRequest, DtmRequest};
use serde_json::{Value, json};
use support::{Backend, Busi, GrpcBusi, TestServer, gid};

const INPUT: &[u8] = br#"{"amount":30,"user":"1"}"#;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn custom_data(name: &str) -> String {
    json!({"name": name, "data": b64(INPUT)}).to_string()
}

fn prepare_body(g: &str, name: &str, callback: &str) -> Value {
    json!({"gid": g, "trans_type": "workflow", "custom_data": custom_data(name), "query_prepared": callback})
}

fn step(g: &str, branch_id: &str, op: &str, status: &str, data: &str) -> Value {
    json!({"gid": g, "trans_type": "workflow", "branch_id": branch_id, "op": op, "status": status, "data": data})
}

/// `progresses` as `(branch_id, op, status, decoded bin_data)`.
fn progresses(reply: &Value) -> Vec<(String, String, String, String)> {
    let s = |p: &Value, k: &str| p[k].as_str().unwrap_or_default().to_owned();
    reply["progresses"]
        .as_array()
        .expect("progresses is an array")
        .iter()
        .map(|p| {
            let data = base64::engine::general_purpose::STANDARD
                .decode(s(p, "bin_data"))
                .expect("bin_data is base64");
            (
                s(p, "branch_id"),
                s(p, "op"),
                s(p, "status"),
                String::from_utf8_lossy(&data).into_owned(),
            )
        })
        .collect()
}

fn progress(list: &[(&str, &str, &str, &str)]) -> Vec<(String, String, String, String)> {
    list.iter()
        .map(|(a, b, c, d)| {
            (
                (*a).to_owned(),
                (*b).to_owned(),
                (*c).to_owned(),
                (*d).to_owned(),
            )
        })
        .collect()
}

async fn workflow_records_progress_and_returns_it_on_prepare(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;
    let g = gid("wf-progress");
    let callback = format!("{}/workflow/resume", busi.url());
    let (status, reply) = ts
        .post(
            "prepareWorkflow",
            &prepare_body(&g, "wf-transfer", &callback),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        (
            &reply["transaction"]["gid"],
            &reply["transaction"]["status"]
        ),
        (&json!(g), &json!("prepared"))
    );
    assert_eq!(reply["progresses"], json!([]));

    for body in [
        step(&g, "01", "action", "succeed", "out-result"),
        step(&g, "02", "action", "failed", "reason:Insufficient balance"),
        step(&g, "01", "rollback", "succeed", ""),
    ] {
        let (status, reply) = ts.post("registerBranch", &body).await;
        assert_eq!(status, 200, "{body}: {reply}");
    }
    let (status, reply) = ts
        .post(
            "registerBranch",
            &step(&g, "01", "action", "succeed", "again"),
        )
        .await;
    assert_eq!(status, 409, "a step is recorded once: {reply}");
    let (status, reply) = ts
        .post("registerBranch", &step(&g, "03", "action", "maybe", ""))
        .await;
    assert_eq!(status, 400, "{reply}");
    assert!(
        reply["message"]
            .as_str()
            .unwrap_or_default()
            .contains("'status'"),
        "{reply}"
    );

    // A client resuming the workflow prepares again and gets the stored progress back.
    let (status, reply) = ts
        .post(
            "prepareWorkflow",
            &prepare_body(&g, "wf-transfer", &callback),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["transaction"]["status"], "prepared");
    assert_eq!(
        progresses(&reply),
        progress(&[
            ("01", "action", "succeed", "out-result"),
            ("02", "action", "failed", "reason:Insufficient balance"),
            ("01", "rollback", "succeed", ""),
        ])
    );
    let q = ts.query(&g).await;
    assert_eq!(
        q["transaction"]["custom_data"],
        custom_data("wf-transfer"),
        "the stored input is the first one"
    );
    assert!(
        q["branches"][0]["finish_time"].is_string(),
        "a succeeded step has a finish_time: {q}"
    );
    assert!(
        q["branches"][1]["rollback_time"].is_string(),
        "a failed step has a rollback_time: {q}"
    );
    ts.stop().await;
}

async fn workflow_submit_records_the_result_once(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;
    let callback = format!("{}/workflow/resume", busi.url());

    let ok = gid("wf-ok");
    assert_eq!(
        ts.post("prepareWorkflow", &prepare_body(&ok, "wf", &callback))
            .await
            .0,
        200
    );
    assert_eq!(
        ts.post(
            "registerBranch",
            &step(&ok, "01", "action", "succeed", "r1")
        )
        .await
        .0,
        200
    );
    let result = b64(b"transferred");
    let submit = json!({"gid": ok, "trans_type": "workflow", "req_extra": {"status": "succeed", "result": result}});
    ts.submit_ok(&submit).await;
    assert_eq!(ts.status(&ok).await, "succeed");
    assert_eq!(ts.query(&ok).await["transaction"]["result"], json!(result));
    let (status, reply) = ts.post("submit", &submit).await;
    assert_eq!(
        (status, &reply["dtm_result"]),
        (409, &json!("FAILURE")),
        "a second submit: {reply}"
    );
    let (status, _) = ts
        .post(
            "registerBranch",
            &step(&ok, "02", "action", "succeed", "late"),
        )
        .await;
    assert_eq!(status, 409, "no steps after the end");
    // A client that restarts after the end gets the final status and result from prepareWorkflow.
    let (_, reply) = ts
        .post("prepareWorkflow", &prepare_body(&ok, "wf", &callback))
        .await;
    assert_eq!(
        (
            &reply["transaction"]["status"],
            &reply["transaction"]["result"]
        ),
        (&json!("succeed"), &json!(result))
    );

    let failed = gid("wf-failed");
    assert_eq!(
        ts.post("prepareWorkflow", &prepare_body(&failed, "wf", &callback))
            .await
            .0,
        200
    );
    let bad = json!({"gid": failed, "trans_type": "workflow", "req_extra": {"status": "done"}});
    let (status, reply) = ts.post("submit", &bad).await;
    assert_eq!(
        status, 400,
        "req_extra.status must be succeed or failed: {reply}"
    );
    let submit = json!({"gid": failed, "trans_type": "workflow",
        "req_extra": {"status": "failed", "rollback_reason": "reason:Insufficient balance"}});
    ts.submit_ok(&submit).await;
    assert_eq!(ts.status(&failed).await, "failed");
    let (_, reply) = ts
        .post("prepareWorkflow", &prepare_body(&failed, "wf", &callback))
        .await;
    assert_eq!(reply["transaction"]["status"], "failed");
    assert_eq!(
        reply["transaction"]["rollback_reason"],
        "reason:Insufficient balance"
    );

    ts.forward(3600);
    assert!(
        ts.cron_once().await.is_empty(),
        "finished workflows are never resumed"
    );
    assert!(
        busi.calls().is_empty(),
        "and never called back: {:?}",
        busi.calls()
    );
    ts.stop().await;
}

async fn workflow_resume_calls_the_http_callback_until_the_client_finishes(backend: Backend) {
    let busi = Busi::start().await;
    let ts = TestServer::start(backend).await;
    let g = gid("wf-resume");
    let callback = format!("{}/workflow/resume", busi.url());
    assert_eq!(
        ts.post(
            "prepareWorkflow",
            &prepare_body(&g, "wf-transfer", &callback)
        )
        .await
        .0,
        200
    );
    assert_eq!(
        ts.post("registerBranch", &step(&g, "01", "action", "succeed", "r1"))
            .await
            .0,
        200
    );
    // The client dies here.
    assert!(
        ts.cron_once().await.is_empty(),
        "not resumed before its retry time"
    );

    busi.push("workflow/resume", &["ERROR"]);
    ts.cron_forward_expect(11, &g).await;
    let calls = busi.calls_of("workflow/resume");
    assert_eq!(calls.len(), 1);
    let c = &calls[0];
    assert_eq!(
        (
            c.method.as_str(),
            c.gid.as_str(),
            c.trans_type.as_str(),
            c.branch_id.as_str(),
            c.op.as_str()
        ),
        ("POST", g.as_str(), "workflow", "00", "wf-transfer")
    );
    assert_eq!(
        c.body.as_bytes(),
        INPUT,
        "the body is the decoded workflow input"
    );
    assert_eq!(
        ts.status(&g).await,
        "prepared",
        "the server never decides a workflow"
    );
    assert_eq!(
        ts.query(&g).await["transaction"]["next_cron_interval"],
        20,
        "a failed callback backs off"
    );

    ts.cron_forward_expect(21, &g).await;
    assert_eq!(busi.calls_of("workflow/resume").len(), 2);
    assert_eq!(ts.status(&g).await, "prepared");
    // The resumed client finishes the workflow itself.
    ts.submit_ok(&json!({"gid": g, "trans_type": "workflow", "req_extra": {"status": "succeed"}}))
        .await;
    ts.forward(3600);
    assert!(ts.cron_once().await.is_empty());
    assert_eq!(busi.calls_of("workflow/resume").len(), 2);
    ts.stop().await;
}

async fn workflow_over_grpc_resumes_through_workflow_execute(backend: Backend) {
    let wf = GrpcBusi::start().await;
    let ts = TestServer::start(backend).await;
    let mut client = ts.grpc().await;
    let g = gid("wf-grpc");
    let prepare = DtmRequest {
        gid: g.clone(),
        trans_type: "workflow".to_owned(),
        customed_data: custom_data("wf-grpc"),
        query_prepared: wf.host(),
        ..DtmRequest::default()
    };
    let reply = client
        .prepare_workflow(prepare.clone())
        .await
        .expect("PrepareWorkflow")
        .into_inner();
    let t = reply.transaction.expect("transaction");
    assert_eq!(
        (t.gid.as_str(), t.status.as_str()),
        (g.as_str(), "prepared")
    );
    assert!(reply.progresses.is_empty());
    let branch = DtmBranchRequest {
        gid: g.clone(),
        trans_type: "workflow".to_owned(),
        branch_id: "01".to_owned(),
        data: [
            ("op".to_owned(), "action".to_owned()),
            ("status".to_owned(), "succeed".to_owned()),
        ]
        .into(),
        busi_payload: b"\x08\x1e".to_vec(),
        ..DtmBranchRequest::default()
    };
    client
        .register_branch(branch)
        .await
        .expect("RegisterBranch");
    let reply = client
        .prepare_workflow(prepare)
        .await
        .expect("PrepareWorkflow again")
        .into_inner();
    let p: Vec<_> = reply
        .progresses
        .iter()
        .map(|p| {
            (
                p.branch_id.as_str(),
                p.op.as_str(),
                p.status.as_str(),
                p.bin_data.as_slice(),
            )
        })
        .collect();
    assert_eq!(p, [("01", "action", "succeed", b"\x08\x1e".as_slice())]);

    ts.cron_forward_expect(11, &g).await;
    let calls = wf.wait_calls("Execute", 1).await;
    let c = &calls[0];
    assert_eq!(
        c.workflow_data, INPUT,
        "WorkflowData.Data is the decoded input"
    );
    assert_eq!(
        (
            c.md("dtm-gid"),
            c.md("dtm-trans_type"),
            c.md("dtm-op"),
            c.md("dtm-branch_id")
        ),
        (g.as_str(), "workflow", "wf-grpc", "00")
    );

    let submit = DtmRequest {
        gid: g.clone(),
        trans_type: "workflow".to_owned(),
        req_extra: [("status".to_owned(), "succeed".to_owned())].into(),
        ..DtmRequest::default()
    };
    client.submit(submit.clone()).await.expect("Submit");
    assert_eq!(ts.status(&g).await, "succeed");
    let again = client
        .submit(submit)
        .await
        .expect_err("a second Submit fails");
    assert_eq!(again.code(), tonic::Code::Aborted, "{again:?}");
    ts.stop().await;
}

on_every_store!(
    workflow_records_progress_and_returns_it_on_prepare,
    workflow_submit_records_the_result_once,
    workflow_resume_calls_the_http_callback_until_the_client_finishes,
    workflow_over_grpc_resumes_through_workflow_execute,
);
