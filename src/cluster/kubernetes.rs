//! The `kubernetes` lease backend: one coordination.k8s.io/v1 Lease object per lease, with client-go's
//! leader-election semantics (spec/kubernetes.md §2.1):
//! - **Optimistic concurrency.** Every change is a PUT carrying the `metadata.resourceVersion` that was read,
//!   so a concurrent writer makes it fail with 409 Conflict: the only real mutual exclusion. A missing lease
//!   is created with POST (409 AlreadyExists: someone else created it first).
//! - **Expiry from local observation.** A lease held by someone else counts as live until
//!   `leaseDurationSeconds` after *this process first saw its current record* (holder, renew time, duration),
//!   measured on the local monotonic clock, never by comparing the remote `renewTime` with the local wall
//!   clock: hosts may disagree on the time, but not (much) on how long a second is.
//! - **Fast renewal.** The holder renews with a PUT of its cached copy (no GET); a 409 falls back to a GET.
//! - **Release.** A partition lease is released by clearing `holderIdentity` (with the resourceVersion
//!   precondition), so others may take it at once; a membership lease is deleted (with the precondition), so
//!   replicas that come and go leave no objects behind.
//!
//! Lease objects are named `<prefix>-p-<n>` (partitions) and `<prefix>-m-<node-id>` (members), labelled
//! `app.kubernetes.io/managed-by=braid` and `braid.dev/lease-set=<prefix>`, and carry the lease name in the
//! annotation `braid.dev/lease`. Holder identities are `<pod name>_<suffix chosen at start>`.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, DeleteParams, ListParams, PostParams, Preconditions};
use tokio::time::Instant;

use super::lease::{Holder, LeaseBackend, LeaseKey};
use super::{Error, Identity, Result};

/// Label every braid lease carries.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Label naming the lease set (the prefix), so two installations in one namespace do not mix.
pub const LEASE_SET_LABEL: &str = "braid.dev/lease-set";
/// Annotation holding the lease name (`member/<node-id>`, `partition/<n>`).
pub const LEASE_ANNOTATION: &str = "braid.dev/lease";

/// The part of a Lease that identifies one renewal (client-go's `observedRecord`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    holder: String,
    renew_time: Option<String>,
    duration_secs: i32,
}

impl Record {
    fn of(lease: &Lease) -> Self {
        let spec = lease.spec.clone().unwrap_or_default();
        Self {
            holder: spec.holder_identity.unwrap_or_default(),
            renew_time: spec.renew_time.map(|t| t.0.to_string()),
            duration_secs: spec.lease_duration_seconds.unwrap_or(0),
        }
    }
}

struct Observation {
    record: Record,
    /// When this process first saw `record`.
    since: Instant,
    /// The last copy read or written (its resourceVersion is what the next PUT carries).
    lease: Lease,
}

/// Leases as Kubernetes Lease objects in one namespace.
pub struct KubeLeases {
    api: Api<Lease>,
    prefix: String,
    observed: Mutex<HashMap<String, Observation>>,
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// `s` as a DNS-1123 label part: lowercase alphanumerics and `-`; a hash keeps changed names unique.
fn dns_part(s: &str) -> String {
    let cleaned: String = s
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() { c } else { '-' }
        })
        .collect();
    let cleaned = cleaned.trim_matches('-').to_owned();
    if cleaned == s && !cleaned.is_empty() && cleaned.len() <= 200 {
        return cleaned;
    }
    let hash = super::assignment::score(s, crate::model::Partition(0));
    let head: String = cleaned.chars().take(180).collect();
    format!("{head}-{:08x}", hash & 0xffff_ffff)
        .trim_start_matches('-')
        .to_owned()
}

