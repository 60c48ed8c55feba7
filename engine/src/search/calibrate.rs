//! After a build: find the cheapest search setting that reaches the target recall (with a
//! margin) on sampled queries against exact search, and measure its latency. The result goes
//! into the manifest and becomes the collection's default; verification re-checks it.

use super::recall::{recall, sample_queries};
use super::searcher::Searcher;
use super::{SearchRequest, search};
use crate::error::Result;
use crate::latency::Latencies;
use crate::types::{Backend, Calibration, Candidate, Strategy};
use rayon::prelude::*;
use std::time::Instant;

/// Recall is measured on a sample; aim this much above the target so a verifier's different
/// sample still passes.
pub const MARGIN: f64 = 0.01;

/// Re-rank budgets tried for the sign-code scan, as multiples of k.
const SIGNSCAN_LADDER: [usize; 9] = [2, 5, 10, 15, 20, 50, 100, 200, 500];
/// arroy `search_k` values, as multiples of k (0 = arroy's default of n_trees * k).
const ARROY_LADDER: [usize; 5] = [0, 100, 400, 1600, 6400];
/// hannoy `ef` values.
const HANNOY_LADDER: [usize; 7] = [16, 32, 48, 64, 128, 256, 512];

/// Probe counts tried, as fractions of the lists: 1/64 .. 1/4, then every list (0).
const PROBE_FRACTIONS: [usize; 5] = [64, 32, 16, 8, 4];

#[derive(Clone, Copy)]
struct Setting {
    strategy: Strategy,
    quality: usize,
    probes: usize,
}

/// The probe counts a collection with up to `lists` lists per partition is calibrated over.
pub fn probe_ladder(lists: usize) -> Vec<usize> {
    let mut ladder: Vec<usize> = PROBE_FRACTIONS.iter().map(|f| lists / f).filter(|&p| p > 0).collect();
    ladder.dedup();
    ladder.push(0);
    ladder
}

/// The most coarse lists any partition has (0: none).
pub fn max_lists(collection: &Searcher) -> usize {
    let partitions = collection.partition_members().len() as u16;
    (0..partitions).filter_map(|p| collection.coarse_lists(p)).map(|l| l.len()).max().unwrap_or(0)
}

pub fn calibrate(
    collection: &Searcher,
    target_recall: f64,
    k: usize,
    queries: usize,
    seed: u64,
) -> Result<Calibration> {
    let queries = sample_queries(collection, queries.max(1), seed);
    let request = |q: &Vec<f32>, s: Setting| SearchRequest {
        strategy: Some(s.strategy),
        quality: Some(s.quality),
        probes: Some(s.probes),
        ..SearchRequest::new(q.clone(), k)
    };
    let ids = |hits: Vec<crate::search::Hit>| hits.into_iter().map(|h| h.id).collect::<Vec<u64>>();
    let exact = Setting { strategy: Strategy::Exact, quality: 0, probes: 0 };
    let truth: Vec<Vec<u64>> =
        queries.par_iter().map(|q| search(collection, &request(q, exact)).map(ids)).collect::<Result<_>>()?;
    let mean_recall = |s: Setting| -> Result<f64> {
        let total: f64 = queries
            .par_iter()
            .zip(&truth)
            .map(|(q, t)| search(collection, &request(q, s)).map(|h| recall(&ids(h), t)))
            .collect::<Result<Vec<f64>>>()?
            .iter()
            .sum();
        Ok(total / queries.len() as f64)
    };
    // Single-threaded, one query at a time, like online serving.
    let latency = |s: Setting| -> Result<Latencies> {
        let mut latencies = Latencies::default();
        for q in &queries {
            let start = Instant::now();
            search(collection, &request(q, s))?;
            latencies.record(start.elapsed());
        }
        Ok(latencies)
    };
    let n = collection.len() as usize;
    let index_ladder: Vec<usize> = match collection.manifest().index.backend {
        Backend::Arroy => ARROY_LADDER.iter().map(|m| m * k).collect(),
        Backend::Hannoy => HANNOY_LADDER.to_vec(),
    };
    let rerank_ladder: Vec<usize> = SIGNSCAN_LADDER.iter().map(|m| m * k).take_while(|&q| q < n).collect();
    // Each probe count (and the whole partition, 0) is its own ladder of re-rank budgets.
    let mut ladders: Vec<Vec<Setting>> = probe_ladder(max_lists(collection))
        .into_iter()
        .map(|probes| {
            rerank_ladder.iter().map(|&quality| Setting { strategy: Strategy::SignScan, quality, probes }).collect()
        })
        .collect();
    ladders.push(
        index_ladder.into_iter().map(|quality| Setting { strategy: Strategy::Index, quality, probes: 0 }).collect(),
    );
    let mut considered = vec![Candidate { strategy: Strategy::Exact, quality: 0, probes: 0, recall: 1.0, p50_ms: 0.0 }];
    for ladder in ladders {
        for s in ladder {
            let r = mean_recall(s)?;
            if r >= target_recall + MARGIN {
                considered.push(Candidate {
                    strategy: s.strategy,
                    quality: s.quality,
                    probes: s.probes,
                    recall: r,
                    p50_ms: 0.0,
                });
                break;
            }
        }
    }
    // Each candidate is timed once; the winner's p99 comes from the same measurement.
    let mut p99 = Vec::with_capacity(considered.len());
    for c in &mut considered {
        let latencies = latency(Setting { strategy: c.strategy, quality: c.quality, probes: c.probes })?;
        c.p50_ms = latencies.percentile(50.0);
        p99.push(latencies.percentile(99.0));
    }
    let (best_at, best) = considered
        .iter()
        .enumerate()
        .min_by(|(_, a), (_, b)| a.p50_ms.total_cmp(&b.p50_ms))
        .map(|(i, c)| (i, c.clone()))
        .expect("exact is always there");
    Ok(Calibration {
        target_recall,
        k,
        strategy: best.strategy,
        quality: best.quality,
        probes: best.probes,
        recall: best.recall,
        p50_ms: best.p50_ms,
        p99_ms: p99[best_at],
        queries: queries.len(),
        considered,
    })
}
