//! Writing a new collection: records into a staging directory, then sealed and moved into
//! place ([`crate::build`] runs the whole pipeline, with the index build and the calibration
//! between these steps).
//!
//! Everything happens in a staging directory under `<root>/.staging/`. Records are validated
//! and written in large batched write transactions; the sealed manifest is written last. Only
//! then is the directory renamed to `<root>/<name>`, so a crash or a bad record never leaves a
//! collection that opens as if it were whole, and existing collections are never touched.

use super::lmdb::{self, Databases, MANIFEST_KEY};
use super::manifest::{BuildTimings, FORMAT_VERSION, Manifest, SourceInfo};
use super::validate::{check_label, prepare_vector};
use super::{Collection, DEFAULT_PARTITION};
use crate::durable::sync_dir;
use crate::error::{Error, Result};
use crate::import::{Record, Records, input_error};
use crate::limits::{MAX_DIMENSIONS, MAX_PARTITIONS};
use crate::types::Metric;
use crate::types::{Backend, IndexParams, SearchDefaults};
use heed::{Env, WithoutTls};
use indicatif::{ProgressBar, ProgressStyle};
use roaring::RoaringBitmap;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

const STAGING: &str = ".staging";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Duplicates {
    /// A second record with an id already imported is an error.
    #[default]
    Reject,
    /// The later record replaces the earlier one.
    LastWins,
}

#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub name: String,
    /// Required dimension; `None` takes it from the first record.
    pub dimensions: Option<usize>,
    pub metric: Metric,
    pub index: IndexParams,
    /// The default search setting; calibrated after the build when `target_recall` is set.
    pub search: SearchDefaults,
    /// Recall@10 the default setting must reach (see [`crate::search::calibrate`]).
    pub target_recall: Option<f64>,
    pub duplicates: Duplicates,
    /// Rows written per LMDB write transaction.
    pub batch_rows: usize,
    pub seed: u64,
    /// Draw a progress bar on stderr (hidden when stderr is not a terminal).
    pub progress: bool,
    /// Where the build reports its phase and rows as it goes (for Progress calls, metrics).
    pub observer: Option<Arc<BuildProgress>>,
    /// The memory arroy's build may use for the vectors it splits on (arroy's
    /// `available_memory`); beyond it arroy works through the vectors in parts instead of
    /// paging against the rest of the machine. Default: half the memory available at start
    /// (in a container, of its cgroup's limit when that is lower).
    pub index_memory: Option<usize>,
}

/// Half the memory this process may use: of `MemAvailable` in /proc/meminfo, or of the
/// cgroup v2 limit (`/sys/fs/cgroup/memory.max`) when lower: a pod's /proc/meminfo shows
/// the node's memory, not its limit.
pub fn half_available_memory() -> Option<usize> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let limit = std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok();
    half_of(&meminfo, limit.as_deref())
}

fn half_of(meminfo: &str, cgroup_max: Option<&str>) -> Option<usize> {
    let available = meminfo.lines().find_map(|l| l.strip_prefix("MemAvailable:"))?;
    let available: usize = available.trim().trim_end_matches("kB").trim().parse::<usize>().ok()? * 1024;
    // "max" (no limit) does not parse, and leaves MemAvailable.
    let limit = cgroup_max.and_then(|m| m.trim().parse::<usize>().ok()).unwrap_or(usize::MAX);
    Some(available.min(limit) / 2)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildPhase {
    Importing,
    Building,
    Calibrating,
}

/// A running build's phase and rows imported so far, readable from other threads.
#[derive(Debug, Default)]
pub struct BuildProgress {
    rows: AtomicU64,
    phase: Mutex<Option<BuildPhase>>,
}

impl BuildProgress {
    pub fn rows(&self) -> u64 {
        self.rows.load(Ordering::Relaxed)
    }

    pub fn phase(&self) -> Option<BuildPhase> {
        *self.phase.lock().expect("progress lock")
    }

    fn enter(&self, phase: BuildPhase) {
        *self.phase.lock().expect("progress lock") = Some(phase);
    }
}

impl BuildOptions {
    /// Tells the observer, if any, that the build entered `phase`.
    pub fn enter(&self, phase: BuildPhase) {
        if let Some(o) = &self.observer {
            o.enter(phase)
        }
    }

    pub fn new(name: impl Into<String>, metric: Metric) -> Self {
        BuildOptions {
            name: name.into(),
            dimensions: None,
            metric,
            index: IndexParams::default(),
            search: SearchDefaults::default(),
            target_recall: Some(0.95),
            duplicates: Duplicates::Reject,
            batch_rows: 100_000,
            seed: 42,
            progress: false,
            observer: None,
            index_memory: half_available_memory(),
        }
    }
}

/// Checks a collection name: it becomes a directory name and a Kubernetes label value.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(crate::error::RequestError::new(
            "name",
            format!("{name:?}"),
            "must be 1-63 lowercase letters, digits, '-' or '.', starting with a letter or digit",
        )
        .into())
    }
}

