//! A real browser for the consoles' tests: headless Chromium (Debian `chromium`) driven by
//! Playwright (`playwright-core` from npm, which drives an installed browser and downloads
//! none). `.ci/run` installs both and names them in `QUIVER_PLAYWRIGHT` (the directory whose
//! `node_modules` holds playwright-core) and `QUIVER_CHROMIUM`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Chromium's flags for a headless run in a container: no sandbox (no user namespaces
/// there), no GPU, no background calls to Google's services.
pub const CHROMIUM_FLAGS: &[&str] = &["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"];

/// Node, the playwright-core install and Chromium.
#[derive(Debug, Clone)]
pub struct Browser {
    pub playwright: PathBuf,
    pub chromium: PathBuf,
}

/// The browser, or SKIPPED (a panic when `QUIVER_REQUIRE_TOOLS` is set: CI installs it).
pub fn browser() -> Option<Browser> {
    let playwright = PathBuf::from(std::env::var("QUIVER_PLAYWRIGHT").unwrap_or_default());
    let chromium = PathBuf::from(std::env::var("QUIVER_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()));
    let node = Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success());
    let installed = playwright.join("node_modules/playwright-core/package.json").is_file();
    if node && installed && chromium.is_file() {
        return Some(Browser { playwright, chromium });
    }
    let missing = format!(
        "node: {node}, playwright-core under QUIVER_PLAYWRIGHT={}: {installed}, chromium at {}: {}",
        playwright.display(),
        chromium.display(),
        chromium.is_file()
    );
    assert!(std::env::var_os("QUIVER_REQUIRE_TOOLS").is_none(), "no browser ({missing}), and CI requires it");
    eprintln!("SKIPPED: no browser ({missing})");
    None
}

impl Browser {
    /// Runs the Playwright script `script` with `env`; its standard output, or a panic with
    /// everything it printed.
    pub fn run(&self, script: &Path, env: &[(&str, String)]) -> String {
        let out = Command::new("node")
            .arg(script)
            .env("NODE_PATH", self.playwright.join("node_modules"))
            .env("QUIVER_CHROMIUM", &self.chromium)
            .env("QUIVER_CHROMIUM_FLAGS", CHROMIUM_FLAGS.join(" "))
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}: {}\n{stdout}\n{}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout.into()
    }
}

/// Where screenshots go: `QUIVER_ARTIFACTS` (CI keeps it), else `target/artifacts`.
pub fn artifacts() -> PathBuf {
    let dir = std::env::var("QUIVER_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/artifacts"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
