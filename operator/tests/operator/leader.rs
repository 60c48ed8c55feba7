//! Leader election of the real `quiver-operator` process against a fake API server on
//! 127.0.0.1: one replica leads and runs the controllers, a second waits as a ready standby
//! and never lists anything, takes over after the leader's SIGTERM released the Lease, and a
//! leader that finds the Lease taken from it stops at once.
//!
//! The fake keeps one Lease with the semantics the election relies on: server-side apply of
//! `holderIdentity` conflicts (409) while another identity holds it, strategic merge patches
//! with `null` remove fields. Every other GET is a list (empty unless a test gave it objects,
//! see [`FakeApi::serve_list`]), or a watch that stays open.

use crate::common;
use axum::body::{Body, Bytes};
use axum::http::{Method, Request, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/quiver-system/leases/quiver-operator";
const COLLECTIONS: &str = "/apis/quiver.dev/v1alpha1/vectorcollections";

/// One request, with the listener (= the operator replica) it came through.
#[derive(Debug, Clone)]
struct Logged {
    via: &'static str,
    method: Method,
    path: String,
    query: String,
    body: Value,
}

#[derive(Default)]
struct ApiState {
    lease: Option<Value>,
    resource_version: u64,
    log: Vec<Logged>,
    /// What a list of a path answers: its kind, apiVersion and items; for Events, items whose
    /// `involvedObject.kind` the field selector names.
    lists: std::collections::HashMap<String, (String, String, Vec<Value>)>,
}

#[derive(Clone, Default)]
pub(crate) struct FakeApi(Arc<Mutex<ApiState>>);

fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    json_response(code, &common::status(code.as_u16(), reason, message))
}

fn json_response(code: StatusCode, body: &Value) -> Response {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

/// Sets `patch`'s keys on `target`; a `null` removes the key (strategic merge, flat).
fn merge(target: &mut Value, patch: &Value) {
    let (Some(target), Some(patch)) = (target.as_object_mut(), patch.as_object()) else { return };
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            target.insert(key.clone(), value.clone());
        }
    }
}

impl FakeApi {
    /// Lists of `path` answer `items` as a `kind` of `api_version`, as the API server does
    /// (a resourceVersion the watch then starts from).
    pub(crate) fn serve_list(&self, path: &str, api_version: &str, kind: &str, items: Vec<Value>) {
        self.0.lock().unwrap().lists.insert(path.to_string(), (api_version.to_string(), kind.to_string(), items));
    }

    /// Serves this fake on a new port; requests through it are logged as `via`.
    pub(crate) async fn listen(&self, via: &'static str) -> u16 {
        let api = self.clone();
        let app = axum::Router::new().fallback(move |request: Request<Body>| {
            let api = api.clone();
            async move { api.answer(via, request).await }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await });
        port
    }

