//! What the controllers cost the API server at scale: the real `run::controllers` against a
//! stateful fake API server on 127.0.0.1 that counts every request, with 200 Ready
//! collections and 20 aliases. Reported: requests at startup, at steady state, and during one
//! import; asserted: a steady state sends no request but the watches', and an import only
//! touches the importing collection.
//!
//! The fake keeps objects as the API server does where the operator depends on it: lists and
//! watches by label selector with resourceVersions (a watch replays what changed after the
//! version it names, as the watch cache does), server-side apply merges and bumps
//! `metadata.generation` only on a spec change (never for pods, Services, Secrets,
//! EndpointSlices, which keep none), a merge patch carrying a stale resourceVersion is refused
//! with 409 Conflict, and the StatefulSet and Deployment controllers report every replica
//! ready. It does not model field ownership, admission, or garbage collection.

use axum::body::{Body, Bytes};
use axum::http::{Method, Request, StatusCode};
use axum::response::Response;
use futures::future::BoxFuture;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::{Recorder, Reporter};
use quiver_operator::controller::{Context, cache};
use quiver_operator::metrics::Metrics;
use quiver_operator::phase::WriterState;
use quiver_operator::probes::{Drainer, ProbeError, WriterProbe};
use quiver_operator::resources::Defaults;
use quiver_operator::run::{Shutdown, controllers};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const NS: &str = "search";
const COLLECTIONS: usize = 200;
const ALIASES: usize = 20;

/// An object's place: `<group/version>/<plural>`, namespace, name.
type Key = (String, String, String);

#[derive(Debug, Clone)]
struct Logged {
    method: Method,
    resource: String,
    name: Option<String>,
    watch: bool,
}

struct Change {
    rv: u64,
    resource: String,
    type_: &'static str,
    object: Value,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<Key, Value>,
    rv: u64,
    log: Vec<Change>,
    requests: Vec<Logged>,
    uids: u64,
}

#[derive(Clone)]
struct Cluster {
    state: Arc<Mutex<State>>,
    changed: Arc<tokio::sync::watch::Sender<u64>>,
}

/// A request path: the resource, its namespace, the object's name and a subresource.
struct Route {
    resource: String,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn route(path: &str) -> Option<Route> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group_version, rest) = match parts.as_slice() {
        ["api", version, rest @ ..] => (version.to_string(), rest),
        ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        rest => (None, rest),
    };
    let (plural, name, subresource) = match rest {
        [plural] => (plural, None, None),
        [plural, name] => (plural, Some(name.to_string()), None),
        [plural, name, sub] => (plural, Some(name.to_string()), Some(sub.to_string())),
        _ => return None,
    };
    Some(Route { resource: format!("{group_version}/{plural}"), namespace, name, subresource })
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

