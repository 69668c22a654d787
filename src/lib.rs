//! braid: a DTM-compatible distributed transaction manager. See `design.md` for the shape of the system.

pub mod metrics;
pub mod model;
pub mod store;
