//! The HTTP side of a serving process: `/metrics` (Prometheus), `/livez`, `/readyz`.

use super::Node;
use crate::error::{Error, Result};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use std::future::Future;
use std::sync::Arc;

pub fn router(node: Arc<Node>) -> axum::Router {
    axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(node)
}

async fn metrics(State(node): State<Arc<Node>>) -> impl IntoResponse {
    node.metrics.collections.set(node.catalog.open_count() as i64);
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], node.metrics.render())
}

async fn readyz(State(node): State<Arc<Node>>) -> impl IntoResponse {
    if node.is_ready() { (StatusCode::OK, "ready\n") } else { (StatusCode::SERVICE_UNAVAILABLE, "not ready\n") }
}

/// Serves the HTTP endpoints on `listener` until `shutdown` resolves.
pub async fn serve(
    node: Arc<Node>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    axum::serve(listener, router(node)).with_graceful_shutdown(shutdown).await.map_err(|e| Error::io("serving HTTP", e))
}
