//! The console: a page on the `--http-listen` port at `/`, its assets embedded in the binary
//! (nothing is fetched from a network at run time), and the JSON calls it makes under `/api/`.
//!
//! What it shows is read from the process itself: its collections (count, dimensions,
//! distance, partitions, tags, the calibrated setting and its measured recall, size on disk
//! and in memory), the standalone role's aliases with their history, the writer's progress,
//! and the last minutes of search latency and QPS ([`crate::recent`]). What it does goes
//! through the same engine calls as gRPC: a search under the Search token rule, a verification
//! under the Admin token, and a flip (standalone only) that runs the gates first and moves
//! the alias only when they all pass ([`Catalog::flip`]).
//!
//! Cross-site requests: every call that acts is a POST with a JSON body, which a browser sends
//! across origins only after a CORS preflight this server never answers, and a request whose
//! `Origin` is not this host is refused, so a page elsewhere cannot make a local console act.

mod view;

use super::ServingProcess;
use super::auth::Auth;
use super::ingest::IngestService;
use crate::cancel::Cancel;
use crate::catalog::Catalog;
use crate::search::{SearchRequest, search_cancellable};
use crate::verify::{VerifyOptions, verify};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Instant;
use tonic::Code;

const INDEX: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("console.js");
const STYLE: &str = include_str!("console.css");
/// Only the page's own files: no inline script, no other origin, no framing.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; \
                      frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// What the console may do in this process, and with which token.
#[derive(Clone)]
pub struct Console {
    /// Searches: the gRPC Search rule (the token, unless searches are open).
    pub search: Auth,
    /// Verifications and flips: the Admin token.
    pub admin: Auth,
    /// The standalone role keeps aliases; the writer's and replica's consoles are read-only.
    pub flips: bool,
    /// The writer's import and build, shown while it works.
    pub ingest: Option<IngestService>,
}

impl Console {
    /// The console of a process served with `config`, flipping aliases when `flips`.
    pub fn new(config: &super::ServeConfig, flips: bool, ingest: Option<IngestService>) -> Console {
        Console { search: config.search_auth(), admin: config.admin_auth(), flips, ingest }
    }
}

#[derive(Clone)]
struct Served {
    process: Arc<ServingProcess>,
    console: Console,
}

/// The console's routes, to merge into the HTTP router.
pub fn router(process: Arc<ServingProcess>, console: Console) -> axum::Router {
    axum::Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX) }))
        .route("/console.js", get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }))
        .route("/console.css", get(|| async { asset("text/css; charset=utf-8", STYLE) }))
        .route("/api/overview", get(overview))
        .route("/api/latency", get(latency))
        .route("/api/search", post(search))
        .route("/api/verify", post(verify_collection))
        .route("/api/flip", post(flip))
        .with_state(Served { process, console })
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// An error the page shows as it is: the engine's own message, with the HTTP status of its
/// gRPC code.
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<tonic::Status> for Refusal {
    fn from(status: tonic::Status) -> Refusal {
        let code = match status.code() {
            Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::FailedPrecondition | Code::AlreadyExists => StatusCode::CONFLICT,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Refusal(code, status.message().to_string())
    }
}

impl From<crate::Error> for Refusal {
    fn from(e: crate::Error) -> Refusal {
        super::status(e).into()
    }
}

/// A call that acts: from this page (or no browser at all), with the token `auth` wants.
fn admitted(headers: &HeaderMap, auth: &Auth) -> Result<(), Refusal> {
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default();
        let from = origin.to_str().unwrap_or_default();
        let same = from.split_once("://").is_some_and(|(_, authority)| !host.is_empty() && authority == host);
        if !same {
            return Err(Refusal(
                StatusCode::FORBIDDEN,
                "a request from another origin: the console acts only for its own page".into(),
            ));
        }
    }
    let given = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()).unwrap_or_default();
    auth.check(given).map_err(Refusal::from)
}

async fn overview(State(served): State<Served>) -> Result<Json<view::Overview>, Refusal> {
    let ingest = match &served.console.ingest {
        Some(ingest) => Some(view::writer(ingest).await?),
        None => None,
    };
    let Served { process, console } = served;
    let overview = super::blocking(move || view::overview(&process, &console).map_err(super::status)).await?;
    Ok(Json(view::Overview { writer: ingest, ..overview }))
}

#[derive(Deserialize)]
struct Span {
    seconds: Option<u64>,
    step: Option<u64>,
}

async fn latency(
    State(served): State<Served>,
    axum::extract::Query(span): axum::extract::Query<Span>,
) -> Json<serde_json::Value> {
    let step = span.step.unwrap_or(5).clamp(1, 60);
    let seconds = span.seconds.unwrap_or(300).clamp(step, 300);
    let points = served.process.metrics.recent_search.points(seconds, step);
    Json(serde_json::json!({ "step_seconds": step, "points": points }))
}

/// A search from the console: a pasted vector, or the vector of a stored item.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsoleSearch {
    collection: String,
    #[serde(default)]
    vector: Option<Vec<f32>>,
    /// The external id of a stored item whose vector is the query.
    #[serde(default)]
    item: Option<u64>,
    k: usize,
    #[serde(default)]
    partitions: Vec<String>,
    #[serde(default)]
    tags: Vec<String>,
}

