//! `quiver bench`: build a collection from `.npy` files and measure exact search and a sweep of
//! each strategy's quality knob in the same run: one thread, one query at a time, after a
//! warm-up, every query timed.

use crate::collection::Collection;
use crate::collection::builder::{BuildOptions, import_and_build};
use crate::distance::Metric;
use crate::error::{Error, Result};
use crate::import::{self, ReadOptions};
use crate::index::{IndexParams, Strategy};
use crate::latency::{Latencies, Summary};
use crate::search::{SearchRequest, search};
use crate::verify::recall;
use rayon::prelude::*;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub base: String,
    pub queries: String,
    pub ground_truth: Option<PathBuf>,
    pub metric: Metric,
    pub k: usize,
    pub partitions: usize,
    pub indexes: Vec<IndexParams>,
    pub warmup: usize,
    /// Quality settings to sweep per strategy.
    pub signscan_sweep: Vec<usize>,
    pub arroy_sweep: Vec<usize>,
    pub hannoy_sweep: Vec<usize>,
    /// Where to build (a temporary directory when `None`).
    pub data_dir: Option<PathBuf>,
    /// Concurrent query threads to measure throughput with (default setting, all queries).
    pub threads: Vec<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Dataset {
    pub n: u64,
    pub dims: usize,
    pub queries: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub setting: String,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub qps: f64,
    pub recall_at_k: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    pub threads: usize,
    pub setting: String,
    pub qps: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct IndexBuild {
    pub backend: String,
    pub build_s: f64,
    pub disk_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub dataset: Dataset,
    pub k: usize,
    pub partitions: usize,
    pub import_s: f64,
    pub import_rows_per_s: f64,
    pub build_s: f64,
    pub calibrate_s: f64,
    /// The default setting the build calibrated for the target recall.
    pub calibration: Option<crate::calibrate::Calibration>,
    /// Size on disk of the first collection (vectors, ids and its index).
    pub index_bytes: u64,
    pub indexes: Vec<IndexBuild>,
    /// In-memory bytes of the sign codes (the signscan strategy's resident extra).
    pub signscan_bytes: usize,
    pub rss_peak_mib: f64,
    pub exact: Summary,
    pub runs: Vec<Run>,
    pub throughput: Vec<Throughput>,
}

pub fn run(options: &BenchOptions) -> Result<BenchReport> {
    let queries = import::read_vectors(&options.queries)?;
    let temp;
    let root: &Path = match &options.data_dir {
        Some(d) => d,
        None => {
            temp = tempfile::tempdir().map_err(|e| Error::io("creating a temporary directory", e))?;
            temp.path()
        }
    };
    let mut collections = Vec::new();
    let mut builds = Vec::new();
    for (i, index) in options.indexes.iter().enumerate() {
        let mut build = BuildOptions::new(format!("bench-{i}"), options.metric);
        build.index = index.clone();
        build.progress = true;
        let mut records = import::read(&options.base, &ReadOptions::default())?;
        if options.partitions > 1 {
            let n = options.partitions as u64;
            records.iter = Box::new(records.iter.map(move |r| {
                r.map(|mut rec| {
                    rec.partition = Some(format!("p{}", rec.id % n));
                    rec
                })
            }));
        }
        let manifest = import_and_build(root, &build, records)?;
        let collection = Collection::open(&root.join(&manifest.name))?;
        let backend = index.backend.as_str();
        eprintln!(
            "built {backend}: {} vectors, import {:.2}s, build {:.2}s, {} MiB on disk",
            manifest.count,
            manifest.timings.import_s,
            manifest.timings.build_s,
            collection.disk_bytes() >> 20
        );
        builds.push(IndexBuild {
            backend: backend.into(),
            build_s: manifest.timings.build_s,
            disk_bytes: collection.disk_bytes(),
        });
        collections.push((backend, collection));
    }
    let (_, first) = collections
        .first()
        .ok_or_else(|| Error::Request(crate::error::RequestError::new("indexes", "[]", "bench at least one index")))?;
    let k = options.k;
    let truth: Vec<Vec<u64>> = match &options.ground_truth {
        Some(path) => import::npy::read_ids(path)?.into_iter().map(|row| row.into_iter().take(k).collect()).collect(),
        None => queries
            .par_iter()
            .map(|q| {
                let mut r = SearchRequest::new(q.clone(), k);
                r.strategy = Some(Strategy::Exact);
                search(first, &r).map(|hits| hits.iter().map(|h| h.id).collect())
            })
            .collect::<Result<_>>()?,
    };
    if truth.len() < queries.len() {
        return Err(crate::error::RequestError::new(
            "ground_truth",
            truth.len(),
            format!("fewer ground-truth rows than the {} queries", queries.len()),
        )
        .into());
    }
    first.preload()?;
    let measure = |collection: &Collection, strategy: Strategy, quality: usize| -> Result<(Summary, f64)> {
        let request = |q: &Vec<f32>| SearchRequest {
            strategy: Some(strategy),
            quality: Some(quality),
            ..SearchRequest::new(q.clone(), k)
        };
        for q in queries.iter().cycle().take(options.warmup) {
            search(collection, &request(q))?;
        }
        let mut latencies = Latencies::default();
        let mut recall_sum = 0.0;
        for (q, t) in queries.iter().zip(&truth) {
            let r = request(q);
            let start = Instant::now();
            let hits = search(collection, &r)?;
            latencies.record(start.elapsed());
            recall_sum += recall(&hits.iter().map(|h| h.id).collect::<Vec<_>>(), t);
        }
        Ok((latencies.summary(), recall_sum / queries.len() as f64))
    };
    let (exact, exact_recall) = measure(first, Strategy::Exact, 0)?;
    let mut runs = vec![run_row("exact".into(), exact, exact_recall)];
    for &quality in &options.signscan_sweep {
        let (s, r) = measure(first, Strategy::SignScan, quality)?;
        runs.push(run_row(format!("signscan rerank={quality}"), s, r));
    }
    for (backend, collection) in &collections {
        let sweep = if *backend == "arroy" { &options.arroy_sweep } else { &options.hannoy_sweep };
        let knob = if *backend == "arroy" { "search_k" } else { "ef" };
        for &quality in sweep {
            collection.preload()?;
            let (s, r) = measure(collection, Strategy::Index, quality)?;
            let label = if quality == 0 { "default".to_string() } else { quality.to_string() };
            runs.push(run_row(format!("{backend} {knob}={label}"), s, r));
        }
    }
    let throughput = options
        .threads
        .iter()
        .map(|&threads| {
            let setting = first.manifest().search;
            Ok(Throughput {
                threads,
                setting: format!("{} quality={}", setting.strategy, setting.quality),
                qps: throughput(first, &queries, k, threads)?,
            })
        })
        .collect::<Result<_>>()?;
    Ok(BenchReport {
        dataset: Dataset { n: first.len(), dims: first.manifest().dimensions, queries: queries.len() },
        k,
        partitions: options.partitions.max(1),
        import_s: first.manifest().timings.import_s,
        import_rows_per_s: first.len() as f64 / first.manifest().timings.import_s.max(1e-9),
        build_s: first.manifest().timings.build_s,
        calibrate_s: first.manifest().timings.calibrate_s,
        calibration: first.manifest().calibration.clone(),
        index_bytes: first.disk_bytes(),
        indexes: builds,
        signscan_bytes: first.signscan().memory_bytes(),
        rss_peak_mib: rss_peak_mib(),
        exact,
        runs,
        throughput,
    })
}

/// Queries per second with `threads` clients each sending every query once, one at a time,
/// with the collection's default setting.
fn throughput(collection: &Collection, queries: &[Vec<f32>], k: usize, threads: usize) -> Result<f64> {
    let start = Instant::now();
    let results: Vec<Result<()>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads.max(1))
            .map(|t| {
                scope.spawn(move || -> Result<()> {
                    // Each client starts at a different offset so they do not move in lockstep.
                    let offset = t * queries.len() / threads.max(1);
                    for i in 0..queries.len() {
                        search(collection, &SearchRequest::new(queries[(i + offset) % queries.len()].clone(), k))?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("client thread")).collect()
    });
    results.into_iter().collect::<Result<Vec<()>>>()?;
    Ok((queries.len() * threads.max(1)) as f64 / start.elapsed().as_secs_f64())
}

fn run_row(setting: String, s: Summary, recall_at_k: f64) -> Run {
    Run { setting, p50_ms: s.p50_ms, p99_ms: s.p99_ms, qps: s.qps, recall_at_k }
}

/// Peak resident set size of this process (VmHWM), in MiB.
pub fn rss_peak_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// The human table: one line per setting with its ratio to exact search's p50.
pub fn table(report: &BenchReport) -> String {
    let mut out = format!(
        "n={} dims={} queries={} k={} partitions={} | import {:.2}s ({:.0} rows/s) build {:.2}s disk {:.1} MiB signcodes {:.1} MiB rss-peak {:.0} MiB\n",
        report.dataset.n,
        report.dataset.dims,
        report.dataset.queries,
        report.k,
        report.partitions,
        report.import_s,
        report.import_rows_per_s,
        report.build_s,
        report.index_bytes as f64 / (1 << 20) as f64,
        report.signscan_bytes as f64 / (1 << 20) as f64,
        report.rss_peak_mib,
    );
    out.push_str(&format!(
        "{:<28} {:>9} {:>9} {:>9} {:>10} {:>9}\n",
        "setting", "p50 ms", "p99 ms", "qps", "recall@k", "p50/exact"
    ));
    for r in &report.runs {
        out.push_str(&format!(
            "{:<28} {:>9.3} {:>9.3} {:>9.0} {:>10.4} {:>9.3}\n",
            r.setting,
            r.p50_ms,
            r.p99_ms,
            r.qps,
            r.recall_at_k,
            r.p50_ms / report.exact.p50_ms.max(1e-9)
        ));
    }
    for t in &report.throughput {
        out.push_str(&format!("throughput {:>3} threads ({}): {:.0} qps\n", t.threads, t.setting, t.qps));
    }
    out
}
