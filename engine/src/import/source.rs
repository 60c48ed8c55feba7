//! Opening an import source: a local path or an http(s) URL, hashed as it is read.
//!
//! Sources are not trusted. Local paths must lie under one of the directories the process allows
//! ([`ReadOptions::source_roots`]); URLs are fetched with connect and read timeouts, follow at most
//! [`MAX_REDIRECTS`] redirects and only on the same scheme, never reach link-local or
//! cloud-metadata addresses unless [`ReadOptions::allow_link_local`] says so, and resume with an
//! HTTP `Range` request after a connection is lost mid-body, so the fingerprint covers exactly the
//! bytes consumed, once each.

use super::ReadOptions;
use crate::error::{Error, Result, redact};
use sha2::{Digest, Sha256};
use std::io::{self, BufReader, Read};
use std::net::{IpAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long establishing a connection (DNS, TCP, TLS) to a URL source may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a URL source may stay silent (response headers, or any read of the body).
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Redirects followed before giving up (each on the same scheme as the request).
pub const MAX_REDIRECTS: usize = 5;
/// Consecutive `Range` resumptions attempted after a URL source's connection fails mid-body.
pub const MAX_RESUMES: u32 = 5;
/// The wait before the first resumption; it doubles on each further consecutive one.
pub const RESUME_BACKOFF: Duration = Duration::from_millis(500);
/// Host names that answer with cloud credentials, refused like link-local addresses.
const METADATA_HOSTS: &[&str] = &["metadata.google.internal"];

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
/// [`Fingerprint::default`] starts one that is fed with [`Fingerprint::update`].
#[derive(Clone, Default)]
pub struct Fingerprint(Arc<Mutex<Sha256>>);

impl Fingerprint {
    pub fn update(&self, bytes: &[u8]) {
        self.0.lock().expect("hasher lock").update(bytes);
    }

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

/// What kind of address a source is, by its scheme.
enum Kind<'a> {
    /// A local path (given bare or as `file://`), without the prefix.
    Local(&'a str),
    Http,
    /// `s3://`, `gs://`, `az://`, `abfs(s)://`: read through [`super::object`].
    Object,
}

/// The scheme of `uri` (lowercased) when it has the `scheme://` form.
fn scheme_of(uri: &str) -> Option<String> {
    let (scheme, _) = uri.split_once("://")?;
    let mut chars = scheme.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then(|| scheme.to_ascii_lowercase())
}

fn kind(uri: &str) -> Result<Kind<'_>> {
    if uri.trim().is_empty() {
        return Err(Error::Http { url: uri.to_string(), reason: "the source address is empty".into() });
    }
    match scheme_of(uri).as_deref() {
        None => Ok(Kind::Local(uri)),
        Some("file") => Ok(Kind::Local(&uri["file://".len()..])),
        Some("http" | "https") => Ok(Kind::Http),
        Some(_) if super::object::is_object_uri(uri) => Ok(Kind::Object),
        Some(other) => Err(Error::Http {
            url: short(&redact(uri), 120),
            reason: format!(
                "the scheme {other}:// is not supported: use a local path, file://, http(s)://, s3://, gs://, \
                 az:// or abfs(s)://"
            ),
        }),
    }
}

/// Refuses at once a source address whose scheme quiver cannot read (`ftp://` ...): local
/// paths, `file://`, `http(s)://` and object stores are accepted. Nothing is opened; roles
/// call this at start-up so a wrong `--source` fails before any work.
pub fn check_source_uri(uri: &str) -> Result<()> {
    kind(uri).map(|_| ())
}

/// [`check_source_uri`], and for a local source also that it exists under `options.source_roots`
/// (nothing is opened or fetched): what a role can check at start-up before serving.
pub fn check_source(uri: &str, options: &ReadOptions) -> Result<()> {
    match kind(uri)? {
        // A pattern or a directory: the directory it lists must lie under the roots.
        Kind::Local(path) if !options.source_roots.is_empty() && super::expand::is_pattern(path) => {
            let (dir, _) = super::expand::split_local(path);
            confine(Path::new(dir), &options.source_roots).map(|_| ())
        }
        Kind::Local(path) if !options.source_roots.is_empty() => {
            confine(Path::new(path), &options.source_roots).map(|_| ())
        }
        _ => Ok(()),
    }
}

/// Opens `uri` (a path, `file://` path, or `http(s)://` URL) for streaming, with no source-root
/// confinement and the default network policy.
pub fn open(uri: &str) -> Result<(SourceReader, Fingerprint)> {
    open_with(uri, &ReadOptions::default())
}

/// Opens `uri` for streaming under `options`' source roots and network policy.
pub fn open_with(uri: &str, options: &ReadOptions) -> Result<(SourceReader, Fingerprint)> {
    let raw: Box<dyn Read + Send> = match kind(uri)? {
        Kind::Http => Box::new(HttpSource::open(uri, options.allow_link_local)?),
        Kind::Object => return Ok(open_object(super::object::ObjectFile::open(uri, options.credentials)?)),
        Kind::Local(path) => Box::new(open_local(path, options)?),
    };
    Ok(hashed(raw))
}

/// Streams an opened object from its start, hashing it.
pub fn open_object(file: super::object::ObjectFile) -> (SourceReader, Fingerprint) {
    hashed(Box::new(file.reader(0)))
}

/// Opens `uri` as a file that can be read at any offset (a Parquet footer comes last), with
/// the fingerprint of all its bytes. A local path is opened where it lies (after the source-root
/// check) and hashed in one pass; a URL is streamed, hashed as it arrives, into an unnamed
/// temporary file under `scratch` (the system's temporary directory when None), which is gone
/// when the returned file is closed. Memory stays bounded by the copy buffer either way.
pub fn open_random_access(uri: &str, options: &ReadOptions) -> Result<(std::fs::File, Fingerprint)> {
    use std::io::Seek;
    let (mut file, fingerprint) = match kind(uri)? {
        Kind::Local(path) => {
            // Hashed and parsed through one open file: what is hashed is what is read.
            let file = open_local(path, options)?;
            let clone = file.try_clone().map_err(|e| Error::io(format!("opening {}", redact(uri)), e))?;
            let (mut reader, fingerprint) = hashed(Box::new(clone));
            io::copy(&mut reader, &mut io::sink()).map_err(|e| Error::io(format!("reading {}", redact(uri)), e))?;
            (file, fingerprint)
        }
        Kind::Http | Kind::Object => {
            let (mut reader, fingerprint) = open_with(uri, options)?;
            let dir = options.scratch_dir.clone().unwrap_or_else(std::env::temp_dir);
            let mut file = tempfile::tempfile_in(&dir)
                .map_err(|e| Error::io(format!("creating a temporary file in {}", dir.display()), e))?;
            io::copy(&mut reader, &mut file).map_err(|e| Error::io(format!("downloading {}", redact(uri)), e))?;
            (file, fingerprint)
        }
    };
    file.rewind().map_err(|e| Error::io(format!("rewinding {}", redact(uri)), e))?;
    Ok((file, fingerprint))
}

/// `path` resolved under `options.source_roots` (as given when there are none).
pub(super) fn local_path(path: &str, options: &ReadOptions) -> Result<PathBuf> {
    if options.source_roots.is_empty() {
        Ok(PathBuf::from(path))
    } else {
        confine(Path::new(path), &options.source_roots)
    }
}

fn open_local(path: &str, options: &ReadOptions) -> Result<std::fs::File> {
    let path = local_path(path, options)?;
    std::fs::File::open(&path).map_err(|e| Error::io(format!("opening {}", path.display()), e))
}

/// A buffered reader over `raw` that fingerprints every byte read through it.
pub fn hashed(raw: Box<dyn Read + Send>) -> (SourceReader, Fingerprint) {
    let hasher = Arc::new(Mutex::new(Sha256::new()));
    let reader = HashingReader { inner: raw, hasher: hasher.clone() };
    (BufReader::with_capacity(1 << 20, reader), Fingerprint(hasher))
}

/// Resolves `path` (symlinks, `..`, relative to the working directory) and checks it lies under
/// one of `roots` (resolved the same way; roots that do not exist hold nothing). Returns the
/// resolved path, which is what should be opened.
pub fn confine(path: &Path, roots: &[PathBuf]) -> Result<PathBuf> {
    let resolved = std::fs::canonicalize(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    if roots.iter().filter_map(|r| std::fs::canonicalize(r).ok()).any(|root| resolved.starts_with(&root)) {
        return Ok(resolved);
    }
    let allowed: Vec<String> =
        roots.iter().map(|r| std::fs::canonicalize(r).unwrap_or_else(|_| r.clone()).display().to_string()).collect();
    let shown = if resolved.as_path() == path {
        path.display().to_string()
    } else {
        format!("{} (resolves to {})", path.display(), resolved.display())
    };
    Err(Error::io(
        format!("opening {shown}"),
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "outside the allowed source roots [{}]; allow its directory with --source-root (QUIVER_SOURCE_ROOT)",
                allowed.join(", ")
            ),
        ),
    ))
}

