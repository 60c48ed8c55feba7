//! Snapshots published to object storage, so replicas start without a writer: under a store
//! `s3://bucket/prefix` (or `gs://`, `az://`), collection `name` is
//!
//! - `<prefix>/<name>/data-<sha256>.mdb`: the snapshot file, uploaded in parts
//!   ([`object::upload_file`]), named by its content;
//! - `<prefix>/<name>/snapshot-<sha256>.json`: its [`StoredSnapshot`] (the data object's name,
//!   size, sha256 of the whole and of each part, its ETag, the manifest), named by content too;
//! - `<prefix>/<name>/snapshot.json`: the same description, of the snapshot published last,
//!   written last, in one PUT.
//!
//! A snapshot whose description is not there is not in the store: a writer killed mid-upload
//! leaves nothing a replica would take. A snapshot published again with other bytes (a retried
//! import, a writer that lost its volume and imported anew) goes to another data object and
//! description, and the replaced ones stay: replicas pinned to the snapshot that was verified
//! (`--snapshot-sha256`) restore it by its sha256 whatever was published since. A replica reads
//! the data object in ranged GETs pinned to the ETag the description names (an object replaced
//! since is refused), appends to its [`Partial`] (so a killed restore resumes from the bytes on
//! disk), and checks the sha256 of the file on disk before it installs it.

use super::download::Partial;
use super::{SnapshotDir, SnapshotInfo};
use crate::cancel::Cancel;
use crate::error::{Error, Result, redact};
use crate::import::object::{self, Credentials};
use crate::import::source::hex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::time::Duration;

const DESCRIPTION: &str = "snapshot.json";
/// The data object of descriptions written before data objects were named by their content.
const LEGACY_DATA: &str = "data.mdb";
/// Appended to the description's key for the copy of an unreadable one a push replaced.
const UNREADABLE: &str = ".unreadable";
/// A description is a few KiB (one sha256 per 8 MiB part, the manifest); anything much larger
/// is not one, and is not read into memory.
const MAX_DESCRIPTION_BYTES: u64 = 16 << 20;
/// The smallest part a description may list (but for a snapshot of one part).
const MIN_PART_BYTES: u64 = 1 << 20;
/// Bytes appended to the partial file at a time while restoring.
const RESTORE_CHUNK: usize = 1 << 20;

/// A snapshot as the store describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredSnapshot {
    #[serde(flatten)]
    pub info: SnapshotInfo,
    /// The data object, beside the description: `data-<sha256>.mdb`; [`LEGACY_DATA`] in a
    /// description written before it was named (and so without this field).
    #[serde(default = "legacy_data")]
    pub data: String,
    /// Bytes of each part but the last.
    pub part_bytes: u64,
    /// Hex sha256 of each part, in order.
    pub part_sha256: Vec<String>,
    /// The data object's ETag when it was uploaded: a replica reads only that version.
    pub data_etag: Option<String>,
}

/// A store of snapshots: an object-store prefix.
#[derive(Debug, Clone)]
pub struct SnapshotStore {
    /// `scheme://bucket/prefix`, without a trailing `/`.
    uri: String,
    credentials: Credentials,
}

impl SnapshotStore {
    pub fn new(uri: &str, credentials: Credentials) -> Result<SnapshotStore> {
        if !object::is_object_uri(uri) {
            return Err(Error::Usage {
                flag: "--snapshot-store".into(),
                value: redact(uri),
                reason: "must be an object-store prefix: s3://bucket/prefix, gs://..., az://...".into(),
            });
        }
        Ok(SnapshotStore { uri: uri.trim_end_matches('/').to_string(), credentials })
    }

    /// The store and the collection one snapshot's URL names: `s3://bucket/prefix/<collection>`
    /// (a writer's `--restore-from`, a collection's `source.snapshot`).
    pub fn of_snapshot(url: &str, credentials: Credentials) -> Result<(SnapshotStore, String)> {
        let refused =
            |reason: &str| Error::Usage { flag: "--restore-from".into(), value: redact(url), reason: reason.into() };
        let trimmed = url.trim_end_matches('/');
        let Some((store, collection)) = trimmed.rsplit_once('/').filter(|_| object::is_object_uri(trimmed)) else {
            return Err(refused("must be a snapshot in an object store: s3://bucket/prefix/<collection>"));
        };
        if store.split_once("://").is_none_or(|(_, bucket)| bucket.is_empty()) {
            return Err(refused("names a bucket but no collection: s3://bucket/prefix/<collection>"));
        }
        crate::collection::builder::check_name(collection)?;
        Ok((SnapshotStore::new(store, credentials)?, collection.to_string()))
    }

