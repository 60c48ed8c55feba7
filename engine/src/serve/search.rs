//! The Search service: validation in the engine, answers on the blocking pool.

use super::proto::{self, search_server};
use super::{ServingProcess, status, wire};
use crate::cancel::Cancel;
use crate::search::calibrate::max_lists;
use crate::search::searcher::Searcher;
use crate::search::{SearchRequest, search_cancellable};
use crate::types::Strategy;
use rayon::prelude::*;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct SearchService {
    process: Arc<ServingProcess>,
}

impl SearchService {
    pub fn new(process: Arc<ServingProcess>) -> Self {
        SearchService { process }
    }
}

fn answer(collection: &Searcher, request: &SearchRequest, cancel: &Cancel) -> Result<proto::SearchResponse, Status> {
    let hits = search_cancellable(collection, request, cancel).map_err(status)?;
    Ok(wire::search_response(collection.name(), hits))
}

/// A query that scans up to this many codes answers in well under a millisecond (the sign scan
/// of 250k 384-d codes takes ~0.8 ms on one core); one that scans more goes to the search slots.
const INLINE_MAX_ITEMS: u64 = 250_000;
/// ... and so does a query asking for more candidates than this.
const INLINE_MAX_QUALITY: usize = 4_096;

/// Whether a query is cheap enough to answer on the async worker: the strategy it resolves to
/// (asked for, or the collection's calibrated default) is not the exact scan, it searches one
/// partition (no rayon fan-out starts from a tokio worker) without a tag filter, with a modest
/// quality, and scans at most `max_items` codes: the probed coarse lists' share of the
/// collection for the sign-code scan (at 1M items, 15 of 1000 lists are 15k codes), else the
/// whole collection.
fn inline(collection: &Searcher, request: &SearchRequest, max_items: u64) -> bool {
    let manifest = collection.manifest();
    let strategy = request.strategy.unwrap_or(manifest.search.strategy);
    let partitions = if request.partitions.is_empty() { manifest.partitions.len() } else { request.partitions.len() };
    let scanned = match strategy {
        Strategy::SignScan => {
            let probes = request.probes.unwrap_or(manifest.search.probes);
            let lists = max_lists(collection) as u64;
            match probes as u64 {
                p if p > 0 && p < lists => collection.len().div_ceil(lists) * p,
                _ => collection.len(),
            }
        }
        Strategy::Index | Strategy::Exact => collection.len(),
    };
    // Codes not built yet are built by this query: seconds of work, not for the async worker.
    let built = strategy != Strategy::SignScan || collection.is_preloaded();
    strategy != Strategy::Exact
        && built
        && partitions == 1
        && request.tags.is_empty()
        && request.quality.unwrap_or(0) <= INLINE_MAX_QUALITY
        && scanned <= max_items
}

#[tonic::async_trait]
impl search_server::Search for SearchService {
    // Debug level: a span per query costs about a microsecond, so the hot path has one only when asked for.
    #[tracing::instrument(level = "debug", skip_all, fields(collection = %super::span_field(&request.get_ref().collection).escape_debug()))]
    async fn search(&self, request: Request<proto::SearchRequest>) -> Result<Response<proto::SearchResponse>, Status> {
        let r = request.into_inner();
        // Resolved once: the same collection decides where the query runs and answers it.
        let collection = self.process.collection(&r.collection)?;
        let request = wire::search_request(r)?;
        if inline(&collection, &request, INLINE_MAX_ITEMS) {
            // An indexed query of one partition takes well under a millisecond: answering it
            // on this worker saves two thread hand-offs (measured: +40-60 % served
            // throughput, see BENCHMARKS.md).
            return answer(&collection, &request, Cancel::never()).map(Response::new);
        }
        // A full scan, or a fan-out over partitions (rayon), runs on the blocking pool so the
        // async workers keep answering health and other calls. A call that is gone (cancelled,
        // or past its deadline) stops the scan.
        let cancel = Cancel::default();
        let _cancel = cancel.on_drop();
        self.process.search_work(move || answer(&collection, &request, &cancel)).await.map(Response::new)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(queries = request.get_ref().queries.len()))]
    async fn batch_search(
        &self,
        request: Request<proto::BatchSearchRequest>,
    ) -> Result<Response<proto::BatchSearchResponse>, Status> {
        let process = self.process.clone();
        let queries = request.into_inner().queries;
        crate::limits::check_batch(queries.iter().map(|q| q.k as usize)).map_err(|e| status(e.into()))?;
        let cancel = Cancel::default();
        let _cancel = cancel.on_drop();
        self.process
            .search_work(move || {
                let results = queries
                    .into_par_iter()
                    .map(|q| {
                        // A batch whose call is gone stops at its next query, whatever the strategy.
                        cancel.check("search").map_err(status)?;
                        answer(process.collection(&q.collection)?.as_ref(), &wire::search_request(q)?, &cancel)
                    })
                    .collect::<Result<_, _>>()?;
                Ok(proto::BatchSearchResponse { results })
            })
            .await
            .map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::build_small;

    /// A query of a collection with coarse lists counts the codes of the lists it probes, not
    /// the whole collection; every list (probes 0), the exact scan, a filter or codes still to
    /// build is not inline.
    #[test]
    fn a_query_is_answered_inline_when_the_codes_it_scans_are_few() {
        let dir = tempfile::tempdir().unwrap();
        build_small(dir.path(), "c", 2000, 16, |o| o.index.lists = Some(20));
        let collection = Searcher::open(&dir.path().join("c")).unwrap();
        let query = |strategy: Strategy, probes: usize| SearchRequest {
            strategy: Some(strategy),
            probes: Some(probes),
            ..SearchRequest::new(vec![0.5; 16], 10)
        };
        assert!(!inline(&collection, &query(Strategy::SignScan, 2), 500), "the codes are not built yet");
        collection.preload().unwrap();
        // 2 of 20 lists: about 200 codes.
        assert!(inline(&collection, &query(Strategy::SignScan, 2), 500));
        assert!(!inline(&collection, &query(Strategy::SignScan, 0), 500), "every list: 2000 codes");
        assert!(!inline(&collection, &query(Strategy::SignScan, 2), 100));
        assert!(!inline(&collection, &query(Strategy::Exact, 2), 5000));
        assert!(!inline(&collection, &SearchRequest { tags: vec!["a".into()], ..query(Strategy::SignScan, 2) }, 500));
    }
}
