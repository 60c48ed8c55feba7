//! How a snapshot is checked, everywhere one is trusted: a finished snapshot's file against its
//! description (size and sha256 of the bytes on disk) before it is served or installed, a
//! downloaded file the same way before it becomes a snapshot ([`super::download::Partial::finish`]),
//! an installed `data.mdb` against the snapshot it came from, and the opened collection's
//! manifest against the one the snapshot was announced with.

use super::{SnapshotDir, SnapshotInfo, sync_dir};
use crate::collection::manifest::Manifest;
use crate::error::{Error, Result};
use crate::import::source::hex;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::Path;

impl SnapshotDir {
    /// The finished snapshot of `name` after checking its file as it lies on disk: size and
    /// sha256 must match the description. A description whose file is missing, short or
    /// different (a crash between steps, a damaged disk) is removed with its file, so the
    /// caller fetches or writes the snapshot again instead of serving it.
    pub fn checked_info(&self, name: &str) -> Result<Option<SnapshotInfo>> {
        let Some(info) = self.info(name)? else { return Ok(None) };
        let file = self.file(name)?;
        let problem = match mismatch(&file, &info) {
            Ok(None) => return Ok(Some(info)),
            Ok(Some(found)) => format!("the file has {found}"),
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

    /// Whether an installed `data.mdb` is the checked snapshot file itself (the same inode, as
    /// the hard link makes it) or, when it was copied, has the same bytes.
    pub(super) fn installed_is(&self, data: &Path, info: &SnapshotInfo) -> Result<bool> {
        use std::os::unix::fs::MetadataExt;
        let stat = |p: &Path| std::fs::metadata(p).map_err(|e| Error::io(format!("stat {}", p.display()), e));
        let (installed, snapshot) = (stat(data)?, stat(&self.file(&info.collection)?)?);
        if installed.dev() == snapshot.dev() && installed.ino() == snapshot.ino() {
            return Ok(true);
        }
        Ok(mismatch(data, info)?.is_none())
    }
}

/// Whether the file at `path` has the size and sha256 `info` announces: `Ok(None)` when it
/// does, `Ok(Some(what it has instead))` when it does not.
pub(super) fn mismatch(path: &Path, info: &SnapshotInfo) -> Result<Option<String>> {
    let (size, sha256) = hash_file(path)?;
    Ok((size != info.size || sha256 != info.sha256).then(|| format!("{size} bytes with sha256 {sha256}")))
}

/// The fields a replica must agree on with the snapshot's announcement.
pub(super) fn check_manifest(opened: &Manifest, announced: &Manifest) -> std::result::Result<(), String> {
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