/// At most `max` characters of `s`, printable ASCII only (others shown as `?`), with `…` when cut.
pub(crate) fn short(s: &str, max: usize) -> String {
    let mut out: String = s.chars().take(max).map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' }).collect();
    if s.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

/// Why a request did not produce a usable response.
enum Failure {
    /// Worth retrying (connection refused or lost, timeout, 5xx, 429).
    Transient(String),
    /// Retrying cannot help (a refused address or redirect, 4xx, a server that cannot resume).
    Fatal(String),
}

impl Failure {
    fn message(&self) -> &str {
        match self {
            Failure::Transient(m) | Failure::Fatal(m) => m,
        }
    }
}

/// Is `ip` link-local or a cloud provider's metadata address?
fn forbidden(ip: IpAddr) -> bool {
    match ip {
        // 169.254.0.0/16 (AWS, GCP, Azure, OpenStack at 169.254.169.254), Alibaba's 100.100.100.200.
        IpAddr::V4(v4) => v4.is_link_local() || v4.octets() == [100, 100, 100, 200],
        IpAddr::V6(v6) => {
            let s = v6.segments();
            // An IPv4 address inside an IPv6 one: mapped (::ffff:a.b.c.d), compatible (::a.b.c.d),
            // NAT64 (64:ff9b::a.b.c.d).
            let embedded = v6.to_ipv4_mapped().or_else(|| {
                let tail = || std::net::Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
                match s[..6] {
                    [0, 0, 0, 0, 0, 0] if s[6] != 0 => Some(tail()),
                    [0x64, 0xff9b, 0, 0, 0, 0] => Some(tail()),
                    _ => None,
                }
            });
            if let Some(v4) = embedded {
                return forbidden(IpAddr::V4(v4));
            }
            let fe80 = (s[0] & 0xffc0) == 0xfe80;
            // AWS's fd00:ec2::/64 (the metadata service, the EKS pod identity agent), GCP's fd20:ce::254.
            let aws = s[..4] == [0xfd00, 0x0ec2, 0, 0];
            let gcp = s == [0xfd20, 0x00ce, 0, 0, 0, 0, 0, 0x0254];
            fe80 || aws || gcp
        }
    }
}

/// Refuses an object store's configured endpoint (AWS_ENDPOINT_URL, AZURE_STORAGE_ENDPOINT)
/// that is, or resolves to, a link-local or cloud-metadata address: a credentials Secret must
/// not point the store's client at the metadata service.
pub(crate) fn check_endpoint(endpoint: &str) -> Result<(), String> {
    match check_host(endpoint, false) {
        Ok(()) => Ok(()),
        Err(Failure::Fatal(reason) | Failure::Transient(reason)) => Err(reason),
    }
}

/// Refuses `url` when its host is, or resolves to, a link-local or cloud-metadata address.
/// A host that does not resolve here is left to the request to report (it may be reached
/// through a proxy).
fn check_host(url: &str, allow_link_local: bool) -> Result<(), Failure> {
    let uri: ureq::http::Uri = url.parse().map_err(|e| Failure::Fatal(format!("not a valid URL: {e}")))?;
    let host = uri.host().ok_or_else(|| Failure::Fatal("the URL has no host".into()))?;
    if allow_link_local {
        return Ok(());
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let name = bare.trim_end_matches('.').to_ascii_lowercase();
    let refuse = |what: String| {
        Failure::Fatal(format!(
            "{what}: link-local and cloud-metadata addresses are refused as import sources (ReadOptions::allow_link_local)"
        ))
    };
    if METADATA_HOSTS.contains(&name.as_str()) {
        return Err(refuse(format!("host {name} is a cloud metadata service")));
    }
    let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("https") { 443 } else { 80 });
    let addrs: Vec<IpAddr> = match bare.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => (bare, port).to_socket_addrs().map(|a| a.map(|s| s.ip()).collect()).unwrap_or_default(),
    };
    match addrs.into_iter().find(|ip| forbidden(*ip)) {
        Some(ip) if ip.to_string() == bare => Err(refuse(format!("{ip} is a link-local or metadata address"))),
        Some(ip) => Err(refuse(format!("host {} resolves to {ip}", short(bare, 60)))),
        None => Ok(()),
    }
}

