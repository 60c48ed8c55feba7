//! Durable file steps shared by storage and snapshots: a rename or a new file is only on disk
//! for sure once its directory (and the file) are fsynced; without that a crash may forget a
//! rename that `rename(2)` already reported done.

use crate::error::{Error, Result};
use std::io::Write;
use std::path::Path;

/// Makes the renames and creations inside `dir` durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io(format!("syncing {}", dir.display()), e))
}

/// Writes `bytes` to a new file at `path` and fsyncs it.
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = std::fs::File::create(path).map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    file.write_all(bytes).and_then(|_| file.sync_all()).map_err(|e| Error::io(format!("writing {}", path.display()), e))
}
