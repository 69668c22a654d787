//! An in-process fake Kubernetes API server (axum on 127.0.0.1) that speaks the real HTTP/JSON wire format
//! for namespaced kinds, generically, so a real `kube::Client` (and kube-runtime's watcher) can run against
//! it; no kube-apiserver can run on our machines (spec/kubernetes.md §3). Registered by default:
//! `braid.dev/v1alpha1` TransactionPolicy (with the status subresource), `discovery.k8s.io/v1` EndpointSlice
//! and `coordination.k8s.io/v1` Lease; [`FakeKube::start_with`] takes any other [`KindSpec`]. The policy
//! watcher and discovery (`tests/kube.rs`) and the `kubernetes` lease backend (`tests/cluster.rs`) run on it.
//!
//! What it implements, as the API server does:
//! - GET one object; LIST (`resourceVersion` in the list metadata, label selectors `k`, `!k`, `k=v`, `k==v`,
//!   `k!=v`, field selectors `metadata.name`/`metadata.namespace`), across namespaces too;
//! - WATCH (`?watch=true`): chunked newline-delimited JSON events `ADDED`/`MODIFIED`/`DELETED`, replayed
//!   from the requested `resourceVersion` (`0` or none: synthetic `ADDED` of the current objects first),
//!   `BOOKMARK` after the replay when `allowWatchBookmarks=true`, streaming lists (`sendInitialEvents=true`,
//!   ending with the `k8s.io/initial-events-end` bookmark), and `timeoutSeconds`;
//! - POST (409 AlreadyExists), PUT (409 Conflict on a stale `metadata.resourceVersion`; none given: an
//!   unconditional update, as leader election does; 404 when missing), DELETE (409 Conflict when the
//!   `DeleteOptions` preconditions `resourceVersion`/`uid` do not hold; answers with the deleted object for
//!   custom resources and a `Success` `Status` for built-in kinds); PATCH with `application/merge-patch+json`, `application/strategic-merge-patch+json` (treated
//!   as a merge patch) and server-side apply `application/apply-patch+yaml` (creates when missing; records
//!   the `fieldManager` in `metadata.managedFields`);
//! - the status subresource: writes to the object ignore `.status`, writes to `/status` change only
//!   `.status`; `metadata.generation` grows when anything but metadata and status changes;
//! - errors as `Status` objects with the real reasons (`NotFound`, `AlreadyExists`, `Conflict`, ...) and
//!   `details` naming the object.
//!
//! For assertions, it keeps every request ([`FakeKube::requests`]), the stored objects
//! ([`FakeKube::object`], [`FakeKube::objects`]) and every applied write with the instant the fake applied it
//! ([`FakeKube::history`]), for properties over time such as "a lease never changed holder while its holder
//! was live".
//!
//! Simplifications: server-side apply merges objects recursively and replaces lists (no field-ownership
//! conflicts), and a status apply replaces the whole status; no admission, defaulting or schema validation;
//! history is never compacted (no 410 Gone).

// Handlers return ready-made error responses; their size does not matter in a test fake.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

/// A kind the fake serves.
#[derive(Debug, Clone)]
pub struct KindSpec {
    /// API group (`""` for the core group).
    pub group: &'static str,
    /// Version.
    pub version: &'static str,
    /// Plural resource name in URLs.
    pub plural: &'static str,
    /// Kind.
    pub kind: &'static str,
    /// Whether `/status` is a subresource.
    pub status: bool,
}

impl KindSpec {
    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    fn key(&self) -> String {
        format!("{}/{}", self.group, self.plural)
    }

    /// `plural.group` (`leases.coordination.k8s.io`), or `plural` for the core group, as error messages
    /// name the resource.
    fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_owned()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Whether this is a custom resource: the API server answers a DELETE of one with the deleted object,
    /// and of a built-in kind (core or a `*.k8s.io` group) with a `Success` `Status`.
    fn is_custom(&self) -> bool {
        !(self.group.is_empty() || self.group.ends_with(".k8s.io"))
    }
}

