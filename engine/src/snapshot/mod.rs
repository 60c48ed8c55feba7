//! Snapshots: a sealed collection copied, compacted, into one immutable file with its sha256.
//!
//! Layout under a data root: `.snapshots/<name>.mdb` (an LMDB data file, openable as is) and
//! `.snapshots/<name>.json` (its [`SnapshotInfo`]). The JSON is written last, so a snapshot
//! without it is unfinished and never served. Replicas download into `<name>.mdb.partial`
//! ([`download::Partial`]), check the sha256 of the bytes on disk, and install the file as their
//! collection. Every rename is followed by an fsync of its directory, so a crash leaves either
//! the old state or the new one; [`SnapshotDir::checked_info`] heals a description whose file is
//! missing or does not match.

mod check;
pub mod download;
pub mod progress;
pub mod store;

use check::check_manifest;
pub use check::hash_file;

use crate::collection::Collection;
use crate::collection::builder::check_name;
use crate::collection::manifest::Manifest;
pub(crate) use crate::durable::{sync_dir, write_synced};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

const DIR: &str = ".snapshots";

/// What a snapshot file is: checked by every replica before it opens the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub collection: String,
    pub size: u64,
    /// Hex sha256 of the whole file.
    pub sha256: String,
    pub manifest: Manifest,
}

/// The snapshots under one data root.
#[derive(Debug, Clone)]
pub struct SnapshotDir {
    dir: PathBuf,
}

impl SnapshotDir {
    pub fn new(root: &Path) -> SnapshotDir {
        SnapshotDir { dir: root.join(DIR) }
    }

    /// The snapshot file of collection `name`; the name is checked before any path is built.
    pub fn file(&self, name: &str) -> Result<PathBuf> {
        check_name(name)?;
        Ok(self.dir.join(format!("{name}.mdb")))
    }

    fn info_path(&self, name: &str) -> Result<PathBuf> {
        check_name(name)?;
        Ok(self.dir.join(format!("{name}.json")))
    }

    /// The finished snapshot of `name`, if there is one.
    pub fn info(&self, name: &str) -> Result<Option<SnapshotInfo>> {
        let path = self.info_path(name)?;
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| Error::Incomplete {
                path: path.clone(),
                reason: format!("unreadable snapshot description: {e}"),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
        }
    }

    /// Writes the compacted copy of a sealed collection and its description; replaces nothing
    /// that is already finished.
    pub fn write(&self, collection: &Collection) -> Result<SnapshotInfo> {
        let name = collection.name();
        if let Some(info) = self.checked_info(name)? {
            return Ok(info);
        }
        self.create_dir()?;
        let file = self.file(name)?;
        let tmp = file.with_extension("mdb.tmp");
        let _ = std::fs::remove_file(&tmp);
        collection.copy_compacted(&tmp)?;
        let (size, sha256) = hash_file(&tmp)?;
        crate::fault::point("snapshot::write_before_rename");
        std::fs::rename(&tmp, &file).map_err(|e| Error::io(format!("moving {} into place", tmp.display()), e))?;
        sync_dir(&self.dir)?;
        crate::fault::point("snapshot::write_before_publish");
        let info = SnapshotInfo { collection: name.to_string(), size, sha256, manifest: collection.manifest().clone() };
        self.publish(&info)?;
        Ok(info)
    }

    /// Makes a verified file the finished snapshot `info` describes.
    pub(crate) fn publish(&self, info: &SnapshotInfo) -> Result<()> {
        let path = self.info_path(&info.collection)?;
        let tmp = path.with_extension("json.tmp");
        let json = serde_json::to_vec_pretty(info).expect("snapshot info serializes");
        write_synced(&tmp, &json)?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(format!("moving {} into place", tmp.display()), e))?;
        sync_dir(&self.dir)
    }

    fn create_dir(&self) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io(format!("creating {}", self.dir.display()), e))
    }

    /// Makes the finished snapshot of `info.collection` the collection `<root>/<name>`: the file
    /// is hard-linked (copied when links are not possible) as its `data.mdb`, then opened and
    /// its manifest compared with the one the snapshot was announced with.
    pub fn install(&self, root: &Path, info: &SnapshotInfo) -> Result<Collection> {
        check_name(&info.collection)?;
        let target = root.join(&info.collection);
        let data = target.join("data.mdb");
        if data.exists() && !self.installed_is(&data, info)? {
            // An installation of an earlier (since discarded) snapshot file: replace it.
            tracing::warn!(collection = %info.collection, "the installed collection is not the checked snapshot; reinstalling");
            std::fs::remove_dir_all(&target).map_err(|e| Error::io(format!("removing {}", target.display()), e))?;
            sync_dir(root)?;
        }
        if !data.exists() {
            let staging = root.join(format!(".install-{}", info.collection));
            let _ = std::fs::remove_dir_all(&staging);
            std::fs::create_dir_all(&staging).map_err(|e| Error::io(format!("creating {}", staging.display()), e))?;
            let source = self.file(&info.collection)?;
            let staged = staging.join("data.mdb");
            if std::fs::hard_link(&source, &staged).is_err() {
                std::fs::copy(&source, &staged).map_err(|e| Error::io(format!("copying {}", source.display()), e))?;
                std::fs::File::open(&staged)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| Error::io(format!("syncing {}", staged.display()), e))?;
            }
            sync_dir(&staging)?;
            crate::fault::point("snapshot::install_before_rename");
            std::fs::rename(&staging, &target)
                .map_err(|e| Error::io(format!("moving {} into place", staging.display()), e))?;
            sync_dir(root)?;
        }
        let collection = Collection::open(&target)?;
        check_manifest(collection.manifest(), &info.manifest)
            .map_err(|reason| Error::Incomplete { path: target.clone(), reason })?;
        Ok(collection)
    }
}