    async fn answer(&self, via: &'static str, request: Request<Body>) -> Response {
        let (parts, body) = request.into_parts();
        let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
        let body: Value = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
        let content_type =
            parts.headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        let (path, query) = (parts.uri.path().to_string(), parts.uri.query().unwrap_or_default().to_string());
        let mut state = self.0.lock().unwrap();
        state.log.push(Logged {
            via,
            method: parts.method.clone(),
            path: path.clone(),
            query: query.clone(),
            body: body.clone(),
        });
        match (&parts.method, path.as_str()) {
            (&Method::GET, "/version") => json_response(
                StatusCode::OK,
                &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-fake", "gitCommit": "", "gitTreeState": "",
                    "buildDate": "2026-01-01T00:00:00Z", "goVersion": "", "compiler": "", "platform": "linux/amd64"}),
            ),
            (&Method::GET, LEASE) => match &state.lease {
                Some(lease) => json_response(StatusCode::OK, lease),
                None => status(StatusCode::NOT_FOUND, "NotFound", "leases \"quiver-operator\" not found"),
            },
            (&Method::POST, p) if LEASE.starts_with(p) && p.ends_with("/leases") => {
                if state.lease.is_some() {
                    return status(StatusCode::CONFLICT, "AlreadyExists", "leases \"quiver-operator\" already exists");
                }
                state.resource_version += 1;
                let mut lease = body;
                lease["metadata"]["namespace"] = json!("quiver-system");
                lease["metadata"]["resourceVersion"] = json!(state.resource_version.to_string());
                lease["metadata"]["uid"] = json!("00000000-0000-0000-0000-00000000lease");
                state.lease = Some(lease.clone());
                json_response(StatusCode::CREATED, &lease)
            }
            (&Method::PATCH, LEASE) => {
                let Some(mut lease) = state.lease.clone() else {
                    return status(StatusCode::NOT_FOUND, "NotFound", "leases \"quiver-operator\" not found");
                };
                let holder = lease["spec"]["holderIdentity"].as_str().map(str::to_string);
                let wanted = body["spec"]["holderIdentity"].as_str();
                if content_type.starts_with("application/apply-patch")
                    && let (Some(holder), Some(wanted)) = (&holder, wanted)
                    && holder != wanted
                {
                    return status(
                        StatusCode::CONFLICT,
                        "Conflict",
                        &format!("Apply failed: conflict with {holder:?}"),
                    );
                }
                if lease.get("spec").is_none_or(Value::is_null) {
                    lease["spec"] = json!({});
                }
                merge(&mut lease["spec"], &body["spec"]);
                state.resource_version += 1;
                lease["metadata"]["resourceVersion"] = json!(state.resource_version.to_string());
                state.lease = Some(lease.clone());
                json_response(StatusCode::OK, &lease)
            }
            (&Method::POST, p) if p.ends_with("/events") => json_response(StatusCode::CREATED, &body),
            (&Method::GET, _) if query.contains("watch=true") => {
                // A watch that never sends an event: the operator's streams stay open.
                let never = futures::stream::pending::<Result<Bytes, std::convert::Infallible>>();
                Response::builder().header("content-type", "application/json").body(Body::from_stream(never)).unwrap()
            }
            (&Method::GET, p) if state.lists.contains_key(p) => {
                let (api_version, kind, items) = state.lists[p].clone();
                // A field selector on involvedObject.kind (Events), as the API server filters.
                let selected = query
                    .split('&')
                    .find_map(|q| q.strip_prefix("fieldSelector="))
                    .map(|s| s.replace("%3D", "=").replace("%3d", "="))
                    .and_then(|s| s.strip_prefix("involvedObject.kind=").map(str::to_string));
                let items: Vec<Value> = items
                    .into_iter()
                    .filter(|i| selected.as_ref().is_none_or(|k| i["involvedObject"]["kind"] == k.as_str()))
                    .collect();
                json_response(
                    StatusCode::OK,
                    &json!({"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": "1"}, "items": items}),
                )
            }
            (&Method::GET, _) => json_response(
                StatusCode::OK,
                &json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": []}),
            ),
            _ => status(StatusCode::NOT_FOUND, "NotFound", "not served by the fake API server"),
        }
    }

    fn log(&self) -> Vec<Logged> {
        self.0.lock().unwrap().log.clone()
    }

    fn holder(&self) -> Option<String> {
        let state = self.0.lock().unwrap();
        state.lease.as_ref().and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
    }

    /// Index of the first request through `via` that lists (not watches) VectorCollections.
    fn first_collection_list(&self, via: &str) -> Option<usize> {
        self.log().iter().position(|r| {
            r.via == via && r.method == Method::GET && r.path == COLLECTIONS && !r.query.contains("watch=true")
        })
    }

    /// Another identity takes the Lease, as a replica outside this test would.
    fn take_lease(&self, identity: &str) {
        let mut state = self.0.lock().unwrap();
        let lease = state.lease.as_mut().expect("a lease exists");
        let now = k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
        merge(
            &mut lease["spec"],
            &json!({"holderIdentity": identity, "acquireTime": now, "renewTime": now, "leaseDurationSeconds": 60}),
        );
    }
}

/// The operator binary against the fake at `port`, electing with `identity`.
fn operator(dir: &Path, port: u16, identity: &str) -> Child {
    // Renew every 4 s, 4 s before expiry: whole election cycles within the test, with room
    // for a slow renewal on a busy CI machine.
    let args =
        ["--lease-namespace=quiver-system", "--identity", identity, "--lease-duration-secs=8", "--lease-grace-secs=4"];
    operator_with(dir, port, identity, &args, Stdio::null())
}

