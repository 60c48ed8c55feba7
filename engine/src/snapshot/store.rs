//! Snapshots published to object storage, so replicas start without a writer: under a store
//! `s3://bucket/prefix` (or `gs://`, `az://`), collection `name` is
//!
//! - `<prefix>/<name>/data-<sha256>.mdb`: the snapshot file, uploaded in parts
//!   ([`object::upload_file`]), named by its content;
//! - `<prefix>/<name>/snapshot.json`: its [`StoredSnapshot`] (the data object's name, size,
//!   sha256 of the whole and of each part, its ETag, the manifest), written last, in one PUT.
//!
//! A snapshot whose description is not there is not in the store: a writer killed mid-upload
//! leaves nothing a replica would take. A snapshot published again with other bytes (a retried
//! import) goes to another data object, so the one the old description names stays whole until
//! the new description is in; only then is the old one deleted. A replica reads the data object in ranged GETs pinned to
//! the ETag the description names (an object replaced since is refused), appends to its
//! [`Partial`] (so a killed restore resumes from the bytes on disk), and checks the sha256 of the
//! file on disk before it installs it.

use super::download::Partial;
use super::{SnapshotDir, SnapshotInfo};
use crate::cancel::Cancel;
use crate::error::{Error, Result, redact};
use crate::import::object::{self, Credentials};
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::time::Duration;

