//! Warm-up: fault the collection into memory and run simulated queries until latency settles,
//! so the first real query is not a cold one.

use crate::cancel::Cancel;
use crate::error::Result;
use crate::latency::Latencies;
use crate::search::recall::sample_queries;
use crate::search::searcher::{PreloadStats, Searcher};
use crate::search::{SearchRequest, search_cancellable};
use serde::Serialize;
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct WarmupOptions {
    pub k: usize,
    /// Queries per round; latency has settled when two rounds' p50 differ by < `tolerance`.
    pub round: usize,
    pub tolerance: f64,
    pub max_queries: usize,
    /// Checked between queries: a server cancels when the call is gone.
    pub cancel: Cancel,
}

impl Default for WarmupOptions {
    fn default() -> Self {
        WarmupOptions { k: 10, round: 100, tolerance: 0.1, max_queries: 2_000, cancel: Cancel::default() }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct WarmupReport {
    pub collection: String,
    /// The first query, before anything was preloaded.
    pub cold_first_query_ms: f64,
    pub preload: PreloadStats,
    pub warm_p50_ms: f64,
    pub warm_p99_ms: f64,
    pub queries: usize,
    pub settled: bool,
}

pub fn warm(collection: &Searcher, options: &WarmupOptions) -> Result<WarmupReport> {
    crate::limits::check_count("max_queries", options.max_queries, crate::limits::MAX_WARMUP_QUERIES)?;
    let queries = sample_queries(collection, options.max_queries.max(1), 11);
    let start = Instant::now();
    search_cancellable(collection, &SearchRequest::new(queries[0].clone(), options.k), &options.cancel)?;
    let cold_first_query_ms = start.elapsed().as_secs_f64() * 1e3;
    options.cancel.check("warm-up")?;
    let preload = collection.preload()?;

    let mut previous: Option<f64> = None;
    let mut last = Latencies::default();
    let mut used = 1;
    let mut settled = false;
    while used < queries.len() {
        let mut round = Latencies::default();
        for q in queries[used..].iter().take(options.round) {
            options.cancel.check("warm-up")?;
            let t = Instant::now();
            search_cancellable(collection, &SearchRequest::new(q.clone(), options.k), &options.cancel)?;
            round.record(t.elapsed());
        }
        used += round.len();
        let p50 = round.percentile(50.0);
        last = round;
        if let Some(prev) = previous
            && (p50 - prev).abs() <= options.tolerance * prev.max(1e-6)
        {
            settled = true;
            break;
        }
        previous = Some(p50);
    }
    Ok(WarmupReport {
        collection: collection.name().to_string(),
        cold_first_query_ms,
        preload,
        warm_p50_ms: last.percentile(50.0),
        warm_p99_ms: last.percentile(99.0),
        queries: used,
        settled,
    })
}
