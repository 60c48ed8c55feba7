//! `quiver writer`: builds one collection, from --source at start or from Ingest pushes, writes
//! its snapshot and serves it (Snapshot), its progress (Ingest.Progress) and status (Admin).
//! Ready once the snapshot is written. A restart finds a sealed collection and serves it again;
//! anything half-imported was in a staging directory and is discarded, while the Ingest
//! streams it acknowledged stay in the spool for the next Seal.

use super::{Listeners, collection_node};
use crate::cli::WriterArgs;
use crate::error::{Error, Result};
use crate::import;
use crate::metrics::Metrics;
use crate::publish::Publisher;
use crate::serve::ingest::{IngestService, WritePace};
use crate::serve::termination;
use crate::spool::{RecordRules, Spool, SpoolLimits};
use std::sync::Arc;

pub fn run(a: WriterArgs) -> Result<i32> {
    let root = a.dir.data_dir.clone();
    // A source the writer could never read is refused now (exit 2), not after start-up.
    if let Some(source) = &a.source {
        import::source::check_source(source, &a.build.read_options())?;
    }
    super::serve_role(async {
        let config = a.serve.config()?;
        let metrics = Arc::new(Metrics::new());
        let node = collection_node(&root, &a.collection, metrics.clone()).await?;
        let listeners = Listeners::bind(&a.serve).await?;
        let options = a.build.options(&a.collection);
        let rules = RecordRules { dimensions: options.dimensions, metric: options.metric };
        let limits = SpoolLimits { max_stream_bytes: a.max_stream_bytes, max_spool_bytes: a.max_spool_bytes };
        // A writer with --source takes no pushes: no spool.
        let spool = match a.source {
            None => Some(Spool::open(&root, &a.collection, rules, limits)?),
            Some(_) => None,
        };
        let publisher = Arc::new(Publisher::new(&root, options, metrics));

        let recovered = {
            let publisher = publisher.clone();
            tokio::task::spawn_blocking(move || publisher.recover())
                .await
                .map_err(|e| Error::io("recovering", std::io::Error::other(e)))??
        };
        if let (Some(_), Some(spool)) = (&recovered, &spool) {
            // Sealed: what the spool holds is in the collection already.
            spool.discard();
        }
        if a.write_idle_secs == 0 {
            return Err(Error::Usage {
                flag: "--write-idle-secs".into(),
                value: "0".into(),
                reason: "a Write stream needs at least one second between batches".into(),
            });
        }
        let pace = WritePace {
            idle: std::time::Duration::from_secs(a.write_idle_secs),
            min_bytes_per_sec: a.write_min_bytes_per_sec,
        };
        let ingest = IngestService::new(node.clone(), publisher.clone(), spool, a.source.clone(), pace);
        if let Some((collection, info)) = recovered {
            tracing::info!("{} is sealed; serving snapshot sha256 {}", info.collection, info.sha256);
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
                        tracing::info!("{} sealed; snapshot sha256 {}", info.collection, info.sha256);
                        node.catalog.adopt(collection);
                        node.set_ready(true).await;
                    }
                    // The reason stays visible in Ingest.Progress; the process keeps serving it.
                    Ok(Err(e)) => tracing::error!("the import failed: {e}"),
                    Err(e) => tracing::error!("the import task failed: {e}"),
                }
            });
        } else {
            tracing::info!("waiting for Ingest pushes of {}", a.collection);
        }
        super::run(node, listeners, config, Some(ingest), termination()).await
    })?;
    Ok(0)
}
