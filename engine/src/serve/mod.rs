//! Serving over gRPC (tonic): the Search and Admin services of the contract in `proto/`, with
//! `grpc.health.v1` per service and server reflection, and a drain that flips health to
//! NOT_SERVING before in-flight calls finish.

pub mod admin;
pub mod search;

use crate::alias::Catalog;
use crate::error::{Error, Result};
use std::future::Future;
use std::sync::Arc;
use tonic::Status;
use tonic_health::server::HealthReporter;

/// The generated gRPC contract (`quiver.v1`).
pub mod proto {
    tonic::include_proto!("quiver.v1");
    /// Encoded descriptors of every quiver.v1 file, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("quiver_descriptor");
}

use proto::admin_server::AdminServer;
use proto::search_server::SearchServer;

/// Maps an engine error to the gRPC status a client can act on.
pub fn status(e: Error) -> Status {
    match e {
        Error::Request(_) | Error::Input(_) => Status::invalid_argument(e.to_string()),
        Error::NotFound { .. } | Error::Alias { .. } => Status::not_found(e.to_string()),
        Error::Incomplete { .. } | Error::Sealed { .. } => Status::failed_precondition(e.to_string()),
        _ => Status::internal(e.to_string()),
    }
}

/// A collection by alias (first) or by name.
pub fn resolve(catalog: &Catalog, name: &str) -> Result<Arc<crate::Collection>, Status> {
    if name.is_empty() {
        return Err(Status::invalid_argument(
            "invalid request: field `collection` = \"\": a collection or alias is required",
        ));
    }
    match catalog.resolve(name) {
        Ok(c) => Ok(c),
        Err(Error::Alias { .. }) => catalog.collection(name).map_err(status),
        Err(e) => Err(status(e)),
    }
}

/// Runs blocking engine work (search, verify) off the async executor.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, Status> + Send + 'static) -> Result<T, Status> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Status::internal(format!("worker failed: {e}")))?
}

/// Marks every quiver service NOT_SERVING on `grpc.health.v1`.
pub async fn set_not_serving(reporter: &HealthReporter) {
    reporter.set_not_serving::<SearchServer<search::SearchService>>().await;
    reporter.set_not_serving::<AdminServer<admin::AdminService>>().await;
}

/// Serves Search, Admin, health and reflection on `listener` until `shutdown` resolves; then
/// reports NOT_SERVING, stops accepting, and lets calls in flight finish.
pub async fn serve(
    catalog: Arc<Catalog>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<SearchServer<search::SearchService>>().await;
    reporter.set_serving::<AdminServer<admin::AdminService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| Error::io("building the reflection service", std::io::Error::other(e)))?;
    let drain_reporter = reporter.clone();
    tonic::transport::Server::builder()
        .add_service(health)
        .add_service(reflection)
        .add_service(SearchServer::new(search::SearchService::new(catalog.clone())))
        .add_service(AdminServer::new(admin::AdminService::new(catalog, reporter)))
        .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async move {
            shutdown.await;
            set_not_serving(&drain_reporter).await;
        })
        .await
        .map_err(|e| Error::io("serving gRPC", std::io::Error::other(e)))
}
