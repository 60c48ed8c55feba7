//! Reading vectors from files and URLs: `.npy`, `.fvecs`, JSON Lines, Parquet; from a local
//! path, an http(s) URL or an object store; one file, or every file a pattern or prefix names.
//!
//! Each reader yields [`Record`]s that know where they came from, so every later check
//! (dimension, NaN, duplicate id) can name the file, the row or line, and the field.

pub mod fvecs;
pub mod jsonl;
pub mod npy;
pub mod object;
pub mod parquet;
pub mod source;

use crate::error::{InputError, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

pub(crate) mod expand;

/// Where a record sits in its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// 0-based row of a binary matrix.
    Row(u64),
    /// 1-based line of a text file.
    Line(u64),
    /// 0-based row of one acknowledged Ingest stream of the spool (its file
    /// `<stream:08>-<rows>.rows`): a record is named by the stream that brought it.
    Stream { stream: u64, row: u64 },
    /// 0-based row of a Parquet row group, and the 0-based row group.
    RowGroup { group: u32, row: u64 },
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Row(r) => write!(f, "row {r}"),
            Location::Line(l) => write!(f, "line {l}"),
            Location::Stream { stream, row } => write!(f, "row {row} of ingest stream {stream:08}"),
            Location::RowGroup { group, row } => write!(f, "row {row} of row group {group}"),
        }
    }
}

/// One vector to import.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub id: u64,
    pub vector: Vec<f32>,
    pub partition: Option<String>,
    pub tags: Vec<String>,
    pub at: Location,
}

/// The file formats quiver imports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Npy,
    Fvecs,
    JsonLines,
    Parquet,
}

impl Format {
    /// Guesses the format from a path or URL's extension.
    pub fn from_uri(uri: &str) -> Option<Format> {
        let path = uri.split(['?', '#']).next().unwrap_or(uri).to_ascii_lowercase();
        let ext = path.rsplit_once('.').map(|(_, e)| e)?;
        ext.parse().ok()
    }
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "npy" => Ok(Format::Npy),
            "fvecs" => Ok(Format::Fvecs),
            "jsonl" | "ndjson" | "json" | "jsonlines" => Ok(Format::JsonLines),
            "parquet" | "pq" => Ok(Format::Parquet),
            other => Err(format!("unknown format {other:?}: expected npy, fvecs, jsonl or parquet")),
        }
    }
}

/// A stream of records with the source's name for error messages.
pub struct Records {
    pub source_name: String,
    pub fingerprint: source::Fingerprint,
    /// Rows announced by the header, when the format has one (for the progress bar).
    pub expected_rows: Option<u64>,
    /// Rows of each row group, for a source that has them (Parquet).
    pub row_groups: Vec<u64>,
    /// The files of a source of several (a pattern or a prefix), with their rows, each added
    /// once it has been read to its end.
    pub files: Arc<Mutex<Vec<SourceFile>>>,
    pub iter: Box<dyn Iterator<Item = Result<Record>> + Send>,
}

/// Options that apply to formats without per-record ids or partitions.
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    pub format: Option<Format>,
    /// Added to the row number to form the id of `.npy` / `.fvecs` rows.
    pub id_offset: u64,
    /// Partition given to every record that does not name one.
    pub partition: Option<String>,
    /// Directories a local source (a path or `file://`) must lie under once symlinks and `..` are
    /// resolved; a path outside every one is refused before it is opened. Empty: anywhere (library
    /// callers, tests); the CLI defaults it to the data directory and the working directory.
    pub source_roots: Vec<PathBuf>,
    /// Let URL sources reach link-local (169.254.0.0/16, fe80::/10) and cloud-metadata addresses,
    /// which are refused by default.
    pub allow_link_local: bool,
    /// Whether an object store may be read with the machine's identity (see [`object::Credentials`]).
    pub credentials: object::Credentials,
    /// The columns of a Parquet source.
    pub columns: parquet::ParquetColumns,
    /// Where a URL source that must be read at any offset (Parquet) is downloaded to first; the
    /// system's temporary directory when None. The CLI sets the data directory.
    pub scratch_dir: Option<PathBuf>,
}

/// One file of a source made of several.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceFile {
    pub uri: String,
    pub rows: u64,
}

/// Opens `uri` and streams its records. An address with a scheme quiver cannot read, a local
/// path outside `options.source_roots`, or a URL on a refused address fails before anything is
/// read. A `*` or `?` in the last part of a local path or anywhere in an object key, or an
/// address ending in `/`, names every matching file (in name order; names starting with `_` or
/// `.`, such as Spark's `_SUCCESS`, left out), read one after another as one source.
pub fn read(uri: &str, options: &ReadOptions) -> Result<Records> {
    source::check_source_uri(uri)?;
    match expand::files(uri, options)? {
        None => read_one(uri, None, options),
        Some(files) => Ok(expand::chain(uri, files, options.clone())),
    }
}