/// `location` (a redirect target) made absolute against `base`.
fn join(base: &str, location: &str) -> String {
    if scheme_of(location).is_some() {
        return location.to_string();
    }
    let (scheme, rest) = base.split_once("://").expect("base is an absolute http(s) URL");
    if let Some(rest) = location.strip_prefix("//") {
        return format!("{scheme}://{rest}");
    }
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let origin = format!("{scheme}://{}", &rest[..authority_end]);
    if location.starts_with('/') {
        return format!("{origin}{location}");
    }
    let path = rest[authority_end..].split(['?', '#']).next().unwrap_or("");
    let dir = path.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
    format!("{origin}{dir}/{location}")
}

/// Resolves like ureq's default resolver, then refuses a host any of whose addresses is
/// link-local or a metadata address. The agent connects only to the addresses this returns, so
/// the check holds for the connection itself: a host that resolved to a public address for
/// [`check_host`] and to 169.254.169.254 a moment later (DNS rebinding) is refused here.
#[derive(Debug)]
struct CheckedResolver {
    allow_link_local: bool,
}

/// The refusal [`CheckedResolver`] reports (inside `ureq::Error::Io`), told apart from network
/// failures so that it is not retried.
#[derive(Debug)]
struct RefusedAddress(String);

impl std::fmt::Display for RefusedAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RefusedAddress {}