    /// Whether `source` (a `--snapshot-from` entry) names a store rather than a peer.
    pub fn is_store(source: &str) -> bool {
        object::is_object_uri(source)
    }

    pub fn uri(&self) -> String {
        redact(&self.uri)
    }

    fn object(&self, collection: &str, file: &str) -> Result<String> {
        crate::collection::builder::check_name(collection)?;
        Ok(format!("{}/{collection}/{file}", self.uri))
    }

    /// The snapshot of `collection` published last, if one was published completely.
    pub fn described(&self, collection: &str) -> Result<Option<StoredSnapshot>> {
        self.description(collection, DESCRIPTION)
    }

    /// The snapshot of `collection` with `sha256`, if one was published completely, whether or
    /// not another was published since: its own description, or (a store written before
    /// descriptions were named by content) the last one when it is of that sha256. The last one
    /// is also asked when its own cannot be read: S3 answers a missing key 403, not 404, to a
    /// key that may not list the bucket.
    pub fn described_as(&self, collection: &str, sha256: &str) -> Result<Option<StoredSnapshot>> {
        let key = description_of(collection, sha256)?;
        let last = || self.described(collection).map(|last| last.filter(|last| last.info.sha256 == sha256));
        match self.description(collection, &key) {
            Ok(Some(stored)) if stored.info.sha256 != sha256 || stored.info.collection != collection => {
                Err(Error::Snapshot {
                    collection: collection.to_string(),
                    reason: format!(
                        "{key} in {} describes the sha256 {} of {}",
                        self.uri(),
                        sha256_shown(&stored.info.sha256),
                        shown(&stored.info.collection)
                    ),
                })
            }
            Ok(Some(stored)) => Ok(Some(stored)),
            Ok(None) => last(),
            Err(e) => match last() {
                Ok(Some(stored)) => Ok(Some(stored)),
                _ => Err(e),
            },
        }
    }

