//! Operator metrics (Prometheus text format on /metrics): reconciles, errors and reconcile
//! duration per controller; server-side applies sent and skipped (the desired state unchanged).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::time::Instant;

type Labels = Vec<(&'static str, &'static str)>;

pub struct Metrics {
    registry: Registry,
    reconciles: Family<Labels, Counter>,
    errors: Family<Labels, Counter>,
    duration: Family<Labels, Histogram>,
    applies: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("quiver_operator");
        let reconciles = Family::<Labels, Counter>::default();
        let errors = Family::<Labels, Counter>::default();
        let duration =
            Family::<Labels, Histogram>::new_with_constructor(|| Histogram::new(exponential_buckets(0.005, 2.0, 12)));
        registry.register("reconciles", "Reconciles run", reconciles.clone());
        registry.register("reconcile_errors", "Reconciles that failed, by error kind", errors.clone());
        registry.register("reconcile_duration_seconds", "Time spent in one reconcile", duration.clone());
        let applies = Family::<Labels, Counter>::default();
        registry.register(
            "applies",
            "Server-side applies: sent, or skipped because the object is as last applied",
            applies.clone(),
        );
        Metrics { registry, reconciles, errors, duration, applies }
    }
}

impl Metrics {
    /// Counts a reconcile of `controller`; the returned guard records its duration when dropped.
    pub fn reconcile(&self, controller: &'static str) -> ReconcileTimer<'_> {
        self.reconciles.get_or_create(&vec![("controller", controller)]).inc();
        ReconcileTimer { metrics: self, controller, start: Instant::now() }
    }

    pub fn error(&self, controller: &'static str, kind: &'static str) {
        self.errors.get_or_create(&vec![("controller", controller), ("error", kind)]).inc();
    }

    /// Counts an apply of `kind` as `sent` or `skipped`.
    pub fn apply(&self, kind: &'static str, result: &'static str) {
        self.applies.get_or_create(&vec![("kind", kind), ("result", result)]).inc();
    }

    /// The Prometheus text exposition, with the gauges of `state` ([`crate::state_metrics`])
    /// after the process's own.
    pub fn render_with(&self, state: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode_registry(&mut out, &self.registry)
            .and_then(|()| prometheus_client::encoding::text::encode_registry(&mut out, state))
            .and_then(|()| prometheus_client::encoding::text::encode_eof(&mut out))
            .expect("writing to a String cannot fail");
        out
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    controller: &'static str,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        let labels = vec![("controller", self.controller)];
        self.metrics.duration.get_or_create(&labels).observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_reconciles_errors_and_durations() {
        let m = Metrics::default();
        drop(m.reconcile("collection"));
        m.error("collection", "kube");
        m.apply("Service", "skipped");
        let text = m.render();
        assert!(text.contains("quiver_operator_applies_total{kind=\"Service\",result=\"skipped\"} 1"), "{text}");
        assert!(text.contains("quiver_operator_reconciles_total{controller=\"collection\"} 1"), "{text}");
        assert!(
            text.contains("quiver_operator_reconcile_errors_total{controller=\"collection\",error=\"kube\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("quiver_operator_reconcile_duration_seconds_count{controller=\"collection\"} 1"),
            "{text}"
        );
    }
}
