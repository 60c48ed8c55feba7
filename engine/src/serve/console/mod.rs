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
//! Who may call (every `/api/` call, [`Console::admit`]):
//! - Cross-site requests: every call that acts is a POST with a JSON body, which a browser
//!   sends across origins only after a CORS preflight this server never answers, and a request
//!   whose `Origin` is not this host is refused, so a page elsewhere cannot make a local
//!   console act.
//! - DNS rebinding (a page whose own name now resolves to this address is same-origin): the
//!   `Host` must be `localhost`, an IP address or a `--console-host` name, never the page's.
//! - Other hosts: the HTTP port of an operator's pod is open to the cluster for probes and
//!   metrics, while its gRPC port is the NetworkPolicy's. So a call from another host is served
//!   only with the token; without one configured, only from this host, which is how
//!   `kubectl port-forward` connects (the container runtime dials `localhost` inside the pod's
//!   network namespace: containerd's `PortForward`, CRI-O's alike).
//! - With a token configured, reads need it too (the search rule): tag and partition names are
//!   the users' data, as a Search answer is.
//!
//! Console calls are bounded like gRPC ones: a few at once (more get 429 at once), the server's
//! deadline of the same kind of call, and the work stops when the call is gone.

mod view;

use super::ServingProcess;
use super::auth::Auth;
use super::ingest::IngestService;
use crate::cancel::Cancel;
use crate::catalog::Catalog;
use crate::search::{SearchRequest, search_cancellable};
use crate::verify::{VerifyOptions, verify};
use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
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
    /// Host names answered besides localhost and IP addresses (`--console-host`).
    hosts: Arc<[String]>,
    /// Console calls served at once.
    in_flight: Arc<Semaphore>,
}

/// Console calls served at once; a page makes one or two, so more is a script or a flood.
const IN_FLIGHT: usize = crate::limits::MAX_HEAVY_IN_FLIGHT;

impl Console {
    /// The console of a process served with `config`, flipping aliases when `flips`.
    pub fn new(config: &super::ServeConfig, flips: bool, ingest: Option<IngestService>) -> Console {
        Console {
            search: config.search_auth(),
            admin: config.admin_auth(),
            flips,
            ingest,
            hosts: config.console_hosts.iter().map(|h| h.trim().to_ascii_lowercase()).collect(),
            in_flight: Arc::new(Semaphore::new(IN_FLIGHT)),
        }
    }

    /// Whether a call may be served: addressed to this host by a name no page can rebind,
    /// from this console's page (or no browser at all), from this host or with the token, and
    /// with the token `auth` wants. See the module's notes.
    fn admit(&self, peer: IpAddr, headers: &HeaderMap, auth: &Auth) -> Result<(), Refusal> {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default();
        let name = host_name(host).to_ascii_lowercase();
        if !is_local_name(&name) && !self.hosts.contains(&name) {
            return Err(Refusal(
                StatusCode::FORBIDDEN,
                format!(
                    "request addressed to Host {:?}: the console answers only localhost, an IP address or a \
                     --console-host name (a page elsewhere could point its own name here)",
                    super::span_field(host)
                ),
            ));
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
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
        // A proxy in the pod (a service mesh's sidecar) connects from loopback for every
        // caller; the headers it adds say so. (Not every mesh adds one: with a mesh, configure
        // a token.)
        let proxied = headers.keys().any(|k| {
            let k = k.as_str();
            k == "forwarded" || k == "x-forwarded-for" || k.starts_with("x-envoy-") || k.starts_with("l5d-")
        });
        if proxied || !peer.to_canonical().is_loopback() {
            if !self.admin.is_required() {
                return Err(Refusal(
                    StatusCode::FORBIDDEN,
                    format!(
                        "a console call from {peer}: with no token configured the console serves this host only; \
                         reach it with kubectl port-forward (or ssh -L), or configure a token (--token-file)"
                    ),
                ));
            }
            self.admin.check(given).map_err(Refusal::from)?;
        }
        auth.check(given).map_err(Refusal::from)
    }

    /// A place among the console calls served at once.
    fn slot(&self) -> Result<OwnedSemaphorePermit, Refusal> {
        self.in_flight.clone().try_acquire_owned().map_err(|_| {
            Refusal(
                StatusCode::TOO_MANY_REQUESTS,
                format!("the console is serving {IN_FLIGHT} calls already: try again when one has finished"),
            )
        })
    }
}

/// The name of a `Host` header, without its port (`[::1]:9090` → `[::1]`).
fn host_name(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((name, port))
            if port.bytes().all(|b| b.is_ascii_digit()) && (!name.contains(':') || name.ends_with(']')) =>
        {
            name
        }
        _ => host,
    }
}

