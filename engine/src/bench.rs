//! `quiver bench`: build a collection from `.npy` files and measure exact search and a sweep of
//! each strategy's quality knob in the same run: one thread, one query at a time, after a
//! warm-up, every query timed.

use crate::build::import_and_build;
use crate::collection::builder::BuildOptions;
use crate::error::{Error, Result};
use crate::import::{self, ReadOptions};
use crate::latency::{Latencies, Summary};
use crate::search::calibrate::max_lists;
use crate::search::recall::recall;
use crate::search::searcher::Searcher;
use crate::search::{SearchRequest, search};
use crate::types::Metric;
use crate::types::{Backend, IndexParams, Strategy};
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
    /// Coarse lists probed, each with every signscan quality; empty: the calibration's ladder.
    pub probes_sweep: Vec<usize>,
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
    pub calibration: Option<crate::types::Calibration>,
    /// The gRPC endpoint measured (`None`: in this process).
    pub endpoint: Option<String>,
    /// Size on disk of the first collection (vectors, ids and its index); in-process only.
    pub index_bytes: Option<u64>,
    pub indexes: Vec<IndexBuild>,
    /// In-memory bytes of the sign codes (the signscan strategy's resident extra); in-process only.
    pub signscan_bytes: Option<usize>,
    /// Peak RSS of this process when the first collection's build (import, index, codes and
    /// calibration) had finished, before any query of the sweep; in-process only.
    pub build_rss_peak_mib: Option<f64>,
    /// Peak RSS of the process that held the collection, at the end; in-process only.
    pub rss_peak_mib: Option<f64>,
    pub exact: Summary,
    pub runs: Vec<Run>,
    pub throughput: Vec<Throughput>,
}

pub fn run(options: &BenchOptions) -> Result<BenchReport> {
    // A second or later collection is built only for its index strategy's rows: refused
    // before any build when it would have no durable index to sweep.
    if let Some(index) = options.indexes.iter().skip(1).find(|i| !i.durable_index_built()) {
        return Err(Error::Request(crate::error::RequestError::new(
            "n-trees",
            index.arroy_trees_built(),
            "a bench of more than one index sweeps the later ones' index strategy only, and an arroy build with \
             no trees has none; put arroy first or pass --n-trees >= 1",
        )));
    }
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
    let mut build_rss_peak_mib = None;
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
        build_rss_peak_mib.get_or_insert_with(rss_peak_mib);
        let collection = Searcher::open(&root.join(&manifest.name))?;
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
    let truth = match &options.ground_truth {
        Some(path) => truth_file(path, queries.len(), k)?,
        None => ground_truth(first, &queries, k)?,
    };
    first.preload()?;
    let mut settings = sweep_settings(options, &first.manifest().index, max_lists(first));
    for (on, (_, collection)) in collections.iter().enumerate().skip(1) {
        collection.preload()?;
        let extra = sweep_settings(options, &collection.manifest().index, 0);
        settings.extend(extra.into_iter().filter(|s| s.strategy == Strategy::Index).map(|s| Setting { on, ..s }));
    }
    let targets: Vec<&dyn Target> = collections.iter().map(|(_, c)| c as &dyn Target).collect();
    let (exact, runs) = measure_all(&targets, &settings, &queries, &truth, k, options.warmup)?;
    let connect = || Ok(Box::new(first) as Box<dyn Target + '_>);
    let throughput = throughputs(&options.threads, first.manifest().search, &connect, &queries, k)?;
    Ok(BenchReport {
        dataset: Dataset { n: first.len(), dims: first.manifest().dimensions, queries: queries.len() },
        k,
        partitions: options.partitions.max(1),
        import_s: first.manifest().timings.import_s,
        import_rows_per_s: first.len() as f64 / first.manifest().timings.import_s.max(1e-9),
        build_s: first.manifest().timings.build_s,
        calibrate_s: first.manifest().timings.calibrate_s,
        calibration: first.manifest().calibration.clone(),
        endpoint: None,
        index_bytes: Some(first.disk_bytes()),
        indexes: builds,
        signscan_bytes: Some(first.signscan().memory_bytes()),
        build_rss_peak_mib,
        rss_peak_mib: Some(rss_peak_mib()),
        exact,
        runs,
        throughput,
    })
}

/// Something that answers top-k queries: a collection in this process, or an engine over gRPC.
pub trait Target: Sync {
    fn top_k(&self, request: &SearchRequest) -> Result<Vec<u64>>;
}

impl Target for Searcher {
    fn top_k(&self, request: &SearchRequest) -> Result<Vec<u64>> {
        Ok(search(self, request)?.iter().map(|h| h.id).collect())
    }
}

impl<T: Target + ?Sized> Target for &T {
    fn top_k(&self, request: &SearchRequest) -> Result<Vec<u64>> {
        (**self).top_k(request)
    }
}

/// One point of a sweep: a strategy and quality, on the `on`-th target.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    pub label: String,
    pub strategy: Strategy,
    pub quality: usize,
    pub probes: usize,
    pub on: usize,
}