/// Runs `build` in a fresh staging directory for collection `name` under `root`, holding its
/// lock, and moves the result into place at `<root>/<name>` when it succeeds; a failure
/// leaves nothing behind. Returns the sealed manifest `build` wrote.
pub fn in_staging(root: &Path, name: &str, build: impl FnOnce(&Path) -> Result<Manifest>) -> Result<Manifest> {
    check_name(name)?;
    let target = root.join(name);
    if target.exists() {
        return Err(Error::Sealed { name: name.to_string(), operation: "import".into() });
    }
    clean_stale_staging(root);
    let staging = root.join(STAGING).join(format!(
        "{}-{}-{}",
        name,
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos()
    ));
    // Held for the whole build: a staging directory whose lock nobody holds is abandoned. (A
    // pid would not do: a restarted container's writer is often pid 1 again.)
    let lock = hold_lock(&staging)?;
    let result = build(&staging).and_then(|manifest| {
        crate::fault::point("import::before_rename");
        // Still under the lock: another import's clean-up must not take the staging directory
        // for abandoned while it is being moved into place.
        std::fs::rename(&staging, &target)
            .map_err(|e| Error::io(format!("moving {} into place at {}", staging.display(), target.display()), e))?;
        sync_dir(root)?;
        Ok(manifest)
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    drop(lock);
    let _ = std::fs::remove_file(lock_path(&staging));
    result
}

/// A staged collection: its records written, its manifest not yet sealed.
pub struct Staged {
    env: Env<WithoutTls>,
    dbs: Databases,
    path: std::path::PathBuf,
    manifest: Manifest,
}

impl Staged {
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The staged collection opened for reading (to build its index and calibrate it); drop it
    /// before [`Staged::seal`].
    pub fn open(&self) -> Result<Collection> {
        Collection::from_env(self.env.clone(), self.dbs, &self.path)
    }

    /// Runs `write` in one write transaction of the staged environment and commits it.
    pub fn write(&self, write: impl FnOnce(&mut heed::RwTxn) -> Result<()>) -> Result<()> {
        let mut wtxn = self.env.write_txn()?;
        write(&mut wtxn)?;
        wtxn.commit()?;
        Ok(())
    }

    /// Writes `manifest` as sealed, syncs and closes the environment. Every [`Collection`]
    /// opened with [`Staged::open`] must be dropped first.
    pub fn seal(self, mut manifest: Manifest) -> Result<Manifest> {
        manifest.created_at =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
        manifest.sealed = true;
        crate::fault::point("import::before_seal");
        let mut wtxn = self.env.write_txn()?;
        self.dbs.manifest.put(&mut wtxn, MANIFEST_KEY, &manifest)?;
        wtxn.commit()?;
        self.env.force_sync()?;
        self.env.prepare_for_closing().wait();
        tracing::info!(collection = %manifest.name, build_s = manifest.timings.build_s, "sealed");
        Ok(manifest)
    }
}

/// Validates and writes `records` into a new environment at `staging`, with an unsealed
/// manifest.
pub fn import(staging: &Path, options: &BuildOptions, records: Records) -> Result<Staged> {
    let (env, dbs) = lmdb::create(staging)?;
    let import_start = Instant::now();
    let mut import = Import::new(&env, dbs, options, &records.source_name);
    let bar = progress_bar(options.progress, records.expected_rows);
    options.enter(BuildPhase::Importing);
    for record in records.iter {
        import.add(record?)?;
        bar.inc(1);
        if let Some(o) = &options.observer {
            o.rows.fetch_add(1, Ordering::Relaxed);
        }
    }
    bar.finish_and_clear();
    let count = import.finish()?;
    let import_s = import_start.elapsed().as_secs_f64();
    tracing::info!(collection = %options.name, count, import_s, "import finished");

    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        name: options.name.clone(),
        dimensions: import.dims.unwrap_or(0),
        metric: options.metric,
        partitions: import.partitions.iter().map(|(name, _)| name.clone()).collect(),
        count,
        chunk_rows: import.chunk_rows as u32,
        // What arroy will hold, resolved now: the manifest says what was built, and the
        // index build reads it from there.
        index: IndexParams {
            n_trees: (options.index.backend == Backend::Arroy).then(|| options.index.arroy_trees_built()),
            arroy_vectors: (options.index.backend == Backend::Arroy)
                .then(|| options.index.arroy_vectors_built(options.metric)),
            shortlist: Some(options.index.shortlist_built()),
            ..options.index.clone()
        },
        search: options.search,
        source: SourceInfo {
            uri: records.source_name.clone(),
            fingerprint: records.fingerprint.hex(),
            rows_read: import.rows_read,
            row_groups: records.row_groups.clone(),
            files: records.files.lock().expect("files lock").clone(),
        },
        created_at: 0,
        timings: BuildTimings { import_s, ..Default::default() },
        calibration: None,
        sealed: false,
    };
    let mut wtxn = env.write_txn()?;
    dbs.manifest.put(&mut wtxn, MANIFEST_KEY, &manifest)?;
    wtxn.commit()?;
    drop(import);

    Ok(Staged { env, dbs, path: staging.to_path_buf(), manifest })
}

fn progress_bar(enabled: bool, expected: Option<u64>) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = match expected {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new_spinner(),
    };
    let template = if expected.is_some() {
        "importing {bar:40} {pos}/{len} vectors {per_sec} eta {eta}"
    } else {
        "importing {pos} vectors {per_sec}"
    };
    bar.set_style(ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()));
    bar
}

