//! Import sources: http URLs (resumed, redirected, refused), local paths confined to the source
//! roots, files that lie about their sizes or are not vectors at all, and the id map's
//! invariants under duplicates.

use proptest::prelude::*;
use quiver_engine::Collection;
use quiver_engine::build::import_and_build;
use quiver_engine::collection::builder::{BuildOptions, Duplicates};
use quiver_engine::import::{self, Format, ReadOptions, fvecs, jsonl, npy};
use quiver_engine::types::Metric;
use sha2::Digest;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Records the largest single allocation made on each thread, so the fuzz tests can check that a
/// lying header never makes a reader allocate what it claims.
mod probe {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static LARGEST: Cell<usize> = const { Cell::new(0) };
    }

    pub struct Probe;

    fn note(size: usize) {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
    }

    // SAFETY: every call is passed on to `System` unchanged; the probe only reads the size.
    unsafe impl GlobalAlloc for Probe {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            note(layout.size());
            unsafe { System.alloc(layout) }
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            note(layout.size());
            unsafe { System.alloc_zeroed(layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            note(new_size);
            unsafe { System.realloc(ptr, layout, new_size) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    /// Runs `f`; returns its result and the largest allocation it made on this thread.
    pub fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
        LARGEST.with(|l| l.set(0));
        let out = f();
        (out, LARGEST.with(Cell::get))
    }
}

#[global_allocator]
static PROBE: probe::Probe = probe::Probe;

const ETAG: &str = "\"v1\"";

/// How the test server misbehaves.
#[derive(Clone, Copy, Default)]
struct Behaviour {
    /// Send only this many bytes of the first full body, then close the connection.
    cut_first_at: Option<usize>,
    /// Answer Range requests with the whole body (200), like a server that cannot resume.
    ignore_range: bool,
}

struct Server {
    base: String,
    /// One line per request: `GET /path range=... if-range=...`.
    requests: Arc<Mutex<Vec<String>>>,
}

/// Serves `body` at `/base.npy` (with Range support and an ETag), a few redirects, and 404
/// elsewhere, one connection at a time, on an ephemeral port.
fn serve_with(body: Vec<u8>, behaviour: Behaviour) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let log = requests.clone();
    std::thread::spawn(move || {
        let mut cut = behaviour.cut_first_at;
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            let mut request = Vec::new();
            let mut chunk = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 << 10 {
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend(&chunk[..n]),
                }
            }
            let request = String::from_utf8_lossy(&request).into_owned();
            let mut lines = request.lines();
            let path = lines.next().unwrap_or_default().split(' ').nth(1).unwrap_or_default().to_string();
            let headers: HashMap<String, String> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect();
            let header = |k: &str| headers.get(k).cloned().unwrap_or_default();
            log.lock().unwrap().push(format!("GET {path} range={} if-range={}", header("range"), header("if-range")));
            let redirect = |to: String| {
                format!("HTTP/1.1 302 Found\r\nlocation: {to}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .into_bytes()
            };
            let response = match path.as_str() {
                "/base.npy" => {
                    let from = header("range").strip_prefix("bytes=").and_then(|r| r.strip_suffix('-')?.parse().ok());
                    let valid = headers.get("if-range").is_none_or(|v| v == ETAG);
                    match from {
                        Some(from) if !behaviour.ignore_range && valid && from < body.len() => [
                            format!(
                                "HTTP/1.1 206 Partial Content\r\ncontent-length: {}\r\ncontent-range: bytes {from}-{}/{}\r\n\
                                 etag: {ETAG}\r\nconnection: close\r\n\r\n",
                                body.len() - from,
                                body.len() - 1,
                                body.len()
                            )
                            .into_bytes(),
                            body[from..].to_vec(),
                        ]
                        .concat(),
                        _ => {
                            let sent = cut.take().unwrap_or(body.len());
                            [
                                format!(
                                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\naccept-ranges: bytes\r\netag: {ETAG}\r\n\
                                     connection: close\r\n\r\n",
                                    body.len()
                                )
                                .into_bytes(),
                                body[..sent].to_vec(),
                            ]
                            .concat()
                        }
                    }
                }
                "/moved.npy" => redirect("/base.npy".into()),
                "/to-ftp.npy" => redirect(format!("ftp://{addr}/base.npy")),
                "/to-https.npy" => redirect(format!("https://{addr}/base.npy")),
                "/to-metadata.npy" => redirect("http://169.254.169.254/latest/base.npy".into()),
                "/loop.npy" => redirect("loop.npy".into()),
                _ => b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_vec(),
            };
            let _ = stream.write_all(&response);
            let _ = stream.flush();
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    });
    Server { base: format!("http://{addr}"), requests }
}

fn serve(body: Vec<u8>) -> String {
    serve_with(body, Behaviour::default()).base
}

/// A 400 x 8 float32 matrix written as `base.npy` in `dir`; returns the path and its bytes.
fn base_npy(dir: &Path) -> (std::path::PathBuf, Vec<u8>) {
    let file = dir.join("base.npy");
    let data: Vec<f32> = (0..400 * 8).map(|i| ((i * 37 % 101) as f32 - 50.0) / 10.0).collect();
    npy::write_f32(&file, 400, 8, &data).unwrap();
    let bytes = std::fs::read(&file).unwrap();
    (file, bytes)
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", import::source::hex(&sha2::Sha256::digest(bytes)))
}

fn read_err(uri: &str, options: &ReadOptions) -> String {
    match import::read(uri, options) {
        Ok(records) => match records.iter.into_iter().find_map(|r| r.err()) {
            Some(e) => e.to_string(),
            None => panic!("{uri} was read without an error"),
        },
        Err(e) => e.to_string(),
    }
}

#[test]
fn imports_from_an_http_url_and_reports_a_missing_one() {
    let dir = tempfile::tempdir().unwrap();
    let (file, bytes) = base_npy(dir.path());
    let base = serve(bytes);

    let url = format!("{base}/base.npy");
    let records = import::read(&url, &ReadOptions::default()).unwrap();
    let manifest = import_and_build(dir.path(), &BuildOptions::new("web", Metric::Euclidean), records).unwrap();
    assert_eq!(manifest.count, 400);
    assert_eq!(manifest.source.uri, url);
    let local = import::read(&file.display().to_string(), &ReadOptions::default()).unwrap();
    let local = import_and_build(dir.path(), &BuildOptions::new("disk", Metric::Euclidean), local).unwrap();
    assert_eq!(manifest.source.fingerprint, local.source.fingerprint, "same bytes, same fingerprint");

    let err = import::read(&format!("{base}/gone.npy"), &ReadOptions::default()).err().unwrap().to_string();
    assert!(err.contains("gone.npy") && err.contains("404"), "{err}");
}

#[test]
fn a_connection_dropped_mid_body_is_resumed_with_range() {
    let dir = tempfile::tempdir().unwrap();
    let (_, bytes) = base_npy(dir.path());
    let server = serve_with(bytes.clone(), Behaviour { cut_first_at: Some(5000), ..Default::default() });
    let url = format!("{}/base.npy", server.base);
    let records = import::read(&url, &ReadOptions::default()).unwrap();
    let manifest = import_and_build(dir.path(), &BuildOptions::new("web", Metric::Euclidean), records).unwrap();
    assert_eq!(manifest.count, 400, "no row lost or repeated");
    assert_eq!(manifest.source.fingerprint, sha256(&bytes), "the resumed stream hashes as the file");
    let requests = server.requests.lock().unwrap().clone();
    assert_eq!(
        requests,
        vec!["GET /base.npy range= if-range=".to_string(), format!("GET /base.npy range=bytes=5000- if-range={ETAG}"),]
    );
}

#[test]
fn a_server_that_cannot_resume_fails_instead_of_repeating_rows() {
    let dir = tempfile::tempdir().unwrap();
    let (_, bytes) = base_npy(dir.path());
    let server = serve_with(bytes, Behaviour { cut_first_at: Some(5000), ignore_range: true });
    let url = format!("{}/base.npy", server.base);
    let records = import::read(&url, &ReadOptions::default()).unwrap();
    let err = import_and_build(dir.path(), &BuildOptions::new("web", Metric::Euclidean), records)
        .expect_err("refused")
        .to_string();
    assert!(err.contains("base.npy: row ") && err.contains("connection lost at byte 5000"), "{err}");
    assert!(err.contains("answered 200 to a Range request") && err.contains("refusing to restart"), "{err}");
    assert!(!dir.path().join("web").exists());
}

#[test]
fn redirects_stay_on_their_scheme_and_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let (_, bytes) = base_npy(dir.path());
    let base = serve(bytes);
    let read = |path: &str| import::read(&format!("{base}{path}"), &ReadOptions::default());
    let moved: Vec<_> = read("/moved.npy").unwrap().iter.collect::<quiver_engine::Result<_>>().unwrap();
    assert_eq!(moved.len(), 400, "a same-scheme redirect is followed");
    for path in ["/to-ftp.npy", "/to-https.npy"] {
        let err = read(path).err().expect("refused").to_string();
        assert!(err.contains(path) && err.contains("redirect to another scheme is refused"), "{err}");
    }
    let err = read("/loop.npy").err().expect("refused").to_string();
    assert!(err.contains("more than 5 redirects"), "{err}");
    let err = read("/to-metadata.npy").err().expect("refused").to_string();
    assert!(err.contains("169.254.169.254") && err.contains("link-local"), "{err}");
}

