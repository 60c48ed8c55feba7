//! Wire types and engine types, converted in one place: every other module of `serve/` takes
//! and returns the engine's own types. Below `serve/` nothing knows the proto; above it, only
//! the callers of the client (the operator's jobs in `roles/`, the replica's fetch, `bench`)
//! build requests (`tests/engine/layers.rs` holds this).

use super::proto;
use crate::collection::manifest::Manifest;
use crate::import::{Location, Record};
use crate::publish::{Phase, Progress};
use crate::search::{Hit, SearchRequest};
use crate::types::VerifyReport;
use crate::verify::VerifyOptions;
use crate::warmup::WarmupReport;
use tonic::Status;

/// The engine's request for a wire request (its collection name aside).
pub fn search_request(r: proto::SearchRequest) -> Result<SearchRequest, Status> {
    let strategy = match r.strategy.as_str() {
        "" => None,
        s => Some(s.parse().map_err(|e: String| {
            Status::invalid_argument(format!("invalid request: field `strategy` = {s:?}: {e}"))
        })?),
    };
    Ok(SearchRequest {
        vector: r.vector,
        k: r.k as usize,
        partitions: r.partitions,
        tags: r.tags,
        strategy,
        quality: (r.quality > 0).then_some(r.quality as usize),
        probes: r.probes.map(|p| p as usize),
    })
}

pub fn search_response(collection: &str, hits: Vec<Hit>) -> proto::SearchResponse {
    proto::SearchResponse {
        hits: hits.into_iter().map(|h| proto::Hit { id: h.id, distance: h.distance }).collect(),
        collection: collection.to_string(),
    }
}

/// The wire records of a batch as import records (moved, not copied).
pub fn records(batch: proto::WriteBatch) -> Vec<Record> {
    batch
        .records
        .into_iter()
        .map(|r| Record {
            id: r.id,
            vector: r.vector,
            partition: (!r.partition.is_empty()).then_some(r.partition),
            tags: r.tags,
            at: Location::Row(0),
        })
        .collect()
}

pub fn progress(p: Progress) -> proto::ProgressResponse {
    let phase = match p.phase {
        Phase::Waiting => proto::WriterPhase::Waiting,
        Phase::Receiving => proto::WriterPhase::Receiving,
        Phase::Importing => proto::WriterPhase::Importing,
        Phase::Building => proto::WriterPhase::Building,
        Phase::Calibrating => proto::WriterPhase::Calibrating,
        Phase::Restoring => proto::WriterPhase::Restoring,
        Phase::Snapshotting => proto::WriterPhase::Snapshotting,
        Phase::Sealed => proto::WriterPhase::Sealed,
        Phase::Failed => proto::WriterPhase::Failed,
    };
    let stored = p.stored.map(|s| proto::StoredSnapshot { location: s.location, sha256: s.sha256, bytes: s.bytes });
    proto::ProgressResponse {
        phase: phase.into(),
        rows: p.rows,
        message: p.message,
        stored,
        snapshot_sha256: p.snapshot_sha256.unwrap_or_default(),
    }
}

pub fn status_response(m: &Manifest) -> proto::StatusResponse {
    proto::StatusResponse {
        collection: m.name.clone(),
        count: m.count,
        dimensions: m.dimensions as u32,
        distance: m.metric.to_string(),
        search_setting: m.search.to_string(),
        manifest_json: json(m),
    }
}

pub fn warmup_response(report: &WarmupReport) -> proto::WarmupResponse {
    proto::WarmupResponse {
        cold_first_query_ms: report.cold_first_query_ms,
        warm_p50_ms: report.warm_p50_ms,
        warm_p99_ms: report.warm_p99_ms,
        report_json: json(report),
    }
}

/// A wire verification request as options: zero fields take the engine's defaults.
pub fn verify_options(r: proto::VerifyRequest) -> VerifyOptions {
    let defaults = VerifyOptions::default();
    VerifyOptions {
        expected_count: r.expected_count,
        min_recall: if r.min_recall > 0.0 { r.min_recall } else { defaults.min_recall },
        max_p99_ms: r.max_p99_ms,
        k: if r.k > 0 { r.k as usize } else { defaults.k },
        sample: if r.sample > 0 { r.sample as usize } else { defaults.sample },
        queries: r.queries.into_iter().map(|q| q.values).collect(),
        ..defaults
    }
}

pub fn verify_response(report: &VerifyReport) -> proto::VerifyResponse {
    proto::VerifyResponse { passed: report.passed, report_json: json(report) }
}

fn json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).expect("reports serialize")
}
