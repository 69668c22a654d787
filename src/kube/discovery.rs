//! Branch-service discovery through EndpointSlices (`discovery.k8s.io/v1`).
//!
//! A `TransactionPolicy` declares services (`spec.services[].name`). A branch URL whose host is such a
//! name is sent to a ready endpoint of the service instead of through DNS and the Service's virtual IP:
//!
//! - `http://orders/api/pay` and `discovery://orders/api/pay` become `http://<pod-ip>:<port>/api/pay`
//!   with `Host: orders` (a port in the URL is ignored: the endpoint's port comes from the EndpointSlice,
//!   chosen by `services[].port`, or the only port);
//! - the gRPC form `orders:50051/pkg.Service/Method` (or `discovery://orders/pkg.Service/Method` on a gRPC
//!   transaction) becomes `<pod-ip>:<port>/pkg.Service/Method`, and `grpcs://<pod-ip>:<port>/...` when the
//!   service is declared with `grpcTls` or the URL is `grpcs://orders:50051/...` (gRPC over TLS, the pod's
//!   certificate verified against the name `orders`);
//! - `https://` URLs are left alone (a certificate names the service, not the pod).
//!
//! Endpoints are those whose `conditions.ready` is not `false`, spread round robin per service. When a
//! call to an endpoint fails (connection refused, timeout, 5xx), the retry of the same branch call goes to
//! another endpoint. The index is rebuilt on every EndpointSlice event, so pods that come and go are
//! seen as soon as the API server reports them.
//!
//! Declared names are unique per policy; when several policies declare the same name, the first by
//! `namespace/name` wins. Only valid policies count.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use futures::StreamExt as _;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, ResourceExt};
use tokio_util::sync::CancellationToken;

use super::policy::{TransactionPolicy, policy_key, url_host};
use crate::invoke::{Discovery, Resolved};
use crate::metrics::Metrics;
use crate::model::Protocol;

/// The label EndpointSlices carry with their Service's name.
pub const SERVICE_LABEL: &str = "kubernetes.io/service-name";

/// How many failed call keys are remembered before the memory is reset.
const MAX_FAILED_KEYS: usize = 10_000;

/// One endpoint address with the ports of its slice.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    address: String,
    ports: Vec<(Option<String>, u16)>,
}

/// A declared service: where its endpoints come from.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Declared {
    service: String,
    port: Option<String>,
    grpc_tls: bool,
}

/// Resolves branch URLs of declared services to ready endpoints.
pub struct EndpointDiscovery {
    api: Api<EndpointSlice>,
    writer: Mutex<Option<reflector::store::Writer<EndpointSlice>>>,
    slices: Store<EndpointSlice>,
    policies: Store<TransactionPolicy>,
    /// Service name -> ready targets, sorted (rebuilt on every slice event).
    index: RwLock<Arc<HashMap<String, Vec<Target>>>>,
    balancer: Balancer,
    metrics: Arc<Metrics>,
}

impl EndpointDiscovery {
    /// Discovery over the EndpointSlices of `namespace`, for the services declared in `policies`.
    /// Returns the reader of the slice store too (ready once the first list arrived).
    pub fn new(
        client: Client,
        namespace: &str,
        policies: Store<TransactionPolicy>,
        metrics: Arc<Metrics>,
    ) -> (Self, Store<EndpointSlice>) {
        let (slices, writer) = reflector::store();
        let this = Self {
            api: Api::namespaced(client, namespace),
            writer: Mutex::new(Some(writer)),
            slices: slices.clone(),
            policies,
            index: RwLock::new(Arc::new(HashMap::new())),
            balancer: Balancer::default(),
            metrics,
        };
        (this, slices)
    }

