//! `quiver demo`: the blue/green rebuild this product exists for, in one process on generated
//! clustered data. Build v1, verify, point alias `products` at it and serve queries; build v2
//! beside it while queries keep running, warm and verify it, flip; then build v3 with a wrong
//! expected count and show the flip refused with the alias unchanged.

use crate::build::import_and_build;
use crate::catalog::Catalog;
use crate::collection::builder::BuildOptions;
use crate::datagen::Clustered;
use crate::error::{Error, Result};
use crate::import::{self, ReadOptions};
use crate::latency::Latencies;
use crate::search::{SearchRequest, search};
use crate::types::Metric;
use crate::types::VerifyReport;
use crate::verify::{VerifyOptions, verify};
use crate::warmup::{WarmupOptions, warm};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub const ALIAS: &str = "products";

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub data_dir: Option<PathBuf>,
    pub vectors: usize,
    pub dims: usize,
    pub progress: bool,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions { data_dir: None, vectors: 30_000, dims: 128, progress: true }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub collection: String,
    pub vectors: u64,
    pub import_s: f64,
    pub build_s: f64,
    pub verification: VerifyReport,
    pub alias_flipped: bool,
    pub refusal: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    pub rows: Vec<Row>,
    pub queries_during_rebuild: u64,
    pub answered_by_old: u64,
    pub answered_by_new: u64,
    pub failed_queries: u64,
    pub load_p50_ms: f64,
    pub load_p99_ms: f64,
    pub alias_target: Option<String>,
    pub alias_previous: Option<String>,
    pub seconds: f64,
}

#[derive(Default)]
struct Load {
    latencies: Latencies,
    by_collection: std::collections::BTreeMap<String, u64>,
    failed: u64,
}

