//! Import, then build, then seal: the pipeline behind `quiver import`, the writer and the
//! bench. Storage writes the records ([`crate::collection::builder`]), the durable index is
//! built over them ([`crate::index`]), the default search setting is calibrated against the
//! collection's target recall ([`crate::search::calibrate`]), and only then is the collection
//! sealed and moved into place.

use crate::collection::builder::{self, BuildOptions, BuildPhase};
use crate::collection::manifest::Manifest;
use crate::error::Result;
use crate::import::Records;
use crate::search::calibrate::calibrate;
use crate::search::searcher::Searcher;
use std::path::Path;
use std::time::Instant;

/// Imports `records` into a new collection `<root>/<options.name>`, builds its index,
/// calibrates its default search setting and seals it. Returns the sealed manifest.
pub fn import_and_build(root: &Path, options: &BuildOptions, records: Records) -> Result<Manifest> {
    builder::check_name(&options.name)?;
    crate::index::check_metric(&options.index, options.metric)?;
    crate::index::check_strategy(&options.index, &options.search, options.target_recall.is_some())?;
    builder::in_staging(root, &options.name, |staging| {
        let staged = builder::import(staging, options, records)?;
        let mut manifest = staged.manifest().clone();

        options.enter(BuildPhase::Building);
        let build_start = Instant::now();
        let collection = staged.open()?;
        staged.write(|wtxn| {
            crate::index::build(wtxn, &collection, &manifest.index, options.seed, options.index_memory)
        })?;
        manifest.timings.build_s = build_start.elapsed().as_secs_f64();
        tracing::info!(collection = %options.name, build_s = manifest.timings.build_s, "index built");

        // Calibration searches the committed index through read transactions, and the
        // collection opened again sees the coarse lists the build wrote.
        drop(collection);
        let searcher = Searcher::new(staged.open()?);
        if let Some(target) = options.target_recall {
            options.enter(BuildPhase::Calibrating);
            let calibrate_start = Instant::now();
            let calibration = calibrate(&searcher, target, 10, 200, options.seed)?;
            tracing::info!(?calibration, "search setting calibrated");
            manifest.search = calibration.defaults();
            manifest.calibration = Some(calibration);
            manifest.timings.calibrate_s = calibrate_start.elapsed().as_secs_f64();
        }
        drop(searcher);
        staged.seal(manifest)
    })
}

/// A small collection `<root>/<name>` of `n` clustered vectors of `dims`, built uncalibrated
/// with the options `configure` sets: for unit tests of what a build makes.
#[cfg(test)]
pub(crate) fn build_small(
    root: &Path,
    name: &str,
    n: usize,
    dims: usize,
    configure: impl FnOnce(&mut builder::BuildOptions),
) -> Manifest {
    use crate::import::{self, ReadOptions, npy};
    let source = root.join(format!("{name}.npy"));
    npy::write_f32(&source, n, dims, &crate::datagen::Clustered::new(dims, 5).generate(n, 0)).unwrap();
    let mut options = builder::BuildOptions::new(name, crate::types::Metric::Cosine);
    options.target_recall = None;
    configure(&mut options);
    let records = import::read(&source.display().to_string(), &ReadOptions::default()).unwrap();
    import_and_build(root, &options, records).unwrap()
}

#[cfg(test)]
mod tests {
    use super::build_small;
    use crate::collection::Collection;
    use ::arroy::distances::BinaryQuantizedCosine;
    use ::arroy::{Database, Reader};

    /// Each partition gets the trees its manifest records: none unless the build asks, and with
    /// none no arroy index at all (arroy's database stays empty).
    #[test]
    fn a_build_makes_the_trees_its_manifest_records() {
        let dir = tempfile::tempdir().unwrap();
        for (name, asked, built) in [("default", None, 0), ("one", Some(1), 1), ("three", Some(3), 3)] {
            let manifest = build_small(dir.path(), name, 3000, 32, |o| o.index.n_trees = asked);
            assert_eq!(manifest.index.n_trees, Some(built), "{name}");
            assert_eq!(manifest.index.durable_index_stored(), built > 0, "{name}");
            let collection = Collection::open(&dir.path().join(name)).unwrap();
            let rtxn = collection.env().read_txn().unwrap();
            let db: Database<'static, BinaryQuantizedCosine> = collection.ann_database().remap_types();
            assert_eq!(db.len(&rtxn).unwrap() == 0, built == 0, "{name}: arroy's database");
            match Reader::open(&rtxn, 0, db) {
                Ok(reader) => assert_eq!(reader.n_trees(), built, "{name}"),
                Err(e) => assert!(built == 0 && matches!(e, ::arroy::Error::MissingMetadata(0)), "{name}: {e}"),
            }
        }
    }
}
