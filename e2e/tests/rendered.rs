//! The pods as the operator renders them do the job. The objects the operator builds for two
//! versions of a sample collection (`examples/vectorcollection.yaml`) and the alias
//! (`examples/collectionalias.yaml`) are turned into local processes: each container's command
//! and arguments run as they are, except that Service names map to 127.0.0.1 ports, ports are
//! ephemeral and each pod gets its own data directory. Writer, replicas, the warm-up and verify
//! Jobs, then the alias Service's flip from v1 to v2 under load. The operator's own gRPC probes
//! read the writers' progress and drain v1's replicas.

use k8s_openapi::api::core::v1::{Container, PodTemplateSpec};
use quiver_api::client::{Client, ClientOptions};
use quiver_e2e::{Forwarder, Proc, assert_none_failed, dataset, operator_gate_passes, query, quiver_bin};
use quiver_operator::crd::{CollectionAlias, VectorCollection, VectorCollectionStatus};
use quiver_operator::phase::WriterState;
use quiver_operator::probes::{Drainer, Grpc, WriterProbe};
use quiver_operator::resources::labels::Role;
use quiver_operator::resources::{CollectionObjects, Defaults, alias_service};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const DIMS: usize = 32;
const N: usize = 3000;
/// A bound, not a speed check: the S3 scenario's writer imports 20 000 x 384 and builds arroy's
/// default forest over binary vectors (75 s in one CI run on 2 shared cores, beside other tests;
/// the default number of trees is issue 13's to choose by measurement).
const READY: Duration = Duration::from_secs(300);

fn example(file: &str) -> serde_yaml::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples").join(file);
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The sample collection, renamed, made small and pointed at a local source.
fn collection(name: &str, source_url: &str, replicas: i32) -> VectorCollection {
    let mut vc = example("vectorcollection.yaml");
    vc["metadata"]["name"] = name.into();
    // As read back from the API server: owner references need the uid.
    vc["metadata"]["uid"] = format!("00000000-0000-0000-0000-{:012}", name.len()).into();
    let spec = &mut vc["spec"];
    spec["dimensions"] = (DIMS as u64).into();
    spec["source"]["url"] = source_url.into();
    spec["replicas"] = serde_yaml::from_str(&format!("{{count: {replicas}}}")).unwrap();
    spec["warmup"]["maxQueries"] = 300.into();
    spec["verify"] =
        serde_yaml::from_str(&format!("{{expectedCount: {N}, minRecall: 0.9, k: 10, sample: 100}}")).unwrap();
    serde_yaml::from_value(vc).unwrap()
}

/// Serves files over HTTP, as the object store of the sample would.
async fn file_server(files: HashMap<String, Vec<u8>>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let files = Arc::new(files);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let files = files.clone();
            tokio::spawn(async move {
                let mut request = vec![0u8; 4096];
                let n = socket.read(&mut request).await.unwrap_or(0);
                let line = String::from_utf8_lossy(&request[..n]).lines().next().unwrap_or_default().to_string();
                let path = line.split_whitespace().nth(1).unwrap_or("/").trim_start_matches('/').to_string();
                match files.get(&path) {
                    Some(body) => {
                        let head =
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                        let _ = socket.write_all(head.as_bytes()).await;
                        let _ = socket.write_all(body).await;
                    }
                    None => {
                        let _ = socket.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n").await;
                    }
                }
            });
        }
    });
    base
}

/// The local stand-in for the cluster: Service URLs to local addresses, a data dir per pod,
/// the namespace's Secrets (name, key) as pods read them through `secretKeyRef`.
#[derive(Default)]
struct Cluster {
    dir: PathBuf,
    services: HashMap<String, String>,
    pods: usize,
    /// The token Secret of the collection being deployed, as its pods see the mounted key.
    token_file: PathBuf,
    secrets: HashMap<(String, String), String>,
}

impl Cluster {
    /// The container's own command line, with the cluster's names and ports made local, in a
    /// new pod's data directory.
    fn command(&mut self, container: &Container) -> (Vec<String>, Vec<(String, String)>) {
        let data = self.new_pod_dir();
        self.command_in(container, &data)
    }

