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
use crate::error::Result;
use roaring::RoaringBitmap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The durable ANN index a collection is built with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// arroy: random-projection trees over LMDB.
    #[default]
    Arroy,
    /// hannoy: an HNSW graph over LMDB (M = 16 links per node, 32 on layer 0); no dot product.
    Hannoy,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Arroy => "arroy",
            Backend::Hannoy => "hannoy",
        }
    }
}

/// The durable index built at seal time, with its build parameters. Shared by the engine's
/// manifest and the operator's `VectorCollection` spec.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IndexParams {
    #[serde(default)]
    pub backend: Backend,
    /// arroy trees per partition; absent lets arroy choose from the data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub n_trees: Option<usize>,
    /// hannoy build quality (candidate list size while linking); default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 8, max = 2000))]
    pub ef_construction: Option<usize>,
}

impl IndexParams {
    pub fn arroy(n_trees: Option<usize>) -> Self {
        IndexParams { backend: Backend::Arroy, n_trees, ef_construction: None }
    }

    pub fn hannoy(ef_construction: usize) -> Self {
        IndexParams { backend: Backend::Hannoy, n_trees: None, ef_construction: Some(ef_construction) }
    }
}

/// Which code path answers a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Brute force over float32 vectors; the reference for recall.
    Exact,
    /// The collection's durable ANN index (arroy or hannoy).
    Index,
    /// 1-bit sign codes scanned from memory, then the best candidates re-ranked exactly.
    #[serde(rename = "signscan")]
    SignScan,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Exact => "exact",
            Strategy::Index => "index",
            Strategy::SignScan => "signscan",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "exact" => Ok(Strategy::Exact),
            "index" | "arroy" | "hannoy" => Ok(Strategy::Index),
            "signscan" => Ok(Strategy::SignScan),
            other => Err(format!("unknown strategy {other:?}: expected exact, index or signscan")),
        }
    }
}

/// The search settings a collection answers with when a request does not say otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SearchDefaults {
    pub strategy: Strategy,
    /// The quality knob: re-ranked candidates for `signscan`; `search_k` for arroy (candidates
    /// re-ranked for its binary-quantized distance); `ef` for hannoy; ignored by `exact`.
    pub quality: usize,
}

impl Default for SearchDefaults {
    fn default() -> Self {
        SearchDefaults { strategy: Strategy::SignScan, quality: 200 }
    }
}

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

/// An item and its ranking score (see [`crate::distance::Metric::kernel`]).
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