impl ureq::unversioned::resolver::Resolver for CheckedResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        use ureq::unversioned::resolver::DefaultResolver;
        let addrs = DefaultResolver::default().resolve(uri, config, timeout)?;
        if let Some(addr) = addrs.iter().find(|a| forbidden(a.ip())).filter(|_| !self.allow_link_local) {
            let host = uri.host().unwrap_or_default();
            return Err(ureq::Error::Io(io::Error::other(RefusedAddress(format!(
                "host {} resolves to {}: link-local and cloud-metadata addresses are refused as import sources (ReadOptions::allow_link_local)",
                short(host, 60),
                addr.ip()
            )))));
        }
        Ok(addrs)
    }
}

/// A failed call: a refused address is final, anything else may pass on a retry.
fn call_failure(error: ureq::Error) -> Failure {
    if let ureq::Error::Io(e) = &error
        && let Some(refused) = e.get_ref().and_then(|inner| inner.downcast_ref::<RefusedAddress>())
    {
        return Failure::Fatal(refused.to_string());
    }
    Failure::Transient(error.to_string())
}

fn agent(allow_link_local: bool) -> ureq::Agent {
    let config = ureq::Agent::config_builder()
        .timeout_resolve(Some(CONNECT_TIMEOUT))
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_per_read(Some(READ_TIMEOUT))
        .timeout_per_write(Some(READ_TIMEOUT))
        .timeout_recv_response(Some(READ_TIMEOUT))
        // Redirects are followed here, to check each hop's scheme and address.
        .max_redirects(0)
        .http_status_as_error(false)
        // Byte offsets for Range must be those of the representation: no transparent gzip.
        .accept_encoding("identity")
        // No proxy from the environment: through one, the proxy would resolve the source's
        // host, past the resolver's address check.
        .proxy(None)
        .build();
    ureq::Agent::with_parts(
        config,
        ureq::unversioned::transport::DefaultConnector::default(),
        CheckedResolver { allow_link_local },
    )
}

/// GETs `url` with `headers`, following redirects; returns the response and the final URL.
fn get(
    agent: &ureq::Agent,
    url: &str,
    headers: &[(&str, String)],
    allow_link_local: bool,
) -> Result<(ureq::http::Response<ureq::Body>, String), Failure> {
    let mut url = url.to_string();
    for hop in 0..=MAX_REDIRECTS {
        check_host(&url, allow_link_local)?;
        let mut request = agent.get(&url);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let response = request.call().map_err(call_failure)?;
        let status = response.status().as_u16();
        let location = response.headers().get("location").and_then(|l| l.to_str().ok());
        let (Some(location), 301 | 302 | 303 | 307 | 308) = (location, status) else {
            return Ok((response, url));
        };
        if hop == MAX_REDIRECTS {
            return Err(Failure::Fatal(format!("more than {MAX_REDIRECTS} redirects")));
        }
        let next = join(&url, location);
        if scheme_of(&next) != scheme_of(&url) {
            return Err(Failure::Fatal(format!(
                "redirected ({status}) to {}: a redirect to another scheme is refused",
                short(&redact(&next), 100)
            )));
        }
        url = next;
    }
    unreachable!("the loop returns on its last hop")
}

