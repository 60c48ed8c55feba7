//! The local end-to-end suite: real `quiver` processes (writer, replicas, jobs) on 127.0.0.1,
//! a forwarder playing the alias Service. Each scenario asserts what users rely on, not just
//! exit codes.

use quiver_api::client::{Client, ClientOptions};
use quiver_api::proto::{self, SearchRequest, WriterPhase};
use quiver_e2e::{Forwarder, Proc, assert_none_failed, dataset, operator_gate_passes, query, run};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tonic::Code;

const DIMS: usize = 32;
const N: usize = 3000;
const READY: Duration = Duration::from_secs(120);

fn writer(dir: &Path, name: &str, collection: &str, source: Option<&str>, extra: &[&str]) -> Proc {
    let data = dir.join(name).display().to_string();
    let mut args = vec![
        "writer",
        "--data-dir",
        &data,
        "--collection",
        collection,
        "--listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
    ];
    if let Some(source) = source {
        args.extend(["--source", source]);
    }
    args.extend(extra);
    Proc::start(dir, name, &args)
}

fn replica(dir: &Path, name: &str, collection: &str, from: &[String], extra: &[&str]) -> Proc {
    let data = dir.join(name).display().to_string();
    let from = from.join(",");
    let mut args = vec![
        "replica",
        "--data-dir",
        &data,
        "--collection",
        collection,
        "--snapshot-from",
        &from,
        "--listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
    ];
    args.extend(extra);
    Proc::start(dir, name, &args)
}

/// A writer that imported `collection` from generated data, and is ready (snapshot written).
async fn built(dir: &Path, collection: &str, seed: u64) -> (Proc, Vec<f32>) {
    let (source, data) = dataset(dir, &format!("{collection}.npy"), N, DIMS, seed);
    let mut w = writer(dir, &format!("writer-{collection}"), collection, Some(&source), &[]);
    w.wait_serving(READY).await;
    (w, data)
}

/// Collections v1 and v2, each with its writer and one serving replica: [w1, r1, w2, r2].
async fn two_collections(dir: &Path) -> [Proc; 4] {
    let (w1, _) = built(dir, "v1", 1).await;
    let (w2, _) = built(dir, "v2", 2).await;
    let mut r1 = replica(dir, "r1", "v1", &[w1.url()], &[]);
    let mut r2 = replica(dir, "r2", "v2", &[w2.url()], &[]);
    r1.wait_serving(READY).await;
    r2.wait_serving(READY).await;
    [w1, r1, w2, r2]
}

/// Held-out queries from the same distribution as the data of `seed`.
fn queries(seed: u64, n: usize) -> Vec<Vec<f32>> {
    let tmp = tempfile::tempdir().unwrap();
    let flat = quiver_e2e::queries(tmp.path(), n, DIMS, seed);
    flat.chunks(DIMS).map(|c| c.to_vec()).collect()
}

fn ids(response: &proto::SearchResponse) -> Vec<u64> {
    response.hits.iter().map(|h| h.id).collect()
}

/// The verify Job against `replica`: exit status, its stderr, and the report it wrote to its
/// result file (the termination message in a pod).
fn verify_job(
    dir: &Path,
    replica: &Proc,
    collection: &str,
    gates: &[&str],
) -> (std::process::ExitStatus, String, serde_json::Value) {
    let result = dir.join(format!("verify-{}.json", replica.name));
    let (target, result_file) = (replica.url(), result.display().to_string());
    let mut args = vec!["verify", "--target", &target, "--collection", collection, "--result-file", &result_file];
    args.extend(gates);
    let (status, _, err) = run(&args);
    (status, err.clone(), serde_json::from_str(&std::fs::read_to_string(&result).expect(&err)).expect("result JSON"))
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("result file")).expect("result JSON")
}

/// Queries sent continuously through `client` until `stop`; every outcome is kept.
fn load(client: Client, stop: Arc<AtomicBool>, batch: usize) -> tokio::task::JoinHandle<Vec<Result<String, String>>> {
    tokio::spawn(async move {
        let qs = queries(9, 64);
        let mut outcomes = Vec::new();
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            let request =
                proto::BatchSearchRequest { queries: (0..batch).map(|j| query(&qs[(i + j) % qs.len()], 5)).collect() };
            i += batch;
            outcomes.push(match client.batch_search(request).await {
                Ok(r) => Ok(r.results[0].collection.clone()),
                Err(status) => Err(format!("{status:?}")),
            });
        }
        outcomes
    })
}

