//! Kubernetes integration: the `TransactionPolicy` CRD ([`policy`]), the policy watcher that keeps every
//! replica's view of the policies and writes their status ([`watcher`]), and branch-service discovery
//! through EndpointSlices ([`discovery`]).
//!
//! Data flows one way: this module only feeds the engine (option defaults for new transactions) and the
//! invoker (endpoints for branch URLs). Every replica runs the watchers; no leader is needed, because every
//! replica computes the same status and writes it only when it differs from what it sees.
//!
//! It is active only when braid runs with Kubernetes enabled (`--kubernetes on`, or `auto` inside a pod,
//! detected by `KUBERNETES_SERVICE_HOST`). Outside a cluster nothing here runs and nothing changes.

pub mod discovery;
pub mod policy;
pub mod watcher;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ::kube::Client;
use ::kube::runtime::reflector::Store;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::engine::{NewTxn, OptionDefaults};
use crate::metrics::Metrics;
use crate::model::TransOptions;

pub use discovery::EndpointDiscovery;
pub use policy::{TransactionPolicy, TransactionPolicySpec, TransactionPolicyStatus};
pub use watcher::PolicyWatcher;

/// Errors of the Kubernetes integration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No usable cluster configuration (in-cluster service account or kubeconfig).
    #[error("kubernetes client configuration: {0}")]
    Config(String),
    /// A Kubernetes API call failed.
    #[error("kubernetes API: {context}: {source}")]
    Api {
        /// What was being done.
        context: String,
        /// The client error.
        #[source]
        source: ::kube::Error,
    },
    /// Serialising a status patch failed.
    #[error("serialising {0}")]
    Serialize(#[from] serde_json::Error),
    /// The TransactionPolicy CRD is not served, or braid may not list what it needs (RBAC).
    #[error(
        "cannot list TransactionPolicies in namespace {namespace} ({reason}): install the CRD \
         (`braid crd | kubectl apply -f -`, or the Helm chart) and grant braid its Role, or run with --kubernetes off"
    )]
    Unavailable {
        /// The namespace.
        namespace: String,
        /// What the API server said.
        reason: String,
    },
}

impl Error {
    /// A fixed label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Config(_) => "config",
            Self::Api { .. } => "api",
            Self::Serialize(_) => "serialize",
            Self::Unavailable { .. } => "unavailable",
        }
    }
}

/// `Result` of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Whether to run the Kubernetes integration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KubeMode {
    /// On when `KUBERNETES_SERVICE_HOST` is set (inside a pod), off elsewhere.
    #[default]
    Auto,
    /// Always on (uses the in-cluster service account, else the kubeconfig).
    On,
    /// Always off.
    Off,
}

/// Options of the Kubernetes integration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KubeOptions {
    /// Whether to run it.
    pub mode: KubeMode,
    /// The namespace whose TransactionPolicies and EndpointSlices are watched (default: `POD_NAMESPACE`,
    /// else the service account's namespace, else the kubeconfig's).
    pub namespace: Option<String>,
}

impl KubeOptions {
    /// Whether the integration runs, given the environment.
    pub fn enabled(&self, env: &dyn Fn(&str) -> Option<String>) -> bool {
        match self.mode {
            KubeMode::On => true,
            KubeMode::Off => false,
            KubeMode::Auto => env("KUBERNETES_SERVICE_HOST").is_some_and(|v| !v.is_empty()),
        }
    }
}

/// A client from the in-cluster service account or the kubeconfig (`kube::Client::try_default`).
pub async fn client() -> Result<Client> {
    Client::try_default()
        .await
        .map_err(|e| Error::Config(e.to_string()))
}

/// The namespace to watch: the option, else `POD_NAMESPACE`, else the service account's, else the client's.
pub fn namespace(opts: &KubeOptions, client: &Client) -> String {
    opts.namespace
        .clone()
        .filter(|n| !n.is_empty())
        .or_else(|| {
            std::env::var("POD_NAMESPACE")
                .ok()
                .filter(|n| !n.is_empty())
        })
        .or_else(|| {
            std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|n| !n.is_empty())
        })
        .unwrap_or_else(|| client.default_namespace().to_owned())
}

