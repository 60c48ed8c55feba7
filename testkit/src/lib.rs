//! Real servers and tools for quiver's tests, started on loopback ports with their data in
//! temporary directories and stopped when dropped: the engine's integration tests and the e2e
//! tests share them. Each says SKIPPED when its server is not installed, and fails instead
//! when `QUIVER_REQUIRE_TOOLS` is set (CI, which installs them).

pub mod azurite;
pub mod browser;
pub mod database;
pub mod gcs;
pub mod grpcurl;
pub mod parquet;
pub mod s3;

/// A loopback port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
