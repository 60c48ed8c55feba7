//! Sources of several files: a pattern (`*`, `?`) or a prefix (an address ending in `/`)
//! expanded into the files it names, in name order, and read one after another as one source.
//! Names starting with `_` or `.` (Spark's `_SUCCESS`, `.crc` side files), and everything in
//! a directory so named below the listed one (`_temporary/`, `_delta_log/`), are left out.

use super::{ReadOptions, Record, RecordIter, Records, SourceFile, object, read_one, source};
use crate::error::{Error, Result, redact};

/// One file of a source of several: its address, and the object as the listing found it (its
/// size and ETag: read without another request to find them, and pinned to what was listed).
pub(super) struct Part {
    uri: String,
    object: Option<object::ObjectFile>,
}

/// The files `uri` names when it is a pattern or a prefix; None for a single file.
pub(super) fn files(uri: &str, options: &ReadOptions) -> Result<Option<Vec<Part>>> {
    // An http(s) server cannot be listed, and `?` starts a URL's query (a presigned URL).
    if uri.starts_with("http://") || uri.starts_with("https://") || !is_pattern(uri) {
        return Ok(None);
    }
    let found = if object::is_object_uri(uri) {
        objects(uri, options.credentials)?
    } else {
        local(uri, options)?.into_iter().map(|uri| Part { uri, object: None }).collect()
    };
    if found.is_empty() {
        return Err(refused(uri, "no file matches"));
    }
    Ok(Some(found))
}

/// Whether a local path or an object address names several files: a `*` or `?` after the
/// scheme, or a trailing `/`.
pub fn is_pattern(uri: &str) -> bool {
    let key_start = uri.find("://").map_or(0, |i| i + 3);
    uri[key_start..].contains(['*', '?']) || uri.ends_with('/')
}

fn refused(uri: &str, reason: &str) -> Error {
    Error::Http { url: redact(uri), reason: reason.into() }
}

/// Whether `name` (a path below the listed directory) is or lies in something hidden: Spark
/// writes `_temporary/0/part-*` while a job runs, Delta keeps `_delta_log/`.
fn hidden(name: &str) -> bool {
    name.split('/').any(|part| part.starts_with('_') || part.starts_with('.'))
}

/// Whether `name` matches `pattern`: `*` is any run of characters but `/`, `?` one character.
pub fn glob(pattern: &str, name: &str) -> bool {
    fn go(p: &[char], n: &[char]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some('*'), _) => go(&p[1..], n) || (n.first().is_some_and(|c| *c != '/') && go(p, &n[1..])),
            (Some('?'), Some(c)) if *c != '/' => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    go(&pattern.chars().collect::<Vec<_>>(), &name.chars().collect::<Vec<_>>())
}

fn objects(uri: &str, credentials: object::Credentials) -> Result<Vec<Part>> {
    let (scheme_bucket, key) = {
        let after = uri.find("://").expect("an object URI") + 3;
        let slash = uri[after..].find('/').map_or(uri.len(), |i| after + i);
        (&uri[..slash], uri.get(slash + 1..).unwrap_or(""))
    };
    // List under the directory part before the first wildcard.
    let literal = key.find(['*', '?']).map_or(key, |i| &key[..i]);
    let prefix = &literal[..literal.rfind('/').map_or(0, |i| i + 1)];
    let location = object::locate(&format!("{scheme_bucket}/{prefix}"), credentials)?;
    let listed = object::list(uri, &location, &location.path)?;
    let wildcard = key.contains(['*', '?']);
    Ok(listed
        .into_iter()
        .filter(|m| {
            let k = m.location.as_ref();
            !hidden(k.strip_prefix(prefix).unwrap_or(k)) && (!wildcard || glob(key, k))
        })
        // A console's "folder" is an empty object `dir/` (listed as `dir`). Under a prefix an
        // empty object is taken for one; one a pattern names is read (and refused if broken).
        .filter(|m| {
            let folder = m.size == 0 && !wildcard;
            if folder {
                tracing::warn!(object = %m.location, "left out an empty object (a folder marker)");
            }
            !folder
        })
        .map(|m| {
            let uri = format!("{scheme_bucket}/{}", m.location);
            let object = object::ObjectFile::from_meta(redact(&uri), location.store.clone(), m);
            Part { uri, object: Some(object) }
        })
        .collect())
}