#[test]
fn link_local_and_metadata_urls_are_refused_before_connecting() {
    let started = Instant::now();
    for url in [
        "http://169.254.169.254/latest/meta-data/v.npy",
        "http://169.254.10.1:8080/v.npy",
        "http://[fe80::1]/v.npy",
        "http://[fd00:ec2::254]/v.npy",
        "http://[::ffff:169.254.169.254]/v.npy",
        "http://metadata.google.internal/computeMetadata/v1/v.npy",
        "https://METADATA.google.internal./v.npy",
    ] {
        let err = import::read(url, &ReadOptions::default()).err().expect("refused").to_string();
        assert!(err.contains("link-local and cloud-metadata addresses are refused"), "{url}: {err}");
    }
    assert!(started.elapsed() < Duration::from_secs(2), "refused without trying to connect");
}

#[test]
fn unsupported_schemes_are_refused_at_once() {
    for uri in ["hdfs://bucket/v.npy", "gopher://bucket/v.jsonl", "ftp://host/v.fvecs"] {
        let err = import::read(uri, &ReadOptions::default()).err().expect("refused").to_string();
        let scheme = uri.split("://").next().unwrap();
        assert!(err.contains(&format!("the scheme {scheme}:// is not supported")), "{err}");
        assert!(import::source::check_source_uri(uri).is_err());
    }
    import::source::check_source_uri("file:///data/v.npy").unwrap();
    import::source::check_source_uri("relative/v.npy").unwrap();
}