/// The kinds registered by [`FakeKube::start`].
pub fn default_kinds() -> Vec<KindSpec> {
    vec![
        KindSpec {
            group: "braid.dev",
            version: "v1alpha1",
            plural: "transactionpolicies",
            kind: "TransactionPolicy",
            status: true,
        },
        KindSpec {
            group: "discovery.k8s.io",
            version: "v1",
            plural: "endpointslices",
            kind: "EndpointSlice",
            status: false,
        },
        KindSpec {
            group: "coordination.k8s.io",
            version: "v1",
            plural: "leases",
            kind: "Lease",
            status: false,
        },
    ]
}

/// What a write did, as a watch event names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Created.
    Added,
    /// Updated or patched.
    Modified,
    /// Deleted.
    Deleted,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// One applied write, as a watch reports it and [`FakeKube::history`] returns it.
#[derive(Debug, Clone)]
pub struct Change {
    /// When the fake applied it.
    pub at: Instant,
    /// The `resourceVersion` it gave the object.
    pub rv: u64,
    /// What it did.
    pub event: EventType,
    /// `group/plural` of the object's kind.
    kind_key: String,
    /// The object's namespace.
    pub namespace: String,
    /// The object's name.
    pub name: String,
    /// The object after the write; for a delete, the object as it was, with the delete's `resourceVersion`.
    pub object: Value,
}

#[derive(Default)]
struct Db {
    kinds: Vec<KindSpec>,
    /// (kind key, namespace, name) -> object.
    objects: BTreeMap<(String, String, String), Value>,
    rv: u64,
    history: Vec<Change>,
    /// Requests seen: "METHOD path?query" (for assertions).
    requests: Vec<String>,
}

struct Shared {
    db: Mutex<Db>,
    changes: broadcast::Sender<Change>,
}

/// A running fake API server. Cheap to clone.
#[derive(Clone)]
pub struct FakeKube {
    shared: Arc<Shared>,
    /// Where it listens.
    pub addr: SocketAddr,
}

fn status(code: u16, reason: &str, message: String) -> Response {
    failure(code, reason, message, None)
}

/// A failure `Status` about one object: `details` name it as the API server does (`kind` is the plural).
fn object_status(
    code: u16,
    reason: &str,
    message: String,
    kind: &KindSpec,
    name: &str,
) -> Response {
    let details = json!({"name": name, "group": kind.group, "kind": kind.plural});
    failure(code, reason, message, Some(details))
}

fn failure(code: u16, reason: &str, message: String, details: Option<Value>) -> Response {
    let mut body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    if let Some(details) = details {
        body["details"] = details;
    }
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        axum::Json(body),
    )
        .into_response()
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            if let Value::Object(t) = target {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// Everything but `metadata` and `status`: what `metadata.generation` tracks.
fn generation_part(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Value::Object(m) = &mut v {
        m.remove("metadata");
        m.remove("status");
    }
    v
}

fn label_matches(labels: &Value, selector: &str) -> bool {
    selector
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .all(|term| {
            let get = |k: &str| labels.get(k).and_then(Value::as_str);
            if let Some((k, v)) = term.split_once("!=") {
                get(k.trim()) != Some(v.trim())
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                get(k.trim()) == Some(v.trim())
            } else if let Some(k) = term.strip_prefix('!') {
                get(k.trim()).is_none()
            } else {
                get(term).is_some()
            }
        })
}

fn field_matches(obj: &Value, selector: &str) -> bool {
    selector.split(',').filter(|t| !t.is_empty()).all(|term| {
        let (k, v, eq) = if let Some((k, v)) = term.split_once("!=") {
            (k, v, false)
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            (k, v, true)
        } else {
            return true;
        };
        let actual = match k {
            "metadata.name" => obj["metadata"]["name"].as_str(),
            "metadata.namespace" => obj["metadata"]["namespace"].as_str(),
            _ => return true,
        };
        (actual == Some(v)) == eq
    })
}

struct Filter {
    kind_key: String,
    namespace: Option<String>,
    labels: Option<String>,
    fields: Option<String>,
}

impl Filter {
    fn accepts(&self, kind_key: &str, namespace: &str, obj: &Value) -> bool {
        kind_key == self.kind_key
            && self.namespace.as_deref().is_none_or(|n| n == namespace)
            && self
                .labels
                .as_deref()
                .is_none_or(|s| label_matches(&obj["metadata"]["labels"], s))
            && self.fields.as_deref().is_none_or(|s| field_matches(obj, s))
    }
}

impl Db {
    fn record(&mut self, change: Change, tx: &broadcast::Sender<Change>) {
        self.history.push(change.clone());
        let _ = tx.send(change);
    }

    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }
}

