//! Snapshots on disk: compacted copy + sha256, a download that resumes from its partial file,
//! a corrupted transfer discarded, and installation as an openable collection.

use quiver_engine::collection::builder::{BuildOptions, import_and_build};
use quiver_engine::datagen::Clustered;
use quiver_engine::distance::Metric;
use quiver_engine::import::{self, ReadOptions, npy};
use quiver_engine::snapshot::download::Partial;
use quiver_engine::snapshot::{Store, hash_file};
use quiver_engine::{Collection, Error};

fn sealed(dir: &std::path::Path) -> Collection {
    let path = dir.join("base.npy");
    npy::write_f32(&path, 800, 8, &Clustered::new(8, 5).generate(800, 1)).unwrap();
    let records = import::read(&path.display().to_string(), &ReadOptions::default()).unwrap();
    import_and_build(dir, &BuildOptions::new("v1", Metric::Cosine), records).unwrap();
    Collection::open(&dir.join("v1")).unwrap()
}

#[test]
fn write_resume_verify_install() {
    let writer = tempfile::tempdir().unwrap();
    let collection = sealed(writer.path());
    let store = Store::new(writer.path());
    let info = store.write(&collection).unwrap();
    assert_eq!(store.info("v1").unwrap().as_ref(), Some(&info));
    assert_eq!(hash_file(&store.file("v1")).unwrap(), (info.size, info.sha256.clone()));
    assert!(info.size < std::fs::metadata(writer.path().join("v1/data.mdb")).unwrap().len(), "compacted");
    let bytes = std::fs::read(store.file("v1")).unwrap();

    let replica = tempfile::tempdir().unwrap();
    let local = Store::new(replica.path());
    let half = bytes.len() / 2;
    let mut partial = Partial::open(&local, &info).unwrap();
    partial.append(0, &bytes[..half]).unwrap();
    drop(partial); // the replica dies here
    let mut partial = Partial::open(&local, &info).unwrap();
    assert_eq!(partial.offset(), half as u64, "resumes from the bytes it holds");
    let err = partial.append(0, &bytes[..10]).unwrap_err();
    assert!(err.to_string().contains("expected byte"), "{err}");
    partial.append(half as u64, &bytes[half..]).unwrap();
    assert!(partial.is_complete());
    let finished = partial.finish().unwrap();
    assert_eq!(finished, info);
    let installed = local.install(replica.path(), &finished).unwrap();
    assert_eq!(installed.len(), 800);
    assert_eq!(installed.vector(3), collection.vector(3));
    // Installing must not change the file peers fetch from this replica.
    assert_eq!(hash_file(&local.file("v1")).unwrap().1, info.sha256);
}

#[test]
fn a_flipped_byte_is_refused_and_discarded() {
    let writer = tempfile::tempdir().unwrap();
    let collection = sealed(writer.path());
    let info = Store::new(writer.path()).write(&collection).unwrap();
    let mut bytes = std::fs::read(Store::new(writer.path()).file("v1")).unwrap();
    let third = bytes.len() / 3;
    bytes[third] ^= 0x01;

    let replica = tempfile::tempdir().unwrap();
    let local = Store::new(replica.path());
    let mut partial = Partial::open(&local, &info).unwrap();
    partial.append(0, &bytes).unwrap();
    let err = partial.finish().unwrap_err();
    assert!(matches!(err, Error::Snapshot { .. }), "{err}");
    assert!(err.to_string().contains("checksum mismatch"), "{err}");
    assert!(local.info("v1").unwrap().is_none(), "never published");
    assert!(!local.file("v1").exists());
    // The next attempt starts from zero.
    assert_eq!(Partial::open(&local, &info).unwrap().offset(), 0);
}
