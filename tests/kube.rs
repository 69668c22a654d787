//! Kubernetes scenarios: braid's policy watcher, status writer and EndpointSlice discovery against the
//! in-process fake API server (`support::kube_api`), through a real `kube::Client`. Branch URLs use the
//! host `orders`, which no DNS resolves: a call that arrives went through discovery.

// Panicking is how a test fails; clippy's allow-*-in-tests does not reach the scenario fns and the harness.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use braid::kube::TransactionPolicy;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client};
use serde_json::{Value, json};
use support::busi::req;
use support::kube_api::FakeKube;
use support::{Backend, Busi, TestServer, fresh_dsn, gid, test_config};

const NS: &str = "shop";
/// How long a watch may take to propagate (generous: the fake answers at once).
const PROPAGATION: Duration = Duration::from_secs(20);

/// Polls `check` every 50 ms until it returns `Some`, failing after [`PROPAGATION`].
async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PROPAGATION;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {PROPAGATION:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An EndpointSlice of Service `service` with one named port and `(address, ready)` endpoints.
fn slice(name: &str, service: &str, port: u16, endpoints: &[(&str, bool)]) -> EndpointSlice {
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": endpoints.iter().map(|(a, ready)| json!({
            "addresses": [a], "conditions": {"ready": ready}
        })).collect::<Vec<_>>(),
    }))
    .unwrap()
}

