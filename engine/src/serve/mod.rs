//! Serving over gRPC (tonic): the Search, Admin, Snapshot and Ingest services of the contract
//! in `proto/`, `grpc.health.v1` per service, server reflection, bearer-token checks, call
//! metrics, and draining: health goes NOT_SERVING and every connection gets a GOAWAY while
//! calls in flight finish.

pub mod admin;
pub mod auth;
pub mod http;
pub mod ingest;
pub mod metrics_layer;
pub mod search;
pub mod snapshot;

use crate::alias::Catalog;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tonic::Status;
use tonic::server::NamedService;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// The generated gRPC contract (`quiver.v1`).
pub mod proto {
    tonic::include_proto!("quiver.v1");
    /// Encoded descriptors of every quiver.v1 file, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("quiver_descriptor");
}

use proto::admin_server::AdminServer;
use proto::ingest_server::IngestServer;
use proto::search_server::SearchServer;
use proto::snapshot_server::SnapshotServer;

/// Maps an engine error to the gRPC status a client can act on.
pub fn status(e: Error) -> Status {
    match e {
        Error::Request(_) | Error::Input(_) => Status::invalid_argument(e.to_string()),
        Error::NotFound { .. } | Error::Alias { .. } => Status::not_found(e.to_string()),
        Error::Incomplete { .. } | Error::Sealed { .. } | Error::AlreadyExists { .. } => {
            Status::failed_precondition(e.to_string())
        }
        _ => Status::internal(e.to_string()),
    }
}

/// Runs blocking engine work (search, verify) off the async executor.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, Status> + Send + 'static) -> Result<T, Status> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Status::internal(format!("worker failed: {e}")))?
}

/// How a serving process listens and whom it lets in.
#[derive(Debug, Clone, Default)]
pub struct ServeConfig {
    pub max_connection_age: Option<Duration>,
    pub max_message_bytes: usize,
    /// The bearer token required on Ingest, Admin and Snapshot (and Search when asked).
    pub token: Option<String>,
    pub search_requires_token: bool,
    /// PEM certificate chain and key: serve TLS.
    pub tls: Option<(Vec<u8>, Vec<u8>)>,
    /// After SIGTERM: how long to report NOT_SERVING before closing connections, so load
    /// balancers stop sending new calls first.
    pub drain_delay: Duration,
}

/// What one serving process holds: its collections, health and readiness, metrics.
pub struct Node {
    pub catalog: Arc<Catalog>,
    pub metrics: Arc<Metrics>,
    /// Answered when a request leaves `collection` empty: a replica's own collection, so
    /// clients behind an alias Service need not know which collection serves them.
    pub default_collection: Option<String>,
    /// Where this process's snapshots are (writer, replica), served to peers.
    pub snapshots: Option<crate::snapshot::Store>,
    health: HealthReporter,
    health_service: tonic_health::pb::health_server::HealthServer<tonic_health::server::HealthService>,
    ready: AtomicBool,
    drain: tokio::sync::Notify,
}

const SERVICES: [&str; 5] = [
    "",
    <SearchServer<search::SearchService> as NamedService>::NAME,
    <AdminServer<admin::AdminService> as NamedService>::NAME,
    <SnapshotServer<snapshot::SnapshotService> as NamedService>::NAME,
    <IngestServer<ingest::IngestService> as NamedService>::NAME,
];

impl Node {
    /// A node that starts NOT_SERVING; the role calls [`Node::set_ready`] when it can answer.
    pub async fn new(catalog: Arc<Catalog>, metrics: Arc<Metrics>) -> Node {
        let health = HealthReporter::new();
        let health_service = tonic_health::pb::health_server::HealthServer::new(
            tonic_health::server::HealthService::from_health_reporter(health.clone()),
        );
        let node = Node {
            catalog,
            metrics,
            default_collection: None,
            snapshots: None,
            health,
            health_service,
            ready: AtomicBool::new(false),
            drain: tokio::sync::Notify::new(),
        };
        node.report(ServingStatus::NotServing).await;
        node
    }

    async fn report(&self, status: ServingStatus) {
        for name in SERVICES {
            self.health.set_service_status(name, status).await;
        }
    }

    /// Readiness on `/readyz` and `grpc.health.v1` (overall and per service).
    pub async fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
        self.report(if ready { ServingStatus::Serving } else { ServingStatus::NotServing }).await;
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Goes NOT_SERVING and sends every connection a GOAWAY (calls in flight finish); the
    /// process keeps serving whoever reconnects.
    pub async fn drain(&self) {
        self.set_ready(false).await;
        self.drain.notify_one();
    }

