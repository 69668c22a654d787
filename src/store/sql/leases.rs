//! [`LeaseStore`] on SQL: the rows of `braid_lease`.

use async_trait::async_trait;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{SqlStore, corrupt, is_duplicate_key, text};
use crate::model::Millis;
use crate::store::{LeaseRecord, LeaseStore, Result};

fn decode_lease(row: &AnyRow) -> Result<LeaseRecord> {
    let transitions: i64 = row.try_get("transitions")?;
    Ok(LeaseRecord {
        name: text(row, "name")?,
        holder: text(row, "holder")?,
        acquired_at: Millis(row.try_get("acquired_at")?),
        renewed_at: Millis(row.try_get("renewed_at")?),
        expires_at: Millis(row.try_get("expires_at")?),
        transitions: u64::try_from(transitions).map_err(|e| corrupt("lease transitions", e))?,
    })
}

#[async_trait]
impl LeaseStore for SqlStore {
    async fn lease_acquire(
        &self,
        name: &str,
        holder: &str,
        now: Millis,
        duration_ms: i64,
    ) -> Result<bool> {
        let expires = now.0.saturating_add(duration_ms.max(0));
        // `holder` is assigned last: MySQL evaluates assignments left to right with the new values, SQLite
        // with the old ones; with this order both compare against the previous holder.
        let taken = sqlx::query(self.stmt(
            "UPDATE braid_lease SET \
             transitions = transitions + CASE WHEN holder = ? THEN 0 ELSE 1 END, \
             acquired_at = CASE WHEN holder = ? THEN acquired_at ELSE ? END, \
             renewed_at = ?, expires_at = ?, holder = ? \
             WHERE name = ? AND (holder = ? OR holder = '' OR expires_at <= ?)",
        ))
        .bind(holder)
        .bind(holder)
        .bind(now.0)
        .bind(now.0)
        .bind(expires)
        .bind(holder)
        .bind(name)
        .bind(holder)
        .bind(now.0)
        .execute(&self.pool)
        .await?;
        if taken.rows_affected() > 0 {
            return Ok(true);
        }
        let created = sqlx::query(self.stmt(
            "INSERT INTO braid_lease (name, holder, acquired_at, renewed_at, expires_at, transitions) \
             VALUES (?, ?, ?, ?, ?, 1)",
        ))
        .bind(name)
        .bind(holder)
        .bind(now.0)
        .bind(now.0)
        .bind(expires)
        .execute(&self.pool)
        .await;
        match created {
            Ok(_) => Ok(true),
            // It exists and is someone else's (or a concurrent acquire created it first).
            Err(e) if is_duplicate_key(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn lease_release(&self, name: &str, holder: &str) -> Result<bool> {
        let done = sqlx::query(self.stmt("DELETE FROM braid_lease WHERE name = ? AND holder = ?"))
            .bind(name)
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn lease_list(&self, prefix: &str, now: Millis) -> Result<Vec<LeaseRecord>> {
        let rows = sqlx::query(self.stmt(
            "SELECT name, holder, acquired_at, renewed_at, expires_at, transitions FROM braid_lease \
             WHERE SUBSTR(name, 1, ?) = ? AND expires_at > ? ORDER BY name",
        ))
        .bind(i32::try_from(prefix.chars().count()).unwrap_or(i32::MAX))
        .bind(prefix)
        .bind(now.0)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decode_lease).collect()
    }
}