    /// The description `key` of `collection`, if it is there.
    fn description(&self, collection: &str, key: &str) -> Result<Option<StoredSnapshot>> {
        let uri = self.object(collection, key)?;
        let unreadable = |reason: String| Error::Snapshot { collection: collection.to_string(), reason };
        let bytes = match object::read_whole(&uri, self.credentials, MAX_DESCRIPTION_BYTES) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Ok(None),
            Err(Error::Exhausted { what, reason }) => {
                return Err(unreadable(format!("{what} is not a snapshot description: {reason}")));
            }
            Err(e) => return Err(e),
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|e| Error::Snapshot {
            collection: collection.to_string(),
            reason: format!("{} is not a snapshot description: {e}", redact(&uri)),
        })
    }

    /// Writes `stored` as its own description (named by its sha256).
    fn describe(&self, stored: &StoredSnapshot) -> Result<()> {
        self.write_description(stored, &description_of(&stored.info.collection, &stored.info.sha256)?)
    }

    /// Writes `stored` as the collection's last published description.
    fn describe_last(&self, stored: &StoredSnapshot) -> Result<()> {
        self.write_description(stored, DESCRIPTION)
    }

    /// Writes `stored` as the description `key` of its collection, in one PUT.
    fn write_description(&self, stored: &StoredSnapshot, key: &str) -> Result<()> {
        let json = serde_json::to_vec_pretty(stored).expect("a snapshot description serializes");
        object::write_whole(&self.object(&stored.info.collection, key)?, self.credentials, json)
    }

    /// Every snapshot published completely (with a readable description), in name order: the
    /// last one published of each collection, or with `all` every one the store keeps (those
    /// published over too, by their own descriptions).
    pub fn list(&self, all: bool) -> Result<Vec<StoredSnapshot>> {
        let location = object::locate(&format!("{}/", self.uri), self.credentials)?;
        let listed = object::list(&self.uri, &location, &location.path)?;
        let prefix = location.path.as_ref().to_string();
        // One unreadable description (another tool's key, a damaged object) hides only
        // itself: the list is how an operator finds what else the store holds.
        let read = |described: Result<Option<StoredSnapshot>>, found: &mut Vec<StoredSnapshot>| match described {
            Ok(stored) => found.extend(stored),
            Err(e) => tracing::warn!(store = %self.uri(), error = %e, "left out of the list"),
        };
        let (mut found, mut last) = (Vec::new(), Vec::new());
        for meta in listed {
            let key = meta.location.as_ref();
            let below = key.strip_prefix(&prefix).unwrap_or(key).trim_start_matches('/');
            let Some((collection, file)) = below.split_once('/').filter(|(_, file)| !file.contains('/')) else {
                continue;
            };
            let by_content = file
                .strip_prefix("snapshot-")
                .and_then(|f| f.strip_suffix(".json"))
                .filter(|sha256| quiver_api::types::is_sha256_hex(sha256));
            match by_content {
                _ if file == DESCRIPTION => last.push(collection.to_string()),
                Some(sha256) if all => read(self.described_as(collection, sha256), &mut found),
                _ => {}
            }
        }
        // The last one of each, unless listed already by its own description (a store written
        // before those has only this one).
        for collection in last {
            let listed = |s: &StoredSnapshot| {
                found.iter().any(|f| f.info.collection == s.info.collection && f.info.sha256 == s.info.sha256)
            };
            match self.described(&collection) {
                Ok(Some(stored)) if listed(&stored) => {}
                described => read(described, &mut found),
            }
        }
        found.sort_by(|a, b| a.info.collection.cmp(&b.info.collection));
        Ok(found)
    }

    /// Publishes the finished local snapshot `info`: the data first, then its own description,
    /// then the collection's last description. A snapshot already published with the same
    /// sha256 is not uploaded again. The one it replaces stays, under its own description
    /// (written now for one a store written before those has only as the last): nothing a
    /// replica may be pinned to is taken away.
    pub fn push(&self, snapshots: &SnapshotDir, info: &SnapshotInfo) -> Result<StoredSnapshot> {
        let collection = &info.collection;
        // A description that cannot be read (damaged, another tool's) is replaced: left in
        // place it would keep every replica from starting, and the writer from publishing.
        let previous = match self.described(collection) {
            Ok(previous) => previous.filter(|p| p.info.collection == *collection),
            Err(e @ Error::Snapshot { .. }) => {
                tracing::warn!(collection = %collection, error = %e, "replacing the store's unreadable description");
                self.keep_unreadable(collection);
                None
            }
            Err(e) => return Err(e),
        };
        if let Some(old) = previous.as_ref().filter(|s| s.info.sha256 != info.sha256) {
            // Kept reachable by its sha256 before the last description stops naming it. A
            // description whose sha256 cannot name a key is not a snapshot anyone restores.
            if description_of(collection, &old.info.sha256).is_ok()
                && self.own_description(collection, &old.info.sha256)?.is_none()
            {
                self.describe(old)?;
            }
        }
        // Published already (the last one, or one published over and pulled again to promote
        // it) if its data object is whole: a deleted or replaced one is uploaded again.
        let own = self.own_description(collection, &info.sha256)?;
        let published = previous.as_ref().filter(|s| s.info.sha256 == info.sha256).or(own.as_ref()).cloned();
        if let Some(stored) = published {
            if self.holds_data_of(&stored)? {
                // Each description written only where the store does not hold it already.
                if own.as_ref() != Some(&stored) {
                    self.describe(&stored)?;
                }
                if previous.as_ref() != Some(&stored) {
                    self.describe_last(&stored)?;
                }
                tracing::info!(collection = %collection, store = %self.uri(), "snapshot already in the store");
                return Ok(stored);
            }
            tracing::warn!(collection = %collection, store = %self.uri(), "the described data object is not whole: uploading it again");
        }
        let started = std::time::Instant::now();
        let name = data_object(info)?;
        let data = self.object(collection, &name)?;
        let uploaded = object::upload_file(&data, self.credentials, &snapshots.file(collection)?)?;
        crate::fault::point("store::before_description");
        let stored = StoredSnapshot {
            info: info.clone(),
            data: name,
            part_bytes: uploaded.part_bytes,
            part_sha256: uploaded.part_sha256,
            data_etag: uploaded.e_tag,
        };
        self.describe(&stored)?;
        self.describe_last(&stored)?;
        crate::fault::point("store::after_description");
        // Read again: another pusher of this collection may have written its description just
        // after this one (two writers publishing one collection is a misconfiguration; object
        // stores differ in conditional writes, so it is detected, not prevented). Then this
        // push did not publish, and says so rather than report a snapshot replicas will not get.
        if let Ok(Some(now)) = self.described(collection).map_err(|e| {
            tracing::warn!(collection = %collection, error = %e, "the published description could not be read back");
        }) && now.data != stored.data
        {
            return Err(Error::Snapshot {
                collection: collection.clone(),
                reason: format!(
                    "another publisher replaced this snapshot's description in {} meanwhile (it names {}, \
                     this push uploaded {}): is a second writer publishing this collection?",
                    self.uri(),
                    shown(&now.data),
                    stored.data
                ),
            });
        }
        let secs = started.elapsed().as_secs_f64();
        tracing::info!(
            collection = %collection,
            store = %self.uri(),
            mib = info.size as f64 / (1 << 20) as f64,
            mib_per_s = info.size as f64 / (1 << 20) as f64 / secs.max(1e-9),
            "snapshot published to the store"
        );
        Ok(stored)
    }

    /// The description of `collection`'s snapshot with `sha256`, as the store holds it; one that
    /// cannot be read is none, to be written again.
    fn own_description(&self, collection: &str, sha256: &str) -> Result<Option<StoredSnapshot>> {
        let key = description_of(collection, sha256)?;
        match self.description(collection, &key) {
            // Written again whatever the reason it cannot be read: damaged, or refused (S3
            // answers a missing key 403 to a key that may not list the bucket). Writing it is
            // idempotent: it says what the push knows.
            Err(e) => {
                tracing::warn!(collection, error = %e, "writing the unreadable description again");
                Ok(None)
            }
            Ok(own) => Ok(own.filter(|own| own.info.sha256 == sha256 && own.info.collection == collection)),
        }
    }

    /// Whether the data object `stored` names is there with the size and ETag it describes;
    /// a store that cannot be asked is an error, not an answer (a push would upload again what
    /// may be there, and change the ETag replicas read it by).
    fn holds_data_of(&self, stored: &StoredSnapshot) -> Result<bool> {
        let Ok(uri) = data_name(stored).and_then(|name| self.object(&stored.info.collection, name)) else {
            return Ok(false);
        };
        Ok(object::ObjectFile::open_if_present(&uri, self.credentials)?.is_some_and(|file| is_described(&file, stored)))
    }

    /// Copies the collection's unreadable description aside, on the server, before a push
    /// replaces it (`snapshot.json.unreadable-<unix seconds>`, so an earlier copy stays): what
    /// wrote it, and why, is then still there to look at. Best effort: a copy that fails does
    /// not keep the writer from publishing.
    fn keep_unreadable(&self, collection: &str) {
        let copied = self.object(collection, DESCRIPTION).and_then(|uri| {
            let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            let aside = format!("{uri}{UNREADABLE}-{}", at.as_secs());
            object::copy(&uri, &aside, self.credentials).map(|()| aside)
        });
        match copied {
            Ok(aside) => tracing::warn!(collection, kept = %redact(&aside), "the unreadable description is kept"),
            Err(e) => tracing::warn!(collection, error = %e, "the unreadable description could not be kept"),
        }
    }

    /// Restores the snapshot of `collection` into `snapshots` (resuming a partial file), checked
    /// on disk, logging its progress every `progress_every`; `told` hears when the parts a
    /// resumed file holds are being checked and when they are, then each chunk's size.
    /// With `pinned`, only the snapshot of that sha256 is taken, by its own description (also
    /// when another was published since); one the store does not hold (yet) is a transient
    /// error, before a byte is fetched (and the partial file of the pinned one stays).
    ///
    /// Each part is checked against the description's sha256 as it lands, so a damaged part is
    /// found where it is, not only once the whole file is in: the whole parts a resumed file
    /// holds are checked on disk first (a file torn by a crash resumes at its first bad part),
    /// and a part that fails is cut off the file. Its failure is the store's
    /// ([`Error::Snapshot`]) when this attempt fetched all of it, transient when it held bytes
    /// of an earlier attempt. The sha256 of the whole file on disk is checked last, as ever.
    ///
    /// Not there yet is a transient error; once `cancel` fires, the restore stops at the next
    /// chunk (the partial file stays, to be resumed).
    pub fn pull(
        &self,
        collection: &str,
        snapshots: &SnapshotDir,
        pinned: Option<&str>,
        told: &dyn Fn(Restored),
        progress_every: Duration,
        cancel: &Cancel,
    ) -> Result<SnapshotInfo> {
        let described = match pinned {
            Some(sha256) => self.described_as(collection, sha256)?,
            None => self.described(collection)?,
        };
        let stored = match described {
            Some(stored) => stored,
            None => {
                let last = pinned.and_then(|_| self.described(collection).ok().flatten());
                return Err(Error::Remote {
                    target: self.uri(),
                    reason: match (pinned, last) {
                        (Some(pinned), Some(last)) => format!(
                            "no snapshot of {collection} with sha256 {pinned} in the store (yet); it holds {} \
                             (--snapshot-sha256 takes only {pinned})",
                            sha256_shown(&last.info.sha256)
                        ),
                        (Some(pinned), None) => {
                            format!("no snapshot of {collection} with sha256 {pinned} in the store (yet)")
                        }
                        (None, _) => format!("no snapshot of {collection} in the store (yet)"),
                    },
                });
            }
        };
        let corrupt = |reason: String| Error::Snapshot { collection: collection.to_string(), reason };
        if stored.info.collection != collection {
            return Err(corrupt(format!("the store's description is of {}", shown(&stored.info.collection))));
        }
        // What the description chosen by the pin says, once more: the pin must not rest on one
        // lookup alone.
        if let Some(pinned) = pinned.filter(|pinned| *pinned != stored.info.sha256) {
            return Err(corrupt(format!(
                "the store described the sha256 {} where only {pinned} is to be restored (--snapshot-sha256)",
                sha256_shown(&stored.info.sha256)
            )));
        }
        let parts = Parts::of(&stored).map_err(corrupt)?;
        let data = self.object(collection, data_name(&stored)?)?;
        let file = object::ObjectFile::open(&data, self.credentials)?;
        if !is_described(&file, &stored) {
            return Err(corrupt(format!(
                "{} is not the object its description names ({} bytes, ETag {:?}; described: {} bytes, ETag {})",
                redact(&data),
                file.size(),
                file.e_tag(),
                stored.info.size,
                stored.data_etag.as_deref().map_or("none".into(), shown)
            )));
        }
        let mut partial = Partial::open(snapshots, &stored.info)?;
        partial.log_progress(&self.uri(), progress_every);
        told(Restored::Checking);
        let mut part = parts.resume(&mut partial, cancel)?;
        told(Restored::Checked);
        let first = partial.offset();
        if first > 0 {
            tracing::info!("resuming the snapshot restore at byte {first} of {}", stored.info.size);
        }
        let started = std::time::Instant::now();
        let mut reader = file.reader(first);
        let mut chunk = vec![0u8; RESTORE_CHUNK];
        while !partial.is_complete() {
            cancel.check("the snapshot restore")?;
            let n = reader.read(&mut chunk).map_err(|e| Error::io(format!("reading {}", redact(&data)), e))?;
            if n == 0 {
                return Err(Error::Remote {
                    target: self.uri(),
                    reason: format!("{} ended at byte {} of {}", redact(&data), partial.offset(), stored.info.size),
                });
            }
            let mut received = &chunk[..n];
            while !received.is_empty() {
                let (this_part, rest) = received.split_at(part.room(partial.offset()).min(received.len()));
                if this_part.is_empty() {
                    return Err(corrupt(format!(
                        "{} sent more than its described {} bytes",
                        redact(&data),
                        stored.info.size
                    )));
                }
                partial.append(partial.offset(), this_part)?;
                part.hash(this_part);
                received = rest;
                if part.ends_at(partial.offset()) {
                    part = parts.check(part, &mut partial, &redact(&data), &self.uri())?;
                }
            }
            told(Restored::Fetched(n as u64));
        }
        let secs = started.elapsed().as_secs_f64();
        let mib = (stored.info.size - first) as f64 / (1 << 20) as f64;
        tracing::info!(
            "restored {mib:.1} MiB from {} in {secs:.2}s ({:.1} MiB/s); checking sha256 on disk",
            self.uri(),
            mib / secs.max(1e-9)
        );
        cancel.check("the snapshot restore")?;
        partial.finish_from(&self.uri())
    }
}

