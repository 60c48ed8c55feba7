//! The on-disk format, held against files written when this format was introduced: a small
//! collection's snapshot (`.snapshots/fixture.mdb`, an LMDB data file, and its `.json`
//! description), its source and the answers it gave, kept in
//! `engine/tests/fixtures/format-<FORMAT_VERSION>/`. Every later version with the same
//! `FORMAT_VERSION` must check, install, open and search it with the same exact answers and
//! the same manifest, as arroy keeps databases of its old formats: a change of the format cannot
//! land unnoticed. (Little-endian, as the item-id database is native-endian.) When the format
//! changes on purpose, bump `FORMAT_VERSION` (`Collection::open` then refuses the old files by
//! name; say so in the release notes) and write the new directory with
//! `QUIVER_WRITE_FORMAT_FIXTURE=1 cargo nextest run -p quiver-engine -E 'test(format::)'`.

use quiver_engine::build::import_and_build;
use quiver_engine::collection::builder::BuildOptions;
use quiver_engine::collection::manifest::FORMAT_VERSION;
use quiver_engine::datagen::Clustered;
use quiver_engine::import::{self, ReadOptions};
use quiver_engine::search::searcher::Searcher;
use quiver_engine::search::{SearchRequest, search};
use quiver_engine::snapshot::SnapshotDir;
use quiver_engine::types::{Metric, SearchDefaults, Strategy};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

const NAME: &str = "fixture";
const DIMS: usize = 8;
const ROWS: usize = 120;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/format-{FORMAT_VERSION}"))
}

/// The queries the fixture is asked, with a tag and a partition filter each other time.
fn requests(queries: &[Vec<f32>]) -> Vec<SearchRequest> {
    queries
        .iter()
        .enumerate()
        .map(|(i, q)| SearchRequest {
            strategy: Some(Strategy::Exact),
            tags: if i % 2 == 1 { vec!["sale".into()] } else { Vec::new() },
            partitions: if i % 3 == 2 { vec!["eu".into()] } else { Vec::new() },
            ..SearchRequest::new(q.clone(), 5)
        })
        .collect()
}

/// Builds the fixture collection from `out/fixture.jsonl` (written first), writes its snapshot
/// and the answers into `out`.
fn write_fixture(out: &Path) {
    let work = tempfile::tempdir().unwrap();
    let data = Clustered::new(DIMS, 3).generate(ROWS, 1);
    let lines: Vec<String> = data
        .chunks(DIMS)
        .enumerate()
        .map(|(i, v)| {
            let tags: Vec<&str> = if i % 4 == 0 { vec!["sale", "new"] } else { vec!["new"] };
            let partition = if i % 2 == 0 { "eu" } else { "us" };
            json!({"id": 1_000 + i, "vector": v, "partition": partition, "tags": tags}).to_string()
        })
        .collect();
    // Kept with the fixture, and named relative to the package (the tests' working directory),
    // so the manifest's source names no machine's path.
    std::fs::create_dir_all(out).unwrap();
    std::fs::write(out.join("fixture.jsonl"), lines.join("\n") + "\n").unwrap();
    let source = format!("tests/fixtures/format-{FORMAT_VERSION}/fixture.jsonl");
    let mut options = BuildOptions::new(NAME, Metric::Cosine);
    // One tree: the test asks the durable index too (format-1's manifest has no tree count: it
    // was written before builds recorded one, with arroy's own forest, and reads as such).
    options.index.n_trees = Some(1);
    (options.search, options.target_recall) =
        (SearchDefaults { strategy: Strategy::SignScan, quality: 40, probes: 0 }, None);
    let records = import::read(&source, &ReadOptions::default()).unwrap();
    import_and_build(work.path(), &options, records).unwrap();
    let collection = Searcher::open(&work.path().join(NAME)).unwrap();
    SnapshotDir::new(work.path()).write(&collection).unwrap();

    let queries: Vec<Vec<f32>> = Clustered::new(DIMS, 3).generate(6, 9).chunks(DIMS).map(|q| q.to_vec()).collect();
    let answers: Vec<Value> = requests(&queries)
        .iter()
        .map(|r| json!(search(&collection, r).unwrap().iter().map(|h| h.id).collect::<Vec<_>>()))
        .collect();
    let snapshots = out.join(".snapshots");
    std::fs::create_dir_all(&snapshots).unwrap();
    for file in ["fixture.mdb", "fixture.json"] {
        std::fs::copy(work.path().join(".snapshots").join(file), snapshots.join(file)).unwrap();
    }
    let expected = json!({
        "count": ROWS,
        "dimensions": DIMS,
        "partitions": ["eu", "us"],
        "tags": {"new": ROWS, "sale": ROWS / 4},
        "queries": queries,
        "exact_ids": answers,
    });
    std::fs::write(out.join("expected.json"), serde_json::to_string_pretty(&expected).unwrap() + "\n").unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn a_snapshot_written_by_an_earlier_version_installs_and_answers_the_same() {
    let fixture = fixture_dir();
    if std::env::var_os("QUIVER_WRITE_FORMAT_FIXTURE").is_some() {
        // Never over an earlier version's files: a new format gets a directory of its own.
        assert!(!fixture.exists(), "{} exists; bump FORMAT_VERSION for a new format", fixture.display());
        write_fixture(&fixture);
    }
    assert!(fixture.join("expected.json").exists(), "no fixture for format {FORMAT_VERSION} at {}", fixture.display());
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("expected.json")).unwrap()).unwrap();
    // A copy: opening and installing write beside the files.
    let root = tempfile::tempdir().unwrap();
    copy_dir(&fixture, root.path());

    let snapshots = SnapshotDir::new(root.path());
    let info = snapshots.checked_info(NAME).unwrap().expect("the fixture's snapshot passes its checks on disk");
    assert_eq!(info.manifest.format_version, FORMAT_VERSION);
    let collection = Searcher::new(snapshots.install(root.path(), &info).unwrap());
    let manifest = collection.manifest();
    // Every field as it was written (serde would quietly drop a renamed optional one).
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join(".snapshots/fixture.json")).unwrap()).unwrap();
    assert_eq!(serde_json::to_value(manifest).unwrap(), written["manifest"]);
    assert_eq!(json!(manifest.count), expected["count"]);
    assert_eq!(json!(manifest.dimensions), expected["dimensions"]);
    assert_eq!(json!(manifest.partitions), expected["partitions"]);
    let tags: serde_json::Map<String, Value> =
        collection.tag_counts().map(|(t, n)| (t.to_string(), json!(n))).collect();
    assert_eq!(Value::Object(tags), expected["tags"]);

    let queries: Vec<Vec<f32>> = serde_json::from_value(expected["queries"].clone()).unwrap();
    for (i, request) in requests(&queries).iter().enumerate() {
        let ids: Vec<u64> = search(&collection, request).unwrap().iter().map(|h| h.id).collect();
        assert_eq!(json!(ids), expected["exact_ids"][i], "query {i}: {request:?}");
        // The sign codes are built from the stored vectors; re-ranking every member (quality
        // above the count) gives the exact answer. The durable index reads its own database.
        let signscan = SearchRequest { strategy: Some(Strategy::SignScan), quality: Some(200), ..request.clone() };
        let found: Vec<u64> = search(&collection, &signscan).unwrap().iter().map(|h| h.id).collect();
        assert_eq!(found, ids, "query {i} by sign codes");
        let index = SearchRequest { strategy: Some(Strategy::Index), quality: Some(200), ..request.clone() };
        assert_eq!(search(&collection, &index).unwrap().len(), ids.len(), "query {i} by the durable index");
    }
}