/// `<staging>.lock`, beside the directory. (Not `with_extension`: a collection name may hold
/// dots, and `products.v2-<pid>-<nanos>` would become `products.lock`, shared with v3.)
fn lock_path(staging: &Path) -> std::path::PathBuf {
    let mut name = staging.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    staging.with_file_name(name)
}

fn hold_lock(staging: &Path) -> Result<std::fs::File> {
    let path = lock_path(staging);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    }
    let file = std::fs::File::create(&path).map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    file.lock().map_err(|e| Error::io(format!("locking {}", path.display()), e))?;
    Ok(file)
}

/// Removes staging directories left by imports that no longer run (a crash, a killed pod):
/// those whose lock file is missing or not held by any process.
pub fn clean_stale_staging(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root.join(STAGING)) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        let lock = lock_path(&path);
        let abandoned = match std::fs::File::open(&lock) {
            Ok(file) => file.try_lock().is_ok(),
            Err(_) => true,
        };
        if abandoned {
            tracing::warn!(path = %path.display(), "removing an unfinished import");
            let _ = std::fs::remove_dir_all(&path);
            let _ = std::fs::remove_file(&lock);
        }
    }
}

/// The import state: the chunk being filled, what is pending commit, and the id map.
struct Import<'a> {
    env: &'a Env<WithoutTls>,
    dbs: Databases,
    options: &'a BuildOptions,
    source: &'a str,
    dims: Option<usize>,
    chunk_rows: usize,
    /// Rows of the chunk being filled, and their external ids.
    open_vectors: Vec<f32>,
    open_ids: Vec<u64>,
    /// Full chunks not yet committed, by chunk number.
    full: Vec<(u32, Vec<f32>, Vec<u64>)>,
    next_chunk: u32,
    id_map: HashMap<u64, u32>,
    new_ids: Vec<(u64, u32)>,
    item_partition: Vec<u16>,
    partitions: Vec<(String, RoaringBitmap)>,
    tags: BTreeMap<String, RoaringBitmap>,
    count: u32,
    rows_read: u64,
    since_commit: usize,
}

