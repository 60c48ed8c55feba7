//! What the operator asks running engine pods, behind traits so reconcile tests replace them:
//! the writer's progress (Ingest.Progress, then Admin.Status once sealed) and draining a
//! replica (Admin.Drain). The gRPC implementations use the engine's own client.

use crate::phase::WriterState;
use futures::future::BoxFuture;
use quiver_api::client::{Client, ClientOptions, raised_by_transport};
use quiver_api::proto::WriterPhase;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("connecting to {endpoint}: {message}")]
    Connect { endpoint: String, message: String },
    #[error("{call} on {endpoint}: {status}")]
    Call { call: &'static str, endpoint: String, status: tonic::Status },
}

impl ProbeError {
    /// The pod refused the token (a user's Secret rotated since it was read).
    pub fn token_refused(&self) -> bool {
        matches!(self, ProbeError::Call { status, .. } if status.code() == tonic::Code::Unauthenticated)
    }
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
    ) -> BoxFuture<'a, Result<WriterState, ProbeError>>;
}

/// Tells one replica to stop serving: health NOT_SERVING, GOAWAY, calls in flight finish.
pub trait Drainer: Send + Sync {
    fn drain<'a>(&'a self, endpoint: &'a str, token: Option<&'a str>) -> BoxFuture<'a, Result<(), ProbeError>>;
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
    /// The engine's client, with one attempt and a deadline: a reconcile reports an
    /// unreachable pod and requeues rather than sit in client retries.
    fn client(&self, endpoint: &str, token: Option<&str>) -> Result<Client, ProbeError> {
        let options = ClientOptions {
            token: token.map(str::to_string),
            connect_timeout: self.timeout,
            timeout: Some(self.timeout),
            attempts: 1,
            ..ClientOptions::default()
        };
        Client::new(endpoint, options)
            .map_err(|e| ProbeError::Connect { endpoint: endpoint.into(), message: e.to_string() })
    }
}

/// A failed call: `Connect` when the pod was not reached (the status was raised by our own
/// transport), `Call` when the engine answered with an error.
fn failed(call: &'static str, endpoint: &str, status: tonic::Status) -> ProbeError {
    if raised_by_transport(&status) {
        ProbeError::Connect { endpoint: endpoint.into(), message: status.message().to_string() }
    } else {
        ProbeError::Call { call, endpoint: endpoint.into(), status }
    }
}

/// Maps Ingest.Progress's phase to the operator's view of the writer.
pub fn writer_state(phase: WriterPhase, rows: u64, message: String) -> Option<WriterState> {
    Some(match phase {
        // Waiting for or receiving an ETL's pushes counts as importing: the import has begun.
        WriterPhase::Waiting | WriterPhase::Receiving | WriterPhase::Importing => WriterState::Importing { rows },
        WriterPhase::Building | WriterPhase::Calibrating => WriterState::Building,
        WriterPhase::Snapshotting => WriterState::Publishing,
        WriterPhase::Restoring => WriterState::Restoring { progress: message },
        WriterPhase::Failed => WriterState::Failed { reason: message },
        // Sealed needs the count and setting from Admin.Status.
        WriterPhase::Sealed => return None,
        // Unset, or a newer engine's phase this operator does not know: wait rather than guess.
        WriterPhase::Unspecified => WriterState::Unavailable,
    })
}

impl WriterProbe for Grpc {
    fn progress<'a>(
        &'a self,
        endpoint: &'a str,
        collection: &'a str,
        token: Option<&'a str>,
    ) -> BoxFuture<'a, Result<WriterState, ProbeError>> {
        Box::pin(async move {
            let client = self.client(endpoint, token)?;
            let progress = client.progress(collection).await.map_err(|s| failed("Ingest.Progress", endpoint, s))?;
            if let Some(state) = writer_state(progress.phase(), progress.rows, progress.message) {
                return Ok(state);
            }
            let status = client.status(collection).await.map_err(|s| failed("Admin.Status", endpoint, s))?;
            let stored = progress.stored.map(|s| crate::crd::StoredSnapshot {
                location: s.location,
                sha256: s.sha256,
                bytes: s.bytes,
            });
            // Empty from an engine too old to report it; anything but a sha256 is not one (it would
            // reach every replica's environment and fail them all).
            let sha256 = Some(progress.snapshot_sha256).filter(|s| quiver_api::types::is_sha256_hex(s));
            Ok(WriterState::Sealed { count: status.count, setting: status.search_setting, stored, sha256 })
        })
    }
}

impl Drainer for Grpc {
    fn drain<'a>(&'a self, endpoint: &'a str, token: Option<&'a str>) -> BoxFuture<'a, Result<(), ProbeError>> {
        Box::pin(
            async move { self.client(endpoint, token)?.drain().await.map_err(|s| failed("Admin.Drain", endpoint, s)) },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quiver_api::proto::ProgressResponse;

    #[test]
    fn progress_phases_map_to_writer_states() {
        assert_eq!(writer_state(WriterPhase::Importing, 7, String::new()), Some(WriterState::Importing { rows: 7 }));
        assert_eq!(writer_state(WriterPhase::Calibrating, 7, String::new()), Some(WriterState::Building));
        assert_eq!(writer_state(WriterPhase::Receiving, 7, String::new()), Some(WriterState::Importing { rows: 7 }));
        assert_eq!(writer_state(WriterPhase::Snapshotting, 7, String::new()), Some(WriterState::Publishing));
        assert_eq!(
            writer_state(WriterPhase::Failed, 0, "NaN".into()),
            Some(WriterState::Failed { reason: "NaN".into() })
        );
        assert_eq!(writer_state(WriterPhase::Sealed, 7, String::new()), None);
        assert_eq!(
            writer_state(WriterPhase::Restoring, 0, "5 of 9 bytes".into()),
            Some(WriterState::Restoring { progress: "5 of 9 bytes".into() })
        );
        // A phase from a newer engine decodes as Unspecified: the operator waits.
        let newer = ProgressResponse { phase: 99, ..Default::default() };
        assert_eq!(writer_state(newer.phase(), 7, String::new()), Some(WriterState::Unavailable));
    }

    #[tokio::test]
    async fn an_unreachable_writer_is_a_connect_error() {
        let grpc = Grpc { timeout: Duration::from_millis(300) };
        // Port 1 on localhost refuses connections.
        let err = grpc.progress("http://127.0.0.1:1", "c", None).await.unwrap_err();
        assert!(matches!(err, ProbeError::Connect { .. }), "{err}");
    }
}
