//! What the client refuses before or instead of a call (a status the server sent is returned
//! as the `tonic::Status` itself).

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The address cannot be reached as given (not a valid URL, TLS set-up, a bad token).
    #[error("{target}: {reason}")]
    Remote { target: String, reason: String },
    /// An address or setting the client cannot use at all.
    #[error("{flag} {value}: {reason}")]
    Usage { flag: String, value: String, reason: String },
}
