//! hannoy (HNSW over LMDB, by arroy's authors): the alternative durable index, one graph per
//! partition. It has no inner-product distance.

use super::IndexQuery;
use crate::collection::Collection;
use crate::collection::lmdb::AnyDatabase;
use crate::error::{Error, RequestError, Result};
use crate::types::Metric;
use ::hannoy::distances::{BinaryQuantizedCosine, Cosine, Euclidean};
use ::hannoy::{Database, Distance, Reader, Writer};
use heed::RwTxn;
use rand::SeedableRng;
use rand::rngs::StdRng;

/// Links per node above layer 0, and on layer 0 (hnswlib's M = 16 convention).
const M: usize = 16;
const M0: usize = 32;
/// Build quality when a collection does not set one.
pub const DEFAULT_EF_CONSTRUCTION: usize = 100;

macro_rules! with_distance {
    ($metric:expr, $D:ident => $body:expr) => {
        match $metric {
            Metric::Cosine => {
                type $D = Cosine;
                $body
            }
            Metric::Euclidean => {
                type $D = Euclidean;
                $body
            }
            Metric::BinaryQuantizedCosine => {
                type $D = BinaryQuantizedCosine;
                $body
            }
            Metric::Dot => Err(unsupported()),
        }
    };
}

fn unsupported() -> Error {
    RequestError::new("index.backend", "hannoy", "hannoy has no dot-product distance; use arroy").into()
}

/// Fails early (before any import work) for metrics hannoy cannot index.
pub fn check_metric(metric: Metric) -> Result<()> {
    if metric == Metric::Dot { Err(unsupported()) } else { Ok(()) }
}

pub fn build(
    wtxn: &mut RwTxn,
    db: AnyDatabase,
    collection: &Collection,
    ef_construction: usize,
    seed: u64,
) -> Result<()> {
    let manifest = collection.manifest();
    with_distance!(manifest.metric, D => {
        let db: Database<'static, D> = db.remap_types();
        for (index, members) in collection.partition_members().iter().enumerate() {
            let writer = Writer::<D>::new(db, index as u16, manifest.dimensions);
            for item in members {
                writer.add_item(wtxn, item, collection.vector(item))?;
            }
            let mut rng = StdRng::seed_from_u64(seed.wrapping_add(index as u64));
            writer.builder(&mut rng).ef_construction(ef_construction).build::<M, M0>(wtxn)?;
        }
        Ok(())
    })
}

/// The items hannoy finds nearest to `q.vector` in its partition (`ef` = `q.effort`).
pub fn nearest(db: AnyDatabase, collection: &Collection, q: &IndexQuery<'_>) -> Result<Vec<u32>> {
    with_distance!(collection.manifest().metric, D => nearest_typed::<D>(db, collection, q))
}

fn nearest_typed<D: Distance>(db: AnyDatabase, collection: &Collection, q: &IndexQuery<'_>) -> Result<Vec<u32>> {
    let rtxn = collection.env().read_txn()?;
    let reader = Reader::<D>::open(&rtxn, q.partition, db.remap_types())?;
    let mut builder = reader.nns(q.count);
    builder.ef_search(q.effort.max(q.count));
    if let Some(candidates) = q.candidates {
        builder.candidates(candidates);
    }
    Ok(builder.by_vector(&rtxn, q.vector)?.into_nns().into_iter().map(|(item, _)| item).collect())
}
