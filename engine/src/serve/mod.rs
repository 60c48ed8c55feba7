//! Serving over gRPC (tonic): the Search, Admin, Snapshot and Ingest services of the contract
//! in `proto/`, `grpc.health.v1` per service, server reflection, bearer-token checks, call
//! metrics, admission (bounded calls, deadlines), and draining: health goes NOT_SERVING and every
//! connection gets a GOAWAY while calls in flight finish; after a drain the process is ready
//! again for whoever reconnects (a rollback finds it at once). SIGTERM is final.

pub mod admin;
pub mod admission;
pub mod auth;
pub mod console;
pub mod http;
pub mod ingest;
pub mod search;
pub mod snapshot;
pub mod wire;

use crate::catalog::Catalog;
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

pub use quiver_api::proto;

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
        Error::Exhausted { .. } => Status::resource_exhausted(e.to_string()),
        Error::Cancelled { .. } => Status::cancelled(e.to_string()),
        _ => Status::internal(e.to_string()),
    }
}

/// A name from a request as a span field: at most 64 characters (the name check refuses longer
/// ones later; a log line must not carry a megabyte a caller sent). Callers escape it
/// (`escape_debug`), so a newline cannot start a fake log line.
pub(crate) fn span_field(name: &str) -> &str {
    name.char_indices().nth(64).map_or(name, |(at, _)| &name[..at])
}

/// Runs blocking engine work (search, verify) off the async executor.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, Status> + Send + 'static) -> Result<T, Status> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Status::internal(format!("worker failed: {e}")))?
}

async fn slotted<T: Send + 'static>(
    slots: &Arc<tokio::sync::Semaphore>,
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    let slot = slots.clone().acquire_owned().await.map_err(|_| Status::unavailable("shutting down"))?;
    blocking(move || {
        let _slot = slot;
        f()
    })
    .await
}

/// How a serving process listens and whom it lets in.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub max_connection_age: Option<Duration>,
    /// Largest message of the bulk services (Ingest batches, Snapshot chunks); Search takes at
    /// most [`crate::limits::MAX_SEARCH_REQUEST_BYTES`], Admin [`crate::limits::MAX_REQUEST_BYTES`].
    pub max_message_bytes: usize,
    /// The bearer token required on every service but health and reflection.
    pub token: Option<String>,
    /// Leaves Search open when a token is configured (an explicit opt-out).
    pub search_without_token: bool,
    /// PEM certificate chain and key: serve TLS.
    pub tls: Option<(Vec<u8>, Vec<u8>)>,
    /// After SIGTERM: how long to report NOT_SERVING before closing connections, so load
    /// balancers stop sending new calls first.
    pub drain_delay: Duration,
    /// How long calls in flight may take to finish after a drain or SIGTERM; then the
    /// connections still open are left behind (drain) or closed (SIGTERM).
    pub shutdown_grace: Duration,
    /// Calls served at once by this process; more get RESOURCE_EXHAUSTED at once.
    pub max_in_flight: usize,
    /// Host names the console answers to besides `localhost` and IP addresses (a name it is
    /// reached by through an Ingress or a DNS name of one's own); any other `Host` is refused,
    /// so a DNS-rebinding page cannot use it.
    pub console_hosts: Vec<String>,
}

impl ServeConfig {
    /// The token check of every service but health, reflection and (maybe) Search.
    pub fn admin_auth(&self) -> auth::Auth {
        auth::Auth::new(self.token.clone())
    }

    /// The token check of Search: the same, unless searches are open.
    pub fn search_auth(&self) -> auth::Auth {
        if self.search_without_token { auth::Auth::new(None) } else { self.admin_auth() }
    }
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            max_connection_age: None,
            max_message_bytes: 16 << 20,
            token: None,
            search_without_token: false,
            tls: None,
            drain_delay: Duration::ZERO,
            shutdown_grace: Duration::from_secs(30),
            max_in_flight: crate::limits::DEFAULT_MAX_IN_FLIGHT,
            console_hosts: Vec::new(),
        }
    }
}

