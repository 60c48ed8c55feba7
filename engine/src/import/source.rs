//! Opening an import source: a local path or an http(s) URL, hashed as it is read.

use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use std::io::{BufReader, Read};
use std::sync::{Arc, Mutex};

/// A reader that feeds every byte it returns into a sha256, so the manifest can record the
/// fingerprint of exactly what was imported.
pub struct HashingReader<R> {
    inner: R,
    hasher: Arc<Mutex<Sha256>>,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.lock().expect("hasher lock").update(&buf[..n]);
        Ok(n)
    }
}

/// A handle on the running fingerprint of a source being read.
#[derive(Clone)]
pub struct Fingerprint(Arc<Mutex<Sha256>>);

impl Fingerprint {
    pub fn hex(&self) -> String {
        let digest = self.0.lock().expect("hasher lock").clone().finalize();
        format!("sha256:{}", hex(&digest))
    }
}

/// Lowercase hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub type SourceReader = BufReader<HashingReader<Box<dyn Read + Send>>>;

/// Opens `uri` (a path, `file://` path, or `http(s)://` URL) for streaming.
pub fn open(uri: &str) -> Result<(SourceReader, Fingerprint)> {
    let raw: Box<dyn Read + Send> = if uri.starts_with("http://") || uri.starts_with("https://") {
        let response =
            ureq::get(uri).call().map_err(|e| Error::Http { url: uri.to_string(), reason: e.to_string() })?;
        Box::new(response.into_body().into_reader())
    } else {
        let path = uri.strip_prefix("file://").unwrap_or(uri);
        let file = std::fs::File::open(path).map_err(|e| Error::io(format!("opening {path}"), e))?;
        Box::new(file)
    };
    let hasher = Arc::new(Mutex::new(Sha256::new()));
    let reader = HashingReader { inner: raw, hasher: hasher.clone() };
    Ok((BufReader::with_capacity(1 << 20, reader), Fingerprint(hasher)))
}
