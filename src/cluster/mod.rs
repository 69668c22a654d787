//! Cluster membership, partition ownership and the recovery scanner.
//!
//! Replicas share one store. Every transaction belongs to one of P partitions (`hash(gid) mod P`, P fixed at
//! the first start and recorded in the store). Each replica:
//! - holds a **membership lease** (`member/<node-id>`) and renews it every retry period;
//! - computes the live members from the membership leases it sees, and from them a balanced rendezvous
//!   assignment of partitions to members ([`assignment`]), which every replica computes the same way;
//! - takes the **partition leases** assigned to it once they are free, and releases the ones now assigned
//!   to another member;
//! - on taking a partition, bumps the partition's **fencing epoch** in the store
//!   ([`crate::store::ClaimStore::fence_partition`]);
//! - scans only the partitions it owns ([`scanner`]), and every claim and every state change of the
//!   scanner's passes carries the epoch, so the store refuses them once another replica has taken over.
//!
//! Invariants:
//! - Leases are advisory; fencing is what makes a stale owner harmless. No two owners of a partition ever
//!   share an epoch (each take-over is an atomic increment), and a write under an old epoch is refused.
//! - A replica stops scanning a partition `renew-deadline` after its last successful renewal (measured on
//!   its own monotonic clock from *before* the renewal was sent), which is before the lease can expire for
//!   anyone else (`lease-duration` > `renew-deadline`).
//! - New transactions are not fenced: the replica that received one runs it at once, and the status and
//!   version compare-and-set protects it.
//!
//! Lease backends ([`lease::LeaseBackend`]): `sql` (a table in the shared store, expiry on the store clock),
//! `kubernetes` (coordination.k8s.io/v1 Lease objects, expiry judged from local observation as client-go
//! does) and `local` (in-process, for a single node).

pub mod assignment;
pub mod keeper;
pub mod kubernetes;
pub mod lease;
pub mod local;
pub mod scanner;
pub mod sql;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

use crate::model::{LeaseEpoch, Partition};
use crate::store::clock::StoreClock;
use crate::store::{self, DynStore};

/// Errors of the cluster layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store failed (lease table, fencing rows).
    #[error("cluster store operation failed: {0}")]
    Store(#[from] store::Error),
    /// The Kubernetes API failed.
    #[error("kubernetes lease operation failed: {0}")]
    Kubernetes(#[from] kube::Error),
    /// The store was initialised with another partition count.
    #[error(
        "the store was set up with {stored} partitions, but this replica was started with --partitions \
         {configured}; the partition count cannot change after the first start (it decides which partition \
         every stored transaction is in): start every replica with --partitions {stored}"
    )]
    PartitionCountMismatch {
        /// The count recorded at the first start.
        stored: u16,
        /// The count this replica was given.
        configured: u16,
    },
    /// A setting is invalid or names a backend this build does not have.
    #[error("{0}")]
    Config(String),
    /// A lease operation did not answer in time.
    #[error("{what} did not answer within {after:?}")]
    Timeout {
        /// Which operation.
        what: &'static str,
        /// The time limit.
        after: Duration,
    },
    /// A lease object could not be read.
    #[error("lease {name} is malformed: {reason}")]
    MalformedLease {
        /// The lease's name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl Error {
    /// Whether retrying later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Store(e) => e.is_retryable(),
            Self::Kubernetes(_) => true,
            Self::Timeout { .. } => true,
            Self::PartitionCountMismatch { .. } | Self::Config(_) | Self::MalformedLease { .. } => {
                false
            }
        }
    }

    /// A fixed label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Store(_) => "store",
            Self::Kubernetes(_) => "kubernetes",
            Self::PartitionCountMismatch { .. } => "partition_count",
            Self::Config(_) => "config",
            Self::Timeout { .. } => "timeout",
            Self::MalformedLease { .. } => "malformed_lease",
        }
    }
}

/// `Result` of the cluster layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Who holds a lease: the node id plus a suffix chosen at each start, so a restarted replica with the same
/// node id never mistakes a lease of its previous life for its own. Written `<node-id>_<suffix>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    node_id: String,
    suffix: String,
}

