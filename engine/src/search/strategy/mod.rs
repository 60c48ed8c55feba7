//! Ways to answer one partition's share of a query, behind one small trait: the exact scan
//! (the reference for recall), the sign-code scan with exact re-ranking (built in memory when
//! a collection is preloaded) and the collection's durable index (arroy or hannoy, see
//! [`crate::index`]), each re-ranked exactly.

pub mod durable;
pub mod exact;
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

/// An item and its ranking score (see [`crate::distance::Ranking::kernel`]).
pub type Scored = (u32, f32);

/// Answers one partition's share of a query. Results hold exact scores, ascending, at most k.
pub trait PartitionSearch: Send + Sync {
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
    let mut top = super::topk::TopK::new(k);
    for item in candidates {
        top.push(item, kernel(query, collection.vector(item)));
    }
    top.into_sorted()
}
