//! Exact brute-force search: every member scored with the float32 kernel.

use super::{PartitionQuery, PartitionSearch, Scored, rerank};
use crate::collection::Collection;
use crate::distance::Ranking;
use crate::error::Result;
use crate::search::topk::TopK;

pub struct ExactScan;

impl PartitionSearch for ExactScan {
    fn search(&self, collection: &Collection, q: &PartitionQuery<'_>) -> Result<Vec<Scored>> {
        if q.members.len() < collection.len() {
            return rerank(collection, q, q.members.iter());
        }
        // The whole collection: stream the chunks in order, the access pattern memory likes.
        let kernel = collection.manifest().metric.kernel();
        let dims = collection.manifest().dimensions;
        let mut top = TopK::new(q.k);
        for (first, rows) in collection.vector_chunks() {
            q.cancel.check("search")?;
            for (i, row) in rows.chunks_exact(dims).enumerate() {
                top.push(first + i as u32, kernel(q.vector, row));
            }
        }
        Ok(top.into_sorted())
    }
}
