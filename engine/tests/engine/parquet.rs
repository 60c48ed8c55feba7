//! Parquet sources as ETLs write them: files made by pyarrow (the Python that `.ci/run` sets up
//! in `QUIVER_PYTHON`), imported through `import::read` and through `quiver import`, and
//! malformed ones refused with the file, row group, row, column and value named and nothing
//! sealed.

use quiver_engine::build::import_and_build;
use quiver_engine::collection::builder::BuildOptions;
use quiver_engine::import::{self, ReadOptions, Record};
use quiver_engine::types::Metric;
use quiver_testkit::parquet::{pyarrow, python};
use std::path::Path;
use std::process::Command;

fn records(path: &Path, options: &ReadOptions) -> Vec<Record> {
    import::read(&path.display().to_string(), options).unwrap().iter.collect::<Result<_, _>>().unwrap()
}

fn error(path: &Path, options: &ReadOptions) -> String {
    match import::read(&path.display().to_string(), options) {
        Err(e) => e.to_string(),
        Ok(r) => r.iter.collect::<Result<Vec<_>, _>>().expect_err("a refused file").to_string(),
    }
}

fn columns(partition: Option<&str>, tags: Option<&str>) -> ReadOptions {
    let mut o = ReadOptions::default();
    o.columns.partition = partition.map(str::to_string);
    o.columns.tags = tags.map(str::to_string);
    o
}

/// Ten rows in row groups of four: vector i is [i, i + 0.5, -i, 1], id 1000 + i.
const GOOD: &str = r#"
n = 10
vectors = [[float(i), i + 0.5, -float(i), 1.0] for i in range(n)]
ids = [1000 + i for i in range(n)]
cats = ["shoes" if i % 2 else "hats" for i in range(n)]
tags = [["sale"] if i % 3 == 0 else [] for i in range(n)]
fixed = pa.FixedSizeListArray.from_arrays(pa.array([x for v in vectors for x in v], pa.float32()), 4)
t = pa.table({"item_id": pa.array(ids, pa.int64()), "embedding": fixed,
              "category": cats, "labels": pa.array(tags, pa.list_(pa.string()))})
pq.write_table(t, "fixed.parquet", row_group_size=4)
# pandas-style: a list<double> column, unsigned ids, zstd.
t2 = pa.table({"id": pa.array(ids, pa.uint32()), "vector": pa.array(vectors, pa.list_(pa.float64()))})
pq.write_table(t2, "list64.parquet", row_group_size=4, compression="zstd")
"#;

#[test]
fn pyarrow_files_import_with_every_column_and_their_row_groups() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    pyarrow(&python, dir.path(), GOOD);
    let mut options = columns(Some("category"), Some("labels"));
    options.columns.id = "item_id".into();
    options.columns.vector = "embedding".into();
    let fixed = records(&dir.path().join("fixed.parquet"), &options);
    assert_eq!(fixed.len(), 10);
    let r = &fixed[7];
    assert_eq!((r.id, r.vector.as_slice(), r.partition.as_deref()), (1007, &[7.0, 7.5, -7.0, 1.0][..], Some("shoes")));
    assert_eq!(fixed[6].tags, ["sale"]);
    assert!(r.tags.is_empty());
    // Row 7 is row 3 of the second row group of four.
    assert_eq!(r.at.to_string(), "row 3 of row group 1");

    let list64 = records(&dir.path().join("list64.parquet"), &ReadOptions::default());
    assert_eq!(list64.iter().map(|r| r.id).collect::<Vec<_>>(), (1000..1010).collect::<Vec<_>>());
    assert_eq!(list64[9].vector, [9.0, 9.5, -9.0, 1.0]);
    assert_eq!(list64[9].at.to_string(), "row 1 of row group 2");
    // The fingerprint covers the whole file.
    let read = import::read(&dir.path().join("list64.parquet").display().to_string(), &ReadOptions::default()).unwrap();
    assert_eq!(read.expected_rows, Some(10));
    let _ = read.iter.count();
    let bytes = std::fs::read(dir.path().join("list64.parquet")).unwrap();
    use sha2::Digest;
    let digest: String = sha2::Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(read.fingerprint.hex(), format!("sha256:{digest}"));
}

#[test]
fn quiver_import_reads_parquet_with_its_column_flags() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    pyarrow(&python, dir.path(), GOOD);
    let (data, source) = (dir.path().display().to_string(), dir.path().join("fixed.parquet").display().to_string());
    let quiver = env!("CARGO_BIN_EXE_quiver");
    let import = Command::new(quiver)
        .args(["import", "--data-dir", &data, "--name", "v1", "--source", &source, "--distance", "euclidean"])
        .args(["--id-column", "item_id", "--vector-column", "embedding", "--partition-column", "category"])
        .args(["--tags-column", "labels", "--quality", "10"])
        .output()
        .unwrap();
    assert!(import.status.success(), "{}", String::from_utf8_lossy(&import.stderr));
    let search = Command::new(quiver)
        .args(["search", "--data-dir", &data, "--collection", "v1", "--vector", "[7, 7.5, -7, 1]", "-k", "1"])
        .args(["--partitions", "hats", "--tags", "sale", "--strategy", "exact"])
        .output()
        .unwrap();
    // The import report (the manifest) gives the rows of each row group of four.
    let manifest: serde_json::Value = serde_json::from_slice(&import.stdout).unwrap();
    assert_eq!(manifest["source"]["row_groups"], serde_json::json!([4, 4, 2]), "{manifest}");
    assert_eq!(manifest["source"]["rows_read"], 10);
    let out = String::from_utf8_lossy(&search.stdout);
    assert!(
        search.status.success() && out.contains("1006") && !out.contains("1007"),
        "{out} {}",
        String::from_utf8_lossy(&search.stderr)
    );
}