/// Names a DNS answer cannot move to another address: IP literals, and `localhost` with its
/// subdomains (which browsers resolve to loopback themselves, RFC 6761 section 6.3).
fn is_local_name(name: &str) -> bool {
    let bracketed = name.strip_prefix('[').and_then(|n| n.strip_suffix(']'));
    name.parse::<std::net::Ipv4Addr>().is_ok()
        || bracketed.is_some_and(|n| n.parse::<std::net::Ipv6Addr>().is_ok())
        || name == "localhost"
        || name.ends_with(".localhost")
}

/// Runs `work` under the server's deadline for it; past it, the call answers 504 and the work,
/// told by the dropped guard the caller holds, stops.
async fn within<T>(
    deadline: Duration,
    what: &str,
    work: impl Future<Output = Result<T, tonic::Status>>,
) -> Result<T, Refusal> {
    match tokio::time::timeout(deadline, work).await {
        Ok(done) => done.map_err(Refusal::from),
        Err(_) => Err(Refusal(
            StatusCode::GATEWAY_TIMEOUT,
            format!("the server's deadline of {} s for {what} passed", deadline.as_secs()),
        )),
    }
}

#[derive(Clone)]
struct Served {
    process: Arc<ServingProcess>,
    console: Console,
}

/// The console's routes, to merge into the HTTP router.
pub fn router(process: Arc<ServingProcess>, console: Console) -> axum::Router {
    let api = axum::Router::new()
        .route("/api/overview", get(overview))
        .route("/api/latency", get(latency))
        .route("/api/search", post(search))
        .route("/api/verify", post(verify_collection))
        .route("/api/flip", post(flip))
        .layer(axum::middleware::map_response(api_headers))
        .with_state(Served { process, console });
    axum::Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX) }))
        .route("/console.js", get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }))
        .route("/console.css", get(|| async { asset("text/css; charset=utf-8", STYLE) }))
        .merge(api)
}

/// Answers hold the users' data: never stored by a cache, never sniffed as another type; a 401
/// names its scheme (RFC 9110 section 11.6.1).
async fn api_headers(mut response: Response) -> Response {
    let status = response.status();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if status == StatusCode::UNAUTHORIZED {
        headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"quiver\""));
    }
    response
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
#[derive(Debug)]
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

