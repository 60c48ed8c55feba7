//! Snapshots on disk: compacted copy + sha256, a download that resumes from its partial file,
//! a corrupted transfer discarded, and installation as an openable collection.

use quiver_api::client::ClientOptions;
use quiver_api::proto;
use quiver_engine::build::import_and_build;
use quiver_engine::collection::builder::BuildOptions;
use quiver_engine::datagen::Clustered;
use quiver_engine::import::{self, ReadOptions, npy};
use quiver_engine::metrics::Metrics;
use quiver_engine::roles::replica::{FetchOptions, fetch_snapshot};
use quiver_engine::snapshot::download::Partial;
use quiver_engine::snapshot::{SnapshotDir, SnapshotInfo, hash_file};
use quiver_engine::types::Metric;
use quiver_engine::{Collection, Error};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

fn sealed(dir: &std::path::Path) -> Collection {
    sealed_of(dir, 800, 8)
}

fn sealed_of(dir: &std::path::Path, rows: usize, dims: usize) -> Collection {
    let path = dir.join("base.npy");
    npy::write_f32(&path, rows, dims, &Clustered::new(dims, 5).generate(rows, 1)).unwrap();
    let records = import::read(&path.display().to_string(), &ReadOptions::default()).unwrap();
    import_and_build(dir, &BuildOptions::new("v1", Metric::Cosine), records).unwrap();
    Collection::open(&dir.join("v1")).unwrap()
}

#[test]
fn write_resume_verify_install() {
    let writer = tempfile::tempdir().unwrap();
    let collection = sealed(writer.path());
    let snapshots = SnapshotDir::new(writer.path());
    let info = snapshots.write(&collection).unwrap();
    assert_eq!(snapshots.info("v1").unwrap().as_ref(), Some(&info));
    assert_eq!(hash_file(&snapshots.file("v1").unwrap()).unwrap(), (info.size, info.sha256.clone()));
    assert!(info.size < std::fs::metadata(writer.path().join("v1/data.mdb")).unwrap().len(), "compacted");
    let bytes = std::fs::read(snapshots.file("v1").unwrap()).unwrap();

    let replica = tempfile::tempdir().unwrap();
    let local = SnapshotDir::new(replica.path());
    let half = bytes.len() / 2;
    let mut partial = Partial::open(&local, &info).unwrap();
    partial.append(0, &bytes[..half]).unwrap();
    drop(partial); // the replica dies here
    let mut partial = Partial::open(&local, &info).unwrap();
    assert_eq!(partial.offset(), half as u64, "resumes from the bytes it holds");
    let err = partial.append(0, &bytes[..10]).unwrap_err();
    assert!(err.to_string().contains("expected byte"), "{err}");
    partial.append(half as u64, &bytes[half..]).unwrap();
    assert!(partial.is_complete());
    let finished = partial.finish().unwrap();
    assert_eq!(finished, info);
    let installed = local.install(replica.path(), &finished).unwrap();
    assert_eq!(installed.len(), 800);
    assert_eq!(installed.vector(3), collection.vector(3));
    // Installing must not change the file peers fetch from this replica.
    assert_eq!(hash_file(&local.file("v1").unwrap()).unwrap().1, info.sha256);
}

#[test]
fn a_flipped_byte_is_refused_and_discarded() {
    let writer = tempfile::tempdir().unwrap();
    let collection = sealed(writer.path());
    let info = SnapshotDir::new(writer.path()).write(&collection).unwrap();
    let mut bytes = std::fs::read(SnapshotDir::new(writer.path()).file("v1").unwrap()).unwrap();
    let third = bytes.len() / 3;
    bytes[third] ^= 0x01;

    let replica = tempfile::tempdir().unwrap();
    let local = SnapshotDir::new(replica.path());
    let mut partial = Partial::open(&local, &info).unwrap();
    partial.append(0, &bytes).unwrap();
    let err = partial.finish().unwrap_err();
    assert!(matches!(err, Error::Snapshot { .. }), "{err}");
    assert!(err.to_string().contains("checksum mismatch"), "{err}");
    assert!(local.info("v1").unwrap().is_none(), "never published");
    assert!(!local.file("v1").unwrap().exists());
    // The next attempt starts from zero.
    assert_eq!(Partial::open(&local, &info).unwrap().offset(), 0);
}

