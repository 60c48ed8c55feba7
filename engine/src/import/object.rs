//! Sources in object storage: `s3://bucket/key`, `gs://bucket/key`, `az://container/key` (also
//! `abfs://` / `abfss://`), through the `object_store` crate with each cloud's standard
//! credential chain read from the environment (for S3: `AWS_ACCESS_KEY_ID`, web identity /
//! IRSA, EKS Pod Identity; `AWS_ENDPOINT_URL` and `AWS_ALLOW_HTTP=true` for an on-premises S3
//! such as MinIO or SeaweedFS).
//!
//! The machine's own identity, from its metadata service (an EC2 instance profile, an Azure
//! managed identity, the GCE/GKE metadata server), is the end of each chain and is refused
//! unless [`Credentials::Ambient`] allows it: in a cluster it is the node's, and every author
//! of a collection would get the node's access to every bucket.
//!
//! An object is read in ranged requests growing from [`FIRST_RANGE_BYTES`] to [`RANGE_BYTES`],
//! up to [`PREFETCH`] in flight once at full size, so
//! memory stays bounded and a large file is read in parallel; each request is retried by
//! `object_store` with backoff, and carries the ETag seen when the object was opened
//! (`If-Match`), so an object replaced while it is read fails instead of mixing two versions.
//! A Parquet file is read only where its footer points ([`ObjectFile`] is a Parquet
//! `ChunkReader`), so only the projected columns leave the store.

use crate::error::{Error, Result, redact};
use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::{ClientConfigKey, GetOptions, GetRange, ObjectMeta, ObjectStore, ObjectStoreExt};
use std::collections::VecDeque;
use std::io::{self, Read};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Bytes asked for in one ranged GET, at most.
pub const RANGE_BYTES: u64 = 8 << 20;
/// The first range a reader asks for: Parquet opens a reader at every page only to read its
/// header, so a reader starts small and grows (doubling) while it is read in order.
pub const FIRST_RANGE_BYTES: u64 = 64 << 10;
/// Ranged GETs in flight while an object is read in order.
pub const PREFETCH: usize = 4;
/// How long one request (connect, headers, its body of at most [`RANGE_BYTES`]) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether `uri` names an object store.
pub fn is_object_uri(uri: &str) -> bool {
    let lower = uri.to_ascii_lowercase();
    ["s3://", "s3a://", "gs://", "az://", "abfs://", "abfss://"].iter().any(|s| lower.starts_with(s))
}

/// The runtime the object-store client runs on: its own, so the synchronous readers of an
/// import can wait on it from any thread (a blocking task of a role's runtime included).
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("quiver-object-store")
            .enable_all()
            .build()
            .expect("starting the object-store runtime")
    })
}

/// Runs `f` on the object-store runtime and waits for it.
fn wait<T: Send + 'static>(f: impl Future<Output = T> + Send + 'static) -> T {
    futures::executor::block_on(runtime().spawn(f)).expect("an object-store task panicked")
}

/// A request to the store that failed, named by what it was doing (an upload is not a fetch).
fn failed(uri: &str, what: &str, e: object_store::Error) -> Error {
    Error::Remote { target: redact(uri), reason: format!("{what}: {e}") }
}

/// A bucket (or container) and a key or prefix in it.
pub struct ObjectLocation {
    pub store: Arc<dyn ObjectStore>,
    pub path: ObjectPath,
    /// `scheme://bucket`, to name the objects found under a prefix.
    pub base: String,
}

/// Which credentials a store may be opened with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Credentials {
    /// Those the environment names: keys, a SAS or token, a pod identity (web identity token,
    /// container credentials, federated token), or none for a public bucket (`*_SKIP_SIGNATURE`).
    #[default]
    Named,
    /// Also the machine's identity from its metadata service (`--ambient-credentials`).
    Ambient,
}

impl Credentials {
    /// What `--ambient-credentials` (given or not) allows.
    pub fn allowing_ambient(ambient: bool) -> Credentials {
        if ambient { Credentials::Ambient } else { Credentials::Named }
    }
}

/// Refuses a store whose builder would fall back to the metadata service, unless allowed.
fn check_named(uri: &str, credentials: Credentials, named: bool, how: &str) -> Result<()> {
    if named || credentials == Credentials::Ambient {
        return Ok(());
    }
    Err(Error::Http {
        url: redact(uri),
        reason: format!(
            "no credentials for the object store: give them ({how}), set *_SKIP_SIGNATURE=true for a \
             public bucket, or allow the machine's own identity from its metadata service with \
             --ambient-credentials (CRD source.ambientCredentials)"
        ),
    })
}

