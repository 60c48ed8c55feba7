//! `quiver writer`: builds one collection, from --source at start or from Ingest pushes, writes
//! its snapshot and serves it (Snapshot), its progress (Ingest.Progress) and status (Admin).
//! Ready once the snapshot is written. A restart finds a sealed collection and serves it again;
//! anything half-imported was in a staging directory or spool and is discarded.

use super::{Listeners, runtime};
use crate::alias::Catalog;
use crate::cli::WriterArgs;
use crate::error::{Error, Result};
use crate::import;
use crate::metrics::Metrics;
use crate::publish::Publisher;
use crate::serve::ingest::IngestService;
use crate::serve::{Node, termination};
use crate::snapshot::Store;
use std::sync::Arc;

pub fn run(a: WriterArgs) -> Result<i32> {
    crate::collection::builder::check_name(&a.collection)?;
    let root = a.dir.data_dir.clone();
    std::fs::create_dir_all(&root).map_err(|e| Error::io(format!("creating {}", root.display()), e))?;
    runtime()?.block_on(async {
        let config = a.serve.config()?;
        let listeners = Listeners::bind(&a.serve).await?;
        let metrics = Arc::new(Metrics::new());
        let mut node = Node::new(Arc::new(Catalog::open(&root)?), metrics.clone()).await;
        node.default_collection = Some(a.collection.clone());
        node.snapshots = Some(Store::new(&root));
        let node = Arc::new(node);
        let publisher = Arc::new(Publisher::new(&root, a.build.options(&a.collection), metrics));
        let ingest = IngestService::new(node.clone(), publisher.clone(), &root, a.source.clone());

        let recovered = {
            let publisher = publisher.clone();
            tokio::task::spawn_blocking(move || publisher.recover())
                .await
                .map_err(|e| Error::io("recovering", std::io::Error::other(e)))??
        };
        if let Some((collection, info)) = recovered {
            eprintln!("quiver writer: {} is sealed; serving snapshot sha256 {}", info.collection, info.sha256);
            node.catalog.adopt(collection);
            node.set_ready(true).await;
        } else if let Some(source) = a.source.clone() {
            let read = a.build.read_options();
            let (node, publisher) = (node.clone(), publisher.clone());
            tokio::spawn(async move {
                let built = tokio::task::spawn_blocking(move || {
                    let records = import::read(&source, &read)?;
                    publisher.publish(records)
                })
                .await;
                match built {
                    Ok(Ok((collection, info))) => {
                        eprintln!("quiver writer: {} sealed; snapshot sha256 {}", info.collection, info.sha256);
                        node.catalog.adopt(collection);
                        node.set_ready(true).await;
                    }
                    // The reason stays visible in Ingest.Progress; the process keeps serving it.
                    Ok(Err(e)) => eprintln!("error: quiver writer: the import failed: {e}"),
                    Err(e) => eprintln!("error: quiver writer: the import task failed: {e}"),
                }
            });
        } else {
            eprintln!("quiver writer: waiting for Ingest pushes of {}", a.collection);
        }
        super::run(node, listeners, config, Some(ingest), termination()).await
    })?;
    Ok(0)
}
