//! The console's JSON calls over HTTP on 127.0.0.1, as a browser or a script sends them: the
//! token rules (reads and search under the Search rule, verify and flip under the Admin
//! token), cross-origin, DNS-rebinding and non-JSON requests refused, a read-only role that
//! never flips, and bad input named by field. (Calls from other hosts are the unit tests' in
//! `serve/console`: these tests reach only 127.0.0.1.) The page itself is tested in a browser by the e2e suite.

use quiver_engine::build::import_and_build;
use quiver_engine::catalog::Catalog;
use quiver_engine::collection::builder::BuildOptions;
use quiver_engine::datagen::Clustered;
use quiver_engine::import::{self, ReadOptions, npy};
use quiver_engine::metrics::Metrics;
use quiver_engine::serve::console::Console;
use quiver_engine::serve::{ServeConfig, ServingProcess};
use quiver_engine::types::Metric;
use serde_json::{Value, json};
use std::sync::Arc;

const DIMS: usize = 8;

/// A process holding `v1` (300 rows) and `v2` (200 rows), the alias `products` on `v1`, and
/// its HTTP side on 127.0.0.1; returns the base URL and the directory.
async fn console(config: ServeConfig, flips: bool) -> (String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    for (name, rows, seed) in [("v1", 300, 1), ("v2", 200, 2)] {
        let path = dir.path().join(format!("{name}.npy"));
        npy::write_f32(&path, rows, DIMS, &Clustered::new(DIMS, 3).generate(rows, seed)).unwrap();
        let records = import::read(&path.display().to_string(), &ReadOptions::default()).unwrap();
        import_and_build(dir.path(), &BuildOptions::new(name, Metric::Cosine), records).unwrap();
    }
    let catalog = Arc::new(Catalog::open(dir.path()).unwrap());
    let v1 = catalog.collection("v1").unwrap();
    let report = quiver_engine::verify::verify(&v1, &Default::default()).unwrap();
    catalog.flip("products", v1, &report).unwrap();
    let process = Arc::new(ServingProcess::new(catalog, Arc::new(Metrics::new())).await);
    process.set_ready(true).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let console = Console::new(&config, flips, None);
    tokio::spawn(quiver_engine::serve::http::serve(process, listener, console, std::future::pending()));
    (url, dir)
}

/// One HTTP call: (status, JSON body or the text as a JSON string).
async fn call(method: &str, url: String, headers: Vec<(&'static str, String)>, body: Option<String>) -> (u16, Value) {
    let method = method.to_string();
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let mut request = ureq::http::Request::builder().method(method.as_str()).uri(&url);
        for (name, value) in &headers {
            request = request.header(*name, value);
        }
        let mut response = match body {
            Some(body) => agent.run(request.body(body).unwrap()),
            None => agent.run(request.body(()).unwrap()),
        }
        .unwrap();
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    })
    .await
    .unwrap()
}

async fn post(url: &str, path: &str, body: Value, token: Option<&str>) -> (u16, Value) {
    let mut headers = vec![("content-type", "application/json".to_string())];
    if let Some(token) = token {
        headers.push(("authorization", format!("Bearer {token}")));
    }
    call("POST", format!("{url}{path}"), headers, Some(body.to_string())).await
}

async fn alias_target(url: &str) -> Value {
    alias_target_with(url, None).await
}

