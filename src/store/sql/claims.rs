//! [`ClaimStore`] on SQL: claims of due rows (`FOR UPDATE SKIP LOCKED` on MySQL and PostgreSQL, one
//! `UPDATE .. RETURNING` under SQLite's single writer) and the fencing rows of `braid_partition`.

use async_trait::async_trait;
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use super::txns::{TXN_COLS, decode_txn};
use super::{AnyQuery, Dialect, INSERT_CHUNK, SqlStore, corrupt, placeholders, text};
use crate::model::{Fence, GlobalTxn, LeaseEpoch, Millis, Partition};
use crate::store::{Claim, ClaimScope, ClaimStore, Claimed, Error, PartitionFence, Result};

fn bind_partitions<'q>(mut q: AnyQuery<'q>, partitions: &Option<Vec<Partition>>) -> AnyQuery<'q> {
    for p in partitions.iter().flatten() {
        q = q.bind(i64::from(p.0));
    }
    q
}

fn decode_partition(row: &AnyRow) -> Result<Partition> {
    let p: i64 = row.try_get("partition_id")?;
    Ok(Partition(
        u16::try_from(p).map_err(|e| corrupt("partition_id", e))?,
    ))
}

fn decode_epoch(row: &AnyRow) -> Result<LeaseEpoch> {
    let e: i64 = row.try_get("epoch")?;
    Ok(LeaseEpoch(
        u64::try_from(e).map_err(|e| corrupt("epoch", e))?,
    ))
}

impl SqlStore {
    /// The partitions of `fences` whose stored epoch is another (or that have no fencing row). On MySQL the
    /// partition rows stay share-locked until the transaction ends, so no epoch bump can commit in between:
    /// the check holds for every write made in the same transaction.
    pub(super) async fn stale_fences(
        &self,
        tx: &mut Transaction<'static, Any>,
        fences: &[Fence],
    ) -> Result<Vec<Partition>> {
        if fences.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT partition_id, epoch FROM braid_partition WHERE partition_id IN ({}){}",
            placeholders(fences.len()),
            self.dialect.share_lock()
        );
        let sql = self.sql(&sql);
        let mut q = sqlx::query(&sql);
        for f in fences {
            q = q.bind(i64::from(f.partition.0));
        }
        let mut stored = std::collections::HashMap::new();
        for row in q.fetch_all(&mut **tx).await? {
            stored.insert(decode_partition(&row)?, decode_epoch(&row)?);
        }
        Ok(fences
            .iter()
            .filter(|f| stored.get(&f.partition) != Some(&f.epoch))
            .map(|f| f.partition)
            .collect())
    }

    /// Claims due rows of `partitions` inside `tx`.
    async fn claim_rows(
        &self,
        tx: &mut Transaction<'static, Any>,
        c: &Claim,
        partitions: &Option<Vec<Partition>>,
    ) -> Result<Vec<GlobalTxn>> {
        let pfilter = Self::partition_filter(partitions);
        match self.dialect {
            Dialect::Sqlite | Dialect::Postgres => {
                // One statement: under SQLite's single-writer lock as it is; on PostgreSQL the inner SELECT
                // locks the due rows no one else holds, and the UPDATE claims and returns them.
                let lock = if self.dialect == Dialect::Postgres {
                    " FOR UPDATE SKIP LOCKED"
                } else {
                    ""
                };
                let sql = format!(
                    "UPDATE braid_txn SET next_cron_time = ?, owner = ?, version = version + 1 WHERE id IN (SELECT id FROM braid_txn \
                     WHERE next_cron_time <= ?{pfilter} ORDER BY next_cron_time LIMIT ?{lock}) RETURNING {TXN_COLS}"
                );
                let sql = self.sql(&sql);
                let q = sqlx::query(&sql)
                    .bind(c.lease_until.0)
                    .bind(c.owner.as_str())
                    .bind(c.now.0);
                let rows = bind_partitions(q, partitions)
                    .bind(i64::from(c.limit))
                    .fetch_all(&mut **tx)
                    .await?;
                rows.iter().map(decode_txn).collect()
            }
            Dialect::Mysql => {
                let sql = format!(
                    "SELECT id FROM braid_txn WHERE next_cron_time <= ?{pfilter} ORDER BY next_cron_time LIMIT ? \
                     FOR UPDATE SKIP LOCKED"
                );
                let sql = self.sql(&sql);
                let q = sqlx::query(&sql).bind(c.now.0);
                let ids: Vec<i64> = bind_partitions(q, partitions)
                    .bind(i64::from(c.limit))
                    .fetch_all(&mut **tx)
                    .await?
                    .iter()
                    .map(|r| r.try_get("id"))
                    .collect::<Result<_, _>>()?;
                if ids.is_empty() {
                    return Ok(Vec::new());
                }
                let in_list = placeholders(ids.len());
                let sql = format!(
                    "UPDATE braid_txn SET next_cron_time = ?, owner = ?, version = version + 1 WHERE id IN ({in_list})"
                );
                let sql = self.sql(&sql);
                let mut q = sqlx::query(&sql)
                    .bind(c.lease_until.0)
                    .bind(c.owner.as_str());
                for id in &ids {
                    q = q.bind(*id);
                }
                q.execute(&mut **tx).await?;
                let sql = format!("SELECT {TXN_COLS} FROM braid_txn WHERE id IN ({in_list})");
                let sql = self.sql(&sql);
                let mut q = sqlx::query(&sql);
                for id in &ids {
                    q = q.bind(*id);
                }
                let rows = q.fetch_all(&mut **tx).await?;
                rows.iter().map(decode_txn).collect()
            }
        }
    }

    fn partition_filter(partitions: &Option<Vec<Partition>>) -> String {
        match partitions {
            Some(ps) if ps.is_empty() => " AND 1 = 0".to_owned(),
            Some(ps) => format!(" AND partition_id IN ({})", placeholders(ps.len())),
            None => String::new(),
        }
    }
}

