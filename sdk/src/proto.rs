//! Code generated from `proto/` at build time (see `build.rs`).
#![allow(
    missing_docs,
    unreachable_pub,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used
)]

/// DTM's gRPC API: service `dtmgimp.Dtm`.
pub mod dtmgimp {
    tonic::include_proto!("dtmgimp");
}

/// DTM's workflow resume service: `workflow.Workflow/Execute`.
pub mod workflow {
    tonic::include_proto!("workflow");
}