fn query(uri: &axum::http::Uri) -> BTreeMap<String, String> {
    uri.query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

/// Whether `object`'s labels satisfy `selector` (`k=v`, `k!=v`, `k` terms, comma-separated:
/// the forms the operator sends).
fn selects(selector: &str, object: &Value) -> bool {
    let labels = &object["metadata"]["labels"];
    selector.split(',').filter(|t| !t.is_empty()).all(|term| {
        if let Some((k, v)) = term.split_once("!=") {
            labels[k].as_str() != Some(v)
        } else if let Some((k, v)) = term.split_once('=') {
            labels[k].as_str() == Some(v)
        } else {
            assert!(!term.contains(' '), "selector term {term:?} is not one the fake knows");
            !labels[term].is_null()
        }
    })
}

/// Kinds whose API server strategy keeps no `metadata.generation`.
fn keeps_generation(resource: &str) -> bool {
    !matches!(resource, "v1/pods" | "v1/services" | "v1/secrets" | "discovery.k8s.io/v1/endpointslices")
}

/// Server-side apply as this fake models it: objects merge key by key, everything else is
/// replaced.
fn merge_apply(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(target), Some(patch)) => {
            for (key, value) in patch {
                merge_apply(target.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
        _ => *target = patch.clone(),
    }
}

/// A JSON merge patch (RFC 7386): `null` removes.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(patch) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let target = target.as_object_mut().unwrap();
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

fn respond(code: StatusCode, body: &Value) -> Response {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

/// A failed `Status` as the API server words it (apimachinery `errors.NewNotFound`, `NewConflict`,
/// `NewAlreadyExists`).
fn failure(code: StatusCode, reason: &str, message: String) -> Response {
    respond(code, &crate::common::status(code.as_u16(), reason, &message))
}

impl Cluster {
    fn new() -> Cluster {
        Cluster { state: Arc::default(), changed: Arc::new(tokio::sync::watch::channel(0).0) }
    }

    async fn listen(&self) -> u16 {
        let cluster = self.clone();
        let app = axum::Router::new().fallback(move |request: Request<Body>| {
            let cluster = cluster.clone();
            async move { cluster.answer(request).await }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await });
        port
    }

    /// Stores `object` under `resource` (a create or an update), as one change.
    fn put(&self, state: &mut State, resource: &str, mut object: Value, type_: &'static str) -> Value {
        state.rv += 1;
        if object["metadata"]["uid"].is_null() {
            state.uids += 1;
            object["metadata"]["uid"] = json!(format!("00000000-0000-4000-8000-{:012}", state.uids));
            object["metadata"]["creationTimestamp"] = json!("2025-11-25T12:00:00Z");
        }
        object["metadata"]["resourceVersion"] = json!(state.rv.to_string());
        let ns = object["metadata"]["namespace"].as_str().unwrap_or_default().to_string();
        let name = object["metadata"]["name"].as_str().unwrap().to_string();
        state.objects.insert((resource.to_string(), ns, name), object.clone());
        state.log.push(Change { rv: state.rv, resource: resource.into(), type_, object: object.clone() });
        self.changed.send_replace(state.rv);
        object
    }

    /// What the StatefulSet and Deployment controllers would report: every replica ready.
    fn controllers_report(resource: &str, object: &mut Value) {
        let replicas = object["spec"]["replicas"].as_i64().unwrap_or(2);
        let generation = object["metadata"]["generation"].clone();
        match resource {
            "apps/v1/statefulsets" | "apps/v1/deployments" => {
                object["status"] = json!({"replicas": replicas, "readyReplicas": replicas,
                    "availableReplicas": replicas, "observedGeneration": generation});
            }
            _ => {}
        }
    }

    /// Seeds an object as if it had been there before the operator started.
    fn seed(&self, resource: &str, object: Value) {
        let mut state = self.state.lock().unwrap();
        let mut object = object;
        if keeps_generation(resource) {
            object["metadata"]["generation"] = json!(1);
        }
        self.put(&mut state, resource, object, "ADDED");
    }

    async fn answer(&self, request: Request<Body>) -> Response {
        let method = request.method().clone();
        let uri = request.uri().clone();
        let content_type =
            request.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        let bytes = axum::body::to_bytes(request.into_body(), usize::MAX).await.unwrap();
        let body: Value = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
        let Some(route) = route(uri.path()) else {
            return failure(StatusCode::NOT_FOUND, "NotFound", format!("the server could not find {}", uri.path()));
        };
        let params = query(&uri);
        let watch = params.get("watch").is_some_and(|w| w == "true" || w == "1");
        self.state.lock().unwrap().requests.push(Logged {
            method: method.clone(),
            resource: route.resource.clone(),
            // A create names its object in the body.
            name: route.name.clone().or_else(|| body["metadata"]["name"].as_str().map(String::from)),
            watch,
        });
        let selector = params.get("labelSelector").cloned().unwrap_or_default();
        match (&method, &route.name) {
            (&Method::GET, None) if watch => self.watch(route, selector, &params),
            (&Method::GET, None) => self.list(&route, &selector),
            (&Method::GET, Some(name)) => self.get(&route, name),
            (&Method::POST, None) => self.create(&route, body),
            (&Method::PATCH, Some(name)) if content_type.starts_with("application/apply-patch") => {
                self.apply(&route, name, body)
            }
            (&Method::PATCH, Some(name)) => self.merge(&route, name, body),
            (&Method::DELETE, Some(name)) => self.delete(&route, name),
            (&Method::DELETE, None) => self.delete_collection(&route, &selector),
            _ => failure(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", format!("{method} {}", uri.path())),
        }
    }

    fn key(route: &Route, name: &str) -> Key {
        (route.resource.clone(), route.namespace.clone().unwrap_or_default(), name.to_string())
    }

    fn not_found(route: &Route, name: &str) -> Response {
        let plural = route.resource.rsplit('/').next().unwrap();
        failure(StatusCode::NOT_FOUND, "NotFound", format!("{plural} \"{name}\" not found"))
    }

    fn list(&self, route: &Route, selector: &str) -> Response {
        let state = self.state.lock().unwrap();
        if route.resource == "v1/events" {
            return respond(
                StatusCode::OK,
                &json!({"kind": "EventList", "apiVersion": "v1",
                "metadata": {"resourceVersion": state.rv.to_string()}, "items": []}),
            );
        }
        let items: Vec<&Value> = state
            .objects
            .iter()
            .filter(|((resource, ns, _), object)| {
                *resource == route.resource
                    && route.namespace.as_ref().is_none_or(|n| n == ns)
                    && selects(selector, object)
            })
            .map(|(_, object)| object)
            .collect();
        respond(
            StatusCode::OK,
            &json!({"apiVersion": "v1", "kind": "List",
            "metadata": {"resourceVersion": state.rv.to_string()}, "items": items}),
        )
    }

    /// The changes after `resourceVersion` that match, as watch events, then every new one
    /// until `timeoutSeconds`.
    fn watch(&self, route: Route, selector: String, params: &BTreeMap<String, String>) -> Response {
        let since: u64 = params.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
        let timeout = params.get("timeoutSeconds").and_then(|v| v.parse().ok()).unwrap_or(290);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
        let cluster = self.clone();
        let changed = self.changed.subscribe();
        let stream = futures::stream::unfold((since, changed), move |(mut since, mut changed)| {
            let (cluster, route, selector) = (cluster.clone(), route.resource.clone(), selector.clone());
            async move {
                loop {
                    let chunk = {
                        let state = cluster.state.lock().unwrap();
                        let mut chunk = Vec::new();
                        let from = since;
                        for change in state.log.iter().filter(|c| c.rv > from) {
                            since = change.rv;
                            if change.resource == route && selects(&selector, &change.object) {
                                let event = json!({"type": change.type_, "object": change.object});
                                chunk.extend(serde_json::to_vec(&event).unwrap());
                                chunk.push(b'\n');
                            }
                        }
                        chunk
                    };
                    if !chunk.is_empty() {
                        return Some((Ok::<_, std::convert::Infallible>(Bytes::from(chunk)), (since, changed)));
                    }
                    match tokio::time::timeout_at(deadline, changed.changed()).await {
                        Ok(Ok(())) => continue,
                        _ => return None,
                    }
                }
            }
        });
        // A namespaced watch filters by namespace too; the operator watches all namespaces.
        assert!(route.namespace.is_none(), "the fake watches cluster-wide only");
        Response::builder().header("content-type", "application/json").body(Body::from_stream(stream)).unwrap()
    }

    fn get(&self, route: &Route, name: &str) -> Response {
        let state = self.state.lock().unwrap();
        match state.objects.get(&Self::key(route, name)) {
            Some(object) => respond(StatusCode::OK, object),
            None => Self::not_found(route, name),
        }
    }

    fn create(&self, route: &Route, mut body: Value) -> Response {
        if route.resource == "events.k8s.io/v1/events" {
            return respond(StatusCode::CREATED, &body);
        }
        let mut state = self.state.lock().unwrap();
        let name = body["metadata"]["name"].as_str().unwrap().to_string();
        if state.objects.contains_key(&Self::key(route, &name)) {
            let plural = route.resource.rsplit('/').next().unwrap();
            return failure(StatusCode::CONFLICT, "AlreadyExists", format!("{plural} \"{name}\" already exists"));
        }
        body["metadata"]["namespace"] = json!(route.namespace.clone().unwrap_or_default());
        if keeps_generation(&route.resource) {
            body["metadata"]["generation"] = json!(1);
        }
        let stored = self.put(&mut state, &route.resource, body, "ADDED");
        respond(StatusCode::CREATED, &stored)
    }

    fn apply(&self, route: &Route, name: &str, body: Value) -> Response {
        let mut state = self.state.lock().unwrap();
        let key = Self::key(route, name);
        let existing = state.objects.get(&key).cloned();
        let status_only = route.subresource.as_deref() == Some("status");
        let (mut object, type_) = match existing.clone() {
            Some(object) => (object, "MODIFIED"),
            None if status_only => return Self::not_found(route, name),
            None => {
                let mut object = json!({"metadata": {"namespace": key.1}});
                if keeps_generation(&route.resource) {
                    object["metadata"]["generation"] = json!(1);
                }
                (object, "ADDED")
            }
        };
        if status_only {
            object["status"] = body["status"].clone();
        } else {
            let spec_before = object["spec"].clone();
            merge_apply(&mut object, &body);
            if existing.is_some() && keeps_generation(&route.resource) && object["spec"] != spec_before {
                let generation = object["metadata"]["generation"].as_i64().unwrap_or(1);
                object["metadata"]["generation"] = json!(generation + 1);
            }
            Self::controllers_report(&route.resource, &mut object);
        }
        // A no-op apply is not written (the resourceVersion stays).
        if existing.as_ref() == Some(&object) {
            return respond(StatusCode::OK, &object);
        }
        let stored = self.put(&mut state, &route.resource, object, type_);
        respond(if type_ == "ADDED" { StatusCode::CREATED } else { StatusCode::OK }, &stored)
    }

    fn merge(&self, route: &Route, name: &str, mut body: Value) -> Response {
        let mut state = self.state.lock().unwrap();
        let Some(mut object) = state.objects.get(&Self::key(route, name)).cloned() else {
            return Self::not_found(route, name);
        };
        let rv = body["metadata"].as_object_mut().and_then(|m| m.remove("resourceVersion"));
        if let Some(rv) = rv
            && object["metadata"]["resourceVersion"] != rv
        {
            let plural = route.resource.rsplit('/').next().unwrap();
            let group = route.resource.split('/').next().unwrap();
            return failure(
                StatusCode::CONFLICT,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {plural}.{group} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
                ),
            );
        }
        let before = object.clone();
        merge_patch(&mut object, &body);
        if object == before {
            return respond(StatusCode::OK, &object);
        }
        let stored = self.put(&mut state, &route.resource, object, "MODIFIED");
        respond(StatusCode::OK, &stored)
    }

    fn delete(&self, route: &Route, name: &str) -> Response {
        let mut state = self.state.lock().unwrap();
        let key = Self::key(route, name);
        let Some(mut object) = state.objects.get(&key).cloned() else {
            return Self::not_found(route, name);
        };
        if object["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty()) {
            object["metadata"]["deletionTimestamp"] = json!("2025-11-25T12:00:00Z");
            let stored = self.put(&mut state, &route.resource, object, "MODIFIED");
            return respond(StatusCode::OK, &stored);
        }
        state.objects.remove(&key);
        state.rv += 1;
        let rv = state.rv;
        state.log.push(Change { rv, resource: route.resource.clone(), type_: "DELETED", object: object.clone() });
        self.changed.send_replace(rv);
        respond(StatusCode::OK, &object)
    }

    fn delete_collection(&self, route: &Route, selector: &str) -> Response {
        let names: Vec<String> = {
            let state = self.state.lock().unwrap();
            state
                .objects
                .iter()
                .filter(|((resource, ns, _), o)| {
                    *resource == route.resource && Some(ns) == route.namespace.as_ref() && selects(selector, o)
                })
                .map(|((_, _, name), _)| name.clone())
                .collect()
        };
        for name in &names {
            self.delete(route, name);
        }
        respond(StatusCode::OK, &json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}))
    }

    /// The stored object `name` of `resource` in the test namespace.
    fn object(&self, resource: &str, name: &str) -> Value {
        let key = (resource.to_string(), NS.to_string(), name.to_string());
        self.state.lock().unwrap().objects.get(&key).cloned().unwrap_or(Value::Null)
    }

    /// Deletes an object as a user would (`kubectl delete`), through the API.
    fn remove(&self, resource: &str, name: &str) {
        let route =
            Route { resource: resource.into(), namespace: Some(NS.into()), name: Some(name.into()), subresource: None };
        self.delete(&route, name);
    }

    /// Takes the requests logged so far.
    fn take_requests(&self) -> Vec<Logged> {
        std::mem::take(&mut self.state.lock().unwrap().requests)
    }

    /// Until no request came for `quiet` (at most `limit`).
    async fn settle(&self, quiet: Duration, limit: Duration) {
        let start = Instant::now();
        let mut seen = 0;
        let mut since = Instant::now();
        while start.elapsed() < limit {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = self.state.lock().unwrap().requests.len();
            if now != seen {
                (seen, since) = (now, Instant::now());
            } else if since.elapsed() >= quiet {
                return;
            }
        }
        panic!("the operator did not settle within {limit:?}");
    }
}

/// The writers as their gRPC API would answer: every collection sealed, but `importing`, whose
/// row count grows with time.
struct Writers {
    importing: Mutex<Option<(String, Instant)>>,
}

impl WriterProbe for Writers {
    fn progress<'a>(
        &'a self,
        _endpoint: &'a str,
        collection: &'a str,
        _token: Option<&'a str>,
    ) -> BoxFuture<'a, Result<WriterState, ProbeError>> {
        let state = match &*self.importing.lock().unwrap() {
            Some((name, since)) if name == collection => {
                WriterState::Importing { rows: since.elapsed().as_millis() as u64 * 100 }
            }
            _ => WriterState::Sealed {
                count: 50_000,
                setting: "signscan quality=100".into(),
                stored: None,
                sha256: None,
            },
        };
        Box::pin(async move { Ok(state) })
    }
}

