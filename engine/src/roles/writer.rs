//! `quiver writer`: builds one collection, from --source at start or from Ingest pushes (or
//! restores it sealed from a snapshot store, --restore-from), writes its snapshot and serves it
//! (Snapshot), its progress (Ingest.Progress) and status (Admin).
//! Ready once the snapshot is written. A restart finds a sealed collection and serves it again;
//! anything half-imported was in a staging directory and is discarded, while the Ingest
//! streams it acknowledged stay in the spool for the next Seal.

use super::{Listeners, ServeRole, serving_process};
use crate::collection::builder::BuildOptions;
use crate::error::{Error, Result};
use crate::import::{self, ReadOptions};
use crate::metrics::Metrics;
use crate::publish::{Publisher, Stage};
use crate::roles::replica::{FetchOptions, Source, fetch_snapshot, present_snapshot};
use crate::search::searcher::Searcher;
use crate::serve::ingest::{IngestService, WritePace};
use crate::serve::termination;
use crate::snapshot::store::SnapshotStore;
use crate::snapshot::{SnapshotDir, SnapshotInfo};
use crate::spool::{RecordRules, Spool, SpoolLimits};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What `quiver writer` builds, from where, and how it serves.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    pub data_dir: PathBuf,
    /// The collection's name and how it is built.
    pub build: BuildOptions,
    /// Imported at start; without it the writer waits for Ingest pushes.
    pub source: Option<String>,
    /// How `source` is read (and where a local one may lie).
    pub read: ReadOptions,
    pub spool: SpoolLimits,
    pub pace: WritePace,
    pub serve: ServeRole,
    /// Publishes the sealed snapshot there too (`s3://bucket/prefix`, in the background), with
    /// `read`'s credentials policy.
    pub snapshot_store: Option<String>,
    /// Restored sealed from this snapshot (`s3://bucket/prefix/<collection>`, read with
    /// `read`'s credentials policy) instead of imported: no import and no build.
    pub restore_from: Option<String>,
}

/// Runs until SIGTERM or SIGINT (see [`run_until`]).
pub fn run(a: WriterConfig) -> Result<i32> {
    run_until(a, termination())
}

