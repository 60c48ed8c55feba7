//! The commands that work on a data directory in this process: import, search, inspect,
//! verify, warm-up, alias, bench, demo and generate.

use super::args::*;
use crate::bench::{self, BenchOptions};
use crate::build::import_and_build;
use crate::cancel::Cancel;
use crate::catalog::Catalog;
use crate::demo::{self, DemoOptions};
use crate::error::{Error, Result};
use crate::import;
use crate::search::searcher::Searcher;
use crate::search::{self as query, SearchRequest};
use crate::types::{Backend, IndexParams};
use crate::verify::verify as verify_collection;
use crate::warmup::{WarmupOptions, warm};
use std::sync::Arc;

/// The collection a target names, or the one behind its alias.
fn open(target: &Target) -> Result<Arc<Searcher>> {
    match (&target.collection, &target.alias) {
        (Some(c), _) => Ok(Arc::new(Searcher::open(&target.dir.data_dir.join(c))?)),
        (None, Some(a)) => Catalog::open(&target.dir.data_dir)?.resolve(a),
        (None, None) => unreachable!("clap requires one"),
    }
}

fn print_json(value: &impl serde::Serialize) {
    println!("{}", serde_json::to_string_pretty(value).expect("serializable"));
}

pub fn import(a: ImportArgs) -> Result<i32> {
    let mut options = a.build.options(&a.name);
    options.progress = true;
    std::fs::create_dir_all(&a.dir.data_dir)
        .map_err(|e| Error::io(format!("creating {}", a.dir.data_dir.display()), e))?;
    let records = import::read(&a.source, &a.build.read_options())?;
    let manifest = import_and_build(&a.dir.data_dir, &options, records)?;
    print_json(&manifest);
    Ok(0)
}

pub fn search(a: SearchArgs) -> Result<i32> {
    let c = open(&a.target)?;
    let vectors = match (&a.vector, &a.queries) {
        (Some(v), _) => vec![serde_json::from_str::<Vec<f32>>(v).map_err(|e| {
            crate::error::RequestError::new(
                "vector",
                v.chars().take(40).collect::<String>(),
                format!("not a JSON array of numbers: {e}"),
            )
        })?],
        (None, Some(uri)) => import::read_vectors(uri)?,
        (None, None) => {
            return Err(crate::error::RequestError::new("vector", "(none)", "pass --vector or --queries").into());
        }
    };
    for vector in vectors {
        let request = SearchRequest {
            vector,
            k: a.k,
            partitions: a.partitions.clone(),
            tags: a.tags.clone(),
            strategy: a.strategy,
            quality: a.quality,
            probes: a.probes,
        };
        println!("{}", serde_json::to_string(&query::search(&c, &request)?).expect("hits serialize"));
    }
    Ok(0)
}

pub fn inspect(a: InspectArgs) -> Result<i32> {
    let c = open(&a.target)?;
    let tags: std::collections::BTreeMap<&str, u64> = c.tag_counts().collect();
    let partitions: Vec<(String, u64)> =
        c.manifest().partitions.iter().cloned().zip(c.partition_members().iter().map(|m| m.len())).collect();
    print_json(&serde_json::json!({
        "manifest": c.manifest(),
        "partitions": partitions,
        "tags": tags,
        "disk_bytes": c.disk_bytes(),
    }));
    Ok(0)
}

pub fn verify(a: VerifyArgs) -> Result<i32> {
    let c = open(&a.target)?;
    let report = verify_collection(&c, &a.gate.options()?)?;
    crate::verify::emit(&report, a.gate.output.as_deref())?;
    Ok(crate::verify::exit_code(&report))
}

pub fn warmup(a: WarmupArgs) -> Result<i32> {
    let c = open(&a.target)?;
    let report = warm(&c, &WarmupOptions { max_queries: a.max_queries, ..Default::default() })?;
    print_json(&report);
    Ok(0)
}

pub fn alias(action: AliasAction) -> Result<i32> {
    match action {
        AliasAction::Flip { dir, alias, collection, gate } => {
            let catalog = Catalog::open(&dir.data_dir)?;
            let c = catalog.collection(&collection)?;
            let report = verify_collection(&c, &gate.options()?)?;
            crate::verify::emit(&report, gate.output.as_deref())?;
            match catalog.flip(&alias, c, &report) {
                Ok(record) => {
                    print_json(&record);
                    Ok(0)
                }
                Err(e @ Error::Alias { .. }) => {
                    eprintln!("error: {e}");
                    Ok(1)
                }
                Err(e) => Err(e),
            }
        }
        AliasAction::Show { dir, alias } => {
            let record = Catalog::open(&dir.data_dir)?
                .get(&alias)?
                .ok_or_else(|| Error::Alias { alias: alias.clone(), reason: "no such alias".into() })?;
            print_json(&record);
            Ok(0)
        }
    }
}