/// 1. The writer imports and builds; two replicas fetch the snapshot (the second from the
/// first, a peer) and return identical top-k; recall against exact meets the verify gate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_fetch_the_snapshot_and_answer_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (w, _) = built(dir, "v1", 1).await;
    let mut r1 = replica(dir, "r1", "v1", &[w.url()], &[]);
    r1.wait_serving(READY).await;
    let mut r2 = replica(dir, "r2", "v1", &[r1.url()], &[]);
    r2.wait_serving(READY).await;
    assert!(r2.log_text().contains(&format!("from {}", r1.url())), "r2 fetched from its peer:\n{}", r2.log_text());

    let (c1, c2) = (r1.client(), r2.client());
    let mut overlap = 0usize;
    let qs = queries(1, 30);
    for q in &qs {
        // Pinned to the sign-code scan: the calibrated default could be the exact scan itself.
        let a = c1.search(SearchRequest { strategy: "signscan".into(), ..query(q, 10) }).await.unwrap();
        let b = c2.search(SearchRequest { strategy: "signscan".into(), ..query(q, 10) }).await.unwrap();
        assert_eq!(a.collection, "v1");
        assert_eq!(ids(&a), ids(&b), "replicas of one snapshot answer identically");
        let exact = c1.search(SearchRequest { strategy: "exact".into(), ..query(q, 10) }).await.unwrap();
        overlap += ids(&a).iter().filter(|id| ids(&exact).contains(id)).count();
    }
    let recall = overlap as f64 / (qs.len() * 10) as f64;
    assert!(recall >= 0.9, "recall@10 vs exact {recall} below the verify threshold 0.9");

    let (status, err, report) =
        verify_job(dir, &r2, "v1", &["--expected-count", &N.to_string(), "--min-recall", "0.9"]);
    assert!(status.success(), "{err}");
    assert_eq!(report["passed"], true);
}

/// 2. The alias Service flips from v1's replica to v2's while queries flow, and v1's
/// replica drains: no query fails and the answers move from v1 to v2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alias_flip_under_load_loses_no_query() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let [_w1, r1, _w2, r2] = two_collections(dir).await;

    let service = Forwarder::start(vec![r1.grpc]).await;
    // One attempt per call: "no query fails" means no call failed, not that a retry hid it.
    let client = Client::new(&service.url(), ClientOptions { attempts: 1, ..Default::default() }).unwrap();
    let heartbeat = client.heartbeat(Duration::from_millis(100));
    let stop = Arc::new(AtomicBool::new(false));
    let loads = [load(client.clone(), stop.clone(), 4), load(client.clone(), stop.clone(), 4)];
    tokio::time::sleep(Duration::from_secs(1)).await;
    service.set_backends(vec![r2.grpc]);
    r1.client().drain().await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    heartbeat.abort();
    let mut outcomes = Vec::new();
    for l in loads {
        outcomes.push(l.await.unwrap());
    }
    assert_none_failed(outcomes.iter().flatten());
    assert!(outcomes.iter().flatten().any(|o| o.as_deref() == Ok("v1")), "answers from v1 before the flip");
    for per_client in &outcomes {
        let tail = &per_client[per_client.len().saturating_sub(10)..];
        assert!(tail.iter().all(|o| o.as_deref() == Ok("v2")), "answers moved to v2: {tail:?}");
    }
}

