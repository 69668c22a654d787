//! The `TransactionPolicy` custom resource (`braid.dev/v1alpha1`, short name `txp`) and the pure logic
//! around it: validation, picking the policy for a new transaction, and filling its options.
//!
//! Precedence (documented for users in the README and in the CRD text):
//! 1. Options the request sets itself (non-zero `timeout_to_fail`, `request_timeout`, `retry_interval`,
//!    `retry_limit`; each `branch_headers` key) always win.
//! 2. Otherwise the values of the **one** policy that matches, chosen by [`select`]: valid policies only
//!    (`Ready=True`); among those whose `match` holds, the most specific wins (more criteria set; then the
//!    longer `gidPrefix`); a remaining tie goes to the first by `namespace/name` in byte order.
//! 3. Otherwise the server's flags.
//!
//! The filled values are stored with the transaction, so editing or deleting a policy affects new
//! transactions only.

use std::collections::{BTreeMap, BTreeSet};

use kube::{CustomResource, CustomResourceExt, ResourceExt};
use reqwest::header::{HeaderName, HeaderValue};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::engine::NewTxn;
use crate::model::{TransOptions, TransType};

/// The `spec` of a `TransactionPolicy`: which new transactions it applies to, the defaults it gives their
/// options, and the branch services it declares for discovery.
///
/// A request's own options always win; the policy fills only what the request left unset. When several
/// policies match a transaction, the most specific one wins (more `match` fields set, then the longer
/// `gidPrefix`), then the first by name. Values are copied onto the transaction when it is created, so a
/// policy change affects new transactions only.
// The printer columns repeat `type_ = "string"`, which clippy takes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[cfg_attr(test, derive(Default))]
#[kube(
    group = "braid.dev",
    version = "v1alpha1",
    kind = "TransactionPolicy",
    plural = "transactionpolicies",
    singular = "transactionpolicy",
    namespaced,
    status = "TransactionPolicyStatus",
    shortname = "txp",
    category = "braid",
    doc = "A TransactionPolicy gives defaults (timeouts, retries, branch headers) to new braid transactions \
           it matches, and declares branch services that braid resolves through EndpointSlices.",
    printcolumn(
        name = "Gid-Prefix",
        type_ = "string",
        json_path = ".spec.match.gidPrefix"
    ),
    printcolumn(name = "Type", type_ = "string", json_path = ".spec.match.transType"),
    printcolumn(name = "Timeout", type_ = "integer", json_path = ".spec.timeoutToFail"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct TransactionPolicySpec {
    /// Which new transactions this policy applies to. Every field that is set must hold; an empty or
    /// missing `match` applies to every transaction (a namespace-wide default that any more specific
    /// policy overrides).
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub match_: Option<PolicyMatch>,
    /// Seconds after creation after which an unfinished transaction fails (DTM's `timeout_to_fail`),
    /// for transactions that do not set it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub timeout_to_fail: Option<i64>,
    /// Seconds allowed for each branch call (DTM's `request_timeout`), for transactions that do not set it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub request_timeout: Option<i64>,
    /// Base retry interval in seconds (DTM's `retry_interval`), for transactions that do not set it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub retry_interval: Option<i64>,
    /// Upper bound in seconds of the exponential retry backoff (the server's `--backoff-cap` otherwise).
    /// Must not be below `retryInterval` when both are set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub backoff_cap: Option<i64>,
    /// Saga: how many times an action is retried at once before the transaction waits for the retry
    /// scanner (DTM's `retry_limit`), for transactions that do not set it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub retry_limit: Option<i64>,
    /// Headers (gRPC metadata) sent on every branch call. A header the request sets itself keeps the
    /// request's value (names compare case-insensitively).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub branch_headers: BTreeMap<String, String>,
    /// Branch services resolved through EndpointSlices: a branch URL `http://<name>/path` (or
    /// `discovery://<name>/path`, or the gRPC forms `<name>:<port>/pkg.Service/Method` and
    /// `grpcs://<name>:<port>/pkg.Service/Method`) whose host is a
    /// declared `name` is sent to a ready endpoint of that service, round robin, and a retry goes to another
    /// endpoint. Applies to every transaction (not only the matched ones) while braid runs in Kubernetes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<BranchService>,
}

/// The match of a `TransactionPolicy`: every field that is set must hold.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyMatch {
    /// The transaction's gid starts with this text (e.g. `pay-`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid_prefix: Option<String>,
    /// The transaction type: one of `saga`, `msg`, `tcc`, `xa`, `workflow`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trans_type: Option<String>,
    /// A branch URL known when the transaction is created (saga and msg steps, the msg back-check URL) has
    /// this host (e.g. `orders` or `orders.shop.svc`), compared case-insensitively without the port.
    /// Branches of TCC, XA and workflow transactions are registered later and cannot be matched by host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch_host: Option<String>,
}