/// The parsed request path.
struct Target {
    kind: KindSpec,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

impl FakeKube {
    /// Starts the fake with the default kinds.
    pub async fn start() -> Self {
        Self::start_with(default_kinds()).await
    }

    /// Starts the fake serving `kinds`.
    pub async fn start_with(kinds: Vec<KindSpec>) -> Self {
        let (changes, _) = broadcast::channel(4096);
        let shared = Arc::new(Shared {
            db: Mutex::new(Db {
                kinds,
                rv: 100,
                ..Db::default()
            }),
            changes,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake kube");
        let addr = listener.local_addr().expect("fake kube addr");
        let app = Router::new().fallback(handle).with_state(shared.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { shared, addr }
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A real `kube::Client` talking to this fake, with `namespace` as its default.
    pub fn client(&self, namespace: &str) -> kube::Client {
        let mut config = kube::Config::new(self.url().parse().expect("fake url"));
        config.default_namespace = namespace.to_owned();
        kube::Client::try_from(config).expect("kube client for the fake")
    }

    /// The stored object, if any (`plural` as in URLs).
    pub fn object(&self, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        let db = self.shared.db.lock().expect("fake db");
        db.objects
            .iter()
            .find(|((k, ns, n), _)| {
                k.ends_with(&format!("/{plural}")) && ns == namespace && n == name
            })
            .map(|(_, v)| v.clone())
    }

    /// The stored objects of `plural` in `namespace`, by name.
    pub fn objects(&self, plural: &str, namespace: &str) -> BTreeMap<String, Value> {
        let db = self.shared.db.lock().expect("fake db");
        db.objects
            .iter()
            .filter(|((k, ns, _), _)| k.ends_with(&format!("/{plural}")) && ns == namespace)
            .map(|((_, _, name), v)| (name.clone(), v.clone()))
            .collect()
    }

    /// Every write applied to objects of `plural` so far, in order.
    pub fn history(&self, plural: &str) -> Vec<Change> {
        let db = self.shared.db.lock().expect("fake db");
        db.history
            .iter()
            .filter(|c| c.kind_key.ends_with(&format!("/{plural}")))
            .cloned()
            .collect()
    }

    /// Every request seen so far, as `METHOD path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.shared.db.lock().expect("fake db").requests.clone()
    }
}

fn parse_target(db: &Db, path: &str) -> Result<Target, Response> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => {
            return Err(status(
                404,
                "NotFound",
                format!("the server could not find the requested resource ({path})"),
            ));
        }
    };
    let (namespace, plural, name, sub) = match rest {
        ["namespaces", ns, plural] => (Some(*ns), *plural, None, None),
        ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name), None),
        ["namespaces", ns, plural, name, sub] => (Some(*ns), *plural, Some(*name), Some(*sub)),
        [plural] => (None, *plural, None, None),
        _ => {
            return Err(status(
                404,
                "NotFound",
                format!("the server could not find the requested resource ({path})"),
            ));
        }
    };
    let kind = db
        .kinds
        .iter()
        .find(|k| k.group == group && k.version == version && k.plural == plural)
        .cloned()
        .ok_or_else(|| {
            status(
                404,
                "NotFound",
                format!("the server could not find the requested resource ({path})"),
            )
        })?;
    let status_sub = match sub {
        None => false,
        Some("status") if kind.status => true,
        Some(other) => {
            return Err(status(
                404,
                "NotFound",
                format!("no subresource '{other}' on {plural}"),
            ));
        }
    };
    Ok(Target {
        kind,
        namespace: namespace.map(str::to_owned),
        name: name.map(str::to_owned),
        status: status_sub,
    })
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let target = {
        let mut db = shared.db.lock().expect("fake db");
        db.requests.push(format!("{method} {uri}"));
        match parse_target(&db, uri.path()) {
            Ok(t) => t,
            Err(resp) => return resp,
        }
    };
    let watching = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    match (&method, &target.name) {
        (&Method::GET, None) if watching => watch(&shared, &target, &query),
        (&Method::GET, None) => list(&shared, &target, &query),
        (&Method::GET, Some(name)) => get(&shared, &target, name),
        (&Method::POST, None) => create(&shared, &target, &body),
        (&Method::PUT, Some(name)) => replace(&shared, &target, name, &body),
        (&Method::PATCH, Some(name)) => {
            let content_type = headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            patch(&shared, &target, name, &content_type, &query, &body)
        }
        (&Method::DELETE, Some(name)) => delete(&shared, &target, name, &body),
        _ => status(
            405,
            "MethodNotAllowed",
            format!("{method} is not supported on {}", uri.path()),
        ),
    }
}

