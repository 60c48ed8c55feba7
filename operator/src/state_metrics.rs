//! What the caches hold, as gauges computed at each scrape (as kube-state-metrics does for
//! built-in kinds): the phase of every `VectorCollection`, its replicas ready and wanted, its
//! p99 budget; for every `CollectionAlias`, whether it serves its target, when it last flipped,
//! and its next scheduled rebuild. The chart's dashboard and alerts query these
//! (`charts/quiver/dashboards/`, `templates/prometheusrule.yaml`); a test checks every name
//! they use exists here or in the engine.

use crate::crd::{CollectionAlias, Phase, VectorCollection};
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

/// The gauges of `collections` and `aliases` as of `now`, under the operator's prefix.
pub fn registry<'a>(
    collections: impl IntoIterator<Item = &'a VectorCollection>,
    aliases: impl IntoIterator<Item = &'a CollectionAlias>,
) -> Registry {
    let mut registry = Registry::with_prefix("quiver_operator");
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
        wanted.get_or_create(&labels(None)).set(i64::from(crate::resources::replicas::wanted(&vc.spec.replicas)));
        if let Some(ms) = vc.spec.verify.max_p99_ms {
            budget.get_or_create(&labels(None)).set(ms / 1e3);
        }
        if let Some(at) = transition(&status.conditions, "Ready") {
            ready_changed.get_or_create(&labels(None)).set(at);
        }
    }
    let serving_target = Family::<Labels, Gauge>::default();
    let flipped_at = Family::<Labels, Float>::default();
    let next_rebuild = Family::<Labels, Float>::default();
    for ca in aliases {
        let labels = vec![("namespace", ca.namespace().unwrap_or_default()), ("alias", ca.name_any())];
        let status = ca.status.clone().unwrap_or_default();
        let flipped = status.conditions.iter().find(|c| c.type_ == "Flipped").is_some_and(|c| c.status == "True");
        serving_target.get_or_create(&labels).set(i64::from(flipped));
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
    registry.register("collection_replicas_wanted", "Replicas each VectorCollection wants ready", wanted);
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

fn transition(conditions: &[Condition], type_: &str) -> Option<f64> {
    conditions.iter().find(|c| c.type_ == type_).map(|c| c.last_transition_time.0.as_second() as f64)
}
