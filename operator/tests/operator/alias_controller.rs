//! CollectionAlias reconciles against a scripted API server: the Service flips only to a
//! Ready and verified collection with its replicas ready, the collections it serves are marked
//! for the admission policy, the previous target is kept and drained only once the Service's
//! EndpointSlices moved, rollback is immediate, and status says why an alias waits.

use crate::common::{self, harness, list, not_found, run};
use kube::runtime::controller::Action;
use quiver_operator::controller::alias::reconcile;
use quiver_operator::crd::CollectionAlias;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

const NS: &str = "search";
const UID: &str = "a11a5000-0000-4000-8000-000000000001";
const ALIAS: &str = "/apis/quiver.dev/v1alpha1/namespaces/search/collectionaliases/products";
const SERVICE: &str = "/api/v1/namespaces/search/services/products";
const VCS: &str = "/apis/quiver.dev/v1alpha1/namespaces/search/vectorcollections";
const AT: &str = "2025-11-25T12:00:00Z";
const MARK: &str = "served-by.quiver.dev/products";

fn alias(collection: &str, status: Value) -> Arc<CollectionAlias> {
    let mut ca = json!({
        "apiVersion": "quiver.dev/v1alpha1", "kind": "CollectionAlias",
        "metadata": {"name": "products", "namespace": NS, "uid": UID, "generation": 4},
        "spec": {"collection": collection},
    });
    if !status.is_null() {
        ca["status"] = status;
    }
    Arc::new(serde_json::from_value(ca).unwrap())
}

/// A collection at `generation` whose status describes `observed`, in `phase`, 2 of 2 replicas ready.
fn collection(name: &str, phase: &str, generation: i64, observed: i64, verified: bool) -> Value {
    json!({
        "apiVersion": "quiver.dev/v1alpha1", "kind": "VectorCollection",
        "metadata": {"name": name, "namespace": NS, "generation": generation},
        "spec": {"dimensions": 8, "distance": "cosine", "source": {"url": "/x.npy"}},
        "status": {"phase": phase, "observedGeneration": observed, "message": "1/2 replicas ready", "readyReplicas": 2,
            "conditions": [{"type": "Verified", "status": if verified {"True"} else {"False"}, "reason": "r",
                "message": "", "lastTransitionTime": AT, "observedGeneration": observed}]},
    })
}

/// The alias Service as the operator applied it, selecting `collection`.
fn owned_service(collection: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "products", "namespace": NS, "ownerReferences": [{"apiVersion": "quiver.dev/v1alpha1",
            "kind": "CollectionAlias", "name": "products", "uid": UID, "controller": true, "blockOwnerDeletion": true}]},
        "spec": {"selector": {"quiver.dev/collection": collection, "quiver.dev/role": "replica"}}})
}

/// The alias Service's EndpointSlices as the EndpointSlice controller writes them: one slice,
/// an endpoint per pod with its readiness (`None`: the condition unset, meaning ready).
fn slices(endpoints: &[(&str, Option<bool>)]) -> Value {
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|(pod, ready)| {
            let mut e = json!({"addresses": ["10.0.1.1"], "targetRef": {"kind": "Pod", "name": pod, "namespace": NS}});
            if let Some(ready) = ready {
                e["conditions"] = json!({"ready": ready});
            }
            e
        })
        .collect();
    list(
        "EndpointSlice",
        vec![json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "products-abcde", "labels": {"kubernetes.io/service-name": "products"}},
        "addressType": "IPv4", "endpoints": endpoints})],
    )
}

/// A replica pod of `collection`.
fn replica_pod(collection: &str, name: &str, ip: &str, ready: bool) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name,
            "labels": {"quiver.dev/collection": collection, "quiver.dev/role": "replica"}},
        "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}})
}

/// The two ready replicas of `collection`.
fn replicas_of(collection: &str) -> Value {
    list(
        "Pod",
        vec![
            replica_pod(collection, &format!("{collection}-a"), "10.0.0.7", true),
            replica_pod(collection, &format!("{collection}-b"), "10.0.0.8", true),
        ],
    )
}

fn endpoints_of(collection: &str) -> Value {
    slices(&[(&format!("{collection}-a"), Some(true)), (&format!("{collection}-b"), None)])
}

fn serving(current: &str, previous: Option<&str>) -> Value {
    json!({"current": current, "previous": previous, "flippedAt": "2025-11-24T03:00:00Z",
           "history": [{"collection": current, "at": "2025-11-24T03:00:00Z"}]})
}

async fn status_patch(server: &mut common::ApiServer) -> Value {
    let stored = serde_json::to_value(alias("x", Value::Null).as_ref()).unwrap();
    server.expect("PATCH", &format!("{ALIAS}/status"), 200, stored).await.body["status"].clone()
}

/// The served-by label patch on `collection`; returns the value it sets.
async fn marked(server: &mut common::ApiServer, collection: &str) -> Value {
    let vc = collection_value(collection);
    let sent = server.expect("PATCH", &format!("{VCS}/{collection}"), 200, vc).await;
    sent.body["metadata"]["labels"][MARK].clone()
}

fn collection_value(name: &str) -> Value {
    let mut vc = collection(name, "Ready", 1, 1, true);
    vc["metadata"]["resourceVersion"] = json!("42");
    vc["metadata"]["uid"] = json!(format!("uid-of-{name}"));
    vc
}

