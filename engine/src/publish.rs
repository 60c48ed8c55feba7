//! The writer's pipeline for one collection: import, build, seal, write the snapshot (and
//! publish it to the snapshot store, when there is one), or restore it sealed from a store,
//! with the stage it is in readable at any time (Ingest.Progress, the operator).

use crate::Collection;
use crate::build::import_and_build;
use crate::collection::builder::{BuildOptions, BuildPhase, BuildProgress};
use crate::error::{Error, Result};
use crate::import::Records;
use crate::metrics::Metrics;
use crate::search::searcher::Searcher;
use crate::snapshot::store::SnapshotStore;
use crate::snapshot::{SnapshotDir, SnapshotInfo};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, PartialEq)]
pub enum Stage {
    /// Nothing imported yet: waiting for Ingest writes.
    Waiting,
    /// Ingest writes are being spooled.
    Receiving,
    /// import_and_build is running (its own phase is in the build progress).
    Building,
    /// The sealed collection is being restored from the snapshot store `from` (`bytes` long).
    Restoring {
        from: String,
        bytes: u64,
    },
    Snapshotting,
    /// Sealed, its snapshot written with this hex sha256.
    Sealed {
        sha256: String,
    },
    Failed(String),
}

/// Where a writer's collection stands, as Ingest.Progress reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Waiting,
    Receiving,
    Importing,
    Building,
    Calibrating,
    Restoring,
    Snapshotting,
    Sealed,
    Failed,
}

/// The sealed snapshot as it landed in the snapshot store.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// `<store>/<collection>`, redacted.
    pub location: String,
    pub sha256: String,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub phase: Phase,
    /// Rows imported so far.
    pub rows: u64,
    /// Why it failed, or how far a restore is.
    pub message: String,
    /// Set once the snapshot is completely in the snapshot store.
    pub stored: Option<Stored>,
    /// The sealed snapshot's hex sha256, once sealed.
    pub snapshot_sha256: Option<String>,
}

pub struct Publisher {
    root: PathBuf,
    options: BuildOptions,
    build: Arc<BuildProgress>,
    stage: Mutex<Stage>,
    metrics: Arc<Metrics>,
    /// Where the sealed snapshot is published (in the background, once sealed).
    store: Option<SnapshotStore>,
    /// Set by the background upload once the snapshot landed in `store`.
    stored: Arc<Mutex<Option<Stored>>>,
}

impl Publisher {
    pub fn new(root: &Path, mut options: BuildOptions, metrics: Arc<Metrics>) -> Publisher {
        let build = Arc::new(BuildProgress::default());
        options.observer = Some(build.clone());
        Publisher {
            root: root.to_path_buf(),
            options,
            build,
            stage: Mutex::new(Stage::Waiting),
            metrics,
            store: None,
            stored: Arc::default(),
        }
    }

    /// Publishes every sealed snapshot to `store` too.
    pub fn with_store(self, store: Option<SnapshotStore>) -> Publisher {
        Publisher { store, ..self }
    }

    pub fn name(&self) -> &str {
        &self.options.name
    }

    pub fn options(&self) -> &BuildOptions {
        &self.options
    }

    pub fn stage(&self) -> Stage {
        self.stage.lock().expect("stage lock").clone()
    }

    pub fn set_stage(&self, stage: Stage) {
        *self.stage.lock().expect("stage lock") = stage;
    }

    /// Where the collection stands, as Ingest.Progress answers it (rows as imported; while
    /// receiving, the spool knows how many have come).
    pub fn progress(&self) -> Progress {
        let stage = self.stage();
        let (phase, message) = match &stage {
            Stage::Waiting => (Phase::Waiting, String::new()),
            Stage::Receiving => (Phase::Receiving, String::new()),
            Stage::Building => (
                match self.build.phase() {
                    None | Some(BuildPhase::Importing) => Phase::Importing,
                    Some(BuildPhase::Building) => Phase::Building,
                    Some(BuildPhase::Calibrating) => Phase::Calibrating,
                },
                String::new(),
            ),
            Stage::Restoring { from, bytes } => {
                let fetched = self.metrics.snapshot_fetched_bytes.get().min(*bytes);
                (Phase::Restoring, format!("restoring from {from}: {fetched} of {bytes} bytes"))
            }
            Stage::Snapshotting => (Phase::Snapshotting, String::new()),
            Stage::Sealed { .. } => (Phase::Sealed, String::new()),
            Stage::Failed(reason) => (Phase::Failed, reason.clone()),
        };
        let stored = self.stored.lock().expect("stored lock").clone();
        let snapshot_sha256 = match stage {
            Stage::Sealed { sha256 } => Some(sha256),
            _ => None,
        };
        Progress { phase, rows: self.build.rows(), message, stored, snapshot_sha256 }
    }