/// What one serving process holds: its collections, health and readiness, metrics.
pub struct ServingProcess {
    pub catalog: Arc<Catalog>,
    pub metrics: Arc<Metrics>,
    /// Answered when a request leaves `collection` empty: a replica's own collection, so
    /// clients behind an alias Service need not know which collection serves them.
    pub default_collection: Option<String>,
    /// Where this process's snapshots are (writer, replica), served to peers.
    pub snapshots: Option<crate::snapshot::SnapshotDir>,
    health: HealthReporter,
    health_service: tonic_health::pb::health_server::HealthServer<tonic_health::server::HealthService>,
    ready: AtomicBool,
    /// Set by a drain of a ready process: ready again once the drained connections are gone.
    ready_after_drain: AtomicBool,
    /// Counts drains: only the latest one's end restores readiness.
    drains: std::sync::atomic::AtomicU64,
    /// SIGTERM came: readiness never comes back.
    terminating: AtomicBool,
    drain: tokio::sync::Notify,
    /// Searches running at once: one per core, so scans queue here instead of crowding out
    /// the async workers that answer health, probes and cheap calls.
    search_slots: Arc<tokio::sync::Semaphore>,
    /// Verifications and warm-ups (thousands of queries each) run one at a time, beside the
    /// search slots, so they neither starve searches nor run twice at once.
    admin_slots: Arc<tokio::sync::Semaphore>,
}

const SERVICES: [&str; 5] = [
    "",
    <SearchServer<search::SearchService> as NamedService>::NAME,
    <AdminServer<admin::AdminService> as NamedService>::NAME,
    <SnapshotServer<snapshot::SnapshotService> as NamedService>::NAME,
    <IngestServer<ingest::IngestService> as NamedService>::NAME,
];

impl ServingProcess {
    /// A process that starts NOT_SERVING; the role calls [`ServingProcess::set_ready`] when it can answer.
    pub async fn new(catalog: Arc<Catalog>, metrics: Arc<Metrics>) -> ServingProcess {
        let health = HealthReporter::new();
        let health_service = tonic_health::pb::health_server::HealthServer::new(
            tonic_health::server::HealthService::from_health_reporter(health.clone()),
        );
        let process = ServingProcess {
            catalog,
            metrics,
            default_collection: None,
            snapshots: None,
            health,
            health_service,
            ready: AtomicBool::new(false),
            ready_after_drain: AtomicBool::new(false),
            drains: std::sync::atomic::AtomicU64::new(0),
            terminating: AtomicBool::new(false),
            drain: tokio::sync::Notify::new(),
            search_slots: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            )),
            admin_slots: Arc::new(tokio::sync::Semaphore::new(1)),
        };
        process.report(ServingStatus::NotServing).await;
        process
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
    /// process keeps answering whoever reconnects and, once the drained connections are gone,
    /// reports SERVING again if it was ready before. A drain is temporary; SIGTERM is not.
    pub async fn drain(&self) {
        if self.is_ready() && !self.terminating.load(Ordering::SeqCst) {
            self.ready_after_drain.store(true, Ordering::SeqCst);
        }
        self.drains.fetch_add(1, Ordering::SeqCst);
        self.set_ready(false).await;
        self.drain.notify_one();
    }

    /// Runs search work on the blocking pool once one of the process's search slots is free. The
    /// slot goes with the work: a caller that gives up does not free it while the work runs.
    pub async fn search_work<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, Status> + Send + 'static,
    ) -> Result<T, Status> {
        slotted(&self.search_slots, f).await
    }

    /// Runs a verification or warm-up on the blocking pool, one at a time.
    pub async fn admin_work<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, Status> + Send + 'static,
    ) -> Result<T, Status> {
        slotted(&self.admin_slots, f).await
    }

    /// The collection a request names: an alias first, then a collection, and the process's own
    /// collection when the name is empty.
    pub fn collection(&self, name: &str) -> Result<Arc<crate::search::searcher::Searcher>, Status> {
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

/// Every service this process can serve, described for server reflection. Both reflection
/// versions are served from the same descriptors: `grpc.reflection.v1` for current tools, and
/// `grpc.reflection.v1alpha` for the many that still ask only for it (grpcurl before 1.8.8,
/// Python's grpcio-reflection, evans, Postman), which would otherwise get UNIMPLEMENTED.
/// `grpc.health.v1` is included so a listing shows the health service it can call. Only the
/// services this process serves are listed (`served`, with health and reflection): the
/// contract's file also describes Ingest and Snapshot, which a replica or standalone process
/// would answer with UNIMPLEMENTED.
fn reflection_descriptors(served: &[&str]) -> tonic_reflection::server::Builder<'static> {
    let listed = [
        <tonic_health::pb::health_server::HealthServer<tonic_health::server::HealthService> as NamedService>::NAME,
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ];
    served.iter().chain(&listed).fold(
        tonic_reflection::server::Builder::configure()
            .include_reflection_service(false)
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET),
        |builder, name| builder.with_service_name(*name),
    )
}

