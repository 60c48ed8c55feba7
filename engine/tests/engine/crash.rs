//! Crash safety at every named fault point (`engine/src/fault.rs`): the `quiver` binary is
//! killed there (`FAILPOINTS=<point>=return` aborts the process on the spot, as `kill -9`
//! would), restarted without the fault, and nothing half-done is served and nothing
//! acknowledged is lost.
//!
//! The test build compiles the fault points in (the engine's dev-dependencies enable
//! `fail/failpoints`); [`killed_at`] fails loudly when the binary did not die at the point.

use quiver_api::client::{Client, ClientOptions};
use quiver_api::proto;
use quiver_engine::snapshot::{SnapshotDir, hash_file};
use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const ROWS: usize = 2000;
const DIMS: usize = 16;

/// `quiver <args>` in the test's directory `dir` (where its sources are).
fn quiver(dir: &Path, args: &[&str], faults: Option<&str>) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_quiver"));
    command.args(args).current_dir(dir).env_remove("FAILPOINTS").env("QUIVER_SOURCE_ROOT", dir);
    if let Some(faults) = faults {
        command.env("FAILPOINTS", faults);
    }
    command
}

fn output(dir: &Path, args: &[&str], faults: Option<&str>) -> Output {
    quiver(dir, args, faults).output().unwrap()
}

/// Asserts the process died by the fault point (SIGABRT after naming it).
fn killed_at(point: &str, status: std::process::ExitStatus, stderr: &str) {
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(libc_sigabrt()),
        "the process was to be killed at {point} (are fault points compiled in?): {status:?}\n{stderr}"
    );
    assert!(stderr.contains(&format!("fault point {point}")), "{stderr}");
}

fn libc_sigabrt() -> i32 {
    6
}

