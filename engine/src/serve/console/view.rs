//! What the console shows, as plain data read from the process: the JSON of `/api/overview`.

use super::Console;
use crate::error::{Result, redact};
use crate::search::searcher::Searcher;
use crate::serve::ServingProcess;
use crate::serve::ingest::IngestService;
use crate::serve::proto::{self, ingest_server::Ingest};
use serde::Serialize;

/// Tags listed per collection; the rest are counted.
const TAGS_SHOWN: usize = 50;

#[derive(Debug, Serialize)]
pub struct Overview {
    /// `standalone`, `writer` or `replica`.
    pub role: &'static str,
    pub ready: bool,
    /// Whether this console can flip aliases (standalone).
    pub flips: bool,
    /// Whether searches, and verifications and flips, need the bearer token.
    pub search_token: bool,
    pub admin_token: bool,
    pub collections: Vec<CollectionView>,
    pub aliases: Vec<AliasView>,
    /// The writer's import and build.
    pub writer: Option<WriterView>,
}

#[derive(Debug, Serialize)]
pub struct CollectionView {
    pub name: String,
    /// Why it could not be opened; the other fields are then empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub count: u64,
    pub dimensions: usize,
    pub distance: String,
    pub partitions: Vec<Named>,
    pub tags: Vec<Named>,
    pub tags_not_shown: usize,
    /// The default search setting, e.g. `signscan quality=200 probes=16`.
    pub setting: String,
    pub calibration: Option<CalibrationView>,
    pub disk_bytes: u64,
    /// The sign codes and coarse lists held in memory (once preloaded).
    pub memory_bytes: Option<u64>,
    pub created_at: u64,
    /// Where the vectors came from, without credentials.
    pub source: String,
}

#[derive(Debug, Serialize)]
pub struct Named {
    pub name: String,
    pub count: u64,
}

#[derive(Debug, Serialize)]
pub struct CalibrationView {
    pub target_recall: f64,
    pub recall: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub queries: usize,
}

#[derive(Debug, Serialize)]
pub struct AliasView {
    pub name: String,
    pub collection: String,
    pub previous: Option<String>,
    pub flipped_at: u64,
    pub history: Vec<crate::catalog::Flip>,
}

#[derive(Debug, Serialize)]
pub struct WriterView {
    pub collection: String,
    pub phase: String,
    pub rows: u64,
    pub message: String,
    /// The sealed snapshot is in the snapshot store.
    pub stored: bool,
}

/// Everything but the writer's progress (asked of its Ingest service, see [`writer`]).
pub fn overview(process: &ServingProcess, console: &Console) -> Result<Overview> {
    let catalog = &process.catalog;
    let names = match &process.default_collection {
        // A writer before its seal, or a replica before its fetch, has nothing to show yet.
        Some(own) => catalog.collection_names()?.into_iter().filter(|n| n == own).collect(),
        None => catalog.collection_names()?,
    };
    let collections = names
        .into_iter()
        .map(|name| match catalog.glance(&name) {
            Ok(c) => collection(&c),
            Err(e) => CollectionView { error: Some(e.to_string()), ..empty(name) },
        })
        .collect();
    let aliases = catalog
        .aliases()?
        .into_iter()
        .map(|(name, r)| AliasView {
            name,
            collection: r.collection,
            previous: r.previous,
            flipped_at: r.flipped_at,
            history: r.history,
        })
        .collect();
    let role = match (&console.ingest, &process.default_collection) {
        (Some(_), _) => "writer",
        (None, Some(_)) => "replica",
        (None, None) => "standalone",
    };
    Ok(Overview {
        role,
        ready: process.is_ready(),
        flips: console.flips,
        search_token: console.search.is_required(),
        admin_token: console.admin.is_required(),
        collections,
        aliases,
        writer: None,
    })
}

fn empty(name: String) -> CollectionView {
    CollectionView {
        name,
        error: None,
        count: 0,
        dimensions: 0,
        distance: String::new(),
        partitions: Vec::new(),
        tags: Vec::new(),
        tags_not_shown: 0,
        setting: String::new(),
        calibration: None,
        disk_bytes: 0,
        memory_bytes: None,
        created_at: 0,
        source: String::new(),
    }
}

fn collection(c: &Searcher) -> CollectionView {
    let m = c.manifest();
    let partitions = m
        .partitions
        .iter()
        .zip(c.partition_members())
        .map(|(name, members)| Named { name: name.clone(), count: members.len() })
        .collect();
    let mut tags: Vec<Named> = c.tag_counts().map(|(name, count)| Named { name: name.to_string(), count }).collect();
    tags.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.name.cmp(&b.name)));
    let tags_not_shown = tags.len().saturating_sub(TAGS_SHOWN);
    tags.truncate(TAGS_SHOWN);
    CollectionView {
        name: m.name.clone(),
        error: None,
        count: m.count,
        dimensions: m.dimensions,
        distance: m.metric.to_string(),
        partitions,
        tags,
        tags_not_shown,
        setting: m.search.to_string(),
        calibration: m.calibration.as_ref().map(|k| CalibrationView {
            target_recall: k.target_recall,
            recall: k.recall,
            p50_ms: k.p50_ms,
            p99_ms: k.p99_ms,
            queries: k.queries,
        }),
        disk_bytes: c.disk_bytes(),
        memory_bytes: c.is_preloaded().then(|| c.signscan().memory_bytes() as u64),
        created_at: m.created_at,
        source: redact(&m.source.uri),
    }
}

/// The writer's progress, as its Ingest service reports it.
pub async fn writer(ingest: &IngestService) -> std::result::Result<WriterView, tonic::Status> {
    let progress = ingest.progress(tonic::Request::new(proto::ProgressRequest::default())).await?.into_inner();
    Ok(WriterView {
        collection: ingest.collection().to_string(),
        phase: progress.phase().as_str_name().trim_start_matches("WRITER_PHASE_").to_lowercase(),
        rows: progress.rows,
        message: progress.message,
        stored: progress.stored.is_some(),
    })
}
