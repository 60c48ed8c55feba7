//! Prometheus metrics of a serving process, rendered in the OpenMetrics text format on
//! `/metrics`. One [`Metrics`] per process, passed to whoever records.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// The gRPC method, e.g. `Search`.
    pub method: String,
    /// The gRPC status code name, e.g. `Ok`, `InvalidArgument`.
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: String,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<CallLabels, Counter>,
    pub latency: Family<MethodLabels, Histogram>,
    pub import_rows: Counter,
    pub build_seconds: Gauge<f64, AtomicU64>,
    pub snapshot_fetched_bytes: Counter,
    pub snapshot_served_bytes: Counter,
    pub collections: Gauge,
    /// Search calls of the last minutes, for the console's chart.
    pub recent_search: crate::recent::RecentLatency,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("quiver");
        let requests = Family::<CallLabels, Counter>::default();
        // 50 µs .. ~26 s: search latencies live at the low end, verify calls at the high end,
        // and a p99 budget of seconds stays below the top bucket (histogram_quantile answers
        // the bound below the highest bucket for a quantile in it, so an alert could not fire).
        let latency = Family::<MethodLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
        });
        let import_rows = Counter::default();
        let build_seconds = Gauge::<f64, AtomicU64>::default();
        let snapshot_fetched_bytes = Counter::default();
        let snapshot_served_bytes = Counter::default();
        let collections = Gauge::default();
        registry.register("requests", "gRPC calls by method and status code", requests.clone());
        registry.register("request_duration_seconds", "gRPC call latency by method", latency.clone());
        registry.register("import_rows", "Records written into collections", import_rows.clone());
        registry.register("build_seconds", "Duration of the last index build", build_seconds.clone());
        registry.register(
            "snapshot_fetched_bytes",
            "Snapshot bytes received from peers",
            snapshot_fetched_bytes.clone(),
        );
        registry.register("snapshot_served_bytes", "Snapshot bytes sent to peers", snapshot_served_bytes.clone());
        registry.register("collections", "Collections this process serves", collections.clone());
        Metrics {
            registry,
            requests,
            latency,
            import_rows,
            build_seconds,
            snapshot_fetched_bytes,
            snapshot_served_bytes,
            collections,
            recent_search: Default::default(),
        }
    }

    /// Records one finished gRPC call.
    pub fn call(&self, method: &str, code: tonic::Code, elapsed: Duration) {
        self.requests.get_or_create(&CallLabels { method: method.into(), code: format!("{code:?}") }).inc();
        self.latency.get_or_create(&MethodLabels { method: method.into() }).observe(elapsed.as_secs_f64());
        // Answered searches only: refusals (no slot, no token) answer at once and would pull
        // the console's p50 down just when the process is overloaded.
        if method.starts_with("quiver.v1.Search/") && code == tonic::Code::Ok {
            self.recent_search.record(elapsed);
        }
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_calls_by_method_and_code() {
        let m = Metrics::new();
        m.call("Search", tonic::Code::Ok, Duration::from_micros(300));
        m.call("Search", tonic::Code::InvalidArgument, Duration::from_micros(80));
        m.import_rows.inc_by(7);
        let text = m.render();
        assert!(text.contains(r#"quiver_requests_total{method="Search",code="Ok"} 1"#), "{text}");
        assert!(text.contains(r#"quiver_requests_total{method="Search",code="InvalidArgument"} 1"#), "{text}");
        assert!(text.contains(r#"quiver_request_duration_seconds_count{method="Search"} 2"#), "{text}");
        assert!(text.contains("quiver_import_rows_total 7"), "{text}");
    }
}