fn policy(name: &str, spec: Value) -> TransactionPolicy {
    serde_json::from_value(json!({
        "apiVersion": "braid.dev/v1alpha1",
        "kind": "TransactionPolicy",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap()
}

/// The fake, a client on it, and braid started with the Kubernetes integration, once it reports ready.
async fn start(fake: &FakeKube) -> (TestServer, Client) {
    let client = fake.client(NS);
    let mut config = test_config(&fresh_dsn(Backend::Sqlite));
    config.kube.namespace = Some(NS.to_owned());
    let ts = TestServer::start_with_kube(config, Some(client.clone())).await;
    wait_for("/api/ready to answer 200", || async {
        let (status, reply) = ts.request(reqwest::Method::GET, "/api/ready", None).await;
        eprintln!("ready: {status} {reply}");
        (status == 200).then_some(())
    })
    .await;
    (ts, client)
}

/// Waits until the fake holds a `Ready` condition with `status` for the policy's `generation`; returns it.
async fn ready_condition(fake: &FakeKube, name: &str, status: &str, generation: i64) -> Value {
    wait_for(
        &format!("{name}: Ready={status} at generation {generation}"),
        || async {
            let obj = fake.object("transactionpolicies", NS, name)?;
            let s = &obj["status"];
            let c = s["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == "Ready")?
                .clone();
            (s["observedGeneration"] == generation
                && c["status"] == status
                && c["observedGeneration"] == generation)
                .then_some(c)
        },
    )
    .await
}

/// A saga whose steps call `host` (a discovered service name or `ip:port`).
fn saga(gid: &str, host: &str, steps: usize) -> Value {
    let base = format!("http://{host}/api/busi");
    let all = [("TransOut", "TransOutRevert"), ("TransIn", "TransInRevert")];
    let steps: Vec<Value> = all[..steps]
        .iter()
        .map(|(a, c)| json!({"action": format!("{base}/{a}"), "compensate": format!("{base}/{c}")}))
        .collect();
    let payloads: Vec<String> = (0..steps.len()).map(|_| req(30, "", "")).collect();
    json!({"gid": gid, "trans_type": "saga", "steps": steps, "payloads": payloads})
}

fn calls_of(busi: &Busi, gid: &str) -> Vec<support::busi::Call> {
    busi.calls().into_iter().filter(|c| c.gid == gid).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_defaults_and_discovered_endpoints_reach_the_branch_calls() {
    let fake = FakeKube::start().await;
    let busi = Busi::start().await;
    let client = fake.client(NS);
    Api::<EndpointSlice>::namespaced(client.clone(), NS)
        .create(
            &PostParams::default(),
            &slice(
                "orders-x1",
                "orders",
                busi.addr.port(),
                &[("127.0.0.1", true)],
            ),
        )
        .await
        .unwrap();
    Api::<TransactionPolicy>::namespaced(client.clone(), NS)
        .create(
            &PostParams::default(),
            &policy(
                "payments",
                json!({
                    "match": {"gidPrefix": "pay-"},
                    "timeoutToFail": 120,
                    "requestTimeout": 1,
                    "retryInterval": 4,
                    "backoffCap": 40,
                    "retryLimit": 2,
                    "branchHeaders": {"X-Team": "payments", "Authorization": "policy"},
                    "services": [{"name": "orders", "port": "http"}],
                }),
            ),
        )
        .await
        .unwrap();
    let (ts, _client) = start(&fake).await;

    let ready = ready_condition(&fake, "payments", "True", 1).await;
    assert_eq!(ready["reason"], "Valid", "{ready}");
    let stored = fake.object("transactionpolicies", NS, "payments").unwrap();
    let managers: Vec<&Value> = stored["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .collect();
    assert!(
        managers.iter().any(|m| m["manager"] == "braid"
            && m["operation"] == "Apply"
            && m["subresource"] == "status"),
        "status written by server-side apply as field manager 'braid': {managers:?}"
    );
    assert!(
        fake.requests().iter().any(|r| r.starts_with(
            "PATCH /apis/braid.dev/v1alpha1/namespaces/shop/transactionpolicies/payments/status?"
        ) && r.contains("fieldManager=braid")
            && r.contains("force=true")),
        "{:?}",
        fake.requests()
    );

    // A matching saga: the policy fills what the request left unset; the request's own header wins.
    let g = gid("pay");
    let mut body = saga(&g, "orders", 2);
    body["branch_headers"] = json!({"authorization": "mine"});
    ts.submit_ok(&body).await;
    ts.wait_pass(&g).await;
    assert_eq!(ts.status(&g).await, "succeed");
    let calls = calls_of(&busi, &g);
    assert_eq!(
        calls.iter().map(|c| c.route.as_str()).collect::<Vec<_>>(),
        ["TransOut", "TransIn"]
    );
    for c in &calls {
        assert_eq!(
            c.headers.get("x-team").map(String::as_str),
            Some("payments"),
            "{c:?}"
        );
        assert_eq!(
            c.headers.get("authorization").map(String::as_str),
            Some("mine"),
            "{c:?}"
        );
        assert_eq!(
            c.headers.get("host").map(String::as_str),
            Some("orders"),
            "{c:?}"
        );
    }
    let t = ts.query(&g).await["transaction"].clone();
    assert_eq!(
        (
            &t["timeout_to_fail"],
            &t["request_timeout"],
            &t["retry_interval"],
            &t["backoff_cap"],
            &t["retry_limit"]
        ),
        (&json!(120), &json!(1), &json!(4), &json!(40), &json!(2)),
        "{t}"
    );
    assert_eq!(t["policy"], "shop/payments", "{t}");

    // The policy's 1-second request timeout is what the calls use: a branch that takes 2 s (under the
    // server's 3-second default) times out...
    busi.delay("TransIn", Duration::from_secs(2));
    let slow = gid("pay-slow");
    ts.submit_ok(&saga(&slow, "orders", 2)).await;
    ts.wait_pass(&slow).await;
    // (and the policy's retryLimit 2 retries it twice, each after the retry interval, then the saga
    // rolls back).
    for _ in 0..2 {
        assert_eq!(ts.status(&slow).await, "submitted");
        // Past the backoff (at most the policy's 40-second cap), within its 120-second timeout.
        ts.cron_forward_expect(40, &slow).await;
    }
    assert_eq!(ts.status(&slow).await, "failed");
    assert_eq!(
        busi.routes_of(&slow),
        [
            "TransOut",
            "TransIn",
            "TransIn",
            "TransIn",
            "TransInRevert",
            "TransOutRevert"
        ],
        "three timed-out tries of TransIn, then compensation"
    );
    let reason = ts.rollback_reason(&slow).await;
    assert!(reason.contains("RetryLimit: 2"), "{reason}");
    // ...unless the request sets its own.
    let own = gid("pay-own");
    let mut body = saga(&own, "orders", 2);
    body["request_timeout"] = json!(10);
    ts.submit_ok(&body).await;
    ts.wait_pass(&own).await;
    assert_eq!(ts.status(&own).await, "succeed");

    // A transaction the policy does not match still reaches the declared service, without its defaults.
    let other = gid("other");
    ts.submit_ok(&saga(&other, "orders", 1)).await;
    ts.wait_pass(&other).await;
    assert_eq!(ts.status(&other).await, "succeed");
    let call = &calls_of(&busi, &other)[0];
    assert!(!call.headers.contains_key("x-team"), "{call:?}");
    assert!(
        ts.query(&other).await["transaction"]
            .get("policy")
            .is_none()
    );
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_slice_changes_move_calls_and_a_retry_avoids_the_failed_endpoint() {
    let fake = FakeKube::start().await;
    let (a, b) = (Busi::start().await, Busi::start().await);
    let client = fake.client(NS);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NS);
    slices
        .create(
            &PostParams::default(),
            &slice("orders-a", "orders", a.addr.port(), &[("127.0.0.1", true)]),
        )
        .await
        .unwrap();
    Api::<TransactionPolicy>::namespaced(client.clone(), NS)
        .create(
            &PostParams::default(),
            &policy("routing", json!({"services": [{"name": "orders"}]})),
        )
        .await
        .unwrap();
    let (ts, _client) = start(&fake).await;
    ready_condition(&fake, "routing", "True", 1).await;

    let submit_wait = |g: &str, steps: usize| {
        let mut body = saga(g, "orders", steps);
        body["wait_result"] = json!(true);
        body
    };
    let g1 = gid("move-1");
    ts.submit_ok(&submit_wait(&g1, 2)).await;
    assert_eq!(calls_of(&a, &g1).len(), 2);
    assert!(calls_of(&b, &g1).is_empty());

    // The pod behind A stops being ready and B's slice appears: calls move to B.
    slices
        .create(
            &PostParams::default(),
            &slice("orders-b", "orders", b.addr.port(), &[("127.0.0.1", true)]),
        )
        .await
        .unwrap();
    slices
        .patch(
            "orders-a",
            &PatchParams::default(),
            &Patch::Merge(json!({"endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": false}}]})),
        )
        .await
        .unwrap();
    let mut n = 0;
    wait_for("calls to move to B", || {
        n += 1;
        let g = gid(&format!("move-wait-{n}"));
        let body = submit_wait(&g, 1);
        let (ts, b) = (&ts, &b);
        async move {
            ts.submit_ok(&body).await;
            (!calls_of(b, &g).is_empty()).then_some(())
        }
    })
    .await;
    let g3 = gid("move-3");
    ts.submit_ok(&submit_wait(&g3, 2)).await;
    assert_eq!(calls_of(&b, &g3).len(), 2, "both calls on B");
    assert!(calls_of(&a, &g3).is_empty(), "nothing on the unready A");

    // Both ready: calls alternate. Find where the next call goes (the endpoint the last one did not use).
    slices
        .patch(
            "orders-a",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}]}),
            ),
        )
        .await
        .unwrap();
    let mut n = 0;
    let last_on_a = wait_for("calls to reach A again", || {
        n += 1;
        let g = gid(&format!("both-{n}"));
        let body = submit_wait(&g, 1);
        let (ts, a) = (&ts, &a);
        async move {
            ts.submit_ok(&body).await;
            (!calls_of(a, &g).is_empty()).then_some(true)
        }
    })
    .await;
    // The last call went to A, so round robin sends the next one to B, then A.
    assert!(last_on_a);
    let (first, other) = (&b, &a);

    // The branch of `g` fails on `first` (500); `h` then takes `other`, so round robin points at `first`
    // again when `g` is retried: the retry must skip the endpoint that failed for it.
    first.push("TransOut", &["ERROR", "ERROR"]);
    let g = gid("retry");
    ts.submit_ok(&saga(&g, "orders", 1)).await;
    ts.wait_pass(&g).await;
    assert_eq!(ts.status(&g).await, "submitted");
    assert_eq!(calls_of(first, &g).len(), 1);
    let h = gid("between");
    ts.submit_ok(&submit_wait(&h, 1)).await;
    assert_eq!(calls_of(other, &h).len(), 1, "h took the other endpoint");
    ts.cron_forward_expect(60, &g).await;
    assert_eq!(ts.status(&g).await, "succeed");
    assert_eq!(
        calls_of(first, &g).len(),
        1,
        "the retry did not go back to the failed endpoint"
    );
    assert_eq!(
        calls_of(other, &g).len(),
        1,
        "the retry went to the other endpoint"
    );

    // Without endpoints the call fails and is retried later; the URL is never sent through DNS.
    slices
        .delete("orders-a", &DeleteParams::default())
        .await
        .unwrap();
    slices
        .delete("orders-b", &DeleteParams::default())
        .await
        .unwrap();
    let mut n = 0;
    let mut last = String::new();
    let reply = wait_for("calls to find no endpoints", || {
        n += 1;
        let g = gid(&format!("none-{n}"));
        let body = submit_wait(&g, 1);
        last.clone_from(&g);
        let ts = &ts;
        async move {
            let (status, reply) = ts.post("submit", &body).await;
            (status == 500).then_some(reply)
        }
    })
    .await;
    // The caller gets a generic reason; the detail is in the pass's result (and the log).
    assert_eq!(
        reply["message"],
        "a branch call failed; the transaction will be retried"
    );
    let pass = ts.wait_pass(&last).await;
    let detail = format!("{:?}", pass.result.error);
    assert!(
        detail.contains("service 'orders' (Service shop/orders) has no ready endpoints"),
        "{detail}"
    );
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_policy_reports_ready_false_and_is_ignored_until_fixed() {
    let fake = FakeKube::start().await;
    let busi = Busi::start().await;
    let client = fake.client(NS);
    let policies: Api<TransactionPolicy> = Api::namespaced(client.clone(), NS);
    policies
        .create(
            &PostParams::default(),
            &policy(
                "broken",
                json!({
                    "match": {"gidPrefix": "bad-"},
                    "timeoutToFail": 99,
                    "branchHeaders": {"bad header": "x"},
                }),
            ),
        )
        .await
        .unwrap();
    let (ts, _client) = start(&fake).await;
    let c = ready_condition(&fake, "broken", "False", 1).await;
    assert_eq!(c["reason"], "InvalidBranchHeaders", "{c}");
    assert!(
        c["message"]
            .as_str()
            .unwrap()
            .contains("'bad header' is not a valid header name"),
        "{c}"
    );

    let host = busi.addr.to_string();
    let g = gid("bad");
    ts.submit_ok(&saga(&g, &host, 1)).await;
    ts.wait_pass(&g).await;
    let t = ts.query(&g).await["transaction"].clone();
    assert!(
        t.get("timeout_to_fail").is_none() && t.get("policy").is_none(),
        "ignored: {t}"
    );

    policies
        .patch(
            "broken",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"branchHeaders": {"bad header": null, "x-ok": "1"}}})),
        )
        .await
        .unwrap();
    let c = ready_condition(&fake, "broken", "True", 2).await;
    assert_eq!(c["reason"], "Valid", "{c}");

    let g = gid("bad");
    ts.submit_ok(&saga(&g, &host, 1)).await;
    ts.wait_pass(&g).await;
    let t = ts.query(&g).await["transaction"].clone();
    assert_eq!(
        (&t["timeout_to_fail"], &t["policy"]),
        (&json!(99), &json!("shop/broken")),
        "{t}"
    );
    let call = &calls_of(&busi, &g)[0];
    assert_eq!(
        call.headers.get("x-ok").map(String::as_str),
        Some("1"),
        "{call:?}"
    );

    // Deleting the policy affects new transactions only: the stored one keeps its values.
    policies
        .delete("broken", &DeleteParams::default())
        .await
        .unwrap();
    let mut n = 0;
    wait_for("the deleted policy to stop applying", || {
        n += 1;
        let g2 = gid(&format!("bad-after-{n}"));
        let ts = &ts;
        let body = saga(&g2, &host, 1);
        async move {
            ts.submit_ok(&body).await;
            ts.query(&g2).await["transaction"]
                .get("policy")
                .is_none()
                .then_some(())
        }
    })
    .await;
    let t = ts.query(&g).await["transaction"].clone();
    assert_eq!(t["timeout_to_fail"], 99, "{t}");
    ts.stop().await;
}

