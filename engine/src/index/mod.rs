//! Ways to answer a query over one partition, behind one small trait.
//!
//! A collection has one durable ANN index in its LMDB environment (arroy by default, or
//! hannoy), built once after import. Two more strategies need no stored index: the exact scan
//! (verification, tests) and the sign-code scan with exact re-ranking, which is built in
//! memory from the stored vectors when a collection is preloaded.

pub mod arroy;
pub mod exact;
pub mod hannoy;
pub mod signscan;

use crate::collection::Collection;
use crate::distance::Ranking;
use crate::error::Result;
use roaring::RoaringBitmap;

/// One partition's share of a query.
pub struct PartitionQuery<'a> {
    pub partition: u16,
    /// Items to consider: the partition's members, already intersected with any tag filter.
    pub members: &'a RoaringBitmap,
    /// Whether `members` was narrowed by a filter (the index must then be told).
    pub filtered: bool,
    /// The prepared query (normalised for cosine).
    pub vector: &'a [f32],
    pub k: usize,
    pub quality: usize,
}

/// The collection's ANN database before a backend gives it its key and node types.
pub type AnyDatabase = heed::Database<'static, heed::Unspecified, heed::Unspecified>;

/// An item and its ranking score (see [`crate::distance::Ranking::kernel`]).
pub type Scored = (u32, f32);

/// Answers one partition's share of a query. Results hold exact scores, ascending, at most k.
pub trait AnnIndex: Send + Sync {
    fn search(&self, collection: &Collection, query: &PartitionQuery<'_>) -> Result<Vec<Scored>>;
}

/// Re-scores candidate items exactly and keeps the best `k`.
pub fn rerank(
    collection: &Collection,
    query: &[f32],
    candidates: impl IntoIterator<Item = u32>,
    k: usize,
) -> Vec<Scored> {
    let kernel = collection.manifest().metric.kernel();
    let mut top = crate::search::topk::TopK::new(k);
    for item in candidates {
        top.push(item, kernel(query, collection.vector(item)));
    }
    top.into_sorted()
}