impl Identity {
    /// A fresh identity for `node_id` (a new random suffix).
    pub fn new(node_id: &str) -> Self {
        let suffix = crate::model::short_uuid()[..8].to_lowercase();
        Self {
            node_id: node_id.to_owned(),
            suffix,
        }
    }

    /// An identity with a given suffix (tests).
    pub fn with_suffix(node_id: &str, suffix: &str) -> Self {
        Self {
            node_id: node_id.to_owned(),
            suffix: suffix.to_owned(),
        }
    }

    /// The node id part.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_{}", self.node_id, self.suffix)
    }
}

impl FromStr for Identity {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.rsplit_once('_') {
            Some((node, suffix)) if !node.is_empty() && !suffix.is_empty() => Ok(Self {
                node_id: node.to_owned(),
                suffix: suffix.to_owned(),
            }),
            _ => Err(format!(
                "'{s}' is not a braid lease holder (<node-id>_<suffix>)"
            )),
        }
    }
}

/// Which lease backend a replica uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseBackendKind {
    /// A lease table in the shared SQL store.
    Sql,
    /// coordination.k8s.io/v1 Lease objects.
    Kubernetes,
    /// In-process, for a single node.
    Local,
}

impl LeaseBackendKind {
    /// The backend `braid serve` picks when none is configured: `kubernetes` inside a pod
    /// (`KUBERNETES_SERVICE_HOST` set), else `sql` for a MySQL store and `local` for SQLite.
    pub fn detect(store_dsn: &str, env: &dyn Fn(&str) -> Option<String>) -> Self {
        if env("KUBERNETES_SERVICE_HOST").is_some_and(|h| !h.is_empty()) {
            Self::Kubernetes
        } else if store_dsn.starts_with("sqlite:") {
            Self::Local
        } else {
            Self::Sql
        }
    }

    /// The name used in flags and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sql => "sql",
            Self::Kubernetes => "kubernetes",
            Self::Local => "local",
        }
    }
}

impl fmt::Display for LeaseBackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Lease timing, as in client-go's leader election.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    /// How long a lease lasts without renewal before others may take it.
    pub lease_duration: Duration,
    /// How long the holder keeps trying to renew before it gives the lease up locally (stops scanning).
    pub renew_deadline: Duration,
    /// The pause between renewals and acquisition attempts.
    pub retry_period: Duration,
}

impl Default for LeaseTiming {
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

impl LeaseTiming {
    /// Checks client-go's rule `lease-duration > renew-deadline > retry-period` (all at least 1 s).
    pub fn validate(&self) -> Result<()> {
        if self.retry_period < Duration::from_secs(1) {
            return Err(Error::Config(
                "lease-retry-period must be at least 1 second".to_owned(),
            ));
        }
        if self.renew_deadline <= self.retry_period {
            return Err(Error::Config(format!(
                "lease-renew-deadline ({}s) must be longer than lease-retry-period ({}s)",
                self.renew_deadline.as_secs(),
                self.retry_period.as_secs()
            )));
        }
        if self.lease_duration <= self.renew_deadline {
            return Err(Error::Config(format!(
                "lease-duration ({}s) must be longer than lease-renew-deadline ({}s), so a holder that cannot \
                 renew stops before others may take its leases",
                self.lease_duration.as_secs(),
                self.renew_deadline.as_secs()
            )));
        }
        Ok(())
    }
}

/// Everything the cluster part of a replica is configured with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterOptions {
    /// This replica's node id.
    pub node_id: String,
    /// The partition count P.
    pub partitions: u16,
    /// The lease backend.
    pub backend: LeaseBackendKind,
    /// Lease timing.
    pub timing: LeaseTiming,
    /// Kubernetes: the namespace of the Lease objects (default: the pod's namespace).
    pub kube_namespace: Option<String>,
    /// Kubernetes: the prefix of Lease object names.
    pub kube_lease_prefix: String,
}

/// Takes partitions over in the store: the fencing half of ownership.
#[async_trait]
pub trait Fencing: Send + Sync + 'static {
    /// Bumps the epoch of `p` for `owner` and returns the new one (see
    /// [`crate::store::ClaimStore::fence_partition`]).
    async fn fence(&self, p: Partition, owner: &str) -> Result<LeaseEpoch>;
}