    /// A collection sealed by an earlier run of this writer: opened, its snapshot written if
    /// the earlier run stopped before that.
    pub fn recover(&self) -> Result<Option<(Arc<Searcher>, SnapshotInfo)>> {
        let dir = self.root.join(self.name());
        if !dir.join("data.mdb").exists() {
            return Ok(None);
        }
        self.finish(Collection::open(&dir)?).map(Some)
    }

    /// Imports, builds and seals `records`, then writes the snapshot. On failure nothing is
    /// left behind but the reason, in the stage.
    pub fn publish(&self, records: Records) -> Result<(Arc<Searcher>, SnapshotInfo)> {
        self.set_stage(Stage::Building);
        let rows_before = self.build.rows();
        let result = import_and_build(&self.root, &self.options, records)
            .and_then(|manifest| {
                crate::fault::point("publish::before_snapshot");
                self.metrics.build_seconds.set(manifest.timings.build_s);
                Collection::open(&self.root.join(self.name()))
            })
            .and_then(|c| self.finish(c));
        self.metrics.import_rows.inc_by(self.build.rows() - rows_before);
        if let Err(e) = &result {
            self.set_stage(Stage::Failed(e.to_string()));
        }
        result
    }

    /// Takes a collection restored sealed from a snapshot store (installed under the data root)
    /// as this writer's: its snapshot is written (the restored file, already checked) and
    /// published to this writer's own store, when it has one.
    pub fn adopt_restored(&self, collection: Collection) -> Result<(Arc<Searcher>, SnapshotInfo)> {
        self.finish(collection)
    }

    fn finish(&self, collection: Collection) -> Result<(Arc<Searcher>, SnapshotInfo)> {
        self.set_stage(Stage::Snapshotting);
        let collection = Searcher::new(collection);
        let snapshots = SnapshotDir::new(&self.root);
        let info = snapshots.write(&collection).inspect_err(|e| self.set_stage(Stage::Failed(e.to_string())))?;
        if let Some(store) = &self.store {
            // In the background, tried until it lands: a store that is down or slow is not a
            // failed build, the writer's probes answer meanwhile, and replicas fall back to the
            // writer until the store has the snapshot.
            let (store, snapshots, info, stored) =
                (store.clone(), snapshots.clone(), info.clone(), self.stored.clone());
            std::thread::Builder::new()
                .name("quiver-snapshot-push".into())
                .spawn(move || {
                    let landed = push_until_done(&store, &snapshots, &info);
                    *stored.lock().expect("stored lock") = Some(landed);
                })
                .map_err(|e| Error::io("starting the snapshot upload", e))?;
        }
        // Preloaded (sign codes built, pages faulted in) before anyone is told it is sealed, so
        // the writer's first query is not a cold one.
        collection.preload().inspect_err(|e| self.set_stage(Stage::Failed(e.to_string())))?;
        self.set_stage(Stage::Sealed { sha256: info.sha256.clone() });
        tracing::info!(collection = %info.collection, size = info.size, sha256 = %info.sha256, "snapshot written");
        Ok((Arc::new(collection), info))
    }

    /// Refuses writes once the collection is sealed or being built.
    pub fn check_open_for_writes(&self) -> Result<()> {
        match self.stage() {
            Stage::Waiting | Stage::Receiving | Stage::Failed(_) => Ok(()),
            Stage::Sealed { .. } => Err(Error::Sealed { name: self.name().to_string(), operation: "ingest".into() }),
            Stage::Building | Stage::Restoring { .. } | Stage::Snapshotting => {
                Err(Error::Sealed { name: self.name().to_string(), operation: "ingest while building".into() })
            }
        }
    }
}

/// Publishes `info` to `store`, trying again after 1, 2, 4 ... 60 s until it lands.
fn push_until_done(store: &SnapshotStore, snapshots: &SnapshotDir, info: &SnapshotInfo) -> Stored {
    let mut delay = std::time::Duration::from_secs(1);
    loop {
        match store.push(snapshots, info) {
            Ok(stored) => {
                return Stored {
                    location: format!("{}/{}", store.uri(), stored.info.collection),
                    sha256: stored.info.sha256,
                    bytes: stored.info.size,
                };
            }
            Err(e) => {
                tracing::warn!(collection = %info.collection, store = %store.uri(), "publishing the snapshot: {e}; trying again in {}s", delay.as_secs());
                std::thread::sleep(delay);
                delay = (delay * 2).min(std::time::Duration::from_secs(60));
            }
        }
    }
}
