//! A Rust client for a quiver engine: lazy connection that reconnects by itself, exponential
//! backoff with jitter, retries of UNAVAILABLE on idempotent calls, a bearer token on every
//! call, TLS for `https://` targets, and an optional health heartbeat that moves the client
//! off a server that went NOT_SERVING (drained) onto whatever the address now leads to.

use crate::error::{Error, Result};
use crate::proto::snapshot_client::SnapshotClient;
use crate::proto::{self, admin_client::AdminClient, ingest_client::IngestClient, search_client::SearchClient};
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub token: Option<String>,
    /// PEM CA to trust for `https://` targets (the system roots are not consulted).
    pub tls_ca: Option<Vec<u8>>,
    pub connect_timeout: Duration,
    /// Deadline of each short call (search, status, progress, manifest, drain), sent to the
    /// server as `grpc-timeout`; `None` waits as long as the call takes.
    pub timeout: Option<Duration>,
    /// Deadline of a verification or warm-up, which runs thousands of queries on the server.
    pub long_timeout: Duration,
    /// Attempts of an idempotent call, the first included.
    pub attempts: u32,
    pub backoff: Duration,
    pub max_backoff: Duration,
    pub max_message_bytes: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            token: None,
            tls_ca: None,
            connect_timeout: Duration::from_secs(5),
            timeout: Some(Duration::from_secs(30)),
            long_timeout: Duration::from_secs(30 * 60),
            attempts: 6,
            backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            max_message_bytes: 64 << 20,
        }
    }
}

/// The `authorization` metadata value for a bearer token (surrounding whitespace, such as a
/// Secret file's trailing newline, ignored); `None` when it is not valid header text.
pub fn bearer(token: &str) -> Option<MetadataValue<Ascii>> {
    format!("Bearer {}", token.trim()).parse().ok()
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct AddToken(Option<MetadataValue<Ascii>>);

impl Interceptor for AddToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(token) = &self.0 {
            request.metadata_mut().insert("authorization", token.clone());
        }
        Ok(request)
    }
}

type Authed = InterceptedService<Channel, AddToken>;

#[derive(Clone)]
pub struct Client {
    target: String,
    endpoint: Endpoint,
    channel: Arc<RwLock<Channel>>,
    token: AddToken,
    options: ClientOptions,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("target", &self.target).finish()
    }
}

