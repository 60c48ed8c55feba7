//! Parquet files as ETLs write them: pyarrow (PyPI, which `.ci/run` installs and names in
//! `QUIVER_PYTHON`).

use std::path::Path;
use std::process::Command;

/// The Python with pyarrow: `QUIVER_PYTHON` (set by `.ci/run`), else `python3`. Without pyarrow
/// the tests print SKIPPED, unless `QUIVER_REQUIRE_TOOLS` is set (CI), where they fail.
pub fn python() -> Option<String> {
    let python = std::env::var("QUIVER_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&python).args(["-c", "import pyarrow"]).output().is_ok_and(|o| o.status.success());
    if ok {
        return Some(python);
    }
    assert!(std::env::var_os("QUIVER_REQUIRE_TOOLS").is_none(), "{python} has no pyarrow, and CI requires it");
    eprintln!("SKIPPED: {python} has no pyarrow (pip install pyarrow, or set QUIVER_PYTHON)");
    None
}

/// Runs a pyarrow script with `dir` as its working directory.
pub fn pyarrow(python: &str, dir: &Path, script: &str) {
    let prelude = "import pyarrow as pa, pyarrow.parquet as pq\n";
    let out = Command::new(python).arg("-c").arg(format!("{prelude}{script}")).current_dir(dir).output().unwrap();
    assert!(out.status.success(), "pyarrow: {}", String::from_utf8_lossy(&out.stderr));
}
