//! [`KvStore`] on SQL: the rows of `braid_kv`.

use async_trait::async_trait;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{SqlStore, is_duplicate_key, text};
use crate::model::{KvRecord, Millis};
use crate::store::{KvStore, Result};

const KV_COLS: &str = "id, cat, k, v, version, create_time, update_time";

fn decode_kv(row: &AnyRow) -> Result<KvRecord> {
    Ok(KvRecord {
        id: row.try_get("id")?,
        cat: text(row, "cat")?,
        k: text(row, "k")?,
        v: text(row, "v")?,
        version: row.try_get("version")?,
        create_time: Millis(row.try_get("create_time")?),
        update_time: Millis(row.try_get("update_time")?),
    })
}

#[async_trait]
impl KvStore for SqlStore {
    async fn kv_scan(&self, cat: &str, after_id: Option<i64>, limit: u32) -> Result<Vec<KvRecord>> {
        let sql =
            format!("SELECT {KV_COLS} FROM braid_kv WHERE cat = ? AND id > ? ORDER BY id LIMIT ?");
        let sql = self.sql(&sql);
        let rows = sqlx::query(&sql)
            .bind(cat)
            .bind(after_id.unwrap_or(0))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(decode_kv).collect()
    }

    async fn kv_find(&self, cat: &str, k: &str) -> Result<Option<KvRecord>> {
        let sql = format!("SELECT {KV_COLS} FROM braid_kv WHERE cat = ? AND k = ?");
        let sql = self.sql(&sql);
        let row = sqlx::query(&sql)
            .bind(cat)
            .bind(k)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(decode_kv).transpose()
    }

    async fn kv_create(&self, cat: &str, k: &str, v: &str, now: Millis) -> Result<bool> {
        let done = sqlx::query(self.stmt("INSERT INTO braid_kv (cat, k, v, version, create_time, update_time) VALUES (?, ?, ?, 1, ?, ?)"))
            .bind(cat)
            .bind(k)
            .bind(v)
            .bind(now.0)
            .bind(now.0)
            .execute(&self.pool)
            .await;
        match done {
            Ok(_) => Ok(true),
            Err(e) if is_duplicate_key(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn kv_update(
        &self,
        cat: &str,
        k: &str,
        v: &str,
        expect_version: i64,
        now: Millis,
    ) -> Result<bool> {
        let done = sqlx::query(self.stmt(
            "UPDATE braid_kv SET v = ?, version = version + 1, update_time = ? WHERE cat = ? AND k = ? AND version = ?",
        ))
        .bind(v)
        .bind(now.0)
        .bind(cat)
        .bind(k)
        .bind(expect_version)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn kv_delete(&self, cat: &str, k: &str) -> Result<bool> {
        let done = sqlx::query(self.stmt("DELETE FROM braid_kv WHERE cat = ? AND k = ?"))
            .bind(cat)
            .bind(k)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}
