//! The LMDB layout of a collection: one environment, a handful of typed databases.

use super::manifest::Manifest;
use crate::error::{Error, Result};
use heed::byteorder::BigEndian;
use heed::types::{Bytes, SerdeJson, Str, U16, U32, U64};
use heed::{CommitOrAbort, Database, Env, EnvFlags, EnvOpenOptions, WithoutTls};
use roaring::RoaringBitmap;
use std::borrow::Cow;
use std::path::Path;

/// Virtual size of the memory map; LMDB only uses what it writes (the file is sparse).
pub const MAP_SIZE: usize = 1 << 40;
const MAX_DBS: u32 = 16;
pub const MANIFEST_KEY: &str = "manifest";

/// The collection's ANN database before a backend gives it its key and node types.
pub type AnyDatabase = heed::Database<'static, heed::Unspecified, heed::Unspecified>;

/// Roaring bitmaps stored in their portable serialized form.
pub enum BitmapCodec {}

impl<'a> heed::BytesEncode<'a> for BitmapCodec {
    type EItem = RoaringBitmap;
    fn bytes_encode(item: &'a RoaringBitmap) -> Result<Cow<'a, [u8]>, heed::BoxedError> {
        let mut bytes = Vec::with_capacity(item.serialized_size());
        item.serialize_into(&mut bytes)?;
        Ok(Cow::Owned(bytes))
    }
}

impl<'a> heed::BytesDecode<'a> for BitmapCodec {
    type DItem = RoaringBitmap;
    fn bytes_decode(bytes: &'a [u8]) -> Result<RoaringBitmap, heed::BoxedError> {
        Ok(RoaringBitmap::deserialize_from(bytes)?)
    }
}

/// The typed databases of one collection environment.
#[derive(Clone, Copy)]
pub struct Databases {
    pub manifest: Database<'static, Str, SerdeJson<Manifest>>,
    /// Chunk number -> `chunk_rows` rows of `dimensions` little-endian f32.
    pub vectors: Database<'static, U32<BigEndian>, Bytes>,
    /// Chunk number -> `chunk_rows` external ids (u64, native endian) by item id.
    pub item_ids: Database<'static, U32<BigEndian>, Bytes>,
    /// External id -> item id.
    pub ids: Database<'static, U64<BigEndian>, U32<BigEndian>>,
    pub tags: Database<'static, Str, BitmapCodec>,
    pub partitions: Database<'static, Str, BitmapCodec>,
    /// The ANN index database; typed by the backend when used.
    pub ann: AnyDatabase,
    /// Partition index -> its coarse lists ([`super::coarse`]). Absent in collections
    /// sealed before the lists existed, which are searched without them.
    pub coarse: Option<CoarseDatabase>,
}

/// Partition index -> one encoded [`super::coarse::CoarseLists`].
pub type CoarseDatabase = Database<'static, U16<BigEndian>, Bytes>;

type DbTuple = (
    Database<'static, Str, SerdeJson<Manifest>>,
    Database<'static, U32<BigEndian>, Bytes>,
    Database<'static, U32<BigEndian>, Bytes>,
    Database<'static, U64<BigEndian>, U32<BigEndian>>,
    Database<'static, Str, BitmapCodec>,
    Database<'static, Str, BitmapCodec>,
    AnyDatabase,
    Option<CoarseDatabase>,
);

const NAMES: [&str; 8] = ["manifest", "vectors", "item-ids", "ids", "tags", "partitions", "ann", "coarse"];

impl Databases {
    fn from_tuple(t: DbTuple) -> Self {
        let (manifest, vectors, item_ids, ids, tags, partitions, ann, coarse) = t;
        Databases { manifest, vectors, item_ids, ids, tags, partitions, ann, coarse }
    }
}

fn env_options() -> EnvOpenOptions<WithoutTls> {
    let mut options = EnvOpenOptions::new().read_txn_without_tls();
    options.map_size(MAP_SIZE).max_dbs(MAX_DBS).max_readers(1024);
    options
}

/// Creates a fresh environment in an empty staging directory.
///
/// Commits do not fsync: a staging directory that did not finish is discarded, never opened, so
/// durability is needed only once, when the builder syncs before renaming it into place.
pub fn create(dir: &Path) -> Result<(Env<WithoutTls>, Databases)> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let mut options = env_options();
    // SAFETY: the directory is ours (a fresh staging dir); nothing else maps this file, and the
    // flags only relax syncing, which `builder` restores with `force_sync` before sealing.
    let env = unsafe {
        options.flags(EnvFlags::NO_SYNC | EnvFlags::NO_META_SYNC);
        options.open(dir)?
    };
    let wtxn = env.write_txn()?;
    let dbs = env
        .create_databases_and_commit(wtxn, |dbo, wtxn| -> heed::Result<_> {
            Ok(CommitOrAbort::<_, ()>::Commit((
                dbo.create_database(wtxn, Some(NAMES[0]))?,
                dbo.create_database(wtxn, Some(NAMES[1]))?,
                dbo.create_database(wtxn, Some(NAMES[2]))?,
                dbo.create_database(wtxn, Some(NAMES[3]))?,
                dbo.create_database(wtxn, Some(NAMES[4]))?,
                dbo.create_database(wtxn, Some(NAMES[5]))?,
                dbo.create_database(wtxn, Some(NAMES[6]))?,
                Some(dbo.create_database(wtxn, Some(NAMES[7]))?),
            )))
        })?
        .unwrap_commit();
    Ok((env, Databases::from_tuple(dbs)))
}

/// Opens an existing environment; fails with [`Error::Incomplete`] when a database is missing.
pub fn open(dir: &Path) -> Result<(Env<WithoutTls>, Databases)> {
    if !dir.join("data.mdb").is_file() {
        return Err(Error::NotFound { path: dir.to_path_buf() });
    }
    // SAFETY: sealed collections are never written again; LMDB's lock file coordinates readers.
    let env = unsafe { env_options().open(dir)? };
    let rtxn = env.read_txn()?;
    let opened = env
        .open_databases_and_commit(rtxn, |dbo, rtxn| -> heed::Result<_> {
            let all = (
                dbo.open_database(rtxn, Some(NAMES[0]))?,
                dbo.open_database(rtxn, Some(NAMES[1]))?,
                dbo.open_database(rtxn, Some(NAMES[2]))?,
                dbo.open_database(rtxn, Some(NAMES[3]))?,
                dbo.open_database(rtxn, Some(NAMES[4]))?,
                dbo.open_database(rtxn, Some(NAMES[5]))?,
                dbo.open_database(rtxn, Some(NAMES[6]))?,
                dbo.open_database(rtxn, Some(NAMES[7]))?,
            );
            Ok(CommitOrAbort::<_, ()>::Commit(all))
        })?
        .unwrap_commit();
    let missing =
        |name: &str| Error::Incomplete { path: dir.to_path_buf(), reason: format!("database {name:?} is missing") };
    let dbs = (
        opened.0.ok_or_else(|| missing(NAMES[0]))?,
        opened.1.ok_or_else(|| missing(NAMES[1]))?,
        opened.2.ok_or_else(|| missing(NAMES[2]))?,
        opened.3.ok_or_else(|| missing(NAMES[3]))?,
        opened.4.ok_or_else(|| missing(NAMES[4]))?,
        opened.5.ok_or_else(|| missing(NAMES[5]))?,
        opened.6.ok_or_else(|| missing(NAMES[6]))?,
        opened.7,
    );
    Ok((env, Databases::from_tuple(dbs)))
}