/// Checks that the TransactionPolicy CRD is served and listable in `namespace` (404 or 403 are
/// [`Error::Unavailable`]). Other failures (e.g. the API server restarting) are not reported: the watchers
/// retry them with backoff.
pub async fn probe(client: &Client, namespace: &str) -> Result<()> {
    let api: ::kube::Api<TransactionPolicy> = ::kube::Api::namespaced(client.clone(), namespace);
    match api.list(&::kube::api::ListParams::default().limit(1)).await {
        Err(::kube::Error::Api(status)) if status.code == 404 || status.code == 403 => {
            Err(Error::Unavailable {
                namespace: namespace.to_owned(),
                reason: format!("{} {}", status.code, status.message),
            })
        }
        Err(e) => {
            tracing::warn!(error = %e, "probing the TransactionPolicy API failed; the watchers will retry");
            Ok(())
        }
        Ok(_) => Ok(()),
    }
}

/// Option defaults from the reflected TransactionPolicies (see [`policy`] for the precedence).
#[derive(Clone)]
pub struct PolicyDefaults {
    policies: Store<TransactionPolicy>,
}

impl PolicyDefaults {
    /// Defaults read from `policies` at each transaction's creation.
    pub fn new(policies: Store<TransactionPolicy>) -> Self {
        Self { policies }
    }
}

impl OptionDefaults for PolicyDefaults {
    fn fill(&self, txn: &NewTxn<'_>, options: &mut TransOptions) {
        if let Some(key) = policy::apply(&self.policies.state(), txn, options) {
            tracing::debug!(braid.gid = %txn.gid, policy = %key, "transaction policy applied");
        }
    }
}

/// Waits until `store` has its first full list. Polls again every 200 ms: kube-runtime's readiness signal
/// wakes only the last of several concurrent waiters (the Controller waits on the policy store too), but
/// every poll after it fired sees it.
async fn wait_until_ready<K>(store: &Store<K>)
where
    K: ::kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    loop {
        if let Ok(result) =
            tokio::time::timeout(Duration::from_millis(200), store.wait_until_ready()).await
        {
            if result.is_err() {
                // The writer is gone (the watcher stopped); nothing will become ready.
                std::future::pending::<()>().await;
            }
            return;
        }
    }
}

/// The running Kubernetes integration of one replica.
pub struct KubeRuntime {
    defaults: Arc<PolicyDefaults>,
    discovery: Arc<EndpointDiscovery>,
    ready: Arc<AtomicBool>,
    tasks: JoinSet<()>,
    namespace: String,
}

impl KubeRuntime {
    /// Starts the policy watcher (status reconciler) and the EndpointSlice watcher in `namespace`. They
    /// run until `cancel`.
    pub fn start(
        client: Client,
        namespace: &str,
        metrics: Arc<Metrics>,
        cancel: &CancellationToken,
    ) -> Self {
        let mut tasks = JoinSet::new();
        let watcher = PolicyWatcher::new(client.clone(), namespace, metrics.clone());
        let policies = watcher.store();
        tasks.spawn(watcher.run(cancel.clone()));
        let (discovery, slices) =
            EndpointDiscovery::new(client, namespace, policies.clone(), metrics);
        let discovery = Arc::new(discovery);
        tasks.spawn(discovery.clone().run(cancel.clone()));
        let ready = Arc::new(AtomicBool::new(false));
        let flag = ready.clone();
        let policy_reader = policies.clone();
        let ready_cancel = cancel.clone();
        tasks.spawn(async move {
            let both = async {
                wait_until_ready(&policy_reader).await;
                wait_until_ready(&slices).await;
            };
            tokio::select! {
                () = both => {
                    flag.store(true, Ordering::Release);
                    tracing::info!("kubernetes policies and endpoints synced");
                }
                () = ready_cancel.cancelled() => {}
            }
        });
        Self {
            defaults: Arc::new(PolicyDefaults::new(policies)),
            discovery,
            ready,
            tasks,
            namespace: namespace.to_owned(),
        }
    }

    /// The option defaults for the engine.
    pub fn option_defaults(&self) -> Arc<PolicyDefaults> {
        self.defaults.clone()
    }

    /// The branch-URL resolver for the invoker.
    pub fn discovery(&self) -> Arc<EndpointDiscovery> {
        self.discovery.clone()
    }

    /// A flag that turns true once the first list of policies and of EndpointSlices has arrived.
    pub fn ready_flag(&self) -> Arc<AtomicBool> {
        self.ready.clone()
    }

    /// The watched namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Waits for the watchers to stop (after the cancel token given to [`KubeRuntime::start`] fired).
    pub async fn stopped(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}