#[test]
fn local_sources_outside_the_roots_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (allowed, other) = (dir.path().join("allowed"), dir.path().join("other"));
    std::fs::create_dir_all(&allowed).unwrap();
    std::fs::create_dir_all(&other).unwrap();
    let (inside, _) = base_npy(&allowed);
    let (outside, _) = base_npy(&other);
    let options = ReadOptions { source_roots: vec![allowed.clone()], ..Default::default() };

    assert!(import::read(&inside.display().to_string(), &options).is_ok());
    import::source::check_source(&inside.display().to_string(), &options).unwrap();
    assert!(import::source::check_source(&outside.display().to_string(), &options).is_err());
    assert!(import::source::check_source("hdfs://bucket/v.npy", &ReadOptions::default()).is_err());
    assert!(import::read(&format!("file://{}", inside.display()), &options).is_ok());
    let escapes = [
        outside.display().to_string(),
        format!("file://{}", outside.display()),
        allowed.join("..").join("other").join("base.npy").display().to_string(),
    ];
    for uri in &escapes {
        let err = import::read(uri, &options).err().expect("refused").to_string();
        let path = uri.trim_start_matches("file://");
        assert!(err.contains(path) && err.contains("outside the allowed source roots"), "{err}");
        assert!(err.contains(&allowed.display().to_string()) && err.contains("--source-root"), "{err}");
    }
    #[cfg(unix)]
    {
        let link = allowed.join("link.npy");
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        let err = import::read(&link.display().to_string(), &options).err().expect("refused").to_string();
        assert!(err.contains("resolves to") && err.contains("outside the allowed source roots"), "{err}");
    }
    // No roots: anywhere (library callers).
    assert!(import::read(&outside.display().to_string(), &ReadOptions::default()).is_ok());
}