async fn overview(
    State(served): State<Served>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Json<view::Overview>, Refusal> {
    served.console.admit(peer.ip(), &headers, &served.console.search)?;
    let _slot = served.console.slot()?;
    let ingest = match &served.console.ingest {
        Some(ingest) => Some(view::writer(ingest).await?),
        None => None,
    };
    let Served { process, console } = served;
    let work = super::blocking(move || view::overview(&process, &console).map_err(super::status));
    let overview = within(super::admission::CALL_DEADLINE, "the overview", work).await?;
    Ok(Json(view::Overview { writer: ingest, ..overview }))
}

#[derive(Deserialize)]
struct Span {
    seconds: Option<u64>,
    step: Option<u64>,
}

async fn latency(
    State(served): State<Served>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    axum::extract::Query(span): axum::extract::Query<Span>,
) -> Result<Json<serde_json::Value>, Refusal> {
    served.console.admit(peer.ip(), &headers, &served.console.search)?;
    let step = span.step.unwrap_or(5).clamp(1, 60);
    let seconds = span.seconds.unwrap_or(300).clamp(step, 300);
    let points = served.process.metrics.recent_search.points(seconds, step);
    Ok(Json(serde_json::json!({ "step_seconds": step, "points": points })))
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
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Json(asked): Json<ConsoleSearch>,
) -> Result<Json<serde_json::Value>, Refusal> {
    served.console.admit(peer.ip(), &headers, &served.console.search)?;
    let _slot = served.console.slot()?;
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
    let cancel = Cancel::default();
    let _cancel = cancel.on_drop();
    let work =
        served.process.search_work(move || search_cancellable(&answered, &request, &cancel).map_err(super::status));
    let hits = within(super::admission::CALL_DEADLINE, "a search", work).await?;
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
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Json(asked): Json<ConsoleVerify>,
) -> Result<Json<crate::types::VerifyReport>, Refusal> {
    served.console.admit(peer.ip(), &headers, &served.console.admin)?;
    let _slot = served.console.slot()?;
    let collection = served.process.collection(&asked.collection)?;
    let options = asked.gates.options()?;
    let _cancel = options.cancel.on_drop();
    let work = served.process.admin_work(move || verify(&collection, &options).map_err(super::status));
    let report = within(super::admission::WORK_DEADLINE, "a verification", work).await?;
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
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Json(asked): Json<ConsoleFlip>,
) -> Result<Response, Refusal> {
    served.console.admit(peer.ip(), &headers, &served.console.admin)?;
    let _slot = served.console.slot()?;
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
    let work = served.process.admin_work(move || {
        let report = verify(&collection, &options).map_err(super::status)?;
        // Past the deadline the caller is told it failed: it must not have happened.
        options.cancel.check("the flip").map_err(super::status)?;
        let flipped = catalog.flip(&alias, collection, &report);
        Ok((report, flipped))
    });
    let (report, flipped) = within(super::admission::WORK_DEADLINE, "a flip", work).await?;
    Ok(match flipped {
        Ok(record) => Json(serde_json::json!({ "flipped": record, "report": report })).into_response(),
        Err(e @ crate::Error::Alias { .. }) => {
            (StatusCode::CONFLICT, Json(serde_json::json!({ "refused": e.to_string(), "report": report })))
                .into_response()
        }
        Err(e) => Refusal::from(e).into_response(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn console(token: Option<&str>) -> Console {
        let config = super::super::ServeConfig { token: token.map(str::to_string), ..Default::default() };
        Console::new(&config, true, None)
    }

    fn asked(host: &str, token: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, host.parse().unwrap());
        if let Some(t) = token {
            headers.insert(header::AUTHORIZATION, format!("Bearer {t}").parse().unwrap());
        }
        headers
    }

    #[test]
    fn host_names_without_their_port() {
        for (host, name) in [
            ("127.0.0.1:9090", "127.0.0.1"),
            ("[::1]:9090", "[::1]"),
            ("[::1]", "[::1]"),
            ("localhost", "localhost"),
            ("a.localhost:80", "a.localhost"),
            ("::1", "::1"),
        ] {
            assert_eq!(host_name(host), name, "{host}");
        }
        for local in ["127.0.0.1", "10.1.2.3", "[::1]", "[fd00::5]", "localhost", "x.localhost"] {
            assert!(is_local_name(local), "{local}");
        }
        for rebindable in ["evil.example", "localhost.evil.example", "127.0.0.1.nip.io", "", "[evil]"] {
            assert!(!is_local_name(rebindable), "{rebindable}");
        }
    }

    #[test]
    fn other_hosts_need_the_token_and_this_host_does_not() {
        let pod: IpAddr = "10.244.1.7".parse().unwrap();
        let here: IpAddr = "127.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let open = console(None);
        // No token configured: this host (kubectl port-forward) only.
        assert!(open.admit(here, &asked("127.0.0.1:9090", None), &open.search).is_ok());
        // A sidecar proxy connects from loopback for callers elsewhere: its headers say so.
        let mut proxied = asked("10.244.0.9:9090", None);
        proxied.insert("x-forwarded-for", "10.244.3.3".parse().unwrap());
        assert_eq!(open.admit(here, &proxied, &open.search).unwrap_err().0, StatusCode::FORBIDDEN);
        assert!(open.admit(mapped, &asked("127.0.0.1:9090", None), &open.search).is_ok());
        let Refusal(status, message) = open.admit(pod, &asked("10.244.0.9:9090", None), &open.search).unwrap_err();
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(message.contains("from 10.244.1.7") && message.contains("port-forward"), "{message}");
        // A token configured: another host with it is served, without it is not.
        let guarded = console(Some("t0k"));
        assert!(guarded.admit(pod, &asked("10.244.0.9:9090", Some("t0k")), &guarded.search).is_ok());
        let Refusal(status, _) = guarded.admit(pod, &asked("10.244.0.9:9090", None), &guarded.search).unwrap_err();
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn a_full_console_refuses_at_once() {
        let console = console(None);
        let held: Vec<_> = (0..IN_FLIGHT).map(|_| console.slot().unwrap()).collect();
        let Refusal(status, _) = console.slot().unwrap_err();
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        drop(held);
        assert!(console.slot().is_ok());
    }
}