    /// Watches the EndpointSlices until `cancel`, rebuilding the index on every change.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let writer = self.writer.lock().ok().and_then(|mut w| w.take());
        let Some(writer) = writer else {
            tracing::warn!("endpoint discovery started twice; the second run does nothing");
            return;
        };
        let config = watcher::Config::default()
            .labels(SERVICE_LABEL)
            .any_semantic();
        let stream = reflector::reflector(writer, watcher(self.api.clone(), config))
            .default_backoff()
            .take_until(cancel.cancelled_owned());
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::InitApply(_) | watcher::Event::Init) => {}
                Ok(_) => self.rebuild(),
                Err(e) => tracing::warn!(error = %e, "watching EndpointSlices failed; retrying"),
            }
        }
        tracing::debug!("endpoint discovery stopped");
    }

    fn rebuild(&self) {
        let index = build_index(&self.slices.state());
        if let Ok(mut slot) = self.index.write() {
            *slot = Arc::new(index);
        }
    }

    /// The declared services of the valid policies: the first declaration by `namespace/name` wins.
    fn declared(&self, name: &str) -> Option<Declared> {
        let mut policies = self.policies.state();
        policies.retain(|p| p.spec.validate().is_ok());
        policies.sort_by_key(|p| policy_key(p));
        policies.iter().find_map(|p| {
            p.spec
                .services
                .iter()
                .find(|s| s.name == name)
                .map(|s| Declared {
                    service: s.service_name().to_owned(),
                    port: s.port.clone(),
                    grpc_tls: s.grpc_tls,
                })
        })
    }

    /// The ready `ip:port` endpoints of a declared service, sorted.
    fn endpoints(&self, declared: &Declared) -> Result<Vec<String>, String> {
        let index = self
            .index
            .read()
            .map(|i| i.clone())
            .map_err(|_| "the endpoint index is unavailable".to_owned())?;
        let targets = index
            .get(&declared.service)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut out = Vec::new();
        for t in targets {
            let port = match &declared.port {
                Some(name) => t
                    .ports
                    .iter()
                    .find(|(n, _)| n.as_deref() == Some(name))
                    .map(|(_, p)| *p),
                None if t.ports.len() == 1 => t.ports.first().map(|(_, p)| *p),
                None if t.ports.is_empty() => None,
                None => {
                    return Err(format!(
                        "Service '{}' has several ports; name one in the policy's services[].port",
                        declared.service
                    ));
                }
            };
            if let Some(port) = port {
                out.push(join_host_port(&t.address, port));
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
}

/// Spreads calls over endpoints: round robin per service, and a call key whose last call failed on an
/// endpoint gets another one when there is another.
#[derive(Debug, Default)]
struct Balancer {
    /// Round-robin cursor per declared name.
    cursors: Mutex<HashMap<String, usize>>,
    /// Call key -> the endpoint its last call failed on.
    failed: Mutex<HashMap<String, String>>,
}

impl Balancer {
    /// Picks the next endpoint round robin, skipping the one `key` last failed on when there is another.
    fn pick(&self, name: &str, endpoints: &[String], key: &str) -> Option<String> {
        if endpoints.is_empty() {
            return None;
        }
        let avoid = self.failed.lock().ok().and_then(|f| f.get(key).cloned());
        let mut cursors = self.cursors.lock().ok()?;
        let cursor = cursors.entry(name.to_owned()).or_insert(0);
        let mut idx = *cursor % endpoints.len();
        if endpoints.len() > 1 && avoid.as_deref() == endpoints.get(idx).map(String::as_str) {
            idx = (idx + 1) % endpoints.len();
        }
        *cursor = idx + 1;
        endpoints.get(idx).cloned()
    }

    /// Remembers a failed endpoint for `key`, or forgets it after a call that got an answer.
    fn report(&self, key: &str, endpoint: &str, ok: bool) {
        let Ok(mut failed) = self.failed.lock() else {
            return;
        };
        if ok {
            failed.remove(key);
        } else {
            if failed.len() >= MAX_FAILED_KEYS {
                failed.clear();
            }
            failed.insert(key.to_owned(), endpoint.to_owned());
        }
    }
}

/// `ip:port`, with brackets for IPv6.
fn join_host_port(address: &str, port: u16) -> String {
    if address.contains(':') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    }
}

/// Service name -> ready targets of all its slices (one per address and port set: the same address may
/// serve different ports in different slices).
fn build_index(slices: &[Arc<EndpointSlice>]) -> HashMap<String, Vec<Target>> {
    let mut index: HashMap<String, Vec<Target>> = HashMap::new();
    for slice in slices {
        let Some(service) = slice.labels().get(SERVICE_LABEL) else {
            continue;
        };
        if slice.address_type == "FQDN" {
            continue;
        }
        let ports: Vec<(Option<String>, u16)> = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                let port = u16::try_from(p.port?).ok()?;
                Some((p.name.clone().filter(|n| !n.is_empty()), port))
            })
            .collect();
        let targets = index.entry(service.clone()).or_default();
        for ep in &slice.endpoints {
            let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            if !ready {
                continue;
            }
            for address in &ep.addresses {
                targets.push(Target {
                    address: address.clone(),
                    ports: ports.clone(),
                });
            }
        }
    }
    for targets in index.values_mut() {
        targets.sort_by(|a, b| (&a.address, &a.ports).cmp(&(&b.address, &b.ports)));
        targets.dedup();
    }
    index
}

/// The URL split around its host: (scheme to keep, authority, rest from the path on).
fn split_url(url: &str, protocol: Protocol) -> Option<(&'static str, &str, &str)> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("http://") {
        ("http://", rest)
    } else if let Some(rest) = url.strip_prefix(crate::invoke::grpc::TLS_SCHEME) {
        (crate::invoke::grpc::TLS_SCHEME, rest)
    } else if let Some(rest) = url.strip_prefix("discovery://") {
        (
            if protocol == Protocol::Grpc {
                ""
            } else {
                "http://"
            },
            rest,
        )
    } else if url.contains("://") {
        return None;
    } else if protocol == Protocol::Grpc {
        ("", url)
    } else {
        return None;
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    Some((scheme, &rest[..end], &rest[end..]))
}

