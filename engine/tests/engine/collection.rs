//! Import, build, search and verify a small clustered collection end to end (in process).

use quiver_engine::Error;
use quiver_engine::build::import_and_build;
use quiver_engine::cancel::Cancel;
use quiver_engine::collection::builder::{BuildOptions, Duplicates};
use quiver_engine::datagen::Clustered;
use quiver_engine::import::{self, ReadOptions, npy};
use quiver_engine::search::recall::{recall, sample_queries};
use quiver_engine::search::searcher::Searcher;
use quiver_engine::search::{SearchRequest, search, search_batch, search_cancellable};
use quiver_engine::types::Metric;
use quiver_engine::types::{IndexParams, SearchDefaults, Strategy};
use quiver_engine::verify::{VerifyOptions, verify};
use std::path::Path;

const DIMS: usize = 32;

fn write_npy(dir: &Path, name: &str, n: usize, stream: u64) -> String {
    let path = dir.join(name);
    let data = Clustered::new(DIMS, 5).generate(n, stream);
    npy::write_f32(&path, n, DIMS, &data).unwrap();
    path.display().to_string()
}

fn write_jsonl(dir: &Path, name: &str, lines: &[String]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, lines.join("\n")).unwrap();
    path.display().to_string()
}

fn build(root: &Path, name: &str, source: &str, options: impl FnOnce(&mut BuildOptions)) -> Result<Searcher, Error> {
    let mut o = BuildOptions::new(name, Metric::Cosine);
    options(&mut o);
    let records = import::read(source, &ReadOptions::default())?;
    let manifest = import_and_build(root, &o, records)?;
    Searcher::open(&root.join(manifest.name))
}

fn ids(hits: &[quiver_engine::search::Hit]) -> Vec<u64> {
    hits.iter().map(|h| h.id).collect()
}

/// Mean recall@10 of a strategy against exact search on held-out queries.
fn mean_recall(c: &Searcher, strategy: Strategy, quality: usize) -> f64 {
    let queries = Clustered::new(DIMS, 5).generate(50, 99);
    let mut total = 0.0;
    for q in queries.chunks(DIMS) {
        let mut r = SearchRequest::new(q.to_vec(), 10);
        r.strategy = Some(Strategy::Exact);
        let truth = ids(&search(c, &r).unwrap());
        r.strategy = Some(strategy);
        r.quality = Some(quality);
        total += recall(&ids(&search(c, &r).unwrap()), &truth);
    }
    total / 50.0
}

#[test]
fn import_build_and_search_meet_recall_floors() {
    let dir = tempfile::tempdir().unwrap();
    let source = write_npy(dir.path(), "base.npy", 3000, 1);
    // One arroy tree, asked for: the index strategy is among those checked here.
    let c = build(dir.path(), "v1", &source, |o| o.index.n_trees = Some(1)).unwrap();
    let m = c.manifest();
    assert_eq!((m.count, m.dimensions, m.metric), (3000, DIMS, Metric::Cosine));
    assert!(m.sealed && m.source.fingerprint.starts_with("sha256:") && m.source.rows_read == 3000);
    assert_eq!(m.partitions, vec!["default"]);

    // A stored vector is its own nearest neighbour, at distance ~0.
    let v = c.vector(c.item_of(1234).unwrap().unwrap()).to_vec();
    for strategy in [Strategy::Exact, Strategy::SignScan, Strategy::Index] {
        let mut r = SearchRequest::new(v.clone(), 5);
        r.strategy = Some(strategy);
        // arroy shortlists by 32-bit codes, which tie within a cluster: a wider shortlist.
        r.quality = (strategy == Strategy::Index).then_some(1000);
        let hits = search(&c, &r).unwrap();
        assert_eq!(hits[0].id, 1234, "{strategy}");
        assert!(hits[0].distance.abs() < 1e-4);
        assert!(hits.windows(2).all(|w| w[0].distance <= w[1].distance));
    }
    // Loose floors: these catch a broken index, not a slow one.
    assert!(mean_recall(&c, Strategy::SignScan, 200) >= 0.9);
    // One tree with arroy's default search_k (n_trees x k) shortlists only k items; 100 x k
    // is the calibration ladder's second rung.
    assert!(mean_recall(&c, Strategy::Index, 1000) >= 0.6);
    assert_eq!(mean_recall(&c, Strategy::Exact, 0), 1.0);
}