impl<'a> Import<'a> {
    fn new(env: &'a Env<WithoutTls>, dbs: Databases, options: &'a BuildOptions, source: &'a str) -> Self {
        Import {
            env,
            dbs,
            options,
            source,
            dims: None,
            chunk_rows: 0,
            open_vectors: Vec::new(),
            open_ids: Vec::new(),
            full: Vec::new(),
            next_chunk: 0,
            id_map: HashMap::new(),
            new_ids: Vec::new(),
            item_partition: Vec::new(),
            partitions: Vec::new(),
            tags: BTreeMap::new(),
            count: 0,
            rows_read: 0,
            since_commit: 0,
        }
    }

    fn bad(&self, record: &Record, (field, value, reason): (String, String, String)) -> Error {
        input_error(self.source, record.at, &field, value, reason).into()
    }

    fn add(&mut self, mut record: Record) -> Result<()> {
        self.rows_read += 1;
        let dims = match (self.dims, self.options.dimensions) {
            (Some(d), _) => d,
            (None, Some(d)) => d,
            (None, None) => record.vector.len(),
        };
        if dims == 0 || dims > MAX_DIMENSIONS {
            let problem =
                ("vector".into(), format!("{dims} values"), format!("dimensions must be 1..={MAX_DIMENSIONS}"));
            return Err(self.bad(&record, problem));
        }
        if self.dims.is_none() {
            self.dims = Some(dims);
            // About 1 MiB of vectors per chunk, a power of two rows (so item -> chunk is a shift).
            self.chunk_rows = ((1usize << 20) / (dims * 4)).next_power_of_two().clamp(64, 1 << 16);
        }
        prepare_vector(&mut record.vector, dims, self.options.metric).map_err(|p| self.bad(&record, p))?;
        for tag in &record.tags {
            check_label("tags", tag).map_err(|p| self.bad(&record, p))?;
        }
        let partition = self.partition_index(&record)?;

        let item = match self.id_map.get(&record.id).copied() {
            Some(existing) if self.options.duplicates == Duplicates::Reject => {
                let problem = (
                    "id".into(),
                    record.id.to_string(),
                    format!(
                        "duplicate id (first seen as item {existing}); pass --on-duplicate last-wins to keep the later record"
                    ),
                );
                return Err(self.bad(&record, problem));
            }
            Some(existing) => {
                self.replace(existing, &record.vector)?;
                let old = self.item_partition[existing as usize];
                self.partitions[old as usize].1.remove(existing);
                self.tags.values_mut().for_each(|b| {
                    b.remove(existing);
                });
                existing
            }
            None => {
                let item = self.count;
                self.count = self.count.checked_add(1).ok_or_else(|| {
                    self.bad(&record, ("id".into(), record.id.to_string(), "more than 2^32 vectors".into()))
                })?;
                self.id_map.insert(record.id, item);
                self.new_ids.push((record.id, item));
                self.item_partition.push(partition);
                self.open_vectors.extend_from_slice(&record.vector);
                self.open_ids.push(record.id);
                if self.open_ids.len() == self.chunk_rows {
                    self.close_chunk();
                }
                item
            }
        };
        self.item_partition[item as usize] = partition;
        self.partitions[partition as usize].1.insert(item);
        for tag in record.tags {
            self.tags.entry(tag).or_default().insert(item);
        }
        self.since_commit += 1;
        if self.since_commit >= self.options.batch_rows {
            self.commit()?;
        }
        Ok(())
    }

    /// The index of the record's partition, created (and its name checked) on first sight.
    fn partition_index(&mut self, record: &Record) -> Result<u16> {
        let name = record.partition.as_deref().unwrap_or(DEFAULT_PARTITION);
        if let Some(i) = self.partitions.iter().position(|(p, _)| p == name) {
            return Ok(i as u16);
        }
        check_label("partition", name).map_err(|p| self.bad(record, p))?;
        if self.partitions.len() >= MAX_PARTITIONS {
            let reason = format!("more than {MAX_PARTITIONS} partitions");
            return Err(self.bad(record, ("partition".into(), format!("{name:?}"), reason)));
        }
        self.partitions.push((name.to_string(), RoaringBitmap::new()));
        Ok((self.partitions.len() - 1) as u16)
    }

