//! `quiver standalone`: every collection and alias under one data directory, served from one
//! process; SERVING once what the aliases serve is preloaded.

use super::{Listeners, ServeRole};
use crate::catalog::Catalog;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::serve::{ServingProcess, termination};
use std::path::PathBuf;
use std::sync::Arc;

/// What `quiver standalone` serves, and how.
#[derive(Debug, Clone)]
pub struct StandaloneConfig {
    pub data_dir: PathBuf,
    pub serve: ServeRole,
}

/// Runs until SIGTERM or SIGINT (see [`run_until`]).
pub fn run(a: StandaloneConfig) -> Result<i32> {
    run_until(a, termination())
}

/// Runs until `stop` resolves, then drains and exits like on SIGTERM: how a test or an
/// embedding program starts the role from its configuration alone.
pub fn run_until(a: StandaloneConfig, stop: impl Future<Output = ()> + Send + 'static) -> Result<i32> {
    super::serve_role(&a.serve, async {
        let catalog = Arc::new(Catalog::open(&a.data_dir)?);
        let listeners = Listeners::bind(&a.serve).await?;
        let config = a.serve.config.clone();
        let process = Arc::new(ServingProcess::new(catalog.clone(), Arc::new(Metrics::new())).await);
        // Serve (NOT_SERVING) while preloading, so probes are answered meanwhile.
        let server = tokio::spawn(super::run(process.clone(), listeners, config, None, stop));
        // What the aliases serve is preloaded before SERVING, so no first query is a cold one.
        tokio::task::spawn_blocking(move || -> Result<()> {
            for (alias, _) in catalog.aliases()? {
                // A broken alias does not keep the others from being served; its requests
                // get the reason.
                match catalog.resolve(&alias).and_then(|c| c.preload().map(|stats| (c, stats))) {
                    Ok((c, stats)) => {
                        tracing::info!(alias, collection = c.name(), seconds = stats.seconds, "preloaded")
                    }
                    Err(e) => tracing::error!(alias, "not preloaded: {e}"),
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| Error::io("preloading", std::io::Error::other(e)))??;
        process.set_ready(true).await;
        tracing::info!("serving {}", a.data_dir.display());
        server.await.map_err(|e| Error::io("serving", std::io::Error::other(e)))?
    })?;
    Ok(0)
}