fn key(target: &Target, namespace: &str, name: &str) -> (String, String, String) {
    (target.kind.key(), namespace.to_owned(), name.to_owned())
}

fn not_found(target: &Target, name: &str) -> Response {
    let message = format!("{} \"{name}\" not found", target.kind.qualified());
    object_status(404, "NotFound", message, &target.kind, name)
}

fn get(shared: &Shared, target: &Target, name: &str) -> Response {
    let db = shared.db.lock().expect("fake db");
    let ns = target.namespace.clone().unwrap_or_default();
    match db.objects.get(&key(target, &ns, name)) {
        Some(obj) => axum::Json(obj.clone()).into_response(),
        None => not_found(target, name),
    }
}

fn filter_of(target: &Target, query: &HashMap<String, String>) -> Filter {
    Filter {
        kind_key: target.kind.key(),
        namespace: target.namespace.clone(),
        labels: query.get("labelSelector").cloned(),
        fields: query.get("fieldSelector").cloned(),
    }
}

fn list(shared: &Shared, target: &Target, query: &HashMap<String, String>) -> Response {
    let db = shared.db.lock().expect("fake db");
    let filter = filter_of(target, query);
    let items: Vec<Value> = db
        .objects
        .iter()
        .filter(|((k, ns, _), obj)| filter.accepts(k, ns, obj))
        .map(|(_, obj)| obj.clone())
        .collect();
    axum::Json(json!({
        "apiVersion": target.kind.api_version(),
        "kind": format!("{}List", target.kind.kind),
        "metadata": {"resourceVersion": db.rv.to_string()},
        "items": items,
    }))
    .into_response()
}