/// A snapshot source for the fetch tests: announces `info` and streams `bytes` from the asked
/// offset in small chunks, failing the stream after `fail_after` chunks when set.
struct Source {
    info: SnapshotInfo,
    bytes: Arc<Vec<u8>>,
    fail_after: Option<usize>,
}

type Chunks = std::pin::Pin<Box<dyn futures::Stream<Item = Result<proto::Chunk, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl proto::snapshot_server::Snapshot for Source {
    async fn manifest(
        &self,
        _: tonic::Request<proto::ManifestRequest>,
    ) -> Result<tonic::Response<proto::ManifestResponse>, tonic::Status> {
        Ok(tonic::Response::new(proto::ManifestResponse {
            collection: self.info.collection.clone(),
            size: self.info.size,
            sha256: self.info.sha256.clone(),
            manifest_json: serde_json::to_string(&self.info.manifest).unwrap(),
        }))
    }

    type FetchStream = Chunks;

    async fn fetch(
        &self,
        request: tonic::Request<proto::FetchRequest>,
    ) -> Result<tonic::Response<Chunks>, tonic::Status> {
        const CHUNK: usize = 2048;
        let start = request.into_inner().offset as usize;
        let (bytes, fail_after) = (self.bytes.clone(), self.fail_after);
        let chunks = (start..bytes.len()).step_by(CHUNK).enumerate().map(move |(i, at)| {
            if fail_after.is_some_and(|n| i >= n) {
                return Err(tonic::Status::unavailable("the source went away mid-stream"));
            }
            let end = (at + CHUNK).min(bytes.len());
            Ok(proto::Chunk { offset: at as u64, data: bytes[at..end].to_vec().into() })
        });
        // Stop after the first error, as a real stream does.
        let mut failed = false;
        let chunks = chunks.take_while(move |c| {
            let go = !failed;
            failed |= c.is_err();
            go
        });
        Ok(tonic::Response::new(Box::pin(futures::stream::iter(chunks.collect::<Vec<_>>()))))
    }
}

async fn serve_source(source: Source) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(proto::snapshot_server::SnapshotServer::new(source))
            .serve_with_incoming(incoming),
    );
    url
}

fn fetch_options() -> FetchOptions {
    FetchOptions {
        client: ClientOptions { attempts: 1, ..Default::default() },
        bytes_per_sec: None,
        timeout: Duration::from_secs(60),
        attempt_timeout: Duration::from_secs(30),
        stall_timeout: Duration::from_secs(10),
        progress_every: quiver_engine::snapshot::progress::EVERY,
        pinned: None,
    }
}

/// A source that fails mid-stream while chunks are still queued for the (slowed) disk writer,
/// then a second source that resumes the download: the second attempt starts only after the
/// first attempt's writer stopped, so the installed file is exactly the snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_attempt_is_joined_before_the_next_source_resumes() {
    let writer = tempfile::tempdir().unwrap();
    let collection = sealed_of(writer.path(), 3000, 16);
    let info = SnapshotDir::new(writer.path()).write(&collection).unwrap();
    let bytes = Arc::new(std::fs::read(SnapshotDir::new(writer.path()).file("v1").unwrap()).unwrap());
    assert!(bytes.len() > 40 * 2048, "enough chunks to queue: {} bytes", bytes.len());
    let failing = serve_source(Source { info: info.clone(), bytes: bytes.clone(), fail_after: Some(12) }).await;
    let whole = serve_source(Source { info: info.clone(), bytes: bytes.clone(), fail_after: None }).await;

    // The first appends wait, so the failing stream ends with chunks still queued for the writer.
    let scenario = fail::FailScenario::setup();
    fail::cfg("snapshot::append", "12*sleep(100)").unwrap();
    let replica = tempfile::tempdir().unwrap();
    let local = SnapshotDir::new(replica.path());
    use quiver_engine::roles::replica::Source::Peer;
    let sources = [Peer(failing), Peer(whole)];
    let fetched = fetch_snapshot(&sources, "v1", &local, &Arc::new(Metrics::new()), &fetch_options()).await.unwrap();
    fail::remove("snapshot::append");
    scenario.teardown();

    assert_eq!(fetched, info);
    // Give a writer thread that was left running the time to append what it still held.
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(hash_file(&local.file("v1").unwrap()).unwrap(), (info.size, info.sha256.clone()));
    let installed = local.install(replica.path(), &fetched).unwrap();
    assert_eq!(installed.len(), 3000);
    assert_eq!(installed.vector(5), collection.vector(5));
}

