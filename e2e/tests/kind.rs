//! The kind e2e: a real Kubernetes cluster (kind), the images built from this repository, the
//! Helm chart installed, two collections pushed by an "ETL" through the writer's Ingest API,
//! and the alias Service flipping from v1 to v2 only after each is Ready and verified. Then
//! what the operator promises on a real cluster: deleting a served collection is refused at
//! admission, a spec change that needs a rebuild is refused, the writer restarts without the
//! collection leaving Ready, a rollback to the drained previous collection answers at once, and
//! an operator restarted mid-import carries on. Then an ETL's day as users run it: Parquet
//! parts in S3 (SeaweedFS in the cluster), the count in PostgreSQL (in the cluster), a snapshot
//! store and `writer.afterPublish: Delete`: the collection is imported, published, its writer
//! and volume deleted, a replica added afterwards starts from the store, and the next day's
//! collection, one item short of the database, is refused by the count gate while the alias
//! stays.
//!
//! Needs Docker, kind, kubectl and helm on PATH, and a python3 with pyarrow (or
//! `QUIVER_PYTHON`), which quiver's build machines do not all have (no Docker), so it is
//! ignored by default. `.github/workflows/kind-e2e.yml` runs it on GitHub's runners;
//! users' CI runs it with:
//!
//! ```sh
//! cargo test -p quiver-e2e --test kind -- --ignored --nocapture
//! ```
//!
//! Run without those tools it fails, naming what is missing; it never passes without a cluster.
//! `QUIVER_E2E_KEEP=1` keeps the cluster afterwards for inspection.

