//! The operator's console, in headless Chromium: the real `quiver-operator` binary against the
//! fake API server of `leader.rs`, whose lists hold two collections (one Ready, one whose
//! count gate failed), an alias with a history and a schedule, and their Events. The page
//! shows each collection's phase, replicas ready of wanted, writer progress, gates measured
//! against thresholds and its timeline, and the alias's targets, history and next rebuild.
//! Text from the cluster is escaped: a message carrying markup runs nothing.

use crate::leader::{FakeApi, operator_with};
use serde_json::{Value, json};
use std::io::{BufRead, Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn example(file: &str) -> Value {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples").join(file)).unwrap();
    serde_yaml::from_str(&text).unwrap()
}

fn condition(type_: &str, status: &str, reason: &str, message: &str, at: &str) -> Value {
    json!({"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": at})
}

fn gate(name: &str, measured: f64, comparison: &str, threshold: f64, passed: bool) -> Value {
    json!({"name": name, "measured": measured, "comparison": comparison, "threshold": threshold, "passed": passed})
}

fn event(kind: &str, name: &str, reason: &str, message: &str, at: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Event",
        "metadata": {"name": format!("{name}.{reason}"), "namespace": "search"},
        "involvedObject": {"apiVersion": "quiver.dev/v1alpha1", "kind": kind, "name": name, "namespace": "search"},
        "reason": reason, "message": message, "type": "Normal", "lastTimestamp": at})
}

fn fixture(api: &FakeApi) {
    let mut ready = example("vectorcollection.yaml");
    ready["metadata"]["generation"] = json!(1);
    ready["status"] = json!({"phase": "Ready", "observedGeneration": 1, "vectorCount": 50000, "readyReplicas": 2,
        "searchSetting": "signscan quality=200 probes=12",
        "verification": [gate("count", 50000.0, "==", 50000.0, true), gate("recall@10", 0.962, ">=", 0.95, true),
                         gate("p99_ms", 1.8, "<=", 5.0, true)],
        "conditions": [condition("Ready", "True", "Ready", "verified and serving", "2026-12-01T02:20:00Z"),
                       condition("WriterAvailable", "True", "Sealed", "sealed: 50000 rows", "2026-12-01T02:10:00Z")]});
    let mut failed = example("vectorcollection.yaml");
    failed["metadata"]["name"] = json!("products-2026-11-26");
    failed["metadata"]["generation"] = json!(1);
    failed["status"] = json!({"phase": "Failed", "observedGeneration": 1, "vectorCount": 49999, "readyReplicas": 2,
        "verification": [gate("count", 49999.0, "==", 50000.0, false), gate("recall@10", 0.958, ">=", 0.95, true)],
        "message": "verification failed: count: measured 49999 == 50000 failed (off by 1) <script>alert(1)</script>",
        "conditions": [condition("Ready", "False", "Failed", "verification failed", "2026-12-02T02:30:00Z"),
                       condition("WriterAvailable", "True", "Sealed", "importing: 49999 rows", "2026-12-02T02:05:00Z")]});
    let mut alias = example("collectionalias-rebuild.yaml");
    alias["metadata"]["creationTimestamp"] = json!("2026-11-01T00:00:00Z");
    alias["status"] = json!({"current": "products-2026-11-25", "previous": "products-2026-11-24",
        "flippedAt": "2026-12-01T02:25:00Z", "lastRebuild": "2026-12-02T02:00:00Z",
        "history": [{"collection": "products-2026-11-25", "at": "2026-12-01T02:25:00Z"},
                    {"collection": "products-2026-11-24", "at": "2026-11-30T02:25:00Z"}],
        "conditions": [condition("Flipped", "True", "Flipped", "serves products-2026-11-25", "2026-12-01T02:25:00Z")]});
    api.serve_list(
        "/apis/quiver.dev/v1alpha1/vectorcollections",
        "quiver.dev/v1alpha1",
        "VectorCollectionList",
        vec![ready, failed],
    );
    api.serve_list(
        "/apis/quiver.dev/v1alpha1/collectionaliases",
        "quiver.dev/v1alpha1",
        "CollectionAliasList",
        vec![alias],
    );
    api.serve_list(
        "/api/v1/namespaces/search/events",
        "v1",
        "EventList",
        vec![
            // A phase change is an Event named after the new phase (controller/collection/status.rs `announce`).
            event(
                "VectorCollection",
                "products-2026-11-25",
                "Importing",
                "Importing: 0 vectors imported",
                "2026-12-01T02:00:00Z",
            ),
            event("VectorCollection", "products-2026-11-25", "Verifying", "Verifying", "2026-12-01T02:15:00Z"),
            event("VectorCollection", "products-2026-11-25", "Ready", "Ready", "2026-12-01T02:20:00Z"),
            event(
                "VectorCollection",
                "products-2026-11-26",
                "Retry",
                "retry 1767225600 acted on",
                "2026-12-02T02:40:00Z",
            ),
            event(
                "CollectionAlias",
                "products",
                "Flipped",
                "products-2026-11-24 -> products-2026-11-25",
                "2026-12-01T02:25:00Z",
            ),
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_collections_gates_timelines_and_aliases_in_a_browser() {
    let Some(browser) = quiver_testkit::browser::browser() else { return };
    let dir = tempfile::tempdir().unwrap();
    let api = FakeApi::default();
    fixture(&api);
    let port = api.listen("console").await;
    let mut child = operator_with(
        dir.path(),
        port,
        "console",
        &["--leader-election=false", "--network-policies=false", "--console-listen=127.0.0.1:0"],
        std::process::Stdio::piped(),
    );
    // The console's port, from its log line (read to the end, so the pipe never fills).
    let log = Arc::new(Mutex::new(String::new()));
    let stdout = child.stdout.take().unwrap();
    let lines = log.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            lines.lock().unwrap().push_str(&format!("{line}\n"));
        }
    });
    let started = Instant::now();
    let address = loop {
        let text = log.lock().unwrap().clone();
        if let Some(rest) = text.split("console listening on ").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no console line:\n{text}");
        assert!(child.try_wait().unwrap().is_none(), "the operator exited:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // DNS rebinding: a page whose own name now resolves here sends that name as Host. Refused.
    let mut raw = std::net::TcpStream::connect(&address).unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: evil.example:8090\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    raw.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 403") && answer.contains("DNS rebinding"), "{answer}");

    let screenshot = quiver_testkit::browser::artifacts().join("operator-console.png");
    let _ = std::fs::remove_file(&screenshot);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../e2e/tests/browser/operator-console.js");
    let env = [("CONSOLE_URL", format!("http://{address}/")), ("SCREENSHOT", screenshot.display().to_string())];
    let seen = tokio::task::spawn_blocking(move || browser.run(&script, &env)).await.unwrap();
    let _ = child.kill();
    assert!(std::fs::metadata(&screenshot).is_ok_and(|m| m.len() > 10_000), "a screenshot: {seen}");
}