/// The operator binary against the fake at `port` with `args` (its metrics on a free port),
/// its log lines (stdout) to `logs`, stderr piped.
pub(crate) fn operator_with(dir: &Path, port: u16, identity: &str, args: &[&str], logs: Stdio) -> Child {
    let kubeconfig = dir.join(format!("{identity}.kubeconfig"));
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
             clusters: [{{name: fake, cluster: {{server: 'http://127.0.0.1:{port}'}}}}]\n\
             users: [{{name: fake, user: {{}}}}]\n\
             contexts: [{{name: fake, context: {{cluster: fake, user: fake}}}}]\n"
        ),
    )
    .unwrap();
    Command::new(env!("CARGO_BIN_EXE_quiver-operator"))
        .arg("--metrics-addr=127.0.0.1:0")
        .args(args)
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdout(logs)
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting quiver-operator")
}

async fn until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn exit_of(child: &mut Child, timeout: Duration) -> (std::process::ExitStatus, String) {
    let start = Instant::now();
    loop {
        if let Some(code) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
            return (code, stderr);
        }
        if start.elapsed() > timeout {
            child.kill().unwrap();
            panic!("the operator did not exit within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn sigterm(child: &Child) {
    let ok = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(ok.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_leads_the_standby_takes_over_and_a_lost_lease_stops_the_leader() {
    let dir = tempfile::tempdir().unwrap();
    let api = FakeApi::default();
    let (port_a, port_b) = (api.listen("a").await, api.listen("b").await);

    // A alone: it creates and takes the Lease, and only then starts listing.
    let mut a = operator(dir.path(), port_a, "operator-a");
    until("operator-a to list VectorCollections", Duration::from_secs(30), || api.first_collection_list("a").is_some())
        .await;
    assert_eq!(api.holder().as_deref(), Some("operator-a"));
    let log = api.log();
    let took = log
        .iter()
        .position(|r| r.via == "a" && r.method == Method::PATCH && r.body["spec"]["holderIdentity"] == "operator-a")
        .expect("operator-a applied itself as the holder");
    assert!(took < api.first_collection_list("a").unwrap(), "listed before holding the lease: {log:#?}");
    assert!(log.iter().any(|r| r.via == "a" && r.method == Method::POST && r.path.ends_with("/leases")));

    // B waits while A renews: it reads the Lease, never lists, never takes it.
    let mut b = operator(dir.path(), port_b, "operator-b");
    until("operator-b to read the lease", Duration::from_secs(30), || {
        api.log().iter().any(|r| r.via == "b" && r.path == LEASE)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(9)).await; // more than two renewals of A
    assert_eq!(api.holder().as_deref(), Some("operator-a"));
    assert_eq!(api.first_collection_list("b"), None, "the standby listed while operator-a led");
    assert!(b.try_wait().unwrap().is_none(), "the standby exited");

    // SIGTERM: A stops its controllers, releases the Lease and exits 0; B takes over.
    sigterm(&a);
    let (code, stderr) = exit_of(&mut a, Duration::from_secs(20)).await;
    assert!(code.success(), "operator-a exited with {code}: {stderr}");
    assert!(
        api.log()
            .iter()
            .any(|r| r.via == "a" && r.method == Method::PATCH && r.body["spec"]["holderIdentity"].is_null()),
        "operator-a did not release the lease"
    );
    until("operator-b to list VectorCollections", Duration::from_secs(30), || api.first_collection_list("b").is_some())
        .await;
    assert_eq!(api.holder().as_deref(), Some("operator-b"));

    // The Lease taken away (a partition, a clock jump): B stops at its next renewal.
    api.take_lease("operator-c");
    let (code, stderr) = exit_of(&mut b, Duration::from_secs(20)).await;
    assert!(!code.success(), "operator-b kept running without the lease");
    assert!(stderr.contains("lost the lease"), "{stderr}");
    assert_eq!(api.holder().as_deref(), Some("operator-c"), "operator-b released a lease it did not hold");
}