/// Refuses a configured endpoint on a link-local or metadata address unless the machine's own
/// identity is allowed anyway (then such an address gives nothing more).
fn check_endpoint(uri: &str, credentials: Credentials, endpoint: Option<String>) -> Result<()> {
    let Some(endpoint) = endpoint.filter(|_| credentials == Credentials::Named) else { return Ok(()) };
    super::source::check_endpoint(&endpoint).map_err(|reason| Error::Http {
        url: redact(uri),
        reason: format!("the object store's endpoint {}: {reason}", redact(&endpoint)),
    })
}

/// Where the metadata service is looked for when the machine's identity is not allowed: a port
/// nothing listens on, so a credential chain that gets that far fails instead of asking it.
const CLOSED_METADATA_ENDPOINT: &str = "http://127.0.0.1:1";

/// Whether S3 is given credentials of its own: the steps of object_store's chain
/// (aws/builder.rs `build`) before the instance profile, with their conditions.
fn s3_named(b: &object_store::aws::AmazonS3Builder) -> bool {
    use object_store::aws::AmazonS3ConfigKey as K;
    let has = |k: K| b.get_config_value(&k).is_some_and(|v| !v.is_empty());
    // A key id without its secret (or the reverse) is refused by the builder, not passed on.
    has(K::AccessKeyId)
        || has(K::SecretAccessKey)
        || (has(K::WebIdentityTokenFile) && has(K::RoleArn))
        || has(K::ContainerCredentialsRelativeUri)
        || (has(K::ContainerCredentialsFullUri) && has(K::ContainerAuthorizationTokenFile))
        || b.get_config_value(&K::SkipSignature).as_deref() == Some("true")
}

/// Whether Azure is given credentials of its own: the steps of object_store's chain
/// (azure/builder.rs `build`) before the managed identity, with their conditions (a client
/// secret or a federated token counts only with its client id and tenant, or the chain goes on
/// to the managed identity).
fn azure_named(b: &object_store::azure::MicrosoftAzureBuilder) -> bool {
    use object_store::azure::AzureConfigKey as K;
    let has = |k: K| b.get_config_value(&k).is_some_and(|v| !v.is_empty());
    let is = |k: K| b.get_config_value(&k).as_deref() == Some("true");
    let application = has(K::ClientId) && has(K::AuthorityId);
    has(K::AccessKey)
        || has(K::SasKey)
        || has(K::Token)
        || (application && has(K::ClientSecret))
        || (application && has(K::FederatedTokenFile))
        || is(K::UseAzureCli)
        || is(K::UseEmulator)
        || is(K::SkipSignature)
}

/// The endpoint a GCS service account's JSON names (`gcs_base_url`, which object_store takes
/// from the key given inline or in a file), so it is checked as S3's and Azure's endpoints are.
fn gcs_base_url(b: &object_store::gcp::GoogleCloudStorageBuilder) -> Option<String> {
    use object_store::gcp::GoogleConfigKey as K;
    let json = b.get_config_value(&K::ServiceAccountKey).or_else(|| {
        let path = b.get_config_value(&K::ServiceAccount)?;
        std::fs::read_to_string(path).ok()
    })?;
    let key: serde_json::Value = serde_json::from_str(&json).ok()?;
    key["gcs_base_url"].as_str().map(String::from)
}

