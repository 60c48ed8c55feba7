//! Import from an http URL, and the id map's invariants under duplicates.

use proptest::prelude::*;
use quiver_engine::Collection;
use quiver_engine::collection::builder::{BuildOptions, Duplicates, import_and_build};
use quiver_engine::distance::Metric;
use quiver_engine::import::{self, ReadOptions, npy};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpListener;

/// Serves `body` at `/base.npy` (and 404 elsewhere) to each connection, on an ephemeral port.
fn serve(body: Vec<u8>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            let mut request = [0u8; 2048];
            let n = stream.read(&mut request).unwrap_or(0);
            let line = String::from_utf8_lossy(&request[..n]).lines().next().unwrap_or_default().to_string();
            let response = if line.starts_with("GET /base.npy ") {
                [
                    format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len())
                        .into_bytes(),
                    body.clone(),
                ]
                .concat()
            } else {
                b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_vec()
            };
            let _ = stream.write_all(&response);
        }
    });
    format!("http://{addr}")
}

#[test]
fn imports_from_an_http_url_and_reports_a_missing_one() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("base.npy");
    let data: Vec<f32> = (0..400 * 8).map(|i| ((i * 37 % 101) as f32 - 50.0) / 10.0).collect();
    npy::write_f32(&file, 400, 8, &data).unwrap();
    let bytes = std::fs::read(&file).unwrap();
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
