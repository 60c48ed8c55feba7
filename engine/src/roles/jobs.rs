//! The jobs the operator runs against live replicas: `quiver warmup --target` and
//! `quiver verify --target`. Each prints its JSON result, writes it to the result file (a
//! Kubernetes Job's termination message) and exits non-zero when a gate fails.

use super::runtime;
use crate::error::{Error, Result};
use crate::serve::proto;
use crate::types::VerifyReport;
use crate::verify::{ExpectedCount, VerifyOptions};
use quiver_api::client::{Client, ClientOptions};
use std::path::{Path, PathBuf};

/// The running engine a job calls, and where its result goes.
#[derive(Debug, Clone)]
pub struct Remote {
    /// gRPC address, e.g. `http://replica:7700`.
    pub target: String,
    /// The collection (or alias) the job is about.
    pub collection: String,
    /// The token and CA the target wants.
    pub client: ClientOptions,
    /// Also written here (outside a pod this usually fails, which is reported only).
    pub result_file: PathBuf,
}

impl Remote {
    fn error(&self) -> impl Fn(tonic::Status) -> Error + '_ {
        move |s| Error::Remote { target: self.target.clone(), reason: format!("{}: {}", s.code(), s.message()) }
    }

    fn unreadable(&self, what: &str, e: serde_json::Error) -> Error {
        Error::Remote { target: self.target.clone(), reason: format!("unreadable {what}: {e}") }
    }
}

/// Writes a job's result where Kubernetes reads termination messages; outside a pod that file
/// usually cannot be created, which is reported but does not change the outcome.
fn write_result(path: &Path, json: &str) {
    if let Err(e) = std::fs::write(path, json) {
        eprintln!("warning: could not write the result to {}: {e}", path.display());
    }
}

pub fn warmup(remote: &Remote, max_queries: usize) -> Result<i32> {
    let runtime = runtime()?;
    let _entered = runtime.enter();
    let client = Client::new(&remote.target, remote.client.clone())?;
    let request = proto::WarmupRequest { collection: remote.collection.clone(), max_queries: max_queries as u32 };
    let response = runtime.block_on(client.warmup(request)).map_err(remote.error())?;
    let report: serde_json::Value =
        serde_json::from_str(&response.report_json).map_err(|e| remote.unreadable("warm-up report", e))?;
    let json = serde_json::to_string_pretty(&report).expect("JSON values serialize");
    println!("{json}");
    write_result(&remote.result_file, &json);
    Ok(0)
}

/// Verifies on the target; `output` also gets the report.
pub fn verify(remote: &Remote, options: VerifyOptions, output: Option<&Path>) -> Result<i32> {
    // The count query runs here, where the job's database credentials are; the replica
    // checks its count against the answer.
    let expected = ExpectedCount::of(&options);
    let runtime = runtime()?;
    let _entered = runtime.enter();
    let client = Client::new(&remote.target, remote.client.clone())?;
    let request = proto::VerifyRequest {
        collection: remote.collection.clone(),
        expected_count: expected.count(),
        min_recall: options.min_recall,
        max_p99_ms: options.max_p99_ms,
        k: options.k as u32,
        sample: options.sample as u32,
        queries: options.queries.into_iter().map(|values| proto::Vector { values }).collect(),
    };
    let response = runtime.block_on(client.verify(request)).map_err(remote.error())?;
    let mut report: VerifyReport =
        serde_json::from_str(&response.report_json).map_err(|e| remote.unreadable("verification report", e))?;
    match &expected {
        ExpectedCount::Answered { from, .. } => {
            report.gates.iter_mut().filter(|g| g.name == "count").for_each(|g| g.threshold_from = Some(from.clone()));
        }
        ExpectedCount::Unanswered(_) => {
            let count = runtime.block_on(client.status(&remote.collection)).map_err(remote.error())?.count;
            report.gates.insert(0, expected.gate(count).expect("an unanswered query has a gate"));
            report.passed = false;
        }
        ExpectedCount::None | ExpectedCount::Fixed(_) => {}
    }
    let json = crate::verify::emit(&report, output)?;
    write_result(&remote.result_file, &json);
    Ok(crate::verify::exit_code(&report))
}