fn generate(dir: &Path) -> String {
    let base = dir.join("base.npy").display().to_string();
    let out =
        output(dir, &["generate", "--out", &base, "--vectors", &ROWS.to_string(), "--dims", &DIMS.to_string()], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    base
}

/// A serving role started with `args`; its gRPC address read from its first log line.
struct Role {
    child: Child,
    url: String,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Role {
    fn start(dir: &Path, args: &[&str], faults: Option<&str>) -> Role {
        Role::spawn(quiver(dir, args, faults))
    }

    fn spawn(mut command: Command) -> Role {
        // The "listening" line is at info level: whatever RUST_LOG the shell has.
        command.env("RUST_LOG", "warn,quiver_engine::roles=info,quiver_engine::serve=info");
        let mut child = command.stderr(Stdio::piped()).spawn().unwrap();
        let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        while !line.contains("quiver listening") {
            line.clear();
            assert!(stderr.read_line(&mut line).unwrap() > 0, "the role exited before listening");
        }
        let addr = line.split_whitespace().find_map(|w| w.strip_prefix("grpc=")).unwrap().to_string();
        let log = std::sync::Arc::new(std::sync::Mutex::new(line));
        let keep = log.clone();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                let mut log = keep.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        Role { child, url: format!("http://{addr}"), log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits for the role to die at `point`.
    fn killed_at(mut self, point: &str) {
        let deadline = Instant::now() + Duration::from_secs(120);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "still running, not killed at {point}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        };
        std::thread::sleep(Duration::from_millis(100)); // the log thread reads the last lines
        killed_at(point, status, &self.log());
    }

    async fn serving(&self) -> Client {
        let client = Client::new(&self.url, ClientOptions { attempts: 1, ..Default::default() }).unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        while client.health("").await.ok() != Some(tonic_health::pb::health_check_response::ServingStatus::Serving) {
            assert!(Instant::now() < deadline, "not SERVING:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        client
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `quiver import` killed after a batch commit, before the seal and before the rename into
/// place: no collection opens, and the import run again succeeds (the dead staging directory
/// is cleaned up).
#[test]
fn import_killed_at_each_step_leaves_no_collection() {
    let dir = tempfile::tempdir().unwrap();
    let base = generate(dir.path());
    let data = dir.path().join("data").display().to_string();
    let args = ["import", "--data-dir", &data, "--name", "v1", "--source", &base, "--batch-rows", "500"];
    for point in ["import::batch_committed", "import::before_seal", "import::before_rename"] {
        let out = output(dir.path(), &args, Some(&format!("{point}=return")));
        killed_at(point, out.status, &String::from_utf8_lossy(&out.stderr));
        let inspect = output(dir.path(), &["inspect", "--data-dir", &data, "--collection", "v1"], None);
        assert_eq!(inspect.status.code(), Some(2), "nothing half-built opens after {point}");
    }
    let out = output(dir.path(), &args, None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let staging = std::fs::read_dir(dir.path().join("data/.staging")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(staging, 0, "the killed imports' staging directories are gone");
    let inspect = output(dir.path(), &["inspect", "--data-dir", &data, "--collection", "v1"], None);
    assert!(String::from_utf8_lossy(&inspect.stdout).contains(&format!("\"count\": {ROWS}")));
}

/// A writer killed after sealing but before or while writing its snapshot: restarted, it
/// writes the snapshot again and serves one whose description matches the file on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_killed_around_the_snapshot_serves_a_checked_one_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let base = generate(dir.path());
    for (i, point) in ["publish::before_snapshot", "snapshot::write_before_rename", "snapshot::write_before_publish"]
        .iter()
        .enumerate()
    {
        let data = dir.path().join(format!("w{i}")).display().to_string();
        let args = ["writer", "--data-dir", &data, "--collection", "v1", "--source", &base, "--listen", "127.0.0.1:0"];
        Role::start(dir.path(), &args, Some(&format!("{point}=return"))).killed_at(point);
        let snapshots = SnapshotDir::new(Path::new(&data));
        assert!(snapshots.info("v1").unwrap().is_none(), "no snapshot description survives a kill at {point}");

        let writer = Role::start(dir.path(), &args, None);
        let client = writer.serving().await;
        let announced = client.snapshot_manifest("v1").await.unwrap();
        let on_disk = hash_file(&snapshots.file("v1").unwrap()).unwrap();
        assert_eq!((announced.size, announced.sha256), on_disk, "after a kill at {point}");
        assert_eq!(client.status("v1").await.unwrap().count, ROWS as u64);
    }
}

/// A writer killed while committing an Ingest stream: a stream killed before its commit was
/// never acknowledged and leaves nothing; the streams acknowledged before stay and are sealed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_killed_at_an_ingest_commit_keeps_every_acknowledged_stream() {
    let dir = tempfile::tempdir().unwrap();
    let batch = |from: u64| proto::WriteBatch {
        collection: "v1".into(),
        records: (from..from + 500)
            .map(|id| proto::Record {
                id,
                vector: (0..DIMS).map(|d| (id as f32 + d as f32).sin()).collect(),
                ..Default::default()
            })
            .collect(),
    };
    // Killed before the second stream's rename: only the first is there. Killed after it (the
    // rows durable, the answer lost): both are; nothing acknowledged is ever missing.
    for (i, (point, kept)) in
        [("ingest::before_commit", 500u64), ("ingest::after_commit", 1000)].into_iter().enumerate()
    {
        let data = dir.path().join(format!("w{i}")).display().to_string();
        let args =
            ["writer", "--data-dir", &data, "--collection", "v1", "--dimensions", "16", "--listen", "127.0.0.1:0"];
        let writer = Role::start(dir.path(), &args, Some(&format!("{point}=1*off->return")));
        let client = Client::new(&writer.url, ClientOptions::default()).unwrap();
        let first = client.ingest_client().write(futures::stream::iter(vec![batch(0)])).await.unwrap();
        assert_eq!(first.into_inner().rows, 500);
        let second = client.ingest_client().write(futures::stream::iter(vec![batch(500)])).await;
        assert!(second.is_err(), "the writer died before answering the second stream");
        writer.killed_at(point);

        let writer = Role::start(dir.path(), &args, None);
        let client = Client::new(&writer.url, ClientOptions::default()).unwrap();
        assert_eq!(client.progress("v1").await.unwrap().rows, kept, "after a kill at {point}");
        client.ingest_client().seal(proto::SealRequest { collection: "v1".into() }).await.unwrap();
        assert_eq!(client.status("v1").await.unwrap().count, kept);
    }
}

/// A Write stream that stalls mid-way (a client hung between two batches) is dropped after
/// `--write-idle-secs` with DEADLINE_EXCEEDED, keeps none of its rows, and frees its slot: the
/// next stream is taken. A stream that trickles batches just inside that window is dropped for
/// its pace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_write_stream_is_dropped_and_keeps_none_of_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("w").display().to_string();
    let args = [
        "writer",
        "--data-dir",
        &data,
        "--collection",
        "v1",
        "--dimensions",
        "16",
        "--listen",
        "127.0.0.1:0",
        "--write-idle-secs",
        "1",
    ];
    let writer = Role::start(dir.path(), &args, None);
    // Not SERVING before Seal: asked directly.
    let client = Client::new(&writer.url, ClientOptions::default()).unwrap();
    let batch = proto::WriteBatch {
        collection: "v1".into(),
        records: (0..100)
            .map(|id| proto::Record {
                id,
                vector: (0..DIMS).map(|d| (id + d as u64) as f32).collect(),
                ..Default::default()
            })
            .collect(),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(batch.clone()).await.unwrap();
    // One batch, then silence (the sender is kept: the stream is open, not ended).
    let mut ingest = client.ingest_client();
    let stalled = ingest.write(tokio_stream::wrappers::ReceiverStream::new(rx));
    let started = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(30), stalled).await.expect("dropped").unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("none of its rows"), "{}", status.message());
    assert!(started.elapsed() >= Duration::from_secs(1));
    drop(tx);
    assert_eq!(client.progress("v1").await.unwrap().rows, 0, "the stalled stream left nothing");
    let spool = dir.path().join("w").join(".spool").join("v1");
    let left: Vec<_> =
        std::fs::read_dir(&spool).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "no partial stream file stays: {left:?}");
    // An empty batch would keep a stream alive without sending anything: refused.
    let empty = proto::WriteBatch { collection: "v1".into(), records: Vec::new() };
    let refused = client.ingest_client().write(futures::stream::iter(vec![empty])).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    let next = client.ingest_client().write(futures::stream::iter(vec![batch.clone()])).await.unwrap();
    assert_eq!(next.into_inner().rows, 100);
    // A burst of 64 KB (a minute's worth at the floor), then a trickle: one one-row batch every
    // 300 ms, each inside the idle window, 213 B/s of vectors. Each window counts on its own, so
    // the burst buys no slack: the stream is dropped in its second window.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let burst = proto::WriteBatch {
        collection: "v1".into(),
        records: (2_000..3_000).map(|id| proto::Record { id, vector: vec![1.0; DIMS], ..Default::default() }).collect(),
    };
    let trickle = tokio::spawn(async move {
        tx.send(burst).await.unwrap();
        for id in 1_000.. {
            let one =
                proto::WriteBatch { records: vec![proto::Record { id, ..batch.records[0].clone() }], ..batch.clone() };
            if tx.send(one).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let mut ingest = client.ingest_client();
    let slow = ingest.write(tokio_stream::wrappers::ReceiverStream::new(rx));
    let started = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(30), slow).await.expect("dropped").unwrap_err();
    trickle.abort();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("below the minimum of 1024 B/s"), "{}", status.message());
    assert!(started.elapsed() >= Duration::from_secs(2), "the burst's window passed: {:?}", started.elapsed());
    assert_eq!(client.progress("v1").await.unwrap().rows, 100, "the trickle left nothing");
}

/// A writer whose disk fills mid-stream: that stream fails with RESOURCE_EXHAUSTED naming the
/// full disk, keeps none of its rows and frees its space; the streams acknowledged before stay,
/// and the next stream is taken. The data directory is a 6 MiB tmpfs mounted in a mount
/// namespace of the writer's own (`unshare --mount`, root only; skipped loudly otherwise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_the_stream_that_hit_it_and_keeps_every_acknowledged_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("small");
    std::fs::create_dir_all(&data).unwrap();
    let probe = Command::new("unshare")
        .args(["--mount", "sh", "-c", &format!("mount -t tmpfs -o size=1m tmpfs {}", data.display())])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        println!("SKIPPED: cannot mount a tmpfs in a private mount namespace here (needs root and unshare)");
        return;
    }
    let script = format!(
        "mount -t tmpfs -o size=6m tmpfs {data} && exec {quiver} writer --data-dir {data} --collection v1 --dimensions 16 --listen 127.0.0.1:0",
        data = data.display(),
        quiver = env!("CARGO_BIN_EXE_quiver"),
    );
    let mut command = Command::new("unshare");
    command.args(["--mount", "sh", "-c", &script]).current_dir(dir.path()).env_remove("FAILPOINTS");
    let writer = Role::spawn(command);
    let client = Client::new(&writer.url, ClientOptions { attempts: 1, ..Default::default() }).unwrap();
    let batch = |from: u64, rows: u64| proto::WriteBatch {
        collection: "v1".into(),
        records: (from..from + rows)
            .map(|id| proto::Record {
                id,
                vector: (0..DIMS).map(|d| (id + d as u64) as f32).collect(),
                ..Default::default()
            })
            .collect(),
    };
    let first = client.ingest_client().write(futures::stream::iter(vec![batch(0, 500)])).await.unwrap();
    assert_eq!(first.into_inner().rows, 500);
    // About 15 MB of records for a 6 MiB disk.
    let flood: Vec<_> = (0..200).map(|i| batch(1_000 + i * 1_000, 1_000)).collect();
    let full = client.ingest_client().write(futures::stream::iter(flood)).await.unwrap_err();
    assert_eq!(full.code(), tonic::Code::ResourceExhausted, "{full:?}");
    assert!(
        full.message().contains("is full") && full.message().contains("nothing of this stream"),
        "{}",
        full.message()
    );
    assert_eq!(
        client.progress("v1").await.unwrap().rows,
        500,
        "the acknowledged stream stays, the full one left nothing"
    );
    let next = client.ingest_client().write(futures::stream::iter(vec![batch(500, 500)])).await.unwrap();
    assert_eq!(next.into_inner().rows, 500, "its space was freed");
    assert_eq!(client.progress("v1").await.unwrap().rows, 1_000);
}

/// A replica killed while fetching, before its checked file is renamed into place, and before
/// the installation is renamed into place: restarted, it fetches or installs again and serves
/// exactly the writer's snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_killed_while_fetching_or_installing_serves_the_right_snapshot_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let base = generate(dir.path());
    let w = dir.path().join("writer").display().to_string();
    let writer = Role::start(
        dir.path(),
        &["writer", "--data-dir", &w, "--collection", "v1", "--source", &base, "--listen", "127.0.0.1:0"],
        None,
    );
    let sha256 = writer.serving().await.snapshot_manifest("v1").await.unwrap().sha256;
    for (i, point) in
        ["snapshot::append", "snapshot::finish_before_rename", "snapshot::install_before_rename"].iter().enumerate()
    {
        let data = dir.path().join(format!("r{i}")).display().to_string();
        let args = [
            "replica",
            "--data-dir",
            &data,
            "--collection",
            "v1",
            "--snapshot-from",
            &writer.url,
            "--listen",
            "127.0.0.1:0",
        ];
        Role::start(dir.path(), &args, Some(&format!("{point}=return"))).killed_at(point);
        assert!(!Path::new(&data).join("v1/data.mdb").exists(), "nothing installed after a kill at {point}");

        let replica = Role::start(dir.path(), &args, None);
        let client = replica.serving().await;
        let request = proto::SearchRequest { vector: vec![0.5; DIMS], k: 5, ..Default::default() };
        assert_eq!(client.search(request).await.unwrap().hits.len(), 5);
        let info = SnapshotDir::new(Path::new(&data)).checked_info("v1").unwrap().expect("a checked snapshot");
        assert_eq!(info.sha256, sha256, "after a kill at {point}");
    }
}
