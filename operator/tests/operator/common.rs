//! A scripted API server for reconcile tests (tower-test + `kube::Client::new`, as kube-rs's
//! controller-rs does): each test lists the exact requests it expects, in order, and answers
//! them; a request that differs, or one too many, fails the test. What the controllers read
//! from their caches a test puts there (`Harness::cache`); an applied object reaches its cache
//! as the watch would bring it.

use futures::future::BoxFuture;
use http::{Request, Response};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::client::Body;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::watcher::Event;
use quiver_operator::controller::Context;
use quiver_operator::controller::cache::{APPLIED_HASH, Writers};
use quiver_operator::metrics::Metrics;
use quiver_operator::phase::WriterState;
use quiver_operator::probes::{Drainer, ProbeError, WriterProbe};
use quiver_operator::resources::Defaults;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// One request as the operator sent it (its method is checked on arrival).
#[derive(Debug)]
pub struct Sent {
    /// Path and query, e.g. `/api/v1/namespaces/search/pods/x-writer-0`.
    pub uri: String,
    pub body: Value,
}

pub struct ApiServer {
    handle: Handle,
    caches: Arc<Mutex<Writers>>,
}

impl ApiServer {
    /// Takes the next request, checks its method and path (query excluded), answers it.
    pub async fn expect(&mut self, method: &str, path: &str, status: u16, answer: Value) -> Sent {
        self.expect_with(method, path, status, |_| answer).await
    }

    /// Like `expect`, with the answer computed from the request body.
    pub async fn expect_with(
        &mut self,
        method: &str,
        path: &str,
        status: u16,
        answer: impl FnOnce(&Value) -> Value,
    ) -> Sent {
        let next = tokio::time::timeout(Duration::from_secs(5), self.handle.next_request()).await;
        let (request, send) = next
            .unwrap_or_else(|_| panic!("no request came; expected {method} {path}"))
            .unwrap_or_else(|| panic!("the client went away; expected {method} {path}"));
        let uri = request.uri().to_string();
        let sent_method = request.method().to_string();
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
        assert_eq!(
            (sent_method.as_str(), uri.split('?').next().unwrap()),
            (method, path),
            "unexpected request, body: {body:#}"
        );
        let answer = answer(&body);
        send.send_response(
            Response::builder().status(status).body(Body::from(serde_json::to_vec(&answer).unwrap())).unwrap(),
        );
        Sent { uri, body }
    }

    /// A server-side apply PATCH answered with the applied object plus `status` (the object
    /// then in its cache, as its watch would bring it). The returned body is the rendered
    /// object: its `quiver.dev/applied-hash` annotation is checked and taken out.
    pub async fn apply(&mut self, path: &str, status: Value) -> Sent {
        let next = tokio::time::timeout(Duration::from_secs(5), self.handle.next_request()).await;
        let (request, send) = next.expect("no request came; expected an apply").expect("client gone");
        let uri = request.uri().to_string();
        assert_eq!((request.method().as_str(), uri.split('?').next().unwrap()), ("PATCH", path));
        assert!(uri.contains("fieldManager=quiver-operator") && uri.contains("force=true"), "{uri}");
        assert_eq!(request.headers()["content-type"], "application/apply-patch+yaml");
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        let mut answer = body.clone();
        if !status.is_null() {
            answer["status"] = status;
        }
        answer["metadata"]["uid"] = json!("00000000-0000-0000-0000-00000000beef");
        send.send_response(Response::builder().body(Body::from(serde_json::to_vec(&answer).unwrap())).unwrap());
        cache_object(&mut self.caches.lock().unwrap(), answer);
        let mut body = body;
        let annotations = body["metadata"]["annotations"].as_object_mut().expect("annotations");
        let hash = annotations.remove(APPLIED_HASH).expect("the applied-hash annotation");
        assert!(hash.as_str().is_some_and(|h| h.len() == 32 && h.chars().all(|c| c.is_ascii_hexdigit())), "{hash}");
        if annotations.is_empty() {
            body["metadata"].as_object_mut().unwrap().remove("annotations");
        }
        Sent { uri, body }
    }

    /// Puts objects in their caches from within a script: what a watch brings while the
    /// reconcile waits for an answer (the test runtime runs one task at a time, so the
    /// reconcile reads them after the request it waits on is answered).
    pub fn cache(&self, objects: impl IntoIterator<Item = Value>) {
        let mut writers = self.caches.lock().unwrap();
        for object in objects {
            cache_object(&mut writers, object);
        }
    }

