//! With the `grpc` feature, generates the `dtmgimp.Dtm` and `workflow.Workflow` client/server code from
//! `proto/` with a pure-Rust protobuf compiler (protox), so no `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "grpc")]
    {
        let protos = ["proto/dtmgimp.proto", "proto/workflow.proto"];
        for p in protos {
            println!("cargo:rerun-if-changed={p}");
        }
        let fds = protox::compile(protos, ["proto"])?;
        tonic_prost_build::configure()
            .build_server(true)
            .build_client(true)
            .compile_fds(fds)?;
    }
    Ok(())
}
