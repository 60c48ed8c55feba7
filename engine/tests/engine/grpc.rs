//! The Search and Admin gRPC services and health, served on 127.0.0.1 in this process.

use quiver_engine::alias::Catalog;
use quiver_engine::collection::builder::{BuildOptions, import_and_build};
use quiver_engine::datagen::Clustered;
use quiver_engine::distance::Metric;
use quiver_engine::import::{self, ReadOptions, npy};
use quiver_engine::metrics::Metrics;
use quiver_engine::serve::proto::admin_client::AdminClient;
use quiver_engine::serve::proto::search_client::SearchClient;
use quiver_engine::serve::proto::{DrainRequest, SearchRequest, StatusRequest, VerifyRequest};
use quiver_engine::serve::{Node, ServeConfig};
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
    let node = Arc::new(Node::new(catalog, Arc::new(Metrics::new())).await);
    node.set_ready(true).await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server =
        tokio::spawn(quiver_engine::serve::serve(node.clone(), listener, ServeConfig::default(), None, async {
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
    // The drain closed every connection (GOAWAY); a new one is answered, health says NOT_SERVING.
    let channel = tonic::transport::Channel::from_shared(url.clone()).unwrap().connect().await.unwrap();
    let mut health = HealthClient::new(channel);
    let drained = health.check(check("quiver.v1.Search")).await.unwrap().into_inner().status;
    assert_eq!(drained, ServingStatus::NotServing as i32);
    assert_eq!(health.check(check("")).await.unwrap().into_inner().status, ServingStatus::NotServing as i32);
    assert!(!node.is_ready());
    let mut search = SearchClient::connect(url.clone()).await.unwrap();
    assert_eq!(search.search(request(2, query.clone())).await.unwrap().into_inner().hits.len(), 2);
    let text = node.metrics.render();
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
    use quiver_engine::client::{Client, ClientOptions};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("base.npy");
    let data = Clustered::new(DIMS, 4).generate(300, 1);
    npy::write_f32(&path, 300, DIMS, &data).unwrap();
    let records = import::read(&path.display().to_string(), &ReadOptions::default()).unwrap();
    import_and_build(dir.path(), &BuildOptions::new("v1", Metric::Cosine), records).unwrap();
    let catalog = Arc::new(Catalog::open(dir.path()).unwrap());
    let node = Arc::new(Node::new(catalog, Arc::new(Metrics::new())).await);
    node.set_ready(true).await;

    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert = certified.cert.pem().into_bytes();
    let config = ServeConfig {
        tls: Some((cert.clone(), certified.signing_key.serialize_pem().into_bytes())),
        token: Some("t0ken".into()),
        search_requires_token: true,
        ..Default::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(quiver_engine::serve::serve(node, listener, config, None, std::future::pending()));

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
