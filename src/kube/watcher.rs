//! The policy watcher: a kube-runtime `Controller` over `TransactionPolicy` objects in one namespace. Its
//! reflector store is every replica's view of the policies (read by [`super::PolicyDefaults`] and the
//! discovery); its reconcile writes each policy's status with server-side apply.
//!
//! No leader is needed: every replica computes the same status from the same spec ([`desired_status`]) and
//! writes only when what it sees differs, keeping `lastTransitionTime` while the condition's status stays,
//! so replicas converge after at most a few redundant writes.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use tokio_util::sync::CancellationToken;

use super::policy::{READY, REASON_VALID, TransactionPolicy, TransactionPolicyStatus};
use super::{Error, Result};
use crate::metrics::Metrics;

/// The field manager of braid's status writes (server-side apply).
pub const FIELD_MANAGER: &str = "braid";

/// How often a policy is looked at again without any change (a safety net).
const RESYNC: Duration = Duration::from_secs(300);
/// How soon a failed status write is retried.
const RETRY: Duration = Duration::from_secs(15);

/// What the reconciler shares.
struct Context {
    client: Client,
    metrics: Arc<Metrics>,
}

/// Watches `TransactionPolicy` objects and writes their status.
pub struct PolicyWatcher {
    controller: Controller<TransactionPolicy>,
    ctx: Arc<Context>,
}

impl PolicyWatcher {
    /// A watcher of the policies in `namespace`.
    pub fn new(client: Client, namespace: &str, metrics: Arc<Metrics>) -> Self {
        let api: Api<TransactionPolicy> = Api::namespaced(client.clone(), namespace);
        let controller = Controller::new(api, watcher::Config::default().any_semantic());
        Self {
            controller,
            ctx: Arc::new(Context { client, metrics }),
        }
    }

    /// The reflector store: the current policies as this replica sees them.
    pub fn store(&self) -> Store<TransactionPolicy> {
        self.controller.store()
    }

    /// Runs until `cancel`: keeps the store current and reconciles every policy's status.
    pub async fn run(self, cancel: CancellationToken) {
        self.controller
            .graceful_shutdown_on(cancel.cancelled_owned())
            .run(reconcile, error_policy, self.ctx)
            .for_each(|res| async move {
                match res {
                    Ok((obj, _)) => tracing::trace!(policy = %obj, "policy reconciled"),
                    Err(e) => tracing::debug!(error = %e, "policy watch or reconcile error"),
                }
            })
            .await;
        tracing::debug!("policy watcher stopped");
    }
}

/// The status braid wants for `policy` at `now`: `observedGeneration` and a `Ready` condition that says
/// whether the spec is valid (and if not, why). `lastTransitionTime` is kept while the status stays.
pub fn desired_status(policy: &TransactionPolicy, now: Timestamp) -> TransactionPolicyStatus {
    let generation = policy.metadata.generation;
    let (status, reason, message) = match policy.spec.validate() {
        Ok(()) => (
            "True",
            REASON_VALID.to_owned(),
            "the policy is valid and applies to new transactions it matches".to_owned(),
        ),
        Err(e) => ("False", e.reason.to_owned(), e.message),
    };
    let previous = policy
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == READY));
    let last_transition_time = match previous {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => Time(now),
    };
    TransactionPolicyStatus {
        observed_generation: generation,
        conditions: vec![Condition {
            type_: READY.to_owned(),
            status: status.to_owned(),
            reason,
            message,
            observed_generation: generation,
            last_transition_time,
        }],
    }
}

/// Writes the desired status when the current one differs.
async fn reconcile(policy: Arc<TransactionPolicy>, ctx: Arc<Context>) -> Result<Action> {
    let desired = desired_status(&policy, Timestamp::now());
    if policy.status.as_ref() == Some(&desired) {
        return Ok(Action::requeue(RESYNC));
    }
    let name = policy.name_any();
    let namespace = policy.namespace().unwrap_or_default();
    let api: Api<TransactionPolicy> = Api::namespaced(ctx.client.clone(), &namespace);
    let patch = serde_json::json!({
        "apiVersion": TransactionPolicy::api_version(&()),
        "kind": TransactionPolicy::kind(&()),
        "status": desired,
    });
    api.patch_status(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(|source| Error::Api {
        context: format!("writing the status of TransactionPolicy {namespace}/{name}"),
        source,
    })?;
    ctx.metrics
        .policy_reconcile
        .with_label_values(&["ok"])
        .inc();
    let ready = desired
        .conditions
        .first()
        .map(|c| format!("Ready={} ({}): {}", c.status, c.reason, c.message))
        .unwrap_or_default();
    tracing::info!(policy = %format!("{namespace}/{name}"), "{ready}");
    Ok(Action::requeue(RESYNC))
}

fn error_policy(policy: Arc<TransactionPolicy>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(policy = %policy.name_any(), error = %error, "reconciling a TransactionPolicy failed; retrying");
    ctx.metrics
        .policy_reconcile
        .with_label_values(&["error"])
        .inc();
    Action::requeue(RETRY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::policy::TransactionPolicySpec;

    #[test]
    fn status_names_the_problem_and_keeps_the_transition_time() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let t1: Timestamp = "2026-01-01T00:05:00Z".parse().unwrap();
        let mut p = TransactionPolicy::new(
            "p",
            TransactionPolicySpec {
                retry_interval: Some(0),
                ..Default::default()
            },
        );
        p.metadata.generation = Some(3);
        let s = desired_status(&p, t0);
        assert_eq!(s.observed_generation, Some(3));
        let c = &s.conditions[0];
        assert_eq!(
            (c.type_.as_str(), c.status.as_str(), c.reason.as_str()),
            ("Ready", "False", "InvalidTiming")
        );
        assert!(c.message.contains("retryInterval"), "{}", c.message);
        assert_eq!(c.observed_generation, Some(3));

        p.status = Some(s.clone());
        assert_eq!(
            desired_status(&p, t1),
            s,
            "unchanged spec: same status, same time"
        );

        p.spec.retry_interval = Some(5);
        p.metadata.generation = Some(4);
        let fixed = desired_status(&p, t1);
        let c = &fixed.conditions[0];
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "Valid"));
        assert_eq!(c.last_transition_time, Time(t1), "status changed: new time");
        assert_eq!(fixed.observed_generation, Some(4));
    }
}
