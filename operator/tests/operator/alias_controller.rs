//! CollectionAlias reconciles against a scripted API server: the Service switches only to a
//! Ready and verified collection, the previous target is kept and drained, rollback is
//! immediate, and status says why an alias waits.

use crate::common::{self, harness, list, not_found, run};
use kube::runtime::controller::Action;
use quiver_operator::controller::alias::reconcile;
use quiver_operator::crd::CollectionAlias;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

const NS: &str = "search";
const ALIAS: &str = "/apis/quiver.dev/v1alpha1/namespaces/search/collectionaliases/products";
const SERVICE: &str = "/api/v1/namespaces/search/services/products";
const VCS: &str = "/apis/quiver.dev/v1alpha1/namespaces/search/vectorcollections";
const PODS: &str = "/api/v1/namespaces/search/pods";
const AT: &str = "2025-11-25T12:00:00Z";

fn alias(collection: &str, status: Value) -> Arc<CollectionAlias> {
    let mut ca = json!({
        "apiVersion": "quiver.dev/v1alpha1", "kind": "CollectionAlias",
        "metadata": {"name": "products", "namespace": NS, "uid": "a11a5000-0000-4000-8000-000000000001", "generation": 4},
        "spec": {"collection": collection},
    });
    if !status.is_null() {
        ca["status"] = status;
    }
    Arc::new(serde_json::from_value(ca).unwrap())
}

/// A collection at `generation` whose status describes `observed`, in `phase`.
fn collection(name: &str, phase: &str, generation: i64, observed: i64, verified: bool) -> Value {
    json!({
        "apiVersion": "quiver.dev/v1alpha1", "kind": "VectorCollection",
        "metadata": {"name": name, "namespace": NS, "generation": generation},
        "spec": {"dimensions": 8, "distance": "cosine", "source": {"url": "/x.npy"}},
        "status": {"phase": phase, "observedGeneration": observed, "message": "1/2 replicas ready",
            "conditions": [{"type": "Verified", "status": if verified {"True"} else {"False"}, "reason": "r",
                "message": "", "lastTransitionTime": AT, "observedGeneration": observed}]},
    })
}

fn replica_pod(ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": ip}, "status": {"podIP": ip}})
}

fn serving(current: &str, previous: Option<&str>) -> Value {
    json!({"current": current, "previous": previous, "switchedAt": "2025-11-24T03:00:00Z",
           "history": [{"collection": current, "at": "2025-11-24T03:00:00Z"}]})
}

async fn status_patch(server: &mut common::ApiServer) -> Value {
    let stored = serde_json::to_value(alias("x", Value::Null).as_ref()).unwrap();
    server.expect("PATCH", &format!("{ALIAS}/status"), 200, stored).await.body["status"].clone()
}

fn selector(service: &common::Sent) -> Value {
    service.body["spec"]["selector"].clone()
}

#[tokio::test]
async fn first_switch_to_a_verified_collection_creates_the_service() {
    let mut h = harness();
    run(reconcile(alias("products-v1", Value::Null), h.ctx.clone()), async {
        h.server
            .expect("GET", &format!("{VCS}/products-v1"), 200, collection("products-v1", "Ready", 1, 1, true))
            .await;
        let service = h.server.apply(SERVICE, Value::Null).await;
        assert_eq!(selector(&service), json!({"quiver.dev/collection": "products-v1", "quiver.dev/role": "replica"}));
        assert_eq!(service.body["metadata"]["ownerReferences"][0]["kind"], "CollectionAlias");
        let status = status_patch(&mut h.server).await;
        assert_eq!(status["current"], "products-v1");
        assert_eq!(status["previous"], Value::Null);
        assert_eq!(status["switchedAt"], AT);
        assert_eq!(status["history"], json!([{"collection": "products-v1", "at": AT}]));
        assert_eq!(status["conditions"][1]["type"], "Switched");
        assert_eq!(status["conditions"][1]["status"], "True");
        let (reason, note) = h.server.event(NS).await;
        assert_eq!((reason.as_str(), note.as_str()), ("Switched", "now serving products-v1"));
    })
    .await
    .unwrap();
    assert!(h.drainer.drained.lock().unwrap().is_empty());
}