/// How far a [`SnapshotStore::pull`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restored {
    /// The description and the data object are read: the parts a resumed file holds are
    /// checked on disk now (this disk's time, not the store's).
    Checking,
    /// They are checked: what follows reads the store.
    Checked,
    /// Bytes of one chunk fetched.
    Fetched(u64),
}

/// The parts a description lists: each but the last `part_bytes` long, each with its sha256.
struct Parts<'a> {
    collection: &'a str,
    part_bytes: u64,
    size: u64,
    sha256: &'a [String],
}

/// The part being received: its bytes' running sha256, and whether bytes of an earlier
/// attempt are among them.
struct PartHash {
    index: usize,
    start: u64,
    end: u64,
    hasher: Sha256,
    resumed: bool,
}

impl PartHash {
    /// Bytes from `offset` to the end of this part.
    fn room(&self, offset: u64) -> usize {
        usize::try_from(self.end.saturating_sub(offset)).unwrap_or(usize::MAX)
    }

    fn hash(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
    }

    fn ends_at(&self, offset: u64) -> bool {
        offset == self.end && self.start < self.end
    }
}

impl<'a> Parts<'a> {
    /// The parts `stored` lists, if they cover its size: a description that lies about its
    /// parts (one sha256 too few, a part size of 0) is refused before a byte is fetched.
    fn of(stored: &'a StoredSnapshot) -> std::result::Result<Parts<'a>, String> {
        Parts::new(&stored.info.collection, stored.info.size, stored.part_bytes, &stored.part_sha256)
    }

    fn new(
        collection: &'a str,
        size: u64,
        part_bytes: u64,
        sha256: &'a [String],
    ) -> std::result::Result<Parts<'a>, String> {
        // Uploads cut 8 MiB parts or more; a tiny one would only make a restore slow (a write and
        // a sha256 per few bytes).
        if part_bytes < MIN_PART_BYTES && sha256.len() > 1 {
            return Err(format!("the store's description has parts of {part_bytes} bytes, under {MIN_PART_BYTES}"));
        }
        let wanted = if part_bytes == 0 { None } else { Some(size.div_ceil(part_bytes).max(1)) };
        if wanted != Some(sha256.len() as u64) {
            return Err(format!(
                "the store's description lists {} part sha256s of {part_bytes} bytes for {size} bytes",
                sha256.len()
            ));
        }
        if let Some(bad) = sha256.iter().position(|h| !quiver_api::types::is_sha256_hex(h)) {
            return Err(format!("the store's description has {} as the sha256 of part {bad}", shown(&sha256[bad])));
        }
        Ok(Parts { collection, part_bytes, size, sha256 })
    }