#[test]
fn the_cli_confines_sources_to_the_data_and_working_directories() {
    let dir = tempfile::tempdir().unwrap();
    let (data, work, other) = (dir.path().join("data"), dir.path().join("work"), dir.path().join("other"));
    for d in [&data, &work, &other] {
        std::fs::create_dir_all(d).unwrap();
    }
    let (outside, _) = base_npy(&other);
    std::fs::copy(&outside, work.join("here.npy")).unwrap();
    let quiver = |name: &str, source: &str, roots: Option<String>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_quiver"));
        command.current_dir(&work).env_remove("QUIVER_SOURCE_ROOT").args(["import", "--data-dir"]);
        command.arg(&data).args(["--name", name, "--source", source, "--quality", "10"]);
        if let Some(roots) = roots {
            command.env("QUIVER_SOURCE_ROOT", roots);
        }
        command.output().unwrap()
    };
    let out = quiver("v1", &outside.display().to_string(), None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("outside the allowed source roots") && err.contains(&data.display().to_string()), "{err}");
    assert!(!data.join("v1").exists());

    let out = quiver("v2", "here.npy", None);
    assert!(out.status.success(), "the working directory is a default root: {}", String::from_utf8_lossy(&out.stderr));
    let roots = format!("{},{}", dir.path().join("elsewhere").display(), other.display());
    let out = quiver("v3", &outside.display().to_string(), Some(roots));
    assert!(out.status.success(), "QUIVER_SOURCE_ROOT allows it: {}", String::from_utf8_lossy(&out.stderr));
}

