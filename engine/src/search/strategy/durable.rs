//! The collection's durable index (arroy or hannoy, [`crate::index`]) as a strategy: the
//! candidates it finds, re-ranked exactly.

use super::{PartitionQuery, PartitionSearch, Scored, rerank};
use crate::collection::Collection;
use crate::error::Result;
use crate::index::{DurableIndex, IndexQuery};
use crate::types::{ArroyVectors, Backend};

/// Candidates per hit arroy shortlists from binary vectors when no quality is asked.
const BINARY_SHORTLIST: usize = 20;

pub struct IndexSearch {
    index: DurableIndex,
}

impl IndexSearch {
    pub fn open(collection: &Collection) -> IndexSearch {
        IndexSearch { index: DurableIndex::open(collection) }
    }
}

impl PartitionSearch for IndexSearch {
    fn search(&self, collection: &Collection, q: &PartitionQuery<'_>) -> Result<Vec<Scored>> {
        let manifest = collection.manifest();
        // The quality knob means search_k for arroy, ef for hannoy; arroy's binary-quantized
        // vectors only shortlist, so it is asked for `quality` candidates instead (by default
        // BINARY_SHORTLIST x k: a 1-bit code ties too often for k alone to hold the nearest).
        let binary = manifest.index.arroy_vectors_stored(manifest.metric) == ArroyVectors::Binary;
        let (count, effort) = match manifest.index.backend {
            Backend::Arroy if binary && q.quality == 0 => (q.k * BINARY_SHORTLIST, 0),
            Backend::Arroy if binary => (q.quality.max(q.k), 0),
            Backend::Arroy => (q.k, q.quality),
            Backend::Hannoy => (q.k, q.quality.max(q.k)),
        };
        let query = IndexQuery {
            partition: q.partition,
            vector: q.vector,
            count,
            effort,
            candidates: q.filtered.then_some(q.members),
        };
        let found = self.index.nearest(collection, &query)?;
        rerank(collection, q, found)
    }
}