impl Client {
    /// A client of `target` (`host:port`, `http://...` or `https://...`); nothing is sent
    /// until the first call. Call it inside a tokio runtime.
    pub fn new(target: &str, options: ClientOptions) -> Result<Client> {
        check_target(target)?;
        let url = if target.contains("://") { target.to_string() } else { format!("http://{target}") };
        let bad = |reason: String| Error::Remote { target: target.to_string(), reason };
        let mut endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| bad(format!("not a valid address: {e}")))?
            .connect_timeout(options.connect_timeout)
            .tcp_nodelay(true)
            // Fixed large windows rather than adaptive ones: adaptive windows make the client
            // send BDP pings while it reads a response, and a ping written just after a
            // draining server closed the connection fails the call that had completed.
            .initial_stream_window_size(Some(4 << 20))
            .initial_connection_window_size(Some(16 << 20))
            // Snapshot chunks are 4 MiB: receive them in 1 MiB frames, not 16 KiB ones.
            .max_frame_size(1u32 << 20)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true);
        if url.starts_with("https://") {
            let mut tls = tonic::transport::ClientTlsConfig::new();
            if let Some(ca) = &options.tls_ca {
                tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(ca));
            }
            endpoint = endpoint.tls_config(tls).map_err(|e| bad(format!("TLS: {e}")))?;
        }
        let token = match &options.token {
            Some(t) => Some(bearer(t).ok_or_else(|| bad("the token is not valid header text".into()))?),
            None => None,
        };
        let channel = endpoint.connect_lazy();
        Ok(Client {
            target: target.to_string(),
            endpoint,
            channel: Arc::new(RwLock::new(channel)),
            token: AddToken(token),
            options,
        })
    }

    pub fn target(&self) -> &str {
        &self.target
    }

    fn channel(&self) -> Authed {
        InterceptedService::new(self.channel.read().expect("channel lock").clone(), self.token.clone())
    }

    /// Drops the current connection; the next call opens a new one (through a load balancer,
    /// possibly to another backend).
    pub fn reconnect(&self) {
        *self.channel.write().expect("channel lock") = self.endpoint.connect_lazy();
    }

    pub fn search_client(&self) -> SearchClient<Authed> {
        let limit = self.options.max_message_bytes;
        SearchClient::new(self.channel()).max_decoding_message_size(limit).max_encoding_message_size(limit)
    }

    pub fn admin_client(&self) -> AdminClient<Authed> {
        AdminClient::new(self.channel()).max_decoding_message_size(self.options.max_message_bytes)
    }

    pub fn ingest_client(&self) -> IngestClient<Authed> {
        IngestClient::new(self.channel()).max_encoding_message_size(self.options.max_message_bytes)
    }

    pub fn snapshot_client(&self) -> SnapshotClient<Authed> {
        SnapshotClient::new(self.channel()).max_decoding_message_size(self.options.max_message_bytes)
    }

    /// Runs an idempotent call, retrying transport failures and UNAVAILABLE with exponential
    /// backoff and jitter, on a fresh connection after the first failure.
    pub async fn idempotent<T, F, Fut>(&self, mut call: F) -> Result<T, Status>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut delay = self.options.backoff;
        let mut attempt = 1;
        let mut resent = 0;
        loop {
            match call(self.clone()).await {
                // Never left this process (queued on a connection that a GOAWAY closed): sent
                // again at once on a new connection, whatever `attempts` says, as gRPC's
                // transparent retry does. The server never saw it, so nothing is hidden.
                Err(status) if resent < TRANSPARENT_RESENDS && never_sent(&status) => {
                    tracing::debug!(target = %self.target, %status, "resending a call that was never sent");
                    self.reconnect();
                    resent += 1;
                }
                Err(status) if attempt < self.options.attempts && retryable(&status) => {
                    tracing::debug!(target = %self.target, attempt, %status, "retrying");
                    if attempt > 1 {
                        self.reconnect();
                    }
                    let jitter = rand::random_range(0.5..1.5);
                    tokio::time::sleep(delay.mul_f64(jitter)).await;
                    delay = (delay * 2).min(self.options.max_backoff);
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    /// An idempotent unary call, `request` resent on each attempt, each with the short deadline.
    async fn unary<Req, Resp, Fut>(
        &self,
        request: Req,
        call: impl Fn(Client, tonic::Request<Req>) -> Fut,
    ) -> Result<Resp, Status>
    where
        Req: Clone,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let timeout = self.options.timeout;
        self.idempotent(|c| within(timeout, call(c, deadline(request.clone(), timeout))))
            .await
            .map(tonic::Response::into_inner)
    }

    /// A long call made once: a retry while the first attempt may still run on the server
    /// would run it twice (and a second verification beside the first skews its p99 gate).
    async fn once<Req, Resp, Fut>(
        &self,
        request: Req,
        call: impl FnOnce(Client, tonic::Request<Req>) -> Fut,
    ) -> Result<Resp, Status>
    where
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let timeout = Some(self.options.long_timeout);
        within(timeout, call(self.clone(), deadline(request, timeout))).await.map(tonic::Response::into_inner)
    }

    pub async fn search(&self, request: proto::SearchRequest) -> Result<proto::SearchResponse, Status> {
        self.unary(request, |c, r| async move { c.search_client().search(r).await }).await
    }

    pub async fn batch_search(&self, request: proto::BatchSearchRequest) -> Result<proto::BatchSearchResponse, Status> {
        self.unary(request, |c, r| async move { c.search_client().batch_search(r).await }).await
    }

    pub async fn status(&self, collection: &str) -> Result<proto::StatusResponse, Status> {
        let request = proto::StatusRequest { collection: collection.to_string() };
        self.unary(request, |c, r| async move { c.admin_client().status(r).await }).await
    }

    pub async fn warmup(&self, request: proto::WarmupRequest) -> Result<proto::WarmupResponse, Status> {
        self.once(request, |c, r| async move { c.admin_client().warmup(r).await }).await
    }

    pub async fn verify(&self, request: proto::VerifyRequest) -> Result<proto::VerifyResponse, Status> {
        self.once(request, |c, r| async move { c.admin_client().verify(r).await }).await
    }

    pub async fn drain(&self) -> Result<(), Status> {
        self.unary(proto::DrainRequest {}, |c, r| async move { c.admin_client().drain(r).await }).await.map(|_| ())
    }

    pub async fn progress(&self, collection: &str) -> Result<proto::ProgressResponse, Status> {
        let request = proto::ProgressRequest { collection: collection.to_string() };
        self.unary(request, |c, r| async move { c.ingest_client().progress(r).await }).await
    }

    pub async fn snapshot_manifest(&self, collection: &str) -> Result<proto::ManifestResponse, Status> {
        let request = proto::ManifestRequest { collection: collection.to_string() };
        self.unary(request, |c, r| async move { c.snapshot_client().manifest(r).await }).await
    }

    /// The health of `service` ("" = the whole server).
    pub async fn health(&self, service: &str) -> Result<ServingStatus, Status> {
        let request = tonic_health::pb::HealthCheckRequest { service: service.to_string() };
        let channel = self.channel.read().expect("channel lock").clone();
        let timeout = self.options.timeout;
        let response = within(timeout, HealthClient::new(channel).check(deadline(request, timeout))).await?;
        Ok(response.into_inner().status())
    }

    /// Checks the server's health every `interval` and reconnects when it is not SERVING, so
    /// a client pinned to a drained replica moves on even when idle. Stops with the returned
    /// handle.
    pub fn heartbeat(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        let client = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                match client.health("").await {
                    Ok(ServingStatus::Serving) => {}
                    other => {
                        tracing::debug!(target = %client.target, ?other, "not serving: reconnecting");
                        client.reconnect();
                    }
                }
            }
        })
    }
}

