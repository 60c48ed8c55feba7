//! What the caches hold, as gauges computed at each scrape (as kube-state-metrics does for
//! built-in kinds): the phase of every `VectorCollection`, its replicas ready and wanted, its
//! p99 budget; for every `CollectionAlias`, whether it serves its target, when it last flipped,
//! and its next scheduled rebuild. The chart's dashboard and alerts query these
//! (`charts/quiver/dashboards/`, `templates/prometheusrule.yaml`); a test checks every name
//! they use exists here or in the engine.

use crate::crd::{CollectionAlias, Phase, VectorCollection};
use crate::resources::{Defaults, labels, replicas};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

type Labels = Vec<(&'static str, String)>;
type Float = Gauge<f64, AtomicU64>;

const PHASES: [Phase; 10] = [
    Phase::Pending,
    Phase::Restoring,
    Phase::Importing,
    Phase::Building,
    Phase::Publishing,
    Phase::Replicating,
    Phase::WarmingUp,
    Phase::Verifying,
    Phase::Ready,
    Phase::Failed,
];

/// The reasons of a Flipped condition that is False because the flip is refused, not waiting:
/// the target failed (its build or its verification), or the alias's Service is another's.
/// An alias waits (`WaitingForTarget`) through every rebuild until it is verified: no alarm.
const REFUSED: [&str; 2] = ["TargetFailed", "ServiceConflict"];

/// The gauges of `collections` and `aliases`, under the operator's prefix, for an operator
/// running with `defaults` (whether it scales idle collections down).
pub fn registry<'a>(
    collections: impl IntoIterator<Item = &'a VectorCollection>,
    aliases: impl IntoIterator<Item = &'a CollectionAlias>,
    defaults: &Defaults,
) -> Registry {
    let aliases: Vec<&CollectionAlias> = aliases.into_iter().collect();
    let mut registry = Registry::with_prefix("quiver_operator");
    let superseded = Family::<Labels, Gauge>::default();
    let phase = Family::<Labels, Gauge>::default();
    let ready = Family::<Labels, Gauge>::default();
    let wanted = Family::<Labels, Gauge>::default();
    let budget = Family::<Labels, Float>::default();
    let ready_changed = Family::<Labels, Float>::default();
    for vc in collections {
        let labels = |extra: Option<(&'static str, String)>| {
            let mut l = vec![("namespace", vc.namespace().unwrap_or_default()), ("collection", vc.name_any())];
            l.extend(extra);
            l
        };
        let status = vc.status.clone().unwrap_or_default();
        for p in PHASES {
            phase.get_or_create(&labels(Some(("phase", format!("{p:?}"))))).set(i64::from(status.phase == p));
        }
        ready.get_or_create(&labels(None)).set(i64::from(status.ready_replicas));
        wanted.get_or_create(&labels(None)).set(i64::from(replicas_wanted(vc, &aliases, defaults)));
        superseded.get_or_create(&labels(None)).set(i64::from(is_superseded(vc, &aliases)));
        if let Some(ms) = vc.spec.verify.max_p99_ms {
            budget.get_or_create(&labels(None)).set(ms / 1e3);
        }
        if let Some(at) = transition(&status.conditions, "Ready") {
            ready_changed.get_or_create(&labels(None)).set(at);
        }
    }
    let serving_target = Family::<Labels, Gauge>::default();
    let flip_refused = Family::<Labels, Gauge>::default();
    let flipped_at = Family::<Labels, Float>::default();
    let next_rebuild = Family::<Labels, Float>::default();
    for ca in aliases.iter().copied() {
        let labels = vec![("namespace", ca.namespace().unwrap_or_default()), ("alias", ca.name_any())];
        let status = ca.status.clone().unwrap_or_default();
        let flipped = status.conditions.iter().find(|c| c.type_ == "Flipped").is_some_and(|c| c.status == "True");
        serving_target.get_or_create(&labels).set(i64::from(flipped));
        flip_refused.get_or_create(&labels).set(i64::from(is_refused(&status.conditions)));
        if let Some(at) = status.flipped_at.as_deref().and_then(|t| t.parse::<Timestamp>().ok()) {
            flipped_at.get_or_create(&labels).set(at.as_second() as f64);
        }
        if let Some(rebuild) = ca.spec.rebuild.as_ref().filter(|r| !r.suspend) {
            let next = crate::rebuild::next_tick(ca, rebuild).ok().flatten();
            if let Some(next) = next {
                next_rebuild.get_or_create(&labels).set(next.as_second() as f64);
            }
        }
    }
    registry.register("collection_phase", "1 for the phase each VectorCollection is in, 0 for the others", phase);
    registry.register("collection_replicas_ready", "Ready replicas of each VectorCollection", ready);
    registry.register(
        "collection_replicas_wanted",
        "Replicas each VectorCollection wants ready: 0 while it is idle (scaled down, no alias serves or targets it)",
        wanted,
    );
    registry.register(
        "collection_superseded",
        "1 for a VectorCollection a rebuild made that no alias serves or targets any more, 0 for the others",
        superseded,
    );
    registry.register(
        "collection_p99_budget_seconds",
        "spec.verify.maxP99Ms of each VectorCollection, in seconds",
        budget,
    );
    registry.register(
        "collection_ready_transition_timestamp_seconds",
        "When the Ready condition of each VectorCollection last changed (Unix seconds)",
        ready_changed,
    );
    registry.register(
        "alias_serving_target",
        "1 when the CollectionAlias serves its target (condition Flipped True), 0 while a flip waits or is refused",
        serving_target,
    );
    registry.register(
        "alias_flip_refused",
        "1 when the CollectionAlias refuses to flip to its target (it failed, or the Service is another's), 0 otherwise",
        flip_refused,
    );
    registry.register(
        "alias_flipped_timestamp_seconds",
        "When each CollectionAlias last flipped (Unix seconds)",
        flipped_at,
    );
    registry.register(
        "alias_next_rebuild_timestamp_seconds",
        "The next scheduled rebuild of each CollectionAlias after the tick it last handled (Unix seconds)",
        next_rebuild,
    );
    registry
}