/// The alias's marks as the collection cache holds them: these collections with these values.
fn marks(server: &common::ApiServer, marked: &[(&str, &str)]) {
    let items = marked
        .iter()
        .map(|(name, value)| {
            let mut vc = collection_value(name);
            vc["metadata"]["labels"] = json!({MARK: value});
            vc
        })
        .collect();
    server.cache_list(list("VectorCollection", items));
}

/// A reconcile of an alias that flipped from v1 to v2 and serves v2 (its Service applied again,
/// both marked), with `endpoints` as the alias Service's EndpointSlices.
async fn serving_v2_after_v1(server: &mut common::ApiServer, endpoints: Value) {
    server.cache([owned_service("products-v2")]);
    server.apply(SERVICE, Value::Null).await;
    marks(server, &[("products-v2", "current"), ("products-v1", "previous")]);
    server.cache_list(endpoints);
}

fn selector(service: &common::Sent) -> Value {
    service.body["spec"]["selector"].clone()
}

/// The alias list the drain consults: only this alias, or others too.
fn aliases(others: Vec<(&str, &str)>) -> Value {
    let mut items = vec![serde_json::to_value(alias("x", Value::Null).as_ref()).unwrap()];
    for (name, current) in others {
        items.push(json!({"apiVersion": "quiver.dev/v1alpha1", "kind": "CollectionAlias",
            "metadata": {"name": name, "namespace": NS}, "spec": {"collection": current}, "status": {"current": current}}));
    }
    list("CollectionAlias", items)
}

#[tokio::test]
async fn first_flip_to_a_verified_collection_marks_it_and_creates_the_service() {
    let mut h = harness();
    let mut ca = (*alias("products-v1", Value::Null)).clone();
    ca.metadata.resource_version = Some("5".into());
    run(reconcile(Arc::new(ca), h.ctx.clone()), async {
        h.server.expect("GET", SERVICE, 404, not_found()).await;
        h.server.cache([collection_value("products-v1")]);
        // Marked before the Service selects it, and only as it was judged servable: the mark
        // carries the resourceVersion read, so a deletion admitted in between fails it (409).
        let mark = h.server.expect("PATCH", &format!("{VCS}/products-v1"), 200, collection_value("products-v1")).await;
        assert_eq!(mark.body, json!({"metadata": {"labels": {MARK: "current"}, "resourceVersion": "42"}}));
        let service = h.server.apply(SERVICE, Value::Null).await;
        assert_eq!(selector(&service), json!({"quiver.dev/collection": "products-v1", "quiver.dev/role": "replica"}));
        assert_eq!(service.body["metadata"]["ownerReferences"][0]["kind"], "CollectionAlias");
        // Recorded at once, before anything else can fail, and only over the version it was
        // computed from (a stale cached copy gets 409 instead of overwriting a newer status).
        let stored = serde_json::to_value(alias("x", Value::Null).as_ref()).unwrap();
        let mut answer = stored.clone();
        answer["metadata"]["resourceVersion"] = json!("6");
        let recorded = h.server.expect("PATCH", &format!("{ALIAS}/status"), 200, answer).await.body;
        assert_eq!(recorded["metadata"]["resourceVersion"], "5");
        let recorded = recorded["status"].clone();
        assert_eq!(recorded["current"], "products-v1");
        marks(&h.server, &[("products-v1", "current")]);
        // A new Service has no endpoints yet: serving, but not Ready.
        h.server.cache_list(list("EndpointSlice", vec![]));
        let sent = h.server.expect("PATCH", &format!("{ALIAS}/status"), 200, stored).await.body;
        assert_eq!(sent["metadata"]["resourceVersion"], "6", "the version the first write returned");
        let status = sent["status"].clone();
        assert_eq!(status["current"], "products-v1");
        assert_eq!(status["previous"], Value::Null);
        assert_eq!(status["flippedAt"], AT);
        assert_eq!(status["history"], json!([{"collection": "products-v1", "at": AT}]));
        assert_eq!(
            (status["conditions"][0]["type"].as_str(), status["conditions"][0]["status"].as_str()),
            (Some("Ready"), Some("False"))
        );
        assert_eq!(status["conditions"][0]["reason"], "NoReadyEndpoints");
        assert_eq!(status["conditions"][1]["type"], "Flipped");
        assert_eq!(status["conditions"][1]["status"], "True");
        let (reason, note) = h.server.event(NS).await;
        assert_eq!((reason.as_str(), note.as_str()), ("Flipped", "now serving products-v1"));
    })
    .await
    .unwrap();
    assert!(h.drainer.drained.lock().unwrap().is_empty());
}