    /// The data directory of a new pod.
    fn new_pod_dir(&mut self) -> PathBuf {
        self.pods += 1;
        self.dir.join(format!("pod-{}", self.pods))
    }

    /// The container's command line with its data directory at `data`, and its environment:
    /// values, and Secret keys resolved as the kubelet does (a missing optional key is left
    /// unset; a missing required one would keep the pod from starting).
    fn command_in(&self, container: &Container, data: &Path) -> (Vec<String>, Vec<(String, String)>) {
        assert_eq!(container.command.as_deref(), Some(&["quiver".to_string()][..]), "containers run quiver");
        let mut args = container.args.clone().unwrap_or_default();
        for i in 1..args.len() {
            match args[i - 1].as_str() {
                "--data-dir" => args[i] = data.display().to_string(),
                "--listen" | "--http-listen" => args[i] = "127.0.0.1:0".into(),
                "--token-file" => args[i] = self.token_file.display().to_string(),
                _ => {
                    for (service, local) in &self.services {
                        args[i] = args[i].replace(service, local);
                    }
                }
            }
        }
        let mut env = Vec::new();
        for var in container.env.iter().flatten() {
            if let Some(value) = &var.value {
                env.push((var.name.clone(), value.clone()));
            }
            let Some(key) = var.value_from.as_ref().and_then(|f| f.secret_key_ref.as_ref()) else { continue };
            match self.secrets.get(&(key.name.clone(), key.key.clone())) {
                Some(value) => env.push((var.name.clone(), value.clone())),
                None => assert!(key.optional == Some(true), "{}: Secret {}/{} is missing", var.name, key.name, key.key),
            }
        }
        (args, env)
    }

    fn start(&mut self, name: &str, template: &PodTemplateSpec) -> Proc {
        let data = self.new_pod_dir();
        self.start_in(name, template, &data)
    }

    /// Starts a pod on the data directory `data` (a pod restarted on its node keeps it).
    fn start_in(&self, name: &str, template: &PodTemplateSpec, data: &Path) -> Proc {
        let container = &template.spec.as_ref().unwrap().containers[0];
        let (args, env) = self.command_in(container, data);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Proc::start_with_env(&self.dir, name, &args, &env)
    }

    /// Runs a Job's pod to completion: exit code and its termination message.
    fn run_job(&mut self, name: &str, template: &PodTemplateSpec) -> (Option<i32>, serde_json::Value) {
        let container = &template.spec.as_ref().unwrap().containers[0];
        let (args, env) = self.command(container);
        let message = self.dir.join(format!("{name}.termination-log"));
        let out = std::process::Command::new(quiver_bin())
            .args(&args)
            .envs(env)
            .env("QUIVER_RESULT_FILE", &message)
            .output()
            .unwrap();
        let report = std::fs::read_to_string(&message).unwrap_or_else(|_| {
            panic!("{name} wrote no termination message: {}", String::from_utf8_lossy(&out.stderr))
        });
        (out.status.code(), serde_json::from_str(&report).unwrap())
    }
}

fn pod_labels(template: &PodTemplateSpec) -> BTreeMap<String, String> {
    template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default()
}

fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Writer, replicas and both Jobs of one collection, as rendered; returns its replica pods.
/// The collection's rendered pods and Jobs, run; the last value is the operator's gate on its
/// verify Job (whether an alias may flip to it).
async fn deploy(
    cluster: &mut Cluster,
    vc: &VectorCollection,
) -> (Proc, Vec<(Proc, BTreeMap<String, String>)>, bool, String) {
    let name = vc.metadata.name.clone().unwrap();
    let (objects, templates, token) = render(cluster, vc);

    let mut writer = cluster.start(&format!("{name}-writer"), &templates[&Role::Writer]);
    writer.wait_serving(READY).await;
    // What the operator's own probe reads from this writer.
    match Grpc::default().progress(&writer.url(), &name, Some(&token)).await.unwrap() {
        WriterState::Sealed { count, setting, .. } => assert_eq!((count, setting.is_empty()), (N as u64, false)),
        other => panic!("the operator sees the serving writer as {other:?}"),
    }
    let writer_service = objects.writer_service.metadata.name.clone().unwrap();
    cluster.services.insert(format!("http://{writer_service}:7700"), writer.url());

    let count = objects.replicas.spec.as_ref().unwrap().replicas.unwrap();
    let mut replicas = Vec::new();
    for i in 0..count {
        let mut replica = cluster.start(&format!("{name}-replica-{i}"), &templates[&Role::Replica]);
        replica.wait_serving(READY).await;
        replicas.push((replica, pod_labels(&templates[&Role::Replica])));
    }
    // The replicas Service: the Jobs reach the replicas through it.
    let selector = objects.replicas_service.spec.as_ref().unwrap().selector.clone().unwrap();
    let backends = replicas.iter().filter(|(_, l)| selects(&selector, l)).map(|(p, _)| p.grpc).collect::<Vec<_>>();
    assert_eq!(backends.len(), count as usize, "the replicas Service selects the replica pods");
    let service = Forwarder::start(backends).await;
    let replicas_service = objects.replicas_service.metadata.name.clone().unwrap();
    cluster.services.insert(format!("http://{replicas_service}:7700"), service.url());

    let (code, warmup) = cluster.run_job(&format!("{name}-warmup"), &templates[&Role::Warmup]);
    assert_eq!(code, Some(0), "{warmup}");
    assert!(warmup["warm_p99_ms"].as_f64().unwrap() > 0.0, "{warmup}");
    let (code, verify) = cluster.run_job(&format!("{name}-verify"), &templates[&Role::Verify]);
    assert_eq!(verify["collection"], name.as_str());
    (writer, replicas, operator_gate_passes(code, &verify.to_string()), token)
}

