//! Top-k search over a collection: validate the request, fan out over the requested
//! partitions concurrently, merge by distance, map item ids back to external ids.

pub mod calibrate;
pub mod recall;
pub mod searcher;
pub mod strategy;
pub mod topk;

use crate::cancel::Cancel;
use crate::collection::Collection;
use crate::collection::validate::prepare_vector;
use crate::distance::Ranking;
use crate::error::{RequestError, Result};
use crate::types::Strategy;
use rayon::prelude::*;
use roaring::RoaringBitmap;
use searcher::Searcher;
use serde::{Deserialize, Serialize};
use strategy::PartitionQuery;

pub use crate::limits::MAX_K;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SearchRequest {
    pub vector: Vec<f32>,
    pub k: usize,
    /// Partitions to search; empty = all.
    #[serde(default)]
    pub partitions: Vec<String>,
    /// Only items carrying every one of these tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Overrides the collection's default strategy.
    #[serde(default)]
    pub strategy: Option<Strategy>,
    /// Overrides the collection's default quality knob.
    #[serde(default)]
    pub quality: Option<usize>,
    /// Overrides the collection's default number of coarse lists probed (0: all).
    #[serde(default)]
    pub probes: Option<usize>,
}

impl SearchRequest {
    pub fn new(vector: Vec<f32>, k: usize) -> Self {
        SearchRequest { vector, k, ..Default::default() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    pub id: u64,
    pub distance: f32,
}

/// Answers one query.
pub fn search(collection: &Searcher, request: &SearchRequest) -> Result<Vec<Hit>> {
    search_cancellable(collection, request, Cancel::never())
}

/// Answers one query, or stops with [`crate::Error::Cancelled`] soon after `cancel` fires.
pub fn search_cancellable(collection: &Searcher, request: &SearchRequest, cancel: &Cancel) -> Result<Vec<Hit>> {
    let manifest = collection.manifest();
    crate::limits::check_k(request.k)?;
    let mut vector = request.vector.clone();
    prepare_vector(&mut vector, manifest.dimensions, manifest.metric)
        .map_err(|(field, value, reason)| RequestError::new(field, value, reason))?;

    let partitions: Vec<u16> = if request.partitions.is_empty() {
        (0..manifest.partitions.len() as u16).collect()
    } else {
        // A partition named twice is searched once (its hits would otherwise come twice).
        crate::limits::distinct_names("partitions", &request.partitions)?
            .iter()
            .map(|name| {
                manifest.partition_index(name).ok_or_else(|| {
                    RequestError::new(
                        "partitions",
                        format!("{name:?}"),
                        format!("unknown partition; this collection has {:?}", manifest.partitions),
                    )
                })
            })
            .collect::<Result<_, _>>()?
    };
    let filter = tag_filter(collection, &crate::limits::distinct_names("tags", &request.tags)?)?;
    let strategy = request.strategy.unwrap_or(manifest.search.strategy);
    if strategy == Strategy::Index && !manifest.index.durable_index_stored() {
        return Err(RequestError::new(
            "strategy",
            "index",
            "this collection has no durable index to ask: it was built with no arroy trees (--n-trees / \
             index.nTrees 0, the default when absent); build it with index.nTrees >= 1, or index.backend hannoy, \
             to use this strategy",
        )
        .into());
    }
    // The calibrated quality belongs to the calibrated strategy; another strategy asked for
    // without a quality gets its own default (0: arroy's search_k, ef = k, rerank = k).
    let calibrated = strategy == manifest.search.strategy;
    let quality = request.quality.unwrap_or(if calibrated { manifest.search.quality } else { 0 });
    let probes = request.probes.unwrap_or(if calibrated { manifest.search.probes } else { 0 });
    let index = collection.strategy(strategy);

    let one = |partition: u16| -> Result<Vec<(u32, f32)>> {
        let all = &collection.partition_members()[partition as usize];
        let narrowed;
        let members = match &filter {
            Some(f) => {
                narrowed = all & f;
                &narrowed
            }
            None => all,
        };
        if members.is_empty() {
            return Ok(Vec::new());
        }
        let quality = crate::limits::clamp_quality(quality, request.k, members.len());
        let filtered = filter.is_some();
        let query =
            PartitionQuery { partition, members, filtered, vector: &vector, k: request.k, quality, probes, cancel };
        index.search(collection, &query)
    };
    let merged = if partitions.len() == 1 {
        one(partitions[0])?
    } else {
        let lists: Vec<Vec<(u32, f32)>> = partitions.par_iter().map(|&p| one(p)).collect::<Result<_>>()?;
        topk::merge(lists, request.k)
    };
    Ok(merged
        .into_iter()
        .map(|(item, score)| Hit { id: collection.external_id(item), distance: manifest.metric.report(score) })
        .collect())
}

/// Answers many queries using all cores.
pub fn search_batch(collection: &Searcher, requests: &[SearchRequest]) -> Result<Vec<Vec<Hit>>> {
    requests.par_iter().map(|r| search(collection, r)).collect()
}

/// The items carrying every tag, or `None` when no tag was asked for.
fn tag_filter(collection: &Collection, tags: &[String]) -> Result<Option<RoaringBitmap>> {
    let mut filter: Option<RoaringBitmap> = None;
    for tag in tags {
        let members = collection.tag(tag).ok_or_else(|| {
            RequestError::new("tags", format!("{tag:?}"), "unknown tag: no vector in this collection carries it")
        })?;
        filter = Some(match filter {
            Some(f) => f & members,
            None => members.clone(),
        });
    }
    Ok(filter)
}
