//! KV records (the topics of msg transactions): [`KvStore`].

use async_trait::async_trait;

use super::{Result, StoreBase};
use crate::model::{KvRecord, Millis};

/// Versioned KV records, grouped in categories. A record is created once (version 1) and changed by
/// compare-and-set on its version; a lost race is `false`, never an error.
#[async_trait]
pub trait KvStore: StoreBase {
    /// KV records of a category with id above `after_id`, by id, at most `limit`.
    async fn kv_scan(&self, cat: &str, after_id: Option<i64>, limit: u32) -> Result<Vec<KvRecord>>;

    /// The KV record `(cat, k)`.
    async fn kv_find(&self, cat: &str, k: &str) -> Result<Option<KvRecord>>;

    /// Creates `(cat, k) = v` with version 1. `false` if it exists.
    async fn kv_create(&self, cat: &str, k: &str, v: &str, now: Millis) -> Result<bool>;

    /// Sets `v` and bumps the version, only while the stored version is `expect_version`. `false` on a lost race.
    async fn kv_update(
        &self,
        cat: &str,
        k: &str,
        v: &str,
        expect_version: i64,
        now: Millis,
    ) -> Result<bool>;

    /// Deletes `(cat, k)`. `false` if it did not exist.
    async fn kv_delete(&self, cat: &str, k: &str) -> Result<bool>;
}