async fn search(
    State(served): State<Served>,
    headers: HeaderMap,
    Json(asked): Json<ConsoleSearch>,
) -> Result<Json<serde_json::Value>, Refusal> {
    admitted(&headers, &served.console.search)?;
    let collection = served.process.collection(&asked.collection)?;
    let vector = match (asked.vector, asked.item) {
        (Some(vector), None) => vector,
        (None, Some(item)) => {
            let found = collection.item_of(item).map_err(Refusal::from)?;
            let Some(found) = found else {
                return Err(Refusal(
                    StatusCode::NOT_FOUND,
                    format!("field `item` = {item}: no such item in collection {:?}", collection.name()),
                ));
            };
            collection.vector(found).to_vec()
        }
        _ => {
            return Err(Refusal(StatusCode::BAD_REQUEST, "give either `vector` or `item`, not both or neither".into()));
        }
    };
    let request = SearchRequest {
        vector,
        k: asked.k,
        partitions: asked.partitions,
        tags: asked.tags,
        strategy: None,
        quality: None,
        probes: None,
    };
    let started = Instant::now();
    let answered = collection.clone();
    let hits = served
        .process
        .search_work(move || search_cancellable(&answered, &request, Cancel::never()).map_err(super::status))
        .await?;
    let took_ms = started.elapsed().as_secs_f64() * 1e3;
    let hits: Vec<_> = hits.iter().map(|h| serde_json::json!({ "id": h.id, "distance": h.distance })).collect();
    Ok(Json(serde_json::json!({ "collection": collection.name(), "hits": hits, "took_ms": took_ms })))
}

/// The gates a verification or a flip measures; absent fields take the engine's defaults.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Gates {
    #[serde(default)]
    expected_count: Option<u64>,
    #[serde(default)]
    min_recall: Option<f64>,
    #[serde(default)]
    max_p99_ms: Option<f64>,
}

impl Gates {
    fn options(self) -> Result<VerifyOptions, Refusal> {
        let defaults = VerifyOptions::default();
        let min_recall = self.min_recall.unwrap_or(defaults.min_recall);
        if !(0.0..=1.0).contains(&min_recall) {
            return Err(Refusal(
                StatusCode::BAD_REQUEST,
                format!("field `min_recall` = {min_recall}: a recall is between 0 and 1"),
            ));
        }
        if let Some(p99) = self.max_p99_ms.filter(|p| !p.is_finite() || *p <= 0.0) {
            return Err(Refusal(
                StatusCode::BAD_REQUEST,
                format!("field `max_p99_ms` = {p99}: a positive number of ms"),
            ));
        }
        Ok(VerifyOptions { expected_count: self.expected_count, min_recall, max_p99_ms: self.max_p99_ms, ..defaults })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsoleVerify {
    collection: String,
    #[serde(default)]
    gates: Gates,
}

async fn verify_collection(
    State(served): State<Served>,
    headers: HeaderMap,
    Json(asked): Json<ConsoleVerify>,
) -> Result<Json<crate::types::VerifyReport>, Refusal> {
    admitted(&headers, &served.console.admin)?;
    let collection = served.process.collection(&asked.collection)?;
    let options = asked.gates.options()?;
    let _cancel = options.cancel.on_drop();
    let report = served.process.admin_work(move || verify(&collection, &options).map_err(super::status)).await?;
    Ok(Json(report))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsoleFlip {
    alias: String,
    collection: String,
    #[serde(default)]
    gates: Gates,
}

/// Verifies the collection, then flips the alias to it only if every gate passed; a refusal
/// answers 409 with the reason and the report, and the alias stays where it was.
async fn flip(
    State(served): State<Served>,
    headers: HeaderMap,
    Json(asked): Json<ConsoleFlip>,
) -> Result<Response, Refusal> {
    admitted(&headers, &served.console.admin)?;
    if !served.console.flips {
        return Err(Refusal(
            StatusCode::FORBIDDEN,
            "this role serves one collection: its aliases are the operator's (kubectl get collectionaliases)".into(),
        ));
    }
    crate::collection::builder::check_name(&asked.alias)?;
    // A collection by its own name: never through an alias (flipping an alias to whatever
    // another alias serves now would follow it by accident).
    let catalog: Arc<Catalog> = served.process.catalog.clone();
    let collection = catalog.collection(&asked.collection)?;
    let options = asked.gates.options()?;
    let _cancel = options.cancel.on_drop();
    let alias = asked.alias;
    let (report, flipped) = served
        .process
        .admin_work(move || {
            let report = verify(&collection, &options).map_err(super::status)?;
            let flipped = catalog.flip(&alias, collection, &report);
            Ok((report, flipped))
        })
        .await?;
    Ok(match flipped {
        Ok(record) => Json(serde_json::json!({ "flipped": record, "report": report })).into_response(),
        Err(e @ crate::Error::Alias { .. }) => {
            (StatusCode::CONFLICT, Json(serde_json::json!({ "refused": e.to_string(), "report": report })))
                .into_response()
        }
        Err(e) => Refusal::from(e).into_response(),
    })
}