use quiver_api::client::{Client, ClientOptions};
use quiver_api::proto;
use quiver_e2e::query;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CLUSTER: &str = "quiver-e2e";
const NAMESPACE: &str = "search";
const TAG: &str = "e2e";
const DIMS: usize = 32;
const N: usize = 3000;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs a command in the repository root; panics with its output when it fails.
fn sh(program: &str, args: &[&str]) -> String {
    eprintln!("+ {program} {}", args.join(" "));
    let out =
        Command::new(program).args(args).current_dir(root()).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{program} {args:?} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

fn kubectl(args: &[&str]) -> String {
    let mut all = vec!["--context", "kind-quiver-e2e"];
    all.extend_from_slice(args);
    sh("kubectl", &all)
}

/// `kubectl` that is expected to fail: its stderr.
fn kubectl_refused(args: &[&str]) -> String {
    let mut all = vec!["--context", "kind-quiver-e2e"];
    all.extend_from_slice(args);
    eprintln!("+ kubectl {} (must be refused)", all.join(" "));
    let out = Command::new("kubectl").args(&all).current_dir(root()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "kubectl {args:?} was to be refused, but succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

/// One field of a namespaced object, empty while it (or the field) does not exist.
fn field(object: &str, jsonpath: &str) -> String {
    get(&[object], jsonpath)
}

/// `kubectl get <what...> -o jsonpath=...` in the test namespace (`what` may carry a `-l`
/// selector as separate arguments); empty while nothing matches.
fn get(what: &[&str], jsonpath: &str) -> String {
    let jsonpath = format!("jsonpath={jsonpath}");
    let mut args = vec!["--context", "kind-quiver-e2e", "-n", NAMESPACE, "get"];
    args.extend_from_slice(what);
    args.extend(["-o", &jsonpath]);
    let out = Command::new("kubectl").args(&args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Polls until `check` holds; `kubectl wait` exits at once ("no matching resources") on an
/// object that does not exist yet, so every wait here starts with this.
fn eventually(what: &str, timeout: Duration, check: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The token the operator generated for `collection` (an ETL reads it the same way).
fn token(collection: &str) -> String {
    let secret = format!("secret/{collection}-token");
    eventually(&format!("{secret} to exist"), Duration::from_secs(120), || !field(&secret, "{.data.token}").is_empty());
    let encoded = field(&secret, "{.data.token}");
    let bytes: k8s_openapi::ByteString = serde_json::from_value(serde_json::json!(encoded)).unwrap();
    String::from_utf8(bytes.0).unwrap()
}

/// Applies a manifest given as text.
fn apply(yaml: &str) {
    let mut child = Command::new("kubectl")
        .args(["--context", "kind-quiver-e2e", "apply", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(yaml.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "kubectl apply failed for:\n{yaml}");
}

/// Deletes the cluster when the test ends, unless asked to keep it.
struct Cluster;

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::env::var("QUIVER_E2E_KEEP").is_err() {
            let _ = Command::new("kind").args(["delete", "cluster", "--name", CLUSTER]).status();
        }
    }
}

/// `kubectl port-forward` to a Service or pod; stopped when dropped.
struct PortForward {
    child: Child,
    url: String,
}

impl PortForward {
    /// To quiver's gRPC port 7700 of `target`.
    fn start(target: &str, local_port: u16) -> PortForward {
        PortForward::to(target, local_port, 7700)
    }

    fn to(target: &str, local_port: u16, remote_port: u16) -> PortForward {
        let child = Command::new("kubectl")
            .args([
                "--context",
                "kind-quiver-e2e",
                "-n",
                NAMESPACE,
                "port-forward",
                target,
                &format!("{local_port}:{remote_port}"),
            ])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", local_port)).is_err() {
            assert!(Instant::now() < deadline, "port-forward to {target} did not open");
            std::thread::sleep(Duration::from_millis(200));
        }
        PortForward { child, url: format!("http://127.0.0.1:{local_port}") }
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collection_yaml(name: &str) -> String {
    format!(
        "apiVersion: quiver.dev/v1alpha1
kind: VectorCollection
metadata: {{name: {name}, namespace: {NAMESPACE}}}
spec:
  dimensions: {DIMS}
  distance: cosine
  source: {{push: {{expectedCount: {N}}}}}
  writer: {{storage: 1Gi}}
  replicas: {{count: 2}}
  verify: {{minRecall: 0.9, k: 10, sample: 100}}
"
    )
}

/// The ETL: pushes generated vectors through the writer's Ingest API (with the collection's
/// token) and seals, unless `seal` is false.
fn push(runtime: &tokio::runtime::Runtime, name: &str, seed: u64, port: u16, seal: bool) {
    let selector = format!("quiver.dev/collection={name},quiver.dev/role=writer");
    eventually(&format!("the writer pod of {name}"), Duration::from_secs(120), || {
        !get(&["pods", "-l", &selector], "{.items[*].metadata.name}").is_empty()
    });
    kubectl(&[
        "-n",
        NAMESPACE,
        "wait",
        "--for=jsonpath={.status.phase}=Running",
        "pod",
        "-l",
        &format!("quiver.dev/collection={name},quiver.dev/role=writer"),
        "--timeout=300s",
    ]);
    let forward = PortForward::start(&format!("svc/{name}-writer"), port);
    let tmp = tempfile::tempdir().unwrap();
    let data = quiver_e2e::generate(&tmp.path().join("data.npy"), N, DIMS, seed, 0);
    let token = token(name);
    runtime.block_on(async {
        let options = ClientOptions { token: Some(token), ..Default::default() };
        let client = Client::new(&forward.url, options).unwrap();
        let batches: Vec<_> = (0..N)
            .collect::<Vec<_>>()
            .chunks(500)
            .map(|rows| proto::WriteBatch {
                collection: name.to_string(),
                records: rows
                    .iter()
                    .map(|&i| proto::Record {
                        id: i as u64,
                        vector: data[i * DIMS..][..DIMS].to_vec(),
                        ..Default::default()
                    })
                    .collect(),
            })
            .collect();
        let written = client.ingest_client().write(futures::stream::iter(batches)).await.unwrap().into_inner();
        assert_eq!(written.rows, N as u64);
        if seal {
            client.ingest_client().seal(proto::SealRequest { collection: name.to_string() }).await.unwrap();
        }
    });
}

fn seal(runtime: &tokio::runtime::Runtime, name: &str, port: u16) {
    let forward = PortForward::start(&format!("svc/{name}-writer"), port);
    let token = token(name);
    runtime.block_on(async {
        let client = Client::new(&forward.url, ClientOptions { token: Some(token), ..Default::default() }).unwrap();
        client.ingest_client().seal(proto::SealRequest { collection: name.to_string() }).await.unwrap();
    });
}

fn wait_ready(name: &str) {
    eventually(&format!("vc/{name} to exist"), Duration::from_secs(60), || {
        !field(&format!("vc/{name}"), "{.metadata.name}").is_empty()
    });
    kubectl(&[
        "-n",
        NAMESPACE,
        "wait",
        "--for=jsonpath={.status.phase}=Ready",
        &format!("vc/{name}"),
        "--timeout=600s",
    ]);
}

fn wait_alias(target: &str) {
    eventually("ca/products to exist", Duration::from_secs(60), || {
        !field("ca/products", "{.metadata.name}").is_empty()
    });
    kubectl(&[
        "-n",
        NAMESPACE,
        "wait",
        &format!("--for=jsonpath={{.status.current}}={target}"),
        "ca/products",
        "--timeout=300s",
    ]);
}

/// Which collection answers a query sent through the alias Service.
fn answered_by(runtime: &tokio::runtime::Runtime, port: u16) -> String {
    let forward = PortForward::start("svc/products", port);
    let tmp = tempfile::tempdir().unwrap();
    let q = quiver_e2e::queries(tmp.path(), 1, DIMS, 1);
    runtime.block_on(async {
        let client = Client::new(&forward.url, ClientOptions::default()).unwrap();
        client.search(query(&q, 5)).await.unwrap().collection
    })
}

#[test]
#[ignore = "needs Docker, kind, kubectl and helm (absent on the build machines): cargo test -p quiver-e2e --test kind -- --ignored"]
fn operator_on_kind_flips_the_alias_after_verification() {
    let python = std::env::var("QUIVER_PYTHON").unwrap_or_else(|_| "python3".into());
    // `docker version` also fails when there is a client but no engine.
    let works = |tool: &str, args: &[&str]| Command::new(tool).args(args).output().is_ok_and(|o| o.status.success());
    let missing: Vec<_> = [
        ("docker", &["version"][..]),
        ("kind", &["version"]),
        ("kubectl", &["version", "--client"]),
        ("helm", &["version"]),
        (python.as_str(), &["-c", "import pyarrow"]),
    ]
    .into_iter()
    .filter(|(tool, args)| !works(tool, args))
    .map(|(tool, _)| tool)
    .collect();
    assert!(missing.is_empty(), "the kind e2e needs {missing:?} on PATH; it does not pass without a cluster");

    let engine_image = format!("ghcr.io/quiver-dev/quiver:{TAG}");
    let operator_image = format!("ghcr.io/quiver-dev/quiver-operator:{TAG}");
    sh("docker", &["build", "-f", "engine/Dockerfile", "-t", &engine_image, "."]);
    sh("docker", &["build", "-f", "operator/Dockerfile", "-t", &operator_image, "."]);
    let _ = Command::new("kind").args(["delete", "cluster", "--name", CLUSTER]).status();
    sh("kind", &["create", "cluster", "--name", CLUSTER, "--wait", "180s"]);
    let _cluster = Cluster;
    sh("kind", &["load", "docker-image", "--name", CLUSTER, &engine_image, &operator_image]);
    sh(
        "helm",
        &[
            "--kube-context",
            "kind-quiver-e2e",
            "install",
            "quiver",
            "charts/quiver",
            "--namespace",
            "quiver-system",
            "--create-namespace",
            "--set",
            &format!("image.tag={TAG}"),
            "--set",
            &format!("engineImage={engine_image}"),
            "--wait",
            "--timeout",
            "5m",
        ],
    );
    kubectl(&["create", "namespace", NAMESPACE]);
    let runtime = tokio::runtime::Runtime::new().unwrap();

    apply(&collection_yaml("products-v1"));
    push(&runtime, "products-v1", 1, 17701, true);
    wait_ready("products-v1");
    apply(&format!(
        "apiVersion: quiver.dev/v1alpha1\nkind: CollectionAlias\nmetadata: {{name: products, namespace: {NAMESPACE}}}\nspec: {{collection: products-v1}}\n"
    ));
    wait_alias("products-v1");
    assert_eq!(answered_by(&runtime, 17801), "products-v1");

    apply(&collection_yaml("products-v2"));
    kubectl(&[
        "-n",
        NAMESPACE,
        "patch",
        "ca/products",
        "--type=merge",
        "-p",
        r#"{"spec":{"collection":"products-v2"}}"#,
    ]);
    // v2 is not verified yet: the alias must stay on v1 and say why.
    std::thread::sleep(Duration::from_secs(5));
    let current = kubectl(&["-n", NAMESPACE, "get", "ca/products", "-o", "jsonpath={.status.current}"]);
    assert_eq!(current, "products-v1", "no flip before the target is Ready and verified");
    assert_eq!(answered_by(&runtime, 17802), "products-v1");

    push(&runtime, "products-v2", 2, 17702, true);
    wait_ready("products-v2");
    wait_alias("products-v2");
    assert_eq!(answered_by(&runtime, 17803), "products-v2");
    let previous = kubectl(&["-n", NAMESPACE, "get", "ca/products", "-o", "jsonpath={.status.previous}"]);
    assert_eq!(previous, "products-v1", "the previous target is kept for rollback");

    // Deleting what an alias serves is refused at admission (current and previous), also with a
    // foreground cascade that would remove the pods first.
    for (target, role) in [("products-v2", "current"), ("products-v1", "previous")] {
        let refused = kubectl_refused(&["-n", NAMESPACE, "delete", &format!("vc/{target}"), "--cascade=foreground"]);
        assert!(refused.contains(&format!("is served by alias products ({role})")), "{refused}");
    }
    assert_eq!(field("deployment/products-v2-replicas", "{.status.readyReplicas}"), "2", "nothing was removed");

    // A change that needs a rebuild is refused, naming what to do instead.
    let refused = kubectl_refused(&[
        "-n",
        NAMESPACE,
        "patch",
        "vc/products-v2",
        "--type=merge",
        "-p",
        r#"{"spec":{"source":{"push":{"expectedCount":1}}}}"#,
    ]);
    assert!(refused.contains("source is immutable") && refused.contains("create a new collection"), "{refused}");

    // The writer restarts: the collection stays Ready all along (the writer's own state is
    // WriterAvailable), and the alias keeps answering.
    kubectl(&["-n", NAMESPACE, "delete", "pod", "products-v2-writer-0", "--wait=false"]);
    let restarted = Instant::now();
    while restarted.elapsed() < Duration::from_secs(40) {
        assert_eq!(field("vc/products-v2", "{.status.phase}"), "Ready", "a writer restart left Ready");
        std::thread::sleep(Duration::from_secs(1));
    }
    eventually("the restarted writer to be available", Duration::from_secs(300), || {
        field("vc/products-v2", r#"{.status.conditions[?(@.type=="WriterAvailable")].status}"#) == "True"
    });
    assert_eq!(answered_by(&runtime, 17804), "products-v2");

    // Rollback to the drained previous collection: immediate, and it answers.
    eventually("v1 to be drained", Duration::from_secs(120), || {
        field("ca/products", "{.status.drained}") == "products-v1"
    });
    kubectl(&[
        "-n",
        NAMESPACE,
        "patch",
        "ca/products",
        "--type=merge",
        "-p",
        r#"{"spec":{"collection":"products-v1"}}"#,
    ]);
    wait_alias("products-v1");
    assert_eq!(answered_by(&runtime, 17805), "products-v1", "the drained replicas serve again");

    // The operator restarts mid-import and carries on.
    apply(&collection_yaml("products-v3"));
    push(&runtime, "products-v3", 3, 17703, false);
    kubectl(&["-n", "quiver-system", "rollout", "restart", "deployment/quiver"]);
    kubectl(&["-n", "quiver-system", "rollout", "status", "deployment/quiver", "--timeout=180s"]);
    seal(&runtime, "products-v3", 17706);
    wait_ready("products-v3");
    kubectl(&[
        "-n",
        NAMESPACE,
        "patch",
        "ca/products",
        "--type=merge",
        "-p",
        r#"{"spec":{"collection":"products-v3"}}"#,
    ]);
    wait_alias("products-v3");
    assert_eq!(answered_by(&runtime, 17806), "products-v3");

    etl_from_s3_parquet(&runtime, &python);
}

/// An S3 server and a product database in the cluster.
const ETL_SERVERS: &str = include_str!("kind/etl-servers.yaml");

/// The product database's password, as etl-servers.yaml sets it.
const DB_PASSWORD: &str = "kind-e2e-db-password";

/// A statement in the product database.
fn sql(statement: &str) -> String {
    kubectl(&["-n", NAMESPACE, "exec", "deploy/product-db", "--", "psql", "-U", "postgres", "-tAc", statement])
}

/// A day's collection from the Parquet example, pointed at the cluster's servers.
fn parquet_collection(day: &str) -> String {
    let example = std::fs::read_to_string(root().join("examples/vectorcollection-parquet.yaml")).unwrap();
    let mut vc: serde_yaml::Value = serde_yaml::from_str(&example).unwrap();
    vc["metadata"]["name"] = format!("products-{day}").into();
    let spec = &mut vc["spec"];
    spec["dimensions"] = (DIMS as u64).into();
    // The ETL's parts of 2026-12-01 on both days: the database decides.
    spec["source"]["url"] = "s3://etl-output/products/2026-12-01/*.parquet".into();
    spec["snapshots"]["store"] = "s3://snapshots".into();
    spec["writer"]["storage"] = "1Gi".into();
    spec["verify"]["minRecall"] = 0.9.into();
    spec["verify"]["sample"] = 100.into();
    spec["verify"]["expectedCountFrom"]["sql"] = "SELECT count(*) FROM items WHERE active".into();
    serde_yaml::to_string(&vc).unwrap()
}

/// The ETL's day: see the module's documentation.
fn etl_from_s3_parquet(runtime: &tokio::runtime::Runtime, python: &str) {
    apply(ETL_SERVERS);
    for server in ["seaweedfs", "product-db"] {
        kubectl(&["-n", NAMESPACE, "rollout", "status", &format!("deployment/{server}"), "--timeout=300s"]);
    }
    // The ETL's output: two Parquet parts as pyarrow writes them, and Spark's marker.
    let s3 = PortForward::to("svc/seaweedfs", 18333, 8333);
    let port = s3.url.rsplit(':').next().unwrap().parse().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let vectors = quiver_e2e::generate(&tmp.path().join("etl.npy"), N, DIMS, 4, 0);
    let bytes: Vec<u8> = vectors.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(tmp.path().join("vectors.f32"), bytes).unwrap();
    quiver_testkit::parquet::pyarrow(
        python,
        tmp.path(),
        &format!(
            r#"
import array
values = array.array('f'); values.frombytes(open('vectors.f32', 'rb').read())
n, dims = {N}, {DIMS}
for part, (lo, hi) in enumerate([(0, n // 2), (n // 2, n)]):
    flat = pa.array(values[lo * dims:hi * dims], type=pa.float32())
    pq.write_table(pa.table({{
        'item_id': pa.array(range(lo, hi), type=pa.int64()),
        'embedding': pa.FixedSizeListArray.from_arrays(flat, dims),
        'category': pa.array(['shoes' if i % 2 else 'hats' for i in range(lo, hi)]),
        'labels': pa.array([['sale'] if i % 3 == 0 else [] for i in range(lo, hi)], type=pa.list_(pa.string())),
    }}), f'part-{{part}}.parquet')
"#
        ),
    );
    eventually("the S3 server to take a bucket", Duration::from_secs(120), || {
        quiver_testkit::s3::put(port, "/etl-output", Vec::new()).is_ok()
    });
    quiver_testkit::s3::put(port, "/snapshots", Vec::new()).unwrap();
    for part in ["part-0.parquet", "part-1.parquet"] {
        let body = std::fs::read(tmp.path().join(part)).unwrap();
        quiver_testkit::s3::put(port, &format!("/etl-output/products/2026-12-01/{part}"), body).unwrap();
    }
    quiver_testkit::s3::put(port, "/etl-output/products/2026-12-01/_SUCCESS", Vec::new()).unwrap();
    drop(s3);
    sql("CREATE TABLE items (id BIGINT PRIMARY KEY, active BOOLEAN NOT NULL)");
    sql(&format!("INSERT INTO items SELECT g, TRUE FROM generate_series(1, {N}) g"));

    // The Secrets the example names: the S3 keys (SeaweedFS here takes any), a read-only copy
    // for the replicas, the database's URL with its password.
    let mut secrets = String::new();
    for name in ["etl-s3", "etl-s3-read"] {
        let data: Vec<String> = quiver_testkit::s3::environment(8333)
            .into_iter()
            .map(|(key, value)| match key.as_str() {
                "AWS_ENDPOINT_URL" => format!("{key}: http://seaweedfs.{NAMESPACE}:8333"),
                _ => format!("{key}: {value:?}"),
            })
            .collect();
        secrets += &format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {NAMESPACE}}}\nstringData: {{{}}}\n---\n",
            data.join(", ")
        );
    }
    secrets += &format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: product-db, namespace: {NAMESPACE}}}\nstringData: {{url: \"postgres://postgres:{DB_PASSWORD}@product-db.{NAMESPACE}:5432/postgres\"}}\n"
    );
    apply(&secrets);

    // Imported, published, verified against the database; then the writer is released.
    let day1 = "products-2026-12-01";
    apply(&parquet_collection("2026-12-01"));
    wait_ready(day1);
    assert_eq!(field(&format!("vc/{day1}"), "{.status.vectorCount}"), N.to_string());
    assert_eq!(
        field(&format!("vc/{day1}"), "{.status.snapshot.location}"),
        format!("s3://snapshots/{NAMESPACE}/{day1}")
    );
    eventually("the released writer's StatefulSet, pod and volume to be gone", Duration::from_secs(180), || {
        let selector = format!("quiver.dev/collection={day1},quiver.dev/role=writer");
        field(&format!("statefulset/{day1}-writer"), "{.metadata.name}").is_empty()
            && get(&["pods", "-l", &selector], "{.items[*].metadata.name}").is_empty()
            && get(&["pvc"], "{.items[*].metadata.name}").split_whitespace().all(|pvc| !pvc.contains(day1))
    });
    assert_eq!(
        field(&format!("vc/{day1}"), r#"{.status.conditions[?(@.type=="WriterAvailable")].reason}"#),
        "Released"
    );

    // Scaled up with no writer: the new replica starts from the store. Only the pod added now
    // is asked: the first replicas may have restored from the writer while it was there.
    let selector = format!("quiver.dev/collection={day1},quiver.dev/role=replica");
    let before: Vec<String> =
        get(&["pods", "-l", &selector], "{.items[*].metadata.name}").split_whitespace().map(String::from).collect();
    kubectl(&[
        "-n",
        NAMESPACE,
        "patch",
        &format!("vc/{day1}"),
        "--type=merge",
        "-p",
        r#"{"spec":{"replicas":{"count":3}}}"#,
    ]);
    eventually("three ready replicas", Duration::from_secs(300), || {
        field(&format!("deployment/{day1}-replicas"), "{.status.readyReplicas}") == "3"
    });
    let added: Vec<String> = get(&["pods", "-l", &selector], "{.items[*].metadata.name}")
        .split_whitespace()
        .filter(|pod| !before.iter().any(|b| b == pod))
        .map(String::from)
        .collect();
    assert!(!added.is_empty(), "no replica was added by the scale-up (before: {before:?})");
    for pod in &added {
        let log = kubectl(&["-n", NAMESPACE, "logs", pod]);
        assert!(
            log.contains(&format!("from s3://snapshots/{NAMESPACE}")),
            "{pod} did not restore from the store:\n{log}"
        );
    }
    kubectl(&[
        "-n",
        NAMESPACE,
        "patch",
        "ca/products",
        "--type=merge",
        "-p",
        &format!(r#"{{"spec":{{"collection":"{day1}"}}}}"#),
    ]);
    wait_alias(day1);
    assert_eq!(answered_by(runtime, 17807), day1);

    // The next day the database has one item more than the export: the count gate refuses the
    // collection by exactly one, and the alias stays.
    sql(&format!("INSERT INTO items VALUES ({}, TRUE)", N + 1));
    let day2 = "products-2026-12-02";
    apply(&parquet_collection("2026-12-02"));
    kubectl(&[
        "-n",
        NAMESPACE,
        "patch",
        "ca/products",
        "--type=merge",
        "-p",
        &format!(r#"{{"spec":{{"collection":"{day2}"}}}}"#),
    ]);
    eventually(&format!("vc/{day2} to fail its verification"), Duration::from_secs(600), || {
        field(&format!("vc/{day2}"), "{.status.phase}") == "Failed"
    });
    let message = field(&format!("vc/{day2}"), "{.status.message}");
    assert!(message.contains(&format!("count measured {N} (needs == {})", N + 1)), "{message}");
    assert!(!message.contains(DB_PASSWORD), "the database password is never shown: {message}");
    assert_eq!(field("ca/products", "{.status.current}"), day1, "the alias stays on what passed");
    assert_eq!(answered_by(runtime, 17808), day1);
}

/// The GitHub workflow runs exactly this test, so users' CI and the doc above agree.
#[test]
fn the_workflow_runs_the_kind_e2e() {
    let workflow = std::fs::read_to_string(root().join(".github/workflows/kind-e2e.yml")).unwrap();
    let parsed: serde_yaml::Value = serde_yaml::from_str(&workflow).unwrap();
    let steps = parsed["jobs"]["kind-e2e"]["steps"].as_sequence().expect("a kind-e2e job with steps");
    let runs: Vec<&str> = steps.iter().filter_map(|s| s["run"].as_str()).collect();
    assert!(
        runs.iter().any(|r| r.contains("cargo test -p quiver-e2e --test kind -- --ignored --nocapture")),
        "{runs:?}"
    );
    for tool in ["kind", "helm", "kubectl", "pip install pyarrow"] {
        assert!(workflow.contains(tool), "the workflow installs {tool}");
    }
    assert!(workflow.contains("QUIVER_PYTHON:"), "the test is told which python has pyarrow");
}
