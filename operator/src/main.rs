//! `quiver-operator`: reconciles VectorCollection and CollectionAlias objects.

use clap::Parser;
use quiver_operator::run::{Config, run};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,kube=warn"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    if config.log_json {
        logs.json().init();
    } else {
        logs.init();
    }
    run(config).await
}
