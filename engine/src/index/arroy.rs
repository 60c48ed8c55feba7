//! arroy (random-projection trees over LMDB): the durable index of the `arroy` backend, one
//! arroy index per partition, written only when the build asks for trees.

use super::IndexQuery;
use crate::collection::Collection;
use crate::collection::lmdb::AnyDatabase;
use crate::error::Result;
use crate::types::{ArroyVectors, Metric};
use ::arroy::distances::{BinaryQuantizedCosine, BinaryQuantizedEuclidean, Cosine, DotProduct, Euclidean};
use ::arroy::{Database, Distance, Reader, Writer};
use heed::RwTxn;
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::num::NonZeroUsize;

/// Runs `$body` with `$D` bound to the arroy distance type of `$metric` with its vectors kept
/// as `$vectors` (dispatched once).
macro_rules! with_distance {
    ($metric:expr, $vectors:expr, $D:ident => $body:expr) => {
        match ($metric, $vectors) {
            (Metric::Cosine, ArroyVectors::Full) => {
                type $D = Cosine;
                $body
            }
            (Metric::Euclidean, ArroyVectors::Full) => {
                type $D = Euclidean;
                $body
            }
            (Metric::Euclidean, ArroyVectors::Binary) => {
                type $D = BinaryQuantizedEuclidean;
                $body
            }
            (Metric::Dot, _) => {
                type $D = DotProduct;
                $body
            }
            (Metric::Cosine | Metric::BinaryQuantizedCosine, _) => {
                type $D = BinaryQuantizedCosine;
                $body
            }
        }
    };
}

/// Writes every partition's items into arroy and builds its trees (arroy uses all cores); with
/// no trees asked for, writes nothing: an arroy index without trees answers no query, and its
/// copy of the vectors would be disk and build time nothing reads.
pub fn build(
    wtxn: &mut RwTxn,
    db: AnyDatabase,
    collection: &Collection,
    n_trees: usize,
    seed: u64,
    memory: Option<usize>,
) -> Result<()> {
    if n_trees == 0 {
        return Ok(());
    }
    let manifest = collection.manifest();
    with_distance!(manifest.metric, manifest.index.arroy_vectors_stored(manifest.metric), D => {
        let db: Database<'static, D> = db.remap_types();
        for (index, members) in collection.partition_members().iter().enumerate() {
            let writer = Writer::<D>::new(db, index as u16, manifest.dimensions);
            for item in members {
                writer.add_item(wtxn, item, collection.vector(item))?;
            }
            let mut rng = StdRng::seed_from_u64(seed.wrapping_add(index as u64));
            let mut builder = writer.builder(&mut rng);
            builder.n_trees(n_trees);
            if let Some(bytes) = memory {
                builder.available_memory(bytes);
            }
            builder.build(wtxn)?;
        }
        Ok(())
    })
}

/// The items arroy finds nearest to `q.vector` in its partition.
pub fn nearest(db: AnyDatabase, collection: &Collection, q: &IndexQuery<'_>) -> Result<Vec<u32>> {
    let manifest = collection.manifest();
    with_distance!(manifest.metric, manifest.index.arroy_vectors_stored(manifest.metric), D => nearest_typed::<D>(db, collection, q))
}

fn nearest_typed<D: Distance>(db: AnyDatabase, collection: &Collection, q: &IndexQuery<'_>) -> Result<Vec<u32>> {
    let rtxn = collection.env().read_txn()?;
    let reader = Reader::<D>::open(&rtxn, q.partition, db.remap_types())?;
    let mut builder = reader.nns(q.count);
    if let Some(search_k) = NonZeroUsize::new(q.effort) {
        builder.search_k(search_k);
    }
    if let Some(candidates) = q.candidates {
        builder.candidates(candidates);
    }
    Ok(builder.by_vector(&rtxn, q.vector)?.into_iter().map(|(item, _)| item).collect())
}