/// Proxy variables in the environment (as a corporate cluster sets them) are not used for a
/// source: through a proxy the proxy would resolve the host, past the link-local check. The
/// "proxy" here counts connections and answers each with 502 (so a client that uses it fails at
/// once); the import must reach the source directly and the proxy must see nothing.
#[test]
fn proxies_from_the_environment_are_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let (_, bytes) = base_npy(dir.path());
    let source = format!("{}/base.npy", serve(bytes));
    let proxy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy_url = format!("http://{}", proxy.local_addr().unwrap());
    let reached = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = reached.clone();
    std::thread::spawn(move || {
        for mut connection in proxy.incoming().flatten() {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = connection.write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    let data = dir.path().join("data");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_quiver"));
    command.current_dir(dir.path()).args(["import", "--data-dir"]).arg(&data);
    command.args(["--name", "v1", "--source", &source, "--quality", "10"]);
    for var in ["HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"] {
        command.env(var, &proxy_url);
    }
    let out = command.env_remove("NO_PROXY").env_remove("no_proxy").output().unwrap();
    assert_eq!(reached.load(std::sync::atomic::Ordering::SeqCst), 0, "the import connected to the proxy");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(data.join("v1").join("data.mdb").exists());
}

#[test]
fn a_huge_npy_shape_is_refused_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.npy");
    let started = Instant::now();
    for shape in ["(4611686018427387904, 4096)", "(1000, 100000000)"] {
        let text = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}\n");
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend((text.len() as u16).to_le_bytes());
        bytes.extend(text.as_bytes());
        bytes.extend([0u8; 64]);
        std::fs::write(&path, bytes).unwrap();
        let err = read_err(&path.display().to_string(), &ReadOptions::default());
        assert!(err.contains("huge.npy: header: field `shape`") && err.contains(&shape[..12]), "{err}");
    }
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[test]
fn a_token_file_imported_as_vectors_is_not_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    std::fs::write(&path, "s3cr3t-token-value\n").unwrap();
    let source = path.display().to_string();
    for format in [Format::JsonLines, Format::Npy, Format::Fvecs] {
        let options = ReadOptions { format: Some(format), ..Default::default() };
        let err = read_err(&source, &options);
        assert!(err.contains(&source) && !err.contains("s3cr3t") && !err.contains("token-value"), "{err}");
        if let Ok(records) = import::read(&source, &options) {
            let built = import_and_build(dir.path(), &BuildOptions::new("t", Metric::Euclidean), records);
            let err = built.expect_err("refused").to_string();
            assert!(!err.contains("s3cr3t"), "{err}");
        }
    }
    let err = read_err(&source, &ReadOptions { format: Some(Format::JsonLines), ..Default::default() });
    assert!(err.contains("line 1") && err.contains("(not shown)") && err.contains("18 bytes"), "{err}");
}

/// Runs every reader over `bytes` (as an `.npy`, ground-truth `.npy`, `.fvecs` and JSON Lines
/// source) and returns the largest allocation any of them made.
fn read_everything(bytes: &[u8], scratch: &Path) -> usize {
    let ((), largest) = probe::largest_allocation(|| {
        if let Ok(rows) = npy::NpyRows::new(bytes, "f.npy".into(), 0) {
            rows.take(10_000).for_each(drop);
        }
        fvecs::FvecsRows::new(bytes, "f.fvecs".into(), 0).take(10_000).for_each(drop);
        jsonl::JsonLines::new(bytes, "f.jsonl".into()).take(10_000).for_each(drop);
    });
    std::fs::write(scratch, bytes).unwrap();
    let (_, largest_ids) = probe::largest_allocation(|| npy::read_ids(scratch));
    largest.max(largest_ids)
}

/// Readers may buffer a line or a row; nothing near what a lying header claims.
const ALLOCATION_BOUND: usize = 4 << 20;

fn header_strategy() -> impl Strategy<Value = Vec<u8>> {
    let descr = prop::sample::select(vec!["<f4", "<f8", "<i4", "<i8", "|u1", ">f4", ""]);
    let count = prop_oneof![0u64..5, Just(4096u64), Just(4097), any::<u64>(), (0u32..64).prop_map(|b| 1u64 << b)];
    (1u8..=4, descr, count.clone(), count, prop::option::of(any::<u32>()), prop::collection::vec(any::<u8>(), 0..256))
        .prop_map(|(version, descr, rows, dims, declared, data)| {
            let text = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({rows}, {dims}), }}\n");
            let len = declared.unwrap_or(text.len() as u32);
            let mut out = b"\x93NUMPY".to_vec();
            out.extend([version, 0]);
            match version {
                1 => out.extend((len as u16).to_le_bytes()),
                _ => out.extend(len.to_le_bytes()),
            }
            out.extend(text.as_bytes());
            out.extend(data);
            out
        })
}