/// The sweep the options ask for: signscan qualities at each probe count (of a collection
/// with up to `lists` coarse lists per partition), then the index's own knob when it has a
/// durable index (an arroy build with no trees has none).
fn sweep_settings(options: &BenchOptions, index: &IndexParams, lists: usize) -> Vec<Setting> {
    let setting = |label: String, strategy, quality, probes| Setting { label, strategy, quality, probes, on: 0 };
    let probes = if options.probes_sweep.is_empty() {
        crate::search::calibrate::probe_ladder(lists)
    } else {
        options.probes_sweep.clone()
    };
    let mut settings: Vec<Setting> = Vec::new();
    for &p in &probes {
        let label =
            |q: usize| if p == 0 { format!("signscan rerank={q}") } else { format!("signscan probes={p} rerank={q}") };
        settings.extend(options.signscan_sweep.iter().map(|&q| setting(label(q), Strategy::SignScan, q, p)));
    }
    let (sweep, knob) = match index.backend {
        Backend::Arroy => (&options.arroy_sweep, "search_k"),
        Backend::Hannoy => (&options.hannoy_sweep, "ef"),
    };
    if !index.durable_index_stored() {
        eprintln!("no {knob} rows: the collection was built with no arroy trees (--n-trees 0, the default)");
        return settings;
    }
    for &q in sweep {
        let label = if q == 0 { "default".to_string() } else { q.to_string() };
        settings.push(setting(format!("{} {knob}={label}", index.backend.as_str()), Strategy::Index, q, 0));
    }
    settings
}

/// Exact search, then every setting: one query at a time after `warmup` queries, each timed,
/// recall against `truth`.
fn measure_all(
    targets: &[&dyn Target],
    settings: &[Setting],
    queries: &[Vec<f32>],
    truth: &[Vec<u64>],
    k: usize,
    warmup: usize,
) -> Result<(Summary, Vec<Run>)> {
    let measure = |target: &dyn Target, strategy: Strategy, quality: usize, probes: usize| -> Result<(Summary, f64)> {
        let request = |q: &Vec<f32>| SearchRequest {
            strategy: Some(strategy),
            quality: Some(quality),
            probes: Some(probes),
            ..SearchRequest::new(q.clone(), k)
        };
        for q in queries.iter().cycle().take(warmup) {
            target.top_k(&request(q))?;
        }
        let mut latencies = Latencies::default();
        let mut recall_sum = 0.0;
        for (q, t) in queries.iter().zip(truth) {
            let r = request(q);
            let start = Instant::now();
            let ids = target.top_k(&r)?;
            latencies.record(start.elapsed());
            recall_sum += recall(&ids, t);
        }
        Ok((latencies.summary(), recall_sum / queries.len() as f64))
    };
    let (exact, exact_recall) = measure(targets[0], Strategy::Exact, 0, 0)?;
    let mut runs = vec![run_row("exact".into(), exact, exact_recall)];
    for s in settings {
        let (summary, r) = measure(targets[s.on], s.strategy, s.quality, s.probes)?;
        runs.push(run_row(s.label.clone(), summary, r));
    }
    Ok((exact, runs))
}