struct Replicas;

impl Drainer for Replicas {
    fn drain<'a>(&'a self, _endpoint: &'a str, _token: Option<&'a str>) -> BoxFuture<'a, Result<(), ProbeError>> {
        Box::pin(async { Ok(()) })
    }
}

fn owned_labels(collection: &str, role: &str) -> Value {
    json!({"app.kubernetes.io/name": "quiver", "app.kubernetes.io/managed-by": "quiver-operator",
        "quiver.dev/collection": collection, "quiver.dev/role": role})
}

fn pod(name: &str, labels: Value, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS, "labels": labels},
        "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]}})
}

fn name(i: usize) -> String {
    format!("c-{i:03}")
}

/// A collection as a past reconcile left it: Ready, verified, its pods and Jobs there.
fn seed_collection(cluster: &Cluster, i: usize, status: bool) {
    let c = name(i);
    let mut vc: Value = serde_yaml::from_str(include_str!("../../../examples/vectorcollection.yaml")).unwrap();
    vc["metadata"] = json!({"name": c, "namespace": NS, "finalizers": ["quiver.dev/alias-protection"]});
    vc["spec"]["replicas"] = json!({"count": 2});
    if i < ALIASES {
        vc["metadata"]["labels"] = json!({format!("served-by.quiver.dev/a-{i:02}"): "current"});
    }
    if status {
        let at = "2025-11-25T11:00:00Z";
        let condition = |type_: &str, status: &str, reason: &str| {
            json!({"type": type_, "status": status, "reason": reason, "message": "", "observedGeneration": 1,
                "lastTransitionTime": at})
        };
        vc["status"] = json!({"phase": "Ready", "observedGeneration": 1, "vectorCount": 50000, "readyReplicas": 2,
            "searchSetting": "signscan quality=100",
            "verification": [{"name": "recall", "measured": 0.97, "comparison": ">=", "threshold": 0.95, "passed": true}],
            "conditions": [condition("Ready", "True", "Ready"), condition("Verified", "True", "GatesPassed"),
                condition("Progressing", "False", "Ready"), condition("Degraded", "False", "AsExpected"),
                condition("WriterAvailable", "True", "Sealed")]});
    }
    cluster.seed("quiver.dev/v1alpha1/vectorcollections", vc);
    let ip = |n: usize| format!("10.{}.{}.{n}", i / 250, i % 250);
    cluster.seed("v1/pods", pod(&format!("{c}-writer-0"), owned_labels(&c, "writer"), &ip(1)));
    if !status {
        return;
    }
    for (n, suffix) in ["a", "b"].iter().enumerate() {
        cluster.seed("v1/pods", pod(&format!("{c}-replicas-{suffix}"), owned_labels(&c, "replica"), &ip(n + 2)));
    }
    let uid = cluster.object("quiver.dev/v1alpha1/vectorcollections", &c)["metadata"]["uid"].clone();
    let token = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": format!("{c}-token"), "namespace": NS,
        "labels": owned_labels(&c, "writer"), "ownerReferences": [{"apiVersion": "quiver.dev/v1alpha1",
            "kind": "VectorCollection", "name": c, "uid": uid, "controller": true}]}, "data": {"token": "dG9rZW4="}});
    cluster.seed("v1/secrets", token);
    for role in ["warmup", "verify"] {
        let job = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": format!("{c}-{role}-g1"),
            "namespace": NS, "labels": owned_labels(&c, role)},
            "spec": {"template": {}}, "status": {"conditions": [{"type": "Complete", "status": "True"}]}});
        cluster.seed("batch/v1/jobs", job);
    }
}