/// Opens the store `uri` lives in, with credentials from the environment.
pub fn locate(uri: &str, credentials: Credentials) -> Result<ObjectLocation> {
    // rustls needs one process-wide crypto provider; tonic's TLS uses ring too.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let url = uri.trim();
    let (scheme, rest) = url.split_once("://").expect("an object URI");
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(Error::Http { url: redact(uri), reason: "no bucket in the address".into() });
    }
    // Set key by key: `with_client_options` would replace what the environment set (such as
    // AWS_ALLOW_HTTP).
    let timeouts = [
        (ClientConfigKey::Timeout, format!("{}s", REQUEST_TIMEOUT.as_secs())),
        (ClientConfigKey::ConnectTimeout, format!("{}s", CONNECT_TIMEOUT.as_secs())),
    ];
    let built: object_store::Result<Arc<dyn ObjectStore>> = match scheme.to_ascii_lowercase().as_str() {
        "s3" | "s3a" => {
            use object_store::aws::AmazonS3ConfigKey as K;
            let mut b = object_store::aws::AmazonS3Builder::from_env().with_url(url);
            for (key, value) in &timeouts {
                b = b.with_config(K::Client(*key), value);
            }
            let how = "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, IRSA's AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE, or EKS Pod Identity";
            check_named(uri, credentials, s3_named(&b), how)?;
            check_endpoint(uri, credentials, b.get_config_value(&K::Endpoint))?;
            if credentials == Credentials::Named {
                // Fail closed should the chain reach the instance profile after all.
                b = b.with_config(K::MetadataEndpoint, CLOSED_METADATA_ENDPOINT);
            }
            b.build().map(|s| Arc::new(s) as _)
        }
        "gs" => {
            use object_store::gcp::GoogleConfigKey as K;
            let mut b = object_store::gcp::GoogleCloudStorageBuilder::from_env().with_url(url);
            for (key, value) in &timeouts {
                b = b.with_config(K::Client(*key), value);
            }
            // On GKE, Workload Identity is served by the metadata server: it needs Ambient too.
            let has = |k: K| b.get_config_value(&k).is_some_and(|v| !v.is_empty());
            let named = has(K::ServiceAccount)
                || has(K::ServiceAccountKey)
                || has(K::ApplicationCredentials)
                || b.get_config_value(&K::SkipSignature).as_deref() == Some("true");
            let how = "GOOGLE_SERVICE_ACCOUNT_KEY, GOOGLE_SERVICE_ACCOUNT or GOOGLE_APPLICATION_CREDENTIALS; GKE Workload Identity is the metadata server";
            check_named(uri, credentials, named, how)?;
            check_endpoint(uri, credentials, gcs_base_url(&b))?;
            b.build().map(|s| Arc::new(s) as _)
        }
        _ => {
            use object_store::azure::AzureConfigKey as K;
            let mut b = object_store::azure::MicrosoftAzureBuilder::from_env().with_url(url);
            for (key, value) in &timeouts {
                b = b.with_config(K::Client(*key), value);
            }
            let how = "AZURE_STORAGE_ACCOUNT_KEY, a SAS, AZURE_CLIENT_ID with AZURE_TENANT_ID and AZURE_CLIENT_SECRET, or workload identity (AZURE_CLIENT_ID, AZURE_TENANT_ID, AZURE_FEDERATED_TOKEN_FILE)";
            check_named(uri, credentials, azure_named(&b), how)?;
            check_endpoint(uri, credentials, b.get_config_value(&K::Endpoint))?;
            if credentials == Credentials::Named {
                // Fail closed should the chain reach the managed identity after all.
                b = b.with_config(K::MsiEndpoint, CLOSED_METADATA_ENDPOINT);
            }
            b.build().map(|s| Arc::new(s) as _)
        }
    };
    let store = built.map_err(|e| failed(uri, "configuring the object store", e))?;
    let path = ObjectPath::parse(key)
        .map_err(|e| Error::Http { url: redact(uri), reason: format!("not an object key: {e}") })?;
    Ok(ObjectLocation { store, path, base: format!("{scheme}://{bucket}") })
}

/// Every object under `prefix` of `location`'s store, in name order.
pub fn list(uri: &str, location: &ObjectLocation, prefix: &ObjectPath) -> Result<Vec<ObjectMeta>> {
    use futures::TryStreamExt;
    let (store, prefix) = (location.store.clone(), prefix.clone());
    let mut found: Vec<ObjectMeta> =
        wait(async move { store.list(Some(&prefix)).try_collect().await }).map_err(|e| failed(uri, "listing", e))?;
    found.sort_by(|a, b| a.location.as_ref().cmp(b.location.as_ref()));
    Ok(found)
}

/// One object, opened for reading: its size and ETag as they were when it was opened.
#[derive(Clone)]
pub struct ObjectFile {
    uri: String,
    store: Arc<dyn ObjectStore>,
    meta: ObjectMeta,
}

impl ObjectFile {
    pub fn open(uri: &str, credentials: Credentials) -> Result<ObjectFile> {
        let location = locate(uri, credentials)?;
        let (store, path) = (location.store.clone(), location.path.clone());
        let meta = wait(async move { store.head(&path).await }).map_err(|e| failed(uri, "opening", e))?;
        Ok(ObjectFile { uri: redact(uri), store: location.store, meta })
    }

