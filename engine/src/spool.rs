//! The writer's ingest spool: rows an ETL pushed and the writer acknowledged, on disk until
//! Seal imports them.
//!
//! Layout: `<root>/.spool/<collection>/`, one file per Write stream. A stream writes
//! `<n>.partial`; at its clean end the file is fsynced, renamed to `<seq>-<rows>.rows` (`seq` =
//! commit order) and the directory fsynced, and only then is the stream acknowledged. So an
//! acknowledged stream survives `kill -9`, and a stream that fails midway (or whose process
//! dies) leaves only a `.partial`, deleted at once or at the next start: an ETL that retries
//! the stream adds no duplicates. Seal closes the spool (a stream that commits later is
//! refused) and imports the committed files in commit order as one source.
//!
//! File format (little-endian, about the raw size of the vectors): magic `QVSPOOL1`, `u32`
//! dimensions, then per record `u64` id, `u16` length + UTF-8 partition (empty: none), `u16`
//! tag count, each tag `u16` length + UTF-8, then `dimensions` x `f32`.

use crate::collection::validate::{check_label, prepare_vector};
use crate::durable::sync_dir;
use crate::error::{Error, InputError, RequestError, Result};
use crate::import::{Location, Record, Records, source};
use crate::types::Metric;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

const MAGIC: &[u8; 8] = b"QVSPOOL1";
/// The magic and the `u32` dimension that open every spool file.
const HEADER_LEN: usize = MAGIC.len() + 4;

fn encode_header(dims: usize) -> Vec<u8> {
    [&MAGIC[..], &(dims as u32).to_le_bytes()].concat()
}

/// The dimension a spool file's header announces; `None` when it is not a spool file.
fn header_dims(header: &[u8]) -> Option<usize> {
    let (magic, dims) = header.split_at(MAGIC.len());
    (magic == MAGIC).then(|| u32::from_le_bytes(dims.try_into().expect("4 bytes")) as usize)
}

/// How much one stream and the whole spool may hold on disk.
#[derive(Debug, Clone, Copy)]
pub struct SpoolLimits {
    pub max_stream_bytes: u64,
    pub max_spool_bytes: u64,
}

impl Default for SpoolLimits {
    fn default() -> Self {
        SpoolLimits { max_stream_bytes: 8 << 30, max_spool_bytes: 64 << 30 }
    }
}

/// What a record must satisfy to be spooled: the same rules as an import.
#[derive(Debug, Clone, Copy)]
pub struct RecordRules {
    /// Required dimension; `None` takes it from the first record spooled.
    pub dimensions: Option<usize>,
    pub metric: Metric,
}

#[derive(Debug, Clone)]
struct Committed {
    /// Its sequence number: the stream's name in errors.
    seq: u64,
    path: PathBuf,
    rows: u64,
    bytes: u64,
}

#[derive(Debug, Default)]
struct State {
    committed: Vec<Committed>,
    /// Dimension of the committed rows.
    dimensions: Option<usize>,
    /// Seal has begun: no stream commits any more, and no second Seal begins.
    closed: bool,
    /// The next commit's sequence number: one more than any committed file's, so a gap (a
    /// stream removed by hand) never makes a commit replace an acknowledged file.
    next_seq: u64,
    /// Bytes written by streams not committed yet: counted against the spool's limit, so
    /// concurrent streams cannot together exceed it.
    reserved: u64,
}

/// The spool of one collection.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    rules: RecordRules,
    limits: SpoolLimits,
    state: Mutex<State>,
    next_partial: AtomicU64,
}