/// Alias `i` serving collection `i`, and its Service's EndpointSlice listing that collection's
/// two ready replicas.
fn seed_alias(cluster: &Cluster, i: usize) {
    let (a, c) = (format!("a-{i:02}"), name(i));
    let at = "2025-11-25T11:00:00Z";
    cluster.seed(
        "quiver.dev/v1alpha1/collectionaliases",
        json!({"apiVersion": "quiver.dev/v1alpha1", "kind": "CollectionAlias",
            "metadata": {"name": a, "namespace": NS}, "spec": {"collection": c},
            "status": {"current": c, "flippedAt": at, "history": [{"collection": c, "at": at}]}}),
    );
    let endpoints: Vec<Value> = ["a", "b"]
        .iter()
        .map(|s| {
            json!({"addresses": ["10.9.9.9"], "conditions": {"ready": true},
            "targetRef": {"kind": "Pod", "name": format!("{c}-replicas-{s}"), "namespace": NS}})
        })
        .collect();
    cluster.seed(
        "discovery.k8s.io/v1/endpointslices",
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{a}-x1"), "namespace": NS, "labels": {"kubernetes.io/service-name": a,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io", "quiver.dev/alias": a}},
            "addressType": "IPv4", "endpoints": endpoints}),
    );
}

/// Requests by `METHOD resource [watch]`, most first.
fn tally(requests: &[Logged]) -> Vec<(String, usize)> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for r in requests {
        let verb = match (&r.method, &r.name, r.watch) {
            (&Method::GET, None, true) => "WATCH",
            (&Method::GET, None, false) => "LIST",
            (m, _, _) => m.as_str(),
        };
        *counts.entry(format!("{verb} {}", r.resource)).or_default() += 1;
    }
    let mut counts: Vec<_> = counts.into_iter().collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    counts
}