    fn range(&self, index: usize) -> std::ops::Range<u64> {
        let start = index as u64 * self.part_bytes;
        start..(start + self.part_bytes).min(self.size)
    }

    /// The part that byte `offset` is in (the last one for the end of the file).
    fn index_of(&self, offset: u64) -> usize {
        ((offset / self.part_bytes) as usize).min(self.sha256.len() - 1)
    }

    /// Checks the whole parts `partial` holds on disk, cutting the file at the first that
    /// fails (a crash tore it, the disk damaged it), and starts the part the file ends in,
    /// with the bytes of it already on disk.
    fn resume(&self, partial: &mut Partial, cancel: &Cancel) -> Result<PartHash> {
        let held = partial.offset();
        let path = partial.path().to_path_buf();
        let read = |range: std::ops::Range<u64>| -> Result<Sha256> {
            use std::io::{Seek, SeekFrom};
            let io = |e| Error::io(format!("reading back {}", path.display()), e);
            let mut file = std::fs::File::open(&path).map_err(io)?;
            file.seek(SeekFrom::Start(range.start)).map_err(io)?;
            let mut hasher = Sha256::new();
            let copied = std::io::copy(&mut file.take(range.end - range.start), &mut hasher).map_err(io)?;
            if copied != range.end - range.start {
                return Err(io(std::io::Error::other(format!("ended {copied} bytes into {range:?}"))));
            }
            Ok(hasher)
        };
        let mut index = 0;
        while index < self.sha256.len() && self.range(index).end <= held && self.range(index).start < held {
            // A large held prefix takes a while to read back: a stopped attempt stops here too.
            cancel.check("checking the partial snapshot")?;
            crate::fault::point("store::resume_part");
            let range = self.range(index);
            let found = hex(&read(range.clone())?.finalize());
            if found != self.sha256[index] {
                tracing::warn!(
                    "part {index} (bytes {range:?}) of the partial file {} has sha256 {found}, not {}: resuming at byte {}",
                    path.display(),
                    self.sha256[index],
                    range.start
                );
                partial.truncate(range.start)?;
                break;
            }
            index += 1;
        }
        let offset = partial.offset();
        if offset == self.size {
            return Ok(PartHash {
                index: self.sha256.len(),
                start: offset,
                end: offset,
                hasher: Sha256::new(),
                resumed: false,
            });
        }
        let index = self.index_of(offset);
        let range = self.range(index);
        Ok(PartHash {
            index,
            start: range.start,
            end: range.end,
            hasher: read(range.start..offset)?,
            resumed: offset > range.start,
        })
    }