pub fn run(options: &DemoOptions) -> Result<DemoReport> {
    let started = Instant::now();
    let temp;
    let root: PathBuf = match &options.data_dir {
        Some(d) => d.join(format!("demo-{}", std::process::id())),
        None => {
            temp = tempfile::tempdir().map_err(|e| Error::io("creating a temporary directory", e))?;
            temp.path().to_path_buf()
        }
    };
    std::fs::create_dir_all(&root).map_err(|e| Error::io(format!("creating {}", root.display()), e))?;
    let generator = Clustered::new(options.dims, 2026);
    let n1 = options.vectors;
    let n2 = options.vectors + options.vectors / 10;
    let v1_file = write_npy(&root, "v1.npy", &generator, n1, 1)?;
    let v2_file = write_npy(&root, "v2.npy", &generator, n2, 2)?;
    let queries = generator.generate(500, 3);
    let queries: Vec<Vec<f32>> = queries.chunks(options.dims).map(<[f32]>::to_vec).collect();

    let catalog = Arc::new(Catalog::open(&root)?);
    let mut rows = Vec::new();

    // v1: build, verify, flip, start serving.
    let (row, _) = build_verify_flip(&catalog, &root, options, "products-v1", &v1_file, n1 as u64)?;
    if let Some(why) = &row.refusal {
        return Err(Error::Alias {
            alias: ALIAS.into(),
            reason: format!("the first collection cannot be served: {why}"),
        });
    }
    rows.push(row);

    let stop = Arc::new(AtomicBool::new(false));
    let load = Arc::new(Mutex::new(Load::default()));
    let client = {
        let (catalog, stop, load, queries) = (catalog.clone(), stop.clone(), load.clone(), queries.clone());
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let q = &queries[i % queries.len()];
                i += 1;
                let t = Instant::now();
                let answer = catalog.resolve(ALIAS).and_then(|c| {
                    search(&c, &SearchRequest::new(q.clone(), 10)).map(|hits| (c.name().to_string(), hits))
                });
                let mut load = load.lock().expect("load lock");
                match answer {
                    Ok((name, hits)) if hits.len() == 10 => {
                        load.latencies.record(t.elapsed());
                        *load.by_collection.entry(name).or_default() += 1;
                    }
                    _ => load.failed += 1,
                }
            }
        })
    };

    // v2 is built beside v1 while v1 serves; the alias moves only after v2 verifies.
    let (row, w) = build_verify_flip(&catalog, &root, options, "products-v2", &v2_file, n2 as u64)?;
    eprintln!(
        "warm-up of products-v2: cold first query {:.2} ms, warm p50 {:.3} ms / p99 {:.3} ms after {} queries",
        w.cold_first_query_ms, w.warm_p50_ms, w.warm_p99_ms, w.queries
    );
    rows.push(row);
    std::thread::sleep(std::time::Duration::from_millis(500));

    // v3: a rebuild whose count does not match what the source promised.
    let (row, _) = build_verify_flip(&catalog, &root, options, "products-v3", &v2_file, n2 as u64 + 1)?;
    rows.push(row);

    stop.store(true, Ordering::Relaxed);
    client.join().map_err(|_| Error::io("query client", std::io::Error::other("panicked")))?;
    let load = std::mem::take(&mut *load.lock().expect("load lock"));
    let record = catalog.get(ALIAS)?;
    let summary = load.latencies.summary();
    Ok(DemoReport {
        rows,
        queries_during_rebuild: load.by_collection.values().sum::<u64>() + load.failed,
        answered_by_old: load.by_collection.get("products-v1").copied().unwrap_or(0),
        answered_by_new: load.by_collection.get("products-v2").copied().unwrap_or(0),
        failed_queries: load.failed,
        load_p50_ms: summary.p50_ms,
        load_p99_ms: summary.p99_ms,
        alias_target: record.as_ref().map(|r| r.collection.clone()),
        alias_previous: record.and_then(|r| r.previous),
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn write_npy(root: &Path, name: &str, generator: &Clustered, n: usize, stream: u64) -> Result<String> {
    let path = root.join(name);
    let data = generator.generate(n, stream);
    import::npy::write_f32(&path, n, generator.dims, &data)
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    Ok(path.display().to_string())
}

fn build_verify_flip(
    catalog: &Catalog,
    root: &Path,
    options: &DemoOptions,
    name: &str,
    source: &str,
    expected_count: u64,
) -> Result<(Row, crate::warmup::WarmupReport)> {
    let mut build = BuildOptions::new(name, Metric::Cosine);
    build.progress = options.progress;
    let manifest = import_and_build(root, &build, import::read(source, &ReadOptions::default())?)?;
    let collection = catalog.collection(name)?;
    let warmup = warm(&collection, &WarmupOptions::default())?;
    let verification = verify(
        &collection,
        &VerifyOptions {
            expected_count: Some(expected_count),
            min_recall: 0.95,
            max_p99_ms: Some(50.0),
            ..Default::default()
        },
    )?;
    let (alias_flipped, refusal) = match catalog.flip(ALIAS, collection, &verification) {
        Ok(_) => (true, None),
        Err(e) => (false, Some(e.to_string())),
    };
    let row = Row {
        collection: name.to_string(),
        vectors: manifest.count,
        import_s: manifest.timings.import_s,
        build_s: manifest.timings.build_s,
        verification,
        alias_flipped,
        refusal,
    };
    Ok((row, warmup))
}

/// The printed summary.
pub fn table(report: &DemoReport) -> String {
    let mut out = format!(
        "{:<13} {:>8} {:>8} {:>8} {:>9} {:>8} {:>8}  {}\n",
        "collection", "vectors", "import s", "build s", "recall@10", "p99 ms", "verified", "alias"
    );
    for r in &report.rows {
        let get = |name: &str| {
            r.verification.gates.iter().find(|c| c.name.starts_with(name)).map(|c| c.measured).unwrap_or(f64::NAN)
        };
        out.push_str(&format!(
            "{:<13} {:>8} {:>8.2} {:>8.2} {:>9.3} {:>8.3} {:>8}  {}\n",
            r.collection,
            r.vectors,
            r.import_s,
            r.build_s,
            get("recall"),
            get("p99"),
            if r.verification.passed { "yes" } else { "NO" },
            match &r.refusal {
                None => format!("{ALIAS} -> {}", r.collection),
                Some(why) => format!("flip refused: {why}"),
            }
        ));
    }
    out.push_str(&format!(
        "queries served while v2 and v3 were built and the alias flipped: {} (v1 {}, v2 {}), failed: {}, p50 {:.3} ms, p99 {:.3} ms\n",
        report.queries_during_rebuild, report.answered_by_old, report.answered_by_new, report.failed_queries, report.load_p50_ms, report.load_p99_ms
    ));
    out.push_str(&format!(
        "alias {ALIAS} -> {} (previous: {}); demo took {:.1}s\n",
        report.alias_target.as_deref().unwrap_or("nothing"),
        report.alias_previous.as_deref().unwrap_or("none"),
        report.seconds
    ));
    out
}