/// A local pattern's directory and its last part: `/data/*.npy` is (`/data`, `*.npy`).
pub(super) fn split_local(path: &str) -> (&str, &str) {
    match path.rsplit_once('/') {
        Some((dir, pattern)) => (if dir.is_empty() { "/" } else { dir }, pattern),
        None => (".", path),
    }
}

fn local(uri: &str, options: &ReadOptions) -> Result<Vec<String>> {
    let path = uri.strip_prefix("file://").unwrap_or(uri);
    let (dir, pattern) = split_local(path);
    if dir.contains(['*', '?']) {
        return Err(refused(uri, "a local pattern may use * and ? in its last part only"));
    }
    let dir = source::local_path(dir, options)?;
    let entries = std::fs::read_dir(&dir).map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_file = entry.file_type().is_ok_and(|t| t.is_file() || t.is_symlink());
        if is_file && !hidden(&name) && (pattern.is_empty() || glob(pattern, &name)) {
            found.push(dir.join(&name).display().to_string());
        }
    }
    found.sort();
    Ok(found)
}

/// The files read one after another as one source: opened when the one before ends. The
/// fingerprint covers every file's name and fingerprint, in order.
pub(super) fn chain(uri: &str, files: Vec<Part>, options: ReadOptions) -> Records {
    let fingerprint = source::Fingerprint::default();
    let read = Records {
        source_name: redact(uri),
        fingerprint: fingerprint.clone(),
        expected_rows: None,
        row_groups: Vec::new(),
        files: Default::default(),
        iter: Box::new(std::iter::empty()),
    };
    let chain = Chain {
        pending: files.into_iter().rev().collect(),
        current: None,
        options,
        fingerprint,
        done: read.files.clone(),
        failed: false,
    };
    Records { iter: Box::new(chain), ..read }
}

struct Chain {
    /// Still to read, the next last.
    pending: Vec<Part>,
    /// The file being read, its fingerprint and rows so far.
    current: Option<(String, source::Fingerprint, u64, RecordIter)>,
    options: ReadOptions,
    fingerprint: source::Fingerprint,
    done: std::sync::Arc<std::sync::Mutex<Vec<SourceFile>>>,
    failed: bool,
}

impl Iterator for Chain {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Result<Record>> {
        loop {
            if self.failed {
                return None;
            }
            if let Some((_, _, rows, iter)) = &mut self.current {
                match iter.next() {
                    Some(Ok(r)) => {
                        *rows += 1;
                        return Some(Ok(r));
                    }
                    Some(Err(e)) => {
                        self.failed = true;
                        return Some(Err(e));
                    }
                    None => {
                        let (name, fingerprint, rows, _) = self.current.take().expect("a current file");
                        self.fingerprint.update(format!("{name}\n{}\n", fingerprint.hex()).as_bytes());
                        self.done.lock().expect("files lock").push(SourceFile { uri: name, rows });
                    }
                }
            }
            let next = self.pending.pop()?;
            match read_one(&next.uri, next.object, &self.options) {
                Ok(r) => self.current = Some((r.source_name, r.fingerprint, 0, r.iter)),
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{files, glob};
    use crate::import::ReadOptions;

    #[test]
    fn globs_match_within_a_segment() {
        assert!(glob("p/2026-12-01/*.parquet", "p/2026-12-01/part-0001.parquet"));
        assert!(!glob("p/*.parquet", "p/2026-12-01/part-0001.parquet"));
        assert!(glob("part-????.npy", "part-0001.npy") && !glob("part-????.npy", "part-01.npy"));
        assert!(glob("*", "a") && !glob("a", "ab"));
    }

    #[test]
    fn a_query_string_is_not_a_pattern() {
        let presigned = "https://bucket.s3.example/x.npy?X-Amz-Signature=abc&X-Amz-Expires=60";
        assert!(files(presigned, &ReadOptions::default()).unwrap().is_none());
    }
}