    /// The verdict on the part just received whole, and the next part. One that fails is cut
    /// off `partial`: the store's fault ([`Error::Snapshot`]) when this attempt fetched all of
    /// it, a transient error of `source` when it held bytes of an earlier attempt.
    fn check(&self, part: PartHash, partial: &mut Partial, object: &str, source: &str) -> Result<PartHash> {
        let found = hex(&part.hasher.finalize());
        let described = &self.sha256[part.index];
        if found != *described {
            partial.truncate(part.start)?;
            let reason = format!(
                "part {} (bytes {}..{}) of {object} has sha256 {found}, its description says {described}; \
                 the part was cut off the partial file",
                part.index, part.start, part.end
            );
            return Err(match part.resumed {
                true => Error::Remote {
                    target: source.to_string(),
                    reason: format!("{reason} (it held bytes of an earlier attempt: fetching it again)"),
                },
                false => Error::Snapshot { collection: self.collection.to_string(), reason },
            });
        }
        let next = part.index + 1;
        let range = if next < self.sha256.len() { self.range(next) } else { self.size..self.size };
        Ok(PartHash { index: next, start: range.start, end: range.end, hasher: Sha256::new(), resumed: false })
    }
}

/// A value read from the store, quoted and cut short for a message: a hostile description must
/// not fill a status, an Event or a gRPC answer with megabytes.
fn shown(value: &str) -> String {
    const MAX: usize = 80;
    match value.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{:?}...", &value[..cut]),
        None => format!("{value:?}"),
    }
}

