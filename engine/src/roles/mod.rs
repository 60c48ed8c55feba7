//! The serving roles of the `quiver` binary and the jobs the operator runs: each takes a
//! configuration (built from the command line by [`crate::cli`], or by a test), turns it into a
//! [`ServingProcess`] with its services, and runs it until SIGTERM (`run`) or a given future
//! resolves (`run_until`).

pub mod jobs;
pub mod replica;
pub mod standalone;
pub mod writer;

use crate::catalog::Catalog;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::serve::{ServeConfig, ServingProcess, ingest::IngestService};
use crate::snapshot::SnapshotDir;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Where a serving role listens and how it serves there.
#[derive(Debug, Clone)]
pub struct ServeRole {
    /// gRPC.
    pub listen: SocketAddr,
    /// /metrics, /livez, /readyz and the console (none when absent).
    pub http_listen: Option<SocketAddr>,
    pub config: ServeConfig,
    /// Serve a non-loopback address without a token (refused otherwise).
    pub insecure: bool,
}

impl ServeRole {
    /// Refuses what would expose the role: a non-loopback address without a token, unless
    /// `insecure` says so.
    fn check_secure(&self) -> Result<()> {
        if self.config.token.is_none() && !self.insecure && !self.listen.ip().is_loopback() {
            return Err(Error::Usage {
                flag: "--listen".into(),
                value: self.listen.to_string(),
                reason: "a non-loopback address needs a bearer token (--token-file or --token); pass --insecure \
                         to serve it without one"
                    .into(),
            });
        }
        Ok(())
    }
}

/// The bound sockets of a role, bound before any slow start-up work so probes can connect.
pub struct Listeners {
    pub grpc: tokio::net::TcpListener,
    pub http: Option<tokio::net::TcpListener>,
}

impl Listeners {
    pub async fn bind(role: &ServeRole) -> Result<Listeners> {
        let bind = |addr| async move {
            tokio::net::TcpListener::bind(addr).await.map_err(|e| Error::io(format!("binding {addr}"), e))
        };
        let grpc = bind(role.listen).await?;
        let http = match role.http_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let local = |l: &tokio::net::TcpListener| l.local_addr().map(|a| a.to_string()).unwrap_or_default();
        // One parseable line, for scripts and tests that bind port 0.
        tracing::info!(
            "quiver listening grpc={} http={}",
            local(&grpc),
            http.as_ref().map(local).unwrap_or_else(|| "-".into())
        );
        Ok(Listeners { grpc, http })
    }
}

/// Serves gRPC (and HTTP when bound) for `process` until `stop` resolves; HTTP stops after gRPC
/// has drained, so probes keep answering NOT READY while calls finish.
pub async fn run(
    process: Arc<ServingProcess>,
    listeners: Listeners,
    config: ServeConfig,
    ingest: Option<IngestService>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let (http_stop, http_stopped) = tokio::sync::oneshot::channel::<()>();
    // The standalone role keeps the aliases; a writer's or replica's are the operator's.
    let flips = ingest.is_none() && process.default_collection.is_none();
    let console = crate::serve::console::Console::new(&config, flips, ingest.clone());
    let http = listeners.http.map(|listener| {
        tokio::spawn(crate::serve::http::serve(process.clone(), listener, console, async {
            let _ = http_stopped.await;
        }))
    });
    let served = crate::serve::serve(process, listeners.grpc, config, ingest, stop).await;
    let _ = http_stop.send(());
    if let Some(http) = http {
        http.await.map_err(|e| Error::io("HTTP server", std::io::Error::other(e)))??;
    }
    served
}

/// The process of a role that holds one collection under `root` (writer, replica): that collection
/// answers requests that name none, and its snapshot is served to peers.
pub async fn serving_process(
    root: &std::path::Path,
    collection: &str,
    metrics: Arc<Metrics>,
) -> Result<Arc<ServingProcess>> {
    crate::collection::builder::check_name(collection)?;
    std::fs::create_dir_all(root).map_err(|e| Error::io(format!("creating {}", root.display()), e))?;
    let mut process = ServingProcess::new(Arc::new(Catalog::open(root)?), metrics).await;
    process.default_collection = Some(collection.to_string());
    process.snapshots = Some(SnapshotDir::new(root));
    Ok(Arc::new(process))
}

/// A tokio runtime for a role.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new().map_err(|e| Error::io("starting the async runtime", e))
}

/// Runs a serving role to its end, then leaves: blocking work still running past the grace
/// period (a verification, a build) is not waited for, so SIGTERM's bound holds. A role that
/// would serve insecurely is refused first, before it touches its data directory.
pub fn serve_role<T>(serve: &ServeRole, role: impl Future<Output = Result<T>>) -> Result<T> {
    serve.check_secure()?;
    let runtime = runtime()?;
    let result = runtime.block_on(role);
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_public_address_needs_a_token_unless_insecure() {
        let open = ServeRole {
            listen: "0.0.0.0:7700".parse().unwrap(),
            http_listen: None,
            config: ServeConfig::default(),
            insecure: false,
        };
        let e = open.check_secure().unwrap_err().to_string();
        assert!(e.contains("--listen 0.0.0.0:7700") && e.contains("--insecure"), "{e}");
        assert!(ServeRole { insecure: true, ..open.clone() }.check_secure().is_ok());
        let token = ServeConfig { token: Some("t0k".into()), ..ServeConfig::default() };
        assert!(ServeRole { config: token, ..open.clone() }.check_secure().is_ok());
        assert!(ServeRole { listen: "127.0.0.1:7700".parse().unwrap(), ..open }.check_secure().is_ok());
    }
}