/// A branch service declared for discovery.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BranchService {
    /// The host name branch URLs use for this service, e.g. `orders` in `http://orders/api/pay`. A DNS
    /// label (lowercase letters, digits and `-`, at most 63 characters).
    pub name: String,
    /// The Kubernetes Service (in the policy's namespace) whose EndpointSlices list the endpoints.
    /// Defaults to `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The name of the Service port to call (as listed in its EndpointSlices). May be left out when the
    /// Service has a single port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    /// Call this service's gRPC endpoints over TLS: a gRPC branch URL in DTM's plain form
    /// (`<name>:<port>/pkg.Service/Method`) is called as `grpcs://`, and the endpoint's certificate must name
    /// `<name>` as the URL writes it (trusted through the public roots or braid's `--branch-ca`).
    /// `grpcs://<name>:<port>/...` URLs use TLS with or without it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub grpc_tls: bool,
}

impl BranchService {
    /// The Kubernetes Service name (`service`, else `name`).
    pub fn service_name(&self) -> &str {
        self.service.as_deref().unwrap_or(&self.name)
    }
}

/// The `status` of a `TransactionPolicy`, written by braid with server-side apply.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TransactionPolicyStatus {
    /// The `metadata.generation` of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` is `True` when the spec is valid and in use; `False` names what is wrong in `reason` and
    /// `message`, and braid ignores the policy until it is fixed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
}

/// The `Ready` condition type.
pub const READY: &str = "Ready";
/// `Ready=True` reason.
pub const REASON_VALID: &str = "Valid";

/// Why a spec is invalid: a `reason` for the `Ready=False` condition and a readable message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct InvalidSpec {
    /// CamelCase reason (`InvalidMatch`, `InvalidTiming`, `InvalidBranchHeaders`, `InvalidServices`).
    pub reason: &'static str,
    /// What is wrong, naming the field.
    pub message: String,
}

fn invalid(reason: &'static str, message: String) -> InvalidSpec {
    InvalidSpec { reason, message }
}

/// Whether `s` is a DNS-1123 label (what Service names are).
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