/// The replicas the collection controller wants: none while the collection is idle.
fn replicas_wanted(vc: &VectorCollection, aliases: &[&CollectionAlias], defaults: &Defaults) -> i32 {
    if replicas::idle(vc, aliases.iter().copied(), defaults) { 0 } else { replicas::wanted(&vc.spec.replicas) }
}

/// Whether `vc` is a rebuild no alias serves or targets any more: a later rebuild (or a pin)
/// took its place, so its not being Ready (a failed rebuild kept as history) keeps no one from
/// being served.
fn is_superseded(vc: &VectorCollection, aliases: &[&CollectionAlias]) -> bool {
    vc.labels().contains_key(labels::ALIAS) && !aliases.iter().any(|ca| replicas::points_at(ca, vc))
}

fn is_refused(conditions: &[Condition]) -> bool {
    conditions
        .iter()
        .find(|c| c.type_ == "Flipped")
        .is_some_and(|c| c.status == "False" && REFUSED.contains(&c.reason.as_str()))
}

fn transition(conditions: &[Condition], type_: &str) -> Option<f64> {
    conditions.iter().find(|c| c.type_ == type_).map(|c| c.last_transition_time.0.as_second() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rebuild of `products`, Ready with 3 replicas wanted.
    fn rebuild(name: &str) -> VectorCollection {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "quiver.dev/v1alpha1", "kind": "VectorCollection",
            "metadata": {"name": name, "namespace": "search", "generation": 1, "labels": {labels::ALIAS: "products"}},
            "spec": {"dimensions": 8, "distance": "cosine", "source": {"url": "https://data.example.com/a.npy"},
                     "replicas": {"count": 3}},
            "status": {"phase": "Ready", "observedGeneration": 1},
        }))
        .unwrap()
    }

    fn alias(status: serde_json::Value) -> CollectionAlias {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "quiver.dev/v1alpha1", "kind": "CollectionAlias",
            "metadata": {"name": "products", "namespace": "search"},
            "spec": {"collection": "products-b"},
            "status": status,
        }))
        .unwrap()
    }

    fn exposition(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
        out
    }

    fn value(text: &str, series: &str) -> String {
        let line = text.lines().find(|l| l.starts_with(series)).unwrap_or_else(|| panic!("no {series} in\n{text}"));
        line.rsplit(' ').next().unwrap().to_string()
    }

    #[test]
    fn an_idle_collection_wants_no_replicas_and_is_superseded() {
        let (old, new) = (rebuild("products-a"), rebuild("products-b"));
        let ca = alias(serde_json::json!({"current": "products-b"}));
        let text = exposition(&registry([&old, &new], [&ca], &Defaults::default()));
        let of = |name: &str| format!("{{namespace=\"search\",collection=\"{name}\"}}");
        assert_eq!(value(&text, &format!("quiver_operator_collection_replicas_wanted{}", of("products-a"))), "0");
        assert_eq!(value(&text, &format!("quiver_operator_collection_superseded{}", of("products-a"))), "1");
        assert_eq!(value(&text, &format!("quiver_operator_collection_replicas_wanted{}", of("products-b"))), "3");
        assert_eq!(value(&text, &format!("quiver_operator_collection_superseded{}", of("products-b"))), "0");
        // An operator that keeps idle collections scaled up wants their replicas.
        let keeping = Defaults { scale_down_unserved: false, ..Defaults::default() };
        let text = exposition(&registry([&old], [&ca], &keeping));
        assert_eq!(value(&text, &format!("quiver_operator_collection_replicas_wanted{}", of("products-a"))), "3");
    }

    #[test]
    fn a_flip_waiting_for_its_target_is_not_refused_and_a_failed_target_is() {
        let flipped = |status: &str, reason: &str| {
            alias(serde_json::json!({"conditions": [{"type": "Flipped", "status": status, "reason": reason,
                "message": "", "lastTransitionTime": "2026-12-01T02:40:00Z"}]}))
        };
        for (status, reason, refused) in [
            ("False", "WaitingForTarget", "0"),
            ("True", "Serving", "0"),
            ("False", "TargetFailed", "1"),
            ("False", "ServiceConflict", "1"),
        ] {
            let text = exposition(&registry([], [&flipped(status, reason)], &Defaults::default()));
            let series = "quiver_operator_alias_flip_refused{namespace=\"search\",alias=\"products\"}";
            assert_eq!(value(&text, series), refused, "{status} {reason}");
        }
    }
}