/// A URL's body, resumed with `Range` requests when the connection fails before its end.
struct HttpSource {
    agent: ureq::Agent,
    /// The URL as given (for messages) and the one that answered (after redirects).
    url: String,
    final_url: String,
    allow_link_local: bool,
    body: Option<ureq::BodyReader<'static>>,
    /// Bytes handed to the caller so far: where a resumption starts.
    delivered: u64,
    /// The body's length, when the server said.
    total: Option<u64>,
    /// `If-Range` validator (a strong ETag or Last-Modified): a resumption never mixes versions.
    validator: Option<String>,
    /// Whether a lost connection may be resumed at all.
    resumable: bool,
    /// Consecutive failed attempts since the last byte delivered.
    failures: u32,
    /// Why the current body is missing, when a resumption failed transiently.
    pending: Option<String>,
}

impl HttpSource {
    fn open(url: &str, allow_link_local: bool) -> Result<HttpSource> {
        let agent = agent(allow_link_local);
        let http = |reason: String| Error::Http { url: url.to_string(), reason };
        let (response, final_url) = get(&agent, url, &[], allow_link_local).map_err(|f| http(f.message().into()))?;
        if response.status().as_u16() != 200 {
            return Err(http(format!("HTTP status {}", response.status())));
        }
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let identity = header("content-encoding").is_none_or(|e| e.eq_ignore_ascii_case("identity"));
        let ranges = header("accept-ranges").is_none_or(|r| !r.eq_ignore_ascii_case("none"));
        let validator = header("etag").filter(|e| !e.starts_with("W/")).or_else(|| header("last-modified"));
        let total = header("content-length").and_then(|l| l.trim().parse().ok());
        Ok(HttpSource {
            agent,
            url: url.to_string(),
            final_url,
            allow_link_local,
            body: Some(response.into_body().into_reader()),
            delivered: 0,
            total,
            validator,
            resumable: identity && ranges,
            failures: 0,
            pending: None,
        })
    }

    /// Asks for the rest of the body from byte `delivered`, and checks the answer is exactly that.
    fn resume(&self) -> Result<ureq::BodyReader<'static>, Failure> {
        let from = self.delivered;
        let mut headers = vec![("range", format!("bytes={from}-"))];
        if let Some(v) = &self.validator {
            headers.push(("if-range", v.clone()));
        }
        let (response, _) = get(&self.agent, &self.final_url, &headers, self.allow_link_local)?;
        let status = response.status().as_u16();
        match status {
            206 => {}
            200 => {
                return Err(Failure::Fatal(format!(
                    "the server answered 200 to a Range request from byte {from} (the file changed or it \
                     cannot resume); refusing to restart from byte 0 and import rows twice"
                )));
            }
            429 | 500..=599 => return Err(Failure::Transient(format!("HTTP status {}", response.status()))),
            _ => return Err(Failure::Fatal(format!("HTTP status {} to a Range request", response.status()))),
        }
        let range = response.headers().get("content-range").and_then(|v| v.to_str().ok()).unwrap_or("(none)");
        if !content_range_matches(range, from, self.total) {
            return Err(Failure::Fatal(format!(
                "asked for bytes {from}- of {}, the server sent Content-Range {}",
                self.total.map_or("an unknown length".to_string(), |t| t.to_string()),
                short(range, 60)
            )));
        }
        Ok(response.into_body().into_reader())
    }

    fn lost(&self, why: &str) -> io::Error {
        io::Error::other(format!("{}: connection lost at byte {}: {why}", redact(&self.url), self.delivered))
    }
}

