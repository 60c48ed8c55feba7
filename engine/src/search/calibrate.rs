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

/// A ladder is left once a rung costs this many times the fastest setting found so far that
/// met the target: rungs above cost more still, so none of them could be chosen. (Costs here
/// are estimates from the parallel recall runs; the factor leaves room for their noise.)
const HOPELESS: f64 = 2.0;
/// ... but never below this cost (ms of one core per query): a run over a tiny collection
/// takes too little time for its wall clock to rank settings.
const HOPELESS_FLOOR_MS: f64 = 0.1;

/// Probe counts tried, as fractions of the lists: 1/256 .. 1/4, then every list (0). The
/// small fractions are for millions of items: with sqrt(n) lists a fixed fraction scans a
/// fixed share of n, and at 4M the recall of 1/64 was already what 1/4 gave.
const PROBE_FRACTIONS: [usize; 7] = [256, 128, 64, 32, 16, 8, 4];

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
    // Milliseconds of one core per query, from the wall time of a run over every query on all
    // cores.
    let cost_ms = |start: Instant| {
        start.elapsed().as_secs_f64() * 1e3 * rayon::current_num_threads() as f64 / queries.len() as f64
    };
    let exact = Setting { strategy: Strategy::Exact, quality: 0, probes: 0 };
    // Built now, so the first sign-code rung's cost is its scan, not the codes' build.
    collection.signscan();
    let start = Instant::now();
    let truth: Vec<Vec<u64>> =
        queries.par_iter().map(|q| search(collection, &request(q, exact)).map(ids)).collect::<Result<_>>()?;
    let exact_cost = cost_ms(start);
    let recall_and_cost = |s: Setting| -> Result<(f64, f64)> {
        let start = Instant::now();
        let total: f64 = queries
            .par_iter()
            .zip(&truth)
            .map(|(q, t)| search(collection, &request(q, s)).map(|h| recall(&ids(h), t)))
            .collect::<Result<Vec<f64>>>()?
            .iter()
            .sum();
        Ok((total / queries.len() as f64, cost_ms(start)))
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
    let index = &collection.manifest().index;
    let index_ladder: Vec<usize> = match index.backend {
        _ if !index.durable_index_stored() => Vec::new(),
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
    let mut fastest = exact_cost;
    for ladder in ladders {
        if let Some((candidate, cost)) = climb(&ladder, target_recall + MARGIN, fastest, recall_and_cost)? {
            considered.push(candidate);
            fastest = fastest.min(cost);
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

/// The first rung of `ladder` (ordered by rising cost) whose recall reaches `needed`, with its
/// cost; none once a rung costs more than [`HOPELESS`] x `fastest` (the cheapest cost of a
/// setting known to reach it, at least [`HOPELESS_FLOOR_MS`]) twice: a rung is measured again
/// before its ladder is left, so one preempted run does not drop the setting that would win.
fn climb(
    ladder: &[Setting],
    needed: f64,
    fastest: f64,
    mut recall_and_cost: impl FnMut(Setting) -> Result<(f64, f64)>,
) -> Result<Option<(Candidate, f64)>> {
    for &s in ladder {
        let (recall, cost) = recall_and_cost(s)?;
        if recall >= needed {
            let candidate =
                Candidate { strategy: s.strategy, quality: s.quality, probes: s.probes, recall, p50_ms: 0.0 };
            return Ok(Some((candidate, cost)));
        }
        let hopeless = |cost: f64| cost > HOPELESS * fastest.max(HOPELESS_FLOOR_MS);
        if hopeless(cost) && hopeless(recall_and_cost(s)?.1) {
            return Ok(None);
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rungs(n: usize) -> Vec<Setting> {
        (1..=n).map(|q| Setting { strategy: Strategy::Index, quality: q, probes: 0 }).collect()
    }

    #[test]
    fn the_probe_ladder_reaches_down_to_a_256th_of_the_lists() {
        assert_eq!(probe_ladder(2000), [7, 15, 31, 62, 125, 250, 500, 0]);
        assert_eq!(probe_ladder(300), [1, 2, 4, 9, 18, 37, 75, 0]);
        // Fractions that round to no list are left out; every list is always a rung.
        assert_eq!(probe_ladder(100), [1, 3, 6, 12, 25, 0]);
        assert_eq!(probe_ladder(0), [0]);
    }

    #[test]
    fn a_ladder_stops_at_the_first_rung_that_reaches_the_target() {
        let mut tried = Vec::new();
        let found = climb(&rungs(5), 0.75, 100.0, |s| {
            tried.push(s.quality);
            Ok((s.quality as f64 * 0.25, 1.0))
        })
        .unwrap()
        .map(|(c, _)| (c.quality, c.recall));
        assert_eq!(found, Some((3, 0.75)));
        assert_eq!(tried, [1, 2, 3]);
    }

    #[test]
    fn a_ladder_is_left_once_a_rung_costs_more_than_twice_the_fastest_setting() {
        let mut tried = Vec::new();
        // Cost 1, 2, 4, 8 ms per rung; the fastest setting known costs 1.5 ms.
        let found = climb(&rungs(4), 0.99, 1.5, |s| {
            tried.push(s.quality);
            Ok((0.5, (1 << (s.quality - 1)) as f64))
        })
        .unwrap();
        assert!(found.is_none());
        assert_eq!(tried, [1, 2, 3, 3], "rung 3 (4 ms > 2 x 1.5 ms), measured twice, is the last tried");
    }

    #[test]
    fn a_rung_that_was_slow_once_is_measured_again_before_its_ladder_is_left() {
        let mut tried = Vec::new();
        // Rung 2 costs 10 ms on its first run (preempted), 1 ms on its second; rung 3 reaches.
        let found = climb(&rungs(4), 0.9, 1.0, |s| {
            tried.push(s.quality);
            let slow_once = s.quality == 2 && tried.iter().filter(|&&q| q == 2).count() == 1;
            Ok((if s.quality >= 3 { 0.95 } else { 0.5 }, if slow_once { 10.0 } else { 1.0 }))
        })
        .unwrap();
        assert_eq!(found.map(|(c, _)| c.quality), Some(3));
        assert_eq!(tried, [1, 2, 2, 3]);
    }
}
