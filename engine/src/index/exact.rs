//! Exact brute-force search: every member scored with the float32 kernel.

use super::{AnnIndex, PartitionQuery, Scored, rerank};
use crate::collection::Collection;
use crate::error::Result;

pub struct ExactScan;

impl AnnIndex for ExactScan {
    fn search(&self, collection: &Collection, q: &PartitionQuery<'_>) -> Result<Vec<Scored>> {
        Ok(rerank(collection, q.vector, q.members.iter(), q.k))
    }
}