    /// The items of a list (as the API server would answer a LIST) put in their caches.
    pub fn cache_list(&self, list: Value) {
        self.cache(list["items"].as_array().expect("a list").iter().cloned());
    }

    /// An Event POST; returns its reason and note.
    pub async fn event(&mut self, ns: &str) -> (String, String) {
        let path = format!("/apis/events.k8s.io/v1/namespaces/{ns}/events");
        // Answered with what was sent, as the API server does.
        let sent = self.expect_with("POST", &path, 201, |body| body.clone()).await;
        let reason = sent.body["reason"].as_str().unwrap_or_default().to_string();
        let note = sent.body["note"].as_str().unwrap_or_default().to_string();
        (reason, note)
    }

    /// The same Event again: kube's recorder (as client-go's) PATCHes the Event it made, its
    /// series counting the repeat; returns the patch.
    pub async fn event_repeated(&mut self, ns: &str) -> Value {
        let prefix = format!("/apis/events.k8s.io/v1/namespaces/{ns}/events/");
        let next = tokio::time::timeout(Duration::from_secs(5), self.handle.next_request()).await;
        let (request, send) = next.expect("no request came; expected an Event patch").expect("client gone");
        let uri = request.uri().to_string();
        assert_eq!(request.method().as_str(), "PATCH", "{uri}");
        assert!(uri.starts_with(&prefix), "{uri}");
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        send.send_response(Response::builder().body(Body::from(serde_json::to_vec(&body).unwrap())).unwrap());
        body
    }
}

/// The API server's error body: a failed `Status` with its HTTP code and reason.
pub fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": reason, "code": code, "message": message})
}

pub fn not_found() -> Value {
    status(404, "NotFound", "not found")
}

pub fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"kind": format!("{kind}List"), "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": items})
}

/// The writer's answer, settable per test; records where it was asked.
#[derive(Default)]
pub struct FakeWriter {
    pub state: Mutex<Option<WriterState>>,
    pub asked: Mutex<Vec<String>>,
    pub tokens: Mutex<Vec<Option<String>>>,
}

impl WriterProbe for FakeWriter {
    fn progress<'a>(
        &'a self,
        endpoint: &'a str,
        _collection: &'a str,
        token: Option<&'a str>,
    ) -> BoxFuture<'a, Result<WriterState, ProbeError>> {
        self.asked.lock().unwrap().push(endpoint.to_string());
        self.tokens.lock().unwrap().push(token.map(String::from));
        let state = self.state.lock().unwrap().clone();
        Box::pin(
            async move { state.ok_or(ProbeError::Connect { endpoint: endpoint.into(), message: "refused".into() }) },
        )
    }
}

#[derive(Default)]
pub struct FakeDrainer {
    pub drained: Mutex<Vec<String>>,
    pub tokens: Mutex<Vec<Option<String>>>,
    /// Replicas that do not answer: their drain fails as a refused connection would.
    pub unreachable: Mutex<Vec<String>>,
}

impl Drainer for FakeDrainer {
    fn drain<'a>(&'a self, endpoint: &'a str, token: Option<&'a str>) -> BoxFuture<'a, Result<(), ProbeError>> {
        self.drained.lock().unwrap().push(endpoint.to_string());
        self.tokens.lock().unwrap().push(token.map(String::from));
        let refused = self.unreachable.lock().unwrap().iter().any(|e| e == endpoint);
        Box::pin(async move {
            match refused {
                true => Err(ProbeError::Connect { endpoint: endpoint.into(), message: "connection refused".into() }),
                false => Ok(()),
            }
        })
    }
}

pub const NOW: i64 = 1_764_072_000; // 2025-11-25T12:00:00Z

pub fn now() -> Timestamp {
    Timestamp::from_second(NOW).unwrap()
}

/// Puts `object` in the cache of its kind (by its `kind`), in namespace `search` unless it
/// names one, as a watch event would.
pub fn cache_object(writers: &mut Writers, mut object: Value) {
    if object["metadata"]["namespace"].is_null() {
        object["metadata"]["namespace"] = json!("search");
    }
    fn put<K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + 'static>(
        writer: &mut quiver_operator::controller::cache::Feed<K>,
        object: Value,
    ) {
        writer.apply_watcher_event(&Event::Apply(serde_json::from_value(object).unwrap()));
    }
    match object["kind"].as_str().expect("a kind") {
        "VectorCollection" => put(&mut writers.collections, object),
        "CollectionAlias" => put(&mut writers.aliases, object),
        "StatefulSet" => put(&mut writers.stateful_sets, object),
        "Deployment" => put(&mut writers.deployments, object),
        "Service" => put(&mut writers.services, object),
        "Job" => put(&mut writers.jobs, object),
        "EndpointSlice" => put(&mut writers.slices, object),
        "Pod" => put(&mut writers.pods, object),
        "HorizontalPodAutoscaler" => put(&mut writers.autoscalers, object),
        "PodDisruptionBudget" => put(&mut writers.budgets, object),
        "NetworkPolicy" => put(&mut writers.network_policies, object),
        other => panic!("no cache for {other}"),
    }
}