impl Spool {
    /// Opens the spool of `collection` under `root`, keeping every committed stream and
    /// deleting what streams that were never acknowledged left.
    pub fn open(root: &Path, collection: &str, rules: RecordRules, limits: SpoolLimits) -> Result<Arc<Spool>> {
        crate::collection::builder::check_name(collection)?;
        let dir = root.join(".spool").join(collection);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let mut committed = Vec::new();
        let entries = std::fs::read_dir(&dir).map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
        for entry in entries {
            let path = entry.map_err(|e| Error::io(format!("reading {}", dir.display()), e))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
            if name.ends_with(".partial") {
                tracing::warn!(path = %path.display(), "discarding a stream that was never acknowledged");
                let _ = std::fs::remove_file(&path);
            } else if let Some((seq, rows)) = parse_committed(&name) {
                let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                committed.push((seq, Committed { seq, path, rows, bytes }));
            }
        }
        committed.sort_by(|(a, x), (b, y)| (a, &x.path).cmp(&(b, &y.path)));
        let next_seq = committed.last().map_or(1, |(seq, _)| seq + 1);
        let committed: Vec<Committed> = committed.into_iter().map(|(_, c)| c).collect();
        let dimensions = match committed.first() {
            Some(first) => Some(read_header(&first.path)?),
            None => None,
        };
        if !committed.is_empty() {
            let rows: u64 = committed.iter().map(|c| c.rows).sum();
            tracing::info!(collection, streams = committed.len(), rows, "kept the acknowledged ingest streams");
        }
        sync_dir(&dir)?;
        let state = State { committed, dimensions, closed: false, next_seq, reserved: 0 };
        Ok(Arc::new(Spool { dir, rules, limits, state: Mutex::new(state), next_partial: AtomicU64::new(0) }))
    }

    /// Rows of the committed (acknowledged) streams.
    pub fn committed_rows(&self) -> u64 {
        self.state.lock().expect("spool lock").committed.iter().map(|c| c.rows).sum()
    }

    fn committed_bytes(state: &State) -> u64 {
        state.committed.iter().map(|c| c.bytes).sum()
    }

    /// Starts spooling one Write stream; refused once Seal has begun.
    pub fn begin(self: &Arc<Self>) -> Result<StreamWriter> {
        let state = self.state.lock().expect("spool lock");
        if state.closed {
            return Err(self.sealing());
        }
        let dimensions = self.rules.dimensions.or(state.dimensions);
        drop(state);
        let n = self.next_partial.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("{n}.partial"));
        let file = std::fs::File::create(&path).map_err(|e| self.disk(&path, e))?;
        Ok(StreamWriter {
            spool: self.clone(),
            path,
            out: Some(BufWriter::with_capacity(1 << 20, file)),
            rows: 0,
            bytes: 0,
            dimensions,
            committed: false,
        })
    }

    /// Closes the spool for Seal: streams that have not committed yet will be refused. Returns
    /// what Seal imports, or an error when nothing was acknowledged.
    pub fn close(&self) -> Result<Sealing> {
        let mut state = self.state.lock().expect("spool lock");
        if state.closed {
            return Err(Error::Sealed { name: self.name(), operation: "a second Seal while one runs".into() });
        }
        if state.committed.is_empty() {
            return Err(Error::Incomplete {
                path: self.dir.clone(),
                reason: "nothing to seal: no Write stream was acknowledged".into(),
            });
        }
        state.closed = true;
        let files = state.committed.clone();
        drop(state);
        let paths = files.iter().map(|c| c.path.clone()).collect();
        Ok(Sealing { records: records(files)?, paths })
    }

    /// Opens the spool for writes again after a Seal that failed (the acknowledged rows stay).
    pub fn reopen(&self) {
        self.state.lock().expect("spool lock").closed = false;
    }

    /// Removes the streams a Seal imported, once they are sealed into the collection (only
    /// those: nothing else can have committed while the spool was closed, but a file is never
    /// deleted unless it was imported).
    pub fn remove(&self, sealed: &[PathBuf]) {
        let mut state = self.state.lock().expect("spool lock");
        state.committed.retain(|c| !sealed.contains(&c.path));
        for path in sealed {
            let _ = std::fs::remove_file(path);
        }
        if state.committed.is_empty() {
            let _ = std::fs::remove_dir(&self.dir);
        }
    }

    /// Removes the spool of a collection that is sealed already (a writer restarted after Seal).
    pub fn discard(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    fn sealing(&self) -> Error {
        Error::Sealed { name: self.name(), operation: "ingest after Seal began".into() }
    }

    fn name(&self) -> String {
        self.dir.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string()
    }

    /// A disk failure: out of space is its own, clear error; the committed spool is untouched.
    fn disk(&self, path: &Path, e: std::io::Error) -> Error {
        if e.kind() == std::io::ErrorKind::StorageFull {
            return Error::Exhausted {
                what: "ingest spool".into(),
                reason: format!("the disk holding {} is full; nothing of this stream was kept", self.dir.display()),
            };
        }
        Error::io(format!("writing {}", path.display()), e)
    }
}