/// One attempt at a time: a second open of the same partial file is refused while the first
/// holds it, and allowed once it is dropped.
#[test]
fn the_partial_file_is_locked_by_one_attempt() {
    let writer = tempfile::tempdir().unwrap();
    let info = SnapshotDir::new(writer.path()).write(&sealed(writer.path())).unwrap();
    let replica = tempfile::tempdir().unwrap();
    let local = SnapshotDir::new(replica.path());
    let first = Partial::open(&local, &info).unwrap();
    let err = Partial::open(&local, &info).unwrap_err().to_string();
    assert!(err.contains("another fetch attempt"), "{err}");
    drop(first);
    Partial::open(&local, &info).unwrap();
}

/// A snapshot already on disk is checked before its description is trusted: a damaged file or
/// a missing one makes the description go, so the replica fetches again.
#[test]
fn a_present_snapshot_is_checked_on_disk_at_start() {
    let writer = tempfile::tempdir().unwrap();
    let snapshots = SnapshotDir::new(writer.path());
    let info = snapshots.write(&sealed(writer.path())).unwrap();
    assert_eq!(snapshots.checked_info("v1").unwrap(), Some(info.clone()));

    let file = snapshots.file("v1").unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    std::fs::write(&file, &bytes).unwrap();
    assert!(snapshots.info("v1").unwrap().is_some(), "the description alone still claims it");
    assert_eq!(snapshots.checked_info("v1").unwrap(), None);
    assert!(snapshots.info("v1").unwrap().is_none() && !file.exists(), "both discarded");

    // Written again, then the file lost (a crash before the rename was durable).
    let again = snapshots.write(&Collection::open(&writer.path().join("v1")).unwrap()).unwrap();
    assert_eq!(again.sha256, info.sha256, "the compacted copy is deterministic");
    std::fs::remove_file(&file).unwrap();
    assert_eq!(snapshots.checked_info("v1").unwrap(), None);
}

/// Names from requests never build a path outside the data directory.
#[test]
fn snapshot_names_are_checked_before_any_path_is_built() {
    let dir = tempfile::tempdir().unwrap();
    let snapshots = SnapshotDir::new(dir.path());
    for name in ["../v1", "/etc/passwd", "a/../../b", "", "V1"] {
        let err = snapshots.file(name).unwrap_err().to_string();
        assert!(err.contains("field `name`"), "{name}: {err}");
        assert!(snapshots.info(name).is_err(), "{name}");
    }
}

/// The installed collection is the checked snapshot file itself (a hard link): when a damaged
/// snapshot was discarded and a good one fetched again, the damaged installation is replaced,
/// never opened.
#[test]
fn a_reinstalled_snapshot_replaces_a_damaged_installation() {
    let writer = tempfile::tempdir().unwrap();
    let collection = sealed(writer.path());
    let info = SnapshotDir::new(writer.path()).write(&collection).unwrap();
    let good = std::fs::read(SnapshotDir::new(writer.path()).file("v1").unwrap()).unwrap();
    let replica = tempfile::tempdir().unwrap();
    let local = SnapshotDir::new(replica.path());
    let fetch = || {
        let mut partial = Partial::open(&local, &info).unwrap();
        partial.append(0, &good).unwrap();
        partial.finish().unwrap()
    };
    local.install(replica.path(), &fetch()).unwrap();

    // Damage a stored vector through the snapshot file (the same inode as data.mdb).
    let needle: Vec<u8> = bytemuck::cast_slice(collection.vector(3)).to_vec();
    let file = local.file("v1").unwrap();
    let bytes = std::fs::read(&file).unwrap();
    let found: Vec<usize> =
        bytes.windows(needle.len()).enumerate().filter(|(_, w)| *w == needle.as_slice()).map(|(i, _)| i).collect();
    assert!(!found.is_empty(), "vector 3 is stored as is");
    let damaged = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    for at in found {
        // Every stored copy (the vector chunk, the index's own) gets one bit flipped.
        damaged.write_all_at(&[bytes[at] ^ 0x40], at as u64).unwrap();
    }
    assert_eq!(local.checked_info("v1").unwrap(), None, "the damage is found");

    let installed = local.install(replica.path(), &fetch()).unwrap();
    assert_eq!(installed.vector(3), collection.vector(3), "the good snapshot is served, not the damaged file");
}
