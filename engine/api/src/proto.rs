//! The generated gRPC contract (`quiver.v1`), compiled by `build.rs` from `proto/`.

tonic::include_proto!("quiver.v1");

/// Encoded descriptors of every quiver.v1 file, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("quiver_descriptor");