fn parse_committed(name: &str) -> Option<(u64, u64)> {
    let (seq, rows) = name.strip_suffix(".rows")?.split_once('-')?;
    Some((seq.parse().ok()?, rows.parse().ok()?))
}

fn read_header(path: &Path) -> Result<usize> {
    let mut header = [0u8; HEADER_LEN];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut header))
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    header_dims(&header)
        .ok_or_else(|| Error::Incomplete { path: path.to_path_buf(), reason: "not an ingest spool file".into() })
}

/// What a Seal imports, and the files it may remove once sealed.
pub struct Sealing {
    pub records: Records,
    pub paths: Vec<PathBuf>,
}

/// Tags one spooled record may carry (the spool stores the count as `u16`).
pub const MAX_TAGS_PER_RECORD: usize = 1024;

/// One Write stream being spooled; deleted unless committed.
pub struct StreamWriter {
    spool: Arc<Spool>,
    path: PathBuf,
    out: Option<BufWriter<std::fs::File>>,
    rows: u64,
    bytes: u64,
    dimensions: Option<usize>,
    committed: bool,
}

impl StreamWriter {
    /// Checks every record of a batch as an import would (dimension, finite values, non-zero
    /// for cosine, partition and tag names), then spools all of it; a bad batch adds nothing.
    pub fn append(&mut self, batch: &[Record]) -> Result<()> {
        let mut dims = self.dimensions;
        let mut size = 0u64;
        for (i, record) in batch.iter().enumerate() {
            let refuse = |(field, value, reason): (String, String, String)| -> Error {
                RequestError::new(format!("records[{i}].{field}"), value, format!("{reason} (record id {})", record.id))
                    .into()
            };
            let expected = *dims.get_or_insert(record.vector.len());
            if expected == 0 || expected > crate::limits::MAX_DIMENSIONS {
                let reason = format!("dimensions must be 1..={}", crate::limits::MAX_DIMENSIONS);
                return Err(refuse(("vector".into(), format!("{expected} values"), reason)));
            }
            let mut copy = record.vector.clone();
            prepare_vector(&mut copy, expected, self.spool.rules.metric).map_err(refuse)?;
            if let Some(partition) = &record.partition {
                check_label("partition", partition).map_err(refuse)?;
            }
            if record.tags.len() > MAX_TAGS_PER_RECORD {
                let reason = format!("at most {MAX_TAGS_PER_RECORD} tags per record");
                return Err(refuse(("tags".into(), format!("{} tags", record.tags.len()), reason)));
            }
            for tag in &record.tags {
                check_label("tags", tag).map_err(refuse)?;
            }
            size += 8 + 2 + record.partition.as_ref().map_or(0, |p| p.len() as u64) + 2;
            size += record.tags.iter().map(|t| 2 + t.len() as u64).sum::<u64>() + 4 * expected as u64;
        }
        let limits = self.spool.limits;
        if self.bytes + size > limits.max_stream_bytes {
            return Err(Error::Exhausted {
                what: "ingest stream".into(),
                reason: format!(
                    "a stream may spool at most {} bytes; end it and start another",
                    limits.max_stream_bytes
                ),
            });
        }
        // Reserved under the lock, with every other stream's reservation, before writing.
        let header = if self.rows == 0 && !batch.is_empty() { HEADER_LEN as u64 } else { 0 };
        {
            let mut state = self.spool.state.lock().expect("spool lock");
            if Spool::committed_bytes(&state) + state.reserved + header + size > limits.max_spool_bytes {
                return Err(Error::Exhausted {
                    what: "ingest spool".into(),
                    reason: format!("the spool may hold at most {} bytes; seal what it holds", limits.max_spool_bytes),
                });
            }
            state.reserved += header + size;
        }
        if self.rows == 0 && !batch.is_empty() {
            self.write(&encode_header(dims.expect("set above")))?;
        }
        for record in batch {
            let mut row = Vec::with_capacity(64 + 4 * record.vector.len());
            row.extend_from_slice(&record.id.to_le_bytes());
            let partition = record.partition.as_deref().unwrap_or("");
            row.extend_from_slice(&(partition.len() as u16).to_le_bytes());
            row.extend_from_slice(partition.as_bytes());
            row.extend_from_slice(&(record.tags.len() as u16).to_le_bytes());
            for tag in &record.tags {
                row.extend_from_slice(&(tag.len() as u16).to_le_bytes());
                row.extend_from_slice(tag.as_bytes());
            }
            row.extend_from_slice(bytemuck::cast_slice(&record.vector));
            self.write(&row)?;
        }
        self.rows += batch.len() as u64;
        self.dimensions = dims;
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let out = self.out.as_mut().expect("open until committed");
        out.write_all(bytes).map_err(|e| self.spool.disk(&self.path, e))?;
        self.bytes += bytes.len() as u64;
        Ok(())
    }