impl TransactionPolicySpec {
    /// Checks what the schema cannot express. The error names the field.
    pub fn validate(&self) -> Result<(), InvalidSpec> {
        if let Some(m) = &self.match_ {
            if let Some(tt) = &m.trans_type
                && tt.parse::<TransType>().is_err()
            {
                return Err(invalid(
                    "InvalidMatch",
                    format!("match.transType '{tt}' is not one of saga, msg, tcc, xa, workflow"),
                ));
            }
            if let Some(p) = &m.gid_prefix
                && (p.is_empty()
                    || !p
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)))
            {
                return Err(invalid(
                    "InvalidMatch",
                    format!(
                        "match.gidPrefix '{p}' must be non-empty and use only letters, digits, '-', '_', '.', ':'"
                    ),
                ));
            }
            if let Some(h) = &m.branch_host
                && (h.is_empty() || h.contains(['/', ' ', ':']))
            {
                return Err(invalid(
                    "InvalidMatch",
                    format!(
                        "match.branchHost '{h}' must be a host name without scheme, port or path"
                    ),
                ));
            }
        }
        for (name, v) in [
            ("timeoutToFail", self.timeout_to_fail),
            ("requestTimeout", self.request_timeout),
            ("retryInterval", self.retry_interval),
            ("backoffCap", self.backoff_cap),
            ("retryLimit", self.retry_limit),
        ] {
            if let Some(v) = v
                && v < 1
            {
                return Err(invalid(
                    "InvalidTiming",
                    format!("{name} must be at least 1, got {v}"),
                ));
            }
        }
        if let (Some(cap), Some(interval)) = (self.backoff_cap, self.retry_interval)
            && cap < interval
        {
            return Err(invalid(
                "InvalidTiming",
                format!("backoffCap ({cap}) must not be below retryInterval ({interval})"),
            ));
        }
        let mut seen = BTreeSet::new();
        for (name, value) in &self.branch_headers {
            if HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(invalid(
                    "InvalidBranchHeaders",
                    format!("branchHeaders: '{name}' is not a valid header name"),
                ));
            }
            if HeaderValue::from_str(value).is_err() {
                return Err(invalid(
                    "InvalidBranchHeaders",
                    format!("branchHeaders: the value of '{name}' is not a valid header value"),
                ));
            }
            if !seen.insert(name.to_ascii_lowercase()) {
                return Err(invalid(
                    "InvalidBranchHeaders",
                    format!("branchHeaders: '{name}' is given twice (names are case-insensitive)"),
                ));
            }
        }
        let mut names = BTreeSet::new();
        for (i, s) in self.services.iter().enumerate() {
            if !is_dns_label(&s.name) {
                return Err(invalid(
                    "InvalidServices",
                    format!(
                        "services[{i}].name '{}' is not a DNS label (lowercase letters, digits, '-', at most 63)",
                        s.name
                    ),
                ));
            }
            if let Some(svc) = &s.service
                && !is_dns_label(svc)
            {
                return Err(invalid(
                    "InvalidServices",
                    format!("services[{i}].service '{svc}' is not a valid Service name"),
                ));
            }
            if s.port.as_deref().is_some_and(str::is_empty) {
                return Err(invalid(
                    "InvalidServices",
                    format!("services[{i}].port must not be empty when given"),
                ));
            }
            if !names.insert(s.name.as_str()) {
                return Err(invalid(
                    "InvalidServices",
                    format!("services[{i}].name '{}' is declared twice", s.name),
                ));
            }
        }
        Ok(())
    }

    /// How specific the match is: (criteria set, gid prefix length). Higher wins.
    fn specificity(&self) -> (usize, usize) {
        let Some(m) = &self.match_ else {
            return (0, 0);
        };
        let count = [
            m.gid_prefix.is_some(),
            m.trans_type.is_some(),
            m.branch_host.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        (count, m.gid_prefix.as_ref().map_or(0, String::len))
    }

    /// Whether the match holds for `txn`.
    pub fn matches(&self, txn: &NewTxn<'_>) -> bool {
        let Some(m) = &self.match_ else {
            return true;
        };
        if let Some(p) = &m.gid_prefix
            && !txn.gid.starts_with(p.as_str())
        {
            return false;
        }
        if let Some(tt) = &m.trans_type
            && tt.as_str() != txn.trans_type.as_str()
        {
            return false;
        }
        if let Some(host) = &m.branch_host
            && !txn
                .branch_urls
                .iter()
                .filter_map(|u| url_host(u))
                .any(|h| h.eq_ignore_ascii_case(host))
        {
            return false;
        }
        true
    }

    /// Fills the options `options` left unset (zero, or a missing header) from this policy.
    pub fn fill(&self, options: &mut TransOptions) {
        let fill = |slot: &mut i64, v: Option<i64>| {
            if *slot == 0
                && let Some(v) = v
            {
                *slot = v;
            }
        };
        fill(&mut options.timeout_to_fail, self.timeout_to_fail);
        fill(&mut options.request_timeout, self.request_timeout);
        fill(&mut options.retry_interval, self.retry_interval);
        fill(&mut options.retry_limit, self.retry_limit);
        fill(&mut options.backoff_cap, self.backoff_cap);
        for (k, v) in &self.branch_headers {
            let set = options
                .branch_headers
                .keys()
                .any(|existing| existing.eq_ignore_ascii_case(k));
            if !set {
                options.branch_headers.insert(k.clone(), v.clone());
            }
        }
    }
}

