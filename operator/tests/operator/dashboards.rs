//! The chart's Grafana dashboard and alerts query only metrics that exist: every `quiver_*`
//! series they name is in the engine's registry or the operator's (its own and the gauges of
//! what the caches hold). A renamed metric would otherwise leave an empty panel and an alert
//! that never fires, silently. And the caches' gauges say what the objects say.

use quiver_operator::crd::{CollectionAlias, VectorCollection};
use std::collections::BTreeSet;
use std::path::Path;

fn chart_file(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/quiver").join(path)).unwrap()
}

/// Every `quiver_…` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("quiver_") {
        let tail = &rest[at..];
        let end =
            tail.find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')).unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// The series an OpenMetrics exposition can hold: each `# TYPE` family with the suffixes of
/// its type.
fn series(exposition: &str) -> BTreeSet<String> {
    let mut series = BTreeSet::new();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else { continue };
        let (name, kind) = rest.split_once(' ').unwrap();
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_count", "_sum"],
            _ => &[""],
        };
        series.extend(suffixes.iter().map(|s| format!("{name}{s}")));
    }
    series
}

/// An example as users apply it (`examples/`), with `status` as the operator writes it.
fn example<K: serde::de::DeserializeOwned>(file: &str, extra: serde_json::Value) -> K {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples").join(file)).unwrap();
    let mut object: serde_json::Value = serde_yaml::from_str(&text).unwrap();
    for (key, value) in extra.as_object().unwrap() {
        match (object.get_mut(key), value) {
            (Some(serde_json::Value::Object(have)), serde_json::Value::Object(more)) => have.extend(more.clone()),
            _ => object[key] = value.clone(),
        }
    }
    serde_json::from_value(object).unwrap()
}

/// products-2026-11-25 (autoscaled from 2, maxP99Ms 5), verifying with 1 replica ready.
fn collection() -> VectorCollection {
    example(
        "vectorcollection.yaml",
        serde_json::json!({"status": {"phase": "Verifying", "readyReplicas": 1, "conditions": [{
            "type": "Ready", "status": "False", "reason": "Verifying", "message": "",
            "lastTransitionTime": "2026-12-01T03:00:00Z"}]}}),
    )
}

/// products, rebuilt daily at 03:00 Berlin (02:00 UTC in winter), its last flip refused (its
/// target failed).
fn alias() -> CollectionAlias {
    example(
        "collectionalias-rebuild.yaml",
        serde_json::json!({
            "metadata": {"creationTimestamp": "2026-11-01T00:00:00Z"},
            "status": {"current": "products-20261130-0200", "flippedAt": "2026-11-30T02:30:00Z",
                       "lastRebuild": "2026-12-01T02:00:00Z",
                       "conditions": [{"type": "Flipped", "status": "False", "reason": "TargetFailed", "message": "",
                                       "lastTransitionTime": "2026-12-01T02:40:00Z"}]}}),
    )
}

/// The operator's whole exposition with one collection and one alias in its caches.
fn operator_exposition() -> String {
    let metrics = quiver_operator::metrics::Metrics::default();
    drop(metrics.reconcile("collection"));
    metrics.error("collection", "kube");
    metrics.apply("Service", "sent");
    let (vc, ca) = (collection(), alias());
    let defaults = quiver_operator::resources::Defaults::default();
    metrics.render_with(&quiver_operator::state_metrics::registry([&vc], [&ca], &defaults))
}

#[test]
fn every_metric_the_dashboard_and_the_alerts_query_exists() {
    let engine = quiver_engine::metrics::Metrics::new();
    engine.call("quiver.v1.Search/Search", tonic::Code::Ok, std::time::Duration::from_millis(1));
    let known: BTreeSet<String> = series(&engine.render()).into_iter().chain(series(&operator_exposition())).collect();
    for file in ["dashboards/quiver.json", "templates/prometheusrule.yaml"] {
        let used = metric_names(&chart_file(file));
        assert!(used.len() >= 5, "{file} queries {used:?}");
        let unknown: Vec<_> = used.difference(&known).collect();
        assert!(unknown.is_empty(), "{file} queries series no registry has: {unknown:?}\nknown: {known:?}");
    }
}

#[test]
fn the_caches_gauges_say_what_the_objects_say() {
    let text = operator_exposition();
    let line =
        |needle: &str| text.lines().find(|l| l.starts_with(needle)).unwrap_or_else(|| panic!("{needle}\n{text}"));
    let of = r#"namespace="search",collection="products-2026-11-25""#;
    assert!(line(&format!(r#"quiver_operator_collection_phase{{{of},phase="Verifying"}}"#)).ends_with(" 1"));
    assert!(line(&format!(r#"quiver_operator_collection_phase{{{of},phase="Ready"}}"#)).ends_with(" 0"));
    assert!(line(&format!("quiver_operator_collection_replicas_ready{{{of}}}")).ends_with(" 1"));
    assert!(line(&format!("quiver_operator_collection_replicas_wanted{{{of}}}")).ends_with(" 2"), "replicas.min");
    assert!(line(&format!("quiver_operator_collection_superseded{{{of}}}")).ends_with(" 0"), "no rebuild made it");
    assert!(line(&format!("quiver_operator_collection_p99_budget_seconds{{{of}}}")).ends_with(" 0.005"));
    let at = |t: &str| t.parse::<k8s_openapi::jiff::Timestamp>().unwrap().as_second() as f64;
    let value = |l: &str| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap();
    assert_eq!(
        value(line("quiver_operator_collection_ready_transition_timestamp_seconds{")),
        at("2026-12-01T03:00:00Z")
    );
    let of = r#"namespace="search",alias="products""#;
    assert!(line(&format!("quiver_operator_alias_serving_target{{{of}}}")).ends_with(" 0"), "a refused flip");
    assert!(line(&format!("quiver_operator_alias_flip_refused{{{of}}}")).ends_with(" 1"), "its target failed");
    assert_eq!(value(line("quiver_operator_alias_flipped_timestamp_seconds{")), at("2026-11-30T02:30:00Z"));
    // The tick after the one last handled: 03:00 Berlin the next day.
    assert_eq!(value(line("quiver_operator_alias_next_rebuild_timestamp_seconds{")), at("2026-12-02T02:00:00Z"));
}