/// The sum of one of the operator's counters over its labels.
fn counter_total(metrics: &Metrics, name: &str) -> usize {
    let prefix = format!("{name}{{");
    metrics
        .render()
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<usize>().ok())
        .sum()
}

fn reconciles(metrics: &Metrics) -> usize {
    counter_total(metrics, "quiver_operator_reconciles_total")
}

fn operator_errors(metrics: &Metrics) -> usize {
    counter_total(metrics, "quiver_operator_reconcile_errors_total")
}

/// Requests that are not the long-lived watches (and their re-establishment).
fn calls(requests: &[Logged]) -> Vec<&Logged> {
    requests.iter().filter(|r| !r.watch).collect()
}

/// The real controllers against `cluster`.
struct Operator {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    metrics: Arc<Metrics>,
    probe: Arc<Writers>,
}

impl Operator {
    async fn start(cluster: &Cluster, resync: Duration) -> Operator {
        let port = cluster.listen().await;
        let config = kube::Config::new(format!("http://127.0.0.1:{port}").parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        let (caches, writers) = cache::caches();
        let metrics = Arc::new(Metrics::default());
        let probe = Arc::new(Writers { importing: Mutex::new(None) });
        let recorder = Recorder::new(client.clone(), Reporter { controller: "quiver-operator".into(), instance: None });
        let defaults = Defaults {
            image: "quiver:test".into(),
            network_policies: true,
            operator_namespace: "quiver-system".into(),
            scale_down_unserved: true,
            allow_ambient_credentials: false,
        };
        let mut ctx = Context::new(
            client,
            caches,
            recorder,
            probe.clone(),
            Arc::new(Replicas),
            defaults,
            metrics.clone(),
            Timestamp::now,
        );
        ctx.resync = resync;
        let (stop, shutdown) = Shutdown::manual();
        let task = tokio::spawn(controllers(Arc::new(ctx), writers, None, shutdown));
        Operator { stop, task, metrics, probe }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_requests_at_200_collections_and_20_aliases_at_steady_state_and_during_one_import() {
    let cluster = Cluster::new();
    for i in 0..COLLECTIONS {
        seed_collection(&cluster, i, true);
    }
    for i in 0..ALIASES {
        seed_alias(&cluster, i);
    }
    // Every settled object looked at every 3 s instead of 5 minutes: a steady state of 100
    // resync periods in a 12 s window would take 25 minutes.
    let resync = Duration::from_secs(3);
    let Operator { stop, task: operator, metrics, probe } = Operator::start(&cluster, resync).await;

    // Startup: every watch lists once, each collection and alias is reconciled, and what this
    // process never applied is applied once.
    let started = Instant::now();
    cluster.settle(Duration::from_secs(3), Duration::from_secs(240)).await;
    let startup = cluster.take_requests();
    let startup_secs = started.elapsed().as_secs_f64();

    // Steady state: four resyncs of every collection and alias.
    let before = reconciles(&metrics);
    let window = Duration::from_secs(12);
    tokio::time::sleep(window).await;
    let steady = cluster.take_requests();
    let steady_reconciles = reconciles(&metrics) - before;

    // One import: a new collection whose writer imports for 30 s (progress looked at every
    // 10 s, written at most every 5 s), while the 200 others stay as they are.
    seed_collection(&cluster, COLLECTIONS, false);
    *probe.importing.lock().unwrap() = Some((name(COLLECTIONS), Instant::now()));
    let import_window = Duration::from_secs(30);
    tokio::time::sleep(import_window).await;
    let import = cluster.take_requests();
    let errors = operator_errors(&metrics);
    let _ = stop.send(true);
    // Stopping waits only for the reconciles in flight (none may hang on the caches).
    tokio::time::timeout(Duration::from_secs(10), operator).await.expect("the controllers stop").unwrap();

    let per_minute = |n: usize, window: Duration| n as f64 * 60.0 / window.as_secs_f64();
    let report = json!({
        "objects": {"collections": COLLECTIONS, "aliases": ALIASES},
        "startup": {"seconds": startup_secs, "requests": startup.len(), "calls": calls(&startup).len(),
            "by_kind": tally(&startup)},
        "steady_state": {"window_seconds": window.as_secs(), "resync_seconds": resync.as_secs(),
            "reconciles": steady_reconciles, "requests": steady.len(), "calls": calls(&steady).len(),
            "by_kind": tally(&steady)},
        "one_import": {"window_seconds": import_window.as_secs(), "requests": import.len(),
            "calls_per_minute": per_minute(calls(&import).len(), import_window), "by_kind": tally(&import)},
    });
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    if let Some(path) = std::env::var_os("QUIVER_API_LOAD_REPORT") {
        std::fs::write(path, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    }

    assert_eq!(errors, 0, "every reconcile succeeded (a failing one sends nothing either)");
    for i in 0..ALIASES {
        let alias = cluster.object("quiver.dev/v1alpha1/collectionaliases", &format!("a-{i:02}"));
        assert_eq!(alias["status"]["current"], name(i), "{alias}");
        assert_eq!(alias["status"]["conditions"][0]["status"], "True", "Ready: {alias}");
    }
    for i in 0..COLLECTIONS {
        let vc = cluster.object("quiver.dev/v1alpha1/vectorcollections", &name(i));
        assert_eq!(vc["status"]["phase"], "Ready", "{vc}");
    }
    assert!(steady_reconciles >= (COLLECTIONS + ALIASES) * 2, "every object was looked at again: {steady_reconciles}");
    let steady_calls = calls(&steady);
    assert!(steady_calls.is_empty(), "a steady state sends nothing but watches: {:?}", tally(&steady));
    let importing = name(COLLECTIONS);
    let stray: Vec<&Logged> = calls(&import)
        .into_iter()
        .filter(|r| r.resource != "events.k8s.io/v1/events")
        .filter(|r| !r.name.as_deref().is_some_and(|n| n.starts_with(&importing)))
        .collect();
    assert!(stray.is_empty(), "an import touches only its own collection's objects: {stray:?}");
}

/// An owned object deleted from under the operator (`kubectl delete svc`) is applied again at
/// once: its deletion triggers the owner's reconcile (the resync here is five minutes, so only
/// the watch can explain the re-creation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_owned_object_is_made_again_without_waiting_for_a_resync() {
    let cluster = Cluster::new();
    for i in 0..3 {
        seed_collection(&cluster, i, true);
    }
    seed_alias(&cluster, 0);
    let operator = Operator::start(&cluster, quiver_operator::controller::RESYNC).await;
    cluster.settle(Duration::from_secs(2), Duration::from_secs(60)).await;
    assert!(!cluster.object("v1/services", "a-00").is_null(), "the alias Service exists");
    cluster.take_requests();
    cluster.remove("v1/services", "a-00");
    cluster.remove("v1/services", "c-001-replicas");
    let deadline = Instant::now() + Duration::from_secs(20);
    while cluster.object("v1/services", "a-00").is_null() || cluster.object("v1/services", "c-001-replicas").is_null() {
        assert!(Instant::now() < deadline, "not made again: {:?}", tally(&cluster.take_requests()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let service = cluster.object("v1/services", "a-00");
    assert_eq!(service["spec"]["selector"]["quiver.dev/collection"], name(0), "{service}");
    let _ = operator.stop.send(true);
    tokio::time::timeout(Duration::from_secs(10), operator.task).await.expect("the controllers stop").unwrap();
}