/// A target the alias may not flip to: the Service stays where it is, status says why.
async fn waits_for(h: &mut common::Harness, target: Value, message: &str, reason: &str) {
    let name = target["metadata"]["name"].as_str().unwrap().to_string();
    let ca = alias(&name, serving("products-v1", None));
    let (server, ctx) = (&mut h.server, h.ctx.clone());
    run(reconcile(ca, ctx), async {
        server.cache([owned_service("products-v1")]);
        server.cache([target]);
        let service = server.apply(SERVICE, Value::Null).await;
        assert_eq!(selector(&service)["quiver.dev/collection"], "products-v1");
        marks(server, &[("products-v1", "current")]);
        server.cache_list(endpoints_of("products-v1"));
        let status = status_patch(server).await;
        assert_eq!(status["current"], "products-v1");
        assert_eq!(status["message"], message);
        assert_eq!(status["conditions"][0]["status"], "True", "still serving products-v1");
        assert_eq!(status["conditions"][1]["reason"], reason);
        assert_eq!(status["conditions"][1]["status"], "False");
        let (event, note) = server.event(NS).await;
        assert_eq!(note, message);
        assert_eq!(event, if reason == "TargetFailed" { "TargetFailed" } else { "Waiting" });
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn no_flip_before_the_target_is_verified_and_status_says_why() {
    let mut h = harness();
    let v2 = collection("products-v2", "Replicating", 1, 1, false);
    waits_for(&mut h, v2, "collection products-v2 is Replicating: 1/2 replicas ready", "WaitingForTarget").await;
}

#[tokio::test]
async fn a_ready_collection_verified_for_an_older_generation_is_not_served() {
    let mut h = harness();
    // Ready and verified at generation 1, but its spec is at generation 2 now.
    let v2 = collection("products-v2", "Ready", 2, 1, true);
    let message = "collection products-v2 has not been reconciled since its spec changed";
    waits_for(&mut h, v2, message, "WaitingForTarget").await;
}

#[tokio::test]
async fn a_target_short_of_its_wanted_replicas_is_not_served() {
    let mut h = harness();
    // Ready and verified, then a replica went (Degraded): 1 of the default 2.
    let mut v2 = collection("products-v2", "Ready", 1, 1, true);
    v2["status"]["readyReplicas"] = json!(1);
    waits_for(&mut h, v2, "collection products-v2 has 1 of 2 replicas ready", "WaitingForTarget").await;
    // Autoscaled: min replicas is what it must have.
    let mut v3 = collection("products-v3", "Ready", 1, 1, true);
    v3["spec"]["replicas"] = json!({"min": 3, "max": 6});
    waits_for(&mut h, v3, "collection products-v3 has 2 of 3 replicas ready", "WaitingForTarget").await;
}

#[tokio::test]
async fn a_collection_being_deleted_is_not_served() {
    let mut h = harness();
    let mut v2 = collection("products-v2", "Ready", 1, 1, true);
    v2["metadata"]["deletionTimestamp"] = json!(AT);
    v2["metadata"]["finalizers"] = json!(["quiver.dev/alias-protection"]);
    waits_for(&mut h, v2, "collection products-v2 is being deleted", "TargetFailed").await;
}

#[tokio::test]
async fn a_missing_target_keeps_the_alias_where_it_is() {
    let mut h = harness();
    let ca = alias("products-typo", serving("products-v1", None));
    run(reconcile(ca, h.ctx.clone()), async {
        h.server.cache([owned_service("products-v1")]);
        let service = h.server.apply(SERVICE, Value::Null).await;
        assert_eq!(selector(&service)["quiver.dev/collection"], "products-v1");
        marks(&h.server, &[("products-v1", "current")]);
        h.server.cache_list(endpoints_of("products-v1"));
        let status = status_patch(&mut h.server).await;
        assert_eq!(status["message"], "collection products-typo does not exist");
        h.server.event(NS).await;
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_flip_keeps_the_previous_target_and_drains_it_once_endpoints_moved() {
    let mut h = harness();
    let ca = alias("products-v2", serving("products-v1", None));
    let action = run(reconcile(ca, h.ctx.clone()), async {
        h.server.cache([owned_service("products-v1")]);
        h.server.cache([collection_value("products-v2")]);
        assert_eq!(marked(&mut h.server, "products-v2").await, "current");
        let service = h.server.apply(SERVICE, Value::Null).await;
        assert_eq!(selector(&service)["quiver.dev/collection"], "products-v2");
        let recorded = status_patch(&mut h.server).await;
        assert_eq!(
            (recorded["current"].as_str(), recorded["previous"].as_str()),
            (Some("products-v2"), Some("products-v1"))
        );
        marks(&h.server, &[("products-v2", "current"), ("products-v1", "current")]);
        assert_eq!(marked(&mut h.server, "products-v1").await, "previous", "kept for a rollback");
        // The slices still list the old pods.
        h.server.cache_list(endpoints_of("products-v1"));
        h.server.cache_list(aliases(vec![]));
        h.server.cache_list(replicas_of("products-v2"));
        let status = status_patch(&mut h.server).await;
        assert_eq!(
            (status["current"].as_str(), status["previous"].as_str()),
            (Some("products-v2"), Some("products-v1"))
        );
        assert_eq!(status["history"][0], json!({"collection": "products-v2", "at": AT}));
        assert_eq!(status["history"][1]["collection"], "products-v1");
        assert_eq!(status.get("message"), None);
        assert_eq!(status.get("drained"), None, "not before the endpoints moved");
        assert_eq!(status.get("endpointsMovedAt"), None);
        let (reason, note) = h.server.event(NS).await;
        assert_eq!((reason.as_str(), note.as_str()), ("Flipped", "now serving products-v2 (was products-v1)"));
    })
    .await
    .unwrap();
    assert!(h.drainer.drained.lock().unwrap().is_empty());
    assert_eq!(action, Action::requeue(Duration::from_secs(5)));

    // The slices list exactly v2's ready pods now: the drain delay starts.
    let mut flipped = serving("products-v2", Some("products-v1"));
    flipped["flippedAt"] = json!("2025-11-25T11:59:50Z");
    let action = run(reconcile(alias("products-v2", flipped.clone()), h.ctx.clone()), async {
        serving_v2_after_v1(&mut h.server, endpoints_of("products-v2")).await;
        h.server.cache_list(aliases(vec![]));
        h.server.cache_list(replicas_of("products-v2"));
        let status = status_patch(&mut h.server).await;
        assert_eq!(status["endpointsMovedAt"], AT);
        assert_eq!(status.get("drained"), None, "not before the drain delay");
    })
    .await
    .unwrap();
    assert!(h.drainer.drained.lock().unwrap().is_empty());
    assert_eq!(action, Action::requeue(Duration::from_secs(5)));

    // 10 seconds after the endpoints moved: the old replicas are told to drain, once.
    flipped["endpointsMovedAt"] = json!("2025-11-25T11:59:50Z");
    run(reconcile(alias("products-v2", flipped), h.ctx.clone()), async {
        serving_v2_after_v1(&mut h.server, endpoints_of("products-v2")).await;
        h.server.cache_list(aliases(vec![]));
        h.server.cache_list(replicas_of("products-v2"));
        h.server.cache_list(replicas_of("products-v1"));
        // Its pods require the collection's token.
        let mut v1 = collection_value("products-v1");
        v1["spec"]["tokenSecret"] = json!({"name": "quiver-token", "key": "token"});
        v1["metadata"]["labels"] = json!({MARK: "previous"});
        h.server.cache([v1.clone()]);
        // Read live before the drain: no other alias marked it as what it serves.
        h.server.expect("GET", &format!("{VCS}/products-v1"), 200, v1).await;
        let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "quiver-token"},
            "data": {"token": "czNjcmV0Cg=="}});
        h.server.expect("GET", "/api/v1/namespaces/search/secrets/quiver-token", 200, secret).await;
        assert_eq!(h.server.event(NS).await, ("Drained".into(), "told 2 replicas of products-v1 to drain".into()));
        let status = status_patch(&mut h.server).await;
        assert_eq!(status["drained"], "products-v1");
    })
    .await
    .unwrap();
    assert_eq!(*h.drainer.drained.lock().unwrap(), ["http://10.0.0.7:7700", "http://10.0.0.8:7700"]);
    assert_eq!(*h.drainer.tokens.lock().unwrap(), [Some("s3cret".to_string()), Some("s3cret".to_string())]);
}

#[tokio::test]
async fn endpoints_that_are_not_exactly_the_targets_ready_pods_hold_the_drain() {
    let mut h = harness();
    let mut flipped = serving("products-v2", Some("products-v1"));
    flipped["endpointsMovedAt"] = json!("2025-11-25T11:59:00Z");
    for endpoints in [
        // One of v2's pods is not ready in the slice yet.
        slices(&[("products-v2-a", Some(true)), ("products-v2-b", Some(false))]),
        // An old pod is still listed.
        slices(&[("products-v2-a", None), ("products-v2-b", None), ("products-v1-a", None)]),
    ] {
        let action = run(reconcile(alias("products-v2", flipped.clone()), h.ctx.clone()), async {
            serving_v2_after_v1(&mut h.server, endpoints).await;
            h.server.cache_list(aliases(vec![]));
            h.server.cache_list(replicas_of("products-v2"));
            let status = status_patch(&mut h.server).await;
            assert_eq!(status.get("endpointsMovedAt"), None, "the delay starts again once they match");
        })
        .await
        .unwrap();
        assert_eq!(action, Action::requeue(Duration::from_secs(5)));
    }
    assert!(h.drainer.drained.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_failed_drain_is_retried_and_not_recorded() {
    let mut h = harness();
    h.drainer.unreachable.lock().unwrap().push("http://10.0.0.8:7700".into());
    let mut flipped = serving("products-v2", Some("products-v1"));
    flipped["endpointsMovedAt"] = json!("2025-11-25T11:59:50Z");
    let action = run(reconcile(alias("products-v2", flipped), h.ctx.clone()), async {
        serving_v2_after_v1(&mut h.server, endpoints_of("products-v2")).await;
        h.server.cache_list(aliases(vec![]));
        h.server.cache_list(replicas_of("products-v2"));
        h.server.cache_list(replicas_of("products-v1"));
        let mut v1 = collection_value("products-v1");
        v1["metadata"]["labels"] = json!({MARK: "previous"});
        h.server.expect("GET", &format!("{VCS}/products-v1"), 200, v1).await;
        // Its token is the one the operator generated for it: read once, then remembered.
        let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "products-v1-token",
            "ownerReferences": [{"apiVersion": "quiver.dev/v1alpha1", "kind": "VectorCollection",
                "name": "products-v1", "uid": "uid-of-products-v1", "controller": true}]},
            "data": {"token": "Z2VuZXJhdGVk"}});
        h.server.expect("GET", "/api/v1/namespaces/search/secrets/products-v1-token", 200, secret).await;
        let (reason, note) = h.server.event(NS).await;
        assert_eq!(reason, "DrainFailed");
        assert!(note.starts_with("products-v1 at http://10.0.0.8:7700: ") && note.ends_with("; retried"), "{note}");
        let status = status_patch(&mut h.server).await;
        assert_eq!(status.get("drained"), None, "recorded only when every replica took it");
        assert_eq!(status["endpointsMovedAt"], "2025-11-25T11:59:50Z");
    })
    .await
    .unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(10)));
    assert_eq!(*h.drainer.tokens.lock().unwrap(), [Some("generated".to_string()), Some("generated".to_string())]);
}