    /// [`ObjectFile::open`], but an object that is not there is `None`, not an error.
    pub fn open_if_present(uri: &str, credentials: Credentials) -> Result<Option<ObjectFile>> {
        let location = locate(uri, credentials)?;
        let (store, path) = (location.store.clone(), location.path.clone());
        match wait(async move { store.head(&path).await }) {
            Ok(meta) => Ok(Some(ObjectFile { uri: redact(uri), store: location.store, meta })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(failed(uri, "opening", e)),
        }
    }

    pub fn from_meta(uri: String, store: Arc<dyn ObjectStore>, meta: ObjectMeta) -> ObjectFile {
        ObjectFile { uri, store, meta }
    }

    pub fn size(&self) -> u64 {
        self.meta.size
    }

    /// The version of the object this file reads (None where the store gives no ETags).
    pub fn e_tag(&self) -> Option<&str> {
        self.meta.e_tag.as_deref()
    }

    /// What identifies this version of the object: its location, size and ETag.
    pub fn identity(&self) -> String {
        format!("{} size={} etag={}", self.meta.location, self.meta.size, self.meta.e_tag.as_deref().unwrap_or("-"))
    }

    /// Starts a ranged GET of `range`, pinned to the ETag seen at open when it is a strong one:
    /// `If-Match` compares strongly (RFC 9110 section 13.1.1), so a weak ETag (`W/"..."`, as
    /// some gateways send) would fail every read with 412. Unpinned, a replaced object is still
    /// caught: by the size of each answer and by the sha256 of the whole.
    fn fetch(&self, range: std::ops::Range<u64>) -> tokio::task::JoinHandle<object_store::Result<Bytes>> {
        let (store, path) = (self.store.clone(), self.meta.location.clone());
        let options = GetOptions {
            range: Some(GetRange::Bounded(range)),
            if_match: self.meta.e_tag.clone().filter(|tag| !tag.starts_with("W/")),
            ..Default::default()
        };
        runtime().spawn(async move { store.get_opts(&path, options).await?.bytes().await })
    }

    fn get(&self, range: std::ops::Range<u64>) -> io::Result<Bytes> {
        let got = futures::executor::block_on(self.fetch(range.clone())).map_err(io::Error::other)?;
        self.checked(range, got)
    }

    /// The answer to a GET of `range`, which must be exactly that many bytes.
    fn checked(&self, range: std::ops::Range<u64>, got: object_store::Result<Bytes>) -> io::Result<Bytes> {
        let bytes = got.map_err(|e| io::Error::other(format!("{}: reading bytes {range:?}: {e}", self.uri)))?;
        if bytes.len() as u64 != range.end - range.start {
            let reason = format!("asked for bytes {range:?}, got {} (the object changed?)", bytes.len());
            return Err(io::Error::other(format!("{}: {reason}", self.uri)));
        }
        Ok(bytes)
    }

    /// A reader of the object from byte `start` to its end.
    pub fn reader(&self, start: u64) -> ObjectReader {
        ObjectReader {
            file: self.clone(),
            next: start,
            window: FIRST_RANGE_BYTES,
            pending: VecDeque::new(),
            current: Bytes::new(),
        }
    }
}

/// A small object read whole (a snapshot's description); None when there is none. One larger
/// than `max_bytes` is [`Error::Exhausted`], not read: a damaged or hostile object cannot make
/// the reader hold gigabytes.
pub fn read_whole(uri: &str, credentials: Credentials, max_bytes: u64) -> Result<Option<Bytes>> {
    let location = locate(uri, credentials)?;
    let (store, path) = (location.store, location.path);
    let got = wait(async move {
        let got = store.get(&path).await?;
        match got.meta.size > max_bytes {
            true => Ok(Err(got.meta.size)),
            false => got.bytes().await.map(Ok),
        }
    });
    match got {
        Ok(Ok(bytes)) => Ok(Some(bytes)),
        Ok(Err(size)) => Err(Error::Exhausted {
            what: redact(uri),
            reason: format!("{size} bytes, more than the {max_bytes} this object may have"),
        }),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(failed(uri, "reading", e)),
    }
}

/// Copies the object `from` to `to` in the same bucket, on the server (no bytes through here).
pub fn copy(from: &str, to: &str, credentials: Credentials) -> Result<()> {
    let location = locate(from, credentials)?;
    let target = locate(to, credentials)?.path;
    let (store, path) = (location.store, location.path);
    wait(async move { store.copy(&path, &target).await }).map_err(|e| failed(from, "copying", e))
}

/// Writes `bytes` as the object `uri` in one PUT (replacing what is there): a small object,
/// such as a snapshot's description, becomes visible whole or not at all.
pub fn write_whole(uri: &str, credentials: Credentials, bytes: Vec<u8>) -> Result<()> {
    let location = locate(uri, credentials)?;
    let (store, path) = (location.store, location.path);
    wait(async move { store.put(&path, bytes.into()).await }).map(|_| ()).map_err(|e| failed(uri, "writing", e))
}

/// Bytes of each part of a multipart upload (S3 wants at least 5 MiB but for the last): the
/// AWS CLI's 8 MiB, so a restore checks, and a damaged part costs, 8 MiB at a time.
pub const PART_BYTES: usize = 8 << 20;
/// Parts of one upload in flight.
const PARTS_IN_FLIGHT: usize = 4;

/// Parts one multipart upload may have (S3, GCS).
const MAX_PARTS: u64 = 10_000;

/// What an upload wrote: the sha256 of each part (of `part_bytes` but the last), and the new
/// object's ETag.
pub struct Uploaded {
    pub part_bytes: u64,
    pub part_sha256: Vec<String>,
    pub e_tag: Option<String>,
}

/// Uploads the file at `path` as the object `uri` in parts of [`PART_BYTES`], [`PARTS_IN_FLIGHT`]
/// at a time (memory: their bytes); the object appears only when every part is in, and a failed
/// upload is aborted (its parts discarded).
pub fn upload_file(uri: &str, credentials: Credentials, path: &std::path::Path) -> Result<Uploaded> {
    use sha2::Digest;
    let location = locate(uri, credentials)?;
    let (store, key) = (location.store, location.path);
    let mut upload =
        wait(async move { store.put_multipart(&key).await }).map_err(|e| failed(uri, "starting the upload", e))?;
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    // S3 and GCS take at most 10,000 parts: larger files get larger parts (whole MiB).
    let size = file.metadata().map_err(|e| Error::io(format!("reading {}", path.display()), e))?.len();
    let part_bytes = PART_BYTES.max((size.div_ceil(MAX_PARTS) as usize).next_multiple_of(1 << 20));
    let mut part_sha256 = Vec::new();
    let mut in_flight = Vec::new();
    let result = loop {
        let mut part = vec![0u8; part_bytes];
        let n = match read_full(&mut file, &mut part) {
            Ok(n) => n,
            Err(e) => break Err(Error::io(format!("reading {}", path.display()), e)),
        };
        if n > 0 || part_sha256.is_empty() {
            part.truncate(n);
            part_sha256.push(super::source::hex(&sha2::Sha256::digest(&part)));
            in_flight.push(upload.put_part(part.into()));
        }
        if in_flight.len() == PARTS_IN_FLIGHT || n < part_bytes {
            let parts = std::mem::take(&mut in_flight);
            if let Err(e) = wait(async move { futures::future::try_join_all(parts).await }) {
                break Err(failed(uri, "uploading a part", e));
            }
        }
        if n < part_bytes {
            break Ok(());
        }
    };
    match result {
        Ok(()) => {
            let done = wait(async move {
                let done = upload.complete().await;
                if done.is_err() {
                    let _ = upload.abort().await;
                }
                done
            })
            .map_err(|e| failed(uri, "completing the upload", e))?;
            Ok(Uploaded { part_bytes: part_bytes as u64, part_sha256, e_tag: done.e_tag })
        }
        Err(e) => {
            let _ = wait(async move { upload.abort().await });
            Err(e)
        }
    }
}

/// Fills `buf` from `r` unless it ends first; the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Reads an object in order, [`PREFETCH`] ranges ahead.
pub struct ObjectReader {
    file: ObjectFile,
    /// Start of the next range to ask for.
    next: u64,
    /// Size of the next range to ask for.
    window: u64,
    pending: VecDeque<(std::ops::Range<u64>, tokio::task::JoinHandle<object_store::Result<Bytes>>)>,
    current: Bytes,
}

impl Read for ObjectReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            // One range at a time while the window grows, PREFETCH once it is full.
            let depth = if self.window < RANGE_BYTES { 1 } else { PREFETCH };
            while self.pending.len() < depth && self.next < self.file.size() {
                let range = self.next..(self.next + self.window).min(self.file.size());
                self.next = range.end;
                self.window = (self.window * 2).min(RANGE_BYTES);
                self.pending.push_back((range.clone(), self.file.fetch(range)));
            }
            let Some((range, handle)) = self.pending.pop_front() else { return Ok(0) };
            let got = futures::executor::block_on(handle).map_err(io::Error::other)?;
            self.current = match got {
                // One more try of this range before giving up (object_store retried already).
                Err(_) => self.file.get(range)?,
                ok => self.file.checked(range, ok)?,
            };
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}