/// Refuses an address a gRPC client cannot use (`s3://...`, a path) at once, naming it: the
/// roles call this at start, so a wrong `--snapshot-from` or `--target` exits 2 instead of
/// being retried for minutes.
pub fn check_target(target: &str) -> Result<()> {
    let usable = match target.split_once("://") {
        Some((scheme, rest)) => matches!(scheme, "http" | "https") && !rest.is_empty(),
        None => !target.is_empty() && !target.starts_with('/') && target.contains(':'),
    };
    if usable {
        return Ok(());
    }
    Err(Error::Usage {
        flag: "address".into(),
        value: target.chars().take(200).collect(),
        reason: "not a gRPC address: expected host:port, http://host:port or https://host:port".into(),
    })
}

/// `request` with a deadline the server sees (`grpc-timeout`) and the client enforces.
fn deadline<T>(request: T, timeout: Option<Duration>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(request);
    if let Some(timeout) = timeout {
        request.set_timeout(timeout);
    }
    request
}

/// Enforces a deadline on the client side too, so a server that never answers cannot hold the
/// caller (the server ends the call at its own `grpc-timeout` first when it is alive).
async fn within<T>(timeout: Option<Duration>, call: impl Future<Output = Result<T, Status>>) -> Result<T, Status> {
    match timeout {
        Some(timeout) => tokio::time::timeout(timeout + Duration::from_secs(1), call)
            .await
            .unwrap_or_else(|_| Err(Status::deadline_exceeded(format!("no answer within {} s", timeout.as_secs())))),
        None => call.await,
    }
}

/// How often a call that never left this process is sent again.
const TRANSPARENT_RESENDS: u32 = 2;

/// Whether the call failed before any of it was sent: hyper cancels requests still queued on
/// a connection when that connection closes (a GOAWAY race). Such a call is safe to send
/// again, idempotent or not.
pub fn never_sent(status: &Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if let Some(e) = e.downcast_ref::<hyper::Error>() {
            return e.is_canceled();
        }
        source = e.source();
    }
    false
}

/// Failures a retry can fix: the server was unavailable, or the connection under the call
/// closed (a GOAWAY race, a reset) before an answer came; idempotent calls are safe to resend.
pub fn retryable(status: &Status) -> bool {
    status.code() == Code::Unavailable || raised_by_transport(status)
}

/// Whether our own transport raised `status` (connect refused or timed out, refused stream
/// after GOAWAY, connection closed mid-call) rather than the server sending it: a status the
/// server sent has no source, a local one carries the transport error, whatever its code.
pub fn raised_by_transport(status: &Status) -> bool {
    std::error::Error::source(status).is_some_and(|e| e.downcast_ref::<tonic::transport::Error>().is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusable_addresses_are_refused_at_once() {
        for ok in ["127.0.0.1:7700", "http://writer:7700", "https://v1-replicas.ns.svc:7700", "[::1]:7700"] {
            assert!(check_target(ok).is_ok(), "{ok}");
        }
        for bad in ["s3://bucket/v1", "gs://b/x", "/data/v1.mdb", "writer", "", "http://"] {
            let e = check_target(bad).unwrap_err().to_string();
            assert!(e.contains("not a gRPC address"), "{bad}: {e}");
        }
    }

    #[test]
    fn only_transport_failures_are_retried() {
        assert!(retryable(&Status::unavailable("down")));
        assert!(!retryable(&Status::cancelled("the caller gave up")));
        assert!(!retryable(&Status::invalid_argument("k = 0")));
        assert!(!retryable(&Status::not_found("nope")));
        assert!(!raised_by_transport(&Status::unavailable("draining")));
    }

    #[test]
    fn a_token_file_newline_is_not_part_of_the_bearer_header() {
        assert_eq!(bearer("s3cret\n").unwrap(), "Bearer s3cret");
        assert!(bearer("new\nline").is_none());
    }
}