#[tokio::test]
async fn a_previous_target_another_alias_serves_is_not_drained() {
    let mut h = harness();
    let mut flipped = serving("products-v2", Some("products-v1"));
    flipped["endpointsMovedAt"] = json!("2025-11-25T11:59:50Z");
    run(reconcile(alias("products-v2", flipped), h.ctx.clone()), async {
        serving_v2_after_v1(&mut h.server, endpoints_of("products-v2")).await;
        h.server.cache_list(aliases(vec![("related", "products-v1")]));
        let (reason, note) = h.server.event(NS).await;
        assert_eq!(
            (reason.as_str(), note.as_str()),
            ("DrainSkipped", "products-v1 is served by alias related: not drained")
        );
        let status = status_patch(&mut h.server).await;
        assert_eq!(status["drained"], "products-v1");
    })
    .await
    .unwrap();
    assert!(h.drainer.drained.lock().unwrap().is_empty(), "the other alias's clients keep their replicas");
}

#[tokio::test]
async fn rollback_to_a_still_ready_previous_target_is_immediate() {
    let mut h = harness();
    // v2 serves, v1 is the previous target (drained, still ready); spec.collection goes back to v1.
    let mut status = serving("products-v2", Some("products-v1"));
    status["drained"] = json!("products-v1");
    let action = run(reconcile(alias("products-v1", status), h.ctx.clone()), async {
        h.server.cache([owned_service("products-v2")]);
        h.server.cache([collection_value("products-v1")]);
        assert_eq!(marked(&mut h.server, "products-v1").await, "current");
        let service = h.server.apply(SERVICE, Value::Null).await;
        assert_eq!(selector(&service)["quiver.dev/collection"], "products-v1");
        status_patch(&mut h.server).await;
        marks(&h.server, &[("products-v1", "current"), ("products-v2", "current")]);
        assert_eq!(marked(&mut h.server, "products-v2").await, "previous");
        h.server.cache_list(endpoints_of("products-v2"));
        h.server.cache_list(aliases(vec![]));
        h.server.cache_list(replicas_of("products-v1"));
        let status = status_patch(&mut h.server).await;
        assert_eq!(
            (status["current"].as_str(), status["previous"].as_str()),
            (Some("products-v1"), Some("products-v2"))
        );
        assert_eq!(h.server.event(NS).await.1, "now serving products-v1 (was products-v2)");
    })
    .await
    .unwrap();
    // v2 is drained once the endpoints moved.
    assert_eq!(action, Action::requeue(Duration::from_secs(5)));
}