#[tokio::test]
async fn no_switch_before_the_target_is_verified_and_status_says_why() {
    let mut h = harness();
    let ca = alias("products-v2", serving("products-v1", None));
    run(reconcile(ca, h.ctx.clone()), async {
        let v2 = collection("products-v2", "Replicating", 1, 1, false);
        h.server.expect("GET", &format!("{VCS}/products-v2"), 200, v2).await;
        // The Service stays on the collection it serves.
        let service = h.server.apply(SERVICE, Value::Null).await;
        assert_eq!(selector(&service)["quiver.dev/collection"], "products-v1");
        let status = status_patch(&mut h.server).await;
        assert_eq!(status["current"], "products-v1");
        assert_eq!(status["message"], "collection products-v2 is Replicating: 1/2 replicas ready");
        assert_eq!(status["conditions"][1]["reason"], "WaitingForTarget");
        assert_eq!(status["conditions"][1]["status"], "False");
        let (reason, note) = h.server.event(NS).await;
        assert_eq!(
            (reason.as_str(), note.as_str()),
            ("Waiting", "collection products-v2 is Replicating: 1/2 replicas ready")
        );
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_ready_collection_verified_for_an_older_generation_is_not_served() {
    let mut h = harness();
    let ca = alias("products-v2", serving("products-v1", None));
    run(reconcile(ca, h.ctx.clone()), async {
        // Ready and verified at generation 1, but its spec is at generation 2 now.
        let v2 = collection("products-v2", "Ready", 2, 1, true);
        h.server.expect("GET", &format!("{VCS}/products-v2"), 200, v2).await;
        h.server.apply(SERVICE, Value::Null).await;
        let status = status_patch(&mut h.server).await;
        assert_eq!(status["message"], "collection products-v2 has not been reconciled since its spec changed");
        h.server.event(NS).await;
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_missing_target_keeps_the_alias_where_it_is() {
    let mut h = harness();
    let ca = alias("products-typo", serving("products-v1", None));
    run(reconcile(ca, h.ctx.clone()), async {
        h.server.expect("GET", &format!("{VCS}/products-typo"), 404, not_found()).await;
        let service = h.server.apply(SERVICE, Value::Null).await;
        assert_eq!(selector(&service)["quiver.dev/collection"], "products-v1");
        let status = status_patch(&mut h.server).await;
        assert_eq!(status["message"], "collection products-typo does not exist");
        h.server.event(NS).await;
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn switch_keeps_the_previous_target_and_drains_it_once_endpoints_moved() {
    let mut h = harness();
    let ca = alias("products-v2", serving("products-v1", None));
    let action = run(reconcile(ca, h.ctx.clone()), async {
        h.server
            .expect("GET", &format!("{VCS}/products-v2"), 200, collection("products-v2", "Ready", 1, 1, true))
            .await;
        let service = h.server.apply(SERVICE, Value::Null).await;
        assert_eq!(selector(&service)["quiver.dev/collection"], "products-v2");
        let status = status_patch(&mut h.server).await;
        assert_eq!(
            (status["current"].as_str(), status["previous"].as_str()),
            (Some("products-v2"), Some("products-v1"))
        );
        assert_eq!(status["history"][0], json!({"collection": "products-v2", "at": AT}));
        assert_eq!(status["history"][1]["collection"], "products-v1");
        assert_eq!(status.get("message"), None);
        assert_eq!(status.get("drained"), None, "not before the endpoints moved");
        let (reason, note) = h.server.event(NS).await;
        assert_eq!((reason.as_str(), note.as_str()), ("Switched", "now serving products-v2 (was products-v1)"));
    })
    .await
    .unwrap();
    assert!(h.drainer.drained.lock().unwrap().is_empty());
    assert_eq!(action, Action::requeue(Duration::from_secs(5)));

    // The next look, 10 seconds after the switch: the old replicas are told to drain, once.
    let mut switched = settled_on("products-v2");
    switched["previous"] = json!("products-v1");
    switched["switchedAt"] = json!("2025-11-25T11:59:50Z");
    run(reconcile(alias("products-v2", switched), h.ctx.clone()), async {
        h.server.apply(SERVICE, Value::Null).await;
        let pods = h
            .server
            .expect("GET", PODS, 200, list("Pod", vec![replica_pod("10.0.0.7"), replica_pod("10.0.0.8")]))
            .await;
        assert!(
            pods.uri.contains("labelSelector=quiver.dev%2Fcollection%3Dproducts-v1%2Cquiver.dev%2Frole%3Dreplica"),
            "{}",
            pods.uri
        );
        // Its pods require the collection's token.
        let mut v1 = collection("products-v1", "Ready", 1, 1, true);
        v1["spec"]["tokenSecret"] = json!({"name": "quiver-token", "key": "token"});
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
async fn rollback_to_a_still_ready_previous_target_is_immediate() {
    let mut h = harness();
    // v2 serves, v1 is the previous target (drained); the user sets spec.collection back to v1.
    let mut status = serving("products-v2", Some("products-v1"));
    status["drained"] = json!("products-v1");
    let action = run(reconcile(alias("products-v1", status), h.ctx.clone()), async {
        h.server
            .expect("GET", &format!("{VCS}/products-v1"), 200, collection("products-v1", "Ready", 1, 1, true))
            .await;
        let service = h.server.apply(SERVICE, Value::Null).await;
        assert_eq!(selector(&service)["quiver.dev/collection"], "products-v1");
        let status = status_patch(&mut h.server).await;
        assert_eq!(
            (status["current"].as_str(), status["previous"].as_str()),
            (Some("products-v1"), Some("products-v2"))
        );
        assert_eq!(h.server.event(NS).await.1, "now serving products-v1 (was products-v2)");
    })
    .await
    .unwrap();
    // v2 is drained on the next look, after the endpoints moved.
    assert_eq!(action, Action::requeue(Duration::from_secs(5)));
}

/// A status that serves `current` with the conditions a previous reconcile wrote.
fn settled_on(current: &str) -> Value {
    let mut settled = serving(current, None);
    settled["conditions"] = json!([
        {"type": "Ready", "status": "True", "reason": "Serving", "message": format!("serving {current}"), "lastTransitionTime": AT, "observedGeneration": 4},
        {"type": "Switched", "status": "True", "reason": "Serving", "message": "", "lastTransitionTime": AT, "observedGeneration": 4},
    ]);
    settled
}

#[tokio::test]
async fn an_alias_already_serving_its_target_only_reasserts_the_service() {
    let mut h = harness();
    let settled = settled_on("products-v1");
    run(reconcile(alias("products-v1", settled), h.ctx.clone()), async {
        let service = h.server.apply(SERVICE, Value::Null).await;
        assert_eq!(selector(&service)["quiver.dev/collection"], "products-v1");
    })
    .await
    .unwrap();
}

fn rebuilding(collection: &str, mut status: Value) -> Arc<CollectionAlias> {
    let mut ca = serde_json::to_value(alias(collection, Value::Null).as_ref()).unwrap();
    ca["spec"]["rebuild"] = json!({"schedule": "0 3 * * *", "historyLimit": 1,
        "template": {"dimensions": 8, "distance": "cosine", "source": {"url": "/data/latest.npy"}}});
    status["lastRebuild"] = json!("2025-11-24T03:00:00Z");
    ca["status"] = status;
    Arc::new(serde_json::from_value(ca).unwrap())
}

#[tokio::test]
async fn a_due_rebuild_creates_the_collection_and_makes_it_the_target() {
    let mut h = harness();
    let ca = rebuilding("products-20251124-0300", serving("products-20251124-0300", None));
    let template = ca.spec.rebuild.as_ref().unwrap().template.clone();
    run(reconcile(ca, h.ctx.clone()), async {
        // now = 2025-11-25T12:00Z: the 03:00 tick of the 25th is due.
        let created = h.server.expect_with("POST", VCS, 201, |body| body.clone()).await;
        assert_eq!(created.body["metadata"]["name"], "products-20251125-0300");
        assert_eq!(created.body["metadata"]["labels"]["quiver.dev/alias"], "products");
        assert_eq!(created.body["metadata"].get("ownerReferences"), None, "the alias must not own what it serves");
        assert_eq!(created.body["spec"], serde_json::to_value(&template).unwrap());
        let status = status_patch(&mut h.server).await;
        assert_eq!(status["lastRebuild"], "2025-11-25T03:00:00Z");
        assert_eq!(status["lastRebuildCollection"], "products-20251125-0300");
        assert_eq!(status["current"], "products-20251124-0300", "no switch before verification");
        let stored = serde_json::to_value(alias("x", Value::Null).as_ref()).unwrap();
        let spec = h.server.expect("PATCH", ALIAS, 200, stored).await;
        assert_eq!(spec.body, json!({"spec": {"collection": "products-20251125-0300"}}));
        let (reason, note) = h.server.event(NS).await;
        assert_eq!(reason, "RebuildStarted");
        assert!(note.starts_with("building products-20251125-0300 (scheduled 2025-11-25T03:00:00Z)"), "{note}");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_failed_rebuild_leaves_the_alias_where_it_was_and_warns() {
    let mut h = harness();
    let mut status = serving("products-20251124-0300", None);
    status["lastRebuild"] = json!("2025-11-25T03:00:00Z");
    let mut ca = (*rebuilding("products-20251125-0300", Value::Object(Default::default()))).clone();
    ca.status = serde_json::from_value(status).unwrap();
    run(reconcile(Arc::new(ca), h.ctx.clone()), async {
        let mut failed = collection("products-20251125-0300", "Failed", 1, 1, false);
        failed["status"]["message"] = json!("verification failed: recall measured 0.8 (needs >= 0.95)");
        h.server.expect("GET", &format!("{VCS}/products-20251125-0300"), 200, failed).await;
        let service = h.server.apply(SERVICE, Value::Null).await;
        assert_eq!(selector(&service)["quiver.dev/collection"], "products-20251124-0300");
        let status = status_patch(&mut h.server).await;
        assert_eq!(
            status["message"],
            "collection products-20251125-0300 is Failed: verification failed: recall measured 0.8 (needs >= 0.95)"
        );
        assert_eq!(status["conditions"][1]["reason"], "TargetFailed");
        let (reason, _) = h.server.event(NS).await;
        assert_eq!(reason, "TargetFailed");
        // History: nothing rebuilt beyond the protected ones.
        h.server.expect("GET", VCS, 200, list("VectorCollection", vec![])).await;
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn old_rebuilds_beyond_the_history_limit_are_deleted_never_current_or_previous() {
    let mut h = harness();
    let mut status = settled_on("products-20251125-0300");
    status["previous"] = json!("products-20251122-0300");
    status["drained"] = json!("products-20251122-0300");
    status["lastRebuild"] = json!("2025-11-25T03:00:00Z");
    let mut ca = (*rebuilding("products-20251125-0300", Value::Object(Default::default()))).clone();
    ca.status = serde_json::from_value(status).unwrap();
    run(reconcile(Arc::new(ca), h.ctx.clone()), async {
        h.server.apply(SERVICE, Value::Null).await;
        let rebuilt = |day: u32| {
            let mut c = collection(&format!("products-202511{day:02}-0300"), "Ready", 1, 1, true);
            c["metadata"]["creationTimestamp"] = json!(format!("2025-11-{day:02}T03:00:00Z"));
            c
        };
        let listed = h.server.expect("GET", VCS, 200, list("VectorCollection", (21..=25).map(rebuilt).collect())).await;
        assert!(listed.uri.contains("labelSelector=quiver.dev%2Falias%3Dproducts"), "{}", listed.uri);
        // Keep 25 (current), 22 (previous) and the newest other one (24); delete 23 and 21.
        for gone in ["products-20251123-0300", "products-20251121-0300"] {
            h.server.expect("DELETE", &format!("{VCS}/{gone}"), 200, rebuilt(1)).await;
            let (reason, note) = h.server.event(NS).await;
            assert_eq!((reason.as_str(), note), ("Pruned", format!("deleted {gone}: beyond the history limit")));
        }
    })
    .await
    .unwrap();
}
