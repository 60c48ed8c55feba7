//! Admission of gRPC calls, in front of every service: a bounded number in flight (excess gets
//! RESOURCE_EXHAUSTED at once rather than a queue without end), a server-side deadline per
//! method, and the call's metrics under its method's name. Health and reflection are always
//! admitted, so probes answer under load.

use crate::metrics::Metrics;
use futures::future::BoxFuture;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// What the server knows about a method it serves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Method {
    /// The metric label: `quiver.v1.Search/Search`, or `unknown` for a path we do not serve
    /// (so a scan of random paths cannot grow `/metrics`).
    pub label: &'static str,
    /// Server-side deadline until the response starts; a shorter `grpc-timeout` from the
    /// client wins (tonic applies it).
    pub deadline: Option<Duration>,
    /// Counted against the in-flight bound (control-plane calls and probes are not, so the
    /// operator's probes are answered under load).
    pub admitted: bool,
    /// Carries bulk data or long work: also counted against [`crate::limits::MAX_HEAVY_IN_FLIGHT`].
    pub heavy: bool,
}

/// The server's deadline of a call (a search); the console's calls keep it too.
pub(super) const CALL_DEADLINE: Duration = Duration::from_secs(30);
/// Verification and warm-up of a large collection run thousands of exact queries.
pub(super) const WORK_DEADLINE: Duration = Duration::from_secs(30 * 60);
const SHORT: Option<Duration> = Some(CALL_DEADLINE);
const LONG: Option<Duration> = Some(WORK_DEADLINE);
/// Seal imports and builds the whole collection; a pushing stream may last as long.
const BUILD: Option<Duration> = Some(Duration::from_secs(6 * 3600));

const fn call(label: &'static str, deadline: Option<Duration>) -> Method {
    Method { label, deadline, admitted: true, heavy: false }
}

const fn heavy(label: &'static str, deadline: Option<Duration>) -> Method {
    Method { label, deadline, admitted: true, heavy: true }
}

const fn control(label: &'static str) -> Method {
    Method { label, deadline: SHORT, admitted: false, heavy: false }
}

const fn probe(label: &'static str) -> Method {
    Method { label, deadline: None, admitted: false, heavy: false }
}

/// Every method of the contract, by its HTTP/2 path.
const METHODS: &[(&str, Method)] = &[
    ("/quiver.v1.Search/Search", call("quiver.v1.Search/Search", SHORT)),
    ("/quiver.v1.Search/BatchSearch", heavy("quiver.v1.Search/BatchSearch", SHORT)),
    ("/quiver.v1.Admin/Status", control("quiver.v1.Admin/Status")),
    ("/quiver.v1.Admin/Warmup", heavy("quiver.v1.Admin/Warmup", LONG)),
    ("/quiver.v1.Admin/Verify", heavy("quiver.v1.Admin/Verify", LONG)),
    ("/quiver.v1.Admin/Drain", control("quiver.v1.Admin/Drain")),
    ("/quiver.v1.Ingest/Write", heavy("quiver.v1.Ingest/Write", BUILD)),
    ("/quiver.v1.Ingest/Seal", heavy("quiver.v1.Ingest/Seal", BUILD)),
    ("/quiver.v1.Ingest/Progress", control("quiver.v1.Ingest/Progress")),
    ("/quiver.v1.Snapshot/Manifest", control("quiver.v1.Snapshot/Manifest")),
    // The deadline covers the start of the stream; the chunks flow as fast as the client reads.
    ("/quiver.v1.Snapshot/Fetch", call("quiver.v1.Snapshot/Fetch", SHORT)),
    ("/grpc.health.v1.Health/Check", probe("grpc.health.v1.Health/Check")),
    ("/grpc.health.v1.Health/Watch", probe("grpc.health.v1.Health/Watch")),
    (
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        probe("grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
    ),
    (
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        probe("grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"),
    ),
];

const UNKNOWN: Method = Method { label: "unknown", deadline: SHORT, admitted: true, heavy: false };

impl Method {
    /// The method a request path names.
    pub fn of(path: &str) -> Method {
        METHODS.iter().find(|(p, _)| *p == path).map_or(UNKNOWN, |(_, m)| *m)
    }

    /// Every method label that can appear in the metrics.
    pub fn labels() -> impl Iterator<Item = &'static str> {
        METHODS.iter().map(|(_, m)| m.label).chain([UNKNOWN.label])
    }
}

