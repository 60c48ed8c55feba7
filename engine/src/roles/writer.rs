//! `quiver writer`: builds one collection, from --source at start or from Ingest pushes, writes
//! its snapshot and serves it (Snapshot), its progress (Ingest.Progress) and status (Admin).
//! Ready once the snapshot is written. A restart finds a sealed collection and serves it again;
//! anything half-imported was in a staging directory and is discarded, while the Ingest
//! streams it acknowledged stay in the spool for the next Seal.

use super::{Listeners, ServeRole, serving_process};
use crate::collection::builder::BuildOptions;
use crate::error::{Error, Result};
use crate::import::{self, ReadOptions};
use crate::metrics::Metrics;
use crate::publish::Publisher;
use crate::serve::ingest::{IngestService, WritePace};
use crate::serve::termination;
use crate::snapshot::store::SnapshotStore;
use crate::spool::{RecordRules, Spool, SpoolLimits};
use std::path::PathBuf;
use std::sync::Arc;

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
        let spool = match a.source {
            None => Some(Spool::open(&root, &name, rules, a.spool)?),
            Some(_) => None,
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