pub fn snapshot(a: SnapshotArgs) -> Result<i32> {
    use crate::import::object::Credentials;
    use crate::snapshot::SnapshotDir;
    use crate::snapshot::store::SnapshotStore;
    let uri = a.store.as_deref().ok_or_else(|| Error::Usage {
        flag: "--store".into(),
        value: "(none)".into(),
        reason: "name the snapshot store, e.g. --store s3://bucket/prefix (or QUIVER_SNAPSHOT_STORE)".into(),
    })?;
    let store = SnapshotStore::new(uri, Credentials::allowing_ambient(a.ambient_credentials))?;
    match a.action {
        SnapshotAction::List { all } => print_json(&store.list(all)?),
        SnapshotAction::Push { dir, collection } => {
            crate::collection::builder::check_name(&collection)?;
            let snapshots = SnapshotDir::new(&dir.data_dir);
            let sealed = crate::Collection::open(&dir.data_dir.join(&collection))?;
            let info = snapshots.write(&sealed)?;
            print_json(&store.push(&snapshots, &info)?);
        }
        SnapshotAction::Pull { dir, collection, sha256 } => {
            super::check_sha256("--sha256", sha256.as_deref())?;
            std::fs::create_dir_all(&dir.data_dir)
                .map_err(|e| Error::io(format!("creating {}", dir.data_dir.display()), e))?;
            crate::collection::builder::check_name(&collection)?;
            // Never over a collection already there (a pull is a restore, not a replacement).
            let target = dir.data_dir.join(&collection);
            if target.exists() {
                return Err(Error::Usage {
                    flag: "--collection".into(),
                    value: collection,
                    reason: format!("{} already holds this collection; pull into another --data-dir", target.display()),
                });
            }
            let snapshots = SnapshotDir::new(&dir.data_dir);
            let stored = match sha256 {
                Some(sha256) => Some(sha256),
                None => store.described(&collection)?.map(|s| s.info.sha256),
            };
            let info = match snapshots.checked_info(&collection)? {
                // A download finished earlier of the snapshot the store still holds.
                Some(info) if Some(&info.sha256) == stored.as_ref() => info,
                // The one just described (or asked for), by its sha256: one published over it
                // meanwhile is not mixed in.
                _ => store.pull(
                    &collection,
                    &snapshots,
                    stored.as_deref(),
                    &|_| {},
                    crate::snapshot::progress::EVERY,
                    Cancel::never(),
                )?,
            };
            snapshots.install(&dir.data_dir, &info)?;
            print_json(&info);
        }
    }
    Ok(0)
}

pub fn bench(a: BenchArgs) -> Result<i32> {
    let indexes = a
        .index
        .iter()
        .map(|b| match b {
            Backend::Arroy => IndexParams::arroy(a.n_trees),
            Backend::Hannoy => IndexParams::hannoy(a.ef_construction),
        })
        .map(|index| IndexParams { lists: a.lists, arroy_vectors: a.arroy_vectors, shortlist: a.shortlist, ..index })
        .collect();
    let options = BenchOptions {
        base: a.base.unwrap_or_default(),
        queries: a.queries,
        ground_truth: a.ground_truth,
        metric: a.distance,
        k: a.k,
        partitions: a.partitions,
        indexes,
        warmup: a.warmup,
        signscan_sweep: a.signscan,
        probes_sweep: a.probes,
        arroy_sweep: a.search_k,
        hannoy_sweep: a.ef,
        data_dir: a.data_dir,
        threads: a.threads,
    };
    let report = match (&a.endpoint, &a.collection) {
        (Some(endpoint), Some(collection)) => {
            let client = quiver_api::client::ClientOptions { token: a.token.read()?, ..Default::default() };
            bench::remote(&options, endpoint, collection, client)?
        }
        _ => bench::run(&options)?,
    };
    print!("{}", bench::table(&report));
    if let Some(path) = &a.json {
        let json = serde_json::to_string_pretty(&report).expect("report serializes");
        std::fs::write(path, json).map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    }
    Ok(0)
}

pub fn demo(a: DemoArgs) -> Result<i32> {
    let report = demo::run(&DemoOptions { data_dir: a.data_dir, vectors: a.vectors, dims: a.dims, progress: !a.json })?;
    if a.json {
        print_json(&report);
    } else {
        print!("{}", demo::table(&report));
    }
    Ok(if report.failed_queries == 0 { 0 } else { 1 })
}

pub fn generate(a: GenerateArgs) -> Result<i32> {
    let mut g = crate::datagen::Clustered::new(a.dims, a.seed);
    g.clusters = a.clusters;
    let data = g.generate(a.vectors, a.stream);
    import::npy::write_f32(&a.out, a.vectors, a.dims, &data)
        .map_err(|e| Error::io(format!("writing {}", a.out.display()), e))?;
    Ok(0)
}
