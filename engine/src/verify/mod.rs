//! The verification gate an alias flip waits for: count, recall against exact search, and
//! latency. The report is machine-readable and says which gate failed and by how much.

pub mod count_query;

use crate::cancel::Cancel;
use crate::error::Result;
use crate::latency::Latencies;
use crate::search::recall::{recall, sample_queries};
use crate::search::searcher::Searcher;
use crate::search::{SearchRequest, search_cancellable};
use crate::types::{Gate, SearchDefaults, Strategy, VerifyReport};
use count_query::{CountQuery, Unanswered};
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct VerifyOptions {
    pub expected_count: Option<u64>,
    /// The expected count from the source database instead (run when verifying).
    pub count_query: Option<CountQuery>,
    pub min_recall: f64,
    pub max_p99_ms: Option<f64>,
    pub k: usize,
    /// Queries to use; when empty, `sample` queries are drawn near stored vectors.
    pub queries: Vec<Vec<f32>>,
    pub sample: usize,
    pub strategy: Option<Strategy>,
    pub quality: Option<usize>,
    pub seed: u64,
    /// Checked between queries: a server cancels when the call is gone.
    pub cancel: Cancel,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            expected_count: None,
            count_query: None,
            min_recall: 0.9,
            max_p99_ms: None,
            k: 10,
            queries: Vec::new(),
            sample: 200,
            strategy: None,
            quality: None,
            seed: 7,
            cancel: Cancel::default(),
        }
    }
}

/// What a verification exits with: 0 passed; 1 a gate failed (a verdict: retrying will not
/// change it); 3 only gates that may be measured if tried again failed (their database did not
/// answer: the verify Job is retried).
pub fn exit_code(report: &VerifyReport) -> i32 {
    let mut failed = report.gates.iter().filter(|g| !g.passed).peekable();
    match () {
        _ if report.passed => 0,
        _ if failed.peek().is_some() && failed.all(|g| g.retry) => 3,
        _ => 1,
    }
}

/// Prints `report` as JSON (and each failure on stderr), writes it to `output` when given, and
/// returns the JSON.
pub fn emit(report: &VerifyReport, output: Option<&std::path::Path>) -> Result<String> {
    let json = serde_json::to_string_pretty(report).expect("report serializes");
    println!("{json}");
    if let Some(path) = output {
        std::fs::write(path, &json).map_err(|e| crate::Error::io(format!("writing {}", path.display()), e))?;
    }
    for failure in report.failures() {
        eprintln!("verification failed: {failure}");
    }
    Ok(json)
}

pub fn verify(collection: &Searcher, options: &VerifyOptions) -> Result<VerifyReport> {
    use crate::limits::{MAX_VERIFY_QUERIES, check_count, check_k};
    check_k(options.k)?;
    check_count("sample", options.sample, MAX_VERIFY_QUERIES)?;
    check_count("queries", options.queries.len(), MAX_VERIFY_QUERIES)?;
    let manifest = collection.manifest();
    let queries = if options.queries.is_empty() {
        sample_queries(collection, options.sample, options.seed)
    } else {
        options.queries.clone()
    };
    let strategy = options.strategy.unwrap_or(manifest.search.strategy);
    let quality = options.quality.unwrap_or(manifest.search.quality);
    // The calibrated probes go with the calibrated strategy (as `search` resolves them).
    let probes = if strategy == manifest.search.strategy { manifest.search.probes } else { 0 };
    let mut latencies = Latencies::default();
    let mut recall_sum = 0.0;
    for query in &queries {
        options.cancel.check("verification")?;
        let mut request = SearchRequest::new(query.clone(), options.k);
        request.strategy = Some(Strategy::Exact);
        let truth: Vec<u64> = search_cancellable(collection, &request, &options.cancel)?.iter().map(|h| h.id).collect();
        options.cancel.check("verification")?;
        request.strategy = Some(strategy);
        request.quality = Some(quality);
        request.probes = Some(probes);
        let start = Instant::now();
        let found = search_cancellable(collection, &request, &options.cancel)?;
        latencies.record(start.elapsed());
        let found: Vec<u64> = found.iter().map(|h| h.id).collect();
        recall_sum += recall(&found, &truth);
    }
    let mut gates = Vec::new();
    gates.extend(ExpectedCount::of(options).gate(collection.len()));
    let mean_recall = if queries.is_empty() { 0.0 } else { recall_sum / queries.len() as f64 };
    gates.push(Gate::new(&format!("recall@{}", options.k), mean_recall, ">=", options.min_recall));
    if let Some(budget) = options.max_p99_ms {
        gates.push(Gate::new("p99_ms", latencies.percentile(99.0), "<=", budget));
    }
    Ok(VerifyReport {
        collection: collection.name().to_string(),
        passed: gates.iter().all(|c| c.passed),
        gates,
        setting: SearchDefaults { strategy, quality, probes }.to_string(),
        queries: queries.len(),
        k: options.k,
    })
}

/// The count gate's threshold: the spec's number, or the count query's answer.
pub enum ExpectedCount {
    None,
    Fixed(u64),
    Answered { count: u64, from: String },
    Unanswered(Unanswered),
}

impl ExpectedCount {
    /// Runs the count query, if there is one, now.
    pub fn of(options: &VerifyOptions) -> ExpectedCount {
        match (&options.count_query, options.expected_count) {
            (Some(query), _) => match query.answer() {
                Ok(count) => ExpectedCount::Answered { count, from: query.describe() },
                Err(reason) => ExpectedCount::Unanswered(reason),
            },
            (None, Some(count)) => ExpectedCount::Fixed(count),
            (None, None) => ExpectedCount::None,
        }
    }

    /// The count to check, when there is one.
    pub fn count(&self) -> Option<u64> {
        match self {
            ExpectedCount::Fixed(count) | ExpectedCount::Answered { count, .. } => Some(*count),
            ExpectedCount::None | ExpectedCount::Unanswered(_) => None,
        }
    }

    /// The gate for a collection of `measured` vectors.
    pub fn gate(&self, measured: u64) -> Option<Gate> {
        let measured_f = measured as f64;
        match self {
            ExpectedCount::None => None,
            ExpectedCount::Fixed(count) => Some(Gate::new("count", measured_f, "==", *count as f64)),
            ExpectedCount::Answered { count, from } => {
                Some(Gate { threshold_from: Some(from.clone()), ..Gate::new("count", measured_f, "==", *count as f64) })
            }
            ExpectedCount::Unanswered(Unanswered { from, reason, retry }) => Some(Gate {
                threshold_from: Some(from.clone()),
                ..Gate::unmeasured("count", measured_f, "==", reason.clone(), *retry)
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gates_report_margin() {
        let c = Gate::new("recall@10", 0.91, ">=", 0.95);
        assert!(!c.passed);
        assert!((c.margin + 0.04).abs() < 1e-9);
        let c = Gate::new("count", 10.0, "==", 12.0);
        assert!(!c.passed && c.margin == -2.0);
        assert!(Gate::new("p99_ms", 3.0, "<=", 5.0).passed);
    }

    #[test]
    fn recall_counts_overlap() {
        assert_eq!(recall(&[1, 2, 3, 4], &[4, 3, 9, 8]), 0.5);
        assert_eq!(recall(&[], &[]), 1.0);
    }
}
