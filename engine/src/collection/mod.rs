//! A collection: one sealed LMDB environment holding vectors, ids, tags, partitions, the ANN
//! index and the manifest. Opened read-only; vectors are read in place from the memory map.

pub mod builder;
pub mod coarse;
pub mod lmdb;
pub mod manifest;
pub mod validate;

use crate::error::{Error, Result};
use coarse::CoarseLists;
use heed::{Env, RoTxn, WithoutTls};
use lmdb::{AnyDatabase, Databases, MANIFEST_KEY};
use manifest::{FORMAT_VERSION, Manifest};
use roaring::RoaringBitmap;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The partition every record without one goes to.
pub const DEFAULT_PARTITION: &str = "default";

pub struct Collection {
    // Field order matters: the slices borrow from the map through `_pin`, which must outlive
    // them (fields drop in declaration order).
    vector_chunks: Vec<Cow<'static, [f32]>>,
    id_chunks: Vec<Cow<'static, [u64]>>,
    /// A read transaction held for the collection's lifetime: sealed data never changes, and
    /// this keeps the pages the slices above point into valid.
    _pin: Mutex<RoTxn<'static, WithoutTls>>,
    env: Env<WithoutTls>,
    dbs: Databases,
    manifest: Manifest,
    chunk_shift: u32,
    partitions: Vec<RoaringBitmap>,
    tags: BTreeMap<String, RoaringBitmap>,
    /// Each partition's coarse lists, read and checked once at open.
    coarse: Vec<Option<CoarseLists>>,
    path: PathBuf,
}

impl std::fmt::Debug for Collection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collection").field("name", &self.manifest.name).field("path", &self.path).finish()
    }
}

impl Collection {
    /// Opens a sealed collection directory.
    pub fn open(path: &Path) -> Result<Collection> {
        let (env, dbs) = lmdb::open(path)?;
        let collection = Collection::from_env(env, dbs, path)?;
        if !collection.manifest.sealed {
            return Err(Error::Incomplete {
                path: path.to_path_buf(),
                reason: "the import did not finish (not sealed)".into(),
            });
        }
        Ok(collection)
    }

    pub(crate) fn from_env(env: Env<WithoutTls>, dbs: Databases, path: &Path) -> Result<Collection> {
        let incomplete = |reason: String| Error::Incomplete { path: path.to_path_buf(), reason };
        let rtxn = env.clone().static_read_txn()?;
        let manifest = dbs.manifest.get(&rtxn, MANIFEST_KEY)?.ok_or_else(|| incomplete("no manifest".into()))?;
        if manifest.format_version != FORMAT_VERSION {
            return Err(incomplete(format!(
                "format version {} (this quiver reads {FORMAT_VERSION})",
                manifest.format_version
            )));
        }
        let rows = manifest.chunk_rows as usize;
        let dims = manifest.dimensions;
        let n_chunks = (manifest.count as usize).div_ceil(rows);
        let mut vector_chunks = Vec::with_capacity(n_chunks);
        let mut id_chunks = Vec::with_capacity(n_chunks);
        for chunk in 0..n_chunks as u32 {
            let expected_rows = (manifest.count as usize - chunk as usize * rows).min(rows);
            let vectors =
                dbs.vectors.get(&rtxn, &chunk)?.ok_or_else(|| incomplete(format!("vector chunk {chunk} missing")))?;
            let ids =
                dbs.item_ids.get(&rtxn, &chunk)?.ok_or_else(|| incomplete(format!("id chunk {chunk} missing")))?;
            if vectors.len() != expected_rows * dims * 4 || ids.len() != expected_rows * 8 {
                return Err(incomplete(format!("chunk {chunk} has the wrong size")));
            }
            // SAFETY: LMDB values read through a transaction stay valid, at the same address,
            // until that transaction ends; `rtxn` is moved into `_pin` and dropped after these.
            let (vectors, ids) = unsafe { (extend(vectors), extend(ids)) };
            vector_chunks.push(cast_chunk::<f32>(vectors));
            id_chunks.push(cast_chunk::<u64>(ids));
        }
        let mut partitions = Vec::with_capacity(manifest.partitions.len());
        for name in &manifest.partitions {
            let members =
                dbs.partitions.get(&rtxn, name)?.ok_or_else(|| incomplete(format!("partition {name:?} missing")))?;
            partitions.push(members);
        }
        let tags = dbs.tags.iter(&rtxn)?.map(|r| r.map(|(k, v)| (k.to_string(), v))).collect::<heed::Result<_>>()?;
        let mut coarse = Vec::with_capacity(partitions.len());
        for (partition, members) in partitions.iter().enumerate() {
            let stored = match dbs.coarse {
                Some(db) => db.get(&rtxn, &(partition as u16))?,
                None => None,
            };
            let lists = stored
                .map(|bytes| CoarseLists::decode(bytes, dims, members))
                .transpose()
                .map_err(|reason| incomplete(format!("partition {:?}: {reason}", manifest.partitions[partition])))?;
            coarse.push(lists);
        }
        Ok(Collection {
            vector_chunks,
            id_chunks,
            _pin: Mutex::new(rtxn),
            chunk_shift: manifest.chunk_rows.trailing_zeros(),
            env,
            dbs,
            manifest,
            partitions,
            tags,
            coarse,
            path: path.to_path_buf(),
        })
    }