/// 3. A replica killed in the middle of its snapshot download resumes from the bytes it has
/// after a restart, and ends verified. While it downloads it logs bytes, rate and time left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_replica_resumes_the_download() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (w, _) = built(dir, "v1", 1).await;
    let partial = dir.join("r1/.snapshots/v1.mdb.partial");
    let mut r1 = replica(
        dir,
        "r1",
        "v1",
        &[w.url()],
        &["--fetch-bytes-per-sec", "262144", "--fetch-progress-interval-secs", "1"],
    );
    let deadline = std::time::Instant::now() + READY;
    while std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0) < 300_000 {
        assert!(std::time::Instant::now() < deadline, "no partial download:\n{}", r1.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let progress = r1.wait_for_log(&format!("fetching the snapshot of v1 from {}", w.url()), READY);
    // The whole 1.6 MiB is one chunk (the cap sleeps after it): the line is by the clock.
    assert!(progress.contains(" MiB (") && progress.contains(" MiB/s, about "), "{progress}");
    r1.kill();
    let held = std::fs::metadata(&partial).unwrap().len();
    assert!(!dir.join("r1/v1").exists(), "nothing installed from a partial file");

    // Restarted on the same data directory, without the rate cap.
    let data = dir.join("r1").display().to_string();
    let from = w.url();
    let mut r1 = Proc::start(
        dir,
        "r1-again",
        &["replica", "--data-dir", &data, "--collection", "v1", "--snapshot-from", &from, "--listen", "127.0.0.1:0"],
    );
    let line = r1.wait_for_log("resuming the snapshot download at byte", READY);
    let at: u64 = line.split("at byte ").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    assert!(at > 0 && at <= held, "resumed at {at}, held {held}: {line}");
    r1.wait_serving(READY).await;
    let (status, err, _) = verify_job(dir, &r1, "v1", &["--expected-count", &N.to_string()]);
    assert!(status.success(), "{err}");
}

/// 4. One flipped byte in the snapshot: the replica refuses it, exits non-zero, and never
/// reports SERVING.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_snapshot_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (w, _) = built(dir, "v1", 1).await;
    let file = dir.join("writer-v1/.snapshots/v1.mdb");
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    std::fs::write(&file, &bytes).unwrap();

    let mut r1 = replica(dir, "r1", "v1", &[w.url()], &[]);
    let client = r1.client();
    let mut ever_serving = false;
    let status = loop {
        if let Ok(tonic_health::pb::health_check_response::ServingStatus::Serving) = client.health("").await {
            ever_serving = true;
        }
        if let Some(status) = r1.try_exit() {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let log = r1.log_text();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("checksum mismatch"), "{log}");
    assert!(!ever_serving, "a corrupt snapshot must never be served");
    assert!(!dir.join("r1/v1").exists() && !dir.join("r1/.snapshots/v1.json").exists());
}

/// 5. The writer killed (`kill -9`) in the middle of an ETL push: the stream it acknowledged
/// survives the restart and is sealed with the rest, while the stream the kill cut off, and a
/// stream refused for a bad record, leave none of their rows (so the ETL's retry adds no
/// duplicates); no half collection is ever visible.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_killed_mid_push_keeps_what_it_acknowledged() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_, data) = dataset(dir, "v1.npy", N, DIMS, 1);
    let batches = |rows: std::ops::Range<usize>| {
        let records: Vec<_> = rows
            .map(|i| proto::Record { id: i as u64, vector: data[i * DIMS..][..DIMS].to_vec(), ..Default::default() })
            .collect();
        records
            .chunks(500)
            .map(|c| proto::WriteBatch { collection: "v1".into(), records: c.to_vec() })
            .collect::<Vec<_>>()
    };
    let mut w = writer(dir, "writer", "v1", None, &[]);
    w.wait_for_log("waiting for Ingest", READY);
    let summary = w.client().ingest_client().write(futures::stream::iter(batches(0..1000))).await.unwrap();
    assert_eq!(summary.into_inner().rows, 1000);
    assert_eq!(w.client().progress("v1").await.unwrap().phase(), WriterPhase::Receiving);
    // A second stream has sent 1,000 rows but not ended when the writer is killed.
    let (more, open) = tokio::sync::mpsc::channel(4);
    let client = w.client();
    let cut =
        tokio::spawn(
            async move { client.ingest_client().write(tokio_stream::wrappers::ReceiverStream::new(open)).await },
        );
    for batch in batches(1000..2000) {
        more.send(batch).await.unwrap();
    }
    let spool = dir.join("writer/.spool/v1");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !std::fs::read_dir(&spool).unwrap().any(|e| e.unwrap().path().extension().is_some_and(|x| x == "partial")) {
        assert!(std::time::Instant::now() < deadline, "the open stream never reached the spool");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    w.kill();
    assert!(cut.await.unwrap().is_err(), "the cut stream was never acknowledged");
    assert!(!dir.join("writer/v1").exists());

    let w = writer(dir, "writer", "v1", None, &["--dimensions", "32"]);
    let progress = w.client().progress("v1").await.unwrap();
    assert_eq!((progress.phase(), progress.rows), (WriterPhase::Receiving, 1000), "exactly what was acknowledged");
    assert_eq!(w.client().status("v1").await.unwrap_err().code(), Code::NotFound);
    assert_eq!(w.client().search(query(&data[..DIMS], 3)).await.unwrap_err().code(), Code::NotFound);

    // A bad record refuses its whole stream, naming the record and the field: the good batch
    // before it is not kept either.
    let mut stream = batches(1000..2000);
    stream[1].records[1].vector[7] = f32::NAN;
    let err = w.client().ingest_client().write(futures::stream::iter(stream)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("field `records[1].vector[7]` = NaN"), "{}", err.message());
    let mut short = batches(1000..1002).remove(0);
    short.records[0].vector.pop();
    let err = w.client().ingest_client().write(futures::stream::iter(vec![short])).await.unwrap_err();
    assert!(err.message().contains("field `records[0].vector` = 31 values"), "{}", err.message());
    assert_eq!(w.client().progress("v1").await.unwrap().rows, 1000, "refused streams left nothing");

    // The ETL retries everything after the acknowledged stream; ids 1000..2000 come once only
    // (a duplicate would fail the Seal).
    let rest = w.client().ingest_client().write(futures::stream::iter(batches(1000..N))).await.unwrap();
    assert_eq!(rest.into_inner().rows, (N - 1000) as u64);
    let sealed = w.client().ingest_client().seal(proto::SealRequest { collection: "v1".into() }).await.unwrap();
    assert!(sealed.into_inner().manifest_json.contains(&format!("\"count\":{N}")));
    assert_eq!(w.client().status("v1").await.unwrap().count, N as u64);
    assert_eq!(w.client().progress("v1").await.unwrap().phase(), WriterPhase::Sealed);
    let hit = w.client().search(query(&data[5 * DIMS..][..DIMS], 1)).await.unwrap();
    assert_eq!(ids(&hit), vec![5]);
    assert!(!spool.exists(), "the spool goes once sealed");
}

/// 6. Verification against a wrong expected count and an unreachable latency budget: exit 1,
/// the JSON says which checks failed by how much, and the alias stays on v1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_verification_keeps_the_alias() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let [_w1, r1, _w2, r2] = two_collections(dir).await;
    let service = Forwarder::start(vec![r1.grpc]).await;

    let gates = ["--expected-count", &(N + 1).to_string(), "--max-p99-ms", "0.000001"];
    let (status, err, report) = verify_job(dir, &r2, "v2", &gates);
    assert_eq!(status.code(), Some(1), "{err}");
    assert_eq!(report["passed"], false);
    let gate = |name: &str| report["gates"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap().clone();
    assert_eq!((gate("count")["passed"].clone(), gate("count")["margin"].as_f64()), (false.into(), Some(-1.0)));
    let p99 = report["gates"].as_array().unwrap().iter().find(|c| c["name"].as_str().unwrap().contains("p99")).unwrap();
    assert_eq!(p99["passed"], false);
    assert!(p99["margin"].as_f64().unwrap() < 0.0);
    assert!(err.contains("count: measured 3000 == 3001 failed (off by 1)"), "{err}");

    // The operator's gate decides the flip: it refuses, so the alias stays on v1.
    if operator_gate_passes(status.code(), &report.to_string()) {
        service.set_backends(vec![r2.grpc]);
    }
    let client = Client::new(&service.url(), ClientOptions::default()).unwrap();
    let answer = client.search(query(&queries(1, 1)[0], 5)).await.unwrap();
    assert_eq!(answer.collection, "v1");
}

/// 7. SIGTERM to a replica under load: calls in flight complete, clients move to the other
/// replica, the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_completes_in_flight_calls() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (w, _) = built(dir, "v1", 1).await;
    let mut r1 = replica(dir, "r1", "v1", &[w.url()], &["--drain-delay-secs", "0"]);
    let mut r2 = replica(dir, "r2", "v1", &[w.url()], &[]);
    r1.wait_serving(READY).await;
    r2.wait_serving(READY).await;
    let service = Forwarder::start(vec![r1.grpc, r2.grpc]).await;
    let client = Client::new(&service.url(), ClientOptions { attempts: 1, ..Default::default() }).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let loads = [load(client.clone(), stop.clone(), 16), load(client.clone(), stop.clone(), 16)];
    // One long call straight to r1, without retries: it is in flight when SIGTERM arrives.
    let direct = Client::new(&r1.url(), ClientOptions { attempts: 1, ..Default::default() }).unwrap();
    let qs = queries(3, 1000);
    let long = proto::BatchSearchRequest {
        queries: qs.iter().map(|q| SearchRequest { strategy: "exact".into(), ..query(q, 10) }).collect(),
    };
    let in_flight = tokio::spawn(async move {
        let answer = direct.batch_search(long).await;
        (answer, std::time::Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    // Kubernetes removes a terminating pod from the endpoints while it gets SIGTERM.
    service.set_backends(vec![r2.grpc]);
    let signalled = std::time::Instant::now();
    r1.signal("TERM");
    let (answered, finished) = in_flight.await.unwrap();
    let answered = answered.expect("the call in flight at SIGTERM completes");
    assert_eq!(answered.results.len(), 1000);
    assert!(finished > signalled, "the long call was still running when SIGTERM was sent");
    let status = tokio::task::spawn_blocking(move || {
        let status = r1.wait(Duration::from_secs(30));
        (status, r1)
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for l in loads {
        all.extend(l.await.unwrap());
    }
    assert_eq!(status.0.code(), Some(0), "{}", status.1.log_text());
    assert_none_failed(&all);
    assert!(all.len() > 10, "load ran: {} calls", all.len());
}

/// 8. Bad requests get the right status codes, naming the field, and the server keeps
/// serving; a configured token is required on Search, Admin and Ingest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_status_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let token_file = dir.join("token");
    std::fs::write(&token_file, "s3cret\n").unwrap();
    let token = token_file.display().to_string();
    let (source, data) = dataset(dir, "v1.npy", N, DIMS, 1);
    let mut w = writer(dir, "writer", "v1", Some(&source), &["--token-file", &token]);
    w.wait_serving(READY).await;
    let mut r1 = replica(dir, "r1", "v1", &[w.url()], &["--token-file", &token]);
    r1.wait_serving(READY).await;

    let open = r1.client();
    let trusted = Client::new(&r1.url(), ClientOptions { token: Some("s3cret".into()), ..Default::default() }).unwrap();
    let good = query(&data[..DIMS], 5);
    let code_and_message = |e: tonic::Status| (e.code(), e.message().to_string());
    let (code, message) = code_and_message(trusted.search(query(&data[..DIMS + 1], 5)).await.unwrap_err());
    assert_eq!(code, Code::InvalidArgument);
    assert!(message.contains("field `vector` = 33 values"), "{message}");
    let (code, message) = code_and_message(trusted.search(SearchRequest { k: 0, ..good.clone() }).await.unwrap_err());
    assert_eq!(code, Code::InvalidArgument);
    assert!(message.contains("field `k` = 0"), "{message}");
    let mut nan = data[..DIMS].to_vec();
    nan[4] = f32::NAN;
    let (code, message) = code_and_message(trusted.search(query(&nan, 5)).await.unwrap_err());
    assert_eq!(code, Code::InvalidArgument);
    assert!(message.contains("vector[4]"), "{message}");
    let unknown = SearchRequest { collection: "nope".into(), ..good.clone() };
    assert_eq!(trusted.search(unknown).await.unwrap_err().code(), Code::NotFound);
    // Secure by default: with a token configured, Search needs it too.
    assert_eq!(open.search(good.clone()).await.unwrap_err().code(), Code::Unauthenticated);
    let (code, message) = code_and_message(open.status("v1").await.unwrap_err());
    assert_eq!(code, Code::Unauthenticated, "{message}");
    assert!(message.contains("missing bearer token"), "{message}");
    let wrong = Client::new(&r1.url(), ClientOptions { token: Some("guess".into()), ..Default::default() }).unwrap();
    assert_eq!(wrong.status("v1").await.unwrap_err().code(), Code::Unauthenticated);
    let writer_open = w.client();
    let push = proto::WriteBatch { collection: "v1".into(), records: vec![] };
    let denied = writer_open.ingest_client().write(futures::stream::iter(vec![push])).await.unwrap_err();
    assert_eq!(denied.code(), Code::Unauthenticated);

    // Still serving, and the token opens Admin.
    assert_eq!(trusted.search(good).await.unwrap().hits.len(), 5);
    assert_eq!(trusted.status("v1").await.unwrap().count, N as u64);
    let metrics = http_get(r1.http.unwrap(), "/metrics").await;
    assert!(
        metrics.contains(r#"quiver_requests_total{method="quiver.v1.Search/Search",code="InvalidArgument"} 3"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"quiver_requests_total{method="quiver.v1.Admin/Status",code="Unauthenticated"} 2"#),
        "{metrics}"
    );
    assert!(http_get(r1.http.unwrap(), "/readyz").await.starts_with("HTTP/1.1 200"));
}

/// A plain HTTP/1.1 GET: the whole response as text.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: quiver\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

/// `quiver bench --endpoint` measures a running engine through gRPC and reports in the same
/// JSON shape as the in-process bench.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_through_grpc() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (w, _) = built(dir, "v1", 1).await;
    let qpath = dir.join("queries.npy");
    quiver_e2e::generate(&qpath, 50, DIMS, 1, 1);
    let json = dir.join("bench.json");
    let (status, out, err) = run(&[
        "bench",
        "--endpoint",
        &w.url(),
        "--collection",
        "v1",
        "--queries",
        &qpath.display().to_string(),
        "--signscan",
        "10,200",
        "--search-k",
        "0",
        "--warmup",
        "10",
        "--threads",
        "1,4",
        "--json",
        &json.display().to_string(),
    ]);
    assert!(status.success(), "{err}");
    assert!(out.contains(&format!("endpoint={}", w.url())), "{out}");
    let report = read_json(&json);
    assert_eq!(report["endpoint"], w.url());
    assert_eq!(report["dataset"]["n"], N);
    let runs = report["runs"].as_array().unwrap();
    let labels: Vec<_> = runs.iter().map(|r| r["setting"].as_str().unwrap()).collect();
    // The writer built it as users get it, with no arroy trees: no search_k row, and the bench
    // says why.
    assert_eq!(labels, ["exact", "signscan rerank=10", "signscan rerank=200"]);
    assert!(err.contains("no search_k rows: the collection was built with no arroy trees"), "{err}");
    assert_eq!(runs[0]["recall_at_k"], 1.0);
    assert!(runs[2]["recall_at_k"].as_f64().unwrap() >= runs[1]["recall_at_k"].as_f64().unwrap());
    let throughput = report["throughput"].as_array().unwrap();
    assert_eq!(throughput.len(), 2);
    assert!(throughput.iter().all(|t| t["qps"].as_f64().unwrap() > 0.0));
}

/// `--max-connection-age-secs`: the replica closes each connection (GOAWAY) after its age, the
/// client reconnects through the Service without a failed call, so long-lived clients rebalance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connection_age_rotates_connections() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (w, _) = built(dir, "v1", 1).await;
    let mut r1 = replica(dir, "r1", "v1", &[w.url()], &["--max-connection-age-secs", "1"]);
    r1.wait_serving(READY).await;
    let service = Forwarder::start(vec![r1.grpc]).await;
    let client = Client::new(&service.url(), ClientOptions::default()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let running = load(client, stop.clone(), 1);
    tokio::time::sleep(Duration::from_millis(4500)).await;
    stop.store(true, Ordering::Relaxed);
    assert_none_failed(&running.await.unwrap());
    assert!(service.connections() >= 3, "connections were rotated: {} accepted", service.connections());
}

/// 5b. The writer killed while importing from a URL (the source stalls half-way): the half
/// import never becomes a collection, and the next start cleans it up and imports again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_killed_mid_source_import_leaves_nothing_half_built() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (source, _) = dataset(dir, "v1.npy", N, DIMS, 1);
    let bytes = std::fs::read(&source).unwrap();
    // An HTTP source that sends half the file, then hangs.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1.npy", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let bytes = bytes.clone();
            tokio::spawn(async move {
                let mut request = [0u8; 1024];
                let _ = socket.read(&mut request).await;
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", bytes.len());
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.write_all(&bytes[..bytes.len() / 2]).await;
                tokio::time::sleep(Duration::from_secs(600)).await;
            });
        }
    });
    let mut w = writer(dir, "writer", "v1", Some(&url), &[]);
    let client = w.client();
    let deadline = std::time::Instant::now() + READY;
    loop {
        let p = client.progress("v1").await.unwrap();
        if p.phase() == WriterPhase::Importing && p.rows > 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no import progress: {p:?}\n{}", w.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    w.kill();
    let staging = dir.join("writer/.staging");
    assert!(std::fs::read_dir(&staging).unwrap().count() > 0, "the killed import left its staging directory");
    assert!(!dir.join("writer/v1").exists(), "no half collection");

    let mut w = writer(dir, "writer", "v1", Some(&source), &[]);
    w.wait_serving(READY).await;
    assert_eq!(w.client().status("v1").await.unwrap().count, N as u64);
    let left: Vec<_> = std::fs::read_dir(&staging).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "the abandoned staging directory was removed: {left:?}");
}

