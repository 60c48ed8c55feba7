//! What a collection's build writes beside its vectors in its LMDB environment, once after
//! import: the coarse lists (k-means per partition) the sign-code scan probes, and the durable
//! ANN index the `index` strategy asks, one per partition: arroy's random-projection trees
//! when the build asks for some (by default none, and then no arroy index at all) or hannoy's
//! HNSW graph. This module builds them and asks the durable index for nearest neighbours; how
//! the answers are re-ranked is [`crate::search`]'s business.

pub mod arroy;
pub mod coarse;
pub mod hannoy;

use crate::collection::Collection;
use crate::collection::lmdb::AnyDatabase;
use crate::error::{RequestError, Result};
use crate::types::{Backend, IndexParams, SearchDefaults, Strategy};
use heed::RwTxn;
use roaring::RoaringBitmap;

/// A nearest-neighbour query of one partition's durable index.
pub struct IndexQuery<'a> {
    pub partition: u16,
    /// The prepared query (normalised for cosine).
    pub vector: &'a [f32],
    /// How many items to return.
    pub count: usize,
    /// The backend's effort knob: arroy's `search_k` (0: arroy's default), hannoy's `ef`.
    pub effort: usize,
    /// Only these items (a filter), when given.
    pub candidates: Option<&'a RoaringBitmap>,
}

/// A collection's durable index, opened.
#[derive(Clone, Copy)]
pub struct DurableIndex {
    backend: Backend,
    db: AnyDatabase,
}

impl DurableIndex {
    pub fn open(collection: &Collection) -> DurableIndex {
        DurableIndex { backend: collection.manifest().index.backend, db: collection.ann_database() }
    }

    /// The item ids the index finds nearest, in its own order.
    pub fn nearest(&self, collection: &Collection, q: &IndexQuery<'_>) -> Result<Vec<u32>> {
        match self.backend {
            Backend::Arroy => arroy::nearest(self.db, collection, q),
            Backend::Hannoy => hannoy::nearest(self.db, collection, q),
        }
    }
}

/// Fails early (before any import work) for a default strategy the build will have no index
/// for: `index` fixed (not calibrated) on a build with no durable index.
pub fn check_strategy(params: &IndexParams, search: &SearchDefaults, calibrated: bool) -> Result<()> {
    if calibrated || search.strategy != Strategy::Index || params.durable_index_built() {
        return Ok(());
    }
    Err(RequestError::new(
        "strategy",
        "index",
        "this build makes no durable index for it to ask (no arroy trees: --n-trees / index.nTrees 0, the default \
         when absent); build with --n-trees >= 1 or --index hannoy, or choose signscan or exact",
    )
    .into())
}

/// Fails early (before any import work) for a backend that cannot index `metric`.
pub fn check_metric(params: &IndexParams, metric: crate::types::Metric) -> Result<()> {
    match params.backend {
        Backend::Arroy => Ok(()),
        Backend::Hannoy => hannoy::check_metric(metric),
    }
}

/// Builds every partition's index and coarse lists of a staged collection into `wtxn` (all
/// cores), arroy within `memory` bytes when given.
pub fn build(
    wtxn: &mut RwTxn,
    collection: &Collection,
    params: &IndexParams,
    seed: u64,
    memory: Option<usize>,
) -> Result<()> {
    let db = collection.ann_database();
    match params.backend {
        Backend::Arroy => arroy::build(wtxn, db, collection, params.arroy_trees_built(), seed, memory)?,
        Backend::Hannoy => {
            let ef = params.ef_construction.unwrap_or(hannoy::DEFAULT_EF_CONSTRUCTION);
            hannoy::build(wtxn, db, collection, ef, seed)?
        }
    }
    let coarse = collection.coarse_database().expect("a staged collection has the coarse database");
    coarse::build(wtxn, coarse, collection, params.lists, seed)
}
