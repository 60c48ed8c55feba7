//! An Azure Blob Storage server: Azurite (npm `azurite`, which `.ci/run` installs and names in
//! `QUIVER_AZURITE`, the `azurite-blob` program) on a loopback port, its data in a temporary
//! directory. Containers and blobs are made with Azure's own Python SDK (PyPI
//! `azure-storage-blob`, in `QUIVER_PYTHON`), since Azurite takes only signed requests.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Azurite's well-known development account and key (public: every Azure SDK ships them).
const ACCOUNT: &str = "devstoreaccount1";
const KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Azurite's blob service on loopback, killed when dropped.
pub struct Azurite {
    child: Child,
    pub port: u16,
    python: String,
    _dir: tempfile::TempDir,
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Azurite {
    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Runs `script` with `service`, a BlobServiceClient of this server.
    fn sdk(&self, script: &str) {
        let connect = format!(
            "from azure.storage.blob import BlobServiceClient\nservice = BlobServiceClient.from_connection_string('DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};BlobEndpoint={}/{ACCOUNT};')\n",
            self.endpoint()
        );
        let out = Command::new(&self.python).arg("-c").arg(format!("{connect}{script}")).output().unwrap();
        assert!(out.status.success(), "azure-storage-blob: {}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn create_container(&self, container: &str) {
        self.sdk(&format!("service.create_container({container:?})"));
    }

    /// Uploads the file at `path` as `container`/`name`.
    pub fn put(&self, container: &str, name: &str, path: &std::path::Path) {
        let path = path.display().to_string();
        self.sdk(&format!(
            "service.get_blob_client({container:?}, {name:?}).upload_blob(open({path:?}, 'rb').read(), overwrite=True)"
        ));
    }

    /// The environment quiver's Azure client reads for an emulator (object_store's
    /// `use_emulator`, with this server's URL): the development account and key.
    pub fn environment(&self) -> Vec<(String, String)> {
        vec![("AZURE_STORAGE_USE_EMULATOR".into(), "true".into()), ("AZURITE_BLOB_STORAGE_URL".into(), self.endpoint())]
    }
}

/// Starts Azurite's blob service, ready once it answers; None (the test skips, saying so) when
/// it or the Python SDK is not installed, a panic when `QUIVER_REQUIRE_TOOLS` is set (CI).
pub fn azurite() -> Option<Azurite> {
    let required = std::env::var_os("QUIVER_REQUIRE_TOOLS").is_some();
    let bin = std::env::var("QUIVER_AZURITE").unwrap_or_else(|_| "azurite-blob".into());
    let python = std::env::var("QUIVER_PYTHON").unwrap_or_else(|_| "python3".into());
    let sdk = Command::new(&python).args(["-c", "import azure.storage.blob"]).output();
    if Command::new(&bin).arg("--version").output().is_err() || !sdk.is_ok_and(|o| o.status.success()) {
        assert!(!required, "no Azurite at {bin:?} or no azure-storage-blob in {python}, and CI requires them");
        eprintln!("SKIPPED: no Azurite (npm install azurite; QUIVER_AZURITE) or no azure-storage-blob in {python}");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = crate::free_port();
    let child = Command::new(&bin)
        .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string(), "--silent", "--skipApiVersionCheck"])
        .arg("--location")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = Azurite { child, port, python, _dir: dir };
    let deadline = Instant::now() + Duration::from_secs(30);
    // Any HTTP answer (an unsigned request is refused with 403) means it is up.
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "Azurite did not start on port {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(server)
}