/// 9. The console of `quiver standalone`, in headless Chromium: the collection table shows the
/// count, a search returns k hits, a flip to a collection that fails its count gate shows the
/// refusal and the alias stays, a passing flip moves it (checked again through the CLI), and
/// the live latency shows the gRPC searches. A screenshot lands in the artifacts directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_a_browser_searches_and_flips_only_through_the_gate() {
    let Some(browser) = quiver_testkit::browser::browser() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = dir.join("standalone").display().to_string();
    let (v1, _) = dataset(dir, "v1.npy", 2000, DIMS, 1);
    let (v2, _) = dataset(dir, "v2.npy", 1500, DIMS, 2);
    for (name, source) in [("v1", &v1), ("v2", &v2)] {
        let root = dir.display().to_string();
        let (status, _, err) =
            run(&["import", "--data-dir", &data, "--collection", name, "--source", source, "--source-root", &root]);
        assert!(status.success(), "{err}");
    }
    let (status, _, err) = run(&["alias", "flip", "--data-dir", &data, "products", "v1", "--expected-count", "2000"]);
    assert!(status.success(), "{err}");
    let mut standalone = Proc::start(
        dir,
        "standalone",
        &["standalone", "--data-dir", &data, "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"],
    );
    standalone.wait_serving(READY).await;
    // Searches over gRPC for the latency chart.
    let client = standalone.client();
    let queries = quiver_e2e::queries(dir, 50, DIMS, 9);
    for q in queries.chunks(DIMS) {
        let request = SearchRequest { collection: "products".into(), ..query(q, 10) };
        client.search(request).await.unwrap();
    }

    let screenshot = quiver_testkit::browser::artifacts().join("engine-console.png");
    let _ = std::fs::remove_file(&screenshot);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/engine-console.js");
    let url = format!("http://{}/", standalone.http.unwrap());
    let browser_run = {
        let env = [
            ("CONSOLE_URL", url),
            ("V1_COUNT", "2000".to_string()),
            ("V2_COUNT", "1500".to_string()),
            ("SCREENSHOT", screenshot.display().to_string()),
        ];
        tokio::task::spawn_blocking(move || browser.run(&script, &env))
    };
    let seen = browser_run.await.unwrap();
    assert!(std::fs::metadata(&screenshot).is_ok_and(|m| m.len() > 10_000), "a screenshot: {seen}");

    // What the page showed is what the catalog holds: moved once, by the passing flip only.
    let (status, shown, err) = run(&["alias", "show", "--data-dir", &data, "products"]);
    assert!(status.success(), "{err}");
    let record: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(record["collection"], "v2", "{shown}");
    let history: Vec<_> = record["history"].as_array().unwrap().iter().map(|f| f["collection"].clone()).collect();
    assert_eq!(history, ["v2", "v1"], "the refused flip left no trace: {shown}");
}
