//! Workflow (spec §7.5). The client SDK drives the workflow and records each step with `registerBranch`;
//! the server only resumes it: when a workflow is still unfinished at its retry time (the client died or
//! lost its connection), call the `query_prepared` callback with the workflow name as `op` and the original
//! input as body. The client's own `submit` decides the final status.

use base64::Engine as _;
use prost::Message as _;

use super::driver::{Pass, Step};
use crate::model::Protocol;
use crate::proto::workflow::WorkflowData;

pub(crate) async fn process(pass: &mut Pass<'_>) -> Step {
    let custom: serde_json::Value = serde_json::from_str(&pass.txn.custom_data).unwrap_or_default();
    let name = custom
        .get("name")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let data = custom
        .get("data")
        .and_then(serde_json::Value::as_str)
        .and_then(|d| base64::engine::general_purpose::STANDARD.decode(d).ok())
        .unwrap_or_default();
    let (url, body) = if pass.txn.protocol == Protocol::Grpc {
        // gRPC workflows are resumed through `workflow.Workflow/Execute` on the client's host.
        let host = pass
            .txn
            .query_prepared
            .split('/')
            .next()
            .unwrap_or_default();
        (
            format!("{host}/workflow.Workflow/Execute"),
            WorkflowData { data }.encode_to_vec(),
        )
    } else {
        (pass.txn.query_prepared.clone(), data)
    };
    let outcome = pass.call_url(url, "00", &name, body).await?;
    pass.note(&outcome);
    Ok(())
}