#[tokio::test]
async fn a_flip_unmarks_the_collection_that_is_no_longer_previous() {
    let mut h = harness();
    let mut status = serving("products-v2", Some("products-v1"));
    status["drained"] = json!("products-v1");
    run(reconcile(alias("products-v3", status), h.ctx.clone()), async {
        h.server.cache([owned_service("products-v2")]);
        h.server.cache([collection_value("products-v3")]);
        assert_eq!(marked(&mut h.server, "products-v3").await, "current");
        h.server.apply(SERVICE, Value::Null).await;
        status_patch(&mut h.server).await;
        let listed = [("products-v3", "current"), ("products-v2", "current"), ("products-v1", "previous")];
        marks(&h.server, &listed);
        assert_eq!(marked(&mut h.server, "products-v2").await, "previous");
        assert_eq!(marked(&mut h.server, "products-v1").await, Value::Null, "v1 may be deleted now");
        h.server.cache_list(endpoints_of("products-v2"));
        h.server.cache_list(aliases(vec![]));
        h.server.cache_list(replicas_of("products-v3"));
        status_patch(&mut h.server).await;
        h.server.event(NS).await;
    })
    .await
    .unwrap();
}

/// A status that serves `current` with the conditions a previous reconcile wrote.
fn settled_on(current: &str) -> Value {
    let mut settled = serving(current, None);
    settled["conditions"] = json!([
        {"type": "Ready", "status": "True", "reason": "Serving", "message": format!("serving {current}"), "lastTransitionTime": AT, "observedGeneration": 4},
        {"type": "Flipped", "status": "True", "reason": "Serving", "message": "", "lastTransitionTime": AT, "observedGeneration": 4},
    ]);
    settled
}

#[tokio::test]
async fn an_alias_already_serving_its_target_reads_the_service_and_its_endpoints_and_writes_nothing() {
    let mut h = harness();
    let settled = settled_on("products-v1");
    let action = run(reconcile(alias("products-v1", settled), h.ctx.clone()), async {
        h.server.cache([owned_service("products-v1")]);
        let service = h.server.apply(SERVICE, Value::Null).await;
        assert_eq!(selector(&service)["quiver.dev/collection"], "products-v1");
        marks(&h.server, &[("products-v1", "current")]);
        h.server.cache_list(endpoints_of("products-v1"));
    })
    .await
    .unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
}