/// Serves gRPC on `listener` until `shutdown` resolves: Search, Admin and health always,
/// Snapshot when the process has snapshots, Ingest when given.
///
/// One accept loop hands connections to the current server instance. A drain starts a new
/// instance for new connections at once and lets the old one finish its calls (GOAWAY) within
/// `shutdown_grace`; then the process is ready again. On shutdown: NOT_SERVING, wait
/// `drain_delay`, GOAWAY, calls in flight finish within `shutdown_grace`.
pub async fn serve(
    process: Arc<ServingProcess>,
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
    let served: Vec<&str> = SERVICES[1..]
        .iter()
        .copied()
        .filter(|name| match *name {
            n if n == <SnapshotServer<snapshot::SnapshotService> as NamedService>::NAME => process.snapshots.is_some(),
            n if n == <IngestServer<ingest::IngestService> as NamedService>::NAME => ingest.is_some(),
            _ => true,
        })
        .collect();
    let reflection = reflection_descriptors(&served)
        .build_v1()
        .map_err(|e| Error::io("building the reflection service", std::io::Error::other(e)))?;
    let reflection_v1alpha = reflection_descriptors(&served)
        .build_v1alpha()
        .map_err(|e| Error::io("building the reflection service", std::io::Error::other(e)))?;
    let bulk_limit = if config.max_message_bytes == 0 { 64 << 20 } else { config.max_message_bytes };
    let request_limit = crate::limits::MAX_REQUEST_BYTES;
    let (guarded, search_auth) = (config.admin_auth(), config.search_auth());
    let admission = admission::AdmissionLayer::new(config.max_in_flight, process.metrics.clone());
    let (acceptor, mut incoming) = Acceptor::start(listener);
    loop {
        let mut builder = tonic::transport::Server::builder();
        if let Some((cert, key)) = &config.tls {
            let identity = tonic::transport::Identity::from_pem(cert, key);
            builder = builder
                .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
                .map_err(|e| Error::io("configuring TLS", std::io::Error::other(e)))?;
        }
        // Snapshot chunks are 4 MiB: windows that grow with the bandwidth-delay product.
        builder = builder
            .http2_adaptive_window(Some(true))
            .max_frame_size(Some(1 << 20))
            .max_concurrent_streams(Some(crate::limits::MAX_STREAMS_PER_CONNECTION));
        if let Some(age) = config.max_connection_age {
            builder = builder.max_connection_age(age);
        }
        let search = SearchServer::new(search::SearchService::new(process.clone()))
            .max_decoding_message_size(crate::limits::MAX_SEARCH_REQUEST_BYTES)
            .max_encoding_message_size(bulk_limit);
        let admin = AdminServer::new(admin::AdminService::new(process.clone()))
            .max_decoding_message_size(request_limit)
            .max_encoding_message_size(request_limit);
        let mut router = builder
            .layer(admission.clone())
            .add_service(process.health_service.clone())
            .add_service(reflection.clone())
            .add_service(reflection_v1alpha.clone())
            .add_service(tonic::service::interceptor::InterceptedService::new(search, search_auth.clone()))
            .add_service(tonic::service::interceptor::InterceptedService::new(admin, guarded.clone()));
        if process.snapshots.is_some() {
            let snapshots = SnapshotServer::new(snapshot::SnapshotService::new(process.clone()))
                .max_decoding_message_size(request_limit)
                .max_encoding_message_size(bulk_limit);
            router =
                router.add_service(tonic::service::interceptor::InterceptedService::new(snapshots, guarded.clone()));
        }
        if let Some(ingest) = &ingest {
            let server = IngestServer::new(ingest.clone()).max_decoding_message_size(bulk_limit);
            router = router.add_service(tonic::service::interceptor::InterceptedService::new(server, guarded.clone()));
        }
        // An instance stops when its stream of connections ends (every connection it was
        // handed is served first): it then sends each connection a GOAWAY and lets the calls
        // in flight finish. The signal itself never fires; it only makes the stop graceful.
        let instance = tokio::spawn(router.serve_with_incoming_shutdown(incoming, std::future::pending::<()>()));
        let mut terminated_rx = terminated.clone();
        let terminating = tokio::select! {
            _ = process.drain.notified() => false,
            _ = async { terminated_rx.wait_for(|t| *t).await.is_ok() } => true,
        };
        if terminating {
            process.terminating.store(true, Ordering::SeqCst);
            process.set_ready(false).await;
            // Keep answering new connections while endpoints and load balancers catch up.
            tokio::time::sleep(config.drain_delay).await;
            acceptor.stop();
            finish(instance, config.shutdown_grace).await?;
            return Ok(());
        }
        // Drain: the next instance takes new connections from now on; this one sends its
        // connections a GOAWAY and finishes their calls in the background.
        incoming = acceptor.next_instance();
        let (process, grace) = (process.clone(), config.shutdown_grace);
        let drain = process.drains.load(Ordering::SeqCst);
        tokio::spawn(async move {
            if let Err(e) = finish(instance, grace).await {
                tracing::error!("draining: {e}");
            }
            // Only the latest drain restores readiness, and never after SIGTERM.
            if process.drains.load(Ordering::SeqCst) == drain
                && !process.terminating.load(Ordering::SeqCst)
                && process.ready_after_drain.swap(false, Ordering::SeqCst)
            {
                process.set_ready(true).await;
            }
            tracing::info!("drained: every connection was sent a GOAWAY; serving reconnects");
        });
    }
}