/// Does a `Content-Range` header say `bytes from-(total-1)/total` (any end when unknown)?
fn content_range_matches(range: &str, from: u64, total: Option<u64>) -> bool {
    let Some(spec) = range.trim().strip_prefix("bytes ") else { return false };
    let Some((span, length)) = spec.split_once('/') else { return false };
    let Some((start, end)) = span.split_once('-') else { return false };
    let (Ok(start), Ok(end)) = (start.trim().parse::<u64>(), end.trim().parse::<u64>()) else { return false };
    let length = length.trim();
    match total {
        Some(total) => start == from && end.checked_add(1) == Some(total) && length == total.to_string(),
        None => start == from && end >= start && (length == "*" || length.parse::<u64>().is_ok_and(|l| l == end + 1)),
    }
}

impl Read for HttpSource {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let error = match self.body.as_mut() {
                Some(body) => match body.read(buf) {
                    Ok(0) if self.total.is_some_and(|t| self.delivered < t) => {
                        format!("the body ended after {} of {} bytes", self.delivered, self.total.unwrap_or(0))
                    }
                    Ok(n) => {
                        self.delivered += n as u64;
                        if n > 0 {
                            self.failures = 0;
                        }
                        return Ok(n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => e.to_string(),
                },
                None => self.pending.take().unwrap_or_else(|| "no response body".into()),
            };
            self.body = None;
            if !self.resumable {
                return Err(self.lost(&format!("{error} (the response cannot be resumed with Range)")));
            }
            if self.failures >= MAX_RESUMES {
                return Err(self.lost(&format!("{error} (gave up after {MAX_RESUMES} attempts to resume)")));
            }
            std::thread::sleep(RESUME_BACKOFF * 2u32.pow(self.failures));
            self.failures += 1;
            let url = redact(&self.url);
            tracing::warn!("{url}: connection lost at byte {} ({error}); resuming with Range", self.delivered);
            match self.resume() {
                Ok(body) => self.body = Some(body),
                Err(Failure::Transient(why)) => self.pending = Some(why),
                Err(Failure::Fatal(why)) => {
                    self.resumable = false;
                    return Err(self.lost(&format!("{error}; resuming failed: {why}")));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_credentials_before_they_are_shown() {
        assert_eq!(
            redact("https://u:p4ss@host:9000/b/k.npy?X-Amz-Signature=abc"),
            "https://host:9000/b/k.npy?(redacted)"
        );
        assert_eq!(redact("http://host/x.jsonl"), "http://host/x.jsonl");
        assert_eq!(redact("http://tok@host"), "http://host");
        assert_eq!(redact("/data/v.npy"), "/data/v.npy");
        assert_eq!(redact("s3://etl/products/2026-12-01/*.parquet"), "s3://etl/products/2026-12-01/*.parquet");
        assert_eq!(
            redact("abfss://data@acct.dfs.core.windows.net/p/x.parquet"),
            "abfss://data@acct.dfs.core.windows.net/p/x.parquet"
        );
        // Passwords with characters a URL must escape: never a piece of them.
        for leaky in [
            "postgres://quiver:pa/ss@db/shop",
            "postgres://quiver:p@ss/w0rd@db/shop",
            "postgres://quiver:ab#cd@db/shop",
            "postgres://quiver:12?34@db/shop",
            "mysql://quiver:ab?cd@db:3306/shop",
        ] {
            let shown = redact(leaky);
            assert!(shown.ends_with("(address not shown: not a valid URL)"), "{leaky} -> {shown}");
        }
        assert_eq!(
            redact("postgres://quiver:s3cret@db:5432/shop?sslmode=require"),
            "postgres://db:5432/shop?(redacted)"
        );
        let e = Error::Http { url: "https://u:s3cr3t@h/x?sig=s3cr3t".into(), reason: "down".into() }.to_string();
        assert!(!e.contains("s3cr3t"), "{e}");
    }

    #[test]
    fn schemes_quiver_cannot_read_are_refused_at_once() {
        for ok in [
            "/data/a.npy",
            "a.npy",
            "file:///data/a.npy",
            "http://h/a.npy",
            "HTTPS://h/a.npy",
            "s3://b/a.npy",
            "gs://b/a",
            "az://c/a",
            "abfss://c/a",
        ] {
            check_source_uri(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["gopher://bucket/a.npy", "s4://b/a.npy", "ftp://h/a.npy", "hdfs://x/y"] {
            let err = check_source_uri(bad).unwrap_err().to_string();
            let scheme = bad.split("://").next().unwrap();
            assert!(err.contains(&format!("{scheme}://")) && err.contains("not supported"), "{err}");
        }
        assert!(check_source_uri("").is_err());
    }

    #[test]
    fn link_local_and_metadata_addresses_are_recognised() {
        for ip in [
            "169.254.169.254",
            "169.254.1.2",
            "fe80::1",
            "febf::1",
            "fd00:ec2::254",
            "fd00:ec2::23",
            "::ffff:169.254.169.254",
            "::169.254.169.254",
            "64:ff9b::169.254.169.254",
            "100.100.100.200",
            "fd20:ce::254",
        ] {
            assert!(forbidden(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["127.0.0.1", "10.0.0.1", "8.8.8.8", "::1", "fd00:ec3::254", "fec0::1", "100.100.100.201"] {
            assert!(!forbidden(ip.parse().unwrap()), "{ip}");
        }
        let err = check_host("http://metadata.google.internal./computeMetadata/v1/", false).err().unwrap();
        assert!(err.message().contains("metadata"), "{}", err.message());
        assert!(check_host("http://[fe80::1]:8080/a.npy", false).is_err());
        assert!(check_host("http://[fe80::1]:8080/a.npy", true).is_ok());
        assert!(check_host("http://127.0.0.1:1/a.npy", false).is_ok());
    }

    #[test]
    fn the_connection_itself_never_reaches_a_link_local_address() {
        // Past the pre-check (a name that resolved elsewhere a moment ago, DNS rebinding): the
        // agent's own resolution refuses, finally, before any connection is tried.
        let started = std::time::Instant::now();
        let error = agent(false).get("http://169.254.169.254:9/latest/meta-data/").call().unwrap_err();
        match call_failure(error) {
            Failure::Fatal(m) => assert!(m.contains("169.254.169.254") && m.contains("refused"), "{m}"),
            Failure::Transient(m) => panic!("not refused by the resolver: {m}"),
        }
        assert!(started.elapsed() < CONNECT_TIMEOUT, "refused at resolution, not after a connect attempt");
        // Allowed: resolved and tried (a refused or unreachable connection, not our refusal).
        let error = agent(true).get("http://127.0.0.1:9/x").call().unwrap_err();
        assert!(matches!(call_failure(error), Failure::Transient(_)));
    }

    #[test]
    fn redirect_targets_are_made_absolute() {
        assert_eq!(join("http://h:1/a/b.npy?x", "c.npy"), "http://h:1/a/c.npy");
        assert_eq!(join("http://h:1/a/b.npy", "/c.npy"), "http://h:1/c.npy");
        assert_eq!(join("http://h:1/a/b.npy", "//g/c.npy"), "http://g/c.npy");
        assert_eq!(join("http://h:1", "c.npy"), "http://h:1/c.npy");
        assert_eq!(join("http://h/a", "ftp://g/c"), "ftp://g/c");
    }

    #[test]
    fn content_range_must_continue_where_the_stream_stopped() {
        assert!(content_range_matches("bytes 100-199/200", 100, Some(200)));
        assert!(!content_range_matches("bytes 0-199/200", 100, Some(200)));
        assert!(!content_range_matches("bytes 100-150/200", 100, Some(200)));
        assert!(!content_range_matches("bytes 100-199/300", 100, Some(200)));
        assert!(content_range_matches("bytes 100-199/*", 100, None));
        assert!(!content_range_matches("garbage", 100, None));
    }

    #[test]
    fn paths_outside_the_roots_are_refused_before_opening() {
        let dir = tempfile::tempdir().unwrap();
        let (inside, outside) = (dir.path().join("in"), dir.path().join("out"));
        std::fs::create_dir_all(&inside).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(inside.join("a.jsonl"), "").unwrap();
        std::fs::write(outside.join("b.jsonl"), "").unwrap();
        let roots = vec![inside.clone(), dir.path().join("missing")];
        assert!(confine(&inside.join("a.jsonl"), &roots).is_ok());
        let escape = inside.join("..").join("out").join("b.jsonl");
        let err = confine(&escape, &roots).unwrap_err().to_string();
        assert!(err.contains("b.jsonl") && err.contains("source roots") && err.contains("in"), "{err}");
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(outside.join("b.jsonl"), inside.join("link.jsonl")).unwrap();
            let err = confine(&inside.join("link.jsonl"), &roots).unwrap_err().to_string();
            assert!(err.contains("resolves to") && err.contains("source roots"), "{err}");
        }
    }
}