/// The host of a branch URL, without port: `http://h:1/p`, `discovery://h/p`, or the gRPC form `h:1/p`.
pub fn url_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        authority.split(':').next()?
    };
    (!host.is_empty()).then_some(host)
}

/// `namespace/name` of a policy.
pub fn policy_key(p: &TransactionPolicy) -> String {
    format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any())
}

/// Picks the policy for a new transaction among `policies`: valid ones only, whose match holds; the most
/// specific wins (more criteria set, then the longer gid prefix); a tie goes to the first `namespace/name`.
pub fn select<'p, P>(policies: &'p [P], txn: &NewTxn<'_>) -> Option<&'p TransactionPolicy>
where
    P: std::borrow::Borrow<TransactionPolicy>,
{
    policies
        .iter()
        .map(std::borrow::Borrow::borrow)
        .filter(|p| p.spec.validate().is_ok() && p.spec.matches(txn))
        .min_by(|a, b| {
            b.spec
                .specificity()
                .cmp(&a.spec.specificity())
                .then_with(|| policy_key(a).cmp(&policy_key(b)))
        })
}

/// Applies the selected policy (if any) to `options`, recording its `namespace/name` in `options.policy`.
/// Returns the policy's key when one applied.
pub fn apply<P>(policies: &[P], txn: &NewTxn<'_>, options: &mut TransOptions) -> Option<String>
where
    P: std::borrow::Borrow<TransactionPolicy>,
{
    let policy = select(policies, txn)?;
    policy.spec.fill(options);
    let key = policy_key(policy);
    options.policy = key.clone();
    Some(key)
}

/// The CRD as YAML (what `braid crd` prints and `crds/transactionpolicy.yaml` holds).
pub fn crd_yaml() -> Result<String, serde_saphyr::ser::Error> {
    let yaml = serde_saphyr::to_string(&TransactionPolicy::crd())?;
    Ok(format!(
        "# Generated by `braid crd` from src/kube/policy.rs; do not edit by hand.\n{yaml}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(name: &str, spec: TransactionPolicySpec) -> TransactionPolicy {
        let mut p = TransactionPolicy::new(name, spec);
        p.metadata.namespace = Some("ns".to_owned());
        p
    }

    fn m(gid_prefix: Option<&str>, tt: Option<&str>, host: Option<&str>) -> Option<PolicyMatch> {
        Some(PolicyMatch {
            gid_prefix: gid_prefix.map(str::to_owned),
            trans_type: tt.map(str::to_owned),
            branch_host: host.map(str::to_owned),
        })
    }

    fn facts<'a>(gid: &'a str, tt: TransType, urls: &[&'a str]) -> NewTxn<'a> {
        NewTxn {
            gid,
            trans_type: tt,
            branch_urls: urls.to_vec(),
        }
    }

    #[test]
    fn committed_crd_matches_the_generated_one() {
        let generated = crd_yaml().unwrap();
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/transactionpolicy.yaml");
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == generated,
            "crds/transactionpolicy.yaml is stale; regenerate it with `cargo run -- crd > crds/transactionpolicy.yaml`"
        );
        let chart = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/charts/braid/files/transactionpolicy.yaml"
        );
        let in_chart = std::fs::read_to_string(chart).unwrap_or_default();
        assert!(
            in_chart == generated,
            "charts/braid/files/transactionpolicy.yaml is stale; copy crds/transactionpolicy.yaml there"
        );
    }

    #[test]
    fn crd_has_the_contract_names_and_field_docs() {
        let crd = serde_json::to_value(TransactionPolicy::crd()).unwrap();
        let spec = &crd["spec"];
        assert_eq!(spec["group"], "braid.dev");
        assert_eq!(spec["names"]["kind"], "TransactionPolicy");
        assert_eq!(spec["names"]["shortNames"][0], "txp");
        assert_eq!(spec["scope"], "Namespaced");
        let version = &spec["versions"][0];
        assert_eq!(version["name"], "v1alpha1");
        assert_eq!(version["subresources"]["status"], serde_json::json!({}));
        let props = &version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
        for field in [
            "match",
            "timeoutToFail",
            "requestTimeout",
            "retryInterval",
            "backoffCap",
            "retryLimit",
            "branchHeaders",
            "services",
        ] {
            let d = props[field]["description"].as_str().unwrap_or_default();
            assert!(!d.is_empty(), "spec.{field} has no description: {props}");
        }
        let status = &version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"];
        assert!(
            status["observedGeneration"]["description"].is_string(),
            "{status}"
        );
    }

    #[test]
    fn most_specific_match_wins_then_name_order() {
        let all = policy("a-default", TransactionPolicySpec::default());
        let saga = policy(
            "b-saga",
            TransactionPolicySpec {
                match_: m(None, Some("saga"), None),
                ..Default::default()
            },
        );
        let pay = policy(
            "c-pay",
            TransactionPolicySpec {
                match_: m(Some("pay-"), None, None),
                ..Default::default()
            },
        );
        let pay_long = policy(
            "d-pay-eu",
            TransactionPolicySpec {
                match_: m(Some("pay-eu-"), None, None),
                ..Default::default()
            },
        );
        let pay_saga = policy(
            "e-pay-saga",
            TransactionPolicySpec {
                match_: m(Some("pay-"), Some("saga"), None),
                ..Default::default()
            },
        );
        let tie = policy(
            "0-also-saga",
            TransactionPolicySpec {
                match_: m(None, Some("saga"), None),
                ..Default::default()
            },
        );
        let host = policy(
            "f-host",
            TransactionPolicySpec {
                match_: m(None, None, Some("Orders")),
                ..Default::default()
            },
        );
        let bad = policy(
            "0-invalid",
            TransactionPolicySpec {
                match_: m(Some("pay-eu-1"), Some("saga"), Some("orders")),
                timeout_to_fail: Some(0),
                ..Default::default()
            },
        );
        let set = vec![all, saga.clone(), pay, pay_long, pay_saga, tie, host, bad];
        let cases: &[(&str, TransType, &[&str], &str)] = &[
            ("x-1", TransType::Tcc, &[], "a-default"),
            ("x-1", TransType::Saga, &[], "0-also-saga"),
            ("pay-1", TransType::Msg, &[], "c-pay"),
            ("pay-eu-1", TransType::Msg, &[], "d-pay-eu"),
            ("pay-eu-1", TransType::Saga, &[], "e-pay-saga"),
            ("x-1", TransType::Msg, &["http://orders:8080/a"], "f-host"),
            ("x-1", TransType::Msg, &["orders:50051/p.S/M"], "f-host"),
            ("x-1", TransType::Msg, &["http://ordersx/a"], "a-default"),
        ];
        for (i, (gid, tt, urls, want)) in cases.iter().enumerate() {
            let got = select(&set, &facts(gid, *tt, urls)).map(ResourceExt::name_any);
            assert_eq!(got.as_deref(), Some(*want), "case {i}: {gid} {tt}");
        }
        assert!(select(&[saga], &facts("x", TransType::Msg, &[])).is_none());
        assert!(select::<TransactionPolicy>(&[], &facts("x", TransType::Msg, &[])).is_none());
    }

    #[test]
    fn request_options_win_and_the_rest_is_filled() {
        let p = policy(
            "p",
            TransactionPolicySpec {
                timeout_to_fail: Some(60),
                request_timeout: Some(7),
                retry_interval: Some(5),
                backoff_cap: Some(30),
                retry_limit: Some(2),
                branch_headers: BTreeMap::from([
                    ("X-Team".to_owned(), "pay".to_owned()),
                    ("authorization".to_owned(), "policy".to_owned()),
                ]),
                ..Default::default()
            },
        );
        let mut opts = TransOptions {
            request_timeout: 9,
            branch_headers: BTreeMap::from([("Authorization".to_owned(), "mine".to_owned())]),
            ..Default::default()
        };
        let key = apply(&[p], &facts("g", TransType::Saga, &[]), &mut opts);
        assert_eq!(key.as_deref(), Some("ns/p"));
        assert_eq!(
            (
                opts.timeout_to_fail,
                opts.request_timeout,
                opts.retry_interval,
                opts.backoff_cap,
                opts.retry_limit
            ),
            (60, 9, 5, 30, 2)
        );
        assert_eq!(
            opts.branch_headers,
            BTreeMap::from([
                ("Authorization".to_owned(), "mine".to_owned()),
                ("X-Team".to_owned(), "pay".to_owned()),
            ])
        );
        assert_eq!(opts.policy, "ns/p");
    }

    #[test]
    fn invalid_specs_name_the_problem() {
        let cases: Vec<(TransactionPolicySpec, &str, &str)> = vec![
            (
                TransactionPolicySpec {
                    match_: m(None, Some("sagas"), None),
                    ..Default::default()
                },
                "InvalidMatch",
                "transType 'sagas'",
            ),
            (
                TransactionPolicySpec {
                    match_: m(Some(""), None, None),
                    ..Default::default()
                },
                "InvalidMatch",
                "gidPrefix",
            ),
            (
                TransactionPolicySpec {
                    match_: m(None, None, Some("http://x")),
                    ..Default::default()
                },
                "InvalidMatch",
                "branchHost",
            ),
            (
                TransactionPolicySpec {
                    request_timeout: Some(0),
                    ..Default::default()
                },
                "InvalidTiming",
                "requestTimeout must be at least 1",
            ),
            (
                TransactionPolicySpec {
                    retry_interval: Some(10),
                    backoff_cap: Some(5),
                    ..Default::default()
                },
                "InvalidTiming",
                "backoffCap (5) must not be below retryInterval (10)",
            ),
            (
                TransactionPolicySpec {
                    branch_headers: BTreeMap::from([("bad header".to_owned(), "v".to_owned())]),
                    ..Default::default()
                },
                "InvalidBranchHeaders",
                "'bad header' is not a valid header name",
            ),
            (
                TransactionPolicySpec {
                    branch_headers: BTreeMap::from([("x".to_owned(), "a\nb".to_owned())]),
                    ..Default::default()
                },
                "InvalidBranchHeaders",
                "value of 'x'",
            ),
            (
                TransactionPolicySpec {
                    services: vec![BranchService {
                        name: "Orders".to_owned(),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                "InvalidServices",
                "services[0].name 'Orders'",
            ),
            (
                TransactionPolicySpec {
                    services: vec![
                        BranchService {
                            name: "orders".to_owned(),
                            ..Default::default()
                        },
                        BranchService {
                            name: "orders".to_owned(),
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                },
                "InvalidServices",
                "declared twice",
            ),
        ];
        for (i, (spec, reason, text)) in cases.iter().enumerate() {
            let err = spec.validate().unwrap_err();
            assert_eq!(err.reason, *reason, "case {i}: {err}");
            assert!(err.message.contains(text), "case {i}: {err}");
        }
        assert!(TransactionPolicySpec::default().validate().is_ok());
    }

    #[test]
    fn url_hosts_are_found_in_every_form() {
        let cases = [
            ("http://orders/a", Some("orders")),
            ("http://orders:8080/a?x=1", Some("orders")),
            (
                "https://user@orders.shop.svc:443/a",
                Some("orders.shop.svc"),
            ),
            ("discovery://orders/api", Some("orders")),
            ("orders:50051/pkg.Svc/Method", Some("orders")),
            ("http://[::1]:80/a", Some("::1")),
            ("", None),
            ("http:///a", None),
        ];
        for (url, want) in cases {
            assert_eq!(url_host(url), want, "{url}");
        }
    }
}
