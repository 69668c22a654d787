//! Workflow (spec §7.5). The client SDK drives the workflow and records each step with `registerBranch`;
//! the server only resumes it: when a workflow is still unfinished at its retry time (the client died or
//! lost its connection), call the `query_prepared` callback with the workflow name as `op` and the original
//! input as body. The client's own `submit` decides the final status.

use base64::Engine as _;
use prost::Message as _;

use std::collections::BTreeMap;

use super::driver::{Pass, Step};
use super::kind::Kind;
use super::{Error as EngineError, Result as EngineResult};
use crate::model::{Branch, BranchId, BranchStatus, Gid, Millis, Op, Protocol};
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
        // gRPC workflows are resumed through `workflow.Workflow/Execute` on the client's host (over TLS when
        // it is written `grpcs://host:port`).
        let scheme = crate::invoke::grpc::TLS_SCHEME;
        let (tls, target) = match pass.txn.query_prepared.strip_prefix(scheme) {
            Some(rest) => (scheme, rest),
            None => ("", pass.txn.query_prepared.as_str()),
        };
        let host = target.split('/').next().unwrap_or_default();
        (
            format!("{tls}{host}/workflow.Workflow/Execute"),
            WorkflowData { data }.encode_to_vec(),
        )
    } else {
        (pass.txn.query_prepared.clone(), data)
    };
    let outcome = pass.call_url(url, "00", &name, body).await?;
    pass.note(&outcome);
    Ok(())
}

/// The workflow type: its client records each step with `registerBranch` (`op`, `status`); the server
/// only resumes it.
pub(crate) struct Workflow;

#[async_trait::async_trait]
impl Kind for Workflow {
    fn check_custom_data(&self, custom_data: &str, _steps: usize) -> Result<(), String> {
        if custom_data.trim().is_empty() {
            return Ok(());
        }
        serde_json::from_str::<serde_json::Value>(custom_data)
            .map(|_| ())
            .map_err(|e| format!("custom_data is not valid JSON: {e}"))
    }

    fn registered_branches(
        &self,
        gid: &Gid,
        branch_id: &BranchId,
        data: Vec<u8>,
        fields: &BTreeMap<String, String>,
        now: Millis,
    ) -> EngineResult<Vec<Branch>> {
        let get = |k: &str| fields.get(k).cloned().unwrap_or_default();
        let op: Op = get("op")
            .parse()
            .map_err(|e| EngineError::BadRequest(format!("field 'op': {e}")))?;
        let status: BranchStatus = get("status")
            .parse()
            .map_err(|e| EngineError::BadRequest(format!("field 'status': {e}")))?;
        let mut b = Branch::new(gid, branch_id.clone(), op, String::new(), data, now);
        b.status = status;
        match status {
            BranchStatus::Succeed => b.finish_time = Some(now),
            BranchStatus::Failed => b.rollback_time = Some(now),
            BranchStatus::Prepared => {}
        }
        Ok(vec![b])
    }

    /// Its client drives it; a prepared workflow is resumed at its retry time, not failed at a timeout.
    fn wakes_at_timeout(&self) -> bool {
        false
    }

    async fn process(&self, pass: &mut Pass<'_>) -> Step {
        process(pass).await
    }
}
