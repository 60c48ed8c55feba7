//! quiver's engine: collections on arroy + LMDB, import-then-build, partitioned search,
//! verification and warm-up, and the alias catalog of the standalone role. ARCHITECTURE.md
//! draws the layers; `tests/engine/layers.rs` holds them.

pub mod cancel;
pub mod collection;
pub mod distance;
pub mod durable;
pub mod error;
pub mod fault;
pub mod import;
pub mod index;
pub mod limits;
pub mod search;
pub mod types;

pub use collection::Collection;
pub use error::{Error, Result};
pub mod bench;
pub mod build;
pub mod catalog;
pub mod cli;
pub mod datagen;
pub mod demo;
pub mod latency;
pub mod metrics;
pub mod publish;
pub mod recent;
pub mod roles;
pub mod serve;
pub mod snapshot;
pub mod spool;
pub mod verify;
pub mod warmup;