/// The fake speaks the wire format a real `kube::Client` and kube-runtime's watcher expect, for Leases too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_api_server_serves_leases_like_the_real_one() {
    let fake = FakeKube::start().await;
    let leases: Api<Lease> = Api::namespaced(fake.client(NS), NS);
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "braid-shard-0", "labels": {"role": "shard"}},
        "spec": {"holderIdentity": "pod-a", "leaseDurationSeconds": 15},
    }))
    .unwrap();

    let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let watch = tokio::spawn({
        let leases = leases.clone();
        async move {
            let stream =
                watcher(leases, watcher::Config::default().labels("role=shard")).default_backoff();
            let mut stream = std::pin::pin!(stream);
            while let Some(Ok(ev)) = futures::StreamExt::next(&mut stream).await {
                let _ = tx.send(ev);
            }
        }
    });
    let mut seen = Vec::new();
    let mut next_event = async || -> String {
        loop {
            let ev = tokio::time::timeout(PROPAGATION, events.recv())
                .await
                .unwrap()
                .unwrap();
            let text = match ev {
                watcher::Event::Apply(l) | watcher::Event::InitApply(l) => {
                    format!(
                        "apply {}",
                        l.spec.and_then(|s| s.holder_identity).unwrap_or_default()
                    )
                }
                watcher::Event::Delete(_) => "delete".to_owned(),
                watcher::Event::Init | watcher::Event::InitDone => continue,
            };
            return text;
        }
    };

    let created = leases.create(&PostParams::default(), &lease).await.unwrap();
    let rv = created.metadata.resource_version.clone().unwrap();
    seen.push(next_event().await);
    let err = leases
        .create(&PostParams::default(), &lease)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists"),
        "{err}"
    );

    let mut taken = created.clone();
    taken.spec.as_mut().unwrap().holder_identity = Some("pod-b".to_owned());
    let replaced = leases
        .replace("braid-shard-0", &PostParams::default(), &taken)
        .await
        .unwrap();
    assert_ne!(
        replaced.metadata.resource_version.as_deref(),
        Some(rv.as_str())
    );
    seen.push(next_event().await);
    // A second writer with the stale resourceVersion loses.
    let err = leases
        .replace("braid-shard-0", &PostParams::default(), &taken)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 409 && s.reason == "Conflict"),
        "{err}"
    );

    leases
        .patch(
            "braid-shard-0",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"holderIdentity": "pod-c"}})),
        )
        .await
        .unwrap();
    seen.push(next_event().await);
    let applied = leases
        .patch(
            "braid-shard-1",
            &PatchParams::apply("braid").force(),
            &Patch::Apply(json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": "braid-shard-1", "labels": {"role": "other"}}, "spec": {"holderIdentity": "pod-d"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        applied.metadata.generation,
        Some(1),
        "server-side apply creates"
    );
    let listed = leases
        .list(&ListParams::default().labels("role=shard"))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1, "label selector");
    assert!(listed.metadata.resource_version.is_some());
    assert_eq!(
        leases
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        2
    );

    leases
        .delete("braid-shard-0", &DeleteParams::default())
        .await
        .unwrap();
    seen.push(next_event().await);
    let err = leases.get("braid-shard-0").await.unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 404 && s.reason == "NotFound"),
        "{err}"
    );
    assert_eq!(
        seen,
        ["apply pod-a", "apply pod-b", "apply pod-c", "delete"],
        "the other-labelled lease is not watched"
    );
    watch.abort();
}