pub struct Harness {
    pub ctx: Arc<Context>,
    caches: Arc<Mutex<Writers>>,
    pub server: ApiServer,
    pub writer: Arc<FakeWriter>,
    pub drainer: Arc<FakeDrainer>,
}

impl Harness {
    /// Puts objects in their caches (what a watch would have brought before the reconcile).
    pub fn cache(&self, objects: impl IntoIterator<Item = Value>) {
        let mut writers = self.caches.lock().unwrap();
        for object in objects {
            cache_object(&mut writers, object);
        }
    }

    /// A status update of a cached object (the watch brings it; the generation stays).
    pub fn restatus(&self, kind: &str, name: &str, status: Value) {
        let caches = &self.ctx.caches;
        let mut object = match kind {
            "StatefulSet" => serde_json::to_value(caches.stateful_sets.get("search", name).expect("cached").as_ref()),
            "Deployment" => serde_json::to_value(caches.deployments.get("search", name).expect("cached").as_ref()),
            other => panic!("restatus {other}: not needed by a test yet"),
        }
        .unwrap();
        object["kind"] = json!(kind);
        object["status"] = status;
        self.cache([object]);
    }

    /// Takes an object out of its cache (a watch's Delete event).
    pub fn uncache(&self, object: Value) {
        let mut object = object;
        if object["metadata"]["namespace"].is_null() {
            object["metadata"]["namespace"] = json!("search");
        }
        let mut writers = self.caches.lock().unwrap();
        match object["kind"].as_str().expect("a kind") {
            "Pod" => writers.pods.apply_watcher_event(&Event::Delete(serde_json::from_value(object).unwrap())),
            "HorizontalPodAutoscaler" => {
                writers.autoscalers.apply_watcher_event(&Event::Delete(serde_json::from_value(object).unwrap()))
            }
            "StatefulSet" => {
                writers.stateful_sets.apply_watcher_event(&Event::Delete(serde_json::from_value(object).unwrap()))
            }
            "Service" => writers.services.apply_watcher_event(&Event::Delete(serde_json::from_value(object).unwrap())),
            "NetworkPolicy" => {
                writers.network_policies.apply_watcher_event(&Event::Delete(serde_json::from_value(object).unwrap()))
            }
            "VectorCollection" => {
                writers.collections.apply_watcher_event(&Event::Delete(serde_json::from_value(object).unwrap()))
            }
            other => panic!("uncache {other}: not needed by a test yet"),
        }
    }
}

pub fn harness() -> Harness {
    harness_with(Defaults { image: "quiver:test".into(), ..Default::default() })
}

/// A harness whose operator was installed with `defaults`.
pub fn harness_with(defaults: Defaults) -> Harness {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let (caches, mut writers) = quiver_operator::controller::cache::caches();
    // Listed once (empty): the reconciles may read them.
    writers.mark_listed();
    futures::executor::block_on(caches.fill());
    let writers = Arc::new(Mutex::new(writers));
    let recorder = Recorder::new(client.clone(), Reporter { controller: "quiver-operator".into(), instance: None });
    let writer = Arc::new(FakeWriter::default());
    let drainer = Arc::new(FakeDrainer::default());
    let ctx = Arc::new(Context::new(
        client,
        caches,
        recorder,
        writer.clone(),
        drainer.clone(),
        defaults,
        Arc::new(Metrics::default()),
        now,
    ));
    Harness { ctx, caches: writers.clone(), server: ApiServer { handle, caches: writers }, writer, drainer }
}

/// Runs `reconcile` while `script` plays the API server; fails if the reconcile does not end
/// once the script is done (it made a request the script did not expect).
pub async fn run<T, F, S>(reconcile: F, script: S) -> T
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
    S: std::future::Future<Output = ()>,
{
    let task = tokio::spawn(reconcile);
    script.await;
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the reconcile made a request the scenario did not expect")
        .expect("the reconcile panicked")
}