    /// The collection a request names: an alias first, then a collection, and the node's own
    /// collection when the name is empty.
    pub fn collection(&self, name: &str) -> Result<Arc<crate::Collection>, Status> {
        let name = match (name, &self.default_collection) {
            ("", Some(own)) => own.as_str(),
            ("", None) => {
                return Err(Status::invalid_argument(
                    "invalid request: field `collection` = \"\": a collection or alias is required",
                ));
            }
            (name, _) => name,
        };
        match self.catalog.resolve(name) {
            Ok(c) => Ok(c),
            Err(Error::Alias { .. }) => self.catalog.collection(name).map_err(status),
            Err(e) => Err(status(e)),
        }
    }
}

/// Serves gRPC on `listener` until `shutdown` resolves: Search, Admin and health always,
/// Snapshot when the node has snapshots, Ingest when given. On shutdown: NOT_SERVING, wait
/// `drain_delay`, GOAWAY, calls in flight finish.
pub async fn serve(
    node: Arc<Node>,
    listener: tokio::net::TcpListener,
    config: ServeConfig,
    ingest: Option<ingest::IngestService>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let (terminate, terminated) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = terminate.send(true);
    });
    let listener = Arc::new(listener);
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| Error::io("building the reflection service", std::io::Error::other(e)))?;
    let limit = if config.max_message_bytes == 0 { 4 << 20 } else { config.max_message_bytes };
    let guarded = auth::Auth::new(config.token.clone());
    let search_auth = if config.search_requires_token { guarded.clone() } else { auth::Auth::new(None) };
    loop {
        let mut builder = tonic::transport::Server::builder();
        if let Some((cert, key)) = &config.tls {
            let identity = tonic::transport::Identity::from_pem(cert, key);
            builder = builder
                .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
                .map_err(|e| Error::io("configuring TLS", std::io::Error::other(e)))?;
        }
        // Snapshot chunks are 4 MiB: windows that grow with the bandwidth-delay product.
        builder = builder.http2_adaptive_window(Some(true)).max_frame_size(Some(1 << 20));
        if let Some(age) = config.max_connection_age {
            builder = builder.max_connection_age(age);
        }
        let search = SearchServer::new(search::SearchService::new(node.clone()))
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit);
        let admin = AdminServer::new(admin::AdminService::new(node.clone()))
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit);
        let mut router = builder
            .layer(metrics_layer::RecordCallsLayer(node.metrics.clone()))
            .add_service(node.health_service.clone())
            .add_service(reflection.clone())
            .add_service(tonic::service::interceptor::InterceptedService::new(search, search_auth.clone()))
            .add_service(tonic::service::interceptor::InterceptedService::new(admin, guarded.clone()));
        if node.snapshots.is_some() {
            let snapshots = SnapshotServer::new(snapshot::SnapshotService::new(node.clone()));
            router =
                router.add_service(tonic::service::interceptor::InterceptedService::new(snapshots, guarded.clone()));
        }
        if let Some(ingest) = &ingest {
            let server = IngestServer::new(ingest.clone()).max_decoding_message_size(limit);
            router = router.add_service(tonic::service::interceptor::InterceptedService::new(server, guarded.clone()));
        }
        let node_for_stop = node.clone();
        let mut terminated_rx = terminated.clone();
        let drain_delay = config.drain_delay;
        let stop = async move {
            tokio::select! {
                _ = node_for_stop.drain.notified() => {}
                _ = async { terminated_rx.wait_for(|t| *t).await.is_ok() } => {
                    node_for_stop.set_ready(false).await;
                    tokio::time::sleep(drain_delay).await;
                }
            }
            node_for_stop.set_ready(false).await;
        };
        router
            .serve_with_incoming_shutdown(incoming(listener.clone()), stop)
            .await
            .map_err(|e| Error::io("serving gRPC", std::io::Error::other(e)))?;
        let terminating = *terminated.borrow();
        if terminating {
            return Ok(());
        }
        tracing::info!("drained: every connection was sent a GOAWAY; still answering reconnects");
    }
}

/// Accepted connections of a listener that outlives one server instance (a drain restarts the
/// server on the same socket).
fn incoming(
    listener: Arc<tokio::net::TcpListener>,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, _)| {
            // Small request/response messages: do not wait to coalesce them.
            let _ = stream.set_nodelay(true);
            stream
        });
        Some((accepted, listener))
    })
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn termination() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