/// A sha256 read from the store: as it is when it is one, else [`shown`].
fn sha256_shown(value: &str) -> String {
    if quiver_api::types::is_sha256_hex(value) { value.to_string() } else { shown(value) }
}

fn legacy_data() -> String {
    LEGACY_DATA.into()
}

/// The data object a description names, if it is one its snapshot may have: the one its sha256
/// names, or [`LEGACY_DATA`]. Never another key: a description read from the store does not get
/// to point a restore anywhere else.
fn data_name(stored: &StoredSnapshot) -> Result<&str> {
    if stored.data == LEGACY_DATA || data_object(&stored.info)? == stored.data {
        return Ok(&stored.data);
    }
    Err(Error::Snapshot {
        collection: stored.info.collection.clone(),
        reason: format!(
            "the store's description names the data object {}, not the one its sha256 names",
            shown(&stored.data)
        ),
    })
}

/// Whether `file` is the data object `stored` describes: its size, and its ETag where the
/// description has one.
fn is_described(file: &object::ObjectFile, stored: &StoredSnapshot) -> bool {
    let etag_matches = match (&stored.data_etag, file.e_tag()) {
        (None, _) => true,
        (Some(described), Some(seen)) => same_etag(described, seen),
        (Some(_), None) => false,
    };
    file.size() == stored.info.size && etag_matches
}

