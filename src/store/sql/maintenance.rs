//! [`Maintenance`] on SQL: rescheduling and retention deletes on `braid_txn` and `braid_branch`.

use async_trait::async_trait;

use super::{Dialect, SqlStore, placeholders, text};
use crate::model::{Gid, Millis};
use crate::store::{Maintenance, Result};

#[async_trait]
impl Maintenance for SqlStore {
    async fn reset_cron_time(&self, after: Millis, now: Millis, limit: u32) -> Result<u64> {
        let sql = match self.dialect {
            Dialect::Sqlite | Dialect::Postgres => {
                "UPDATE braid_txn SET next_cron_time = ?, update_time = ? WHERE id IN \
                 (SELECT id FROM braid_txn WHERE next_cron_time > ? AND owner = '' LIMIT ?)"
            }
            Dialect::Mysql => {
                "UPDATE braid_txn SET next_cron_time = ?, update_time = ? WHERE next_cron_time > ? \
                 AND owner = '' LIMIT ?"
            }
        };
        // `next_cron_time > after >= now` for every row it touches, so `owner = ''` is what leaves live claims
        // alone (an expired claim is due already).
        let done = sqlx::query(self.stmt(sql))
            .bind(now.0)
            .bind(now.0)
            .bind(after.0.max(now.0))
            .bind(i64::from(limit))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn reset_next_cron_time(&self, gid: &Gid, now: Millis) -> Result<bool> {
        // Unfinished by status, not by `next_cron_time IS NOT NULL`: an unfinished row without a schedule is
        // scheduled too, and a final row never is.
        let done = sqlx::query(self.stmt(
            "UPDATE braid_txn SET next_cron_time = ?, update_time = ? \
             WHERE gid = ? AND status NOT IN ('succeed', 'failed') \
             AND (owner = '' OR next_cron_time IS NULL OR next_cron_time <= ?)",
        ))
        .bind(now.0)
        .bind(now.0)
        .bind(gid.as_str())
        .bind(now.0)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() > 0 {
            return Ok(true);
        }
        let found = sqlx::query(self.stmt("SELECT id FROM braid_txn WHERE gid = ?"))
            .bind(gid.as_str())
            .fetch_optional(&self.pool)
            .await?;
        Ok(found.is_some())
    }

    async fn delete_finished(&self, before: Millis, limit: u32) -> Result<u64> {
        let mut tx = self.pool.begin_with(self.dialect.begin()).await?;
        let gids: Vec<String> = sqlx::query(self.stmt(
            "SELECT gid FROM braid_txn WHERE status IN ('succeed', 'failed') AND update_time < ? LIMIT ?",
        ))
        .bind(before.0)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| text(r, "gid"))
        .collect::<Result<_, _>>()?;
        if gids.is_empty() {
            tx.commit().await?;
            return Ok(0);
        }
        let in_list = placeholders(gids.len());
        for table in ["braid_branch", "braid_txn"] {
            let sql = format!("DELETE FROM {table} WHERE gid IN ({in_list})");
            let sql = self.sql(&sql);
            let mut q = sqlx::query(&sql);
            for g in &gids {
                q = q.bind(g.as_str());
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(gids.len() as u64)
    }
}