/// Runs until `stop` resolves, then drains and exits like on SIGTERM: how a test or an
/// embedding program starts the role from its configuration alone.
pub fn run_until(a: WriterConfig, stop: impl Future<Output = ()> + Send + 'static) -> Result<i32> {
    let root = a.data_dir.clone();
    let name = a.build.name.clone();
    // A source the writer could never read is refused now (exit 2), not after start-up.
    let store = a.snapshot_store.as_deref().map(|uri| SnapshotStore::new(uri, a.read.credentials)).transpose()?;
    if let Some(source) = &a.source {
        import::source::check_source(source, &a.read)?;
    }
    let restore =
        a.restore_from.as_deref().map(|url| SnapshotStore::of_snapshot(url, a.read.credentials)).transpose()?;
    if let Some((from, restored)) = &restore {
        if a.source.is_some() {
            return Err(Error::Usage {
                flag: "--restore-from".into(),
                value: from.uri(),
                reason: "a writer either imports --source or restores a snapshot, not both".into(),
            });
        }
        // The name is in the snapshot's manifest (and checked against it on install).
        if restored != &name {
            return Err(Error::Usage {
                flag: "--restore-from".into(),
                value: format!("{}/{restored}", from.uri()),
                reason: format!(
                    "is a snapshot of {restored}; this writer's collection is {name} (a collection is restored under its own name)"
                ),
            });
        }
    }
    if a.pace.idle.is_zero() {
        return Err(Error::Usage {
            flag: "--write-idle-secs".into(),
            value: "0".into(),
            reason: "a Write stream needs at least one second between batches".into(),
        });
    }
    super::serve_role(&a.serve, async {
        let metrics = Arc::new(Metrics::new());
        let process = serving_process(&root, &name, metrics.clone()).await?;
        let listeners = Listeners::bind(&a.serve).await?;
        let rules = RecordRules { dimensions: a.build.dimensions, metric: a.build.metric };
        // A writer with --source takes no pushes: no spool.
        let spool = match (&a.source, &restore) {
            (None, None) => Some(Spool::open(&root, &name, rules, a.spool)?),
            _ => None,
        };
        let publisher = Arc::new(Publisher::new(&root, a.build.clone(), metrics).with_store(store.clone()));

        let recovered = {
            let publisher = publisher.clone();
            tokio::task::spawn_blocking(move || publisher.recover())
                .await
                .map_err(|e| Error::io("recovering", std::io::Error::other(e)))??
        };
        if let (Some(_), Some(spool)) = (&recovered, &spool) {
            // Sealed: what the spool holds is in the collection already.
            spool.discard();
        }
        let ingest = IngestService::new(process.clone(), publisher.clone(), spool, a.source.clone(), a.pace);
        if let Some((collection, info)) = recovered {
            tracing::info!("{} is sealed; serving snapshot sha256 {}", info.collection, info.sha256);
            process.catalog.adopt(collection);
            process.set_ready(true).await;
        } else if let Some((from, _)) = restore {
            let (process, publisher, root) = (process.clone(), publisher.clone(), root.clone());
            tokio::spawn(async move {
                match restore_sealed(&from, &root, &publisher, &process.metrics).await {
                    Ok((collection, info)) => {
                        tracing::info!("{} restored sealed; snapshot sha256 {}", info.collection, info.sha256);
                        process.catalog.adopt(collection);
                        process.set_ready(true).await;
                    }
                    // The reason stays visible in Ingest.Progress; the process keeps serving it.
                    Err(e) => {
                        tracing::error!("the restore failed: {e}");
                        publisher.set_stage(Stage::Failed(e.to_string()));
                    }
                }
            });
        } else if let Some(source) = a.source.clone() {
            let read = a.read.clone();
            let (process, publisher) = (process.clone(), publisher.clone());
            tokio::spawn(async move {
                let built = tokio::task::spawn_blocking(move || {
                    let records = import::read(&source, &read)?;
                    publisher.publish(records)
                })
                .await;
                match built {
                    Ok(Ok((collection, info))) => {
                        tracing::info!("{} sealed; snapshot sha256 {}", info.collection, info.sha256);
                        process.catalog.adopt(collection);
                        process.set_ready(true).await;
                    }
                    // The reason stays visible in Ingest.Progress; the process keeps serving it.
                    Ok(Err(e)) => tracing::error!("the import failed: {e}"),
                    Err(e) => tracing::error!("the import task failed: {e}"),
                }
            });
        } else {
            tracing::info!("waiting for Ingest pushes of {name}");
        }
        super::run(process, listeners, a.serve.config.clone(), Some(ingest), stop).await
    })?;
    Ok(0)
}

/// How long a restore may wait for the store (it is down, or slow) before the collection fails.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(3600);

