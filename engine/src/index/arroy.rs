//! arroy (random-projection trees over LMDB): the default durable index, one arroy index per
//! partition.

use super::{AnnIndex, AnyDatabase, PartitionQuery, Scored, rerank};
use crate::collection::Collection;
use crate::error::Result;
use crate::types::Metric;
use ::arroy::distances::{BinaryQuantizedCosine, Cosine, DotProduct, Euclidean};
use ::arroy::{Database, Distance, Reader, Writer};
use heed::RwTxn;
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::num::NonZeroUsize;

/// Runs `$body` with `$D` bound to the arroy distance type of `$metric` (dispatched once).
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
            Metric::Dot => {
                type $D = DotProduct;
                $body
            }
            Metric::BinaryQuantizedCosine => {
                type $D = BinaryQuantizedCosine;
                $body
            }
        }
    };
}

/// Writes every partition's items into arroy and builds its trees (arroy uses all cores).
pub fn build(
    wtxn: &mut RwTxn,
    db: AnyDatabase,
    collection: &Collection,
    n_trees: Option<usize>,
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
            let mut builder = writer.builder(&mut rng);
            if let Some(n) = n_trees {
                builder.n_trees(n);
            }
            builder.build(wtxn)?;
        }
        Ok(())
    })
}

pub struct ArroyIndex {
    db: AnyDatabase,
}

impl ArroyIndex {
    pub fn new(db: AnyDatabase) -> Self {
        ArroyIndex { db }
    }
}

fn query_typed<D: Distance>(
    db: AnyDatabase,
    collection: &Collection,
    q: &PartitionQuery<'_>,
    binary_quantized: bool,
) -> Result<Vec<Scored>> {
    let rtxn = collection.env().read_txn()?;
    let reader = Reader::<D>::open(&rtxn, q.partition, db.remap_types())?;
    // Quantized distances only shortlist: ask for `quality` candidates and re-rank them.
    let count = if binary_quantized { q.quality.max(q.k) } else { q.k };
    let mut builder = reader.nns(count);
    if !binary_quantized && let Some(search_k) = NonZeroUsize::new(q.quality) {
        builder.search_k(search_k);
    }
    if q.filtered {
        builder.candidates(q.members);
    }
    let found = builder.by_vector(&rtxn, q.vector)?;
    Ok(rerank(collection, q.vector, found.into_iter().map(|(item, _)| item), q.k))
}

impl AnnIndex for ArroyIndex {
    fn search(&self, collection: &Collection, q: &PartitionQuery<'_>) -> Result<Vec<Scored>> {
        let metric = collection.manifest().metric;
        with_distance!(metric, D => query_typed::<D>(self.db, collection, q, metric == Metric::BinaryQuantizedCosine))
    }
}
