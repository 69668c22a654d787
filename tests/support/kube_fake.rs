//! An in-process fake Kubernetes API server, speaking the real HTTP/JSON wire format, for tests that drive a
//! real `kube::Client` (no kube-apiserver can run on our machines; spec/kubernetes.md §3).
//!
//! What it does, for every registered kind (namespaced resources under `/apis/<group>/<version>/...` or
//! `/api/v1/...`):
//! - `GET .../namespaces/{ns}/{resource}/{name}`: the object, or 404 `Status` (reason `NotFound`);
//! - `GET .../namespaces/{ns}/{resource}?labelSelector=k=v,...`: a `<Kind>List` (equality selectors);
//! - `POST .../namespaces/{ns}/{resource}`: creates, assigning `resourceVersion`, `uid`,
//!   `creationTimestamp`; 409 `AlreadyExists` when the name is taken;
//! - `PUT .../namespaces/{ns}/{resource}/{name}`: replaces; 409 `Conflict` when the body's
//!   `metadata.resourceVersion` is not the stored one (an update without one is unconditional, as for
//!   leases), 404 when missing;
//! - `DELETE .../namespaces/{ns}/{resource}/{name}`: deletes; honours `preconditions.resourceVersion` (409),
//!   404 when missing.
//!
//! Every successful write is appended to a history with the time the fake applied it, for tests that check
//! properties over time (e.g. "a lease never changed holder while its holder was live").
//!
//! To extend it (list/watch of other kinds, issue 6): [`FakeApiServer::register`] another kind; watch
//! streams would hang off the same history.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use serde_json::{Value, json};

/// Where an object lives.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// `group/version` (`coordination.k8s.io/v1`), or `v1` for the core group.
    pub api_version: String,
    /// The plural resource name (`leases`).
    pub resource: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Create,
    Update,
    Delete,
}

/// One applied write.
#[derive(Debug, Clone)]
pub struct Event {
    /// When the fake applied it.
    pub at: Instant,
    pub verb: Verb,
    pub key: ObjectKey,
    /// The object as stored after the write (before it, for a delete).
    pub object: Value,
}

#[derive(Default)]
struct Inner {
    /// `(api_version, resource)` -> kind.
    kinds: HashMap<(String, String), String>,
    objects: BTreeMap<ObjectKey, Value>,
    next_rv: u64,
    history: Vec<Event>,
    requests: u64,
}

/// A running fake API server. Cheap to clone.
#[derive(Clone)]
pub struct FakeApiServer {
    inner: Arc<Mutex<Inner>>,
    pub addr: SocketAddr,
}

fn status(code: u16, reason: &str, message: String, key: &ObjectKey) -> Response {
    let group = key.api_version.rsplit_once('/').map_or("", |(g, _)| g);
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": {"name": key.name, "group": group, "kind": key.resource},
        "code": code,
    });
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        axum::Json(body),
    )
        .into_response()
}

fn rv_of(v: &Value) -> Option<String> {
    v["metadata"]["resourceVersion"]
        .as_str()
        .map(str::to_owned)
        .filter(|s| !s.is_empty())
}

fn labels_match(obj: &Value, selector: &str) -> bool {
    selector
        .split(',')
        .filter(|s| !s.is_empty())
        .all(|term| match term.split_once('=') {
            Some((k, v)) => obj["metadata"]["labels"][k.trim_end_matches('=')].as_str() == Some(v),
            None => obj["metadata"]["labels"].get(term).is_some(),
        })
}

impl FakeApiServer {
    /// Starts the fake on an ephemeral port of 127.0.0.1, serving Leases.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake apiserver");
        let addr = listener.local_addr().expect("fake apiserver addr");
        let fake = Self {
            inner: Arc::new(Mutex::new(Inner {
                next_rv: 1,
                ..Inner::default()
            })),
            addr,
        };
        fake.register("coordination.k8s.io/v1", "leases", "Lease");
        let app = Router::new()
            .route(
                "/apis/{group}/{version}/namespaces/{ns}/{resource}",
                any(collection),
            )
            .route(
                "/apis/{group}/{version}/namespaces/{ns}/{resource}/{name}",
                any(object),
            )
            .route(
                "/api/{version}/namespaces/{ns}/{resource}",
                any(core_collection),
            )
            .route(
                "/api/{version}/namespaces/{ns}/{resource}/{name}",
                any(core_object),
            )
            .with_state(fake.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        fake
    }

