//! What the operator asks running engine pods, behind traits so reconcile tests replace them:
//! the writer's progress (Ingest.Progress, then Admin.Status once sealed) and draining a
//! replica (Admin.Drain). The gRPC implementations use the engine's generated clients.

use crate::phase::WriterState;
use futures::future::BoxFuture;
use quiver_engine::serve::proto::admin_client::AdminClient;
use quiver_engine::serve::proto::ingest_client::IngestClient;
use quiver_engine::serve::proto::{DrainRequest, ProgressRequest, StatusRequest};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("connecting to {endpoint}: {message}")]
    Connect { endpoint: String, message: String },
    #[error("{call} on {endpoint}: {status}")]
    Call { call: &'static str, endpoint: String, status: tonic::Status },
}

/// Reads a writer's progress. `endpoint` is `http://<pod ip>:7700`.
pub trait WriterProbe: Send + Sync {
    /// `sealed` is Ingest.Progress's answer; whether the snapshot is published the caller
    /// knows from the pod's readiness.
    fn progress<'a>(
        &'a self,
        endpoint: &'a str,
        collection: &'a str,
        token: Option<&'a str>,
    ) -> BoxFuture<'a, Result<WriterState, EngineError>>;
}

/// Tells one replica to stop serving: health NOT_SERVING, GOAWAY, calls in flight finish.
pub trait Drainer: Send + Sync {
    fn drain<'a>(&'a self, endpoint: &'a str, token: Option<&'a str>) -> BoxFuture<'a, Result<(), EngineError>>;
}

/// The real engine, over gRPC.
#[derive(Debug, Clone)]
pub struct Grpc {
    pub timeout: Duration,
}

impl Default for Grpc {
    fn default() -> Self {
        Grpc { timeout: Duration::from_secs(5) }
    }
}

impl Grpc {
    async fn channel(&self, endpoint: &str) -> Result<tonic::transport::Channel, EngineError> {
        let connect =
            |e: &dyn std::fmt::Display| EngineError::Connect { endpoint: endpoint.into(), message: e.to_string() };
        tonic::transport::Endpoint::from_shared(endpoint.to_string())
            .map_err(|e| connect(&e))?
            .connect_timeout(self.timeout)
            .timeout(self.timeout)
            .connect()
            .await
            .map_err(|e| connect(&e))
    }
}

/// Maps Ingest.Progress's phase word to the operator's view of the writer.
pub fn writer_state(phase: &str, rows: u64, message: String) -> Option<WriterState> {
    Some(match phase {
        // Waiting for or receiving an ETL's pushes counts as importing: the import has begun.
        "waiting" | "receiving" | "importing" => WriterState::Importing { rows },
        "building" | "calibrating" => WriterState::Building,
        "snapshotting" => WriterState::Publishing,
        "failed" => WriterState::Failed { reason: message },
        // Sealed needs the count and setting from Admin.Status.
        "sealed" => return None,
        // A newer engine's phase this operator does not know: wait rather than guess.
        _ => WriterState::Unavailable,
    })
}

/// A request carrying the collection's bearer token, when it has one.
fn request<T>(message: T, token: Option<&str>, endpoint: &str) -> Result<tonic::Request<T>, EngineError> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        let value = quiver_engine::client::bearer(token).ok_or_else(|| EngineError::Connect {
            endpoint: endpoint.into(),
            message: "the token is not a valid header value".into(),
        })?;
        request.metadata_mut().insert("authorization", value);
    }
    Ok(request)
}

impl WriterProbe for Grpc {
    fn progress<'a>(
        &'a self,
        endpoint: &'a str,
        collection: &'a str,
        token: Option<&'a str>,
    ) -> BoxFuture<'a, Result<WriterState, EngineError>> {
        Box::pin(async move {
            let channel = self.channel(endpoint).await?;
            let call = |call, status| EngineError::Call { call, endpoint: endpoint.into(), status };
            let progress = IngestClient::new(channel.clone())
                .progress(request(ProgressRequest { collection: collection.into() }, token, endpoint)?)
                .await
                .map_err(|s| call("Ingest.Progress", s))?
                .into_inner();
            if let Some(state) = writer_state(&progress.phase, progress.rows, progress.message) {
                return Ok(state);
            }
            let status = AdminClient::new(channel)
                .status(request(StatusRequest { collection: collection.into() }, token, endpoint)?)
                .await
                .map_err(|s| call("Admin.Status", s))?
                .into_inner();
            Ok(WriterState::Sealed { count: status.count, setting: status.search_setting })
        })
    }
}

impl Drainer for Grpc {
    fn drain<'a>(&'a self, endpoint: &'a str, token: Option<&'a str>) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(async move {
            AdminClient::new(self.channel(endpoint).await?)
                .drain(request(DrainRequest {}, token, endpoint)?)
                .await
                .map_err(|status| EngineError::Call { call: "Admin.Drain", endpoint: endpoint.into(), status })?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_phases_map_to_writer_states() {
        assert_eq!(writer_state("importing", 7, String::new()), Some(WriterState::Importing { rows: 7 }));
        assert_eq!(writer_state("calibrating", 7, String::new()), Some(WriterState::Building));
        assert_eq!(writer_state("receiving", 7, String::new()), Some(WriterState::Importing { rows: 7 }));
        assert_eq!(writer_state("snapshotting", 7, String::new()), Some(WriterState::Publishing));
        assert_eq!(writer_state("failed", 0, "NaN".into()), Some(WriterState::Failed { reason: "NaN".into() }));
        assert_eq!(writer_state("sealed", 7, String::new()), None);
        assert_eq!(writer_state("compacting", 7, String::new()), Some(WriterState::Unavailable));
    }

    #[test]
    fn the_token_travels_as_a_bearer_header() {
        let r = request((), Some("s3cret\n"), "e").unwrap();
        assert_eq!(r.metadata().get("authorization").unwrap(), "Bearer s3cret");
        assert!(request((), None, "e").unwrap().metadata().get("authorization").is_none());
    }

    #[tokio::test]
    async fn an_unreachable_writer_is_a_connect_error() {
        let grpc = Grpc { timeout: Duration::from_millis(300) };
        // Port 1 on localhost refuses connections.
        let err = grpc.progress("http://127.0.0.1:1", "c", None).await.unwrap_err();
        assert!(matches!(err, EngineError::Connect { .. }), "{err}");
    }
}