    /// Makes the stream durable and part of the spool, unless Seal began meanwhile. Returns the
    /// rows acknowledged (0 for an empty stream, which leaves nothing).
    pub fn commit(mut self) -> Result<u64> {
        if self.rows == 0 {
            return Ok(0);
        }
        let out = self.out.take().expect("open until committed");
        let file = out.into_inner().map_err(|e| self.spool.disk(&self.path, e.into_error()))?;
        file.sync_all().map_err(|e| self.spool.disk(&self.path, e))?;
        drop(file);
        let spool = self.spool.clone();
        let mut state = spool.state.lock().expect("spool lock");
        if state.closed {
            drop(state);
            return Err(spool.sealing());
        }
        let dims = self.dimensions.expect("rows were written");
        if let Some(committed) = state.dimensions.filter(|&d| d != dims) {
            return Err(RequestError::new(
                "records[].vector",
                format!("{dims} values"),
                format!("the streams acknowledged before have {committed} dimensions"),
            )
            .into());
        }
        let seq = state.next_seq;
        let target = spool.dir.join(format!("{seq:08}-{}.rows", self.rows));
        crate::fault::point("ingest::before_commit");
        std::fs::rename(&self.path, &target).map_err(|e| spool.disk(&target, e))?;
        if let Err(e) = sync_dir(&spool.dir) {
            // Not known to be durable, so not acknowledged: take it back (dropping self then
            // removes it), so a retry of the stream cannot sit beside it.
            let _ = std::fs::rename(&target, &self.path);
            return Err(e);
        }
        self.committed = true;
        state.next_seq += 1;
        state.reserved = state.reserved.saturating_sub(self.bytes);
        state.dimensions = Some(dims);
        state.committed.push(Committed { seq, path: target, rows: self.rows, bytes: self.bytes });
        crate::fault::point("ingest::after_commit");
        Ok(self.rows)
    }
}

impl Drop for StreamWriter {
    fn drop(&mut self) {
        if !self.committed {
            self.out = None;
            let _ = std::fs::remove_file(&self.path);
            let mut state = self.spool.state.lock().expect("spool lock");
            state.reserved = state.reserved.saturating_sub(self.bytes);
        }
    }
}

/// The committed streams as one import source, in commit order; its fingerprint covers every
/// spooled byte.
fn records(files: Vec<Committed>) -> Result<Records> {
    let mut chain: Box<dyn Read + Send> = Box::new(std::io::empty());
    for c in &files {
        let file = std::fs::File::open(&c.path).map_err(|e| Error::io(format!("opening {}", c.path.display()), e))?;
        chain = Box::new(chain.chain(file));
    }
    let (reader, fingerprint) = source::hashed(chain);
    let total = files.iter().map(|c| c.rows).sum();
    let name = format!("the ingest spool ({} streams)", files.len());
    let rows = SpoolRows { reader, files, file: 0, row: 0, dims: 0, failed: false };
    Ok(Records {
        source_name: name,
        fingerprint,
        expected_rows: Some(total),
        row_groups: Vec::new(),
        files: Default::default(),
        iter: Box::new(rows),
    })
}

struct SpoolRows {
    reader: source::SourceReader,
    files: Vec<Committed>,
    /// The file being read, and the row within it (0 = its header is next).
    file: usize,
    row: u64,
    dims: usize,
    failed: bool,
}

impl SpoolRows {
    fn bad(&mut self, field: &str, reason: String) -> Error {
        self.failed = true;
        let at = if self.row == 0 { "header".to_string() } else { Location::Row(self.row - 1).to_string() };
        InputError {
            source_name: self.files[self.file].path.display().to_string(),
            at,
            field: field.into(),
            value: "(spooled bytes)".into(),
            reason,
        }
        .into()
    }

