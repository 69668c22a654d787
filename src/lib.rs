//! braid: a DTM-compatible distributed transaction manager, built to run as a horizontally scaled,
//! Kubernetes-native cluster. The modules follow `design.md`: `api` -> `engine` -> (`store`, `invoke`);
//! `cluster` decides which due transactions this replica scans.

pub mod api;
pub mod cli_client;
pub mod cluster;
pub mod config;
pub mod engine;
pub mod invoke;
pub mod kube;
pub mod listener;
pub mod metrics;
pub mod model;
pub mod proto;
pub mod reload;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod tls;