    /// Writes a compacted copy of this collection's LMDB file to `path`: its snapshot.
    pub fn copy_compacted(&self, path: &Path) -> Result<()> {
        let file = self.env.copy_to_path(path, heed::CompactionOption::Enabled)?;
        file.sync_all().map_err(|e| Error::io(format!("syncing {}", path.display()), e))
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn name(&self) -> &str {
        &self.manifest.name
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> u64 {
        self.manifest.count
    }

    pub fn is_empty(&self) -> bool {
        self.manifest.count == 0
    }

    pub(crate) fn env(&self) -> &Env<WithoutTls> {
        &self.env
    }

    /// The stored (for cosine: normalised) vector of an item id.
    #[inline]
    pub fn vector(&self, item: u32) -> &[f32] {
        let chunk = &self.vector_chunks[(item >> self.chunk_shift) as usize];
        let row = (item & (self.manifest.chunk_rows - 1)) as usize * self.manifest.dimensions;
        &chunk[row..row + self.manifest.dimensions]
    }

    /// The stored vectors in item order, a chunk at a time: `(first item id, rows)`.
    pub fn vector_chunks(&self) -> impl Iterator<Item = (u32, &[f32])> {
        let rows = self.manifest.chunk_rows;
        self.vector_chunks.iter().enumerate().map(move |(i, c)| (i as u32 * rows, c.as_ref()))
    }

    /// The external id of an item id.
    #[inline]
    pub fn external_id(&self, item: u32) -> u64 {
        self.id_chunks[(item >> self.chunk_shift) as usize][(item & (self.manifest.chunk_rows - 1)) as usize]
    }

    /// The item id of an external id, if present.
    pub fn item_of(&self, external: u64) -> Result<Option<u32>> {
        let rtxn = self.env.read_txn()?;
        Ok(self.dbs.ids.get(&rtxn, &external)?)
    }

    /// Members of each partition, by partition index.
    pub fn partition_members(&self) -> &[RoaringBitmap] {
        &self.partitions
    }

    pub fn tag(&self, name: &str) -> Option<&RoaringBitmap> {
        self.tags.get(name)
    }

    /// Tag names and how many items carry each.
    pub fn tag_counts(&self) -> impl Iterator<Item = (&str, u64)> {
        self.tags.iter().map(|(k, v)| (k.as_str(), v.len()))
    }

    /// The database holding the durable ANN index (typed by its backend, [`crate::index`]).
    pub fn ann_database(&self) -> AnyDatabase {
        self.dbs.ann
    }

    /// The database of coarse lists, absent in collections sealed before it existed.
    pub fn coarse_database(&self) -> Option<crate::collection::lmdb::CoarseDatabase> {
        self.dbs.coarse
    }

    /// The coarse lists of a partition, if it has them ([`coarse`]).
    pub fn coarse_lists(&self, partition: u16) -> Option<&CoarseLists> {
        self.coarse.get(partition as usize)?.as_ref()
    }

    /// Faults every page of the memory map into this process (the page cache holds the file
    /// afterwards), so no first read of a vector waits for the disk. Returns the file's size.
    pub fn prefault(&self) -> Result<u64> {
        let file = self.path.join("data.mdb");
        let bytes = std::fs::metadata(&file).map_err(|e| Error::io(format!("stat {}", file.display()), e))?.len();
        // Read the file once so the page cache holds it, then touch each page of our slices.
        let mut f = std::fs::File::open(&file).map_err(|e| Error::io(format!("opening {}", file.display()), e))?;
        std::io::copy(&mut f, &mut std::io::sink()).map_err(|e| Error::io(format!("reading {}", file.display()), e))?;
        let mut checksum = 0.0f32;
        for chunk in &self.vector_chunks {
            checksum += chunk.iter().step_by(1024).sum::<f32>();
        }
        std::hint::black_box(checksum);
        Ok(bytes)
    }

    /// Size of the collection's files on disk.
    pub fn disk_bytes(&self) -> u64 {
        std::fs::metadata(self.path.join("data.mdb")).map(|m| m.len()).unwrap_or(0)
    }
}

/// Extends a borrow of map memory to `'static`; see the SAFETY note at the caller.
unsafe fn extend(bytes: &[u8]) -> &'static [u8] {
    unsafe { std::slice::from_raw_parts(bytes.as_ptr(), bytes.len()) }
}

/// Views an LMDB value as a typed slice in place when it is aligned (large values live on
/// their own page-aligned overflow pages), else copies it.
fn cast_chunk<T: bytemuck::Pod>(bytes: &'static [u8]) -> Cow<'static, [T]> {
    match bytemuck::try_cast_slice(bytes) {
        Ok(slice) => Cow::Borrowed(slice),
        Err(_) => Cow::Owned(bytemuck::pod_collect_to_vec(bytes)),
    }
}