impl KubeLeases {
    /// Leases in `namespace` through `client`, named after `prefix`.
    pub fn new(client: kube::Client, namespace: &str, prefix: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            prefix: dns_part(prefix),
            observed: Mutex::new(HashMap::new()),
        }
    }

    /// The Lease object name of `key`.
    pub fn object_name(&self, key: &LeaseKey) -> String {
        match key {
            LeaseKey::Member(node) => format!("{}-m-{}", self.prefix, dns_part(node)),
            LeaseKey::Partition(p) => format!("{}-p-{}", self.prefix, p.0),
        }
    }

    fn observations(&self) -> std::sync::MutexGuard<'_, HashMap<String, Observation>> {
        // The map holds plain data; a panic elsewhere cannot leave it inconsistent.
        self.observed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a copy of `name` and returns since when its current record has been seen.
    fn observe(&self, name: &str, lease: &Lease, now: Instant) -> Instant {
        let record = Record::of(lease);
        let mut map = self.observations();
        let since = match map.get(name) {
            Some(o) if o.record == record => o.since,
            _ => now,
        };
        map.insert(
            name.to_owned(),
            Observation {
                record,
                since,
                lease: lease.clone(),
            },
        );
        since
    }

    fn forget(&self, name: &str) {
        self.observations().remove(name);
    }

    fn cached(&self, name: &str) -> Option<Lease> {
        self.observations().get(name).map(|o| o.lease.clone())
    }

    /// Whether a lease held by `record.holder` counts as live: first seen less than its duration ago.
    fn live(record: &Record, since: Instant, now: Instant) -> bool {
        !record.holder.is_empty()
            && now.duration_since(since)
                < Duration::from_secs(u64::try_from(record.duration_secs.max(0)).unwrap_or(0))
    }

    fn new_lease(&self, key: &LeaseKey, name: &str) -> Lease {
        let labels = BTreeMap::from([
            (MANAGED_BY_LABEL.to_owned(), "braid".to_owned()),
            (LEASE_SET_LABEL.to_owned(), self.prefix.clone()),
        ]);
        let annotations = BTreeMap::from([(LEASE_ANNOTATION.to_owned(), key.name())]);
        Lease {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                labels: Some(labels),
                annotations: Some(annotations),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec::default()),
        }
    }

    /// `lease` taken (or renewed) by `me` now.
    fn held_by(mut lease: Lease, me: &str, duration: Duration) -> Lease {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(me) {
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
            spec.acquire_time = Some(now.clone());
        }
        spec.holder_identity = Some(me.to_owned());
        spec.renew_time = Some(now);
        spec.lease_duration_seconds =
            Some(i32::try_from(duration.as_secs().max(1)).unwrap_or(i32::MAX));
        lease
    }

    async fn put(&self, name: &str, lease: &Lease) -> Result<bool> {
        match self.api.replace(name, &PostParams::default(), lease).await {
            Ok(written) => {
                self.observe(name, &written, Instant::now());
                Ok(true)
            }
            Err(e) if is_conflict(&e) || is_not_found(&e) => {
                self.forget(name);
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }
}

#[async_trait]
impl LeaseBackend for KubeLeases {
    fn kind(&self) -> &'static str {
        "kubernetes"
    }

    async fn acquire(&self, key: &LeaseKey, me: &Identity, duration: Duration) -> Result<bool> {
        let name = self.object_name(key);
        let me = me.to_string();
        // Fast path: renew from the cached copy when it says we hold the lease.
        if let Some(cached) = self.cached(&name)
            && Record::of(&cached).holder == me
            && self
                .put(&name, &Self::held_by(cached, &me, duration))
                .await?
        {
            return Ok(true);
        }
        let Some(current) = self.api.get_opt(&name).await? else {
            let created = Self::held_by(self.new_lease(key, &name), &me, duration);
            return match self.api.create(&PostParams::default(), &created).await {
                Ok(written) => {
                    self.observe(&name, &written, Instant::now());
                    Ok(true)
                }
                Err(e) if is_conflict(&e) => Ok(false),
                Err(e) => Err(e.into()),
            };
        };
        let now = Instant::now();
        let since = self.observe(&name, &current, now);
        let record = Record::of(&current);
        if record.holder != me && Self::live(&record, since, now) {
            return Ok(false);
        }
        self.put(&name, &Self::held_by(current, &me, duration))
            .await
    }

    async fn release(&self, key: &LeaseKey, me: &Identity) -> Result<()> {
        let name = self.object_name(key);
        let me = me.to_string();
        let Some(mut current) = self.api.get_opt(&name).await? else {
            self.forget(&name);
            return Ok(());
        };
        if Record::of(&current).holder != me {
            return Ok(());
        }
        match key {
            LeaseKey::Member(_) => {
                let params = DeleteParams {
                    preconditions: Some(Preconditions {
                        resource_version: current.metadata.resource_version.clone(),
                        uid: None,
                    }),
                    ..DeleteParams::default()
                };
                match self.api.delete(&name, &params).await {
                    Ok(_) => {}
                    Err(e) if is_conflict(&e) || is_not_found(&e) => {}
                    Err(e) => return Err(e.into()),
                }
                self.forget(&name);
            }
            LeaseKey::Partition(_) => {
                // As client-go releases: no holder, a one-second duration, the transitions kept.
                let spec = current.spec.get_or_insert_with(LeaseSpec::default);
                spec.holder_identity = None;
                spec.lease_duration_seconds = Some(1);
                spec.renew_time = Some(MicroTime(k8s_openapi::jiff::Timestamp::now()));
                self.put(&name, &current).await?;
            }
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<Holder>> {
        let selector = format!("{MANAGED_BY_LABEL}=braid,{LEASE_SET_LABEL}={}", self.prefix);
        let leases = self
            .api
            .list(&ListParams::default().labels(&selector))
            .await?;
        let now = Instant::now();
        let mut out = Vec::new();
        for lease in leases.items {
            let Some(name) = lease.metadata.name.clone() else {
                continue;
            };
            let since = self.observe(&name, &lease, now);
            let record = Record::of(&lease);
            if !Self::live(&record, since, now) {
                continue;
            }
            let key = lease
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(LEASE_ANNOTATION))
                .and_then(|k| LeaseKey::parse(k))
                .ok_or_else(|| Error::MalformedLease {
                    name: name.clone(),
                    reason: format!("no valid {LEASE_ANNOTATION} annotation"),
                })?;
            let identity =
                Identity::from_str(&record.holder).map_err(|reason| Error::MalformedLease {
                    name: name.clone(),
                    reason,
                })?;
            out.push(Holder { key, identity });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_are_dns_labels() {
        assert_eq!(dns_part("braid-0"), "braid-0");
        let odd = dns_part("Node_A/1");
        assert!(odd.starts_with("node-a-1-"), "{odd}");
        assert!(
            odd.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
        assert_ne!(
            dns_part("a_b"),
            dns_part("a-b"),
            "changed names stay unique"
        );
    }
}