    fn bytes(&mut self, n: usize, field: &str) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; n];
        self.reader.read_exact(&mut buf).map_err(|e| self.bad(field, format!("the spool file is cut short: {e}")))?;
        Ok(buf)
    }

    fn u16(&mut self, field: &str) -> Result<usize> {
        Ok(u16::from_le_bytes(self.bytes(2, field)?.try_into().expect("2 bytes")) as usize)
    }

    fn text(&mut self, field: &str) -> Result<String> {
        let n = self.u16(field)?;
        String::from_utf8(self.bytes(n, field)?).map_err(|_| self.bad(field, "not UTF-8".into()))
    }

    fn next_record(&mut self) -> Result<Record> {
        if self.row == 0 {
            let header = self.bytes(HEADER_LEN, "magic")?;
            let Some(dims) = header_dims(&header) else {
                return Err(self.bad("magic", "not an ingest spool file".into()));
            };
            self.dims = dims;
            if self.dims == 0 || self.dims > crate::limits::MAX_DIMENSIONS {
                return Err(self.bad("dimensions", format!("{} is not a spooled dimension", self.dims)));
            }
        }
        self.row += 1;
        let id = u64::from_le_bytes(self.bytes(8, "id")?.try_into().expect("8 bytes"));
        let partition = self.text("partition")?;
        let tags = (0..self.u16("tags")?).map(|_| self.text("tags")).collect::<Result<Vec<_>>>()?;
        let vector = bytemuck::pod_collect_to_vec(&self.bytes(4 * self.dims, "vector")?);
        let at = Location::Stream { stream: self.files[self.file].seq, row: self.row - 1 };
        Ok(Record { id, vector, partition: (!partition.is_empty()).then_some(partition), tags, at })
    }
}

impl Iterator for SpoolRows {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Result<Record>> {
        while !self.failed && self.file < self.files.len() && self.row == self.files[self.file].rows {
            self.file += 1;
            self.row = 0;
        }
        if self.failed || self.file == self.files.len() {
            return None;
        }
        Some(self.next_record())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u64, vector: Vec<f32>) -> Record {
        Record { id, vector, partition: None, tags: Vec::new(), at: Location::Row(0) }
    }

    fn rules() -> RecordRules {
        RecordRules { dimensions: None, metric: Metric::Euclidean }
    }