/// ETags compared as entity tags, not strings: RFC 9110 section 8.8.3 puts them in quotes with an
/// optional weak prefix `W/`, and stores differ in what they send (S3 quotes them, some
/// gateways drop the quotes or mark them weak after a proxy), so `"abc"`, `abc` and
/// `W/"abc"` are one version.
fn same_etag(a: &str, b: &str) -> bool {
    let opaque = |tag: &str| tag.trim().trim_start_matches("W/").trim_matches('"').to_string();
    opaque(a) == opaque(b)
}

/// The description of `collection`'s snapshot with `sha256`, named by it.
fn description_of(collection: &str, sha256: &str) -> Result<String> {
    if !quiver_api::types::is_sha256_hex(sha256) {
        return Err(Error::Snapshot {
            collection: collection.to_string(),
            reason: format!("the sha256 {} is not 64 lowercase hex digits", shown(sha256)),
        });
    }
    Ok(format!("snapshot-{sha256}.json"))
}

/// The data object of the snapshot `info`: its sha256 names it, and nothing
/// but lowercase hex reaches an object key.
fn data_object(info: &SnapshotInfo) -> Result<String> {
    let sha256 = &info.sha256;
    if !quiver_api::types::is_sha256_hex(sha256) {
        return Err(Error::Snapshot {
            collection: info.collection.clone(),
            reason: format!("the sha256 {} is not 64 lowercase hex digits", shown(sha256)),
        });
    }
    Ok(format!("data-{sha256}.mdb"))
}

#[cfg(test)]
mod tests {
    use super::{Parts, same_etag};

    /// A description that lies about its parts is refused before a byte is fetched; one that
    /// tells the truth has its parts where the upload cut them (the last one short, an empty
    /// file one empty part).
    #[test]
    fn a_description_whose_parts_do_not_cover_its_size_is_refused() {
        const M: u64 = 1 << 20;
        let hashes = |n: usize| vec!["ab".repeat(32); n];
        let parts = |size: u64, part_bytes: u64, n: usize| {
            let sha256 = hashes(n);
            Parts::new("v1", size, part_bytes, &sha256).map(|p| (0..n).map(|i| p.range(i)).collect::<Vec<_>>())
        };
        assert_eq!(parts(20 * M, 8 * M, 3), Ok(vec![0..8 * M, 8 * M..16 * M, 16 * M..20 * M]));
        assert_eq!(parts(16 * M, 8 * M, 2), Ok(vec![0..8 * M, 8 * M..16 * M]));
        assert_eq!(parts(0, 8 * M, 1), Ok(std::iter::once(0..0).collect()));
        // One part of any size (a small snapshot).
        assert_eq!(parts(20, 8 * M, 1), Ok(std::iter::once(0..20).collect()));
        for (size, part_bytes, n) in
            [(20 * M, 8 * M, 2), (20 * M, 8 * M, 4), (16 * M, 8 * M, 3), (0, 8 * M, 0), (20, 0, 1), (20, 0, 0)]
        {
            let refused = parts(size, part_bytes, n).unwrap_err();
            assert!(
                refused.contains(&format!("lists {n} part sha256s of {part_bytes} bytes for {size} bytes")),
                "{refused}"
            );
        }
        let refused = parts(4096, 1024, 4).unwrap_err();
        assert!(refused.contains("parts of 1024 bytes, under 1048576"), "{refused}");
        let mut sha256 = hashes(3);
        sha256[1] = "../../etc".into();
        let refused = Parts::new("v1", 20 * M, 8 * M, &sha256).map(|_| ()).unwrap_err();
        assert!(refused.contains("\"../../etc\" as the sha256 of part 1"), "{refused}");
        // A hostile value is cut short in the message.
        sha256[1] = "x".repeat(1 << 20);
        let refused = Parts::new("v1", 20 * M, 8 * M, &sha256).map(|_| ()).unwrap_err();
        assert!(refused.len() < 300, "{} bytes", refused.len());
    }

    #[test]
    fn etags_are_compared_as_entity_tags() {
        assert!(same_etag("\"9b2cf535f27731c974343645a3985328\"", "9b2cf535f27731c974343645a3985328"));
        assert!(same_etag("W/\"abc\"", "\"abc\""));
        assert!(!same_etag("\"abc\"", "\"abd\""));
        assert!(!same_etag("\"abc-2\"", "\"abc\""));
    }
}