/// [`read`] of one file; `object` is `uri` already opened (from a listing), if it is an object.
fn read_one(uri: &str, object: Option<object::ObjectFile>, options: &ReadOptions) -> Result<Records> {
    let open_object = || match object.clone() {
        Some(file) => Ok(file),
        None => object::ObjectFile::open(uri, options.credentials),
    };
    let format = match options.format.or_else(|| Format::from_uri(uri)) {
        Some(f) => f,
        None => {
            return Err(input_error(
                uri,
                "source",
                "format",
                crate::error::redact(uri),
                "cannot tell the format from the name; pass --format npy|fvecs|jsonl|parquet",
            )
            .into());
        }
    };
    // The name goes into errors, logs and the manifest: never a URL's credentials.
    let name = crate::error::redact(uri);
    if format == Format::Parquet {
        let (rows, fingerprint) = if object::is_object_uri(uri) {
            // Read in ranges where the footer points: the fingerprint is the object's version.
            let file = open_object()?;
            let fingerprint = source::Fingerprint::default();
            fingerprint.update(file.identity().as_bytes());
            (parquet::ParquetRows::open(file, name.clone(), options.columns.clone())?, fingerprint)
        } else {
            let (file, fingerprint) = source::open_random_access(uri, options)?;
            (parquet::ParquetRows::open(file, name.clone(), options.columns.clone())?, fingerprint)
        };
        tracing::info!(source = %name, rows = rows.rows(), row_groups = ?rows.row_groups(), "reading Parquet");
        let (expected_rows, row_groups) = (Some(rows.rows()), rows.row_groups().to_vec());
        let iter = with_partition(Box::new(rows), options.partition.clone());
        return Ok(Records { source_name: name, fingerprint, expected_rows, row_groups, files: Arc::default(), iter });
    }
    let (reader, fingerprint) =
        if object::is_object_uri(uri) { source::open_object(open_object()?) } else { source::open_with(uri, options)? };
    let (expected_rows, iter): (Option<u64>, Box<dyn Iterator<Item = Result<Record>> + Send>) = match format {
        Format::Npy => {
            let r = npy::NpyRows::new(reader, name.clone(), options.id_offset)?;
            (Some(r.rows()), Box::new(r))
        }
        Format::Fvecs => (None, Box::new(fvecs::FvecsRows::new(reader, name.clone(), options.id_offset))),
        Format::JsonLines => (None, Box::new(jsonl::JsonLines::new(reader, name.clone()))),
        Format::Parquet => unreachable!("opened above"),
    };
    let iter = with_partition(iter, options.partition.clone());
    Ok(Records { source_name: name, fingerprint, expected_rows, row_groups: Vec::new(), files: Arc::default(), iter })
}

pub(crate) type RecordIter = Box<dyn Iterator<Item = Result<Record>> + Send>;

/// Gives `partition` to every record that names none.
fn with_partition(iter: RecordIter, partition: Option<String>) -> RecordIter {
    match partition {
        Some(p) => Box::new(iter.map(move |r| {
            r.map(|mut rec| {
                rec.partition.get_or_insert_with(|| p.clone());
                rec
            })
        })),
        None => iter,
    }
}

/// Reads every vector of `uri` (queries, bench inputs), in order.
pub fn read_vectors(uri: &str) -> Result<Vec<Vec<f32>>> {
    read(uri, &ReadOptions::default())?.iter.map(|r| r.map(|r| r.vector)).collect()
}

pub(crate) fn input_error(
    source: &str,
    at: impl ToString,
    field: &str,
    value: impl ToString,
    reason: impl Into<String>,
) -> InputError {
    InputError {
        // A source URL may carry credentials (a presigned query, userinfo): never in an error.
        source_name: crate::error::redact(source),
        at: at.to_string(),
        field: field.to_string(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_from_extension() {
        assert_eq!(Format::from_uri("/data/base.npy"), Some(Format::Npy));
        assert_eq!(Format::from_uri("https://x/y.FVECS?sig=1"), Some(Format::Fvecs));
        assert_eq!(Format::from_uri("a.jsonl"), Some(Format::JsonLines));
        assert_eq!(Format::from_uri("noext"), None);
        let err = read("/tmp/vectors.bin", &ReadOptions::default()).err().unwrap().to_string();
        assert!(err.contains("vectors.bin") && err.contains("--format"), "{err}");
    }
}
