use clap::Parser;
use quiver_engine::cli::{Cli, run};
use tracing_subscriber::EnvFilter;

fn main() {
    let cli = Cli::parse();
    // RUST_LOG, as for the operator: one variable for both binaries.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("warn,quiver_engine::roles=info,quiver_engine::serve=info,quiver_engine::snapshot=info,quiver_engine::publish=info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if cli.log_json {
        logs.json().init();
    } else {
        logs.init();
    }
    // Fault points (test builds only) stay configured for the whole run.
    let faults = quiver_engine::fault::setup();
    let result = run(cli);
    drop(faults);
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    }
}
