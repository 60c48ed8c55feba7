//! The replica's side of a snapshot transfer: a partial file that survives crashes and dropped
//! connections, resumed from the bytes it holds, and checked as it lies on disk before it
//! becomes a snapshot.
//!
//! One attempt at a time: the partial file is locked (an OS advisory lock, released when the
//! [`Partial`] is dropped), so a retry cannot append behind the back of an attempt whose writer
//! is still running. The sha256 compared at [`Partial::finish`] is computed from the file's
//! bytes read back from disk, not from what was received, so a shifted or torn file never
//! passes.

use super::progress::Progress;
use super::{SnapshotDir, SnapshotInfo, sync_dir};
use crate::error::{Error, Result};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

/// A download in progress of the snapshot `info` describes.
#[derive(Debug)]
pub struct Partial {
    snapshots: SnapshotDir,
    info: SnapshotInfo,
    path: PathBuf,
    /// Opened for appending and exclusively locked for the life of this value.
    file: File,
    offset: u64,
    /// Bytes an earlier attempt left, kept when this one opened it.
    resumed_from: u64,
    progress: Option<Progress>,
}

impl Partial {
    /// Opens and locks the partial file for `info`, keeping the bytes already there when they
    /// belong to the same snapshot (same sha256 recorded next to them), starting over
    /// otherwise. Another live attempt holding the lock is a transient error.
    pub fn open(snapshots: &SnapshotDir, info: &SnapshotInfo) -> Result<Partial> {
        snapshots.create_dir()?;
        let path = snapshots.file(&info.collection)?.with_extension("mdb.partial");
        let io = |what: &str, e: std::io::Error| Error::io(format!("{what} {}", path.display()), e);
        let file = OpenOptions::new().create(true).append(true).open(&path).map_err(|e| io("opening", e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(io("locking", std::io::Error::other("another fetch attempt is writing this file")));
            }
            Err(TryLockError::Error(e)) => return Err(io("locking", e)),
        }
        let marker = path.with_extension("partial.sha256");
        let same = std::fs::read_to_string(&marker).is_ok_and(|s| s.trim() == info.sha256);
        if !same {
            file.set_len(0).map_err(|e| io("truncating", e))?;
            super::write_synced(&marker, info.sha256.as_bytes())?;
        }
        let mut offset = file.metadata().map_err(|e| io("reading", e))?.len();
        if offset > info.size {
            // Longer than the snapshot: not ours to trust.
            file.set_len(0).map_err(|e| io("truncating", e))?;
            offset = 0;
        }
        Ok(Partial {
            snapshots: snapshots.clone(),
            info: info.clone(),
            path,
            file,
            offset,
            resumed_from: offset,
            progress: None,
        })
    }

    /// Logs this attempt's progress every `every` while bytes arrive from `source`.
    pub fn log_progress(&mut self, source: &str, every: Duration) {
        let what = format!("the snapshot of {} from {source}", self.info.collection);
        self.progress = Some(Progress::start(what, self.offset, self.info.size, every));
    }

    /// Bytes held so far: where the next fetch starts.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The partial file, to read back what it holds.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Drops every byte from `offset` on (a part that failed its check): the next append, and
    /// the next attempt, start there.
    pub fn truncate(&mut self, offset: u64) -> Result<()> {
        if offset < self.offset {
            self.file.set_len(offset).map_err(|e| Error::io(format!("truncating {}", self.path.display()), e))?;
            self.offset = offset;
            if let Some(progress) = &self.progress {
                progress.set(offset);
            }
        }
        Ok(())
    }

    pub fn is_complete(&self) -> bool {
        self.offset == self.info.size
    }

    /// Appends a chunk that must start exactly at [`Partial::offset`].
    pub fn append(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        if offset != self.offset {
            return Err(self.error(format!("chunk at byte {offset}, expected byte {}", self.offset)));
        }
        if self.offset + data.len() as u64 > self.info.size {
            return Err(self.error(format!("source sent more than the announced {} bytes", self.info.size)));
        }
        crate::fault::point("snapshot::append");
        self.file.write_all(data).map_err(|e| Error::io(format!("writing {}", self.path.display()), e))?;
        self.offset += data.len() as u64;
        if let Some(progress) = &self.progress {
            progress.set(self.offset);
        }
        Ok(())
    }

    /// Checks size and sha256 of the file as it lies on disk; a good file becomes the finished
    /// snapshot, a bad one is deleted (the next attempt starts from zero) and reported.
    pub fn finish(mut self) -> Result<SnapshotInfo> {
        // The transfer is over: the sha256 of a large file takes a while, and its lines would
        // read as "100%, 0 s left" again and again.
        self.progress = None;
        self.file.sync_all().map_err(|e| Error::io(format!("syncing {}", self.path.display()), e))?;
        let marker = self.path.with_extension("partial.sha256");
        if let Some(found) = super::check::mismatch(&self.path, &self.info)? {
            let _ = std::fs::remove_file(&self.path);
            let _ = std::fs::remove_file(&marker);
            return Err(self.error(format!(
                "checksum mismatch: the file on disk has {found}, the source announced {} bytes with sha256 {}; \
                 the file was discarded",
                self.info.size, self.info.sha256
            )));
        }
        crate::fault::point("snapshot::finish_before_rename");
        let file = self.snapshots.file(&self.info.collection)?;
        std::fs::rename(&self.path, &file)
            .map_err(|e| Error::io(format!("moving {} into place", self.path.display()), e))?;
        sync_dir(&self.snapshots.dir)?;
        let _ = std::fs::remove_file(&marker);
        self.snapshots.publish(&self.info)?;
        Ok(self.info)
    }

    /// [`Partial::finish`] for a download from `source`: when the file held bytes of an earlier
    /// attempt (perhaps torn by a crash), a mismatch may not be the source's fault, so it is a
    /// transient error of `source` (the file was discarded; the next attempt starts over), not
    /// a verdict on it.
    pub fn finish_from(self, source: &str) -> Result<SnapshotInfo> {
        let resumed = self.resumed_from > 0;
        match self.finish() {
            Err(e @ Error::Snapshot { .. }) if resumed => {
                Err(Error::Remote { target: source.to_string(), reason: format!("{e}; starting over from byte 0") })
            }
            finished => finished,
        }
    }

    fn error(&self, reason: String) -> Error {
        Error::Snapshot { collection: self.info.collection.clone(), reason }
    }
}
