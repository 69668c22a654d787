//! Code generated from `proto/` at build time (see `build.rs`).
#![allow(
    missing_docs,
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

/// The test business service of DTM's test suite (`busi.Busi`), for braid's gRPC tests.
pub mod busi {
    tonic::include_proto!("busi");
}
