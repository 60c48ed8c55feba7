//! VectorCollection reconciles against a scripted API server: the exact requests and patches
//! for create, progress, replication, the Jobs, the verify result, deletion and idempotence.

use crate::common::{self, list, not_found, run};
use quiver_operator::controller::collection::{FINALIZER, reconcile};
use quiver_operator::crd::VectorCollection;
use quiver_operator::phase::WriterState;
use quiver_operator::resources::{CollectionObjects, Defaults};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

const NS: &str = "search";
const VC: &str = "/apis/quiver.dev/v1alpha1/namespaces/search/vectorcollections/products-v2";
const WRITER_SVC: &str = "/api/v1/namespaces/search/services/products-v2-writer";
const WRITER_STS: &str = "/apis/apps/v1/namespaces/search/statefulsets/products-v2-writer";
const WRITER_POD: &str = "/api/v1/namespaces/search/pods/products-v2-writer-0";
const REPLICAS_SVC: &str = "/api/v1/namespaces/search/services/products-v2-replicas";
const DEPLOYMENT: &str = "/apis/apps/v1/namespaces/search/deployments/products-v2-replicas";
const HPA: &str = "/apis/autoscaling/v2/namespaces/search/horizontalpodautoscalers/products-v2-replicas";
const PDB: &str = "/apis/policy/v1/namespaces/search/poddisruptionbudgets/products-v2-replicas";
const JOBS: &str = "/apis/batch/v1/namespaces/search/jobs";
const SECRETS: &str = "/api/v1/namespaces/search/secrets";
const EVENTS: &str = "/api/v1/namespaces/search/events";
const WRITER_NP: &str = "/apis/networking.k8s.io/v1/namespaces/search/networkpolicies/products-v2-writer";
const REPLICAS_NP: &str = "/apis/networking.k8s.io/v1/namespaces/search/networkpolicies/products-v2-replicas";

/// The token Secret the operator generated for the collection (`generated-token`), owned by it.
fn token_secret() -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "products-v2-token",
        "ownerReferences": [{"apiVersion": "quiver.dev/v1alpha1", "kind": "VectorCollection", "name": "products-v2",
            "uid": "c0ffee00-0000-4000-8000-000000000001", "controller": true}]},
        "data": {"token": "Z2VuZXJhdGVkLXRva2Vu"}})
}

/// The token read again: the writer did not answer last time (its Secret may be gone).
async fn token_read(server: &mut common::ApiServer) {
    server.expect("GET", &format!("{SECRETS}/products-v2-token"), 200, token_secret()).await;
}

/// A harness that read the collection's generated token before (it is remembered).
fn harness() -> common::Harness {
    let h = common::harness();
    h.ctx.caches.tokens.remember(NS, "products-v2-token", "token", "generated-token");
    h
}

/// The example collection as stored: finalizer set unless `fresh`, at generation 1.
fn collection(fresh: bool, status: Value) -> Arc<VectorCollection> {
    let mut vc: Value = serde_yaml::from_str(include_str!("../../../examples/vectorcollection.yaml")).unwrap();
    vc["metadata"] = json!({
        "name": "products-v2", "namespace": NS, "uid": "c0ffee00-0000-4000-8000-000000000001",
        "generation": 1, "resourceVersion": "7",
    });
    if !fresh {
        vc["metadata"]["finalizers"] = json!([FINALIZER]);
    }
    if !status.is_null() {
        vc["status"] = status;
    }
    Arc::new(serde_json::from_value(vc).unwrap())
}

/// Any stored collection: what the API server answers a patch with.
fn stored_object() -> Value {
    serde_json::to_value(collection(false, Value::Null).as_ref()).unwrap()
}

async fn status_patch(server: &mut common::ApiServer) -> common::Sent {
    server.expect("PATCH", &format!("{VC}/status"), 200, stored_object()).await
}

fn rendered(vc: &VectorCollection) -> CollectionObjects {
    CollectionObjects::render(vc, &Defaults { image: "quiver:test".into(), ..Default::default() })
}

/// The live replicas Deployment at `replicas`, whose `spec.replicas` `manager` owns.
fn deployment_owned_by(manager: &str, replicas: i32) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "products-v2-replicas", "managedFields": [{"manager": manager, "operation": "Apply",
            "apiVersion": "apps/v1", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:replicas": {}}}}]},
        "spec": {"replicas": replicas, "selector": {}, "template": {}}})
}

fn running_pod(ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "products-v2-writer-0"},
           "status": {"phase": "Running", "podIP": ip}})
}

fn condition(status: &Value, type_: &str) -> (String, String) {
    let c = status["conditions"].as_array().unwrap().iter().find(|c| c["type"] == type_).unwrap();
    (c["status"].as_str().unwrap().into(), c["reason"].as_str().unwrap().into())
}

/// What the previous reconcile wrote: phase, generation 1, the sealed facts.
fn stored_status(phase: &str) -> Value {
    json!({"phase": phase, "observedGeneration": 1, "vectorCount": 50000, "readyReplicas": 2,
           "searchSetting": "signscan quality=100"})
}

fn sealed() -> WriterState {
    WriterState::Sealed { count: 50000, setting: "signscan quality=100".into(), stored: None, sha256: None }
}

/// The NetworkPolicies and the writer's Service and StatefulSet, first on every reconcile
/// (until they are in their caches as applied).
async fn writer_applied(server: &mut common::ApiServer, ready: i32) {
    server.apply(WRITER_NP, Value::Null).await;
    server.apply(REPLICAS_NP, Value::Null).await;
    server.apply(WRITER_SVC, Value::Null).await;
    server.apply(WRITER_STS, json!({"replicas": 1, "readyReplicas": ready})).await;
}

async fn replicas_applied(server: &mut common::ApiServer, ready: i32) {
    server.apply(REPLICAS_SVC, Value::Null).await;
    server.apply(DEPLOYMENT, json!({"readyReplicas": ready})).await;
    server.apply(HPA, Value::Null).await;
    server.apply(PDB, Value::Null).await;
}

#[tokio::test]
async fn create_adds_the_finalizer_applies_the_writer_and_reports_pending() {
    let mut h = common::harness();
    let vc = collection(true, Value::Null);
    let expected = rendered(&vc);
    let action = run(reconcile(vc.clone(), h.ctx.clone()), async {
        let fin = h.server.expect("PATCH", VC, 200, serde_json::to_value(vc.as_ref()).unwrap()).await;
        assert_eq!(fin.body, json!({"metadata": {"finalizers": [FINALIZER], "resourceVersion": "7"}}));
        // No tokenSecret: the operator generates one, once (created, never applied over).
        h.server.expect("GET", &format!("{SECRETS}/products-v2-token"), 404, not_found()).await;
        let created = h.server.expect_with("POST", SECRETS, 201, |body| body.clone()).await;
        assert_eq!(created.body["metadata"]["name"], "products-v2-token");
        assert_eq!(created.body["metadata"]["ownerReferences"][0]["kind"], "VectorCollection");
        assert_eq!(created.body["immutable"], true);
        let token = created.body["data"]["token"].as_str().unwrap();
        let token = String::from_utf8(base64_decode(token)).unwrap();
        assert!(token.len() == 64 && token.chars().all(|c| c.is_ascii_hexdigit()), "{token}");
        assert!(created.uri.contains("fieldManager=quiver-operator"), "{}", created.uri);
        let np = h.server.apply(WRITER_NP, Value::Null).await;
        assert_eq!(np.body, serde_json::to_value(&expected.network_policies[0]).unwrap());
        h.server.apply(REPLICAS_NP, Value::Null).await;
        let svc = h.server.apply(WRITER_SVC, Value::Null).await;
        assert_eq!(svc.body, serde_json::to_value(&expected.writer_service).unwrap());
        let sts = h.server.apply(WRITER_STS, json!({"replicas": 1})).await;
        assert_eq!(sts.body, serde_json::to_value(&expected.writer).unwrap());
        h.server.expect("GET", EVENTS, 200, list("Event", vec![])).await;
        let status = status_patch(&mut h.server).await;
        assert_eq!(status.body["status"]["phase"], "Pending");
        assert_eq!(status.body["status"]["message"], "waiting for the writer");
        assert_eq!(status.body["status"]["observedGeneration"], 1);
        assert_eq!(condition(&status.body["status"], "Progressing"), ("True".into(), "Pending".into()));
        assert_eq!(condition(&status.body["status"], "Ready").0, "False");
        assert_eq!(condition(&status.body["status"], "Verified"), ("False".into(), "NotVerified".into()));
        let (reason, _) = h.server.event(NS).await;
        assert_eq!(reason, "Pending");
    })
    .await
    .unwrap();
    assert_eq!(action, kube::runtime::controller::Action::requeue(Duration::from_secs(10)));
    assert!(h.writer.asked.lock().unwrap().is_empty(), "no pod, no probe");
}

#[tokio::test]
async fn import_progress_is_read_from_the_writer_pod() {
    let mut h = harness();
    *h.writer.state.lock().unwrap() = Some(WriterState::Importing { rows: 1234 });
    let vc = collection(false, json!({"phase": "Pending", "observedGeneration": 1}));
    h.cache([running_pod("10.1.2.3")]);
    run(reconcile(vc, h.ctx.clone()), async {
        writer_applied(&mut h.server, 0).await;
        let status = status_patch(&mut h.server).await;
        assert_eq!(status.body["status"]["phase"], "Importing");
        assert_eq!(status.body["status"]["message"], "1234 vectors imported");
        let (reason, note) = h.server.event(NS).await;
        assert_eq!((reason.as_str(), note.as_str()), ("Importing", "Importing: 1234 vectors imported"));
    })
    .await
    .unwrap();
    assert_eq!(*h.writer.asked.lock().unwrap(), ["http://10.1.2.3:7700"]);
    assert_eq!(*h.writer.tokens.lock().unwrap(), [Some("generated-token".to_string())]);
}

#[tokio::test]
async fn the_writer_is_asked_with_the_collections_token() {
    let mut h = harness();
    *h.writer.state.lock().unwrap() = Some(WriterState::Importing { rows: 1 });
    let mut vc =
        (*collection(false, json!({"phase": "Importing", "observedGeneration": 1, "message": "1 vectors imported"})))
            .clone();
    vc.spec.token_secret = Some(serde_json::from_value(json!({"name": "quiver-token", "key": "token"})).unwrap());
    h.cache([running_pod("10.1.2.3")]);
    run(reconcile(Arc::new(vc), h.ctx.clone()), async {
        // A user's Secret is not in the cache (only generated ones are watched): read.
        let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "quiver-token"},
            "data": {"token": "czNjcmV0Cg=="}});
        h.server.expect("GET", "/api/v1/namespaces/search/secrets/quiver-token", 200, secret).await;
        writer_applied(&mut h.server, 0).await;
        // Conditions were never written for this stored status; the phase did not change: no event.
        let status = status_patch(&mut h.server).await;
        assert_eq!(status.body["status"]["phase"], "Importing");
    })
    .await
    .unwrap();
    assert_eq!(*h.writer.tokens.lock().unwrap(), [Some("s3cret".to_string())]);
}

