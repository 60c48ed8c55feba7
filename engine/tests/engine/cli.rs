//! The `quiver` binary driven as a process: exit codes, JSON on stdout, errors on stderr.

use std::path::Path;
use std::process::{Command, Output};

fn quiver(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quiver")).args(args).output().expect("quiver runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn data(dir: &Path) -> String {
    dir.display().to_string()
}

#[test]
fn import_search_verify_and_flip_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let d = data(dir.path());
    let base = dir.path().join("base.npy").display().to_string();
    let out = quiver(&["generate", "--out", &base, "--vectors", "2000", "--dims", "24"]);
    assert!(out.status.success(), "{}", stderr(&out));

    let out = quiver(&["import", "--data-dir", &d, "--name", "v1", "--source", &base]);
    assert!(out.status.success(), "{}", stderr(&out));
    let manifest: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(manifest["count"], 2000);
    assert_eq!(manifest["dimensions"], 24);

    let query = serde_json::to_string(&vec![0.3f32; 24]).unwrap();
    let out = quiver(&["search", "--data-dir", &d, "--collection", "v1", "--vector", &query, "-k", "4"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let hits: Vec<serde_json::Value> = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(hits.len(), 4);

    let out = quiver(&["search", "--data-dir", &d, "--collection", "v1", "--vector", &query, "-k", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("field `k` = 0"), "{}", stderr(&out));

    let report = dir.path().join("verify.json");
    let out = quiver(&[
        "verify",
        "--data-dir",
        &d,
        "--collection",
        "v1",
        "--expected-count",
        "2000",
        "--min-recall",
        "0.8",
        "--sample",
        "30",
        "--output",
        &report.display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let written: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(written["passed"], true);

    let out = quiver(&["verify", "--data-dir", &d, "--collection", "v1", "--expected-count", "1999", "--sample", "20"]);
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let count = json["gates"].as_array().unwrap().iter().find(|c| c["name"] == "count").unwrap();
    assert_eq!((count["passed"].as_bool(), count["measured"].as_f64()), (Some(false), Some(2000.0)));

    let out = quiver(&[
        "alias",
        "flip",
        "--data-dir",
        &d,
        "products",
        "v1",
        "--expected-count",
        "2000",
        "--min-recall",
        "0.8",
        "--sample",
        "20",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = quiver(&["import", "--data-dir", &d, "--name", "v2", "--source", &base]);
    assert!(out.status.success());
    let out = quiver(&["alias", "flip", "--data-dir", &d, "products", "v2", "--expected-count", "5", "--sample", "20"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("flip") || stderr(&out).contains("failed verification"), "{}", stderr(&out));
    let out = quiver(&["alias", "show", "--data-dir", &d, "products"]);
    let record: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(record["collection"], "v1");

    let out = quiver(&["search", "--data-dir", &d, "--alias", "products", "--vector", &query, "-k", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));

    let out = quiver(&["import", "--data-dir", &d, "--name", "v1", "--source", &base]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("is sealed"), "{}", stderr(&out));

    let out = quiver(&["inspect", "--data-dir", &d, "--collection", "v1"]);
    let inspect: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(inspect["partitions"][0][1], 2000);
}

#[test]
fn bad_file_errors_name_file_and_row() {
    let dir = tempfile::tempdir().unwrap();
    let d = data(dir.path());
    let path = dir.path().join("bad.fvecs");
    let mut bytes = Vec::new();
    for row in 0..3 {
        let dims: i32 = if row == 2 { 5 } else { 4 };
        bytes.extend(dims.to_le_bytes());
        for _ in 0..dims {
            bytes.extend(0.5f32.to_le_bytes());
        }
    }
    std::fs::write(&path, bytes).unwrap();
    let out = quiver(&["import", "--data-dir", &d, "--name", "bad", "--source", &path.display().to_string()]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("bad.fvecs: row 2: field `dimension` = 5"), "{err}");
    assert!(!dir.path().join("bad").exists());
}

#[test]
fn demo_runs_the_rebuild_cycle_without_failed_queries() {
    let out = quiver(&["demo", "--vectors", "3000", "--dims", "32", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["failed_queries"], 0);
    assert_eq!(report["alias_target"], "products-v2");
    assert_eq!(report["alias_previous"], "products-v1");
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[2]["alias_flipped"], false);
    assert!(rows[2]["refusal"].as_str().unwrap().contains("count"));
    assert!(report["queries_during_rebuild"].as_u64().unwrap() > 0);
}

/// One log filter for both binaries: `RUST_LOG`. The import's "sealed" line is at info level
/// in the collection module, which the default filter leaves out.
#[test]
fn rust_log_sets_the_log_filter() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.npy").display().to_string();
    assert!(quiver(&["generate", "--out", &base, "--vectors", "300", "--dims", "8"]).status.success());
    let import = |name: &str, filter: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_quiver"));
        command.env_remove("RUST_LOG").args(["import", "--data-dir", &data(dir.path()), "--name", name]);
        command.args(["--source", &base, "--quality", "10"]);
        if let Some(filter) = filter {
            command.env("RUST_LOG", filter);
        }
        let out = command.output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        stderr(&out)
    };
    assert!(!import("quiet", None).contains("sealed"));
    let logs = import("loud", Some("info"));
    assert!(logs.lines().any(|l| l.contains("INFO") && l.contains("sealed") && l.contains("loud")), "{logs}");
}