/// Wraps a server's routes in [`Admission`].
#[derive(Clone)]
pub struct AdmissionLayer {
    in_flight: Arc<Semaphore>,
    heavy: Arc<Semaphore>,
    limit: usize,
    metrics: Arc<Metrics>,
}

impl AdmissionLayer {
    /// `limit` calls at once (0: [`crate::limits::DEFAULT_MAX_IN_FLIGHT`]).
    pub fn new(limit: usize, metrics: Arc<Metrics>) -> AdmissionLayer {
        let limit = if limit == 0 { crate::limits::DEFAULT_MAX_IN_FLIGHT } else { limit };
        let heavy = Arc::new(Semaphore::new(crate::limits::MAX_HEAVY_IN_FLIGHT));
        AdmissionLayer { in_flight: Arc::new(Semaphore::new(limit)), heavy, limit, metrics }
    }
}

impl<S> tower::Layer<S> for AdmissionLayer {
    type Service = Admission<S>;

    fn layer(&self, inner: S) -> Admission<S> {
        Admission { inner, layer: self.clone() }
    }
}

#[derive(Clone)]
pub struct Admission<S> {
    inner: S,
    layer: AdmissionLayer,
}

impl<S, B, R> tower::Service<http::Request<B>> for Admission<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Send + 'static,
    S::Future: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = Method::of(request.uri().path());
        let start = Instant::now();
        let metrics = self.layer.metrics.clone();
        let refuse = |running: usize, what: &str| {
            let refused = tonic::Status::resource_exhausted(format!(
                "this server already runs {running} {what}; retry with backoff"
            ));
            metrics.call(method.label, refused.code(), start.elapsed());
            refused.into_http()
        };
        let mut permits = Vec::with_capacity(2);
        if method.admitted {
            match self.layer.in_flight.clone().try_acquire_owned() {
                Ok(permit) => permits.push(permit),
                Err(_) => {
                    let refused = refuse(self.layer.limit, "calls");
                    return Box::pin(async move { Ok(refused) });
                }
            }
        }
        if method.heavy {
            match self.layer.heavy.clone().try_acquire_owned() {
                Ok(permit) => permits.push(permit),
                Err(_) => {
                    let refused = refuse(crate::limits::MAX_HEAVY_IN_FLIGHT, "bulk or long calls");
                    return Box::pin(async move { Ok(refused) });
                }
            }
        }
        let call = self.inner.call(request);
        Box::pin(async move {
            let response = match method.deadline {
                Some(deadline) => match tokio::time::timeout(deadline, call).await {
                    Ok(response) => response,
                    Err(_) => Ok(tonic::Status::deadline_exceeded(format!(
                        "the server's deadline of {} s for {} passed",
                        deadline.as_secs(),
                        method.label
                    ))
                    .into_http()),
                },
                None => call.await,
            };
            drop(permits);
            if let Ok(r) = &response {
                // Errors come back trailers-only, with grpc-status in the headers; a unary
                // success carries it in the trailers, after these headers.
                let code = r
                    .headers()
                    .get("grpc-status")
                    .map(|v| tonic::Code::from_bytes(v.as_bytes()))
                    .unwrap_or(tonic::Code::Ok);
                metrics.call(method.label, code, start.elapsed());
            }
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_paths_share_one_label() {
        assert_eq!(Method::of("/quiver.v1.Search/Search").label, "quiver.v1.Search/Search");
        assert_eq!(Method::of("/x/../etc/passwd").label, "unknown");
        assert_eq!(Method::of("/quiver.v1.Search/Searchh").label, "unknown");
        assert!(!Method::of("/grpc.health.v1.Health/Check").admitted);
        assert!(Method::labels().any(|l| l == "unknown"));
    }
}
