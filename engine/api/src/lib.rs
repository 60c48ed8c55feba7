//! quiver's contract with everything outside the engine process: the gRPC protocol
//! (`proto/quiver/v1`), the plain settings and report types that the engine's manifest and
//! the operator's CRDs share, and a client of the engine. It knows no storage, no index and
//! no Kubernetes, so the operator builds without LMDB or arroy.

pub mod client;
pub mod environment;
pub mod error;
pub mod proto;
pub mod types;

pub use error::{Error, Result};