    /// Serves another kind: `register("v1", "configmaps", "ConfigMap")`.
    pub fn register(&self, api_version: &str, resource: &str, kind: &str) {
        self.lock().kinds.insert(
            (api_version.to_owned(), resource.to_owned()),
            kind.to_owned(),
        );
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A `kube::Client` talking to this fake, default namespace `default`.
    pub fn client(&self) -> kube::Client {
        let uri: axum::http::Uri = self.url().parse().expect("fake URL");
        kube::Client::try_from(kube::Config::new(uri)).expect("kube client for the fake")
    }

    /// Every applied write so far, in order.
    pub fn history(&self) -> Vec<Event> {
        self.lock().history.clone()
    }

    /// The stored objects.
    pub fn objects(&self) -> BTreeMap<ObjectKey, Value> {
        self.lock().objects.clone()
    }

    /// How many requests were served.
    pub fn requests(&self) -> u64 {
        self.lock().requests
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("fake apiserver lock")
    }

    fn handle(
        &self,
        method: &Method,
        key: ObjectKey,
        named: bool,
        query: &HashMap<String, String>,
        body: &Bytes,
    ) -> Response {
        let mut inner = self.lock();
        inner.requests += 1;
        let Some(kind) = inner
            .kinds
            .get(&(key.api_version.clone(), key.resource.clone()))
            .cloned()
        else {
            let msg = format!(
                "the server could not find the requested resource ({})",
                key.resource
            );
            return status(404, "NotFound", msg, &key);
        };
        let parsed: Option<Value> = serde_json::from_slice(body).ok();
        let what = format!("{}.{} \"{}\"", key.resource, key.api_version, key.name);
        match (method.clone(), named) {
            (Method::GET, true) => match inner.objects.get(&key) {
                Some(obj) => (StatusCode::OK, axum::Json(obj.clone())).into_response(),
                None => status(404, "NotFound", format!("{what} not found"), &key),
            },
            (Method::GET, false) => {
                let selector = query.get("labelSelector").cloned().unwrap_or_default();
                let items: Vec<Value> = inner
                    .objects
                    .iter()
                    .filter(|(k, _)| {
                        k.api_version == key.api_version
                            && k.resource == key.resource
                            && k.namespace == key.namespace
                    })
                    .map(|(_, v)| v)
                    .filter(|v| labels_match(v, &selector))
                    .cloned()
                    .collect();
                let list = json!({
                    "apiVersion": key.api_version,
                    "kind": format!("{kind}List"),
                    "metadata": {"resourceVersion": (inner.next_rv - 1).to_string()},
                    "items": items,
                });
                (StatusCode::OK, axum::Json(list)).into_response()
            }
            (Method::POST, false) => {
                let Some(mut obj) = parsed else {
                    return status(400, "BadRequest", "body is not JSON".into(), &key);
                };
                let Some(name) = obj["metadata"]["name"].as_str().map(str::to_owned) else {
                    return status(422, "Invalid", "metadata.name: Required value".into(), &key);
                };
                let key = ObjectKey { name, ..key };
                if inner.objects.contains_key(&key) {
                    let msg = format!(
                        "{}.{} \"{}\" already exists",
                        key.resource, key.api_version, key.name
                    );
                    return status(409, "AlreadyExists", msg, &key);
                }
                let rv = inner.next_rv;
                inner.next_rv += 1;
                obj["apiVersion"] = json!(key.api_version);
                obj["kind"] = json!(kind);
                let meta = &mut obj["metadata"];
                meta["namespace"] = json!(key.namespace);
                meta["resourceVersion"] = json!(rv.to_string());
                meta["uid"] = json!(uuid::Uuid::new_v4().to_string());
                meta["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
                inner.objects.insert(key.clone(), obj.clone());
                inner.history.push(Event {
                    at: Instant::now(),
                    verb: Verb::Create,
                    key,
                    object: obj.clone(),
                });
                (StatusCode::CREATED, axum::Json(obj)).into_response()
            }
            (Method::PUT, true) => {
                let Some(mut obj) = parsed else {
                    return status(400, "BadRequest", "body is not JSON".into(), &key);
                };
                let Some(stored) = inner.objects.get(&key).cloned() else {
                    return status(404, "NotFound", format!("{what} not found"), &key);
                };
                if let Some(rv) = rv_of(&obj)
                    && Some(rv) != rv_of(&stored)
                {
                    let msg = format!(
                        "Operation cannot be fulfilled on {what}: the object has been modified; please apply \
                         your changes to the latest version and try again"
                    );
                    return status(409, "Conflict", msg, &key);
                }
                let rv = inner.next_rv;
                inner.next_rv += 1;
                obj["apiVersion"] = json!(key.api_version);
                obj["kind"] = json!(kind);
                let meta = &mut obj["metadata"];
                meta["name"] = json!(key.name);
                meta["namespace"] = json!(key.namespace);
                meta["resourceVersion"] = json!(rv.to_string());
                meta["uid"] = stored["metadata"]["uid"].clone();
                meta["creationTimestamp"] = stored["metadata"]["creationTimestamp"].clone();
                inner.objects.insert(key.clone(), obj.clone());
                inner.history.push(Event {
                    at: Instant::now(),
                    verb: Verb::Update,
                    key,
                    object: obj.clone(),
                });
                (StatusCode::OK, axum::Json(obj)).into_response()
            }
            (Method::DELETE, true) => {
                let Some(stored) = inner.objects.get(&key).cloned() else {
                    return status(404, "NotFound", format!("{what} not found"), &key);
                };
                let want = parsed.as_ref().and_then(|p| {
                    p["preconditions"]["resourceVersion"]
                        .as_str()
                        .map(str::to_owned)
                });
                if let Some(want) = want
                    && Some(want.clone()) != rv_of(&stored)
                {
                    let msg = format!(
                        "Operation cannot be fulfilled on {what}: Precondition failed: ResourceVersion: \
                         Expected: {want}, Actual: {}",
                        rv_of(&stored).unwrap_or_default()
                    );
                    return status(409, "Conflict", msg, &key);
                }
                inner.objects.remove(&key);
                inner.history.push(Event {
                    at: Instant::now(),
                    verb: Verb::Delete,
                    key: key.clone(),
                    object: stored,
                });
                let body = json!({
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Success",
                    "details": {"name": key.name, "kind": key.resource},
                });
                (StatusCode::OK, axum::Json(body)).into_response()
            }
            _ => status(
                405,
                "MethodNotAllowed",
                format!("{method} is not supported here"),
                &key,
            ),
        }
    }
}

async fn collection(
    State(fake): State<FakeApiServer>,
    Path((group, version, ns, resource)): Path<(String, String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
    method: Method,
    body: Bytes,
) -> Response {
    let key = ObjectKey {
        api_version: format!("{group}/{version}"),
        resource,
        namespace: ns,
        name: String::new(),
    };
    fake.handle(&method, key, false, &q, &body)
}

async fn object(
    State(fake): State<FakeApiServer>,
    Path((group, version, ns, resource, name)): Path<(String, String, String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
    method: Method,
    body: Bytes,
) -> Response {
    let key = ObjectKey {
        api_version: format!("{group}/{version}"),
        resource,
        namespace: ns,
        name,
    };
    fake.handle(&method, key, true, &q, &body)
}

async fn core_collection(
    State(fake): State<FakeApiServer>,
    Path((version, ns, resource)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
    method: Method,
    body: Bytes,
) -> Response {
    let key = ObjectKey {
        api_version: version,
        resource,
        namespace: ns,
        name: String::new(),
    };
    fake.handle(&method, key, false, &q, &body)
}

async fn core_object(
    State(fake): State<FakeApiServer>,
    Path((version, ns, resource, name)): Path<(String, String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
    method: Method,
    body: Bytes,
) -> Response {
    let key = ObjectKey {
        api_version: version,
        resource,
        namespace: ns,
        name,
    };
    fake.handle(&method, key, true, &q, &body)
}