#[async_trait]
impl ClaimStore for SqlStore {
    async fn claim_due(&self, c: &Claim) -> Result<Claimed> {
        let mut tx = self.pool.begin_with(self.dialect.begin()).await?;
        let (partitions, stale) = match &c.scope {
            ClaimScope::All => (None, Vec::new()),
            ClaimScope::Partitions(ps) => (Some(ps.clone()), Vec::new()),
            ClaimScope::Fenced(fences) => {
                let stale = self.stale_fences(&mut tx, fences).await?;
                let live = fences
                    .iter()
                    .map(|f| f.partition)
                    .filter(|p| !stale.contains(p))
                    .collect();
                (Some(live), stale)
            }
        };
        let txns = self.claim_rows(&mut tx, c, &partitions).await?;
        tx.commit().await?;
        Ok(Claimed { txns, stale })
    }

    async fn init_partitions(&self, count: u16) -> Result<u16> {
        let mut tx = self.pool.begin_with(self.dialect.begin()).await?;
        let sql = format!(
            "{} braid_meta (k, v) VALUES ('partitions', ?){}",
            self.dialect.insert_ignore(),
            self.dialect.insert_ignore_end()
        );
        let sql = self.sql(&sql);
        sqlx::query(&sql)
            .bind(count.to_string())
            .execute(&mut *tx)
            .await?;
        let row = sqlx::query(self.stmt("SELECT v FROM braid_meta WHERE k = 'partitions'"))
            .fetch_one(&mut *tx)
            .await?;
        let stored_text = text(&row, "v")?;
        let stored: u16 = stored_text
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| corrupt("stored partition count", &stored_text))?;
        let ids: Vec<i64> = (0..i64::from(stored)).collect();
        for chunk in ids.chunks(INSERT_CHUNK) {
            let values = vec!["(?)"; chunk.len()].join(", ");
            let sql = format!(
                "{} braid_partition (partition_id) VALUES {values}{}",
                self.dialect.insert_ignore(),
                self.dialect.insert_ignore_end()
            );
            let sql = self.sql(&sql);
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(*id);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(stored)
    }

    async fn fence_partition(&self, p: Partition, owner: &str, now: Millis) -> Result<LeaseEpoch> {
        let mut tx = self.pool.begin_with(self.dialect.begin()).await?;
        let bumped = sqlx::query(self.stmt(
            "UPDATE braid_partition SET epoch = epoch + 1, owner = ?, fenced_at = ? WHERE partition_id = ?",
        ))
        .bind(owner)
        .bind(now.0)
        .bind(i64::from(p.0))
        .execute(&mut *tx)
        .await?;
        if bumped.rows_affected() == 0 {
            return Err(Error::Corrupt(format!(
                "partition {p} has no fencing row: the partition count was not initialised"
            )));
        }
        let row =
            sqlx::query(self.stmt("SELECT epoch FROM braid_partition WHERE partition_id = ?"))
                .bind(i64::from(p.0))
                .fetch_one(&mut *tx)
                .await?;
        let epoch = decode_epoch(&row)?;
        tx.commit().await?;
        Ok(epoch)
    }

    async fn partition_fences(&self) -> Result<Vec<PartitionFence>> {
        let rows = sqlx::query(self.stmt(
            "SELECT partition_id, epoch, owner, fenced_at FROM braid_partition ORDER BY partition_id",
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(PartitionFence {
                    partition: decode_partition(row)?,
                    epoch: decode_epoch(row)?,
                    owner: text(row, "owner")?,
                    fenced_at: Millis(row.try_get("fenced_at")?),
                })
            })
            .collect()
    }
}
