//! Generates the gRPC code from `proto/` at build time with a pure-Rust protobuf compiler (protox), so a
//! fresh machine needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/dtmgimp.proto",
        "proto/workflow.proto",
        "proto/busi.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    // The descriptors of the service braid serves (dtmgimp.Dtm, with its imports), for gRPC server
    // reflection; not the test and callback services it only calls.
    let served = protox::compile(["proto/dtmgimp.proto"], ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("dtmgimp_descriptor.bin"),
        prost::Message::encode_to_vec(&served),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // prost's codec, but a message that does not decode is `InvalidArgument` (src/proto.rs).
        .codec_path("crate::proto::codec::StrictCodec")
        .compile_fds(fds)?;
    Ok(())
}