/// The default build makes no arroy trees, since neither the default search path nor the
/// verification walks one: calibration never considers the index strategy, and a query that
/// asks for it is refused by name, while every other strategy answers.
#[test]
fn a_default_build_has_no_durable_index_and_refuses_the_index_strategy() {
    let dir = tempfile::tempdir().unwrap();
    let source = write_npy(dir.path(), "base.npy", 2000, 1);
    let c = build(dir.path(), "plain", &source, |_| {}).unwrap();
    let m = c.manifest();
    assert_eq!(m.index.n_trees, Some(0));
    let calibration = m.calibration.as_ref().expect("a default build calibrates");
    assert!(calibration.considered.iter().all(|s| s.strategy != Strategy::Index), "{calibration:?}");
    assert_ne!(m.search.strategy, Strategy::Index);
    let v = c.vector(c.item_of(7).unwrap().unwrap()).to_vec();
    let mut r = SearchRequest::new(v, 5);
    r.strategy = Some(Strategy::Index);
    match search(&c, &r) {
        Err(Error::Request(e)) => {
            assert_eq!((e.field.as_str(), e.value.as_str()), ("strategy", "index"));
            assert!(e.reason.contains("index.nTrees"), "{}", e.reason);
        }
        other => panic!("the index strategy of a collection without trees answered {other:?}"),
    }
    for strategy in [Strategy::Exact, Strategy::SignScan] {
        r.strategy = Some(strategy);
        assert_eq!(search(&c, &r).unwrap()[0].id, 7, "{strategy}");
    }
    assert!(verify(&c, &VerifyOptions::default()).unwrap().passed);

    // A fixed (uncalibrated) default of the index strategy on such a build is refused before
    // the import, and leaves nothing behind.
    let err = build(dir.path(), "fixed", &source, |o| {
        o.search = SearchDefaults { strategy: Strategy::Index, quality: 100, probes: 0 };
        o.target_recall = None;
    })
    .unwrap_err();
    match err {
        Error::Request(e) => assert!(e.field == "strategy" && e.reason.contains("--n-trees"), "{e:?}"),
        other => panic!("{other}"),
    }
    assert!(!dir.path().join("fixed").exists());
}

#[test]
fn hannoy_backend_builds_and_answers() {
    let dir = tempfile::tempdir().unwrap();
    let source = write_npy(dir.path(), "base.npy", 2000, 1);
    let c = build(dir.path(), "h", &source, |o| o.index = IndexParams::hannoy(64)).unwrap();
    assert!(mean_recall(&c, Strategy::Index, 64) >= 0.8);
    let err = build(dir.path(), "hd", &source, |o| {
        o.index = IndexParams::hannoy(64);
        o.metric = Metric::Dot;
    })
    .unwrap_err();
    assert!(err.to_string().contains("hannoy has no dot-product"), "{err}");
}

#[test]
fn every_metric_builds_and_finds_exact_neighbours() {
    let dir = tempfile::tempdir().unwrap();
    let source = write_npy(dir.path(), "base.npy", 800, 1);
    for metric in Metric::ALL {
        let name = format!("m-{}", metric.as_str().replace('_', "-"));
        let c = build(dir.path(), &name, &source, |o| {
            o.metric = metric;
            o.index.n_trees = Some(1);
        })
        .unwrap();
        assert!(mean_recall(&c, Strategy::SignScan, 100) >= 0.85, "{metric}");
        assert!(mean_recall(&c, Strategy::Index, 2000) >= 0.5, "{metric}");
    }
}