/// [`Fencing`] in the store.
pub struct StoreFencing {
    store: DynStore,
    clock: StoreClock,
}

impl StoreFencing {
    /// Fencing rows of `store`, times from `clock`.
    pub fn new(store: DynStore, clock: StoreClock) -> Self {
        Self { store, clock }
    }
}

#[async_trait]
impl Fencing for StoreFencing {
    async fn fence(&self, p: Partition, owner: &str) -> Result<LeaseEpoch> {
        Ok(self
            .store
            .fence_partition(p, owner, self.clock.now())
            .await?)
    }
}

/// Records P in the store at the first start; fails when the store has another P.
pub async fn check_partition_count(store: &DynStore, configured: u16) -> Result<u16> {
    let stored = store.init_partitions(configured).await?;
    if stored != configured {
        return Err(Error::PartitionCountMismatch { stored, configured });
    }
    Ok(stored)
}

/// Opens the configured lease backend.
pub async fn open_backend(
    opts: &ClusterOptions,
    store: &DynStore,
    clock: &StoreClock,
) -> Result<Arc<dyn lease::LeaseBackend>> {
    match opts.backend {
        LeaseBackendKind::Sql => Ok(Arc::new(sql::SqlLeases::new(store.clone(), clock.clone()))),
        LeaseBackendKind::Local => Ok(Arc::new(local::LocalLeases::new())),
        LeaseBackendKind::Kubernetes => open_kubernetes(opts).await,
    }
}

async fn open_kubernetes(opts: &ClusterOptions) -> Result<Arc<dyn lease::LeaseBackend>> {
    let config = kube::Config::infer().await.map_err(|e| {
        Error::Config(format!(
            "lease-backend kubernetes: no Kubernetes configuration found (in-cluster or kubeconfig): {e}"
        ))
    })?;
    let namespace = opts
        .kube_namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = kube::Client::try_from(config)?;
    Ok(Arc::new(kubernetes::KubeLeases::new(
        client,
        &namespace,
        &opts.kube_lease_prefix,
    )))
}

/// One member as a replica sees it: the `members` entries of `GET /api/braid/cluster`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberView {
    /// The member's node id.
    pub node_id: String,
    /// The partitions it holds, ascending.
    pub partitions: Vec<u16>,
}

/// The cluster as this replica sees it: the body of `GET /api/braid/cluster`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterView {
    /// This replica's node id.
    pub node_id: String,
    /// The partition count P.
    pub partitions: u16,
    /// Live members (and any other live holder of a partition lease), by node id.
    pub members: Vec<MemberView>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_round_trip_whatever_the_node_id_holds() {
        for node in ["braid-0", "a_b_c", "x"] {
            let id = Identity::new(node);
            let parsed: Identity = id.to_string().parse().unwrap();
            assert_eq!(parsed, id);
            assert_eq!(parsed.node_id(), node);
        }
        assert_ne!(
            Identity::new("n"),
            Identity::new("n"),
            "a new suffix per start"
        );
        assert!("no-suffix".parse::<Identity>().is_err());
    }

    #[test]
    fn backend_detection_and_timing_rules() {
        let none = |_: &str| None;
        let pod = |k: &str| (k == "KUBERNETES_SERVICE_HOST").then(|| "10.0.0.1".to_owned());
        assert_eq!(
            LeaseBackendKind::detect("mysql://db/braid", &none),
            LeaseBackendKind::Sql
        );
        assert_eq!(
            LeaseBackendKind::detect("sqlite://braid.db", &none),
            LeaseBackendKind::Local
        );
        assert_eq!(
            LeaseBackendKind::detect("sqlite://braid.db", &pod),
            LeaseBackendKind::Kubernetes
        );
        assert!(LeaseTiming::default().validate().is_ok());
        let small = LeaseTiming {
            lease_duration: Duration::from_secs(4),
            renew_deadline: Duration::from_secs(3),
            retry_period: Duration::from_secs(1),
        };
        assert!(small.validate().is_ok());
        let bad = LeaseTiming {
            renew_deadline: Duration::from_secs(4),
            ..small
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("lease-duration")
        );
    }
}
