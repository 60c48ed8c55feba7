//! The Search service: validation in the engine, answers on the blocking pool.

use super::proto::{self, search_server};
use super::{Node, blocking, status};
use crate::search::{SearchRequest, search};
use rayon::prelude::*;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct SearchService {
    node: Arc<Node>,
}

impl SearchService {
    pub fn new(node: Arc<Node>) -> Self {
        SearchService { node }
    }
}

fn answer(node: &Node, r: proto::SearchRequest) -> Result<proto::SearchResponse, Status> {
    let collection = node.collection(&r.collection)?;
    let strategy = match r.strategy.as_str() {
        "" => None,
        s => Some(s.parse().map_err(|e: String| {
            Status::invalid_argument(format!("invalid request: field `strategy` = {s:?}: {e}"))
        })?),
    };
    let request = SearchRequest {
        vector: r.vector,
        k: r.k as usize,
        partitions: r.partitions,
        tags: r.tags,
        strategy,
        quality: (r.quality > 0).then_some(r.quality as usize),
    };
    let hits = search(&collection, &request).map_err(status)?;
    Ok(proto::SearchResponse {
        hits: hits.into_iter().map(|h| proto::Hit { id: h.id, distance: h.distance }).collect(),
        collection: collection.name().to_string(),
    })
}

#[tonic::async_trait]
impl search_server::Search for SearchService {
    async fn search(&self, request: Request<proto::SearchRequest>) -> Result<Response<proto::SearchResponse>, Status> {
        let r = request.into_inner();
        if r.strategy == "exact" {
            // A full scan can take many milliseconds: keep it off the async workers.
            let node = self.node.clone();
            return blocking(move || answer(&node, r)).await.map(Response::new);
        }
        // An indexed query takes well under a millisecond: answering it on this worker saves
        // two thread hand-offs (measured: +40-60 % served throughput, see BENCHMARKS.md).
        answer(&self.node, r).map(Response::new)
    }

    async fn batch_search(
        &self,
        request: Request<proto::BatchSearchRequest>,
    ) -> Result<Response<proto::BatchSearchResponse>, Status> {
        let node = self.node.clone();
        let queries = request.into_inner().queries;
        blocking(move || {
            let results = queries.into_par_iter().map(|q| answer(&node, q)).collect::<Result<_, _>>()?;
            Ok(proto::BatchSearchResponse { results })
        })
        .await
        .map(Response::new)
    }
}