#[test]
fn partitions_fan_out_and_merge_like_one_exact_scan() {
    let dir = tempfile::tempdir().unwrap();
    let data = Clustered::new(DIMS, 5).generate(1200, 1);
    let lines: Vec<String> = data
        .chunks(DIMS)
        .enumerate()
        .map(|(i, v)| {
            let tags = if i % 3 == 0 { r#"["in-stock"]"# } else { "[]" };
            serde_json::json!({"id": 10_000 + i, "vector": v, "partition": format!("shard-{}", i % 4), "tags": serde_json::from_str::<serde_json::Value>(tags).unwrap()}).to_string()
        })
        .collect();
    let source = write_jsonl(dir.path(), "v.jsonl", &lines);
    let c = build(dir.path(), "parts", &source, |o| o.index.n_trees = Some(1)).unwrap();
    assert_eq!(c.manifest().partitions.len(), 4);
    let queries = Clustered::new(DIMS, 5).generate(20, 7);
    for q in queries.chunks(DIMS) {
        let mut all = SearchRequest::new(q.to_vec(), 10);
        all.strategy = Some(Strategy::Exact);
        let merged = search(&c, &all).unwrap();
        // The merge of per-partition answers equals an exact scan over the union.
        let mut per: Vec<_> = (0..4)
            .flat_map(|p| {
                let mut r = all.clone();
                r.partitions = vec![format!("shard-{p}")];
                search(&c, &r).unwrap()
            })
            .collect();
        per.sort_by(|a, b| a.distance.total_cmp(&b.distance));
        assert_eq!(ids(&merged), ids(&per[..10]));

        let mut sub = all.clone();
        sub.partitions = vec!["shard-1".into(), "shard-3".into()];
        assert!(search(&c, &sub).unwrap().iter().all(|h| (h.id - 10_000) % 2 == 1));

        for strategy in [Strategy::Exact, Strategy::SignScan, Strategy::Index] {
            let mut tagged = all.clone();
            tagged.strategy = Some(strategy);
            tagged.tags = vec!["in-stock".into()];
            let hits = search(&c, &tagged).unwrap();
            assert!(!hits.is_empty());
            assert!(hits.iter().all(|h| (h.id - 10_000) % 3 == 0), "{strategy}: filter leaked");
        }
    }
    let batch: Vec<SearchRequest> = queries.chunks(DIMS).map(|q| SearchRequest::new(q.to_vec(), 3)).collect();
    assert!(search_batch(&c, &batch).unwrap().iter().all(|hits| hits.len() == 3));
    // A filtered exact scan (every partition's members re-scored) stops once its call is gone.
    let mut tagged = SearchRequest::new(queries[..DIMS].to_vec(), 10);
    (tagged.strategy, tagged.tags) = (Some(Strategy::Exact), vec!["in-stock".into()]);
    assert_stops_when_cancelled(&c, &tagged);
}

/// `request` answers k hits, and stops with `Cancelled` when its call's flag fired.
fn assert_stops_when_cancelled(c: &Searcher, request: &SearchRequest) {
    assert_eq!(search_cancellable(c, request, &Cancel::default()).unwrap().len(), request.k);
    let gone = Cancel::default();
    gone.cancel();
    let e = search_cancellable(c, request, &gone).unwrap_err();
    assert!(matches!(e, Error::Cancelled { .. }), "{e}");
}

#[test]
fn a_whole_exact_scan_stops_when_its_call_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let source = write_npy(dir.path(), "base.npy", 300, 1);
    let c = build(dir.path(), "v1", &source, |_| {}).unwrap();
    let mut exact = SearchRequest::new(vec![0.5; DIMS], 10);
    exact.strategy = Some(Strategy::Exact);
    assert_stops_when_cancelled(&c, &exact);
}

#[test]
fn bad_requests_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let source = write_npy(dir.path(), "base.npy", 300, 1);
    let c = build(dir.path(), "v1", &source, |_| {}).unwrap();
    let q = vec![0.5; DIMS];
    let cases: Vec<(SearchRequest, &str)> = vec![
        (SearchRequest::new(q.clone(), 0), "field `k` = 0"),
        (SearchRequest::new(q.clone(), 10_001), "field `k` = 10001"),
        (SearchRequest::new(vec![0.5; DIMS + 1], 5), "field `vector` = 33 values"),
        (
            SearchRequest::new(
                {
                    let mut v = q.clone();
                    v[3] = f32::NAN;
                    v
                },
                5,
            ),
            "field `vector[3]` = NaN",
        ),
        (
            SearchRequest { partitions: vec!["nope".into()], ..SearchRequest::new(q.clone(), 5) },
            "field `partitions` = \"nope\"",
        ),
        (SearchRequest { tags: vec!["sale".into()], ..SearchRequest::new(q.clone(), 5) }, "field `tags` = \"sale\""),
    ];
    for (request, expected) in cases {
        let err = search(&c, &request).unwrap_err().to_string();
        assert!(err.contains(expected), "{err} lacks {expected}");
    }
}