/// Queries per second with `threads` clients (each from `connect`) sending every query once,
/// one at a time, with the collection's default setting.
fn throughput<'a>(
    connect: &(dyn Fn() -> Result<Box<dyn Target + 'a>> + Sync),
    queries: &[Vec<f32>],
    k: usize,
    threads: usize,
) -> Result<f64> {
    let clients = (0..threads.max(1)).map(|_| connect()).collect::<Result<Vec<_>>>()?;
    let start = Instant::now();
    let results: Vec<Result<()>> = std::thread::scope(|scope| {
        let handles: Vec<_> = clients
            .iter()
            .enumerate()
            .map(|(t, client)| {
                scope.spawn(move || -> Result<()> {
                    // Each client starts at a different offset so they do not move in lockstep.
                    let offset = t * queries.len() / threads.max(1);
                    for i in 0..queries.len() {
                        client.top_k(&SearchRequest::new(queries[(i + offset) % queries.len()].clone(), k))?;
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

/// Throughput at each client count, with the collection's default setting.
fn throughputs<'a>(
    threads: &[usize],
    default: crate::types::SearchDefaults,
    connect: &(dyn Fn() -> Result<Box<dyn Target + 'a>> + Sync),
    queries: &[Vec<f32>],
    k: usize,
) -> Result<Vec<Throughput>> {
    threads
        .iter()
        .map(|&threads| {
            Ok(Throughput { threads, setting: default.to_string(), qps: throughput(connect, queries, k, threads)? })
        })
        .collect()
}

/// Exact top-k of every query, by `target`.
fn ground_truth(target: &dyn Target, queries: &[Vec<f32>], k: usize) -> Result<Vec<Vec<u64>>> {
    queries
        .par_iter()
        .map(|q| target.top_k(&SearchRequest { strategy: Some(Strategy::Exact), ..SearchRequest::new(q.clone(), k) }))
        .collect()
}

/// Ground truth from a file (first `k` per row), checked to cover every query.
fn truth_file(path: &Path, queries: usize, k: usize) -> Result<Vec<Vec<u64>>> {
    let truth: Vec<Vec<u64>> =
        import::npy::read_ids(path)?.into_iter().map(|row| row.into_iter().take(k).collect()).collect();
    if truth.len() < queries {
        return Err(crate::error::RequestError::new(
            "ground_truth",
            truth.len(),
            format!("fewer ground-truth rows than the {queries} queries"),
        )
        .into());
    }
    Ok(truth)
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
    let mib = |bytes: Option<f64>| bytes.map_or("-".to_string(), |b| format!("{:.1} MiB", b / (1 << 20) as f64));
    let mut out = format!(
        "n={} dims={} queries={} k={} partitions={}{} | import {:.2}s ({:.0} rows/s) build {:.2}s disk {} signcodes {} build-rss-peak {} rss-peak {}\n",
        report.dataset.n,
        report.dataset.dims,
        report.dataset.queries,
        report.k,
        report.partitions,
        report.endpoint.as_ref().map(|e| format!(" endpoint={e}")).unwrap_or_default(),
        report.import_s,
        report.import_rows_per_s,
        report.build_s,
        mib(report.index_bytes.map(|b| b as f64)),
        mib(report.signscan_bytes.map(|b| b as f64)),
        mib(report.build_rss_peak_mib.map(|m| m * (1 << 20) as f64)),
        mib(report.rss_peak_mib.map(|m| m * (1 << 20) as f64)),
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

/// An engine over gRPC, queried through the retrying client. Each has its own connection and
/// single-threaded runtime, as a synchronous client thread would.
struct Endpoint {
    client: quiver_api::client::Client,
    collection: String,
    runtime: tokio::runtime::Runtime,
}

impl Target for Endpoint {
    fn top_k(&self, r: &SearchRequest) -> Result<Vec<u64>> {
        let request = crate::serve::proto::SearchRequest {
            collection: self.collection.clone(),
            vector: r.vector.clone(),
            k: r.k as u32,
            partitions: r.partitions.clone(),
            tags: r.tags.clone(),
            strategy: r.strategy.map(|s| s.as_str().to_string()).unwrap_or_default(),
            quality: r.quality.unwrap_or(0) as u32,
            probes: r.probes.map(|p| p as u32),
        };
        let response = self.runtime.block_on(self.client.search(request)).map_err(|s| remote_error(&self.client, s))?;
        Ok(response.hits.iter().map(|h| h.id).collect())
    }
}

fn remote_error(client: &quiver_api::client::Client, s: tonic::Status) -> Error {
    Error::Remote { target: client.target().to_string(), reason: format!("{}: {}", s.code(), s.message()) }
}

/// The same measurements as [`run`], through gRPC against a running engine's `collection`:
/// the served latency a client sees. Build fields come from the remote manifest; what only
/// the serving process knows (disk, RSS) is left empty.
pub fn remote(
    options: &BenchOptions,
    endpoint: &str,
    collection: &str,
    client_options: quiver_api::client::ClientOptions,
) -> Result<BenchReport> {
    let connect = || -> Result<Endpoint> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the async runtime", e))?;
        let client = {
            let _entered = runtime.enter();
            quiver_api::client::Client::new(endpoint, client_options.clone())?
        };
        Ok(Endpoint { client, collection: collection.to_string(), runtime })
    };
    let first = connect()?;
    let status = first.runtime.block_on(first.client.status(collection)).map_err(|s| remote_error(&first.client, s))?;
    let manifest: crate::collection::manifest::Manifest = serde_json::from_str(&status.manifest_json)
        .map_err(|e| Error::Remote { target: endpoint.to_string(), reason: format!("unreadable manifest: {e}") })?;
    let queries = import::read_vectors(&options.queries)?;
    let k = options.k;
    let truth = match &options.ground_truth {
        Some(path) => truth_file(path, queries.len(), k)?,
        None => ground_truth(&first, &queries, k)?,
    };
    // The remote collection's lists are not in its manifest: sweep its calibrated probe count
    // and the whole partition unless told otherwise.
    let mut options = options.clone();
    if options.probes_sweep.is_empty() && manifest.search.probes > 0 {
        options.probes_sweep = vec![manifest.search.probes, 0];
    }
    let settings = sweep_settings(&options, &manifest.index, 0);
    let (exact, runs) = measure_all(&[&first], &settings, &queries, &truth, k, options.warmup)?;
    let clients = || Ok(Box::new(connect()?) as Box<dyn Target>);
    let throughput = throughputs(&options.threads, manifest.search, &clients, &queries, k)?;
    Ok(BenchReport {
        dataset: Dataset { n: manifest.count, dims: manifest.dimensions, queries: queries.len() },
        k,
        partitions: manifest.partitions.len(),
        import_s: manifest.timings.import_s,
        import_rows_per_s: manifest.count as f64 / manifest.timings.import_s.max(1e-9),
        build_s: manifest.timings.build_s,
        calibrate_s: manifest.timings.calibrate_s,
        calibration: manifest.calibration.clone(),
        endpoint: Some(endpoint.to_string()),
        index_bytes: None,
        indexes: vec![IndexBuild {
            backend: manifest.index.backend.as_str().into(),
            build_s: manifest.timings.build_s,
            disk_bytes: 0,
        }],
        signscan_bytes: None,
        build_rss_peak_mib: None,
        rss_peak_mib: None,
        exact,
        runs,
        throughput,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A later collection without a durable index would be built for rows it cannot have:
    /// refused before anything is read or built.
    #[test]
    fn a_later_index_without_trees_is_refused_before_any_build() {
        let options = BenchOptions {
            base: "/nonexistent/base.npy".into(),
            queries: "/nonexistent/queries.npy".into(),
            ground_truth: None,
            metric: Metric::Cosine,
            k: 10,
            partitions: 1,
            indexes: vec![IndexParams::hannoy(64), IndexParams::arroy(None)],
            warmup: 0,
            signscan_sweep: vec![10],
            probes_sweep: Vec::new(),
            arroy_sweep: vec![0],
            hannoy_sweep: vec![16],
            data_dir: None,
            threads: Vec::new(),
        };
        match run(&options) {
            Err(Error::Request(e)) => assert_eq!((e.field.as_str(), e.value.as_str()), ("n-trees", "0")),
            other => panic!("{other:?}"),
        }
    }
}