    #[test]
    fn committed_streams_survive_a_restart_and_partial_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), "v1", rules(), SpoolLimits::default()).unwrap();
        let mut a = spool.begin().unwrap();
        let mut tagged = record(1, vec![1.0, 2.0]);
        tagged.partition = Some("eu".into());
        tagged.tags = vec!["in-stock".into(), "new".into()];
        a.append(&[tagged.clone(), record(2, vec![3.0, 4.0])]).unwrap();
        assert_eq!(a.commit().unwrap(), 2);
        let mut b = spool.begin().unwrap();
        b.append(&[record(3, vec![5.0, 6.0])]).unwrap();
        std::mem::forget(b); // the process dies mid-stream: its .partial stays behind
        drop(spool);

        let spool = Spool::open(dir.path(), "v1", rules(), SpoolLimits::default()).unwrap();
        assert_eq!(spool.committed_rows(), 2, "only the acknowledged stream is kept");
        let files: Vec<_> =
            std::fs::read_dir(dir.path().join(".spool/v1")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(files, ["00000001-2.rows"]);
        let rows: Vec<Record> = spool.close().unwrap().records.iter.collect::<Result<_>>().unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].id, &rows[0].partition, &rows[0].tags), (1, &tagged.partition, &tagged.tags));
        assert_eq!((rows[1].id, rows[1].vector.clone()), (2, vec![3.0, 4.0]));
    }

    /// A record found bad at Seal (a duplicate id across streams) is named by the stream that
    /// brought it, not by a row number every stream has.
    #[test]
    fn sealed_records_are_named_by_their_stream() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), "v1", rules(), SpoolLimits::default()).unwrap();
        for id in [7, 7] {
            let mut stream = spool.begin().unwrap();
            stream.append(&[record(id, vec![1.0, 2.0])]).unwrap();
            stream.commit().unwrap();
        }
        let rows: Vec<Record> = spool.close().unwrap().records.iter.collect::<Result<_>>().unwrap();
        let at: Vec<String> = rows.iter().map(|r| r.at.to_string()).collect();
        assert_eq!(at, ["row 0 of ingest stream 00000001", "row 0 of ingest stream 00000002"]);
    }

    #[test]
    fn a_bad_record_refuses_its_batch_and_a_closed_spool_refuses_commits() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), "v1", rules(), SpoolLimits::default()).unwrap();
        let mut a = spool.begin().unwrap();
        let err = a.append(&[record(1, vec![1.0, 2.0]), record(2, vec![f32::NAN, 0.0])]).unwrap_err().to_string();
        assert!(err.contains("field `records[1].vector[0]` = NaN") && err.contains("record id 2"), "{err}");
        let mut bad_tag = record(3, vec![1.0, 2.0]);
        bad_tag.tags = vec!["a b".into()];
        assert!(a.append(&[bad_tag]).unwrap_err().to_string().contains("records[0].tags"));
        a.append(&[record(4, vec![1.0, 2.0])]).unwrap();
        let mut late = spool.begin().unwrap();
        late.append(&[record(5, vec![1.0, 2.0])]).unwrap();
        assert_eq!(a.commit().unwrap(), 1, "only the good batch");
        let sealed = spool.close().unwrap();
        assert_eq!(sealed.records.expected_rows, Some(1));
        assert!(spool.close().is_err(), "one Seal at a time");
        let err = late.commit().unwrap_err();
        assert!(matches!(err, Error::Sealed { .. }), "{err}");
        assert!(spool.begin().is_err(), "no new stream once Seal began");
        spool.reopen();
        assert!(spool.begin().is_ok(), "writable again after a failed Seal");
    }

    #[test]
    fn sizes_are_bounded_per_stream_and_in_all() {
        let dir = tempfile::tempdir().unwrap();
        let limits = SpoolLimits { max_stream_bytes: 100, max_spool_bytes: 150 };
        let spool = Spool::open(dir.path(), "v1", rules(), limits).unwrap();
        let mut a = spool.begin().unwrap();
        let big = record(1, vec![0.5; 30]);
        assert!(a.append(&[big]).unwrap_err().to_string().contains("at most 100 bytes"));
        a.append(&[record(1, vec![0.5; 15])]).unwrap();
        a.commit().unwrap();
        let mut b = spool.begin().unwrap();
        b.append(&[record(2, vec![0.5; 15])]).unwrap_err();
        assert_eq!(spool.committed_rows(), 1);
    }

    #[test]
    fn a_gap_in_the_sequence_never_makes_a_commit_replace_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), "v1", rules(), SpoolLimits::default()).unwrap();
        for id in 0..3 {
            let mut s = spool.begin().unwrap();
            s.append(&[record(id, vec![1.0, 2.0])]).unwrap();
            s.commit().unwrap();
        }
        drop(spool);
        // A stream removed by hand: 1 and 3 stay.
        std::fs::remove_file(dir.path().join(".spool/v1/00000002-1.rows")).unwrap();
        let spool = Spool::open(dir.path(), "v1", rules(), SpoolLimits::default()).unwrap();
        let mut s = spool.begin().unwrap();
        s.append(&[record(9, vec![1.0, 2.0])]).unwrap();
        s.commit().unwrap();
        assert_eq!(spool.committed_rows(), 3, "nothing replaced");
        let ids: Vec<u64> = spool.close().unwrap().records.iter.map(|r| r.unwrap().id).collect();
        assert_eq!(ids, [0, 2, 9]);
    }

    #[test]
    fn concurrent_streams_share_the_spool_limit_and_tag_counts_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let limits = SpoolLimits { max_stream_bytes: 1000, max_spool_bytes: 150 };
        let spool = Spool::open(dir.path(), "v1", rules(), limits).unwrap();
        let (mut a, mut b) = (spool.begin().unwrap(), spool.begin().unwrap());
        a.append(&[record(1, vec![0.5; 15])]).unwrap(); // 84 bytes reserved
        let err = b.append(&[record(2, vec![0.5; 15])]).unwrap_err().to_string();
        assert!(err.contains("at most 150 bytes"), "{err}");
        drop(a); // its reservation goes with it
        b.append(&[record(2, vec![0.5; 15])]).unwrap();
        let mut tagged = record(3, vec![0.5; 15]);
        tagged.tags = (0..MAX_TAGS_PER_RECORD + 1).map(|i| format!("t{i}")).collect();
        assert!(b.append(&[tagged]).unwrap_err().to_string().contains("tags"));
    }
}