impl Discovery for EndpointDiscovery {
    fn resolve(
        &self,
        url: &str,
        protocol: Protocol,
        key: &str,
    ) -> Option<Result<Resolved, String>> {
        let (scheme, authority, rest) = split_url(url, protocol)?;
        let host = url_host(authority)?.to_ascii_lowercase();
        let declared = self.declared(&host)?;
        let scheme = if scheme.is_empty() && declared.grpc_tls {
            crate::invoke::grpc::TLS_SCHEME
        } else {
            scheme
        };
        let result = self.endpoints(&declared).and_then(|eps| {
            self.balancer.pick(&host, &eps, key).ok_or_else(|| {
                format!(
                    "service '{host}' (Service {}/{}) has no ready endpoints",
                    self.api_namespace(),
                    declared.service
                )
            })
        });
        let outcome = if result.is_ok() {
            "endpoint"
        } else {
            "no_endpoints"
        };
        self.metrics
            .discovery_resolve
            .with_label_values(&[outcome])
            .inc();
        Some(result.map(|endpoint| Resolved {
            url: format!("{scheme}{endpoint}{rest}"),
            host: authority.to_owned(),
            endpoint,
        }))
    }

    fn report(&self, key: &str, resolved: &Resolved, ok: bool) {
        self.balancer.report(key, &resolved.endpoint, ok);
    }
}

impl EndpointDiscovery {
    fn api_namespace(&self) -> String {
        self.api.namespace().unwrap_or_default().to_owned()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};
    use kube::api::ObjectMeta;

    use super::*;

    fn slice(
        service: &str,
        name: &str,
        ports: &[(&str, i32)],
        eps: &[(&str, Option<bool>)],
    ) -> Arc<EndpointSlice> {
        Arc::new(EndpointSlice {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                labels: Some(BTreeMap::from([(
                    SERVICE_LABEL.to_owned(),
                    service.to_owned(),
                )])),
                ..Default::default()
            },
            address_type: "IPv4".to_owned(),
            ports: Some(
                ports
                    .iter()
                    .map(|(n, p)| EndpointPort {
                        name: Some((*n).to_owned()),
                        port: Some(*p),
                        ..Default::default()
                    })
                    .collect(),
            ),
            endpoints: eps
                .iter()
                .map(|(a, ready)| Endpoint {
                    addresses: vec![(*a).to_owned()],
                    conditions: Some(EndpointConditions {
                        ready: *ready,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
        })
    }

    #[test]
    fn index_keeps_ready_endpoints_of_every_slice() {
        let index = build_index(&[
            slice(
                "orders",
                "a",
                &[("http", 8080)],
                &[("10.0.0.2", Some(true)), ("10.0.0.3", Some(false))],
            ),
            slice("orders", "b", &[("http", 8080)], &[("10.0.0.1", None)]),
            slice("other", "c", &[("", 9)], &[("10.0.1.1", Some(true))]),
        ]);
        let addrs: Vec<_> = index["orders"].iter().map(|t| t.address.as_str()).collect();
        assert_eq!(addrs, ["10.0.0.1", "10.0.0.2"]);
        assert_eq!(index["other"][0].ports, vec![(None, 9)]);
    }

    #[test]
    fn calls_spread_round_robin_and_a_retry_avoids_the_failed_endpoint() {
        let b = Balancer::default();
        let eps = vec!["a:1".to_owned(), "b:1".to_owned(), "c:1".to_owned()];
        let picks: Vec<_> = (0..4)
            .map(|i| b.pick("s", &eps, &format!("k{i}")).unwrap())
            .collect();
        assert_eq!(picks, ["a:1", "b:1", "c:1", "a:1"]);
        // k9 failed on b:1; the cursor now points at b:1, so its retry skips to c:1.
        b.report("k9", "b:1", false);
        assert_eq!(b.pick("s", &eps, "k9").unwrap(), "c:1");
        b.report("k9", "c:1", true);
        assert_eq!(b.pick("s", &eps, "k9").unwrap(), "a:1");
        // With one endpoint there is nowhere else to go.
        b.report("k1", "a:1", false);
        assert_eq!(b.pick("t", &eps[..1], "k1").unwrap(), "a:1");
        assert!(b.pick("t", &[], "k1").is_none());
    }

    #[test]
    fn urls_split_in_every_supported_form() {
        let cases = [
            (
                "http://orders/a?x=1",
                Protocol::Http,
                Some(("http://", "orders", "/a?x=1")),
            ),
            (
                "http://orders:80",
                Protocol::Http,
                Some(("http://", "orders:80", "")),
            ),
            (
                "discovery://orders/a",
                Protocol::Http,
                Some(("http://", "orders", "/a")),
            ),
            (
                "discovery://orders/p.S/M",
                Protocol::Grpc,
                Some(("", "orders", "/p.S/M")),
            ),
            (
                "orders:50051/p.S/M",
                Protocol::Grpc,
                Some(("", "orders:50051", "/p.S/M")),
            ),
            (
                "grpcs://orders:443/p.S/M",
                Protocol::Http,
                Some(("grpcs://", "orders:443", "/p.S/M")),
            ),
            ("https://orders/a", Protocol::Http, None),
            ("orders/a", Protocol::Http, None),
        ];
        for (url, protocol, want) in cases {
            assert_eq!(split_url(url, protocol), want, "{url}");
        }
        assert_eq!(join_host_port("fd00::1", 80), "[fd00::1]:80");
    }
}
