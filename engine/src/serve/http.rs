//! The HTTP side of a serving process: `/metrics` (Prometheus), `/livez`, `/readyz`, and the
//! console at `/` ([`super::console`]).

use super::ServingProcess;
use super::console::Console;
use crate::error::{Error, Result};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use std::future::Future;
use std::sync::Arc;

pub fn router(process: Arc<ServingProcess>, console: Console) -> axum::Router {
    axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(process.clone())
        .merge(super::console::router(process, console))
}

async fn metrics(State(process): State<Arc<ServingProcess>>) -> impl IntoResponse {
    process.metrics.collections.set(process.catalog.open_count() as i64);
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], process.metrics.render())
}

async fn readyz(State(process): State<Arc<ServingProcess>>) -> impl IntoResponse {
    if process.is_ready() { (StatusCode::OK, "ready\n") } else { (StatusCode::SERVICE_UNAVAILABLE, "not ready\n") }
}

/// Serves the HTTP endpoints on `listener` until `shutdown` resolves.
pub async fn serve(
    process: Arc<ServingProcess>,
    listener: tokio::net::TcpListener,
    console: Console,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    // The peer's address: the console serves its calls to other hosts only with the token.
    axum::serve(listener, router(process, console).into_make_service_with_connect_info::<std::net::SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| Error::io("serving HTTP", e))
}
