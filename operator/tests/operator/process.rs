//! The operator process without a cluster: its flags, its HTTP endpoints, and which
//! collections an alias change wakes up.

use clap::Parser;
use quiver_operator::crd::CollectionAlias;
use quiver_operator::metrics::Metrics;
use quiver_operator::run::{Config, Health, collections_of, router};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[test]
fn flags_have_operator_defaults_and_leader_election_can_be_turned_off() {
    let c = Config::try_parse_from(["quiver-operator"]).unwrap();
    assert_eq!(c.metrics_addr.port(), 8080);
    assert!(c.leader_election);
    assert_eq!(c.lease_name, "quiver-operator");
    assert!(c.image.starts_with("ghcr.io/quiver-dev/quiver:"), "{}", c.image);
    let c = Config::try_parse_from([
        "quiver-operator",
        "--leader-election=false",
        "--metrics-addr=127.0.0.1:9000",
        "--namespace=search",
        "--log-json",
    ])
    .unwrap();
    assert!(!c.leader_election && c.log_json);
    assert_eq!((c.metrics_addr.port(), c.namespace.as_deref()), (9000, Some("search")));
}

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let code = response[9..12].parse().unwrap();
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (code, body)
}

#[tokio::test]
async fn metrics_livez_and_readyz_are_served() {
    let metrics = Arc::new(Metrics::default());
    drop(metrics.reconcile("alias"));
    let health = Health::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(metrics, health.clone(), Arc::new(Default::default));
    tokio::spawn(async move { axum::serve(listener, app).await });
    assert_eq!(get(addr, "/livez").await.0, 200);
    assert_eq!(get(addr, "/readyz").await.0, 503);
    health.set_ready(true);
    assert_eq!(get(addr, "/readyz").await.0, 200);
    let (code, body) = get(addr, "/metrics").await;
    assert_eq!(code, 200);
    assert!(body.contains("quiver_operator_reconciles_total{controller=\"alias\"} 1"), "{body}");
    assert!(body.contains("quiver_operator_reconcile_duration_seconds_bucket"), "{body}");
}

#[test]
fn an_alias_wakes_its_target_current_and_previous_collections() {
    let alias: CollectionAlias = serde_json::from_value(serde_json::json!({
        "apiVersion": "quiver.dev/v1alpha1", "kind": "CollectionAlias",
        "metadata": {"name": "products", "namespace": "search"},
        "spec": {"collection": "c3"}, "status": {"current": "c2", "previous": "c1"},
    }))
    .unwrap();
    let names: Vec<(String, Option<String>)> =
        collections_of(&alias).into_iter().map(|r| (r.name, r.namespace)).collect();
    let ns = Some("search".to_string());
    assert_eq!(names, [("c3".into(), ns.clone()), ("c2".into(), ns.clone()), ("c1".into(), ns)]);
}

/// The primary watches reconcile on what a user (or the alias controller's marks) changed, not
/// on the controller's own status writes: a status write would otherwise bring one more
/// reconcile each time.
#[test]
fn a_status_write_does_not_wake_the_controller_but_spec_labels_annotations_and_deletion_do() {
    use quiver_operator::run::changed_by_user;
    let ca: CollectionAlias = serde_json::from_value(serde_json::json!({
        "apiVersion": "quiver.dev/v1alpha1", "kind": "CollectionAlias",
        "metadata": {"name": "products", "namespace": "search", "generation": 3, "resourceVersion": "10"},
        "spec": {"collection": "p-1"}}))
    .unwrap();
    let base = changed_by_user(&ca);
    let mut status = ca.clone();
    status.status = Some(serde_json::from_value(serde_json::json!({"current": "p-1"})).unwrap());
    status.metadata.resource_version = Some("11".into());
    assert_eq!(changed_by_user(&status), base, "a status write");
    let changes: [fn(&mut CollectionAlias); 4] = [
        |a| a.metadata.generation = Some(4),
        |a| a.metadata.labels = Some([("team".to_string(), "x".to_string())].into()),
        |a| a.metadata.annotations = Some([("quiver.dev/rebuild-requested".to_string(), "1".to_string())].into()),
        |a| {
            a.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::from_second(1).unwrap(),
            ))
        },
    ];
    for change in changes {
        let mut changed = ca.clone();
        change(&mut changed);
        assert_ne!(changed_by_user(&changed), base);
    }
}
