//! The Search and Admin gRPC services and health, served on 127.0.0.1 in this process.

use quiver_api::proto::admin_client::AdminClient;
use quiver_api::proto::search_client::SearchClient;
use quiver_api::proto::{DrainRequest, SearchRequest, StatusRequest, VerifyRequest};
use quiver_engine::build::import_and_build;
use quiver_engine::catalog::Catalog;
use quiver_engine::collection::builder::BuildOptions;
use quiver_engine::datagen::Clustered;
use quiver_engine::import::{self, ReadOptions, npy};
use quiver_engine::metrics::Metrics;
use quiver_engine::serve::{ServeConfig, ServingProcess};
use quiver_engine::types::Metric;
use std::sync::Arc;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const DIMS: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_admin_and_health_over_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("base.npy");
    let data = Clustered::new(DIMS, 3).generate(1000, 1);
    npy::write_f32(&path, 1000, DIMS, &data).unwrap();
    let records = import::read(&path.display().to_string(), &ReadOptions::default()).unwrap();
    import_and_build(dir.path(), &BuildOptions::new("v1", Metric::Cosine), records).unwrap();
    let catalog = Arc::new(Catalog::open(dir.path()).unwrap());
    let process = Arc::new(ServingProcess::new(catalog, Arc::new(Metrics::new())).await);
    process.set_ready(true).await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server =
        tokio::spawn(quiver_engine::serve::serve(process.clone(), listener, ServeConfig::default(), None, async {
            let _ = stopped.await;
        }));

    let mut search = SearchClient::connect(url.clone()).await.unwrap();
    let query = data[..DIMS].to_vec();
    let request = |k: u32, vector: Vec<f32>| SearchRequest { collection: "v1".into(), vector, k, ..Default::default() };
    let hits = search.search(request(5, query.clone())).await.unwrap().into_inner();
    assert_eq!(hits.collection, "v1");
    assert_eq!(hits.hits.len(), 5);
    assert_eq!(hits.hits[0].id, 0, "a stored vector finds itself first");

    let err = search.search(request(0, query.clone())).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("field `k` = 0"), "{}", err.message());
    let err = search.search(request(5, vec![0.1; DIMS + 1])).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("field `vector` = 17 values"), "{}", err.message());
    let mut nan = query.clone();
    nan[2] = f32::NAN;
    assert!(search.search(request(5, nan)).await.unwrap_err().message().contains("vector[2]"));
    let missing = SearchRequest { collection: "nope".into(), ..request(5, query.clone()) };
    assert_eq!(search.search(missing).await.unwrap_err().code(), Code::NotFound);
    // A Search message above 1 MiB (here 1.5 MiB of partition names, each decoding to a String)
    // is refused before it is decoded; tonic answers OUT_OF_RANGE naming both sizes.
    let names = SearchRequest { partitions: vec![String::new(); 768 << 10], ..request(5, query.clone()) };
    let err = search.clone().max_encoding_message_size(usize::MAX).search(names).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert!(err.message().contains("the limit is: 1048576 bytes"), "{}", err.message());
    // The server keeps serving after bad requests.
    assert_eq!(search.search(request(3, query.clone())).await.unwrap().into_inner().hits.len(), 3);

    let mut admin = AdminClient::connect(url.clone()).await.unwrap();
    let status = admin.status(StatusRequest { collection: "v1".into() }).await.unwrap().into_inner();
    assert_eq!((status.count, status.dimensions, status.distance.as_str()), (1000, DIMS as u32, "cosine"));
    let verdict = admin
        .verify(VerifyRequest {
            collection: "v1".into(),
            expected_count: Some(999),
            min_recall: 0.5,
            sample: 20,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!verdict.passed);
    assert!(verdict.report_json.contains("\"name\":\"count\""));

    let channel = tonic::transport::Channel::from_shared(url.clone()).unwrap().connect().await.unwrap();
    let mut health = HealthClient::new(channel);
    let check = |service: &str| HealthCheckRequest { service: service.into() };
    let serving = health.check(check("quiver.v1.Search")).await.unwrap().into_inner().status;
    assert_eq!(serving, ServingStatus::Serving as i32);
    admin.drain(DrainRequest {}).await.unwrap();
    // A drain is temporary: once the drained connections are gone (GOAWAY; nothing was in
    // flight), a new connection finds the process SERVING again, so a rollback has endpoints.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let channel = tonic::transport::Channel::from_shared(url.clone()).unwrap().connect().await.unwrap();
        let mut health = HealthClient::new(channel);
        let now = health.check(check("quiver.v1.Search")).await.unwrap().into_inner().status;
        if now == ServingStatus::Serving as i32 {
            assert_eq!(health.check(check("")).await.unwrap().into_inner().status, ServingStatus::Serving as i32);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still NOT_SERVING 10 s after the drain");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(process.is_ready());
    let mut search = SearchClient::connect(url.clone()).await.unwrap();
    assert_eq!(search.search(request(2, query.clone())).await.unwrap().into_inner().hits.len(), 2);
    let text = process.metrics.render();
    assert!(
        text.contains(r#"quiver_requests_total{method="quiver.v1.Search/Search",code="InvalidArgument"} 3"#),
        "{text}"
    );

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

/// `quiver standalone` as a process: serves what is under --data-dir, answers through an alias,
/// and exits 0 on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_process_serves_and_stops_on_sigterm() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let base = dir.path().join("base.npy").display().to_string();
    let quiver = env!("CARGO_BIN_EXE_quiver");
    let run = |args: &[&str]| assert!(Command::new(quiver).args(args).output().unwrap().status.success(), "{args:?}");
    run(&["generate", "--out", &base, "--vectors", "500", "--dims", "8"]);
    run(&["import", "--data-dir", &d, "--name", "v1", "--source", &base]);
    run(&["alias", "flip", "--data-dir", &d, "products", "v1", "--min-recall", "0.5", "--sample", "10"]);

    let mut child = Command::new(quiver)
        .args(["standalone", "--data-dir", &d, "--listen", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    stderr.read_line(&mut line).unwrap();
    // Keep reading, so later log lines do not hit a closed pipe.
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    let addr = line.split_whitespace().find_map(|w| w.strip_prefix("grpc=")).expect(&line).to_string();

    let mut search = SearchClient::connect(format!("http://{addr}")).await.unwrap();
    let request = SearchRequest { collection: "products".into(), vector: vec![0.5; 8], k: 3, ..Default::default() };
    let answer = search.search(request.clone()).await.unwrap().into_inner();
    assert_eq!((answer.collection.as_str(), answer.hits.len()), ("v1", 3));

    // The rebuild cycle beside the running server: import v2, verify and flip with the CLI; the
    // server answers from v2 at once.
    run(&["import", "--data-dir", &d, "--name", "v2", "--source", &base]);
    run(&["alias", "flip", "--data-dir", &d, "products", "v2", "--min-recall", "0.5", "--sample", "10"]);
    let answer = search.search(request).await.unwrap().into_inner();
    assert_eq!(answer.collection, "v2");

    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "standalone should exit cleanly on SIGTERM");
}

/// TLS (rustls) with a bearer token required on Search too: a trusted client with the token is
/// answered; without the token, or over plaintext, it is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_a_token_required_on_search() {
    use quiver_api::client::{Client, ClientOptions};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("base.npy");
    let data = Clustered::new(DIMS, 4).generate(300, 1);
    npy::write_f32(&path, 300, DIMS, &data).unwrap();
    let records = import::read(&path.display().to_string(), &ReadOptions::default()).unwrap();
    import_and_build(dir.path(), &BuildOptions::new("v1", Metric::Cosine), records).unwrap();
    let catalog = Arc::new(Catalog::open(dir.path()).unwrap());
    let process = Arc::new(ServingProcess::new(catalog, Arc::new(Metrics::new())).await);
    process.set_ready(true).await;

    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert = certified.cert.pem().into_bytes();
    let config = ServeConfig {
        tls: Some((cert.clone(), certified.signing_key.serialize_pem().into_bytes())),
        token: Some("t0ken".into()),
        ..Default::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(quiver_engine::serve::serve(process, listener, config, None, std::future::pending()));

    let request = SearchRequest { collection: "v1".into(), vector: data[..DIMS].to_vec(), k: 3, ..Default::default() };
    let url = format!("https://localhost:{port}");
    let trusted = ClientOptions { tls_ca: Some(cert.clone()), token: Some("t0ken".into()), ..Default::default() };
    let client = Client::new(&url, trusted.clone()).unwrap();
    assert_eq!(client.search(request.clone()).await.unwrap().hits[0].id, 0);

    let anonymous = Client::new(&url, ClientOptions { token: None, ..trusted }).unwrap();
    assert_eq!(anonymous.search(request.clone()).await.unwrap_err().code(), Code::Unauthenticated);
    let plaintext = ClientOptions { token: Some("t0ken".into()), attempts: 1, ..Default::default() };
    let plain = Client::new(&format!("http://127.0.0.1:{port}"), plaintext).unwrap();
    assert!(plain.search(request).await.is_err(), "plaintext is not served when TLS is on");
}

/// A whole role started in this process from its configuration, with no argument list: the
/// writer imports its source, seals, writes the snapshot, turns SERVING, answers Search for its
/// own collection, and returns 0 when its stop future resolves.
#[test]
fn a_writer_starts_from_its_configuration_and_stops_when_told() {
    use quiver_engine::roles::{ServeRole, writer};
    use quiver_engine::serve::ingest::WritePace;
    use quiver_engine::spool::SpoolLimits;
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("base.npy");
    let data = Clustered::new(DIMS, 4).generate(400, 1);
    npy::write_f32(&source, 400, DIMS, &data).unwrap();
    // A port the OS just handed out; the role binds it again at once.
    let listen = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let config = writer::WriterConfig {
        data_dir: dir.path().join("data"),
        build: BuildOptions::new("v1", Metric::Cosine),
        source: Some(source.display().to_string()),
        read: ReadOptions::default(),
        spool: SpoolLimits::default(),
        pace: WritePace::default(),
        serve: ServeRole { listen, http_listen: None, config: ServeConfig::default(), insecure: false },
        snapshot_store: None,
        restore_from: None,
    };
    std::fs::create_dir_all(&config.data_dir).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let role = std::thread::spawn(move || writer::run_until(config, async move { _ = stopped.await }));

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let served = runtime.block_on(async {
        let url = format!("http://{listen}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let channel = loop {
            let serving = async {
                let channel = tonic::transport::Endpoint::from_shared(url.clone()).unwrap().connect().await.ok()?;
                let status = HealthClient::new(channel.clone())
                    .check(HealthCheckRequest { service: String::new() })
                    .await
                    .ok()?
                    .into_inner()
                    .status;
                (status == ServingStatus::Serving as i32).then_some(channel)
            };
            if let Some(channel) = serving.await {
                break channel;
            }
            assert!(std::time::Instant::now() < deadline, "the writer never turned SERVING");
            if role.is_finished() {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        let query = SearchRequest { vector: data[..DIMS].to_vec(), k: 5, ..Default::default() };
        let answer = SearchClient::new(channel).search(query).await.unwrap().into_inner();
        assert_eq!((answer.collection.as_str(), answer.hits.len(), answer.hits[0].id), ("v1", 5, 0));
        true
    });
    if !served {
        panic!("the writer role ended before serving: {:?}", role.join().unwrap());
    }
    // Closes this side's connections, so the role's graceful shutdown has none to wait for.
    drop(runtime);
    let snapshot = quiver_engine::snapshot::SnapshotDir::new(&dir.path().join("data")).checked_info("v1").unwrap();
    assert_eq!(snapshot.map(|s| s.manifest.count), Some(400), "the sealed snapshot is written");
    stop.send(()).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !role.is_finished() {
        assert!(std::time::Instant::now() < deadline, "the writer did not stop when told");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(role.join().unwrap().unwrap(), 0);
}

/// A process serving `v1` (`rows` x [`DIMS`] cosine vectors) under a fresh data directory, on
/// 127.0.0.1; returns the URL, the process and the directory (kept alive by the caller).
async fn serving(rows: usize, config: ServeConfig) -> (String, Arc<ServingProcess>, tempfile::TempDir, Vec<f32>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("base.npy");
    let data = Clustered::new(DIMS, 4).generate(rows, 1);
    npy::write_f32(&path, rows, DIMS, &data).unwrap();
    let records = import::read(&path.display().to_string(), &ReadOptions::default()).unwrap();
    import_and_build(dir.path(), &BuildOptions::new("v1", Metric::Cosine), records).unwrap();
    let catalog = Arc::new(Catalog::open(dir.path()).unwrap());
    let mut process = ServingProcess::new(catalog, Arc::new(Metrics::new())).await;
    process.snapshots = Some(quiver_engine::snapshot::SnapshotDir::new(dir.path()));
    let process = Arc::new(process);
    process.set_ready(true).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(quiver_engine::serve::serve(process.clone(), listener, config, None, std::future::pending()));
    (url, process, dir, data)
}

fn vm_hwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

mod hostile {
    use super::*;
    use proptest::prelude::*;
    use quiver_api::proto::{BatchSearchRequest, Vector, WarmupRequest};

    fn name() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("v1".to_string()),
            Just(String::new()),
            Just("../v1".to_string()),
            Just("/etc".to_string()),
            Just("v1/../v1".to_string()),
            "[a-zA-Z0-9./_-]{0,12}",
        ]
    }

    fn size() -> impl Strategy<Value = u32> {
        prop_oneof![0..40u32, Just(u32::MAX), 10_001..u32::MAX, Just(1 << 31)]
    }

    fn value() -> impl Strategy<Value = f32> {
        prop_oneof![-2.0f32..2.0, Just(f32::NAN), Just(f32::INFINITY), Just(0.0), Just(f32::MAX)]
    }

    fn search() -> impl Strategy<Value = SearchRequest> {
        (
            name(),
            prop::collection::vec(value(), 0..(2 * DIMS)),
            size(),
            prop::collection::vec(prop_oneof![Just("default".to_string()), "[a-z]{0,4}"], 0..6),
            prop::collection::vec("[a-z:]{0,6}", 0..3),
            prop_oneof![
                Just(String::new()),
                Just("exact".into()),
                Just("index".into()),
                Just("signscan".into()),
                "[a-z]{0,6}"
            ],
            size(),
        )
            .prop_map(|(collection, vector, k, partitions, tags, strategy, quality)| SearchRequest {
                collection,
                vector,
                k,
                partitions,
                tags,
                strategy,
                quality,
                // Probes ride along on a third of the requests, derived so the tuple stays small.
                probes: (quality % 3 == 0).then_some(quality % 50),
            })
    }

    #[derive(Debug, Clone)]
    enum Call {
        Search(SearchRequest),
        Batch(Vec<SearchRequest>, u32),
        Verify(String, u32, u32, Vec<Vec<f32>>),
        Warmup(String, u32),
    }

    fn call() -> impl Strategy<Value = Call> {
        prop_oneof![
            4 => search().prop_map(Call::Search),
            1 => (prop::collection::vec(search(), 0..4), prop_oneof![Just(0u32), Just(2_000), Just(1_025)])
                .prop_map(|(q, n)| Call::Batch(q, n)),
            1 => (name(), size(), size(), prop::collection::vec(prop::collection::vec(value(), 0..20), 0..3))
                .prop_map(|(c, k, s, q)| Call::Verify(c, k, s, q)),
            1 => (name(), size()).prop_map(|(c, m)| Call::Warmup(c, m)),
        ]
    }

    /// Random requests (huge sizes, NaN, wrong dimensions, duplicate and unknown partitions,
    /// names outside the data directory) at an in-process server: every one gets an answer or
    /// a status, the process never aborts, memory stays bounded, and health keeps answering.
    #[test]
    fn random_requests_never_take_the_server_down() {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let (url, _process, _dir, _data) = runtime.block_on(serving(600, ServeConfig::default()));
        let channel = runtime.block_on(tonic::transport::Channel::from_shared(url).unwrap().connect()).unwrap();
        let config = ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() };
        proptest!(config, |(call in call())| {
            runtime.block_on(async {
                let mut search = SearchClient::new(channel.clone());
                let mut admin = AdminClient::new(channel.clone());
                let answered = match call {
                    Call::Search(r) => search.search(r).await.map(|_| ()),
                    Call::Batch(mut queries, n) => {
                        while queries.len() < n as usize {
                            queries.push(queries.first().cloned().unwrap_or_default());
                        }
                        search.batch_search(BatchSearchRequest { queries }).await.map(|_| ())
                    }
                    Call::Verify(collection, k, sample, queries) => admin
                        .verify(VerifyRequest {
                            collection,
                            k,
                            sample,
                            min_recall: 0.5,
                            queries: queries.into_iter().map(|values| Vector { values }).collect(),
                            ..Default::default()
                        })
                        .await
                        .map(|_| ()),
                    Call::Warmup(collection, max_queries) => {
                        admin.warmup(WarmupRequest { collection, max_queries }).await.map(|_| ())
                    }
                };
                if let Err(status) = answered {
                    // A refusal, never a crash of the call.
                    prop_assert!(
                        matches!(status.code(), Code::InvalidArgument | Code::NotFound | Code::FailedPrecondition),
                        "{status:?}"
                    );
                }
                let mut health = HealthClient::new(channel.clone());
                let check = health.check(HealthCheckRequest { service: String::new() }).await;
                prop_assert_eq!(check.unwrap().into_inner().status, ServingStatus::Serving as i32);
                Ok(())
            })?;
        });
        let peak = vm_hwm_kib();
        assert!(peak < 2 * 1024 * 1024, "peak resident memory {peak} KiB");
    }
}

/// Collection names from requests never reach the filesystem unchecked: a relative path into
/// another data directory is refused, never answered from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_outside_the_data_directory_is_refused() {
    let (url, _process, dir, data) = serving(300, ServeConfig::default()).await;
    // Another data directory beside this one, with a collection of its own.
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let path = dir.path().join("base.npy");
    let records = import::read(&path.display().to_string(), &ReadOptions::default()).unwrap();
    import_and_build(&other, &BuildOptions::new("v2", Metric::Cosine), records).unwrap();
    let mut search = SearchClient::connect(url).await.unwrap();
    for name in ["other/v2", "./other/v2", "../", "/etc/passwd", &format!("{}/other/v2", dir.path().display())] {
        let request =
            SearchRequest { collection: name.into(), vector: data[..DIMS].to_vec(), k: 3, ..Default::default() };
        let err = search.search(request).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{name}: {err:?}");
        assert!(err.message().contains("field `name`"), "{name}: {}", err.message());
    }
}

/// With a token configured every service needs it, Search and Snapshot included; health stays
/// open for probes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_guards_every_service_but_health() {
    use quiver_api::proto::ManifestRequest;
    use quiver_api::proto::snapshot_client::SnapshotClient;
    let config = ServeConfig { token: Some("t0ken".into()), ..Default::default() };
    let (url, process, dir, data) = serving(300, config).await;
    let collection = process.catalog.collection("v1").unwrap();
    quiver_engine::snapshot::SnapshotDir::new(dir.path()).write(&collection).unwrap();
    let channel = tonic::transport::Channel::from_shared(url).unwrap().connect().await.unwrap();
    let request = SearchRequest { collection: "v1".into(), vector: data[..DIMS].to_vec(), k: 3, ..Default::default() };
    let err = SearchClient::new(channel.clone()).search(request).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err =
        SnapshotClient::new(channel.clone()).manifest(ManifestRequest { collection: "v1".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let mut authed = tonic::Request::new(ManifestRequest { collection: "v1".into() });
    authed.metadata_mut().insert("authorization", "Bearer t0ken".parse().unwrap());
    assert_eq!(SnapshotClient::new(channel.clone()).manifest(authed).await.unwrap().into_inner().collection, "v1");
    let err = AdminClient::new(channel.clone()).drain(DrainRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let mut health = HealthClient::new(channel);
    let status = health.check(HealthCheckRequest { service: String::new() }).await.unwrap();
    assert_eq!(status.into_inner().status, ServingStatus::Serving as i32);
}

/// A serving role on a non-loopback address without a token refuses to start (exit 2, naming
/// the flag); `--insecure` says it is meant.
#[test]
fn a_public_listener_without_a_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let quiver = env!("CARGO_BIN_EXE_quiver");
    let out = std::process::Command::new(quiver)
        .args(["standalone", "--data-dir", &dir.path().display().to_string(), "--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--listen 0.0.0.0:0") && stderr.contains("--insecure"), "{stderr}");
}

/// Exact scans run on the blocking pool whatever asked for them (the request or the
/// collection's default): while 16 clients run them, health and /livez answer at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_while_exact_scans_run() {
    let (url, process, _dir, data) = serving(20_000, ServeConfig::default()).await;
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_addr = http.local_addr().unwrap();
    let console = quiver_engine::serve::console::Console::new(&ServeConfig::default(), false, None);
    tokio::spawn(quiver_engine::serve::http::serve(process, http, console, std::future::pending()));
    let channel = tonic::transport::Channel::from_shared(url).unwrap().connect().await.unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for i in 0..16 {
        let (channel, stop) = (channel.clone(), stop.clone());
        let vector = data[i * DIMS..(i + 1) * DIMS].to_vec();
        clients.push(tokio::spawn(async move {
            let mut search = SearchClient::new(channel);
            let mut done = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let request = SearchRequest {
                    collection: "v1".into(),
                    vector: vector.clone(),
                    k: 10,
                    strategy: "exact".into(),
                    ..Default::default()
                };
                search.search(request).await.unwrap();
                done += 1;
            }
            done
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut health = HealthClient::new(channel.clone());
    let mut slowest = std::time::Duration::ZERO;
    for _ in 0..20 {
        let started = std::time::Instant::now();
        health.check(HealthCheckRequest { service: String::new() }).await.unwrap();
        let mut livez = tokio::net::TcpStream::connect(http_addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        livez.write_all(b"GET /livez HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.unwrap();
        let mut answer = String::new();
        livez.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut scans = 0;
    for client in clients {
        scans += client.await.unwrap();
    }
    assert!(scans > 16, "the exact scans ran ({scans})");
    assert!(slowest < std::time::Duration::from_millis(100), "health + /livez took {slowest:?} under load");
}

/// Everything this process logs, as text (the subscriber is the process's global one: nextest
/// runs each test in a process of its own). `None` when another subscriber was set first.
fn captured_logs() -> Option<Arc<std::sync::Mutex<Vec<u8>>>> {
    #[derive(Clone)]
    struct Shared(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Shared {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let logs = Shared(Arc::default());
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt().with_ansi(false).with_writer(move || writer.clone()).finish();
    tracing::subscriber::set_global_default(subscriber).ok().map(|()| logs.0)
}

/// A Verify whose call is gone (here: past the client's deadline) stops between queries, says
/// so in the log, and frees the one admin slot: the Verify that follows (an operator's retry)
/// runs at once instead of waiting behind thousands of queries nobody will read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verify_whose_call_is_gone_stops_and_frees_its_slot() {
    let logs = captured_logs();
    let (url, _process, _dir, _) = serving(20_000, ServeConfig::default()).await;
    let mut admin = AdminClient::connect(url).await.unwrap();
    let verify = |sample: u32, timeout: std::time::Duration| {
        let mut request = tonic::Request::new(VerifyRequest { collection: "v1".into(), sample, ..Default::default() });
        request.set_timeout(timeout);
        request
    };
    let gone = admin.verify(verify(10_000, std::time::Duration::from_millis(300))).await.unwrap_err();
    // The client gives up at its deadline (its transport reports it as cancelled); the server
    // drops the call at the same grpc-timeout.
    assert!(matches!(gone.code(), Code::DeadlineExceeded | Code::Cancelled), "{gone:?}");
    let started = std::time::Instant::now();
    let next = admin.verify(verify(20, std::time::Duration::from_secs(20))).await;
    let report = next.unwrap_or_else(|e| panic!("the next Verify waited behind the abandoned one: {e:?}"));
    let report: serde_json::Value = serde_json::from_str(&report.into_inner().report_json).unwrap();
    assert_eq!(report["queries"], 20);
    // Well before the abandoned Verify's 10,000 queries would have ended.
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    match logs {
        Some(logs) => {
            let logs = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
            assert!(
                logs.lines().any(|l| l.contains("WARN")
                    && l.contains("collection=\"v1\"")
                    && l.contains("verification stopped")),
                "the abandoned Verify is logged:\n{logs}"
            );
        }
        None => {
            println!("SKIPPED the log assertion: another test set this process's log subscriber (run under nextest)")
        }
    }
}

/// Exact BatchSearches whose calls are gone (past the client's deadline) stop at their next
/// query and free the search slots: an exact Search sent right after them is answered at once,
/// not after every abandoned scan has run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_exact_batches_stop_and_free_the_search_slots() {
    use quiver_api::proto::BatchSearchRequest;
    let (url, _process, _dir, data) = serving(20_000, ServeConfig::default()).await;
    let exact = |i: usize| SearchRequest {
        collection: "v1".into(),
        vector: data[i * DIMS..(i + 1) * DIMS].to_vec(),
        k: 10,
        strategy: "exact".into(),
        ..Default::default()
    };
    let channel = tonic::transport::Endpoint::from_shared(url).unwrap().connect().await.unwrap();
    let mut search = SearchClient::new(channel);
    // Alone, one such batch takes this long.
    let batch = BatchSearchRequest { queries: (0..256).map(exact).collect() };
    let started = std::time::Instant::now();
    search.batch_search(batch.clone()).await.unwrap();
    let whole = started.elapsed();
    // As many abandoned batches as the server has slots (one per core).
    let slots = std::thread::available_parallelism().map_or(2, |n| n.get());
    for _ in 0..slots {
        let mut request = tonic::Request::new(batch.clone());
        request.set_timeout(std::time::Duration::from_millis(20));
        let mut search = search.clone();
        let gone = search.batch_search(request).await.unwrap_err();
        assert!(matches!(gone.code(), Code::DeadlineExceeded | Code::Cancelled), "{gone:?}");
    }
    let started = std::time::Instant::now();
    search.search(exact(0)).await.unwrap();
    let next = started.elapsed();
    assert!(next * 4 < whole, "the Search waited behind the abandoned batches: {next:?} (one batch: {whole:?})");
}

/// The services every reflection version lists for a process with snapshots and no Ingest:
/// those it serves (never Ingest, which it would answer UNIMPLEMENTED), health, and both
/// reflections.
const LISTED_SERVICES: &[&str] = &[
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
    "quiver.v1.Admin",
    "quiver.v1.Search",
    "quiver.v1.Snapshot",
];

/// Server reflection answers through `grpc.reflection.v1` and `grpc.reflection.v1alpha` alike
/// (older grpcurl, grpcio-reflection, evans and Postman ask only v1alpha), and lists health.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_every_service_through_both_versions() {
    use tonic_reflection::pb::{v1, v1alpha};
    let (url, _process, _dir, _data) = serving(100, ServeConfig::default()).await;
    let channel = tonic::transport::Channel::from_shared(url).unwrap().connect().await.unwrap();

    let list = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let mut answers = client.server_reflection_info(tokio_stream::iter([list])).await.unwrap().into_inner();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(listed)) =
        answers.message().await.unwrap().unwrap().message_response
    else {
        panic!("v1 answered a listing with something else")
    };
    let mut names: Vec<_> = listed.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(names, LISTED_SERVICES, "through grpc.reflection.v1");

    let list = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1alpha::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let symbol = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
            "quiver.v1.Search".into(),
        )),
    };
    let mut client = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let mut answers = client.server_reflection_info(tokio_stream::iter([list, symbol])).await.unwrap().into_inner();
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(listed)) =
        answers.message().await.unwrap().unwrap().message_response
    else {
        panic!("v1alpha answered a listing with something else")
    };
    let mut names: Vec<_> = listed.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(names, LISTED_SERVICES, "through grpc.reflection.v1alpha");
    let Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(files)) =
        answers.message().await.unwrap().unwrap().message_response
    else {
        panic!("v1alpha answered a symbol lookup with something else")
    };
    assert!(!files.file_descriptor_proto.is_empty(), "the file that defines quiver.v1.Search");
}

/// The README's grpcurl calls, run with a grpcurl (1.8.6) that speaks only v1alpha reflection:
/// it lists the services, describes Search, searches, reads a collection's status and checks
/// health, all without .proto files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_describes_and_calls_without_proto_files() {
    let Some(grpcurl) = quiver_testkit::grpcurl::grpcurl() else { return };
    let (url, _process, _dir, data) = serving(100, ServeConfig::default()).await;
    let address = url.trim_start_matches("http://").to_string();
    let run = |args: Vec<String>| {
        let grpcurl = grpcurl.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                quiver_testkit::grpcurl::run(&grpcurl, &args)
            })
            .await
            .unwrap()
        }
    };
    let plaintext = |rest: &[&str]| {
        let mut args = vec!["-plaintext".to_string(), "-emit-defaults".into(), "-max-time".into(), "20".into()];
        args.extend(rest.iter().map(|s| s.to_string()));
        args
    };
    let listed = run(plaintext(&[&address, "list"])).await;
    let mut names: Vec<_> = listed.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    names.sort();
    assert_eq!(names, LISTED_SERVICES, "grpcurl list");
    let described = run(plaintext(&[&address, "describe", "quiver.v1.Search"])).await;
    assert!(described.contains("rpc Search ( .quiver.v1.SearchRequest )"), "{described}");

    let vector: Vec<String> = data[..DIMS].iter().map(|x| x.to_string()).collect();
    let request = format!(r#"{{"collection": "v1", "vector": [{}], "k": 3}}"#, vector.join(", "));
    let found = run(plaintext(&["-d", &request, &address, "quiver.v1.Search/Search"])).await;
    let found: serde_json::Value = serde_json::from_str(&found).unwrap();
    let hits = found["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 3, "{found}");
    assert_eq!(hits[0]["id"], "0", "a stored vector finds itself first (uint64 is a JSON string): {found}");

    let status = run(plaintext(&["-d", r#"{"collection": "v1"}"#, &address, "quiver.v1.Admin/Status"])).await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!((status["count"].as_str(), status["dimensions"].as_u64()), (Some("100"), Some(DIMS as u64)), "{status}");
    let health = run(plaintext(&[&address, "grpc.health.v1.Health/Check"])).await;
    assert!(health.contains(r#""status": "SERVING""#), "{health}");
}