/// The objects the operator renders for `vc`, its pod templates by role, and the token of the
/// Secret the operator generates for it, mounted where its pods read it.
fn render(cluster: &mut Cluster, vc: &VectorCollection) -> (CollectionObjects, HashMap<Role, PodTemplateSpec>, String) {
    let objects = CollectionObjects::render(vc, &Defaults::default());
    let token = quiver_operator::resources::token::random().unwrap();
    let secret = quiver_operator::resources::token::secret(vc, &token);
    let key = &secret.data.as_ref().unwrap()[quiver_operator::resources::token::KEY];
    cluster.token_file = cluster.dir.join(format!("{}.token", secret.metadata.name.unwrap()));
    std::fs::write(&cluster.token_file, &key.0).unwrap();
    let templates = objects.pod_templates().into_iter().map(|(role, t)| (role, t.clone())).collect();
    (objects, templates, token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendered_pods_import_verify_and_flip_the_alias() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (v1_path, _) = dataset(dir, "v1.npy", N, DIMS, 1);
    let (v2_path, _) = dataset(dir, "v2.npy", N, DIMS, 2);
    let files = HashMap::from([
        ("v1.npy".to_string(), std::fs::read(&v1_path).unwrap()),
        ("v2.npy".to_string(), std::fs::read(&v2_path).unwrap()),
    ]);
    let store = file_server(files).await;
    let mut cluster = Cluster { dir: dir.to_path_buf(), ..Default::default() };

    let v1 = collection("products-v1", &format!("{store}/v1.npy"), 2);
    let (_w1, v1_replicas, v1_verified, v1_token) = deploy(&mut cluster, &v1).await;
    assert!(v1_verified, "the operator's gate lets the alias point at v1");

    // The alias Service as rendered for the alias pointing at v1 selects v1's replica pods only.
    let mut ca: serde_yaml::Value = example("collectionalias.yaml");
    ca["spec"]["collection"] = "products-v1".into();
    ca["metadata"]["uid"] = "00000000-0000-0000-0000-00000000ca00".into();
    let ca: CollectionAlias = serde_yaml::from_value(ca).unwrap();
    let alias_selector = |target: &str| {
        alias_service::service(&ca, target).spec.unwrap().selector.expect("the alias Service selects pods")
    };
    let on_v1 = alias_selector("products-v1");
    let products =
        Forwarder::start(v1_replicas.iter().filter(|(_, l)| selects(&on_v1, l)).map(|(p, _)| p.grpc).collect()).await;
    // One attempt per call: "no query fails" means no call failed, not that a retry hid it. No
    // token: Search of a collection whose token the operator generated is open (its
    // NetworkPolicy says who may reach it), so clients follow the alias across rebuilds.
    let client = Client::new(&products.url(), ClientOptions { attempts: 1, ..Default::default() }).unwrap();
    let heartbeat = client.heartbeat(Duration::from_millis(100));
    let q = quiver_e2e::queries(dir, 1, DIMS, 1);
    assert_eq!(client.search(query(&q, 5)).await.unwrap().collection, "products-v1");

    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (client, stop, q) = (client.clone(), stop.clone(), q.clone());
        tokio::spawn(async move {
            let mut outcomes = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                outcomes.push(client.search(query(&q, 5)).await.map(|r| r.collection).map_err(|s| format!("{s:?}")));
            }
            outcomes
        })
    };

    let v2 = collection("products-v2", &format!("{store}/v2.npy"), 1);
    let (_w2, v2_replicas, v2_verified, _) = deploy(&mut cluster, &v2).await;
    // The flip, when the operator's gate allows it: the alias Service's selector now picks
    // v2's replicas; v1's are drained.
    if v2_verified {
        let on_v2 = alias_selector("products-v2");
        let all: Vec<_> = v1_replicas.iter().chain(&v2_replicas).collect();
        products.set_backends(all.iter().filter(|(_, l)| selects(&on_v2, l)).map(|(p, _)| p.grpc).collect());
        assert!(all.iter().filter(|(_, l)| selects(&on_v2, l)).all(|(p, _)| p.name.starts_with("products-v2")));
        for (replica, _) in &v1_replicas {
            // As the alias controller does, with v1's token (Admin requires it).
            Grpc::default().drain(&replica.url(), Some(&v1_token)).await.unwrap();
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    heartbeat.abort();
    let outcomes = load.await.unwrap();
    assert_none_failed(&outcomes);
    let tail = &outcomes[outcomes.len().saturating_sub(10)..];
    assert!(tail.iter().all(|o| o.as_deref() == Ok("products-v2")), "answers moved to v2: {tail:?}");
}

/// Vectors of the S3 test: enough for a snapshot of several 1 MiB restore chunks.
const S3_N: usize = 20_000;

/// The rendered pods of an ETL's collection as users run it: Parquet parts in S3 (pyarrow
/// writes them, SeaweedFS serves them), the credentials and the product database's URL from
/// Secrets, a snapshot store, `writer.afterPublish: Delete`, the count from PostgreSQL. The
/// writer imports every part, publishes its snapshot to the store and says so (the operator
/// records it and releases the writer); with the writer gone, replicas rendered pinned to
/// the sealed snapshot (as once status has it) take it even after the store's last
/// description names other data: one killed mid-restore resumes from its bytes on disk and
/// another starts from the store alone; the verify Job's
/// count gate passes against the database, and fails by exactly one when an item is added,
/// so the operator's gate refuses the flip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendered_pods_from_s3_parquet_publish_to_the_store_and_gate_on_the_database() {
    use quiver_testkit::{database, parquet, s3};
    let Some(python) = parquet::python() else { return };
    let Some(weed) = s3::weed() else { return };
    let Some(db) = database::postgres() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();

    // The ETL: two Parquet parts (ids, vectors, a category, labels) and Spark's marker.
    let (_, vectors) = dataset(dir, "etl.npy", S3_N, DIMS, 3);
    std::fs::write(dir.join("vectors.f32"), vectors.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    let script = format!(
        r#"
import array
values = array.array('f'); values.frombytes(open('vectors.f32', 'rb').read())
n, dims = {S3_N}, {DIMS}
for part, (lo, hi) in enumerate([(0, n // 2), (n // 2, n)]):
    flat = pa.array(values[lo * dims:hi * dims], type=pa.float32())
    pq.write_table(pa.table({{
        'item_id': pa.array(range(lo, hi), type=pa.int64()),
        'embedding': pa.FixedSizeListArray.from_arrays(flat, dims),
        'category': pa.array(['shoes' if i % 2 else 'hats' for i in range(lo, hi)]),
        'labels': pa.array([['sale'] if i % 3 == 0 else [] for i in range(lo, hi)], type=pa.list_(pa.string())),
    }}), f'part-{{part}}.parquet', row_group_size=4000)
"#
    );
    parquet::pyarrow(&python, dir, &script);
    for bucket in ["/etl-output", "/snapshots"] {
        weed.put(bucket, Vec::new()).unwrap();
    }
    for part in ["part-0.parquet", "part-1.parquet"] {
        weed.put(&format!("/etl-output/products/2026-12-01/{part}"), std::fs::read(dir.join(part)).unwrap()).unwrap();
    }
    weed.put("/etl-output/products/2026-12-01/_SUCCESS", Vec::new()).unwrap();
    // The product database: the items the export holds.
    db.sql("CREATE TABLE items (id BIGINT PRIMARY KEY, active BOOLEAN NOT NULL)");
    db.sql(&format!("INSERT INTO items SELECT g, TRUE FROM generate_series(1, {S3_N}) g"));

    // The example, pointed at this day's parts, this server and this database.
    let mut vc = example("vectorcollection-parquet.yaml");
    vc["metadata"]["uid"] = "00000000-0000-0000-0000-0000000053a3".into();
    vc["spec"]["dimensions"] = (DIMS as u64).into();
    vc["spec"]["snapshots"]["store"] = "s3://snapshots".into();
    vc["spec"]["verify"]["minRecall"] = 0.9.into();
    vc["spec"]["verify"]["sample"] = 100.into();
    vc["spec"]["verify"]["expectedCountFrom"]["sql"] = "SELECT count(*) FROM items WHERE active".into();
    let vc: VectorCollection = serde_yaml::from_value(vc).unwrap();
    assert_eq!(vc.spec.source.url.as_deref(), Some("s3://etl-output/products/2026-12-01/*.parquet"));
    let name = vc.metadata.name.clone().unwrap();
    let mut cluster = Cluster { dir: dir.to_path_buf(), ..Default::default() };
    // The replicas' read-only key (SeaweedFS here takes any key).
    for secret in ["etl-s3", "etl-s3-read"] {
        for (key, value) in weed.environment() {
            cluster.secrets.insert((secret.into(), key), value);
        }
    }
    cluster.secrets.insert(("product-db".into(), "url".into()), db.url.clone());
    let (objects, templates, token) = render(&mut cluster, &vc);

    // The writer imports both parts and publishes to the store; the operator's probe reads the
    // upload's record (what it writes to status.snapshot before it releases the writer).
    let mut writer = cluster.start(&format!("{name}-writer"), &templates[&Role::Writer]);
    writer.wait_serving(READY).await;
    let deadline = std::time::Instant::now() + READY;
    let stored = loop {
        match Grpc::default().progress(&writer.url(), &name, Some(&token)).await.unwrap() {
            WriterState::Sealed { count, stored: Some(stored), sha256, .. } => {
                assert_eq!((count, sha256.as_deref()), (S3_N as u64, Some(&*stored.sha256)));
                break stored;
            }
            WriterState::Sealed { .. } => {}
            other => panic!("the operator sees the serving writer as {other:?}"),
        }
        assert!(std::time::Instant::now() < deadline, "never published:\n{}", writer.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(stored.location, format!("s3://snapshots/search/{name}"));
    let described: serde_json::Value =
        serde_json::from_slice(&weed.get(&format!("/snapshots/search/{name}/snapshot.json"))).unwrap();
    assert_eq!((described["sha256"].as_str(), described["size"].as_u64()), (Some(&*stored.sha256), Some(stored.bytes)));
    let files = &described["manifest"]["source"]["files"];
    assert_eq!(files.as_array().map(Vec::len), Some(2), "both parts, not the marker: {files}");
    // Released, as the operator does with afterPublish: Delete: the pod is gone and its Service
    // leads nowhere.
    writer.kill();
    let writer_service = format!("http://{}:7700", objects.writer_service.metadata.name.clone().unwrap());
    cluster.services.insert(writer_service, format!("http://127.0.0.1:{}", quiver_testkit::free_port()));

    // The replicas as the operator renders them once the writer reported its seal: pinned to
    // it (status.sealedSha256). The store's last description then names other data (a writer
    // that lost its volume and imported anew after verification): pinned replicas still take
    // what was verified, by its sha256.
    let mut sealed = vc.clone();
    sealed.status = Some(VectorCollectionStatus { sealed_sha256: Some(stored.sha256.clone()), ..Default::default() });
    let pinned = CollectionObjects::render(&sealed, &Defaults::default()).replicas.spec.unwrap().template;
    let env = pinned.spec.as_ref().unwrap().containers[0].env.clone().unwrap_or_default();
    assert!(env.iter().any(|e| e.value.as_deref() == Some(&*stored.sha256)), "pinned: {env:?}");
    let mut resealed = described.clone();
    let other = "cc".repeat(32);
    (resealed["sha256"], resealed["data"]) = (other.clone().into(), format!("data-{other}.mdb").into());
    weed.put(&format!("/snapshots/search/{name}/snapshot.json"), serde_json::to_vec(&resealed).unwrap()).unwrap();

    // A replica killed on its second chunk from the store, then started again on its disk.
    let replica = &pinned;
    let data = dir.join("replica-0");
    let (args, mut env) = cluster.command_in(&replica.spec.as_ref().unwrap().containers[0], &data);
    env.push(("FAILPOINTS".into(), "snapshot::append=1*off->return".into()));
    let mut killed = std::process::Command::new(quiver_bin())
        .args(&args)
        .envs(env)
        .stderr(std::fs::File::create(dir.join("replica-killed.log")).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + READY;
    let status = loop {
        if let Some(status) = killed.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = killed.kill();
            panic!("not killed at its fault point: run the workspace's tests, whose quiver has them compiled in");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let partial = std::fs::metadata(data.join(format!(".snapshots/{name}.mdb.partial"))).unwrap().len();
    assert!(partial > 0 && partial < stored.bytes, "{partial} of {} bytes", stored.bytes);
    let mut resumed = cluster.start_in(&format!("{name}-replica-0"), replica, &data);
    resumed.wait_serving(READY).await;
    resumed.wait_for_log(&format!("resuming the snapshot restore at byte {partial} of {}", stored.bytes), READY);
    let mut fresh = cluster.start(&format!("{name}-replica-1"), replica);
    fresh.wait_serving(READY).await;
    fresh.wait_for_log("from s3://snapshots/search", READY);

    // The Jobs through the replicas Service; the count comes from the database.
    let service = Forwarder::start(vec![resumed.grpc, fresh.grpc]).await;
    let replicas_service = objects.replicas_service.metadata.name.clone().unwrap();
    cluster.services.insert(format!("http://{replicas_service}:7700"), service.url());
    let (code, warmup) = cluster.run_job(&format!("{name}-warmup"), &templates[&Role::Warmup]);
    assert_eq!(code, Some(0), "{warmup}");
    let count_gate = |report: &serde_json::Value| {
        report["gates"].as_array().unwrap().iter().find(|g| g["name"] == "count").cloned().unwrap()
    };
    let (code, verified) = cluster.run_job(&format!("{name}-verify"), &templates[&Role::Verify]);
    let gate = count_gate(&verified);
    assert_eq!(
        (gate["measured"].as_f64(), gate["threshold"].as_f64()),
        (Some(S3_N as f64), Some(S3_N as f64)),
        "{verified}"
    );
    assert!(operator_gate_passes(code, &verified.to_string()), "{verified}");
    // The next item the export missed: refused by exactly one, and the alias would stay.
    db.sql(&format!("INSERT INTO items VALUES ({}, TRUE)", S3_N + 1));
    let (code, refused) = cluster.run_job(&format!("{name}-verify-again"), &templates[&Role::Verify]);
    let gate = count_gate(&refused);
    assert_eq!((gate["passed"].as_bool(), gate["margin"].as_f64()), (Some(false), Some(-1.0)), "{refused}");
    assert!(!operator_gate_passes(code, &refused.to_string()), "{refused}");
    assert!(!refused.to_string().contains(database::PASSWORD), "the database password is never shown");
}