fn event_line(type_: &str, object: &Value) -> Bytes {
    let mut line =
        serde_json::to_vec(&json!({"type": type_, "object": object})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

fn bookmark(kind: &KindSpec, rv: u64, initial_end: bool) -> Bytes {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    event_line(
        "BOOKMARK",
        &json!({"apiVersion": kind.api_version(), "kind": kind.kind, "metadata": metadata}),
    )
}

fn watch(shared: &Shared, target: &Target, query: &HashMap<String, String>) -> Response {
    let filter = filter_of(target, query);
    let from: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true");
    let initial_events = query.get("sendInitialEvents").is_some_and(|v| v == "true");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(290), Duration::from_secs);
    // Subscribe and read the backlog under one lock, so nothing falls between them.
    let (mut live, backlog, current_rv) = {
        let db = shared.db.lock().expect("fake db");
        let live = shared.changes.subscribe();
        let backlog: Vec<Bytes> = if from == 0 || initial_events {
            db.objects
                .iter()
                .filter(|((k, ns, _), obj)| filter.accepts(k, ns, obj))
                .map(|(_, obj)| event_line("ADDED", obj))
                .collect()
        } else {
            db.history
                .iter()
                .filter(|c| c.rv > from && filter.accepts(&c.kind_key, &c.namespace, &c.object))
                .map(|c| event_line(c.event.as_str(), &c.object))
                .collect()
        };
        (live, backlog, db.rv)
    };
    let kind = target.kind.clone();
    let (tx, mut rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        for line in backlog {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        if (initial_events || bookmarks)
            && tx
                .send(bookmark(&kind, current_rv, initial_events))
                .await
                .is_err()
        {
            return;
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                () = &mut deadline => return,
                () = tx.closed() => return,
                change = live.recv() => match change {
                    Ok(c) if c.rv > current_rv && filter.accepts(&c.kind_key, &c.namespace, &c.object) => {
                        if tx.send(event_line(c.event.as_str(), &c.object)).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    });
    let stream =
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|o| o.map(Ok::<_, Infallible>)));
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| {
            status(
                500,
                "InternalError",
                "building the watch response".to_owned(),
            )
        })
}

fn parse_body(body: &[u8]) -> Result<Value, Response> {
    serde_json::from_slice(body)
        .or_else(|_| {
            let text = std::str::from_utf8(body).map_err(|e| e.to_string())?;
            serde_saphyr::from_str::<Value>(text).map_err(|e| e.to_string())
        })
        .map_err(|e| {
            status(
                400,
                "BadRequest",
                format!("the body is not JSON or YAML: {e}"),
            )
        })
}

/// Stores `obj` as a new object (metadata filled in) and records ADDED.
fn insert_new(shared: &Shared, db: &mut Db, target: &Target, ns: &str, mut obj: Value) -> Value {
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let rv = db.next_rv();
    obj["apiVersion"] = json!(target.kind.api_version());
    obj["kind"] = json!(target.kind.kind);
    if target.kind.status
        && let Value::Object(m) = &mut obj
    {
        m.remove("status");
    }
    let meta = &mut obj["metadata"];
    meta["namespace"] = json!(ns);
    meta["uid"] = json!(uuid::Uuid::new_v4().to_string());
    meta["resourceVersion"] = json!(rv.to_string());
    meta["generation"] = json!(1);
    meta["creationTimestamp"] = json!(now());
    db.objects.insert(key(target, ns, &name), obj.clone());
    let change = Change {
        at: Instant::now(),
        rv,
        event: EventType::Added,
        kind_key: target.kind.key(),
        namespace: ns.to_owned(),
        name,
        object: obj.clone(),
    };
    db.record(change, &shared.changes);
    obj
}

fn create(shared: &Shared, target: &Target, body: &[u8]) -> Response {
    let mut obj = match parse_body(body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let ns = target.namespace.clone().unwrap_or_default();
    if obj["metadata"]["name"].as_str().is_none_or(str::is_empty) {
        match obj["metadata"]["generateName"].as_str() {
            Some(prefix) => {
                let suffix: String = uuid::Uuid::new_v4().simple().to_string()[..5].to_owned();
                obj["metadata"]["name"] = json!(format!("{prefix}{suffix}"));
            }
            None => return status(422, "Invalid", "metadata.name: Required value".to_owned()),
        }
    }
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let mut db = shared.db.lock().expect("fake db");
    if db.objects.contains_key(&key(target, &ns, &name)) {
        let message = format!("{} \"{name}\" already exists", target.kind.qualified());
        return object_status(409, "AlreadyExists", message, &target.kind, &name);
    }
    let stored = insert_new(shared, &mut db, target, &ns, obj);
    (StatusCode::CREATED, axum::Json(stored)).into_response()
}

/// Stores `next` in place of `current` (bumping resourceVersion and, when the spec part changed,
/// generation) and records MODIFIED.
fn store_update(
    shared: &Shared,
    db: &mut Db,
    target: &Target,
    ns: &str,
    name: &str,
    current: &Value,
    mut next: Value,
) -> Value {
    let rv = db.next_rv();
    next["apiVersion"] = json!(target.kind.api_version());
    next["kind"] = json!(target.kind.kind);
    let generation = current["metadata"]["generation"].as_i64().unwrap_or(1);
    let generation = if generation_part(current) == generation_part(&next) {
        generation
    } else {
        generation + 1
    };
    for field in ["uid", "creationTimestamp", "namespace", "name"] {
        next["metadata"][field] = current["metadata"][field].clone();
    }
    next["metadata"]["resourceVersion"] = json!(rv.to_string());
    next["metadata"]["generation"] = json!(generation);
    if next["metadata"]["managedFields"].is_null()
        && !current["metadata"]["managedFields"].is_null()
    {
        next["metadata"]["managedFields"] = current["metadata"]["managedFields"].clone();
    }
    db.objects.insert(key(target, ns, name), next.clone());
    let change = Change {
        at: Instant::now(),
        rv,
        event: EventType::Modified,
        kind_key: target.kind.key(),
        namespace: ns.to_owned(),
        name: name.to_owned(),
        object: next.clone(),
    };
    db.record(change, &shared.changes);
    next
}

fn conflict(target: &Target, name: &str) -> Response {
    precondition_conflict(
        target,
        name,
        "the object has been modified; please apply your changes to the latest version and try again",
    )
}

/// 409 `Conflict`: `why` the write could not be applied to the object.
fn precondition_conflict(target: &Target, name: &str, why: &str) -> Response {
    let message = format!(
        "Operation cannot be fulfilled on {} \"{name}\": {why}",
        target.kind.qualified()
    );
    object_status(409, "Conflict", message, &target.kind, name)
}

/// What a write through `target` makes of `current` given the written object `written`: the status
/// subresource takes only `.status`; the main resource keeps the stored `.status` for kinds that have
/// the subresource.
fn scoped(target: &Target, current: &Value, written: Value) -> Value {
    if target.status {
        let mut next = current.clone();
        next["status"] = written.get("status").cloned().unwrap_or(Value::Null);
        if next["status"].is_null()
            && let Value::Object(m) = &mut next
        {
            m.remove("status");
        }
        next
    } else if target.kind.status {
        let mut next = written;
        match current.get("status") {
            Some(s) => next["status"] = s.clone(),
            None => {
                if let Value::Object(m) = &mut next {
                    m.remove("status");
                }
            }
        }
        next
    } else {
        written
    }
}

fn precondition_failed(current: &Value, written: &Value) -> bool {
    match written["metadata"]["resourceVersion"].as_str() {
        Some(rv) if !rv.is_empty() => current["metadata"]["resourceVersion"].as_str() != Some(rv),
        _ => false,
    }
}

fn replace(shared: &Shared, target: &Target, name: &str, body: &[u8]) -> Response {
    let written = match parse_body(body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let ns = target.namespace.clone().unwrap_or_default();
    let mut db = shared.db.lock().expect("fake db");
    let Some(current) = db.objects.get(&key(target, &ns, name)).cloned() else {
        return not_found(target, name);
    };
    if precondition_failed(&current, &written) {
        return conflict(target, name);
    }
    let next = scoped(target, &current, written);
    let stored = store_update(shared, &mut db, target, &ns, name, &current, next);
    axum::Json(stored).into_response()
}

fn patch(
    shared: &Shared,
    target: &Target,
    name: &str,
    content_type: &str,
    query: &HashMap<String, String>,
    body: &[u8],
) -> Response {
    let patch = match parse_body(body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let ns = target.namespace.clone().unwrap_or_default();
    let mut db = shared.db.lock().expect("fake db");
    let current = db.objects.get(&key(target, &ns, name)).cloned();
    let media = content_type.split(';').next().unwrap_or_default().trim();
    match media {
        "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
            let Some(current) = current else {
                return not_found(target, name);
            };
            if precondition_failed(&current, &patch) {
                return conflict(target, name);
            }
            let mut written = current.clone();
            merge_patch(&mut written, &patch);
            let next = scoped(target, &current, written);
            let stored = store_update(shared, &mut db, target, &ns, name, &current, next);
            axum::Json(stored).into_response()
        }
        "application/apply-patch+yaml" => {
            let Some(manager) = query.get("fieldManager").filter(|m| !m.is_empty()) else {
                return status(
                    422,
                    "Invalid",
                    "fieldManager: Required value: is required for apply patch".to_owned(),
                );
            };
            let entry = json!({
                "manager": manager,
                "operation": "Apply",
                "apiVersion": target.kind.api_version(),
                "time": now(),
                "fieldsType": "FieldsV1",
                "subresource": if target.status { "status" } else { "" },
            });
            let Some(current) = current else {
                if target.status {
                    return not_found(target, name);
                }
                let mut obj = patch;
                obj["metadata"]["name"] = json!(name);
                obj["metadata"]["managedFields"] = json!([entry]);
                let stored = insert_new(shared, &mut db, target, &ns, obj);
                return (StatusCode::CREATED, axum::Json(stored)).into_response();
            };
            if precondition_failed(&current, &patch) {
                return conflict(target, name);
            }
            let mut written = current.clone();
            if target.status {
                written["status"] = patch.get("status").cloned().unwrap_or(Value::Null);
            } else {
                let mut body = patch;
                if let Value::Object(m) = &mut body {
                    m.remove("apiVersion");
                    m.remove("kind");
                }
                merge_patch(&mut written, &body);
            }
            let mut next = scoped(target, &current, written);
            let mut managed: Vec<Value> = current["metadata"]["managedFields"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            managed.retain(|m| {
                !(m["manager"] == entry["manager"] && m["subresource"] == entry["subresource"])
            });
            managed.push(entry);
            next["metadata"]["managedFields"] = json!(managed);
            let stored = store_update(shared, &mut db, target, &ns, name, &current, next);
            axum::Json(stored).into_response()
        }
        other => status(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml (got '{other}')"
            ),
        ),
    }
}

/// The `DeleteOptions` preconditions that `current` does not meet, as the API server words them.
fn unmet_precondition(current: &Value, options: &Value) -> Option<String> {
    let pre = &options["preconditions"];
    for (field, label) in [("resourceVersion", "ResourceVersion"), ("uid", "UID")] {
        let Some(want) = pre[field].as_str() else {
            continue;
        };
        let actual = current["metadata"][field].as_str().unwrap_or_default();
        if want != actual {
            return Some(format!(
                "Precondition failed: {label} in precondition: {want}, {label} in object meta: {actual}"
            ));
        }
    }
    None
}

fn delete(shared: &Shared, target: &Target, name: &str, body: &[u8]) -> Response {
    let options = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        match parse_body(body) {
            Ok(v) => v,
            Err(r) => return r,
        }
    };
    let ns = target.namespace.clone().unwrap_or_default();
    let mut db = shared.db.lock().expect("fake db");
    let Some(mut obj) = db.objects.get(&key(target, &ns, name)).cloned() else {
        return not_found(target, name);
    };
    if let Some(why) = unmet_precondition(&obj, &options) {
        return precondition_conflict(target, name, &why);
    }
    db.objects.remove(&key(target, &ns, name));
    let rv = db.next_rv();
    obj["metadata"]["resourceVersion"] = json!(rv.to_string());
    let change = Change {
        at: Instant::now(),
        rv,
        event: EventType::Deleted,
        kind_key: target.kind.key(),
        namespace: ns,
        name: name.to_owned(),
        object: obj.clone(),
    };
    db.record(change, &shared.changes);
    if target.kind.is_custom() {
        return axum::Json(obj).into_response();
    }
    axum::Json(json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": {
            "name": name,
            "group": target.kind.group,
            "kind": target.kind.plural,
            "uid": obj["metadata"]["uid"],
        },
    }))
    .into_response()
}