const DESCRIPTION: &str = "snapshot.json";
/// The data object of descriptions written before data objects were named by their content.
const LEGACY_DATA: &str = "data.mdb";
/// Appended to the description's key for the copy of an unreadable one a push replaced.
const UNREADABLE: &str = ".unreadable";
/// A description is a few KiB (one sha256 per 16 MiB part, the manifest); anything much larger
/// is not one, and is not read into memory.
const MAX_DESCRIPTION_BYTES: u64 = 16 << 20;
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

    /// The snapshot of `collection` in the store, if one was published completely.
    pub fn described(&self, collection: &str) -> Result<Option<StoredSnapshot>> {
        let uri = self.object(collection, DESCRIPTION)?;
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

    /// Every snapshot published completely (with a readable description), in name order.
    pub fn list(&self) -> Result<Vec<StoredSnapshot>> {
        let location = object::locate(&format!("{}/", self.uri), self.credentials)?;
        let listed = object::list(&self.uri, &location, &location.path)?;
        let prefix = location.path.as_ref().to_string();
        let mut found = Vec::new();
        for meta in listed {
            let key = meta.location.as_ref();
            let below = key.strip_prefix(&prefix).unwrap_or(key).trim_start_matches('/');
            let Some(collection) = below.strip_suffix(&format!("/{DESCRIPTION}")).filter(|c| !c.contains('/')) else {
                continue;
            };
            // One unreadable description (another tool's key, a damaged object) hides only
            // itself: the list is how an operator finds what else the store holds.
            match self.described(collection) {
                Ok(stored) => found.extend(stored),
                Err(e) => tracing::warn!(store = %self.uri(), error = %e, "left out of the list"),
            }
        }
        Ok(found)
    }

    /// Publishes the finished local snapshot `info`: the data first, the description last.
    /// A snapshot already published with the same sha256 is left as it is.
    pub fn push(&self, snapshots: &SnapshotDir, info: &SnapshotInfo) -> Result<StoredSnapshot> {
        // A description that cannot be read (damaged, another tool's) is replaced: left in
        // place it would keep every replica from starting, and the writer from publishing.
        let previous = match self.described(&info.collection) {
            Ok(previous) => previous,
            Err(e @ Error::Snapshot { .. }) => {
                tracing::warn!(collection = %info.collection, error = %e, "replacing the store's unreadable description");
                self.keep_unreadable(&info.collection);
                None
            }
            Err(e) => return Err(e),
        };
        if let Some(stored) = previous.as_ref().filter(|s| s.info.sha256 == info.sha256) {
            // The same snapshot described: published already if its data object is whole (a
            // deleted or replaced one is uploaded again).
            if self.holds_data_of(stored)? {
                tracing::info!(collection = %info.collection, store = %self.uri(), "snapshot already in the store");
                return Ok(stored.clone());
            }
            tracing::warn!(collection = %info.collection, store = %self.uri(), "the described data object is not whole: uploading it again");
        }
        let started = std::time::Instant::now();
        let name = data_object(info)?;
        let data = self.object(&info.collection, &name)?;
        let uploaded = object::upload_file(&data, self.credentials, &snapshots.file(&info.collection)?)?;
        crate::fault::point("store::before_description");
        let stored = StoredSnapshot {
            info: info.clone(),
            data: name,
            part_bytes: uploaded.part_bytes,
            part_sha256: uploaded.part_sha256,
            data_etag: uploaded.e_tag,
        };
        let json = serde_json::to_vec_pretty(&stored).expect("a snapshot description serializes");
        object::write_whole(&self.object(&info.collection, DESCRIPTION)?, self.credentials, json)?;
        crate::fault::point("store::after_description");
        // Read again: another pusher of this collection may have written its description just
        // after this one (two writers publishing one collection is a misconfiguration; object
        // stores differ in conditional writes, so it is detected, not prevented). Then this
        // push did not publish, and says so rather than report a snapshot replicas will not get.
        let ours = match self.described(&info.collection) {
            Ok(Some(now)) if now.data != stored.data => {
                return Err(Error::Snapshot {
                    collection: info.collection.clone(),
                    reason: format!(
                        "another publisher replaced this snapshot's description in {} meanwhile (it names {}, \
                         this push uploaded {}): is a second writer publishing this collection?",
                        self.uri(),
                        now.data,
                        stored.data
                    ),
                });
            }
            Ok(now) => now.is_some(),
            // Unsure what the store holds now: what the old description named is kept.
            Err(_) => false,
        };
        // What the replaced description named is no longer reachable. Best effort: left
        // behind, it costs space, not correctness.
        if let Some(old) = previous.filter(|old| ours && old.data != stored.data) {
            let deleted = data_name(&old)
                .and_then(|name| self.object(&info.collection, name))
                .and_then(|uri| object::delete(&uri, self.credentials));
            if let Err(e) = deleted {
                tracing::warn!(collection = %info.collection, error = %e, "the replaced snapshot's data stays in the store");
            }
        }
        let secs = started.elapsed().as_secs_f64();
        tracing::info!(
            collection = %info.collection,
            store = %self.uri(),
            mib = info.size as f64 / (1 << 20) as f64,
            mib_per_s = info.size as f64 / (1 << 20) as f64 / secs.max(1e-9),
            "snapshot published to the store"
        );
        Ok(stored)
    }

    /// Whether the data object `stored` names is there with the size and ETag it describes;
    /// a store that cannot be asked is an error, not an answer (a push would upload again what
    /// may be there, and delete what replicas read).
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
    /// on disk, logging its progress every `progress_every`; `fetched` is told each chunk's size.
    /// Not there yet is a transient error; a file that fails its checks is [`Error::Snapshot`];
    /// once `cancel` fires, the restore stops at the next chunk (the partial file stays, to be
    /// resumed).
    pub fn pull(
        &self,
        collection: &str,
        snapshots: &SnapshotDir,
        fetched: &dyn Fn(u64),
        progress_every: Duration,
        cancel: &Cancel,
    ) -> Result<SnapshotInfo> {
        let stored = self.described(collection)?.ok_or_else(|| Error::Remote {
            target: self.uri(),
            reason: format!("no snapshot of {collection} in the store (yet)"),
        })?;
        let corrupt = |reason: String| Error::Snapshot { collection: collection.to_string(), reason };
        if stored.info.collection != collection {
            return Err(corrupt(format!("the store's description is of {:?}", stored.info.collection)));
        }
        let data = self.object(collection, data_name(&stored)?)?;
        let file = object::ObjectFile::open(&data, self.credentials)?;
        if !is_described(&file, &stored) {
            return Err(corrupt(format!(
                "{} is not the object its description names ({} bytes, ETag {:?}; described: {} bytes, ETag {:?})",
                redact(&data),
                file.size(),
                file.e_tag(),
                stored.info.size,
                stored.data_etag
            )));
        }
        let mut partial = Partial::open(snapshots, &stored.info)?;
        partial.log_progress(&self.uri(), progress_every);
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
            partial.append(partial.offset(), &chunk[..n])?;
            fetched(n as u64);
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

fn legacy_data() -> String {
    LEGACY_DATA.into()
}

/// The data object a description names, if it is one its snapshot may have: the one its sha256
/// names, or [`LEGACY_DATA`]. Never another key: a description read from the store does not get
/// to point a restore, or a delete, anywhere else.
fn data_name(stored: &StoredSnapshot) -> Result<&str> {
    if stored.data == LEGACY_DATA || data_object(&stored.info)? == stored.data {
        return Ok(&stored.data);
    }
    Err(Error::Snapshot {
        collection: stored.info.collection.clone(),
        reason: format!(
            "the store's description names the data object {:?}, not the one its sha256 names",
            stored.data
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

/// The data object of the snapshot `info`: its sha256 names it, and nothing
/// but lowercase hex reaches an object key.
fn data_object(info: &SnapshotInfo) -> Result<String> {
    let sha256 = &info.sha256;
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(Error::Snapshot {
            collection: info.collection.clone(),
            reason: format!("the sha256 {sha256:?} is not 64 lowercase hex digits"),
        });
    }
    Ok(format!("data-{sha256}.mdb"))
}

#[cfg(test)]
mod tests {
    use super::same_etag;

    #[test]
    fn etags_are_compared_as_entity_tags() {
        assert!(same_etag("\"9b2cf535f27731c974343645a3985328\"", "9b2cf535f27731c974343645a3985328"));
        assert!(same_etag("W/\"abc\"", "\"abc\""));
        assert!(!same_etag("\"abc\"", "\"abd\""));
        assert!(!same_etag("\"abc-2\"", "\"abc\""));
    }
}