impl Drop for ObjectReader {
    fn drop(&mut self) {
        for (_, handle) in &self.pending {
            handle.abort();
        }
    }
}

impl parquet::file::reader::Length for ObjectFile {
    fn len(&self) -> u64 {
        self.size()
    }
}

impl parquet::file::reader::ChunkReader for ObjectFile {
    type T = ObjectReader;

    fn get_read(&self, start: u64) -> parquet::errors::Result<ObjectReader> {
        Ok(self.reader(start))
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        if length == 0 {
            // object_store refuses an empty range; there is nothing to fetch.
            return Ok(Bytes::new());
        }
        self.get(start..start + length as u64).map_err(|e| parquet::errors::ParquetError::External(Box::new(e)))
    }
}

#[cfg(test)]
mod tests {
    use quiver_api::environment;
    use std::str::FromStr;

    /// Each variable the operator passes from a credentials Secret is one `object_store`'s
    /// `from_env` reads (it parses the lower-cased names as config keys), so none is dropped.
    #[test]
    fn the_credential_variables_are_those_object_store_reads() {
        for name in environment::AWS {
            assert!(object_store::aws::AmazonS3ConfigKey::from_str(&name.to_ascii_lowercase()).is_ok(), "{name}");
        }
        for name in environment::GOOGLE {
            assert!(object_store::gcp::GoogleConfigKey::from_str(&name.to_ascii_lowercase()).is_ok(), "{name}");
        }
        for name in environment::AZURE {
            assert!(object_store::azure::AzureConfigKey::from_str(&name.to_ascii_lowercase()).is_ok(), "{name}");
        }
    }

