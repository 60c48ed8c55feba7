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
use quiver_operator::crd::{CollectionAlias, VectorCollection};
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
const READY: Duration = Duration::from_secs(120);

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

/// The local stand-in for the cluster: Service URLs to local addresses, a data dir per pod.
struct Cluster {
    dir: PathBuf,
    services: HashMap<String, String>,
    pods: usize,
    /// The token Secret of the collection being deployed, as its pods see the mounted key.
    token_file: PathBuf,
}

impl Cluster {
    /// The container's own command line, with the cluster's names and ports made local.
    fn command(&mut self, container: &Container) -> (Vec<String>, Vec<(String, String)>) {
        assert_eq!(container.command.as_deref(), Some(&["quiver".to_string()][..]), "containers run quiver");
        let mut args = container.args.clone().unwrap_or_default();
        self.pods += 1;
        let data = self.dir.join(format!("pod-{}", self.pods));
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
        let env = container.env.iter().flatten().filter_map(|e| e.value.clone().map(|v| (e.name.clone(), v))).collect();
        (args, env)
    }

    fn start(&mut self, name: &str, template: &PodTemplateSpec) -> Proc {
        let container = &template.spec.as_ref().unwrap().containers[0];
        let (args, env) = self.command(container);
        assert!(env.is_empty(), "serving pods are configured by flags: {env:?}");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Proc::start(&self.dir, name, &args)
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
    let objects = CollectionObjects::render(vc, &Defaults::default());
    // The Secret the operator generates for a collection without a tokenSecret, as mounted.
    let token = quiver_operator::resources::token::random().unwrap();
    let secret = quiver_operator::resources::token::secret(vc, &token);
    let key = &secret.data.as_ref().unwrap()[quiver_operator::resources::token::KEY];
    cluster.token_file = cluster.dir.join(format!("{}.token", secret.metadata.name.unwrap()));
    std::fs::write(&cluster.token_file, &key.0).unwrap();
    let templates: HashMap<Role, PodTemplateSpec> =
        objects.pod_templates().into_iter().map(|(role, t)| (role, t.clone())).collect();

    let mut writer = cluster.start(&format!("{name}-writer"), &templates[&Role::Writer]);
    writer.wait_serving(READY).await;
    // What the operator's own probe reads from this writer.
    match Grpc::default().progress(&writer.url(), &name, Some(&token)).await.unwrap() {
        WriterState::Sealed { count, setting } => assert_eq!((count, setting.is_empty()), (N as u64, false)),
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
    let mut cluster = Cluster { dir: dir.to_path_buf(), services: HashMap::new(), pods: 0, token_file: PathBuf::new() };

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