/// Inside a pod without the CRD (`auto`), braid runs without the integration; asked for it (`on`), it
/// refuses to start and says what to install.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_crd_turns_the_integration_off_in_auto_and_fails_when_on() {
    let kinds = support::kube_api::default_kinds()
        .into_iter()
        .filter(|k| k.kind != "TransactionPolicy")
        .collect();
    let fake = FakeKube::start_with(kinds).await;
    let mut config = test_config(&fresh_dsn(Backend::Sqlite));
    config.kube.namespace = Some(NS.to_owned());
    let ts = TestServer::start_with_kube(config.clone(), Some(fake.client(NS))).await;
    let (status, reply) = ts.request(reqwest::Method::GET, "/api/ready", None).await;
    assert_eq!(status, 200, "ready without the integration: {reply}");
    assert!(
        !fake.requests().iter().any(|r| r.contains("watch=true")),
        "no watchers started: {:?}",
        fake.requests()
    );
    ts.stop().await;

    config.kube.mode = braid::kube::KubeMode::On;
    let err = braid::server::Server::start(
        &config,
        braid::server::StartOptions {
            scanner: false,
            kube_client: Some(fake.client(NS)),
            ..Default::default()
        },
    )
    .await
    .err()
    .expect("start fails");
    let text = format!("{err:#}");
    assert!(
        text.contains("install the CRD") && text.contains("404"),
        "{text}"
    );
}