#[test]
fn malformed_parquet_is_named_and_nothing_is_sealed() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    pyarrow(
        &python,
        dir.path(),
        r#"
ints = pa.table({"id": pa.array([1, 2], pa.int64()), "vector": pa.array([[1, 2], [3, 4]], pa.list_(pa.int32()))})
pq.write_table(ints, "ints.parquet")
vs = [[1.0, 2.0]] * 6
vs[5] = None
nulls = pa.table({"id": pa.array(range(6), pa.int64()), "vector": pa.array(vs, pa.list_(pa.float32()))})
pq.write_table(nulls, "null-vector.parquet", row_group_size=4)
inner = pa.table({"id": pa.array([0, 1], pa.int64()), "vector": pa.array([[1.0, 2.0], [3.0, None]], pa.list_(pa.float32()))})
pq.write_table(inner, "null-element.parquet")
short = pa.table({"id": pa.array(range(5), pa.int64()), "vector": pa.array([[1.0, 2.0]] * 4 + [[1.0]], pa.list_(pa.float32()))})
pq.write_table(short, "short.parquet", row_group_size=2)
neg = pa.table({"id": pa.array([3, -4], pa.int32()), "vector": pa.array([[1.0, 2.0]] * 2, pa.list_(pa.float32()))})
pq.write_table(neg, "negative-id.parquet")
nan = pa.table({"id": pa.array([0, 1], pa.int64()), "vector": pa.array([[1.0, 2.0], [float("nan"), 1.0]], pa.list_(pa.float32()))})
pq.write_table(nan, "nan.parquet")
good = pa.table({"id": pa.array(range(100), pa.int64()), "vector": pa.array([[float(i), 1.0] for i in range(100)], pa.list_(pa.float32()))})
pq.write_table(good, "good.parquet")
data = open("good.parquet", "rb").read()
open("truncated.parquet", "wb").write(data[: len(data) // 2])
"#,
    );
    let at = |f: &str| dir.path().join(f);
    let plain = ReadOptions::default();

    let e = error(&at("ints.parquet"), &plain);
    assert!(e.contains("--vector-column") && e.contains("Int32") && e.contains("ints.parquet"), "{e}");
    let e = error(&at("good.parquet"), &columns(Some("category"), None));
    assert!(e.contains("--partition-column") && e.contains("no such column") && e.contains("id, vector"), "{e}");
    let e = error(&at("null-vector.parquet"), &plain);
    assert!(e.contains("row 1 of row group 1") && e.contains("`vector`") && e.contains("null vector"), "{e}");
    let e = error(&at("null-element.parquet"), &plain);
    assert!(e.contains("row 1 of row group 0") && e.contains("null at [1]"), "{e}");
    let e = error(&at("negative-id.parquet"), &plain);
    assert!(e.contains("row 1 of row group 0") && e.contains("-4") && e.contains("negative id"), "{e}");
    let e = error(&at("truncated.parquet"), &plain);
    assert!(e.contains("truncated.parquet") && e.contains("not a readable Parquet file"), "{e}");

    // Through the build: a wrong length and a NaN are refused by the same checks as every
    // format, named by row group and row, and no collection is sealed.
    for (file, expected) in [("short.parquet", "row 0 of row group 2"), ("nan.parquet", "row 1 of row group 0")] {
        let root = tempfile::tempdir().unwrap();
        let records = import::read(&at(file).display().to_string(), &plain).unwrap();
        let e = import_and_build(root.path(), &BuildOptions::new("v1", Metric::Euclidean), records).unwrap_err();
        assert!(e.to_string().contains(expected) && e.to_string().contains(file), "{file}: {e}");
        assert!(!root.path().join("v1").exists(), "{file}: nothing sealed");
    }
}

#[test]
fn a_local_pattern_reads_every_matching_file_in_name_order() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    pyarrow(&python, dir.path(), GOOD);
    std::fs::copy(dir.path().join("list64.parquet"), dir.path().join("b-list64.parquet")).unwrap();
    std::fs::write(dir.path().join("_SUCCESS"), b"").unwrap();
    let read = import::read(&format!("{}/*list64.parquet", dir.path().display()), &ReadOptions::default()).unwrap();
    let files = read.files.clone();
    let ids: Vec<u64> = read.iter.map(|r| r.unwrap().id).collect();
    assert_eq!(ids.len(), 20, "both files, in order");
    let names: Vec<(String, u64)> = files.lock().unwrap().iter().map(|f| (f.uri.clone(), f.rows)).collect();
    let at = |f: &str| dir.path().join(f).display().to_string();
    assert_eq!(names, [(at("b-list64.parquet"), 10), (at("list64.parquet"), 10)]);
    // What a writer checks at start-up: the pattern's directory lies under the roots.
    let confined = ReadOptions { source_roots: vec![dir.path().to_path_buf()], ..Default::default() };
    import::source::check_source(&format!("{}/*.parquet", dir.path().display()), &confined).unwrap();
    let elsewhere = ReadOptions { source_roots: vec![dir.path().join("sub")], ..Default::default() };
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    assert!(import::source::check_source(&format!("{}/*.parquet", dir.path().display()), &elsewhere).is_err());
    // A directory: every file but the marker, in name order; the second has other columns and
    // is named when it is reached.
    let root = tempfile::tempdir().unwrap();
    let records = import::read(&format!("{}/", dir.path().display()), &ReadOptions::default()).unwrap();
    let e = import_and_build(root.path(), &BuildOptions::new("v1", Metric::Euclidean), records).unwrap_err();
    assert!(e.to_string().contains("fixed.parquet") && e.to_string().contains("--id-column"), "{e}");
    assert!(!root.path().join("v1").exists());
}