    fn close_chunk(&mut self) {
        let vectors = std::mem::take(&mut self.open_vectors);
        let ids = std::mem::take(&mut self.open_ids);
        self.full.push((self.next_chunk, vectors, ids));
        self.next_chunk += 1;
    }

    /// Overwrites the vector of an item imported earlier (last-wins duplicates).
    fn replace(&mut self, item: u32, vector: &[f32]) -> Result<()> {
        let dims = vector.len();
        let chunk = item / self.chunk_rows as u32;
        let row = (item as usize % self.chunk_rows) * dims;
        if chunk == self.next_chunk {
            self.open_vectors[row..row + dims].copy_from_slice(vector);
            return Ok(());
        }
        if let Some((_, vectors, _)) = self.full.iter_mut().find(|(c, _, _)| *c == chunk) {
            vectors[row..row + dims].copy_from_slice(vector);
            return Ok(());
        }
        let mut wtxn = self.env.write_txn()?;
        let mut stored: Vec<f32> = match self.dbs.vectors.get(&wtxn, &chunk)? {
            Some(bytes) => bytemuck::pod_collect_to_vec(bytes),
            None => unreachable!("chunk {chunk} was committed"),
        };
        stored[row..row + dims].copy_from_slice(vector);
        self.dbs.vectors.put(&mut wtxn, &chunk, bytemuck::cast_slice(&stored))?;
        wtxn.commit()?;
        Ok(())
    }

    /// Writes full chunks and new id mappings in one transaction.
    fn commit(&mut self) -> Result<()> {
        let mut wtxn = self.env.write_txn()?;
        for (chunk, vectors, ids) in self.full.drain(..) {
            self.dbs.vectors.put(&mut wtxn, &chunk, bytemuck::cast_slice(&vectors))?;
            self.dbs.item_ids.put(&mut wtxn, &chunk, bytemuck::cast_slice(&ids))?;
        }
        for (external, item) in self.new_ids.drain(..) {
            self.dbs.ids.put(&mut wtxn, &external, &item)?;
        }
        wtxn.commit()?;
        crate::fault::point("import::batch_committed");
        self.since_commit = 0;
        Ok(())
    }

    /// Flushes the last partial chunk, partitions and tags. Returns the vector count.
    fn finish(&mut self) -> Result<u64> {
        if self.count == 0 {
            return Err(input_error(
                self.source,
                "end of input",
                "(records)",
                0,
                "empty import: the source holds no vectors",
            )
            .into());
        }
        if !self.open_ids.is_empty() {
            self.close_chunk();
        }
        self.commit()?;
        let mut wtxn = self.env.write_txn()?;
        for (name, members) in &self.partitions {
            self.dbs.partitions.put(&mut wtxn, name, members)?;
        }
        for (name, members) in &self.tags {
            if !members.is_empty() {
                self.dbs.tags.put(&mut wtxn, name, members)?;
            }
        }
        wtxn.commit()?;
        Ok(self.count as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arroy_gets_half_the_memory_of_the_machine_or_of_its_cgroup() {
        let meminfo = "MemTotal:       24000000 kB\nMemAvailable:   16000000 kB\n";
        assert_eq!(half_of(meminfo, None), Some(8_192_000_000));
        assert_eq!(half_of(meminfo, Some("max\n")), Some(8_192_000_000), "no limit");
        assert_eq!(half_of(meminfo, Some("4294967296\n")), Some(2 << 30), "a pod's 4 GiB limit");
        assert_eq!(half_of("MemTotal: 1 kB\n", None), None);
    }

    #[test]
    fn dotted_names_get_locks_of_their_own() {
        let dir = tempfile::tempdir().unwrap();
        let staging = dir.path().join(STAGING);
        let (v2, v3) = (staging.join("products.v2-1-1"), staging.join("products.v3-1-2"));
        assert_ne!(lock_path(&v2), lock_path(&v3));
        std::fs::create_dir_all(&v2).unwrap();
        std::fs::create_dir_all(&v3).unwrap();
        // v2's import runs (it holds its lock); v3's was abandoned (its lock file is gone).
        let _running = hold_lock(&v2).unwrap();
        clean_stale_staging(dir.path());
        assert!(v2.exists(), "a running import's staging directory stays");
        assert!(!v3.exists(), "an abandoned one is removed");
    }
}