    /// A client secret or a federated token counts as credentials only with both the client
    /// id and the tenant: with either missing, object_store's chain goes on to the managed
    /// identity of the node (azure/builder.rs `resolve_credential_auto`).
    #[test]
    fn azure_credentials_count_only_when_the_chain_would_use_them() {
        use object_store::azure::{AzureConfigKey as K, MicrosoftAzureBuilder};
        let with = |keys: &[K]| keys.iter().fold(MicrosoftAzureBuilder::new(), |b, k| b.with_config(*k, "x"));
        for partial in [
            &[K::ClientSecret][..],
            &[K::ClientSecret, K::ClientId],
            &[K::ClientSecret, K::AuthorityId],
            &[K::FederatedTokenFile],
            &[K::FederatedTokenFile, K::ClientId],
            &[K::FederatedTokenFile, K::AuthorityId],
            &[K::ClientId, K::AuthorityId],
            &[],
        ] {
            assert!(!super::azure_named(&with(partial)), "{partial:?}");
        }
        for complete in [
            &[K::ClientSecret, K::ClientId, K::AuthorityId][..],
            &[K::FederatedTokenFile, K::ClientId, K::AuthorityId],
            &[K::AccessKey],
            &[K::SasKey],
            &[K::Token],
        ] {
            assert!(super::azure_named(&with(complete)), "{complete:?}");
        }
    }

    #[test]
    fn s3_web_identity_counts_only_with_its_role() {
        use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey as K};
        let with = |keys: &[K]| keys.iter().fold(AmazonS3Builder::new(), |b, k| b.with_config(*k, "x"));
        assert!(!super::s3_named(&with(&[K::WebIdentityTokenFile])));
        assert!(!super::s3_named(&with(&[K::ContainerCredentialsFullUri])));
        assert!(super::s3_named(&with(&[K::WebIdentityTokenFile, K::RoleArn])));
        assert!(super::s3_named(&with(&[K::AccessKeyId, K::SecretAccessKey])));
    }
}
