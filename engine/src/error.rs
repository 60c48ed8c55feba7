//! The engine's error type. Every user-facing failure names what was wrong and where.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A problem with one record of an import source.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{source_name}: {at}: field `{field}` = {value}: {reason}")]
pub struct InputError {
    /// The file path or URL being imported.
    pub source_name: String,
    /// Where in the source: `row 17`, `line 3`, `header`.
    pub at: String,
    pub field: String,
    pub value: String,
    pub reason: String,
}

/// A request that cannot be served as asked (bad k, unknown partition, wrong dimension...).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid request: field `{field}` = {value}: {reason}")]
pub struct RequestError {
    pub field: String,
    pub value: String,
    pub reason: String,
}

impl RequestError {
    pub fn new(field: impl Into<String>, value: impl ToString, reason: impl Into<String>) -> Self {
        RequestError { field: field.into(), value: value.to_string(), reason: reason.into() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Input(#[from] Box<InputError>),
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("collection {name:?} is sealed: {operation} refused; build a new collection instead")]
    Sealed { name: String, operation: String },
    #[error("collection {name:?} already exists at {}", path.display())]
    AlreadyExists { name: String, path: PathBuf },
    #[error("no collection at {}", path.display())]
    NotFound { path: PathBuf },
    #[error("{} is not a complete collection: {reason}", path.display())]
    Incomplete { path: PathBuf, reason: String },
    #[error("snapshot of {collection:?}: {reason}")]
    Snapshot { collection: String, reason: String },
    #[error("{target}: {reason}")]
    Remote { target: String, reason: String },
    #[error("alias {alias:?}: {reason}")]
    Alias { alias: String, reason: String },
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error("fetching {}: {reason}", redact(url))]
    Http { url: String, reason: String },
    /// A bound on what a caller may send or store was reached.
    #[error("{what}: {reason}")]
    Exhausted { what: String, reason: String },
    /// Long work stopped because its caller went away.
    #[error("{what} was cancelled: the call ended (cancelled by the client, or past its deadline)")]
    Cancelled { what: String },
    /// A command-line flag or setting the process cannot start with.
    #[error("{flag} {value}: {reason}")]
    Usage { flag: String, value: String, reason: String },
    #[error("lmdb: {0}")]
    Lmdb(#[from] heed::Error),
    #[error("arroy index: {0}")]
    Arroy(#[from] arroy::Error),
    #[error("hannoy index: {0}")]
    Hannoy(#[from] hannoy::Error),
}

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { context: context.into(), source }
    }
}

impl From<InputError> for Error {
    fn from(e: InputError) -> Self {
        Error::Input(Box::new(e))
    }
}

impl From<quiver_api::Error> for Error {
    fn from(e: quiver_api::Error) -> Self {
        match e {
            quiver_api::Error::Remote { target, reason } => Error::Remote { target, reason },
            quiver_api::Error::Usage { flag, value, reason } => Error::Usage { flag, value, reason },
        }
    }
}

/// A URL as it may be shown in logs, errors and the manifest: without user info and query
/// string, which may hold credentials (`https://user:pass@host/...`, presigned `?X-Amz-Signature=`).
/// Read by a URL parser, not cut by hand: a password with an unescaped `/`, `?`, `#` or `@` makes
/// the parser read part of it as host, port, path or query, so an address that does not parse,
/// or has an `@` anywhere but once before its host, is not shown at all. The user of an Azure
/// address (`abfss://container@account...`) is its container and is kept.
pub fn redact(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else { return uri.to_string() };
    let not_shown = || format!("{scheme}://(address not shown: not a valid URL)");
    let Ok(url) = url::Url::parse(uri) else { return not_shown() };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let ats = rest.matches('@').count();
    if ats > 1 || (ats == 1 && !rest[..authority_end].contains('@')) {
        return not_shown();
    }
    let azure = ["az", "abfs", "abfss"].contains(&scheme.to_ascii_lowercase().as_str());
    let user = if azure && !url.username().is_empty() { format!("{}@", url.username()) } else { String::new() };
    let host = url.host_str().unwrap_or_default();
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    // The parser writes `/` for an empty path; the address as given had none.
    let path =
        if authority_end == rest.len() || rest[authority_end..].starts_with(['?', '#']) { "" } else { url.path() };
    let query = if url.query().is_some() || url.fragment().is_some() { "?(redacted)" } else { "" };
    format!("{scheme}://{user}{host}{port}{path}{query}")
}
