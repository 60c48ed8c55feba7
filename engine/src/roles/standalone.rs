//! `quiver standalone`: every collection and alias under one data directory, served from one
//! process; SERVING once what the aliases serve is preloaded.

use super::{Listeners, ServeRole};
use crate::alias::Catalog;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::serve::{Node, termination};
use std::path::PathBuf;
use std::sync::Arc;

/// What `quiver standalone` serves, and how.
#[derive(Debug, Clone)]
pub struct StandaloneConfig {
    pub data_dir: PathBuf,
    pub serve: ServeRole,
}

pub fn run(a: StandaloneConfig) -> Result<i32> {
    super::serve_role(&a.serve, async {
        let catalog = Arc::new(Catalog::open(&a.data_dir)?);
        let listeners = Listeners::bind(&a.serve).await?;
        let config = a.serve.config.clone();
        let node = Arc::new(Node::new(catalog.clone(), Arc::new(Metrics::new())).await);
        // Serve (NOT_SERVING) while preloading, so probes are answered meanwhile.
        let server = tokio::spawn(super::run(node.clone(), listeners, config, None, termination()));
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
        node.set_ready(true).await;
        tracing::info!("serving {}", a.data_dir.display());
        server.await.map_err(|e| Error::io("serving", std::io::Error::other(e)))?
    })?;
    Ok(0)
}