async fn alias_target_with(url: &str, token: Option<&str>) -> Value {
    let headers = token.map(|t| ("authorization", format!("Bearer {t}"))).into_iter().collect();
    let (status, overview) = call("GET", format!("{url}/api/overview"), headers, None).await;
    assert_eq!(status, 200, "{overview}");
    overview["aliases"][0]["collection"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_collections_and_aliases_and_serves_its_page_under_a_strict_policy() {
    let (url, _dir) = console(ServeConfig::default(), true).await;
    let (status, overview) = call("GET", format!("{url}/api/overview"), vec![], None).await;
    assert_eq!(status, 200);
    assert_eq!(overview["role"], "standalone");
    let names: Vec<_> = overview["collections"].as_array().unwrap().iter().map(|c| c["name"].clone()).collect();
    assert_eq!(names, ["v1", "v2"]);
    let v1 = &overview["collections"][0];
    assert_eq!(
        (v1["count"].as_u64(), v1["dimensions"].as_u64(), v1["distance"].as_str()),
        (Some(300), Some(8), Some("cosine"))
    );
    assert!(v1["calibration"]["recall"].as_f64().unwrap() > 0.0, "{v1}");
    assert!(v1["disk_bytes"].as_u64().unwrap() > 0);
    assert_eq!(overview["aliases"][0]["name"], "products");

    let (page, api) = tokio::task::spawn_blocking(move || {
        (ureq::get(&format!("{url}/")).call().unwrap(), ureq::get(&format!("{url}/api/overview")).call().unwrap())
    })
    .await
    .unwrap();
    let policy = page.headers().get("content-security-policy").unwrap().to_str().unwrap();
    assert!(policy.contains("script-src 'self'") && policy.contains("frame-ancestors 'none'"), "{policy}");
    // The users' data is never kept by a cache, nor sniffed as another type.
    assert_eq!(api.headers().get("cache-control").unwrap(), "no-store");
    assert_eq!(api.headers().get("x-content-type-options").unwrap(), "nosniff");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_every_call_needs_it() {
    let config = ServeConfig { token: Some("t0ken".into()), ..Default::default() };
    let (url, _dir) = console(config, true).await;
    // Reads too: tag and partition names are the users' data. A 401 names its scheme.
    let asked = url.clone();
    let refused = tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        agent.get(&format!("{asked}/api/overview")).call().unwrap()
    })
    .await
    .unwrap();
    assert_eq!(refused.status().as_u16(), 401);
    assert_eq!(refused.headers().get("www-authenticate").unwrap(), "Bearer realm=\"quiver\"");
    assert_eq!(call("GET", format!("{url}/api/latency"), vec![], None).await.0, 401);
    assert_eq!(alias_target_with(&url, Some("t0ken")).await, "v1");
    let search = json!({ "collection": "products", "item": 3, "k": 3 });
    let (status, body) = post(&url, "/api/search", search.clone(), None).await;
    assert_eq!(status, 401, "{body}");
    assert!(body["error"].as_str().unwrap().contains("missing bearer token"), "{body}");
    assert!(!body.to_string().contains("t0ken"), "the token is never echoed: {body}");
    let (status, body) = post(&url, "/api/search", search.clone(), Some("wrong")).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = post(&url, "/api/search", search, Some("t0ken")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["hits"][0]["id"], 3, "a stored item finds itself first: {body}");

    let flip = json!({ "alias": "products", "collection": "v2" });
    assert_eq!(post(&url, "/api/flip", flip.clone(), None).await.0, 401);
    assert_eq!(post(&url, "/api/verify", json!({ "collection": "v2" }), None).await.0, 401);
    assert_eq!(alias_target_with(&url, Some("t0ken")).await, "v1", "an unauthenticated flip moves nothing");
    let (status, body) = post(&url, "/api/flip", flip, Some("t0ken")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(alias_target_with(&url, Some("t0ken")).await, "v2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_elsewhere_cannot_make_the_console_act() {
    let (url, _dir) = console(ServeConfig::default(), true).await;
    let flip = json!({ "alias": "products", "collection": "v2" }).to_string();
    // From another origin (a drive-by page posting to localhost): refused.
    let headers = vec![("content-type", "application/json".to_string()), ("origin", "http://evil.example".to_string())];
    let (status, body) = call("POST", format!("{url}/api/flip"), headers, Some(flip.clone())).await;
    assert_eq!(status, 403, "{body}");
    // DNS rebinding: a page whose own name now resolves to 127.0.0.1 is same-origin, but the
    // Host it sends is its name. Refused, for reads as for acts.
    let port = url.rsplit(':').next().unwrap().to_string();
    let rebound = format!("evil.example:{port}");
    let headers = vec![
        ("content-type", "application/json".to_string()),
        ("host", rebound.clone()),
        ("origin", format!("http://{rebound}")),
    ];
    let (status, body) = call("POST", format!("{url}/api/flip"), headers, Some(flip.clone())).await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("Host \"evil.example:"), "{body}");
    let (status, body) = call("GET", format!("{url}/api/overview"), vec![("host", rebound)], None).await;
    assert_eq!(status, 403, "{body}");
    // A "simple" cross-site form post (text/plain, no preflight): not JSON, refused.
    let headers = vec![("content-type", "text/plain".to_string())];
    let (status, body) = call("POST", format!("{url}/api/flip"), headers, Some(flip.clone())).await;
    assert_eq!(status, 415, "{body}");
    assert_eq!(alias_target(&url).await, "v1");
    // The console's own page (same origin) may.
    let own = url.trim_start_matches("http://").to_string();
    let headers = vec![("content-type", "application/json".to_string()), ("origin", format!("http://{own}"))];
    let (status, body) = call("POST", format!("{url}/api/flip"), headers, Some(flip)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(alias_target(&url).await, "v2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flip_that_fails_its_gate_is_refused_with_the_report_and_moves_nothing() {
    let (url, _dir) = console(ServeConfig::default(), true).await;
    let flip = json!({ "alias": "products", "collection": "v2", "gates": { "expected_count": 199 } });
    let (status, body) = post(&url, "/api/flip", flip, None).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["refused"].as_str().unwrap().contains("count: measured 200 == 199 failed (off by 1)"), "{body}");
    let count = body["report"]["gates"].as_array().unwrap().iter().find(|g| g["name"] == "count").unwrap().clone();
    assert_eq!(
        (count["measured"].as_f64(), count["threshold"].as_f64(), count["margin"].as_f64()),
        (Some(200.0), Some(199.0), Some(-1.0))
    );
    assert_eq!(alias_target(&url).await, "v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_role_never_flips() {
    let (url, _dir) = console(ServeConfig::default(), false).await;
    let (status, body) = post(&url, "/api/flip", json!({ "alias": "products", "collection": "v2" }), None).await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("the operator's"), "{body}");
    assert_eq!(alias_target(&url).await, "v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_named_by_field_and_value() {
    let (url, _dir) = console(ServeConfig::default(), true).await;
    let cases = [
        ("/api/search", json!({ "collection": "products", "item": 3, "k": 0 }), 400, "field `k` = 0"),
        (
            "/api/search",
            json!({ "collection": "products", "vector": [0.1, 0.2], "k": 3 }),
            400,
            "field `vector` = 2 values",
        ),
        ("/api/search", json!({ "collection": "products", "item": 99999, "k": 3 }), 404, "field `item` = 99999"),
        ("/api/search", json!({ "collection": "products", "k": 3 }), 400, "either `vector` or `item`"),
        ("/api/search", json!({ "collection": "../etc", "item": 1, "k": 3 }), 400, "name"),
        ("/api/search", json!({ "collection": "nope", "item": 1, "k": 3 }), 404, "nope"),
        ("/api/verify", json!({ "collection": "v1", "gates": { "min_recall": 2.0 } }), 400, "field `min_recall` = 2"),
        ("/api/verify", json!({ "collection": "v1", "gates": { "max_p99_ms": -1.0 } }), 400, "field `max_p99_ms` = -1"),
        ("/api/flip", json!({ "alias": "Bad Name", "collection": "v2" }), 400, "Bad Name"),
    ];
    for (path, body, want, says) in cases {
        let (status, answer) = post(&url, path, body.clone(), None).await;
        assert_eq!(status, want, "{path} {body}: {answer}");
        assert!(answer.to_string().contains(says), "{path} {body}: {answer}");
    }
    // An unknown field is refused (422, with serde's message naming it), not ignored.
    let (status, answer) =
        post(&url, "/api/search", json!({ "collection": "v1", "item": 1, "k": 3, "kk": 1 }), None).await;
    assert_eq!(status, 422, "{answer}");
    assert!(answer.to_string().contains("kk"), "{answer}");
    assert_eq!(alias_target(&url).await, "v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_host_name_is_answered() {
    let config = ServeConfig { console_hosts: vec!["Quiver.Internal".into()], ..Default::default() };
    let (url, _dir) = console(config, true).await;
    let port = url.rsplit(':').next().unwrap().to_string();
    let (status, body) =
        call("GET", format!("{url}/api/overview"), vec![("host", format!("quiver.internal:{port}"))], None).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) =
        call("GET", format!("{url}/api/overview"), vec![("host", format!("other.internal:{port}"))], None).await;
    assert_eq!(status, 403);
}
