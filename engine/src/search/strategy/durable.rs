//! The collection's durable index (arroy or hannoy, [`crate::index`]) as a strategy: the
//! candidates it finds, re-ranked exactly.

use super::{PartitionQuery, PartitionSearch, Scored, rerank};
use crate::collection::Collection;
use crate::error::Result;
use crate::index::{DurableIndex, IndexQuery};
use crate::types::{Backend, Metric};

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
        // distances only shortlist, so it is asked for `quality` candidates instead.
        let (count, effort) = match manifest.index.backend {
            Backend::Arroy if manifest.metric == Metric::BinaryQuantizedCosine => (q.quality.max(q.k), 0),
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
