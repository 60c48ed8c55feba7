//! Compiles the gRPC contract with a pure-Rust protobuf compiler (protox): no system `protoc`.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos =
        ["search.proto", "admin.proto", "ingest.proto", "snapshot.proto"].map(|p| format!("proto/quiver/v1/{p}"));
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(&protos, ["proto"])?;
    // The encoded descriptors feed server reflection (grpcurl works without .proto files).
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("quiver_descriptor.bin"), fds.encode_to_vec())?;
    // Snapshot chunks are passed along without copying them into a Vec.
    tonic_prost_build::configure().bytes(".quiver.v1.Chunk.data").compile_fds(fds)?;
    Ok(())
}
