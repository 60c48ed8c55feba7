//! Snapshots: a sealed collection copied, compacted, into one immutable file with its sha256.
//!
//! Layout under a data root: `.snapshots/<name>.mdb` (an LMDB data file, openable as is) and
//! `.snapshots/<name>.json` (its [`SnapshotInfo`]). The JSON is written last, so a snapshot
//! without it is unfinished and never served. Replicas download into `<name>.mdb.partial`
//! ([`download::Partial`]), check the sha256 of the bytes on disk, and install the file as their
//! collection. Every rename is followed by an fsync of its directory, so a crash leaves either
//! the old state or the new one; [`Store::checked_info`] heals a description whose file is
//! missing or does not match.

pub mod download;

use crate::collection::Collection;
use crate::collection::builder::check_name;
use crate::collection::manifest::Manifest;
pub(crate) use crate::durable::{sync_dir, write_synced};
use crate::error::{Error, Result};
use crate::import::source::hex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Read;
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
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(root: &Path) -> Store {
        Store { dir: root.join(DIR) }
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

    /// The finished snapshot of `name` after checking its file as it lies on disk: size and
    /// sha256 must match the description. A description whose file is missing, short or
    /// different (a crash between steps, a damaged disk) is removed with its file, so the
    /// caller fetches or writes the snapshot again instead of serving it.
    pub fn checked_info(&self, name: &str) -> Result<Option<SnapshotInfo>> {
        let Some(info) = self.info(name)? else { return Ok(None) };
        let file = self.file(name)?;
        let problem = match hash_file(&file) {
            Ok((size, sha256)) if size == info.size && sha256 == info.sha256 => return Ok(Some(info)),
            Ok((size, sha256)) => format!("the file has {size} bytes with sha256 {sha256}"),
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                "the file is missing".into()
            }
            // Anything else (out of file descriptors, a failing disk) is not proof of damage.
            Err(e) => return Err(e),
        };
        tracing::warn!(
            collection = name,
            "discarding the snapshot description: {problem}, but it announces {} bytes with sha256 {}",
            info.size,
            info.sha256
        );
        let _ = std::fs::remove_file(self.info_path(name)?);
        let _ = std::fs::remove_file(&file);
        sync_dir(&self.dir)?;
        Ok(None)
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

impl Store {
    /// Whether an installed `data.mdb` is the checked snapshot file itself (the same inode, as
    /// the hard link makes it) or, when it was copied, has the same bytes.
    fn installed_is(&self, data: &Path, info: &SnapshotInfo) -> Result<bool> {
        use std::os::unix::fs::MetadataExt;
        let stat = |p: &Path| std::fs::metadata(p).map_err(|e| Error::io(format!("stat {}", p.display()), e));
        let (installed, snapshot) = (stat(data)?, stat(&self.file(&info.collection)?)?);
        if installed.dev() == snapshot.dev() && installed.ino() == snapshot.ino() {
            return Ok(true);
        }
        Ok(hash_file(data)? == (info.size, info.sha256.clone()))
    }
}

/// The fields a replica must agree on with the snapshot's announcement.
fn check_manifest(opened: &Manifest, announced: &Manifest) -> std::result::Result<(), String> {
    let pairs = [
        ("name", opened.name.clone(), announced.name.clone()),
        ("count", opened.count.to_string(), announced.count.to_string()),
        ("dimensions", opened.dimensions.to_string(), announced.dimensions.to_string()),
        ("metric", opened.metric.to_string(), announced.metric.to_string()),
        ("created_at", opened.created_at.to_string(), announced.created_at.to_string()),
    ];
    for (field, got, want) in pairs {
        if got != want {
            return Err(format!("snapshot manifest `{field}` is {got} but the source announced {want}"));
        }
    }
    Ok(())
}

/// Size and hex sha256 of a file.
pub fn hash_file(path: &Path) -> Result<(u64, String)> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hex(&hasher.finalize())))
}