/// Waits for a server instance that was told to stop, at most `grace`.
async fn finish(instance: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>, grace: Duration) -> Result<()> {
    match tokio::time::timeout(grace, instance).await {
        Ok(Ok(served)) => served.map_err(|e| Error::io("serving gRPC", std::io::Error::other(e))),
        Ok(Err(e)) => Err(Error::io("serving gRPC", std::io::Error::other(e))),
        Err(_) => {
            tracing::warn!("calls still running after the {} s grace period are cut off", grace.as_secs());
            Ok(())
        }
    }
}

/// The one accept loop of a serving process: accepted connections go to the server instance
/// that is current, so a drained instance never takes a new connection.
struct Acceptor {
    current: Arc<CurrentInstance>,
    task: tokio::task::JoinHandle<()>,
}

impl Acceptor {
    /// Starts accepting, with the first instance's connections. The first instance exists
    /// before the first accept: a connection that arrives at once (a probe, a client that read
    /// the listening line) is never dropped for want of an instance.
    fn start(listener: tokio::net::TcpListener) -> (Acceptor, Connections) {
        let current: Arc<CurrentInstance> = Arc::default();
        let first = next_instance(&current);
        let to = current.clone();
        let task = tokio::spawn(async move {
            loop {
                let stream = match listener.accept().await {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: wait instead of spinning.
                        tracing::warn!("accepting a connection: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Small request/response messages: do not wait to coalesce them.
                let _ = stream.set_nodelay(true);
                let mut stream = stream;
                // An instance that stopped while this was sent to it hands it back: try the
                // current one.
                loop {
                    let sender = to.lock().expect("acceptor lock").clone();
                    // None only after stop(): the connection is refused by closing it.
                    let Some(sender) = sender else { break };
                    match sender.send(stream).await {
                        Ok(()) => break,
                        Err(tokio::sync::mpsc::error::SendError(back)) => stream = back,
                    }
                    tokio::task::yield_now().await;
                }
            }
        });
        (Acceptor { current, task }, first)
    }

    /// The connections for a new server instance, from now on; the previous instance's stream
    /// ends, which stops it.
    fn next_instance(&self) -> Connections {
        next_instance(&self.current)
    }

    /// Stops accepting (the listening socket closes) and ends the current instance's stream.
    fn stop(&self) {
        self.task.abort();
        *self.current.lock().expect("acceptor lock") = None;
    }
}

type CurrentInstance = std::sync::Mutex<Option<tokio::sync::mpsc::Sender<tokio::net::TcpStream>>>;

/// The connections handed to one server instance.
type Connections = futures::stream::Map<
    tokio_stream::wrappers::ReceiverStream<tokio::net::TcpStream>,
    fn(tokio::net::TcpStream) -> std::io::Result<tokio::net::TcpStream>,
>;

fn next_instance(current: &CurrentInstance) -> Connections {
    let (sender, receiver) = tokio::sync::mpsc::channel(64);
    *current.lock().expect("acceptor lock") = Some(sender);
    futures::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(receiver), Ok as fn(_) -> _)
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

#[cfg(test)]
mod tests {
    use super::Acceptor;
    use futures::StreamExt;
    use std::time::Duration;

    /// A connection waiting when serving starts, accepted before anything else runs, reaches
    /// the first instance (it used to be closed: the accept loop ran before the first
    /// instance existed, and a client that connected on the listening line saw a reset).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_at_start_reaches_the_first_instance() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (acceptor, mut first) = Acceptor::start(listener);
        // Let the accept loop take the waiting connection before the instance is polled.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let served = tokio::time::timeout(Duration::from_secs(5), first.next()).await;
        let served = served.expect("the waiting connection reached the first instance").unwrap().unwrap();
        assert_eq!(served.peer_addr().unwrap(), client.local_addr().unwrap());
        acceptor.stop();
    }
}