fn fvecs_strategy() -> impl Strategy<Value = Vec<u8>> {
    let dims = prop_oneof![1i32..8, Just(4096), Just(4097), Just(1 << 16), any::<i32>()];
    prop::collection::vec((dims, prop::collection::vec(any::<u8>(), 0..64)), 0..8).prop_map(|records| {
        records.into_iter().flat_map(|(dims, payload)| dims.to_le_bytes().into_iter().chain(payload)).collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Arbitrary bytes through every reader: no panic, no large allocation.
    #[test]
    fn readers_survive_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let scratch = tempfile::NamedTempFile::new().unwrap();
        let largest = read_everything(&bytes, scratch.path());
        prop_assert!(largest < ALLOCATION_BOUND, "allocated {} bytes", largest);
    }

    /// `.npy` headers whose length field, shape and dtype lie: refused or read, never trusted.
    #[test]
    fn npy_readers_survive_lying_headers(bytes in header_strategy()) {
        let scratch = tempfile::NamedTempFile::new().unwrap();
        let largest = read_everything(&bytes, scratch.path());
        prop_assert!(largest < ALLOCATION_BOUND, "allocated {} bytes", largest);
        if let Err(e) = npy::NpyRows::new(bytes.as_slice(), "f.npy".into(), 0) {
            prop_assert!(e.to_string().starts_with("f.npy: header: field `"), "{}", e);
        }
    }

    /// `.fvecs` records whose dimension lies.
    #[test]
    fn fvecs_survives_lying_dimensions(bytes in fvecs_strategy()) {
        let scratch = tempfile::NamedTempFile::new().unwrap();
        let largest = read_everything(&bytes, scratch.path());
        prop_assert!(largest < ALLOCATION_BOUND, "allocated {} bytes", largest);
        let first = bytes.get(..4).map(|b| i32::from_le_bytes(b.try_into().unwrap()));
        if let Some(dims) = first.filter(|d| !(1..=4096).contains(d)) {
            let err = fvecs::FvecsRows::new(bytes.as_slice(), "f.fvecs".into(), 0).next().unwrap().unwrap_err();
            prop_assert!(err.to_string().starts_with("f.fvecs: row 0: field `dimension`"), "{}: {}", dims, err);
        }
        for r in fvecs::FvecsRows::new(bytes.as_slice(), "f.fvecs".into(), 0) {
            match r {
                Ok(rec) => prop_assert!((1..=4096).contains(&rec.vector.len())),
                Err(e) => prop_assert!(e.to_string().starts_with("f.fvecs: row "), "{}", e),
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Whatever the order and repetition of ids, the id map is a bijection between the distinct
    /// external ids and item ids `0..count`, and last-wins keeps each id's last vector.
    #[test]
    fn id_map_is_a_bijection(ids in prop::collection::vec(0u64..40, 1..80)) {
        let dir = tempfile::tempdir().unwrap();
        let lines: Vec<String> = ids
            .iter()
            .enumerate()
            .map(|(row, id)| serde_json::json!({"id": id, "vector": [row as f32 + 1.0, 1.0, 2.0]}).to_string())
            .collect();
        let path = dir.path().join("v.jsonl");
        std::fs::write(&path, lines.join("\n")).unwrap();
        let source = path.display().to_string();

        let has_duplicates = {
            let mut seen = std::collections::HashSet::new();
            !ids.iter().all(|id| seen.insert(*id))
        };
        let rejected = import_and_build(dir.path(), &BuildOptions::new("strict", Metric::Euclidean), import::read(&source, &ReadOptions::default()).unwrap());
        prop_assert_eq!(rejected.is_err(), has_duplicates);

        let mut options = BuildOptions::new("lw", Metric::Euclidean);
        options.duplicates = Duplicates::LastWins;
        options.batch_rows = 7;
        import_and_build(dir.path(), &options, import::read(&source, &ReadOptions::default()).unwrap()).unwrap();
        let c = Collection::open(&dir.path().join("lw")).unwrap();
        let last_row: HashMap<u64, usize> = ids.iter().enumerate().map(|(row, id)| (*id, row)).collect();
        prop_assert_eq!(c.len() as usize, last_row.len());
        for item in 0..c.len() as u32 {
            let external = c.external_id(item);
            prop_assert_eq!(c.item_of(external).unwrap(), Some(item));
            prop_assert_eq!(c.vector(item)[0], last_row[&external] as f32 + 1.0);
        }
    }
}
