//! braid-client: a Rust SDK for braid and DTM distributed transactions.
//!
//! - Transactions: [`Saga`], [`Msg`] (with [`Msg::do_and_submit`]), TCC ([`tcc_global_transaction`]),
//!   XA ([`xa`], feature `mysql`), and [`workflow`], over HTTP or gRPC ([`DtmClient`]); the same code
//!   talks to braid or to DTM.
//! - The sub-transaction barrier ([`BranchBarrier`]) that makes branch handlers idempotent and safe
//!   against null compensation and hanging, on MySQL/MariaDB, PostgreSQL (sqlx) and Redis, sharing DTM's
//!   `dtm_barrier.barrier` table with services written against DTM's own SDKs.
//! - Axum extractors for branch handlers (feature `axum`).
//!
//! Features: `mysql`, `postgres`, `redis`, `grpc`, `axum` (all on by default), `rustls`. A service that
//! only needs a saga client and the MySQL barrier uses
//! `braid-client = { version = "0.1", default-features = false, features = ["mysql"] }`.

pub mod barrier;
mod client;
mod error;
mod gid;
mod model;
mod msg;
mod query;
mod saga;
mod tcc;
pub mod workflow;
#[cfg(feature = "mysql")]
pub mod xa;

#[cfg(feature = "axum")]
mod axum_ext;
#[cfg(feature = "grpc")]
mod grpc;
#[cfg(feature = "grpc")]
mod proto;

use std::future::Future;
use std::pin::Pin;

#[cfg(feature = "axum")]
pub use axum_ext::{Rejection, success};
pub use barrier::BranchBarrier;
#[cfg(any(feature = "mysql", feature = "postgres"))]
pub use barrier::{BarrierDatabase, Entry, create_barrier_table};
pub use client::{DEFAULT_HTTP_TIMEOUT, DtmClient};
pub use error::{Error, Outcome, Result, outcome_of_http};
pub use gid::new_gid;
pub use model::{MSG, SAGA, TCC, TransOptions, WORKFLOW, XA};
pub use msg::Msg;
pub use query::BranchQuery;
pub use saga::Saga;
pub use tcc::{BranchIdGen, Tcc, TccBuilder, tcc_global_transaction};
pub use workflow::{Workflow, Workflows};
#[cfg(feature = "mysql")]
pub use xa::{Xa, XaBuilder, xa_global_transaction};

/// A boxed `Send` future: what business closures passed to the barrier, `do_and_submit_db`, XA and
/// workflow callbacks return (`|conn| Box::pin(async move { ... })`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl DtmClient {
    /// A saga with id `gid`.
    pub fn saga(&self, gid: impl Into<String>) -> Saga {
        Saga::new(self, gid)
    }

    /// A message with id `gid`.
    pub fn msg(&self, gid: impl Into<String>) -> Msg {
        Msg::new(self, gid)
    }

    /// A TCC global transaction with id `gid` (set options, then [`TccBuilder::run`]).
    pub fn tcc(&self, gid: impl Into<String>) -> TccBuilder {
        TccBuilder::new(self, gid)
    }

    /// An XA global transaction with id `gid` (set options, then [`XaBuilder::run`]).
    #[cfg(feature = "mysql")]
    pub fn xa(&self, gid: impl Into<String>) -> XaBuilder {
        XaBuilder::new(self, gid)
    }
}