/// kube-runtime's streaming-list mode (`sendInitialEvents=true`): the current objects arrive as the watch's
/// first events, ended by the `k8s.io/initial-events-end` bookmark; later changes follow on the same watch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_api_server_serves_streaming_lists() {
    let fake = FakeKube::start().await;
    let leases: Api<Lease> = Api::namespaced(fake.client(NS), NS);
    for name in ["a", "b"] {
        let lease: Lease = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        leases.create(&PostParams::default(), &lease).await.unwrap();
    }
    let stream = watcher(leases.clone(), watcher::Config::default().streaming_lists());
    let mut stream = std::pin::pin!(stream);
    let mut next = async || {
        tokio::time::timeout(PROPAGATION, futures::StreamExt::next(&mut stream))
            .await
            .unwrap()
            .unwrap()
            .unwrap()
    };
    let mut initial = Vec::new();
    loop {
        match next().await {
            watcher::Event::Init => {}
            watcher::Event::InitApply(l) => initial.push(l.metadata.name.unwrap()),
            watcher::Event::InitDone => break,
            other => panic!("unexpected event before InitDone: {other:?}"),
        }
    }
    initial.sort();
    assert_eq!(initial, ["a", "b"]);
    let lease: Lease = serde_json::from_value(json!({"metadata": {"name": "c"}})).unwrap();
    leases.create(&PostParams::default(), &lease).await.unwrap();
    match next().await {
        watcher::Event::Apply(l) => assert_eq!(l.metadata.name.as_deref(), Some("c")),
        other => panic!("expected the new lease, got {other:?}"),
    }
    assert!(
        fake.requests()
            .iter()
            .any(|r| r.contains("sendInitialEvents=true")),
        "{:?}",
        fake.requests()
    );
}