#[test]
fn bad_imports_name_the_place_and_damage_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let good = write_npy(root, "base.npy", 200, 1);
    let live = build(root, "live", &good, |_| {}).unwrap();
    let live_fingerprint = live.manifest().source.fingerprint.clone();
    let v = |x: f32| serde_json::json!(vec![x; DIMS]).to_string();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![format!(r#"{{"id":1,"vector":{}}}"#, v(0.1)), r#"{"id":2,"vector":[1,2]}"#.into()],
            "line 2: field `vector` = 2 values",
        ),
        (
            vec![format!(r#"{{"id":1,"vector":{}}}"#, v(0.1)), format!(r#"{{"id":1,"vector":{}}}"#, v(0.2))],
            "line 2: field `id` = 1: duplicate id",
        ),
        (vec![format!(r#"{{"id":1,"vector":[1e39{}]}}"#, ",0.1".repeat(DIMS - 1))], "line 1: field `vector[0]` = inf"),
        (vec![format!(r#"{{"id":1,"vector":{}}}"#, v(0.0))], "field `vector` = all zeros"),
        (vec![r#"{"id":1,"vector":[1,2"#.into()], "line 1"),
        (vec![], "empty import"),
        (vec![format!(r#"{{"id":1,"vector":{},"partition":"a b"}}"#, v(0.1))], "field `partition` = \"a b\""),
    ];
    for (i, (lines, expected)) in cases.into_iter().enumerate() {
        let source = write_jsonl(root, &format!("bad{i}.jsonl"), &lines);
        let err = build(root, &format!("bad{i}"), &source, |_| {}).unwrap_err().to_string();
        assert!(err.contains(expected) && err.contains(&format!("bad{i}.jsonl")), "{err} lacks {expected}");
        assert!(!root.join(format!("bad{i}")).exists(), "a failed import left a collection behind");
    }
    // Truncated .npy: the error names the row; nothing is created.
    let mut bytes = std::fs::read(&good).unwrap();
    bytes.truncate(bytes.len() - 10);
    std::fs::write(root.join("cut.npy"), bytes).unwrap();
    let err = build(root, "cut", &root.join("cut.npy").display().to_string(), |_| {}).unwrap_err().to_string();
    assert!(err.contains("cut.npy: row 199") && err.contains("truncated"), "{err}");
    // Nothing in the staging area, and the live collection is as it was.
    let staging: Vec<_> = std::fs::read_dir(root.join(".staging")).unwrap().collect();
    assert!(staging.is_empty());
    drop(live);
    let live = Searcher::open(&root.join("live")).unwrap();
    assert_eq!(live.len(), 200);
    assert_eq!(live.manifest().source.fingerprint, live_fingerprint);
    // A sealed collection refuses further writes.
    let err = build(root, "live", &good, |_| {}).unwrap_err().to_string();
    assert!(err.contains("\"live\" is sealed"), "{err}");
}

#[test]
fn last_wins_replaces_vector_partition_and_tags() {
    let dir = tempfile::tempdir().unwrap();
    let a = serde_json::json!(vec![1.0f32; DIMS]);
    let b = serde_json::json!((0..DIMS).map(|i| if i == 0 { 1.0 } else { 0.0 }).collect::<Vec<f32>>());
    let lines = vec![
        format!(r#"{{"id":7,"vector":{a},"partition":"old","tags":["x"]}}"#),
        format!(r#"{{"id":8,"vector":{a}}}"#),
        format!(r#"{{"id":7,"vector":{b},"partition":"new","tags":["y"]}}"#),
    ];
    let source = write_jsonl(dir.path(), "dup.jsonl", &lines);
    // Tiny batches so the replaced record was already committed to LMDB.
    let c = build(dir.path(), "lw", &source, |o| {
        o.duplicates = Duplicates::LastWins;
        o.batch_rows = 1;
    })
    .unwrap();
    assert_eq!(c.len(), 2);
    let item = c.item_of(7).unwrap().unwrap();
    assert_eq!(c.vector(item)[0], 1.0);
    assert_eq!(c.vector(item)[1], 0.0);
    assert!(c.tag("x").is_none_or(|t| !t.contains(item)));
    assert!(c.tag("y").unwrap().contains(item));
    let mut r = SearchRequest::new(b.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect(), 1);
    r.partitions = vec!["new".into()];
    assert_eq!(search(&c, &r).unwrap()[0].id, 7);
    r.partitions = vec!["old".into()];
    assert!(search(&c, &r).unwrap().is_empty());
}

#[test]
fn an_unfinished_collection_does_not_open() {
    let dir = tempfile::tempdir().unwrap();
    let err = Searcher::open(&dir.path().join("missing")).unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    // A staging directory from a crashed import (its lock held by nobody) is removed by the next
    // import; one whose lock is held (an import running elsewhere) is left alone.
    let stale = dir.path().join(".staging").join("x-1-1");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("data.mdb"), b"partial").unwrap();
    std::fs::write(dir.path().join(".staging/x-1-1.lock"), b"").unwrap();
    let running = dir.path().join(".staging").join("y-1-2");
    std::fs::create_dir_all(&running).unwrap();
    let held = std::fs::File::create(dir.path().join(".staging/y-1-2.lock")).unwrap();
    held.lock().unwrap();
    let source = write_npy(dir.path(), "base.npy", 100, 1);
    build(dir.path(), "v1", &source, |_| {}).unwrap();
    assert!(!stale.exists() && !dir.path().join(".staging/x-1-1.lock").exists());
    assert!(running.exists(), "an import whose lock is held is not touched");
}

#[test]
fn verification_gates_and_the_alias_flip() {
    use quiver_engine::catalog::Catalog;
    let dir = tempfile::tempdir().unwrap();
    let source = write_npy(dir.path(), "base.npy", 1500, 1);
    build(dir.path(), "v1", &source, |_| {}).unwrap();
    build(dir.path(), "v2", &source, |_| {}).unwrap();
    let catalog = Catalog::open(dir.path()).unwrap();
    let v1 = catalog.collection("v1").unwrap();
    let v2 = catalog.collection("v2").unwrap();
    let pass =
        verify(&v1, &VerifyOptions { expected_count: Some(1500), min_recall: 0.8, sample: 50, ..Default::default() })
            .unwrap();
    assert!(pass.passed, "{:?}", pass.failures());
    catalog.flip("products", v1.clone(), &pass).unwrap();

    let wrong =
        verify(&v2, &VerifyOptions { expected_count: Some(1501), min_recall: 0.8, sample: 50, ..Default::default() })
            .unwrap();
    assert!(!wrong.passed);
    assert_eq!(wrong.failures().len(), 1);
    assert!(
        wrong.failures()[0].contains("count") && wrong.failures()[0].contains("off by 1"),
        "{:?}",
        wrong.failures()
    );
    let err = catalog.flip("products", v2.clone(), &wrong).unwrap_err().to_string();
    assert!(err.contains("failed verification"), "{err}");
    // A passing report for another collection does not open the gate either.
    assert!(catalog.flip("products", v2.clone(), &pass).unwrap_err().to_string().contains("report is for"));
    assert_eq!(catalog.resolve("products").unwrap().name(), "v1");

    let unreachable = verify(&v2, &VerifyOptions { min_recall: 1.01, sample: 20, ..Default::default() }).unwrap();
    assert!(!unreachable.passed && unreachable.gates[0].margin < 0.0);

    let ok =
        verify(&v2, &VerifyOptions { expected_count: Some(1500), min_recall: 0.8, sample: 50, ..Default::default() })
            .unwrap();
    let record = catalog.flip("products", v2, &ok).unwrap();
    assert_eq!((record.collection.as_str(), record.previous.as_deref()), ("v2", Some("v1")));
    assert_eq!(record.history.len(), 2);
    drop(catalog);
    // The alias is durable: a new catalog over the same root resolves it.
    assert_eq!(Catalog::open(dir.path()).unwrap().resolve("products").unwrap().name(), "v2");
    assert_eq!(sample_queries(&v1, 3, 1).len(), 3);
}

#[test]
fn calibration_picks_a_setting_that_meets_the_target_on_held_out_queries() {
    let dir = tempfile::tempdir().unwrap();
    let source = write_npy(dir.path(), "base.npy", 4000, 1);
    let c = build(dir.path(), "cal", &source, |o| o.target_recall = Some(0.95)).unwrap();
    let calibration = c.manifest().calibration.clone().expect("calibrated");
    assert_eq!(c.manifest().search, calibration.defaults());
    assert!(calibration.recall >= 0.96, "{calibration:?}");
    assert!(calibration.considered.iter().any(|k| k.strategy == Strategy::Exact));
    // Held out: queries from another stream of the generator, not the calibration sample.
    let queries: Vec<Vec<f32>> = Clustered::new(DIMS, 5).generate(300, 77).chunks(DIMS).map(<[f32]>::to_vec).collect();
    let report = verify(&c, &VerifyOptions { queries, min_recall: 0.95, ..Default::default() }).unwrap();
    assert!(report.passed, "{:?} with {}", report.failures(), report.setting);
    assert_eq!(report.setting, format!("{} quality={}", calibration.strategy, calibration.quality));
}

/// A catalog over seven collections of 300 rows, `v0` .. `v6`, none served by an alias (more
/// than the catalog keeps open unserved).
fn seven_collections() -> (tempfile::TempDir, Vec<String>, quiver_engine::catalog::Catalog) {
    let dir = tempfile::tempdir().unwrap();
    let source = write_npy(dir.path(), "base.npy", 300, 1);
    let names: Vec<String> = (0..7).map(|i| format!("v{i}")).collect();
    for name in &names {
        build(dir.path(), name, &source, |o| o.target_recall = None).unwrap();
    }
    let catalog = quiver_engine::catalog::Catalog::open(dir.path()).unwrap();
    (dir, names, catalog)
}

/// Collections no alias serves are closed beyond a few (memory and address space stay bounded
/// after many flips), but one still held by a running query is handed out again, never opened
/// a second time (LMDB refuses a second environment on the same file).
#[test]
fn unserved_collections_are_closed_and_a_held_one_is_reused() {
    let (_dir, names, catalog) = seven_collections();
    let held = catalog.collection("v0").unwrap();
    for name in &names[1..] {
        catalog.collection(name).unwrap();
    }
    // v0, v1 and v2 are the oldest unserved: closed by the catalog; v0 stays alive through
    // `held`, beside the four most recent.
    assert_eq!(catalog.open_count(), 5);
    let again = catalog.collection("v0").unwrap();
    assert!(std::sync::Arc::ptr_eq(&held, &again), "the live collection is reused");
    drop((held, again));
    for name in &names[1..] {
        catalog.collection(name).unwrap();
    }
    assert!(catalog.open_count() <= 5, "{} collections still open", catalog.open_count());
    assert_eq!(catalog.collection("v0").unwrap().len(), 300, "reopened once closed");
}

/// The console's look at every collection (each poll of its overview) neither keeps one open nor
/// closes one that searches use.
#[test]
fn a_look_neither_keeps_nor_closes_a_collection() {
    let (_dir, names, catalog) = seven_collections();
    let used = std::sync::Arc::downgrade(&catalog.collection("v0").unwrap());
    for name in &names[1..4] {
        catalog.collection(name).unwrap();
    }
    for name in &names {
        assert_eq!(catalog.glance(name).unwrap().len(), 300);
    }
    assert!(used.upgrade().is_some(), "a look closed a collection searches used");
    assert_eq!(catalog.open_count(), 4, "a look kept a collection open");
}

/// The writer's pipeline hands out its sealed collection preloaded (sign codes built), so the
/// writer reports SERVING only when its first query is not a cold one.
#[test]
fn a_published_collection_is_preloaded() {
    use quiver_engine::metrics::Metrics;
    use quiver_engine::publish::Publisher;
    let dir = tempfile::tempdir().unwrap();
    let source = write_npy(dir.path(), "base.npy", 500, 1);
    let records = import::read(&source, &ReadOptions::default()).unwrap();
    let mut options = BuildOptions::new("v1", Metric::Cosine);
    options.target_recall = None;
    let publisher = Publisher::new(dir.path(), options, std::sync::Arc::new(Metrics::new()));
    let (collection, _) = publisher.publish(records).unwrap();
    assert!(collection.is_preloaded());
    drop(collection);
    // Opened again (a writer restart), recovery preloads it too.
    let (again, _) = Publisher::new(dir.path(), BuildOptions::new("v1", Metric::Cosine), Default::default())
        .recover()
        .unwrap()
        .expect("sealed");
    assert!(again.is_preloaded());
}

/// The coarse lists are stored, a query with few probes scans only the lists nearest to it,
/// and a filter whose members all sit in far lists still fills k by probing further.
#[test]
fn coarse_lists_narrow_the_scan_and_a_selective_filter_probes_further() {
    let dir = tempfile::tempdir().unwrap();
    let n = 6000;
    let data = Clustered::new(DIMS, 5).generate(n, 1);
    let lines: Vec<String> = data
        .chunks(DIMS)
        .enumerate()
        .map(|(i, v)| {
            serde_json::json!({"id": i, "vector": v, "tags": if i % 500 == 7 { vec!["rare"] } else { vec![] }})
                .to_string()
        })
        .collect();
    let source = write_jsonl(dir.path(), "tagged.jsonl", &lines);
    let c = build(dir.path(), "ivf", &source, |o| o.index.lists = Some(16)).unwrap();
    let lists = c.coarse_lists(0).expect("the build stored coarse lists");
    assert_eq!((lists.len(), lists.items().len()), (16, n));
    let list_of = |item: u32| (0..lists.len()).find(|&l| lists.items()[lists.list(l)].contains(&item)).unwrap();
    let kernel = |a: &[f32], b: &[f32]| 1.0 - a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();

    let query = c.vector(42).to_vec();
    let nearest = (0..lists.len())
        .min_by(|&a, &b| kernel(&query, lists.centroid(a)).total_cmp(&kernel(&query, lists.centroid(b))))
        .unwrap();
    let request = SearchRequest {
        strategy: Some(Strategy::SignScan),
        quality: Some(50),
        probes: Some(1),
        ..SearchRequest::new(query.clone(), 10)
    };
    let hits = search(&c, &request).unwrap();
    assert_eq!(hits.len(), 10);
    for hit in &hits {
        let item = c.item_of(hit.id).unwrap().unwrap();
        assert_eq!(list_of(item), nearest, "hit {} lies outside the one probed list", hit.id);
    }

    // Twelve items carry "rare"; one probe holds at most a few of them, yet all k come back.
    // Re-ranking 10 of them keeps the query on the lists path (12 members > budget).
    let rare = SearchRequest { tags: vec!["rare".into()], quality: Some(10), ..request };
    let hits = search(&c, &rare).unwrap();
    assert_eq!(hits.len(), 10, "{hits:?}");
    assert!(hits.iter().all(|h| h.id % 500 == 7));
    let spread: std::collections::BTreeSet<usize> =
        hits.iter().map(|h| list_of(c.item_of(h.id).unwrap().unwrap())).collect();
    assert!(spread.len() > 1, "the filtered query probed only {spread:?}");
}

/// arroy keeps one bit per dimension by default (cosine, euclidean): the manifest records it,
/// the collection is smaller on disk than with float32 copies, and the index strategy still
/// finds a stored vector first (its shortlist is re-ranked exactly). Dot products keep full
/// copies; a manifest written before the choice existed reads as full.
#[test]
fn arroy_keeps_binary_vectors_unless_told_otherwise() {
    use quiver_engine::types::ArroyVectors;
    let dir = tempfile::tempdir().unwrap();
    let source = write_npy(dir.path(), "base.npy", 4000, 1);
    // Ten trees (the default is none): 32 bits tie so often that a single tree's walk can miss
    // the query's own item, and this test is about how the vectors are kept.
    let trees = |o: &mut BuildOptions| o.index.n_trees = Some(10);
    let binary = build(dir.path(), "binary", &source, trees).unwrap();
    let full = build(dir.path(), "full", &source, |o| {
        trees(o);
        o.index.arroy_vectors = Some(ArroyVectors::Full)
    })
    .unwrap();
    let dot = build(dir.path(), "dot", &source, |o| o.metric = Metric::Dot).unwrap();
    assert_eq!(binary.manifest().index.arroy_vectors, Some(ArroyVectors::Binary));
    assert_eq!(full.manifest().index.arroy_vectors, Some(ArroyVectors::Full));
    assert_eq!(dot.manifest().index.arroy_vectors, Some(ArroyVectors::Full), "arroy cannot binarize dot products");
    // 4000 x 32 float32 is 512 KB of vectors that only the full build stores twice.
    assert!(binary.disk_bytes() + 300_000 < full.disk_bytes(), "{} vs {}", binary.disk_bytes(), full.disk_bytes());
    for c in [&binary, &full] {
        let v = c.vector(c.item_of(1234).unwrap().unwrap()).to_vec();
        let mut r = SearchRequest::new(v, 5);
        r.strategy = Some(Strategy::Index);
        // 32 bits tie: more than the default shortlist of this cluster shares the item's code,
        // so it is asked for a wider one (real embeddings have 384 bits and more).
        r.quality = Some(1000);
        assert_eq!(search(c, &r).unwrap()[0].id, 1234, "{}", c.name());
        assert!(mean_recall(c, Strategy::Index, 0) >= 0.6, "{}", c.name());
    }
    let old: IndexParams = serde_json::from_str(r#"{"backend": "arroy", "nTrees": 4}"#).unwrap();
    assert_eq!(old.arroy_vectors_stored(Metric::Cosine), ArroyVectors::Full, "built before the field");
}

/// A RaBitQ or 8-bit scalar shortlist re-ranks only what its estimates cannot rule out, and
/// finds what re-ranking the whole shortlist finds (the scalar codes' bound holds for every
/// item, so exactly that): with lists (residuals to several centroids), probing a few of them
/// or all, for each metric.
#[test]
fn filtered_shortlists_find_what_the_whole_shortlist_finds() {
    use quiver_engine::types::Shortlist;
    let dir = tempfile::tempdir().unwrap();
    let source = write_npy(dir.path(), "base.npy", 4000, 1);
    let queries = Clustered::new(DIMS, 5).generate(50, 99);
    let mean_recall = |c: &Searcher, probes: usize| -> f64 {
        let mut total = 0.0;
        for q in queries.chunks(DIMS) {
            let mut r = SearchRequest::new(q.to_vec(), 10);
            r.strategy = Some(Strategy::Exact);
            let truth = ids(&search(c, &r).unwrap());
            (r.strategy, r.quality, r.probes) = (Some(Strategy::SignScan), Some(100), Some(probes));
            total += recall(&ids(&search(c, &r).unwrap()), &truth);
        }
        total / 50.0
    };
    for (i, metric) in [Metric::Cosine, Metric::Euclidean, Metric::Dot].into_iter().enumerate() {
        let with = |shortlist| {
            move |o: &mut BuildOptions| {
                o.metric = metric;
                o.index.lists = Some(16);
                o.index.shortlist = Some(shortlist);
                o.target_recall = None;
            }
        };
        let hamming = build(dir.path(), &format!("hamming-{i}"), &source, with(Shortlist::Hamming)).unwrap();
        let rabitq = build(dir.path(), &format!("rabitq-{i}"), &source, with(Shortlist::Rabitq)).unwrap();
        assert_eq!(rabitq.manifest().index.shortlist, Some(Shortlist::Rabitq));
        assert!(rabitq.signscan().memory_bytes() > hamming.signscan().memory_bytes(), "{metric:?}: no RaBitQ codes");
        let scalar = build(dir.path(), &format!("scalar8-{i}"), &source, with(Shortlist::Scalar8)).unwrap();
        assert_eq!(scalar.manifest().index.shortlist, Some(Shortlist::Scalar8));
        let codes = scalar.signscan().memory_bytes() - hamming.signscan().memory_bytes();
        assert!(codes >= 4000 * DIMS, "{metric:?}: {codes} bytes of scalar codes");
        for probes in [3, 0] {
            let (h, r) = (mean_recall(&hamming, probes), mean_recall(&rabitq, probes));
            assert!(h > 0.8, "{metric:?} probes {probes}: hamming {h}");
            assert!(r >= h - 0.01, "{metric:?} probes {probes}: rabitq {r} against hamming {h}");
            // Its bound holds for every item: what it rules out is never among the k nearest
            // of the shortlist, so it answers what re-ranking the whole shortlist answers.
            for q in queries.chunks(DIMS) {
                let mut r = SearchRequest::new(q.to_vec(), 10);
                (r.strategy, r.quality, r.probes) = (Some(Strategy::SignScan), Some(100), Some(probes));
                let (whole, filtered) = (search(&hamming, &r).unwrap(), search(&scalar, &r).unwrap());
                assert_eq!(ids(&filtered), ids(&whole), "{metric:?} probes {probes}");
            }
        }
    }
    let old: IndexParams = serde_json::from_str(r#"{"backend": "arroy"}"#).unwrap();
    assert_eq!(old.shortlist_stored(), Shortlist::Hamming, "built before the field");
}
