//! `quiver standalone`: every collection and alias under one data directory, served from one
//! process, ready at once.

use super::Listeners;
use crate::alias::Catalog;
use crate::cli::StandaloneArgs;
use crate::error::Result;
use crate::metrics::Metrics;
use crate::serve::{Node, termination};
use std::sync::Arc;

pub fn run(a: StandaloneArgs) -> Result<i32> {
    super::serve_role(async {
        let config = a.serve.config()?;
        let catalog = Arc::new(Catalog::open(&a.dir.data_dir)?);
        let listeners = Listeners::bind(&a.serve).await?;
        let node = Arc::new(Node::new(catalog, Arc::new(Metrics::new())).await);
        node.set_ready(true).await;
        tracing::info!("serving {}", a.dir.data_dir.display());
        super::run(node, listeners, config, None, termination()).await
    })?;
    Ok(0)
}
