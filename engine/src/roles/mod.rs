//! The serving roles of the `quiver` binary and the jobs the operator runs: each turns its
//! command-line arguments into a [`Node`] with its services, and runs it until SIGTERM.

pub mod jobs;
pub mod replica;
pub mod standalone;
pub mod writer;

use crate::alias::Catalog;
use crate::cli::{ServeArgs, TokenArgs};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::serve::{Node, ServeConfig, ingest::IngestService};
use crate::snapshot::Store;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

impl TokenArgs {
    /// The token from --token-file (trailing newline ignored) or --token.
    pub fn read(&self) -> Result<Option<String>> {
        match (&self.token_file, &self.token) {
            (Some(path), _) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| Error::io(format!("reading the token file {}", path.display()), e))?;
                let token = text.trim().to_string();
                if token.is_empty() {
                    return Err(Error::io(
                        format!("reading the token file {}", path.display()),
                        std::io::Error::other("the file is empty"),
                    ));
                }
                Ok(Some(token))
            }
            (None, Some(token)) if token.trim().is_empty() => Err(Error::Usage {
                flag: "--token".into(),
                value: "(empty)".into(),
                reason: "an empty bearer token would let anyone in; give a token or none".into(),
            }),
            (None, Some(token)) => Ok(Some(token.trim().to_string())),
            (None, None) => Ok(None),
        }
    }
}

/// The bytes of a PEM file (certificate, key, CA).
fn read_pem(path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))
}

/// The CA a client trusts for `https://` targets, when one is given.
pub fn read_ca(path: Option<&std::path::Path>) -> Result<Option<Vec<u8>>> {
    path.map(read_pem).transpose()
}

impl ServeArgs {
    pub fn config(&self) -> Result<ServeConfig> {
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some((read_pem(cert)?, read_pem(key)?)),
            _ => None,
        };
        let token = self.token.read()?;
        if token.is_none() && !self.insecure && !self.listen.ip().is_loopback() {
            return Err(Error::Usage {
                flag: "--listen".into(),
                value: self.listen.to_string(),
                reason: "a non-loopback address needs a bearer token (--token-file or --token); pass --insecure \
                         to serve it without one"
                    .into(),
            });
        }
        Ok(ServeConfig {
            max_connection_age: self.max_connection_age_secs.map(Duration::from_secs),
            max_message_bytes: self.max_message_bytes,
            token,
            search_without_token: self.search_without_token,
            tls,
            drain_delay: Duration::from_secs(self.drain_delay_secs),
            shutdown_grace: Duration::from_secs(self.shutdown_grace_secs),
            max_in_flight: self.max_in_flight,
        })
    }
}

/// The bound sockets of a role, bound before any slow start-up work so probes can connect.
pub struct Listeners {
    pub grpc: tokio::net::TcpListener,
    pub http: Option<tokio::net::TcpListener>,
}

impl Listeners {
    pub async fn bind(args: &ServeArgs) -> Result<Listeners> {
        let bind = |addr| async move {
            tokio::net::TcpListener::bind(addr).await.map_err(|e| Error::io(format!("binding {addr}"), e))
        };
        let grpc = bind(args.listen).await?;
        let http = match args.http_listen {
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

/// Serves gRPC (and HTTP when bound) for `node` until `stop` resolves; HTTP stops after gRPC
/// has drained, so probes keep answering NOT READY while calls finish.
pub async fn run(
    node: Arc<Node>,
    listeners: Listeners,
    config: ServeConfig,
    ingest: Option<IngestService>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let (http_stop, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let http = listeners.http.map(|listener| {
        tokio::spawn(crate::serve::http::serve(node.clone(), listener, async {
            let _ = http_stopped.await;
        }))
    });
    let served = crate::serve::serve(node, listeners.grpc, config, ingest, stop).await;
    let _ = http_stop.send(());
    if let Some(http) = http {
        http.await.map_err(|e| Error::io("HTTP server", std::io::Error::other(e)))??;
    }
    served
}

/// The node of a role that holds one collection under `root` (writer, replica): that collection
/// answers requests that name none, and its snapshot is served to peers.
pub async fn collection_node(root: &std::path::Path, collection: &str, metrics: Arc<Metrics>) -> Result<Arc<Node>> {
    crate::collection::builder::check_name(collection)?;
    std::fs::create_dir_all(root).map_err(|e| Error::io(format!("creating {}", root.display()), e))?;
    let mut node = Node::new(Arc::new(Catalog::open(root)?), metrics).await;
    node.default_collection = Some(collection.to_string());
    node.snapshots = Some(Store::new(root));
    Ok(Arc::new(node))
}

/// A tokio runtime for a role.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new().map_err(|e| Error::io("starting the async runtime", e))
}

/// Runs a serving role to its end, then leaves: blocking work still running past the grace
/// period (a verification, a build) is not waited for, so SIGTERM's bound holds.
pub fn serve_role<T>(role: impl Future<Output = Result<T>>) -> Result<T> {
    let runtime = runtime()?;
    let result = runtime.block_on(role);
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

#[cfg(test)]
mod tests {
    use crate::cli::TokenArgs;

    #[test]
    fn an_empty_token_is_refused() {
        let empty = TokenArgs { token_file: None, token: Some(" \n".into()) };
        assert!(empty.read().unwrap_err().to_string().contains("--token (empty)"));
        assert_eq!(TokenArgs { token_file: None, token: Some("t0k\n".into()) }.read().unwrap().as_deref(), Some("t0k"));
    }
}
