//! The jobs the operator runs against live replicas: `quiver warmup --target` and
//! `quiver verify --target`. Each prints its JSON result, writes it to the result file (a
//! Kubernetes Job's termination message) and exits non-zero when a gate fails.

use super::runtime;
use crate::cli::{GateArgs, RemoteArgs};
use crate::error::{Error, Result};
use crate::serve::proto;
use crate::types::VerifyReport;
use quiver_api::client::{Client, ClientOptions};
use std::path::Path;

fn client(target: &str, remote: &RemoteArgs) -> Result<Client> {
    let tls_ca = super::read_ca(remote.tls_ca.as_deref())?;
    Ok(Client::new(target, ClientOptions { token: remote.token.read()?, tls_ca, ..Default::default() })?)
}

fn remote_error(target: &str) -> impl Fn(tonic::Status) -> Error + '_ {
    move |s| Error::Remote { target: target.to_string(), reason: format!("{}: {}", s.code(), s.message()) }
}

/// Writes a job's result where Kubernetes reads termination messages; outside a pod that file
/// usually cannot be created, which is reported but does not change the outcome.
fn write_result(path: &Path, json: &str) {
    if let Err(e) = std::fs::write(path, json) {
        eprintln!("warning: could not write the result to {}: {e}", path.display());
    }
}

pub fn warmup(target: &str, collection: &str, max_queries: usize, remote: &RemoteArgs) -> Result<i32> {
    let runtime = runtime()?;
    let _entered = runtime.enter();
    let client = client(target, remote)?;
    let response = runtime.block_on(
        client.warmup(proto::WarmupRequest { collection: collection.to_string(), max_queries: max_queries as u32 }),
    );
    let response = response.map_err(remote_error(target))?;
    let report: serde_json::Value = serde_json::from_str(&response.report_json)
        .map_err(|e| Error::Remote { target: target.to_string(), reason: format!("unreadable warm-up report: {e}") })?;
    let json = serde_json::to_string_pretty(&report).expect("JSON values serialize");
    println!("{json}");
    write_result(&remote.result_file, &json);
    Ok(0)
}

pub fn verify(target: &str, collection: &str, gate: &GateArgs, remote: &RemoteArgs) -> Result<i32> {
    let runtime = runtime()?;
    let _entered = runtime.enter();
    let client = client(target, remote)?;
    let options = gate.options()?;
    let request = proto::VerifyRequest {
        collection: collection.to_string(),
        expected_count: options.expected_count,
        min_recall: options.min_recall,
        max_p99_ms: options.max_p99_ms,
        k: options.k as u32,
        sample: options.sample as u32,
        queries: options.queries.into_iter().map(|values| proto::Vector { values }).collect(),
    };
    let response = runtime.block_on(client.verify(request)).map_err(remote_error(target))?;
    let report: VerifyReport = serde_json::from_str(&response.report_json).map_err(|e| Error::Remote {
        target: target.to_string(),
        reason: format!("unreadable verification report: {e}"),
    })?;
    let json = crate::verify::emit(&report, gate.output.as_deref())?;
    write_result(&remote.result_file, &json);
    Ok(if report.passed { 0 } else { 1 })
}