#[tokio::test]
async fn a_crash_looping_writer_says_why_in_the_status() {
    let mut h = harness();
    let vc =
        collection(false, json!({"phase": "Pending", "observedGeneration": 1, "message": "waiting for the writer"}));
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "products-v2-writer-0"},
        "status": {"phase": "Running", "podIP": "10.1.2.3", "containerStatuses": [{
            "name": "quiver", "image": "quiver:test", "imageID": "", "ready": false, "restartCount": 4,
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
            "lastState": {"terminated": {"exitCode": 2, "message": "error: fetching https://data.example.com/x.npy: 404\n"}}}]}});
    h.cache([pod]);
    run(reconcile(vc, h.ctx.clone()), async {
        writer_applied(&mut h.server, 0).await;
        let status = status_patch(&mut h.server).await;
        assert_eq!(status.body["status"]["phase"], "Pending");
        assert_eq!(
            status.body["status"]["message"],
            "waiting for the writer: CrashLoopBackOff: error: fetching https://data.example.com/x.npy: 404"
        );
    })
    .await
    .unwrap();
    // It was asked (Running pod) and did not answer.
    assert_eq!(h.writer.asked.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn sealed_but_not_ready_writer_is_publishing_and_creates_no_replicas() {
    let mut h = harness();
    *h.writer.state.lock().unwrap() = Some(sealed());
    let vc = collection(false, json!({"phase": "Building", "observedGeneration": 1}));
    h.cache([running_pod("10.1.2.3")]);
    run(reconcile(vc, h.ctx.clone()), async {
        writer_applied(&mut h.server, 0).await;
        let status = status_patch(&mut h.server).await;
        assert_eq!(status.body["status"]["phase"], "Publishing");
        h.server.event(NS).await;
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_published_snapshot_brings_up_the_replicas() {
    let mut h = harness();
    *h.writer.state.lock().unwrap() = Some(sealed());
    let vc = collection(false, json!({"phase": "Publishing", "observedGeneration": 1}));
    let expected = rendered(&vc);
    // Still short of replicas: why the missing one is not ready (a pod of another collection,
    // stuck too, is not this one's).
    let stuck = |collection: &str| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("{collection}-replicas-abc"),
            "labels": {"quiver.dev/collection": collection, "quiver.dev/role": "replica"}},
        "status": {"containerStatuses": [{"name": "quiver", "image": "quiver:test", "imageID": "", "ready": false,
            "restartCount": 3, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": 2, "message": "snapshot sha256 mismatch"}}}]}})
    };
    let mut running = running_pod("10.1.2.9");
    running["metadata"] = json!({"name": "products-v2-replicas-9", "labels": {"quiver.dev/collection": "products-v2", "quiver.dev/role": "replica"}});
    h.cache([running_pod("10.1.2.3"), running, stuck("products-v1"), stuck("products-v2")]);
    run(reconcile(vc, h.ctx.clone()), async {
        writer_applied(&mut h.server, 1).await;
        let svc = h.server.apply(REPLICAS_SVC, Value::Null).await;
        assert_eq!(svc.body, serde_json::to_value(&expected.replicas_service).unwrap());
        let deployment = h.server.apply(DEPLOYMENT, json!({"readyReplicas": 1})).await;
        assert_eq!(deployment.body, serde_json::to_value(&expected.replicas).unwrap());
        let hpa = h.server.apply(HPA, Value::Null).await;
        assert_eq!(hpa.body, serde_json::to_value(expected.autoscaler.as_ref().unwrap()).unwrap());
        h.server.apply(PDB, Value::Null).await;
        let status = status_patch(&mut h.server).await;
        let status = &status.body["status"];
        assert_eq!(status["phase"], "Replicating");
        assert_eq!(
            status["message"],
            "1/2 replicas ready; replica products-v2-replicas-abc: CrashLoopBackOff: snapshot sha256 mismatch"
        );
        assert_eq!((status["vectorCount"].as_u64(), status["readyReplicas"].as_i64()), (Some(50000), Some(1)));
        assert_eq!(status["searchSetting"], "signscan quality=100");
        h.server.event(NS).await;
    })
    .await
    .unwrap();
}

/// A Ready collection short of a replica says why the replica is not ready (Degraded), as
/// while replicating: a replica that cannot restore (its store object gone, its key refused)
/// must not show only as a count.
#[tokio::test]
async fn a_ready_collection_short_of_a_replica_says_why() {
    let mut h = harness();
    let mut ready = stored_status("Ready");
    ready["verification"] =
        json!([{"name": "recall", "measured": 0.97, "comparison": ">=", "threshold": 0.95, "passed": true}]);
    let stuck = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "products-v2-replicas-abc",
            "labels": {"quiver.dev/collection": "products-v2", "quiver.dev/role": "replica"}},
        "status": {"containerStatuses": [{"name": "quiver", "image": "quiver:test", "imageID": "", "ready": false,
            "restartCount": 3, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": 1, "message": "no snapshot of products-v2 in the store (yet)"}}}]}});
    h.cache([running_pod("10.1.2.3"), stuck]);
    h.cache(jobs("Complete"));
    *h.writer.state.lock().unwrap() = Some(sealed());
    run(reconcile(collection(false, ready), h.ctx.clone()), async {
        writer_applied(&mut h.server, 1).await;
        replicas_applied(&mut h.server, 1).await;
        let status = status_patch(&mut h.server).await.body["status"].clone();
        assert_eq!(status["phase"], "Ready");
        let why = "replica products-v2-replicas-abc: CrashLoopBackOff: no snapshot of products-v2 in the store (yet)";
        assert!(status["message"].as_str().unwrap().ends_with(why), "{status}");
        assert_eq!(condition(&status, "Degraded"), ("True".into(), "ReplicasUnavailable".into()));
    })
    .await
    .unwrap();
}

/// `writer.afterPublish: Delete`: the writer's report that its snapshot landed in the store is
/// recorded in status; on the next pass the writer's StatefulSet (its pod, and its volume by
/// the retention policy) and Service are deleted, once, with an Event, and never applied
/// again, while the pipeline goes on to the warm-up without it.
#[tokio::test]
async fn a_published_writer_is_released_and_the_pipeline_goes_on_without_it() {
    use quiver_operator::crd::{AfterPublish, SnapshotsSpec, StoredSnapshot};
    let mut h = harness();
    let stored =
        StoredSnapshot { location: "s3://snapshots/search/products-v2".into(), sha256: "ab12".into(), bytes: 4096 };
    let sealed = WriterState::Sealed {
        count: 50000,
        setting: "signscan quality=100".into(),
        stored: Some(stored.clone()),
        sha256: None,
    };
    *h.writer.state.lock().unwrap() = Some(sealed);
    let releasing = |status: Value| {
        let mut vc = (*collection(false, status)).clone();
        vc.spec.snapshots = Some(SnapshotsSpec { store: "s3://snapshots".into(), ..Default::default() });
        vc.spec.writer.after_publish = Some(AfterPublish::Delete);
        Arc::new(vc)
    };
    h.cache([running_pod("10.1.2.3")]);
    let mut recorded = Value::Null;
    run(reconcile(releasing(json!({"phase": "Publishing", "observedGeneration": 1})), h.ctx.clone()), async {
        writer_applied(&mut h.server, 1).await;
        replicas_applied(&mut h.server, 1).await;
        let status = status_patch(&mut h.server).await;
        recorded = status.body["status"].clone();
        assert_eq!(recorded["phase"], "Replicating");
        assert_eq!(recorded["snapshot"], serde_json::to_value(&stored).unwrap());
        h.server.event(NS).await;
    })
    .await
    .unwrap();

    // Replicating, then warming up: the writer stays while the collection is not verified (a
    // failed verification keeps the writer's data to look at, and replicas may still need it).
    let vc = releasing(recorded);
    h.restatus("Deployment", "products-v2-replicas", json!({"readyReplicas": 2}));
    run(reconcile(vc.clone(), h.ctx.clone()), async {
        h.server.apply(&format!("{JOBS}/products-v2-warmup-g1"), Value::Null).await;
        let status = status_patch(&mut h.server).await;
        let status = &status.body["status"];
        assert_eq!(status["phase"], "WarmingUp");
        assert_eq!(condition(status, "WriterAvailable"), ("True".into(), "Sealed".into()));
        h.server.event(NS).await;
    })
    .await
    .unwrap();

    // Ready (verified) for this generation, and the writer reports now the snapshot status
    // recorded: the release is recorded first, nothing deleted yet.
    let mut ready = serde_json::to_value(vc.as_ref()).unwrap()["status"].clone();
    ready["phase"] = "Ready".into();
    ready["verification"] =
        json!([{"name": "recall", "measured": 0.97, "comparison": ">=", "threshold": 0.95, "passed": true}]);
    h.cache(jobs("Complete"));
    let mut released = Value::Null;
    let action = run(reconcile(releasing(ready), h.ctx.clone()), async {
        let status = status_patch(&mut h.server).await;
        released = status.body["status"].clone();
        assert_eq!(released["phase"], "Ready");
        assert_eq!(condition(&released, "WriterAvailable"), ("False".into(), "Released".into()));
        assert_eq!(released["snapshot"], serde_json::to_value(&stored).unwrap());
    })
    .await
    .unwrap();
    // Its own status write wakes no reconcile: the delete is asked for at the progress pace,
    // not a resync (300 s) later.
    assert_eq!(action, kube::runtime::controller::Action::requeue(Duration::from_secs(10)));

    // The next pass deletes the StatefulSet and Service the cache holds, by their uid.
    let vc = releasing(released);
    let expected = rendered(&vc);
    let action = run(reconcile(vc.clone(), h.ctx.clone()), async {
        // The API server answers a DELETE of an object with no finalizers left with the object
        // as it was, 200 (https://kubernetes.io/docs/reference/using-api/api-concepts/#deletion;
        // Background propagation adds none: the garbage collector deletes the pod afterwards).
        let sts = serde_json::to_value(&expected.writer).unwrap();
        let deleted = h.server.expect("DELETE", WRITER_STS, 200, sts.clone()).await;
        assert_eq!(deleted.body["propagationPolicy"], "Background");
        assert_eq!(deleted.body["preconditions"]["uid"], "00000000-0000-0000-0000-00000000beef");
        h.uncache(sts);
        let svc = serde_json::to_value(&expected.writer_service).unwrap();
        h.server.expect("DELETE", WRITER_SVC, 200, svc.clone()).await;
        h.uncache(svc);
        // Its NetworkPolicy too: left, it would select pods that no longer exist until the
        // collection is deleted.
        let np = serde_json::to_value(&expected.network_policies[0]).unwrap();
        h.server.expect("DELETE", WRITER_NP, 200, np.clone()).await;
        h.uncache(np);
        let (reason, note) = h.server.event(NS).await;
        assert_eq!(reason, "WriterReleased");
        assert!(note.contains("its snapshot is in s3://snapshots/search/products-v2"), "{note}");
    })
    .await
    .unwrap();
    // Nothing left to delete: back to the resync pace.
    assert_eq!(action, kube::runtime::controller::Action::requeue(Duration::from_secs(300)));
    // Gone from the caches: nothing is deleted or applied again, also after a spec change.
    let mut again = (*vc).clone();
    again.metadata.generation = Some(2);
    run(reconcile(Arc::new(again), h.ctx.clone()), async {
        h.server.apply(&format!("{JOBS}/products-v2-warmup-g2"), Value::Null).await;
        h.server.expect("DELETE", JOBS, 200, list("Job", vec![])).await;
        let status = status_patch(&mut h.server).await;
        assert_eq!(status.body["status"]["phase"], "WarmingUp");
        assert_eq!(condition(&status.body["status"], "WriterAvailable"), ("False".into(), "Released".into()));
        h.server.event_repeated(NS).await;
    })
    .await
    .unwrap();
}

/// A released writer's StatefulSet whose uid no longer matches (deleted and made again under its
/// name since the cache saw it) is not deleted, and that is no reconcile error: the release
/// goes on with the Service.
#[tokio::test]
async fn a_release_that_finds_another_object_under_the_writers_name_goes_on() {
    use quiver_operator::crd::{AfterPublish, SnapshotsSpec};
    let mut h = harness();
    let stored = json!({"location": "s3://snapshots/search/products-v2", "sha256": "ab12", "bytes": 4096});
    let released = json!({"phase": "Ready", "observedGeneration": 1, "vectorCount": 50000, "snapshot": stored,
        "conditions": [{"type": "WriterAvailable", "status": "False", "reason": "Released", "message": "",
            "lastTransitionTime": "2025-11-25T12:00:00Z", "observedGeneration": 1}]});
    let mut vc = (*collection(false, released)).clone();
    vc.spec.snapshots = Some(SnapshotsSpec { store: "s3://snapshots".into(), ..Default::default() });
    vc.spec.writer.after_publish = Some(AfterPublish::Delete);
    let vc = Arc::new(vc);
    let expected = rendered(&vc);
    let mut sts = serde_json::to_value(&expected.writer).unwrap();
    sts["metadata"]["uid"] = json!("00000000-0000-0000-0000-0000000000aa");
    let mut svc = serde_json::to_value(&expected.writer_service).unwrap();
    svc["metadata"]["uid"] = json!("00000000-0000-0000-0000-0000000000bb");
    let mut deployment = serde_json::to_value(&expected.replicas).unwrap();
    deployment["status"] = json!({"readyReplicas": 2});
    h.cache([sts.clone(), svc.clone(), deployment, running_pod("10.1.2.3")]);
    h.cache(jobs("Complete"));
    let result = run(reconcile(vc.clone(), h.ctx.clone()), async {
        // A failed uid precondition is a 409 Conflict (the storage layer's InvalidObjError
        // "Precondition failed: UID in precondition: ..., UID in object meta: ...", turned
        // into a Conflict by k8s.io/apiserver/pkg/storage/errors InterpretDeleteError).
        let message = "Operation cannot be fulfilled on statefulsets.apps \"products-v2-writer\": Precondition \
            failed: UID in precondition: 00000000-0000-0000-0000-0000000000aa, UID in object meta: \
            00000000-0000-0000-0000-0000000000cc";
        h.server.apply(REPLICAS_NP, Value::Null).await;
        h.server.expect("DELETE", WRITER_STS, 409, common::status(409, "Conflict", message)).await;
        // Read again: another uid under the name, so the writer meant is gone.
        let mut namesake = sts.clone();
        namesake["metadata"]["uid"] = json!("00000000-0000-0000-0000-0000000000cc");
        h.server.expect("GET", WRITER_STS, 200, namesake).await;
        h.server.expect("DELETE", WRITER_SVC, 200, svc.clone()).await;
        let (reason, _) = h.server.event(NS).await;
        assert_eq!(reason, "WriterReleased");
        replicas_applied(&mut h.server, 2).await;
        let status = status_patch(&mut h.server).await.body["status"].clone();
        assert_eq!(status["phase"], "Ready");
    })
    .await;
    assert!(result.is_ok(), "{result:?}");

    // Both gone already (404): nothing deleted by this pass, so no WriterReleased Event; and a
    // 409 under which the object read again is still the one meant is a conflict to retry.
    let mut h = harness();
    h.cache([serde_json::to_value(&expected.writer).unwrap(), svc.clone(), running_pod("10.1.2.3")]);
    let gone = |kind: &str| common::status(404, "NotFound", &format!("{kind} \"products-v2-writer\" not found"));
    let result = run(reconcile(vc.clone(), h.ctx.clone()), async {
        h.server.apply(REPLICAS_NP, Value::Null).await;
        h.server.expect("DELETE", WRITER_STS, 404, gone("statefulsets.apps")).await;
        h.server
            .expect("DELETE", WRITER_SVC, 409, common::status(409, "Conflict", "the object has been modified"))
            .await;
        h.server.expect("GET", WRITER_SVC, 200, svc.clone()).await;
        let (reason, _) = h.server.event(NS).await;
        assert_eq!(reason, "ReconcileError");
        status_patch(&mut h.server).await;
    })
    .await;
    assert!(result.unwrap_err().to_string().contains("the object has been modified"));

    // Both being deleted already (a deletionTimestamp: the DELETE went out, and a finalizer or
    // the garbage collector holds them; a DELETE again would answer 200): nothing is sent
    // again, and no second WriterReleased.
    let mut h = harness();
    let deleting = |mut object: Value| {
        object["metadata"]["deletionTimestamp"] = json!("2026-12-01T00:00:00Z");
        object
    };
    let mut deployment = serde_json::to_value(&expected.replicas).unwrap();
    deployment["status"] = json!({"readyReplicas": 2});
    h.cache([deleting(sts.clone()), deleting(svc.clone()), deployment, running_pod("10.1.2.3")]);
    h.cache(jobs("Complete"));
    let result = run(reconcile(vc.clone(), h.ctx.clone()), async {
        h.server.apply(REPLICAS_NP, Value::Null).await;
        replicas_applied(&mut h.server, 2).await;
        let status = status_patch(&mut h.server).await.body["status"].clone();
        assert_eq!(status["phase"], "Ready");
    })
    .await;
    assert!(result.is_ok(), "{result:?}");
}

/// A release the writer keeps the collection waiting for (it does not report its snapshot in
/// the store: an upload that keeps failing) says why in WriterAvailable and is looked at again
/// at the resync, not every few seconds for as long as it waits; the pass that turns the
/// collection Ready looks again soon, as the next one may release.
#[tokio::test]
async fn a_release_that_waits_on_the_writer_says_why_at_the_resync_pace() {
    use quiver_operator::crd::{AfterPublish, SnapshotsSpec};
    let mut h = harness();
    *h.writer.state.lock().unwrap() = Some(sealed());
    let waiting = |status: Value| {
        let mut vc = (*collection(false, status)).clone();
        vc.spec.snapshots = Some(SnapshotsSpec { store: "s3://snapshots".into(), ..Default::default() });
        vc.spec.writer.after_publish = Some(AfterPublish::Delete);
        Arc::new(vc)
    };
    verify_finished_cached(&h, "Complete", &report(0.97));
    let mut written = Value::Null;
    let action = run(reconcile(waiting(stored_status("Verifying")), h.ctx.clone()), async {
        written = verify_finished(&mut h).await;
        assert_eq!(written["phase"], "Ready");
        h.server.event(NS).await;
    })
    .await
    .unwrap();
    assert_eq!(action, kube::runtime::controller::Action::requeue(Duration::from_secs(10)));
    let action = run(reconcile(waiting(written.clone()), h.ctx.clone()), async {
        let status = status_patch(&mut h.server).await.body["status"].clone();
        let writer = status["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "WriterAvailable").unwrap();
        assert_eq!(writer["reason"], "Sealed");
        assert_eq!(
            writer["message"],
            "release waiting: the writer does not report its snapshot in s3://snapshots/search/products-v2 (yet)"
        );
    })
    .await
    .unwrap();
    assert_eq!(action, kube::runtime::controller::Action::requeue(Duration::from_secs(300)));
    // The upload lands: the pass that records it looks again soon (that pass may release),
    // not a resync later.
    let stored = quiver_operator::crd::StoredSnapshot {
        location: "s3://snapshots/search/products-v2".into(),
        sha256: "ab12".into(),
        bytes: 4096,
    };
    *h.writer.state.lock().unwrap() = Some(WriterState::Sealed {
        count: 50000,
        setting: "signscan quality=100".into(),
        stored: Some(stored),
        sha256: None,
    });
    let mut recorded = Value::Null;
    let action = run(reconcile(waiting(written.clone()), h.ctx.clone()), async {
        recorded = status_patch(&mut h.server).await.body["status"].clone();
    })
    .await
    .unwrap();
    assert_eq!(recorded["snapshot"]["sha256"], "ab12", "{recorded}");
    assert_eq!(action, kube::runtime::controller::Action::requeue(Duration::from_secs(10)));
}

/// A writer that reports another sealed snapshot than the one a Ready collection recorded (its
/// volume was lost and it imported again) does not move the replicas: they stay pinned to the
/// recorded sha256 (through their environment), the verified facts stay, and WriterAvailable
/// says why.
#[tokio::test]
async fn replicas_stay_pinned_to_the_snapshot_first_sealed() {
    let mut h = harness();
    let (pinned, other) = ("aa".repeat(32), "bb".repeat(32));
    *h.writer.state.lock().unwrap() = Some(WriterState::Sealed {
        count: 60000,
        setting: "signscan quality=300".into(),
        stored: None,
        sha256: Some(other.clone()),
    });
    h.cache([running_pod("10.1.2.3")]);
    h.cache(jobs("Complete"));
    let mut status = stored_status("Ready");
    status["sealedSha256"] = json!(pinned);
    let vc = collection(false, status);
    let mut written = Value::Null;
    run(reconcile(vc, h.ctx.clone()), async {
        writer_applied(&mut h.server, 1).await;
        h.server.apply(REPLICAS_SVC, Value::Null).await;
        let deployment = h.server.apply(DEPLOYMENT, json!({"readyReplicas": 2})).await;
        let env = deployment.body["spec"]["template"]["spec"]["containers"][0]["env"].clone();
        let env = env.as_array().cloned().unwrap_or_default();
        let pin = env.iter().find(|e| e["name"] == "QUIVER_SNAPSHOT_SHA256").expect("pinned");
        assert_eq!(pin["value"], json!(pinned));
        assert_eq!(deployment.body["metadata"]["annotations"], json!({"quiver.dev/pinned-at-retry": ""}));
        h.server.apply(HPA, Value::Null).await;
        h.server.apply(PDB, Value::Null).await;
        let status = status_patch(&mut h.server).await.body["status"].clone();
        written = status.clone();
        assert_eq!((status["phase"].as_str(), status["vectorCount"].as_u64()), (Some("Ready"), Some(50000)));
        assert_eq!(status["sealedSha256"], json!(pinned));
        let writer = status["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "WriterAvailable").unwrap();
        let message = writer["message"].as_str().unwrap();
        assert!(message.contains(&format!("sha256 {other}, not the {pinned}")), "{message}");
    })
    .await
    .unwrap();

    // A CRD older than the field prunes it from the status: with the writer away, the pin the
    // live Deployment has stays (no apply, no rollout), where it would otherwise be dropped.
    let mut pruned = written;
    pruned.as_object_mut().unwrap().remove("sealedSha256");
    pruned.as_object_mut().unwrap().remove("verifiedSha256");
    *h.writer.state.lock().unwrap() = Some(WriterState::Unavailable);
    run(reconcile(collection(false, pruned.clone()), h.ctx.clone()), async {
        let status = status_patch(&mut h.server).await.body["status"].clone();
        assert_eq!((status["phase"].as_str(), status["sealedSha256"].as_str()), (Some("Ready"), Some(&*pinned)));
    })
    .await
    .unwrap();
    // With that pruned status, the writer back with other data: the live pin is the one the
    // writer is held to, as with the field in status (no apply, the message names both).
    *h.writer.state.lock().unwrap() = Some(WriterState::Sealed {
        count: 60000,
        setting: "signscan quality=300".into(),
        stored: None,
        sha256: Some(other.clone()),
    });
    run(reconcile(collection(false, pruned), h.ctx.clone()), async {
        token_read(&mut h.server).await;
        let status = status_patch(&mut h.server).await.body["status"].clone();
        assert_eq!((status["phase"].as_str(), status["vectorCount"].as_u64()), (Some("Ready"), Some(50000)));
        assert_eq!(status["sealedSha256"].as_str(), Some(&*pinned));
        let writer = status["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "WriterAvailable").unwrap();
        let message = writer["message"].as_str().unwrap();
        assert!(message.contains(&format!("sha256 {other}, not the {pinned}")), "{message}");
    })
    .await
    .unwrap();
    // Retried since the Deployment was pinned (the retry cleared the pin and the writer
    // started over), and sealed by an engine that reports no sha256: the old pin is not the
    // collection's any more, and goes.
    *h.writer.state.lock().unwrap() =
        Some(WriterState::Sealed { count: 60000, setting: "signscan quality=300".into(), stored: None, sha256: None });
    let mut retried = (*collection(false, json!({"phase": "Pending", "observedGeneration": 1}))).clone();
    retried.metadata.annotations =
        Some([("quiver.dev/retry".to_string(), "2".into()), ("quiver.dev/retried".to_string(), "2".into())].into());
    run(reconcile(Arc::new(retried), h.ctx.clone()), async {
        let deployment = h.server.apply(DEPLOYMENT, json!({"readyReplicas": 0})).await;
        let env = deployment.body["spec"]["template"]["spec"]["containers"][0]["env"].clone();
        assert!(env.as_array().into_iter().flatten().all(|e| e["name"] != "QUIVER_SNAPSHOT_SHA256"), "unpinned: {env}");
        assert_eq!(deployment.body["metadata"].get("annotations"), None);
        let status = status_patch(&mut h.server).await.body["status"].clone();
        assert_eq!((status["phase"].as_str(), status.get("sealedSha256")), (Some("Replicating"), None));
        h.server.event(NS).await;
    })
    .await
    .unwrap();
    // A namesake's Deployment (deleted with --cascade=orphan) pins nothing of this collection.
    h.cache([json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "products-v2-replicas", "annotations": {"quiver.dev/pinned-at-retry": ""},
            "ownerReferences": [{"apiVersion": "quiver.dev/v1alpha1", "kind": "VectorCollection", "name": "products-v2",
                "uid": "c0ffee00-0000-4000-8000-0000000000ff", "controller": true}]},
        "spec": {"selector": {}, "template": {"spec": {"containers": [{"name": "quiver",
            "env": [{"name": "QUIVER_SNAPSHOT_SHA256", "value": pinned}]}]}}}})]);
    *h.writer.state.lock().unwrap() = Some(WriterState::Sealed {
        count: 60000,
        setting: "signscan quality=300".into(),
        stored: None,
        sha256: Some(other.clone()),
    });
    run(reconcile(collection(false, json!({"phase": "Pending", "observedGeneration": 1})), h.ctx.clone()), async {
        let deployment = h.server.apply(DEPLOYMENT, json!({"readyReplicas": 0})).await;
        let env = deployment.body["spec"]["template"]["spec"]["containers"][0]["env"].clone();
        let pin = env.as_array().into_iter().flatten().find(|e| e["name"] == "QUIVER_SNAPSHOT_SHA256").cloned();
        assert_eq!(pin.map(|p| p["value"].clone()), Some(json!(other)), "its own writer's seal: {env}");
        let status = status_patch(&mut h.server).await.body["status"].clone();
        assert_eq!((status["phase"].as_str(), status["sealedSha256"].as_str()), (Some("Replicating"), Some(&*other)));
        h.server.event_repeated(NS).await;
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn ready_replicas_start_the_warmup_job_once() {
    let mut h = harness();
    // The writer pod is gone: the stored seal carries the pipeline on.
    let vc = collection(false, stored_status("Replicating"));
    let expected = rendered(&vc);
    run(reconcile(vc, h.ctx.clone()), async {
        writer_applied(&mut h.server, 0).await;
        h.server.expect("GET", EVENTS, 200, list("Event", vec![])).await;
        replicas_applied(&mut h.server, 2).await;
        let job = h.server.apply(&format!("{JOBS}/products-v2-warmup-g1"), Value::Null).await;
        assert_eq!(job.body, serde_json::to_value(&expected.warmup).unwrap());
        let status = status_patch(&mut h.server).await;
        assert_eq!(status.body["status"]["phase"], "WarmingUp");
        h.server.event(NS).await;
    })
    .await
    .unwrap();
}

fn job(name: &str, condition: &str) -> Value {
    json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
           "status": {"conditions": [{"type": condition, "status": "True"}]}})
}

/// This generation's warm-up Job complete and its verify Job in `verify`.
fn jobs(verify: &str) -> [Value; 2] {
    [job("products-v2-warmup-g1", "Complete"), job("products-v2-verify-g1", verify)]
}

/// The pod of `job` that ended with `message`.
fn job_pod(job: &str, message: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("{job}-x"),
        "labels": {"batch.kubernetes.io/job-name": job}}, "status": {"containerStatuses": [{
        "name": "quiver", "image": "quiver:test", "imageID": "", "ready": false, "restartCount": 0,
        "state": {"terminated": {"exitCode": 0, "message": message, "finishedAt": "2025-11-25T11:59:00Z"}}}]}})
}

fn report(recall: f64) -> String {
    json!({"collection": "products-v2", "passed": recall >= 0.95, "setting": "signscan quality=100",
           "queries": 200, "k": 10, "gates": [
        {"name": "count", "measured": 50000.0, "comparison": "==", "threshold": 50000.0, "passed": true, "margin": 0.0},
        {"name": "recall", "measured": recall, "comparison": ">=", "threshold": 0.95, "passed": recall >= 0.95,
         "margin": recall - 0.95}]})
    .to_string()
}

/// The reconcile of a collection whose verify Job ended in `verify` with `message`: the
/// pods and Jobs are in their caches (the report is read from the verify Job's pod, not the
/// warm-up's).
fn verify_finished_cached(h: &common::Harness, verify: &str, message: &str) {
    h.cache([running_pod("10.1.2.3")]);
    h.cache(jobs(verify));
    h.cache([job_pod("products-v2-warmup-g1", "warmed up"), job_pod("products-v2-verify-g1", message)]);
}

async fn verify_finished(h: &mut common::Harness) -> Value {
    writer_applied(&mut h.server, 1).await;
    replicas_applied(&mut h.server, 2).await;
    let status = status_patch(&mut h.server).await;
    status.body["status"].clone()
}

#[tokio::test]
async fn passing_verification_makes_the_collection_ready_and_verified() {
    let mut h = harness();
    *h.writer.state.lock().unwrap() = Some(sealed());
    let vc = collection(false, stored_status("Verifying"));
    verify_finished_cached(&h, "Complete", &report(0.97));
    let action = run(reconcile(vc, h.ctx.clone()), async {
        let status = verify_finished(&mut h).await;
        assert_eq!(status["phase"], "Ready");
        assert_eq!(condition(&status, "Ready"), ("True".into(), "Ready".into()));
        assert_eq!(condition(&status, "Verified"), ("True".into(), "GatesPassed".into()));
        assert_eq!(condition(&status, "Progressing").0, "False");
        assert_eq!(condition(&status, "Degraded"), ("False".into(), "AsExpected".into()));
        assert_eq!(
            status["verification"][1],
            json!({"name": "recall", "measured": 0.97, "comparison": ">=",
            "threshold": 0.95, "passed": true})
        );
        assert_eq!(h.server.event(NS).await.0, "Ready");
    })
    .await
    .unwrap();
    assert_eq!(action, kube::runtime::controller::Action::requeue(Duration::from_secs(300)));
}

/// A verify Job whose pod cannot start (its database Secret is missing) says so in status,
/// rather than showing Verifying until the Job's deadline.
#[tokio::test]
async fn a_verify_job_that_cannot_start_says_why() {
    let mut h = harness();
    *h.writer.state.lock().unwrap() = Some(sealed());
    let vc = collection(false, stored_status("Verifying"));
    h.cache([running_pod("10.1.2.3")]);
    h.cache(jobs("Suspended"));
    // As the kubelet reports a secretKeyRef to a missing Secret (pkg/kubelet/kuberuntime:
    // CreateContainerConfigError with the lookup's error as the message).
    h.cache([json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "products-v2-verify-g1-x",
        "labels": {"batch.kubernetes.io/job-name": "products-v2-verify-g1"}}, "status": {"containerStatuses": [{
        "name": "quiver", "image": "quiver:test", "imageID": "", "ready": false, "restartCount": 0,
        "state": {"waiting": {"reason": "CreateContainerConfigError", "message": "secret \"product-db\" not found"}}}]}})]);
    run(reconcile(vc, h.ctx.clone()), async {
        let status = verify_finished(&mut h).await;
        assert_eq!(status["phase"], "Verifying");
        assert_eq!(
            status["message"],
            "products-v2-verify-g1: CreateContainerConfigError: secret \"product-db\" not found"
        );
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn failed_verification_fails_the_collection_naming_the_gate() {
    let mut h = harness();
    *h.writer.state.lock().unwrap() = Some(sealed());
    let vc = collection(false, stored_status("Verifying"));
    verify_finished_cached(&h, "Failed", &report(0.81));
    run(reconcile(vc, h.ctx.clone()), async {
        let status = verify_finished(&mut h).await;
        assert_eq!(status["phase"], "Failed");
        assert_eq!(status["message"], "verification failed: recall measured 0.81 (needs >= 0.95)");
        assert_eq!(condition(&status, "Verified"), ("False".into(), "GatesFailed".into()));
        assert_eq!(condition(&status, "Degraded"), ("True".into(), "Failed".into()));
        assert_eq!(status["verification"][1]["passed"], false);
        let (reason, note) = h.server.event(NS).await;
        assert_eq!(reason, "Failed");
        assert!(note.contains("recall measured 0.81"), "{note}");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_settled_collection_writes_nothing_but_its_owned_objects() {
    let mut h = harness();
    *h.writer.state.lock().unwrap() = Some(sealed());
    // First reconcile: Verifying -> Ready; its status becomes the stored one.
    let vc = collection(false, stored_status("Verifying"));
    let mut written = Value::Null;
    verify_finished_cached(&h, "Complete", &report(0.97));
    run(reconcile(vc, h.ctx.clone()), async {
        written = verify_finished(&mut h).await;
        h.server.event(NS).await;
    })
    .await
    .unwrap();
    // Second reconcile of the same state: every object is in its cache as it was applied, so
    // not one request: no apply, no read, no status patch or event (no hot loop through our
    // own writes, nothing per collection at steady state).
    let vc = collection(false, written);
    run(reconcile(vc, h.ctx.clone()), async {}).await.unwrap();
    let metrics = h.ctx.metrics.render();
    assert!(metrics.contains("quiver_operator_applies_total{kind=\"StatefulSet\",result=\"skipped\"} 1"), "{metrics}");
}

#[tokio::test]
async fn a_ready_collection_losing_a_replica_stays_ready_degraded_and_keeps_its_verification() {
    let mut h = harness();
    *h.writer.state.lock().unwrap() = Some(sealed());
    let mut ready = stored_status("Ready");
    ready["verification"] =
        json!([{"name": "recall", "measured": 0.97, "comparison": ">=", "threshold": 0.95, "passed": true}]);
    h.cache([running_pod("10.1.2.3")]);
    run(reconcile(collection(false, ready), h.ctx.clone()), async {
        writer_applied(&mut h.server, 1).await;
        replicas_applied(&mut h.server, 1).await;
        let status = status_patch(&mut h.server).await.body["status"].clone();
        assert_eq!(status["phase"], "Ready");
        assert_eq!(status["message"], "1/2 replicas ready");
        assert_eq!(status["verification"][0]["measured"], 0.97);
        assert_eq!(condition(&status, "Degraded"), ("True".into(), "ReplicasUnavailable".into()));
        assert_eq!(condition(&status, "Verified").0, "True");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_new_generation_restarts_the_pipeline_and_removes_old_jobs() {
    let mut h = harness();
    let mut vc = (*collection(false, stored_status("Ready"))).clone();
    vc.metadata.generation = Some(2);
    run(reconcile(Arc::new(vc), h.ctx.clone()), async {
        writer_applied(&mut h.server, 0).await;
        h.server.expect("GET", EVENTS, 200, list("Event", vec![])).await;
        let delete = h.server.expect("DELETE", JOBS, 200, list("Job", vec![])).await;
        assert!(
            delete.uri.contains("labelSelector=quiver.dev%2Fcollection%3Dproducts-v2%2Cquiver.dev%2Frole+in+%28warmup%2Cverify%29%2Cquiver.dev%2Fgeneration%21%3D2"),
            "{}",
            delete.uri
        );
        let status = status_patch(&mut h.server).await;
        assert_eq!(status.body["status"]["phase"], "Pending");
        assert_eq!(status.body["status"]["observedGeneration"], 2);
        assert_eq!(condition(&status.body["status"], "Verified").0, "False");
        h.server.event(NS).await;
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn turning_autoscaling_off_deletes_the_autoscaler() {
    let mut h = harness();
    let mut vc = (*collection(false, stored_status("Ready"))).clone();
    vc.metadata.generation = Some(2);
    vc.spec.replicas = serde_json::from_value(json!({"count": 3})).unwrap();
    // The autoscaler made while autoscaling was on.
    h.cache([json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "products-v2-replicas"}, "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "products-v2-replicas"}, "maxReplicas": 4}})]);
    run(reconcile(Arc::new(vc), h.ctx.clone()), async {
        writer_applied(&mut h.server, 0).await;
        h.server.expect("GET", EVENTS, 200, list("Event", vec![])).await;
        h.server.expect("DELETE", JOBS, 200, list("Job", vec![])).await;
        let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Success"});
        let delete = h.server.expect("DELETE", HPA, 200, status).await;
        assert_eq!(delete.body["propagationPolicy"], "Background");
        status_patch(&mut h.server).await;
        h.server.event(NS).await;
    })
    .await
    .unwrap();
}

fn deleting() -> Arc<VectorCollection> {
    let mut vc = (*collection(false, stored_status("Ready"))).clone();
    vc.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(common::now()));
    Arc::new(vc)
}

fn alias(name: &str, spec: &str, current: &str) -> Value {
    json!({"apiVersion": "quiver.dev/v1alpha1", "kind": "CollectionAlias", "metadata": {"name": name, "namespace": NS},
           "spec": {"collection": spec}, "status": {"current": current}})
}

#[tokio::test]
async fn deletion_is_refused_while_an_alias_serves_the_collection() {
    let mut h = harness();
    h.cache([alias("products", "products-v3", "products-v2"), alias("other", "x", "x")]);
    let action = run(reconcile(deleting(), h.ctx.clone()), async {
        let (reason, note) = h.server.event(NS).await;
        assert_eq!(reason, "DeletionBlocked");
        assert_eq!(note, "deletion waits: alias products points at this collection");
        let status = status_patch(&mut h.server).await;
        assert_eq!(condition(&status.body["status"], "DeletionBlocked"), ("True".into(), "AliasPointsHere".into()));
    })
    .await
    .unwrap();
    assert_eq!(action, kube::runtime::controller::Action::requeue(Duration::from_secs(30)));
}

#[tokio::test]
async fn deletion_is_refused_while_an_alias_keeps_the_collection_for_a_rollback() {
    let mut h = harness();
    let mut rolled = alias("products", "products-v3", "products-v3");
    rolled["status"]["previous"] = json!("products-v2");
    h.cache([rolled]);
    run(reconcile(deleting(), h.ctx.clone()), async {
        let (reason, note) = h.server.event(NS).await;
        assert_eq!(
            (reason.as_str(), note.as_str()),
            ("DeletionBlocked", "deletion waits: alias products points at this collection")
        );
        status_patch(&mut h.server).await;
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn deletion_proceeds_once_no_alias_points_at_the_collection() {
    let mut h = harness();
    // An alias of another name in another namespace does not hold it either.
    let mut elsewhere = alias("products", "products-v2", "products-v2");
    elsewhere["metadata"]["namespace"] = json!("staging");
    h.cache([alias("other", "x", "x"), elsewhere]);
    run(reconcile(deleting(), h.ctx.clone()), async {
        let patch = h.server.expect("PATCH", VC, 200, stored_object()).await;
        assert_eq!(patch.body, json!({"metadata": {"finalizers": [], "resourceVersion": "7"}}));
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn api_errors_back_off_exponentially_and_are_counted() {
    use quiver_operator::controller::collection::error_policy;
    let mut h = harness();
    let vc = collection(false, stored_status("Ready"));
    for expected in [5, 10, 20] {
        let error = run(reconcile(vc.clone(), h.ctx.clone()), async {
            let failure = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "InternalError",
                "code": 500, "message": "etcd timeout"});
            h.server.expect("PATCH", WRITER_NP, 500, failure.clone()).await;
            // The API server is failing: reporting the error fails too, and is not fatal.
            h.server.expect("POST", "/apis/events.k8s.io/v1/namespaces/search/events", 500, failure.clone()).await;
            h.server.expect("PATCH", &format!("{VC}/status"), 500, failure).await;
        })
        .await
        .unwrap_err();
        assert!(error.to_string().contains("etcd timeout"), "{error}");
        let action = error_policy(vc.clone(), &error, h.ctx.clone());
        assert_eq!(action, kube::runtime::controller::Action::requeue(Duration::from_secs(expected)));
    }
    let metrics = h.ctx.metrics.render();
    assert!(
        metrics.contains("quiver_operator_reconcile_errors_total{controller=\"collection\",error=\"kube\"} 3"),
        "{metrics}"
    );
    assert!(metrics.contains("quiver_operator_reconciles_total{controller=\"collection\"} 3"), "{metrics}");
}

#[tokio::test]
async fn a_refused_apply_reaches_the_user_as_an_event_and_ready_false() {
    let mut h = harness();
    let vc = collection(false, stored_status("Importing"));
    let error = run(reconcile(vc.clone(), h.ctx.clone()), async {
        h.server.apply(WRITER_NP, Value::Null).await;
        h.server.apply(REPLICAS_NP, Value::Null).await;
        h.server.apply(WRITER_SVC, Value::Null).await;
        // As the API server words a field error (apimachinery `errors.NewInvalid`: `<Kind>.<group>
        // "<name>" is invalid: <field>: Invalid value: ...`), HTTP 422, reason Invalid.
        let message = "StatefulSet.apps \"products-v2-writer\" is invalid: spec.template.spec.containers[0].resources.requests: Invalid value: \"4\": must be less than or equal to cpu limit of 2";
        h.server.expect("PATCH", WRITER_STS, 422, common::status(422, "Invalid", message)).await;
        let (reason, note) = h.server.event(NS).await;
        assert_eq!(reason, "ReconcileError");
        assert!(note.contains("must be less than or equal to cpu limit of 2"), "{note}");
        let status = status_patch(&mut h.server).await.body["status"].clone();
        assert_eq!(condition(&status, "Ready"), ("False".into(), "ReconcileError".into()));
        let ready = status["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap().clone();
        assert!(ready["message"].as_str().unwrap().contains("is invalid: spec.template"), "{ready}");
        // What the last successful reconcile found stays.
        assert_eq!((status["phase"].as_str(), status["vectorCount"].as_u64()), (Some("Importing"), Some(50000)));
    })
    .await
    .unwrap_err();
    assert!(error.to_string().contains("is invalid"), "{error}");

    // Reported once: the retry with the same error (status now says it) adds neither.
    let mut reported = serde_json::to_value(vc.as_ref()).unwrap();
    let message = format!("{error}");
    reported["status"]["conditions"] = json!([{"type": "Ready", "status": "False", "reason": "ReconcileError",
        "message": message, "observedGeneration": 1, "lastTransitionTime": "2025-11-25T12:00:00Z"}]);
    let reported: Arc<VectorCollection> = Arc::new(serde_json::from_value(reported).unwrap());
    run(reconcile(reported, h.ctx.clone()), async {
        // Applied as before: in their caches, not sent again.
        let message = "StatefulSet.apps \"products-v2-writer\" is invalid: spec.template.spec.containers[0].resources.requests: Invalid value: \"4\": must be less than or equal to cpu limit of 2";
        h.server.expect("PATCH", WRITER_STS, 422, common::status(422, "Invalid", message)).await;
    })
    .await
    .unwrap_err();
}

/// A collection that asks for the node's identity on object storage, under an operator not
/// installed to allow it: no pod is made (not even the writer's Service), and the user reads
/// which field in a Warning Event and `Ready=False`.
#[tokio::test]
async fn the_nodes_identity_is_refused_unless_the_operator_allows_it() {
    for (field, ambient) in [
        ("spec.source.ambientCredentials", json!({"source": {"url": "s3://etl/a.npy", "ambientCredentials": true}})),
        (
            "spec.snapshots.ambientCredentials",
            json!({"snapshots": {"store": "s3://snapshots", "ambientCredentials": true}}),
        ),
    ] {
        let mut vc = serde_json::to_value(collection(false, Value::Null).as_ref()).unwrap();
        for (key, value) in ambient.as_object().unwrap() {
            vc["spec"][key] = value.clone();
        }
        let vc: Arc<VectorCollection> = Arc::new(serde_json::from_value(vc).unwrap());
        let mut h = harness();
        let error = run(reconcile(vc.clone(), h.ctx.clone()), async {
            let (reason, note) = h.server.event(NS).await;
            assert_eq!(reason, "ReconcileError");
            assert!(note.starts_with(&format!("{field} is true")), "{note}");
            let status = status_patch(&mut h.server).await.body["status"].clone();
            assert_eq!(condition(&status, "Ready"), ("False".into(), "ReconcileError".into()));
        })
        .await
        .unwrap_err();
        assert!(error.to_string().contains("objectStore.allowAmbientCredentials=true"), "{error}");

        // Allowed by the operator's admin: the pipeline starts as for any collection.
        let allowing = Defaults { image: "quiver:test".into(), allow_ambient_credentials: true, ..Default::default() };
        let mut h = common::harness_with(allowing.clone());
        run(reconcile(vc.clone(), h.ctx.clone()), async {
            // Its first step: reading its token (a failure here ends the pass).
            let token = "/api/v1/namespaces/search/secrets/products-v2-token";
            h.server.expect("GET", token, 500, common::status(500, "InternalError", "stop here")).await;
            h.server.event(NS).await;
            status_patch(&mut h.server).await;
        })
        .await
        .unwrap_err();

        // Allowed once, withdrawn since (the operator reinstalled without it): the writer and
        // replicas made under the grant lose it, and the Ready collection says Ready=False, not
        // merely Degraded: its spec is not run as asked.
        let granted = CollectionObjects::render(&vc, &allowing);
        let args = |template: &Value| template["spec"]["containers"][0]["args"].as_array().unwrap().clone();
        let has_flag = |args: &[Value]| args.iter().any(|a| a == "--ambient-credentials");
        let writer = serde_json::to_value(&granted.writer).unwrap();
        let deployment = serde_json::to_value(&granted.replicas).unwrap();
        assert!(has_flag(&args(&writer["spec"]["template"])) || field.starts_with("spec.snapshots"));
        let mut ready = serde_json::to_value(vc.as_ref()).unwrap();
        ready["status"] = json!({"phase": "Ready", "observedGeneration": 1});
        let ready: Arc<VectorCollection> = Arc::new(serde_json::from_value(ready).unwrap());
        let mut h = harness();
        h.cache([writer.clone(), deployment.clone()]);
        run(reconcile(ready, h.ctx.clone()), async {
            let applied = h.server.apply(WRITER_STS, Value::Null).await;
            assert!(!has_flag(&args(&applied.body["spec"]["template"])), "{}", applied.body);
            if has_flag(&args(&deployment["spec"]["template"])) {
                let applied = h.server.apply(DEPLOYMENT, Value::Null).await;
                assert!(!has_flag(&args(&applied.body["spec"]["template"])), "{}", applied.body);
            }
            h.server.event(NS).await;
            let status = status_patch(&mut h.server).await.body["status"].clone();
            assert_eq!(condition(&status, "Ready"), ("False".into(), "ReconcileError".into()));
        })
        .await
        .unwrap_err();
    }
}

/// The grant withdrawn from a collection whose writer is released: the writer is not applied
/// again (an apply makes what is missing, so a cache still holding the deleted writer would
/// make a new one, which imports anew), and its release goes on in the refused pass.
#[tokio::test]
async fn a_withdrawn_grant_does_not_bring_back_a_released_writer() {
    let stored = json!({"location": "s3://snapshots/search/products-v2", "sha256": "ab12", "bytes": 4096});
    let released = json!({"phase": "Ready", "observedGeneration": 1, "vectorCount": 50000, "snapshot": stored,
        "conditions": [{"type": "WriterAvailable", "status": "False", "reason": "Released", "message": "",
            "lastTransitionTime": "2025-11-25T12:00:00Z", "observedGeneration": 1}]});
    let mut vc = serde_json::to_value(collection(false, released).as_ref()).unwrap();
    vc["spec"]["snapshots"] = json!({"store": "s3://snapshots", "ambientCredentials": true});
    vc["spec"]["writer"]["afterPublish"] = json!("Delete");
    let vc: Arc<VectorCollection> = Arc::new(serde_json::from_value(vc).unwrap());
    let allowing = Defaults { image: "quiver:test".into(), allow_ambient_credentials: true, ..Default::default() };
    let granted = CollectionObjects::render(&vc, &allowing);
    let mut writer = serde_json::to_value(&granted.writer).unwrap();
    writer["metadata"]["uid"] = json!("00000000-0000-0000-0000-0000000000aa");
    let deployment = serde_json::to_value(&granted.replicas).unwrap();
    let has_flag = |object: &Value| {
        object["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "--ambient-credentials")
    };
    let mut h = harness();
    h.cache([writer.clone(), deployment.clone()]);
    let error = run(reconcile(vc, h.ctx.clone()), async {
        let deleted = h.server.expect("DELETE", WRITER_STS, 200, writer.clone()).await;
        assert_eq!(deleted.body["preconditions"]["uid"], "00000000-0000-0000-0000-0000000000aa");
        assert_eq!(h.server.event(NS).await.0, "WriterReleased");
        if has_flag(&deployment) {
            let applied = h.server.apply(DEPLOYMENT, Value::Null).await;
            assert!(!has_flag(&applied.body), "{}", applied.body);
        }
        assert_eq!(h.server.event(NS).await.0, "ReconcileError");
        let status = status_patch(&mut h.server).await.body["status"].clone();
        assert_eq!(condition(&status, "Ready"), ("False".into(), "ReconcileError".into()));
    })
    .await
    .unwrap_err();
    assert!(error.to_string().contains("spec.snapshots.ambientCredentials"), "{error}");
}

#[tokio::test]
async fn a_token_secret_deleted_under_a_writer_that_stopped_answering_is_made_again() {
    let mut h = harness();
    let vc =
        collection(false, json!({"phase": "Pending", "observedGeneration": 1, "message": "waiting for the writer"}));
    // The writer pod cannot start (its Secret was deleted: it cannot mount it): no answer, so
    // the remembered token is not trusted any more.
    run(reconcile(vc.clone(), h.ctx.clone()), async {
        writer_applied(&mut h.server, 0).await;
        h.server.expect("GET", EVENTS, 200, list("Event", vec![])).await;
        status_patch(&mut h.server).await;
    })
    .await
    .unwrap();
    run(reconcile(vc, h.ctx.clone()), async {
        h.server.expect("GET", &format!("{SECRETS}/products-v2-token"), 404, not_found()).await;
        let created = h.server.expect_with("POST", SECRETS, 201, |body| body.clone()).await;
        assert_eq!(created.body["metadata"]["name"], "products-v2-token");
        h.server.expect("GET", EVENTS, 200, list("Event", vec![])).await;
        status_patch(&mut h.server).await;
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_token_secret_left_by_a_deleted_namesake_is_not_used() {
    let mut h = common::harness();
    let vc =
        collection(false, json!({"phase": "Pending", "observedGeneration": 1, "message": "waiting for the writer"}));
    let mut theirs = token_secret();
    theirs["metadata"]["ownerReferences"][0]["uid"] = json!("deadbeef-0000-4000-8000-000000000009");
    run(reconcile(vc, h.ctx.clone()), async {
        h.server.expect("GET", &format!("{SECRETS}/products-v2-token"), 200, theirs.clone()).await;
        // Not this collection's: made anew once the garbage collector took the old one.
        let exists = common::status(409, "AlreadyExists", "secrets \"products-v2-token\" already exists");
        h.server.expect("POST", SECRETS, 409, exists).await;
        h.server.expect("GET", &format!("{SECRETS}/products-v2-token"), 200, theirs).await;
        writer_applied(&mut h.server, 0).await;
        h.server.expect("GET", EVENTS, 200, list("Event", vec![])).await;
        status_patch(&mut h.server).await;
    })
    .await
    .unwrap();
    assert_eq!(h.ctx.caches.tokens.get(NS, "products-v2-token", "token"), None);
}

#[tokio::test]
async fn a_refused_apply_on_a_ready_collection_degrades_it_and_leaves_it_ready() {
    let mut h = harness();
    let mut ready = stored_status("Ready");
    ready["conditions"] = json!([
        {"type": "Ready", "status": "True", "reason": "Ready", "message": "", "observedGeneration": 1,
         "lastTransitionTime": "2025-11-25T11:00:00Z"},
        {"type": "Degraded", "status": "False", "reason": "AsExpected", "message": "", "observedGeneration": 1,
         "lastTransitionTime": "2025-11-25T11:00:00Z"}]);
    let error = run(reconcile(collection(false, ready), h.ctx.clone()), async {
        let message = "networkpolicies.networking.k8s.io \"products-v2-writer\" is forbidden: exceeded quota: policies";
        h.server.expect("PATCH", WRITER_NP, 403, common::status(403, "Forbidden", message)).await;
        assert_eq!(h.server.event(NS).await.0, "ReconcileError");
        let status = status_patch(&mut h.server).await.body["status"].clone();
        // Its replicas still serve what was verified: an alias keeps it, Argo CD shows it Degraded.
        assert_eq!(condition(&status, "Ready"), ("True".into(), "Ready".into()));
        assert_eq!(condition(&status, "Degraded"), ("True".into(), "ReconcileError".into()));
        assert_eq!(status["conditions"][0]["type"], "Ready", "the order stays");
    })
    .await
    .unwrap_err();
    assert!(error.to_string().contains("exceeded quota"), "{error}");
}

#[tokio::test]
async fn the_marks_of_deleted_aliases_are_removed_so_the_collection_can_be_deleted() {
    let mut h = harness();
    let mut vc = (*collection(false, stored_status("Importing"))).clone();
    vc.metadata.labels = Some(
        [
            ("served-by.quiver.dev/products".to_string(), "current".to_string()),
            ("served-by.quiver.dev/gone".to_string(), "previous".to_string()),
            ("team".to_string(), "search".to_string()),
        ]
        .into(),
    );
    let vc = Arc::new(vc);
    let products = json!({"apiVersion": "quiver.dev/v1alpha1", "kind": "CollectionAlias",
        "metadata": {"name": "products", "namespace": NS}, "spec": {"collection": "products-v2"}});
    // An alias "gone" in another namespace is not this collection's.
    let elsewhere = json!({"apiVersion": "quiver.dev/v1alpha1", "kind": "CollectionAlias",
        "metadata": {"name": "gone", "namespace": "staging"}, "spec": {"collection": "products-v2"}});
    h.cache([products, elsewhere]);
    run(reconcile(vc.clone(), h.ctx.clone()), async {
        let patch = h.server.expect("PATCH", VC, 200, stored_object()).await;
        // Only the mark of the alias that is gone; the resourceVersion makes a racing mark win.
        assert_eq!(
            patch.body,
            json!({"metadata": {"labels": {"served-by.quiver.dev/gone": null}, "resourceVersion": "7"}})
        );
        // Then the reconcile goes on as usual (here: the API server fails the next call).
        let failure = common::status(500, "InternalError", "etcd timeout");
        h.server.expect("PATCH", WRITER_NP, 500, failure.clone()).await;
        h.server.expect("POST", "/apis/events.k8s.io/v1/namespaces/search/events", 500, failure.clone()).await;
        h.server.expect("PATCH", &format!("{VC}/status"), 500, failure).await;
    })
    .await
    .unwrap_err();
}

#[tokio::test]
async fn a_writer_restart_leaves_a_ready_collection_ready_and_says_so_in_writer_available() {
    let mut h = harness();
    let mut ready = stored_status("Ready");
    ready["verification"] =
        json!([{"name": "recall", "measured": 0.97, "comparison": ">=", "threshold": 0.95, "passed": true}]);
    // The writer pod restarted: it is Running but not answering yet, then recovering its
    // collection (sealed, but not ready: "publishing").
    h.cache([running_pod("10.1.2.4")]);
    h.cache(jobs("Complete"));
    for (answer, reason) in [(None, "Unavailable"), (Some(sealed()), "Publishing")] {
        *h.writer.state.lock().unwrap() = answer;
        run(reconcile(collection(false, ready.clone()), h.ctx.clone()), async {
            if reason == "Unavailable" {
                // Applied once; the second look finds them in their caches as applied.
                writer_applied(&mut h.server, 0).await;
                replicas_applied(&mut h.server, 2).await;
            } else {
                token_read(&mut h.server).await;
            }
            let status = status_patch(&mut h.server).await.body["status"].clone();
            assert_eq!(status["phase"], "Ready", "{reason}");
            assert_eq!(condition(&status, "Ready"), ("True".into(), "Ready".into()));
            assert_eq!(condition(&status, "Degraded").0, "False");
            assert_eq!(condition(&status, "WriterAvailable"), ("False".into(), reason.into()));
        })
        .await
        .unwrap();
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    let bytes: k8s_openapi::ByteString = serde_json::from_value(json!(text)).unwrap();
    bytes.0
}

#[tokio::test]
async fn pods_the_api_refused_to_create_are_named_in_status() {
    let mut h = harness();
    // The writer: the StatefulSet controller's FailedCreate Event, worded as it words it
    // (`create Pod %s in StatefulSet %s failed error: %s`, pkg/controller/statefulset) around the
    // quota admission's refusal.
    let refusal = "pods \"products-v2-writer-0\" is forbidden: exceeded quota: compute, requested: requests.cpu=1, used: requests.cpu=2, limited: requests.cpu=2";
    let event = json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "products-v2-writer.1"},
        "involvedObject": {"kind": "StatefulSet", "name": "products-v2-writer"}, "reason": "FailedCreate", "type": "Warning",
        "lastTimestamp": "2025-11-25T11:59:00Z",
        "message": format!("create Pod products-v2-writer-0 in StatefulSet products-v2-writer failed error: {refusal}")});
    let vc =
        collection(false, json!({"phase": "Pending", "observedGeneration": 1, "message": "waiting for the writer"}));
    run(reconcile(vc, h.ctx.clone()), async {
        writer_applied(&mut h.server, 0).await;
        // An older success (the pod existed once) does not hide a newer failure.
        let created = json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "products-v2-writer.0"},
            "involvedObject": {"kind": "StatefulSet", "name": "products-v2-writer"}, "reason": "SuccessfulCreate",
            "type": "Normal", "lastTimestamp": "2025-11-25T11:00:00Z", "message": "create Pod products-v2-writer-0 in StatefulSet products-v2-writer successful"});
        let listed = h.server.expect("GET", EVENTS, 200, list("Event", vec![created, event.clone()])).await;
        // This StatefulSet's Events only (by uid), from the API server's cache.
        assert!(
            listed.uri.contains("fieldSelector=involvedObject.kind%3DStatefulSet%2CinvolvedObject.name%3Dproducts-v2-writer%2CinvolvedObject.uid%3D00000000-0000-0000-0000-00000000beef"),
            "{}",
            listed.uri
        );
        assert!(listed.uri.contains("resourceVersion=0"), "{}", listed.uri);
        let status = status_patch(&mut h.server).await.body["status"].clone();
        let message = status["message"].as_str().unwrap();
        assert!(message.starts_with("waiting for the writer: FailedCreate: create Pod products-v2-writer-0"), "{message}");
        assert!(message.ends_with("limited: requests.cpu=2"), "{message}");
    })
    .await
    .unwrap();

    // Once a pod was created after the failure (the quota raised), the old Event says nothing.
    let vc =
        collection(false, json!({"phase": "Pending", "observedGeneration": 1, "message": "waiting for the writer"}));
    run(reconcile(vc, h.ctx.clone()), async {
        token_read(&mut h.server).await;
        let mut later = event.clone();
        later["reason"] = json!("SuccessfulCreate");
        later["lastTimestamp"] = json!("2025-11-25T11:59:30Z");
        h.server.expect("GET", EVENTS, 200, list("Event", vec![event.clone(), later])).await;
        let status = status_patch(&mut h.server).await.body["status"].clone();
        assert_eq!(status["message"], "waiting for the writer");
    })
    .await
    .unwrap();

    // The replicas: the Deployment's ReplicaFailure condition (copied from its ReplicaSet).
    *h.writer.state.lock().unwrap() = Some(sealed());
    let vc = collection(false, json!({"phase": "Publishing", "observedGeneration": 1}));
    h.restatus("StatefulSet", "products-v2-writer", json!({"replicas": 1, "readyReplicas": 1}));
    h.cache([running_pod("10.1.2.3")]);
    run(reconcile(vc, h.ctx.clone()), async {
        token_read(&mut h.server).await;
        h.server.apply(REPLICAS_SVC, Value::Null).await;
        let failure = json!({"readyReplicas": 0, "conditions": [{"type": "ReplicaFailure", "status": "True",
            "reason": "FailedCreate", "message": "pods \"products-v2-replicas-7d9c-x\" is forbidden: exceeded quota: compute"}]});
        h.server.apply(DEPLOYMENT, failure).await;
        h.server.apply(HPA, Value::Null).await;
        h.server.apply(PDB, Value::Null).await;
        let status = status_patch(&mut h.server).await.body["status"].clone();
        assert_eq!(status["phase"], "Replicating");
        assert_eq!(
            status["message"],
            "0/2 replicas ready; replicas: FailedCreate: pods \"products-v2-replicas-7d9c-x\" is forbidden: exceeded quota: compute"
        );
        h.server.event(NS).await;
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_failed_collection_is_retried_once_per_annotation_value() {
    let mut h = harness();
    let failed = json!({"phase": "Failed", "observedGeneration": 1, "vectorCount": 50000,
        "message": "verification failed: recall measured 0.8 (needs >= 0.95)",
        "verification": [{"name": "recall", "measured": 0.8, "comparison": ">=", "threshold": 0.95, "passed": false}]});
    let mut vc = (*collection(false, failed)).clone();
    vc.metadata.annotations = Some([("quiver.dev/retry".to_string(), "1".to_string())].into());
    let action = run(reconcile(Arc::new(vc.clone()), h.ctx.clone()), async {
        // Recorded first, guarded by the resourceVersion: it happens once, whatever fails next.
        let recorded = h.server.expect("PATCH", VC, 200, stored_object()).await;
        assert_eq!(
            recorded.body,
            json!({"metadata": {"annotations": {"quiver.dev/retried": "1"}, "resourceVersion": "7"}})
        );
        h.server.expect("DELETE", WRITER_POD, 200, running_pod("10.1.2.3")).await;
        let jobs = h.server.expect("DELETE", JOBS, 200, list("Job", vec![])).await;
        assert!(jobs.uri.contains("quiver.dev%2Fgeneration%3D1"), "this generation's Jobs: {}", jobs.uri);
        let (reason, note) = h.server.event(NS).await;
        assert_eq!(reason, "Retry");
        assert_eq!(
            note,
            "retrying (quiver.dev/retry=1) after: verification failed: recall measured 0.8 (needs >= 0.95)"
        );
        let status = status_patch(&mut h.server).await.body["status"].clone();
        assert_eq!(status["phase"], "Pending");
        assert_eq!(status.get("verification"), None, "the failed gates are gone with the retry");
        // Nothing observed in this pass: the old writer pod is still terminating.
    })
    .await
    .unwrap();
    assert_eq!(action, kube::runtime::controller::Action::requeue(Duration::from_secs(5)));
    // Failed again, the same annotation value retries nothing: failure is sticky again.
    let mut again = serde_json::to_value(&vc).unwrap();
    again["metadata"]["annotations"]["quiver.dev/retried"] = json!("1");
    run(reconcile(Arc::new(serde_json::from_value(again).unwrap()), h.ctx.clone()), async {
        writer_applied(&mut h.server, 0).await;
        h.server.expect("GET", EVENTS, 200, list("Event", vec![])).await;
        let status = status_patch(&mut h.server).await.body["status"].clone();
        assert_eq!(status["phase"], "Failed");
    })
    .await
    .unwrap();
}

/// A retry of a collection whose writer was released keeps the release: its verified import
/// is in the store, so only the Jobs run again (an ETL's push or files may be gone, and a new
/// import would publish other data over what replicas serve). A retry patch refused for a
/// stale resourceVersion is left to the pass on the newer object, unreported.
#[tokio::test]
async fn a_retry_after_the_release_runs_the_jobs_again_without_a_writer() {
    use quiver_operator::crd::{AfterPublish, SnapshotsSpec};
    let mut h = harness();
    let snapshot = json!({"location": "s3://snapshots/search/products-v2", "sha256": "ab12", "bytes": 4096});
    let failed = json!({"phase": "Failed", "observedGeneration": 1, "vectorCount": 50000, "snapshot": snapshot,
        "message": "verification failed: recall measured 0.8 (needs >= 0.95)",
        "conditions": [{"type": "WriterAvailable", "status": "False", "reason": "Released", "message": "",
            "observedGeneration": 1, "lastTransitionTime": "2025-11-25T12:00:00Z"}]});
    let mut vc = (*collection(false, failed)).clone();
    vc.spec.snapshots = Some(SnapshotsSpec { store: "s3://snapshots".into(), ..Default::default() });
    vc.spec.writer.after_publish = Some(AfterPublish::Delete);
    vc.metadata.annotations = Some([("quiver.dev/retry".to_string(), "1".to_string())].into());
    // Stale: the API server holds a newer resourceVersion (409 Conflict, reason Conflict, as
    // apimachinery's NewConflict words it).
    let stale = "Operation cannot be fulfilled on vectorcollections.quiver.dev \"products-v2\": the object has been modified; please apply your changes to the latest version and try again";
    run(reconcile(Arc::new(vc.clone()), h.ctx.clone()), async {
        h.server.expect("PATCH", VC, 409, common::status(409, "Conflict", stale)).await;
    })
    .await
    .unwrap();
    run(reconcile(Arc::new(vc.clone()), h.ctx.clone()), async {
        h.server.expect("PATCH", VC, 200, stored_object()).await;
        h.server.expect("DELETE", WRITER_POD, 404, not_found()).await;
        h.server.expect("DELETE", JOBS, 200, list("Job", vec![])).await;
        assert_eq!(h.server.event(NS).await.0, "Retry");
        let status = status_patch(&mut h.server).await.body["status"].clone();
        assert_eq!(status["phase"], "Pending");
        assert_eq!(status["snapshot"], snapshot, "the release stands");
        assert_eq!(status["message"], "retrying: warm-up and verification run again");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_terminating_writer_pod_is_not_asked() {
    let mut h = harness();
    *h.writer.state.lock().unwrap() = Some(WriterState::Failed { reason: "the old pod's import".into() });
    let vc =
        collection(false, json!({"phase": "Pending", "observedGeneration": 1, "message": "waiting for the writer"}));
    let mut terminating = running_pod("10.1.2.3");
    terminating["metadata"]["deletionTimestamp"] = json!("2025-11-25T11:59:58Z");
    h.cache([terminating]);
    run(reconcile(vc, h.ctx.clone()), async {
        writer_applied(&mut h.server, 0).await;
        let status = status_patch(&mut h.server).await.body["status"].clone();
        assert_eq!(status["phase"], "Pending", "not Failed by what a pod on its way out says");
    })
    .await
    .unwrap();
    assert!(h.writer.asked.lock().unwrap().is_empty());
}

#[tokio::test]
async fn import_progress_alone_is_written_at_most_every_few_seconds_and_never_into_conditions() {
    let mut h = harness();
    *h.writer.state.lock().unwrap() = Some(WriterState::Importing { rows: 10 });
    let vc = collection(false, json!({"phase": "Pending", "observedGeneration": 1}));
    let mut written = Value::Null;
    h.cache([running_pod("10.1.2.3")]);
    run(reconcile(vc, h.ctx.clone()), async {
        writer_applied(&mut h.server, 0).await;
        written = status_patch(&mut h.server).await.body["status"].clone();
        h.server.event(NS).await;
    })
    .await
    .unwrap();
    assert_eq!(written["message"], "10 vectors imported");
    for c in written["conditions"].as_array().unwrap() {
        assert!(!c["message"].as_str().unwrap().contains("10 vectors"), "{c}");
    }
    // More rows at once: nothing but the count changed, so no write (and no hot loop); the
    // objects are as applied: no request at all.
    *h.writer.state.lock().unwrap() = Some(WriterState::Importing { rows: 20 });
    run(reconcile(collection(false, written), h.ctx.clone()), async {}).await.unwrap();
}

#[tokio::test]
async fn turning_autoscaling_on_keeps_the_replica_count_until_the_autoscaler_owns_it() {
    let mut h = harness();
    *h.writer.state.lock().unwrap() = Some(sealed());
    // Fixed at 4 until now, the operator's own field: handed over at 4, not reset to 1.
    h.cache([running_pod("10.1.2.3"), deployment_owned_by("quiver-operator", 4)]);
    h.cache(jobs("Complete"));
    h.cache([job_pod("products-v2-verify-g1", &report(0.97))]);
    run(reconcile(collection(false, stored_status("Ready")), h.ctx.clone()), async {
        writer_applied(&mut h.server, 1).await;
        h.server.apply(REPLICAS_SVC, Value::Null).await;
        let handover =
            h.server.expect("PATCH", DEPLOYMENT, 200, deployment_owned_by("quiver-operator-handover", 4)).await;
        assert!(handover.uri.contains("fieldManager=quiver-operator-handover"), "{}", handover.uri);
        assert_eq!(handover.body["spec"], json!({"replicas": 4}));
        let main = h.server.apply(DEPLOYMENT, json!({"readyReplicas": 4})).await;
        assert_eq!(main.body["spec"].get("replicas"), None, "the operator's own apply leaves the count to the HPA");
        h.server.apply(HPA, Value::Null).await;
        h.server.apply(PDB, Value::Null).await;
        let status = status_patch(&mut h.server).await.body["status"].clone();
        assert_eq!(status["readyReplicas"], 4);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_rebuilt_collection_no_alias_serves_or_targets_is_scaled_to_zero_and_back() {
    let mut h = harness();
    *h.writer.state.lock().unwrap() = Some(sealed());
    let mut ready = stored_status("Ready");
    ready["verification"] =
        json!([{"name": "recall", "measured": 0.97, "comparison": ">=", "threshold": 0.95, "passed": true}]);
    let mut vc = (*collection(false, ready)).clone();
    vc.metadata.labels = Some([("quiver.dev/alias".to_string(), "products".to_string())].into());
    let vc = Arc::new(vc);
    // Nobody serves (no mark) or targets it: the alias moved on to a newer rebuild. Its
    // autoscaler from when it served is still there.
    let hpa = json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "products-v2-replicas"}, "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "products-v2-replicas"}, "maxReplicas": 4}});
    h.cache([running_pod("10.1.2.3"), alias("products", "products-v3", "products-v3"), hpa.clone()]);
    run(reconcile(vc.clone(), h.ctx.clone()), async {
        writer_applied(&mut h.server, 1).await;
        h.server.apply(REPLICAS_SVC, Value::Null).await;
        let deployment = h.server.apply(DEPLOYMENT, json!({"readyReplicas": 0})).await;
        assert_eq!(deployment.body["spec"]["replicas"], 0);
        h.server.expect("DELETE", HPA, 200, json!({"kind": "Status", "status": "Success"})).await;
        h.server.apply(PDB, Value::Null).await;
        let status = status_patch(&mut h.server).await.body["status"].clone();
        assert_eq!(status["phase"], "Ready", "still verified: it can be served again");
        assert!(status["message"].as_str().unwrap().starts_with("scaled down"), "{status}");
        assert_eq!(condition(&status, "Degraded").0, "False", "idle, not broken");
    })
    .await
    .unwrap();
    // Pinned again (a rollback): its replicas come back before the alias may flip to it.
    // The deleted autoscaler is gone from its cache; the objects that did not change are not
    // applied again.
    h.uncache(hpa);
    h.cache([alias("products", "products-v2", "products-v3")]);
    run(reconcile(vc, h.ctx.clone()), async {
        let deployment = h.server.apply(DEPLOYMENT, json!({"readyReplicas": 0})).await;
        assert_eq!(deployment.body["spec"].get("replicas"), None, "the HPA owns the count again");
        h.server.apply(HPA, Value::Null).await;
        let status = status_patch(&mut h.server).await.body["status"].clone();
        assert_eq!(status["message"], "0/2 replicas ready");
    })
    .await
    .unwrap();
}