/// `--restore-from`: the sealed collection of snapshot store `from`, as this writer's. Its
/// description is checked against this writer's dimensions and distance before a byte is
/// fetched (a store that cannot be reached is waited for, one with no such snapshot fails at
/// once); the file is fetched as a replica fetches it (resumed after a failure, its sha256
/// checked on disk; a fetch finished before a restart is kept), installed (its manifest
/// compared with the description's), then published like a collection this writer built.
async fn restore_sealed(
    from: &SnapshotStore,
    root: &Path,
    publisher: &Arc<Publisher>,
    metrics: &Arc<Metrics>,
) -> Result<(Arc<Searcher>, SnapshotInfo)> {
    let name = publisher.name().to_string();
    let location = format!("{}/{name}", from.uri());
    let deadline = Instant::now() + RESTORE_TIMEOUT;
    let mut delay = Duration::from_secs(1);
    let described = loop {
        let (store, collection) = (from.clone(), name.clone());
        let described = tokio::task::spawn_blocking(move || store.described(&collection))
            .await
            .map_err(|e| Error::io("reading the snapshot description", std::io::Error::other(e)))?;
        match described {
            Ok(Some(stored)) => break stored.info,
            Ok(None) => {
                return Err(Error::Snapshot {
                    collection: name,
                    reason: format!("no snapshot at {location} (its snapshot.json is not there)"),
                });
            }
            Err(e) if Instant::now() + delay < deadline => {
                tracing::warn!("reading {location}: {e}; trying again in {}s", delay.as_secs());
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(60));
            }
            Err(e) => return Err(e),
        }
    };
    fits(publisher.options(), &described, &location)?;
    publisher.set_stage(Stage::Restoring { from: location.clone(), bytes: described.size });
    let snapshots = SnapshotDir::new(root);
    let info = match present_snapshot(&snapshots, &name).await?.filter(|info| info.sha256 == described.sha256) {
        Some(info) => info,
        None => {
            let options = FetchOptions {
                client: Default::default(),
                bytes_per_sec: None,
                timeout: deadline.saturating_duration_since(Instant::now()),
                attempt_timeout: Duration::from_secs(900),
                stall_timeout: Duration::from_secs(30),
                progress_every: crate::snapshot::progress::EVERY,
                // The snapshot whose description was checked against this collection above,
                // by its sha256, whatever is published over it meanwhile.
                pinned: Some(described.sha256.clone()),
            };
            fetch_snapshot(&[Source::Store(from.clone())], &name, &snapshots, metrics, &options).await?
        }
    };
    // What was fetched is checked too (a description that lied about its manifest).
    fits(publisher.options(), &info, &location)?;
    let (root, publisher) = (root.to_path_buf(), publisher.clone());
    tokio::task::spawn_blocking(move || publisher.adopt_restored(snapshots.install(&root, &info)?))
        .await
        .map_err(|e| Error::io("installing the snapshot", std::io::Error::other(e)))?
}

/// Whether snapshot `info` at `location` is what this writer's settings describe: its
/// dimensions and distance, its index backend, and each index setting given explicitly (a
/// restored collection keeps the settings it was built with, so a spec that names others would
/// describe a collection it does not serve).
fn fits(wanted: &BuildOptions, info: &SnapshotInfo, location: &str) -> Result<()> {
    let manifest = &info.manifest;
    let refused = |reason: String| Error::Snapshot { collection: info.collection.clone(), reason };
    if !(wanted.dimensions.is_none_or(|d| d == manifest.dimensions) && wanted.metric == manifest.metric) {
        return Err(refused(format!(
            "{location} holds {} dimensions, distance {}; this collection has {}, distance {}",
            manifest.dimensions,
            manifest.metric,
            wanted.dimensions.map_or("any".to_string(), |d| d.to_string()),
            wanted.metric
        )));
    }
    let (asked, built) = (&wanted.index, &manifest.index);
    let metric = manifest.metric;
    // (flag, asked, built): only what was asked for, against what the manifest records (a
    // count it does not record, as built before it did, is not second-guessed).
    let settings = [
        ("--index", Some(asked.backend.as_str().to_string()), Some(built.backend.as_str().to_string())),
        ("--n-trees", asked.n_trees.map(|n| n.to_string()), built.n_trees.map(|n| n.to_string())),
        ("--lists", asked.lists.map(|n| n.to_string()), built.lists.map(|n| n.to_string())),
        (
            "--arroy-vectors",
            asked.arroy_vectors.map(|_| asked.arroy_vectors_built(metric).as_str().to_string()),
            Some(built.arroy_vectors_stored(metric).as_str().to_string()),
        ),
        (
            "--shortlist",
            asked.shortlist.map(|s| s.as_str().to_string()),
            Some(built.shortlist_stored().as_str().to_string()),
        ),
    ];
    for (flag, asked, built) in settings {
        if let Some((asked, built)) = asked.zip(built).filter(|(asked, built)| asked != built) {
            return Err(refused(format!(
                "{location} was built with {flag} {built}; this collection asks for {asked} (a restored \
                 collection keeps its index: leave the setting out, or ask for {built})"
            )));
        }
    }
    Ok(())
}
