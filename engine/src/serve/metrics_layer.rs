//! A tower layer that counts every gRPC call by method and status code and times it.

use crate::metrics::Metrics;
use futures::future::BoxFuture;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

#[derive(Clone)]
pub struct RecordCalls<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

/// Wraps a server's routes in [`RecordCalls`].
#[derive(Clone)]
pub struct RecordCallsLayer(pub Arc<Metrics>);

impl<S> tower::Layer<S> for RecordCallsLayer {
    type Service = RecordCalls<S>;

    fn layer(&self, inner: S) -> RecordCalls<S> {
        RecordCalls { inner, metrics: self.0.clone() }
    }
}

impl<S, B, R> tower::Service<http::Request<B>> for RecordCalls<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // "/quiver.v1.Search/Search" -> "quiver.v1.Search/Search"
        let method = request.uri().path().trim_start_matches('/').to_string();
        let start = Instant::now();
        let metrics = self.metrics.clone();
        let call = self.inner.call(request);
        Box::pin(async move {
            let response = call.await;
            if let Ok(r) = &response {
                // Errors come back trailers-only, with grpc-status in the headers; a unary
                // success carries it in the trailers, after these headers.
                let code = r
                    .headers()
                    .get("grpc-status")
                    .map(|v| tonic::Code::from_bytes(v.as_bytes()))
                    .unwrap_or(tonic::Code::Ok);
                metrics.call(&method, code, start.elapsed());
            }
            response
        })
    }
}