#[tokio::test]
async fn an_alias_whose_endpoints_all_went_is_not_ready() {
    let mut h = harness();
    let settled = settled_on("products-v1");
    run(reconcile(alias("products-v1", settled), h.ctx.clone()), async {
        h.server.cache([owned_service("products-v1")]);
        h.server.apply(SERVICE, Value::Null).await;
        marks(&h.server, &[("products-v1", "current")]);
        let terminating = slices(&[("products-v1-a", Some(false)), ("products-v1-b", Some(false))]);
        h.server.cache_list(terminating);
        let status = status_patch(&mut h.server).await;
        assert_eq!(
            (status["conditions"][0]["status"].as_str(), status["conditions"][0]["reason"].as_str()),
            (Some("False"), Some("NoReadyEndpoints"))
        );
        assert_eq!(status["conditions"][0]["message"], "serving products-v1, but its Service has no ready endpoint");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_restored_alias_without_status_keeps_serving_what_its_service_selects_and_marks_it() {
    let mut h = harness();
    // Restored from a backup (or re-applied by GitOps) without status; spec names a newer,
    // unverified collection. The live Service still selects v1.
    run(reconcile(alias("products-v2", Value::Null), h.ctx.clone()), async {
        // No status says what it serves: the cached Service is not trusted, the live one is read.
        h.server.cache([owned_service("products-v1")]);
        h.server.expect("GET", SERVICE, 200, owned_service("products-v1")).await;
        let v2 = collection("products-v2", "Verifying", 1, 1, false);
        h.server.cache([v2]);
        let service = h.server.apply(SERVICE, Value::Null).await;
        assert_eq!(selector(&service)["quiver.dev/collection"], "products-v1", "never to an unverified target");
        // Its label was lost with it (a replace, a restore): marked again.
        marks(&h.server, &[]);
        assert_eq!(marked(&mut h.server, "products-v1").await, "current");
        h.server.cache_list(endpoints_of("products-v1"));
        let status = status_patch(&mut h.server).await;
        assert_eq!(status["current"], "products-v1");
        h.server.event(NS).await;
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_service_the_alias_does_not_control_is_reported_not_taken_over() {
    let mut h = harness();
    let theirs = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "products", "namespace": NS, "ownerReferences": [{"apiVersion": "apps/v1",
            "kind": "Deployment", "name": "legacy-products", "uid": "0000", "controller": true}]},
        "spec": {"selector": {"app": "legacy-products"}}});
    run(reconcile(alias("products-v1", Value::Null), h.ctx.clone()), async {
        h.server.expect("GET", SERVICE, 200, theirs).await;
        let status = status_patch(&mut h.server).await;
        let message = "Service products exists and is not this alias's (its controller is Deployment legacy-products); the alias does not take it over: rename the alias or remove the Service";
        assert_eq!(status["message"], message);
        assert_eq!(status["conditions"][0]["reason"], "ServiceConflict");
        assert_eq!(status.get("current"), None);
        assert_eq!(h.server.event(NS).await, ("ServiceConflict".into(), message.into()));
    })
    .await
    .unwrap();
}

/// An alias that follows its nightly rebuilds (no pinned spec.collection), with `status`.
fn rebuilding(rebuild: Value, status: Value) -> Arc<CollectionAlias> {
    let mut ca = serde_json::to_value(alias("x", Value::Null).as_ref()).unwrap();
    ca["spec"] = json!({"rebuild": {"schedule": "0 3 * * *", "historyLimit": 1,
        "template": {"dimensions": 8, "distance": "cosine", "source": {"url": "/data/latest.npy"}}}});
    for (k, v) in rebuild.as_object().into_iter().flatten() {
        ca["spec"]["rebuild"][k] = v.clone();
    }
    ca["status"] = status;
    Arc::new(serde_json::from_value(ca).unwrap())
}

/// Serving `current`, settled, whose last rebuild was `last` for the 03:00 tick of `day`.
fn rebuilt(current: &str, last: &str, day: u32) -> Value {
    let mut status = settled_on(current);
    status["lastRebuild"] = json!(format!("2025-11-{day:02}T03:00:00Z"));
    status["lastRebuildCollection"] = json!(last);
    status
}

/// A settled flip step on `current`: the Service read and kept, its endpoints read.
async fn stays_on(server: &mut common::ApiServer, current: &str) {
    server.cache([owned_service(current)]);
    let service = server.apply(SERVICE, Value::Null).await;
    assert_eq!(selector(&service)["quiver.dev/collection"], current);
    marks(server, &[(current, "current")]);
}

#[tokio::test]
async fn a_due_rebuild_creates_the_collection_and_records_it_never_writing_spec() {
    let mut h = harness();
    let ca = rebuilding(json!({}), rebuilt("products-20251124-0300", "products-20251124-0300", 24));
    let template = ca.spec.rebuild.as_ref().unwrap().template.clone();
    let action = run(reconcile(ca, h.ctx.clone()), async {
        // now = 2025-11-25T12:00Z: the 03:00 tick of the 25th is due.
        let created = h.server.expect_with("POST", VCS, 201, |body| body.clone()).await;
        assert_eq!(created.body["metadata"]["name"], "products-20251125-0300");
        assert_eq!(created.body["metadata"]["labels"]["quiver.dev/alias"], "products");
        assert_eq!(created.body["metadata"].get("ownerReferences"), None, "the alias must not own what it serves");
        assert_eq!(created.body["spec"], serde_json::to_value(&template).unwrap());
        let (reason, note) = h.server.event(NS).await;
        assert_eq!(reason, "RebuildStarted");
        assert_eq!(
            note,
            "building products-20251125-0300 (scheduled 2025-11-25T03:00:00Z); the alias flips once it is verified"
        );
        h.server.cache([owned_service("products-20251124-0300")]);
        // The new rebuild is the target: not servable yet.
        let fresh = json!({"apiVersion": "quiver.dev/v1alpha1", "kind": "VectorCollection",
            "metadata": {"name": "products-20251125-0300", "namespace": NS, "generation": 1},
            "spec": created.body["spec"].clone()});
        h.server.cache([fresh]);
        h.server.apply(SERVICE, Value::Null).await;
        marks(&h.server, &[("products-20251124-0300", "current")]);
        h.server.cache_list(endpoints_of("products-20251124-0300"));
        // Recorded in status; the spec (which a GitOps tool owns) is never patched.
        let status = status_patch(&mut h.server).await;
        assert_eq!(status["lastRebuild"], "2025-11-25T03:00:00Z");
        assert_eq!(status["lastRebuildCollection"], "products-20251125-0300");
        assert_eq!(status["current"], "products-20251124-0300", "no flip before verification");
        assert_eq!(status["message"], "collection products-20251125-0300 has no status yet");
        h.server.event(NS).await;
        let both = vec![collection_value("products-20251124-0300"), collection_value("products-20251125-0300")];
        h.server.cache_list(list("VectorCollection", both));
        h.server.cache_list(aliases(vec![]));
    })
    .await
    .unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(30)));
}

#[tokio::test]
async fn a_failed_rebuild_leaves_the_alias_where_it_was_and_warns() {
    let mut h = harness();
    let ca = rebuilding(json!({}), rebuilt("products-20251124-0300", "products-20251125-0300", 25));
    run(reconcile(ca, h.ctx.clone()), async {
        h.server.cache([owned_service("products-20251124-0300")]);
        let mut failed = collection("products-20251125-0300", "Failed", 1, 1, false);
        failed["status"]["message"] = json!("verification failed: recall measured 0.8 (needs >= 0.95)");
        h.server.cache([failed]);
        let service = h.server.apply(SERVICE, Value::Null).await;
        assert_eq!(selector(&service)["quiver.dev/collection"], "products-20251124-0300");
        marks(&h.server, &[("products-20251124-0300", "current")]);
        h.server.cache_list(endpoints_of("products-20251124-0300"));
        let status = status_patch(&mut h.server).await;
        assert_eq!(
            status["message"],
            "collection products-20251125-0300 is Failed: verification failed: recall measured 0.8 (needs >= 0.95)"
        );
        assert_eq!(status["conditions"][1]["reason"], "TargetFailed");
        let (reason, _) = h.server.event(NS).await;
        assert_eq!(reason, "TargetFailed");
        // History: nothing rebuilt beyond the protected ones.
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_tick_while_a_rebuild_is_still_building_is_skipped_under_forbid() {
    let mut h = harness();
    let ca = rebuilding(json!({}), rebuilt("products-20251123-0300", "products-20251124-0300", 24));
    run(reconcile(ca, h.ctx.clone()), async {
        // Read from the API server: whether a rebuild still builds decides whether one starts.
        let building = collection("products-20251124-0300", "Verifying", 1, 1, false);
        h.server.expect("GET", &format!("{VCS}/products-20251124-0300"), 200, building.clone()).await;
        let (reason, note) = h.server.event(NS).await;
        assert_eq!(reason, "RebuildSkipped");
        assert_eq!(
            note,
            "skipped the rebuild scheduled for 2025-11-25T03:00:00Z: products-20251124-0300 is still Verifying (concurrencyPolicy Forbid)"
        );
        h.server.cache([owned_service("products-20251123-0300")]);
        h.server.cache([building]);
        h.server.apply(SERVICE, Value::Null).await;
        marks(&h.server, &[("products-20251123-0300", "current")]);
        h.server.cache_list(endpoints_of("products-20251123-0300"));
        let status = status_patch(&mut h.server).await;
        assert_eq!(status["lastRebuild"], "2025-11-25T03:00:00Z", "the tick is handled");
        assert_eq!(status["lastRebuildCollection"], "products-20251124-0300", "the one in progress stays the target");
        h.server.event(NS).await;
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_tick_past_its_starting_deadline_is_skipped() {
    let mut h = harness();
    let settled = rebuilt("products-20251124-0300", "products-20251124-0300", 24);
    let ca = rebuilding(json!({"startingDeadlineSeconds": 3600}), settled);
    run(reconcile(ca, h.ctx.clone()), async {
        // 12:00 is nine hours after the 03:00 tick.
        let (reason, note) = h.server.event(NS).await;
        assert_eq!(reason, "RebuildMissed");
        assert_eq!(
            note,
            "skipped the rebuild scheduled 2025-11-25T03:00:00Z: 32400 s late, past startingDeadlineSeconds 3600"
        );
        stays_on(&mut h.server, "products-20251124-0300").await;
        h.server.cache_list(endpoints_of("products-20251124-0300"));
        let status = status_patch(&mut h.server).await;
        assert_eq!(status["lastRebuild"], "2025-11-25T03:00:00Z");
        assert_eq!(status["lastRebuildCollection"], "products-20251124-0300");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_requested_rebuild_starts_at_once_even_when_suspended_and_only_once() {
    let mut h = harness();
    let settled = rebuilt("products-20251124-0300", "products-20251124-0300", 25);
    let mut ca = (*rebuilding(json!({"suspend": true}), settled)).clone();
    ca.metadata.annotations = Some([("quiver.dev/rebuild-requested".to_string(), "1764072000".to_string())].into());
    run(reconcile(Arc::new(ca.clone()), h.ctx.clone()), async {
        let created = h.server.expect_with("POST", VCS, 201, |body| body.clone()).await;
        assert_eq!(created.body["metadata"]["name"], "products-20251125-1200");
        let (reason, note) = h.server.event(NS).await;
        assert_eq!(reason, "RebuildStarted");
        assert!(note.starts_with("building products-20251125-1200 (requested 2025-11-25T12:00:00Z)"), "{note}");
        h.server.cache([owned_service("products-20251124-0300")]);
        let building = collection("products-20251125-1200", "Importing", 1, 1, false);
        h.server.cache([building]);
        h.server.apply(SERVICE, Value::Null).await;
        marks(&h.server, &[("products-20251124-0300", "current")]);
        h.server.cache_list(endpoints_of("products-20251124-0300"));
        let status = status_patch(&mut h.server).await;
        assert_eq!(status["lastRebuildRequest"], "1764072000");
        assert_eq!(status["lastRebuildCollection"], "products-20251125-1200");
        h.server.event(NS).await;
    })
    .await
    .unwrap();
    // Handled: the same annotation value starts nothing more.
    let mut stored = serde_json::to_value(&ca).unwrap();
    stored["status"]["lastRebuildRequest"] = json!("1764072000");
    stored["status"]["lastRebuildCollection"] = json!("products-20251124-0300");
    run(reconcile(Arc::new(serde_json::from_value(stored).unwrap()), h.ctx.clone()), async {
        stays_on(&mut h.server, "products-20251124-0300").await;
        h.server.cache_list(endpoints_of("products-20251124-0300"));
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn old_rebuilds_beyond_the_history_limit_are_deleted_never_what_any_alias_serves() {
    let mut h = harness();
    let mut status = rebuilt("products-20251125-0300", "products-20251125-0300", 25);
    status["previous"] = json!("products-20251122-0300");
    status["drained"] = json!("products-20251122-0300");
    run(reconcile(rebuilding(json!({"historyLimit": 0}), status), h.ctx.clone()), async {
        h.server.cache([owned_service("products-20251125-0300")]);
        h.server.apply(SERVICE, Value::Null).await;
        h.server.cache_list(endpoints_of("products-20251125-0300"));
        let rebuilt = |day: u32| {
            let mut c = collection(&format!("products-202511{day:02}-0300"), "Ready", 1, 1, true);
            c["metadata"]["creationTimestamp"] = json!(format!("2025-11-{day:02}T03:00:00Z"));
            c["metadata"]["labels"] = json!({"quiver.dev/alias": "products"});
            c
        };
        let mut listed: Vec<Value> = (20..=25).map(rebuilt).collect();
        listed[2]["metadata"]["labels"][MARK] = json!("previous");
        listed[5]["metadata"]["labels"][MARK] = json!("current");
        // Marked by an alias whose status was lost: the admission policy would refuse it.
        listed[4]["metadata"]["labels"]["served-by.quiver.dev/other"] = json!("current");
        // Another alias's rebuild of the same day is not this alias's to prune.
        let mut foreign = rebuilt(19);
        foreign["metadata"]["labels"] = json!({"quiver.dev/alias": "other"});
        listed.push(foreign);
        h.server.cache_list(list("VectorCollection", listed));
        // Another alias serves the rebuild of the 21st.
        h.server.cache_list(aliases(vec![("related", "products-20251121-0300")]));
        // Keep 25 (current), 22 (previous), 21 (served by `related`), 24 (marked); delete 23
        // and 20. A 403 (marked meanwhile, refused at admission) is left alone.
        h.server.expect("DELETE", &format!("{VCS}/products-20251123-0300"), 200, rebuilt(1)).await;
        let (reason, note) = h.server.event(NS).await;
        assert_eq!(
            (reason.as_str(), note.as_str()),
            ("Pruned", "deleted products-20251123-0300: beyond the history limit")
        );
        let refused = common::status(403, "Forbidden", "admission webhook denied");
        h.server.expect("DELETE", &format!("{VCS}/products-20251120-0300"), 403, refused).await;
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn an_orphaned_service_of_this_alias_is_adopted() {
    let mut h = harness();
    // `kubectl delete ca products --cascade=orphan`, then the alias re-created: the Service it
    // made has its labels but no owner.
    let mut orphan = owned_service("products-v1");
    orphan["metadata"].as_object_mut().unwrap().remove("ownerReferences");
    orphan["metadata"]["labels"] =
        json!({"quiver.dev/alias": "products", "app.kubernetes.io/managed-by": "quiver-operator"});
    run(reconcile(alias("products-v1", settled_on("products-v1")), h.ctx.clone()), async {
        h.server.cache([orphan.clone()]);
        h.server.expect("GET", SERVICE, 200, orphan).await;
        let service = h.server.apply(SERVICE, Value::Null).await;
        assert_eq!(service.body["metadata"]["ownerReferences"][0]["uid"], UID, "adopted");
        marks(&h.server, &[("products-v1", "current")]);
        h.server.cache_list(endpoints_of("products-v1"));
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_target_changed_after_it_was_judged_servable_is_not_flipped_to() {
    let mut h = harness();
    run(reconcile(alias("products-v2", serving("products-v1", None)), h.ctx.clone()), async {
        h.server.cache([owned_service("products-v1")]);
        h.server.cache([collection_value("products-v2")]);
        // A DELETE admitted in between (no mark yet) bumped its resourceVersion: the API server
        // refuses the mark as it words an optimistic-concurrency failure (HTTP 409, reason
        // Conflict; apimachinery `errors.NewConflict`).
        let message = "Operation cannot be fulfilled on vectorcollections.quiver.dev \"products-v2\": the object has been modified; please apply your changes to the latest version and try again";
        h.server.expect("PATCH", &format!("{VCS}/products-v2"), 409, common::status(409, "Conflict", message)).await;
        let (reason, note) = h.server.event(NS).await;
        assert_eq!(reason, "ReconcileError");
        assert!(note.contains("the object has been modified"), "{note}");
        // No Service apply: it still selects v1.
    })
    .await
    .unwrap_err();
}
