//! The SQL implementation of [`Store`], shared by the SQLite and MySQL backends through sqlx's `Any` driver.
//! The backends differ only in the [`Dialect`]: how a write transaction begins, how due rows are claimed,
//! and which error codes mean "duplicate key".

use async_trait::async_trait;
use sqlx::AnyPool;
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use super::{Claim, Error, Result, ScanFilter, Schedule, Store, TxnUpdate, Write, WriteOutcome};
use crate::model::{Branch, BranchId, BranchStatus, GlobalStatus, GlobalTxn, Gid, KvRecord, Millis, Partition, Version};

/// What differs between SQL databases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// SQLite: one writer at a time; `BEGIN IMMEDIATE` takes the write lock up front; `UPDATE .. RETURNING`.
    Sqlite,
    /// MySQL 8 / MariaDB 10.6+: row locks; claims use `FOR UPDATE SKIP LOCKED`.
    Mysql,
}

impl Dialect {
    fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Mysql => "mysql",
        }
    }

    fn begin(self) -> &'static str {
        match self {
            Self::Sqlite => "BEGIN IMMEDIATE",
            Self::Mysql => "BEGIN",
        }
    }

    fn is_duplicate_key(self, err: &sqlx::Error) -> bool {
        let sqlx::Error::Database(db) = err else {
            return false;
        };
        // Compare vendor codes: MySQL's `code()` is the SQLSTATE (`23000`), never the error number.
        let code = super::vendor_code(db.as_ref());
        match self {
            // 2067 SQLITE_CONSTRAINT_UNIQUE, 1555 SQLITE_CONSTRAINT_PRIMARYKEY
            Self::Sqlite => matches!(code.as_deref(), Some("2067" | "1555")),
            // ER_DUP_ENTRY
            Self::Mysql => matches!(code.as_deref(), Some("1062")),
        }
    }
}

const TXN_COLS: &str = "id, gid, trans_type, status, query_prepared, protocol, custom_data, options, result, \
    rollback_reason, create_time, update_time, finish_time, rollback_time, next_cron_interval, next_cron_time, \
    owner, version, partition_id";

const BRANCH_COLS: &str =
    "id, gid, branch_id, op, url, bin_data, status, create_time, update_time, finish_time, rollback_time";

const KV_COLS: &str = "id, cat, k, v, version, create_time, update_time";

/// Rows per multi-row INSERT (keeps well under every database's bind-parameter limit).
const INSERT_CHUNK: usize = 500;

/// A store on an SQL database.
pub(crate) struct SqlStore {
    pub(crate) pool: AnyPool,
    pub(crate) dialect: Dialect,
}

fn placeholders(n: usize) -> String {
    let mut s = String::with_capacity(n * 3);
    for i in 0..n {
        if i > 0 {
            s.push_str(", ");
        }
        s.push('?');
    }
    s
}

type AnyQuery<'q> = sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>;

fn bind_partitions<'q>(mut q: AnyQuery<'q>, partitions: &Option<Vec<Partition>>) -> AnyQuery<'q> {
    for p in partitions.iter().flatten() {
        q = q.bind(i64::from(p.0));
    }
    q
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Corrupt(format!("{what}: {e}"))
}

/// A text column. MySQL reports `TEXT` columns as `BLOB` through the `Any` driver, so accept bytes too.
fn text(row: &AnyRow, col: &str) -> Result<String> {
    match row.try_get::<String, _>(col) {
        Ok(s) => Ok(s),
        Err(sqlx::Error::ColumnDecode { .. }) => {
            let bytes: Vec<u8> = row.try_get(col)?;
            String::from_utf8(bytes).map_err(|e| corrupt(col, e))
        }
        Err(e) => Err(e.into()),
    }
}

fn decode_txn(row: &AnyRow) -> Result<GlobalTxn> {
    let gid = text(row, "gid")?;
    let gid = Gid::parse(&gid).map_err(|e| corrupt("gid", e))?;
    let options = text(row, "options")?;
    let partition: i64 = row.try_get("partition_id")?;
    let version: i64 = row.try_get("version")?;
    Ok(GlobalTxn {
        id: row.try_get("id")?,
        trans_type: text(row, "trans_type")?.parse().map_err(|e| corrupt("trans_type", e))?,
        status: text(row, "status")?.parse().map_err(|e| corrupt("status", e))?,
        query_prepared: text(row, "query_prepared")?,
        protocol: text(row, "protocol")?.parse().map_err(|e| corrupt("protocol", e))?,
        custom_data: text(row, "custom_data")?,
        options: serde_json::from_str(&options).map_err(|e| corrupt(&format!("options of {gid}"), e))?,
        result: text(row, "result")?,
        rollback_reason: text(row, "rollback_reason")?,
        create_time: Millis(row.try_get("create_time")?),
        update_time: Millis(row.try_get("update_time")?),
        finish_time: row.try_get::<Option<i64>, _>("finish_time")?.map(Millis),
        rollback_time: row.try_get::<Option<i64>, _>("rollback_time")?.map(Millis),
        next_cron_interval: row.try_get("next_cron_interval")?,
        next_cron_time: row.try_get::<Option<i64>, _>("next_cron_time")?.map(Millis),
        owner: text(row, "owner")?,
        version: Version(u64::try_from(version).map_err(|e| corrupt("version", e))?),
        partition: Partition(u16::try_from(partition).map_err(|e| corrupt("partition_id", e))?),
        gid,
    })
}

fn decode_branch(row: &AnyRow) -> Result<Branch> {
    let gid = text(row, "gid")?;
    Ok(Branch {
        id: row.try_get("id")?,
        gid: Gid::parse(&gid).map_err(|e| corrupt("branch gid", e))?,
        branch_id: BranchId::new(text(row, "branch_id")?),
        op: text(row, "op")?.parse().map_err(|e| corrupt("op", e))?,
        url: text(row, "url")?,
        bin_data: row.try_get("bin_data")?,
        status: text(row, "status")?.parse().map_err(|e| corrupt("branch status", e))?,
        create_time: Millis(row.try_get("create_time")?),
        update_time: Millis(row.try_get("update_time")?),
        finish_time: row.try_get::<Option<i64>, _>("finish_time")?.map(Millis),
        rollback_time: row.try_get::<Option<i64>, _>("rollback_time")?.map(Millis),
    })
}

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

fn options_json(txn_options: &crate::model::TransOptions) -> Result<String> {
    serde_json::to_string(txn_options).map_err(|e| corrupt("options", e))
}

impl SqlStore {
    async fn insert_txn(&self, tx: &mut Transaction<'static, Any>, txn: &GlobalTxn, branches: &[Branch]) -> Result<WriteOutcome> {
        let sql = format!(
            "INSERT INTO braid_txn ({}) VALUES ({})",
            TXN_COLS.trim_start_matches("id, "),
            placeholders(18)
        );
        let inserted = sqlx::query(&sql)
            .bind(txn.gid.as_str())
            .bind(txn.trans_type.as_str())
            .bind(txn.status.as_str())
            .bind(txn.query_prepared.as_str())
            .bind(txn.protocol.as_str())
            .bind(txn.custom_data.as_str())
            .bind(options_json(&txn.options)?)
            .bind(txn.result.as_str())
            .bind(txn.rollback_reason.as_str())
            .bind(txn.create_time.0)
            .bind(txn.update_time.0)
            .bind(txn.finish_time.map(|m| m.0))
            .bind(txn.rollback_time.map(|m| m.0))
            .bind(txn.next_cron_interval)
            .bind(if txn.status.is_final() { None } else { txn.next_cron_time.map(|m| m.0) })
            .bind(txn.owner.as_str())
            .bind(1_i64)
            .bind(i64::from(txn.partition.0))
            .execute(&mut **tx)
            .await;
        match inserted {
            Ok(_) => {}
            Err(e) if self.dialect.is_duplicate_key(&e) => return Ok(WriteOutcome::Conflict),
            Err(e) => return Err(e.into()),
        }
        self.insert_branches(tx, branches).await?;
        Ok(WriteOutcome::Applied(Version(1)))
    }

    async fn insert_branches(&self, tx: &mut Transaction<'static, Any>, branches: &[Branch]) -> Result<()> {
        for chunk in branches.chunks(INSERT_CHUNK) {
            let row = format!("({})", placeholders(10));
            let values = vec![row; chunk.len()].join(", ");
            let sql = format!("INSERT INTO braid_branch ({}) VALUES {values}", BRANCH_COLS.trim_start_matches("id, "));
            let mut q = sqlx::query(&sql);
            for b in chunk {
                q = q
                    .bind(b.gid.as_str())
                    .bind(b.branch_id.as_str())
                    .bind(b.op.as_str())
                    .bind(b.url.as_str())
                    .bind(b.bin_data.as_slice())
                    .bind(b.status.as_str())
                    .bind(b.create_time.0)
                    .bind(b.update_time.0)
                    .bind(b.finish_time.map(|m| m.0))
                    .bind(b.rollback_time.map(|m| m.0));
            }
            q.execute(&mut **tx).await?;
        }
        Ok(())
    }

    async fn update_txn(&self, tx: &mut Transaction<'static, Any>, u: &TxnUpdate) -> Result<WriteOutcome> {
        // A duplicate new branch makes the whole update a no-op; check before changing anything.
        if !u.new_branches.is_empty() {
            let ids: Vec<&str> = u.new_branches.iter().map(|b| b.branch_id.as_str()).collect();
            let sql = format!(
                "SELECT branch_id, op FROM braid_branch WHERE gid = ? AND branch_id IN ({})",
                placeholders(ids.len())
            );
            let mut q = sqlx::query(&sql).bind(u.gid.as_str());
            for id in &ids {
                q = q.bind(*id);
            }
            let existing = q.fetch_all(&mut **tx).await?;
            for row in &existing {
                let (bid, op) = (text(row, "branch_id")?, text(row, "op")?);
                if u.new_branches.iter().any(|b| b.branch_id.as_str() == bid && b.op.as_str() == op) {
                    return Ok(WriteOutcome::DuplicateBranch);
                }
            }
        }

        let mut sets = vec!["version = version + 1", "update_time = ?"];
        let final_status = u.status.filter(|s| s.is_final());
        if u.status.is_some() {
            sets.push("status = ?");
        }
        match final_status {
            Some(GlobalStatus::Succeed) => sets.extend(["finish_time = ?", "next_cron_time = NULL"]),
            Some(_) => sets.extend(["rollback_time = ?", "next_cron_time = NULL"]),
            None => {
                if matches!(u.schedule, Schedule::At { .. }) {
                    sets.extend(["next_cron_interval = ?", "next_cron_time = ?"]);
                }
            }
        }
        if u.rollback_reason.is_some() {
            sets.push("rollback_reason = ?");
        }
        if u.result.is_some() {
            sets.push("result = ?");
        }
        if u.options.is_some() {
            sets.push("options = ?");
        }
        let version_cond = if u.expect_version.is_some() { " AND version = ?" } else { "" };
        let sql = format!("UPDATE braid_txn SET {} WHERE gid = ? AND status = ?{version_cond}", sets.join(", "));
        let mut q = sqlx::query(&sql).bind(u.now.0);
        if let Some(status) = u.status {
            q = q.bind(status.as_str());
        }
        match final_status {
            Some(_) => q = q.bind(u.now.0),
            None => {
                if let Schedule::At { interval, at } = u.schedule {
                    q = q.bind(interval).bind(at.0);
                }
            }
        }
        if let Some(reason) = &u.rollback_reason {
            q = q.bind(reason.as_str());
        }
        if let Some(result) = &u.result {
            q = q.bind(result.as_str());
        }
        if let Some(options) = &u.options {
            q = q.bind(options_json(options)?);
        }
        q = q.bind(u.gid.as_str()).bind(u.expect_status.as_str());
        if let Some(v) = u.expect_version {
            q = q.bind(v.0 as i64);
        }
        if q.execute(&mut **tx).await?.rows_affected() == 0 {
            return Ok(WriteOutcome::Conflict);
        }

        for b in &u.branches {
            let time_col = match b.status {
                BranchStatus::Succeed => ", finish_time = ?",
                BranchStatus::Failed => ", rollback_time = ?",
                BranchStatus::Prepared => "",
            };
            let sql = format!(
                "UPDATE braid_branch SET status = ?, update_time = ?{time_col} WHERE gid = ? AND branch_id = ? AND op = ?"
            );
            let mut q = sqlx::query(&sql).bind(b.status.as_str()).bind(u.now.0);
            if !time_col.is_empty() {
                q = q.bind(u.now.0);
            }
            q.bind(u.gid.as_str()).bind(b.branch_id.as_str()).bind(b.op.as_str()).execute(&mut **tx).await?;
        }
        self.insert_branches(tx, &u.new_branches).await?;

        let version = match u.expect_version {
            Some(v) => Version(v.0 + 1),
            None => {
                let row = sqlx::query("SELECT version FROM braid_txn WHERE gid = ?")
                    .bind(u.gid.as_str())
                    .fetch_one(&mut **tx)
                    .await?;
                Version(u64::try_from(row.try_get::<i64, _>("version")?).map_err(|e| corrupt("version", e))?)
            }
        };
        Ok(WriteOutcome::Applied(version))
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
impl Store for SqlStore {
    fn kind(&self) -> &'static str {
        self.dialect.name()
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn db_now(&self) -> Result<Millis> {
        let sql = match self.dialect {
            Dialect::Sqlite => "SELECT CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER) AS now_ms",
            Dialect::Mysql => "SELECT CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED) AS now_ms",
        };
        let row = sqlx::query(sql).fetch_one(&self.pool).await?;
        Ok(Millis(row.try_get("now_ms")?))
    }

    async fn apply(&self, writes: &[Write]) -> Result<Vec<WriteOutcome>> {
        let mut tx = self.pool.begin_with(self.dialect.begin()).await?;
        let mut outcomes = Vec::with_capacity(writes.len());
        for w in writes {
            let outcome = match w {
                Write::Insert { txn, branches } => self.insert_txn(&mut tx, txn, branches).await?,
                Write::Update(u) => self.update_txn(&mut tx, u).await?,
            };
            outcomes.push(outcome);
        }
        tx.commit().await?;
        Ok(outcomes)
    }

    async fn find_txn(&self, gid: &Gid) -> Result<Option<GlobalTxn>> {
        let sql = format!("SELECT {TXN_COLS} FROM braid_txn WHERE gid = ?");
        let row = sqlx::query(&sql).bind(gid.as_str()).fetch_optional(&self.pool).await?;
        row.as_ref().map(decode_txn).transpose()
    }

    async fn find_branches(&self, gid: &Gid) -> Result<Vec<Branch>> {
        let sql = format!("SELECT {BRANCH_COLS} FROM braid_branch WHERE gid = ? ORDER BY id");
        let rows = sqlx::query(&sql).bind(gid.as_str()).fetch_all(&self.pool).await?;
        rows.iter().map(decode_branch).collect()
    }

    async fn scan_txns(&self, f: &ScanFilter) -> Result<Vec<GlobalTxn>> {
        let mut conds = vec!["1 = 1"];
        if f.before_id.is_some() {
            conds.push("id < ?");
        }
        if f.status.is_some() {
            conds.push("status = ?");
        }
        if f.trans_type.is_some() {
            conds.push("trans_type = ?");
        }
        if f.create_time_start.is_some() {
            conds.push("create_time >= ?");
        }
        if f.create_time_end.is_some() {
            conds.push("create_time <= ?");
        }
        let sql = format!("SELECT {TXN_COLS} FROM braid_txn WHERE {} ORDER BY id DESC LIMIT ?", conds.join(" AND "));
        let mut q = sqlx::query(&sql);
        if let Some(id) = f.before_id {
            q = q.bind(id);
        }
        if let Some(s) = f.status {
            q = q.bind(s.as_str());
        }
        if let Some(t) = f.trans_type {
            q = q.bind(t.as_str());
        }
        if let Some(t) = f.create_time_start {
            q = q.bind(t.0);
        }
        if let Some(t) = f.create_time_end {
            q = q.bind(t.0);
        }
        let rows = q.bind(i64::from(f.limit)).fetch_all(&self.pool).await?;
        rows.iter().map(decode_txn).collect()
    }

    async fn claim_due(&self, c: &Claim) -> Result<Vec<GlobalTxn>> {
        let pfilter = Self::partition_filter(&c.partitions);
        match self.dialect {
            Dialect::Sqlite => {
                // One statement: atomic under SQLite's single-writer lock.
                let sql = format!(
                    "UPDATE braid_txn SET next_cron_time = ?, owner = ? WHERE id IN (SELECT id FROM braid_txn \
                     WHERE next_cron_time <= ?{pfilter} ORDER BY next_cron_time LIMIT ?) RETURNING {TXN_COLS}"
                );
                let q = sqlx::query(&sql).bind(c.lease_until.0).bind(c.owner.as_str()).bind(c.now.0);
                let rows = bind_partitions(q, &c.partitions).bind(i64::from(c.limit)).fetch_all(&self.pool).await?;
                rows.iter().map(decode_txn).collect()
            }
            Dialect::Mysql => {
                let mut tx = self.pool.begin().await?;
                let sql = format!(
                    "SELECT id FROM braid_txn WHERE next_cron_time <= ?{pfilter} ORDER BY next_cron_time LIMIT ? \
                     FOR UPDATE SKIP LOCKED"
                );
                let q = sqlx::query(&sql).bind(c.now.0);
                let ids: Vec<i64> = bind_partitions(q, &c.partitions)
                    .bind(i64::from(c.limit))
                    .fetch_all(&mut *tx)
                    .await?
                    .iter()
                    .map(|r| r.try_get("id"))
                    .collect::<Result<_, _>>()?;
                if ids.is_empty() {
                    tx.commit().await?;
                    return Ok(Vec::new());
                }
                let in_list = placeholders(ids.len());
                let sql = format!("UPDATE braid_txn SET next_cron_time = ?, owner = ? WHERE id IN ({in_list})");
                let mut q = sqlx::query(&sql).bind(c.lease_until.0).bind(c.owner.as_str());
                for id in &ids {
                    q = q.bind(*id);
                }
                q.execute(&mut *tx).await?;
                let sql = format!("SELECT {TXN_COLS} FROM braid_txn WHERE id IN ({in_list})");
                let mut q = sqlx::query(&sql);
                for id in &ids {
                    q = q.bind(*id);
                }
                let rows = q.fetch_all(&mut *tx).await?;
                tx.commit().await?;
                rows.iter().map(decode_txn).collect()
            }
        }
    }

    async fn reset_cron_time(&self, after: Millis, now: Millis, limit: u32) -> Result<u64> {
        let sql = match self.dialect {
            Dialect::Sqlite => {
                "UPDATE braid_txn SET next_cron_time = ?, update_time = ? WHERE id IN \
                 (SELECT id FROM braid_txn WHERE next_cron_time > ? LIMIT ?)"
            }
            Dialect::Mysql => "UPDATE braid_txn SET next_cron_time = ?, update_time = ? WHERE next_cron_time > ? LIMIT ?",
        };
        let done = sqlx::query(sql)
            .bind(now.0)
            .bind(now.0)
            .bind(after.0)
            .bind(i64::from(limit))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn reset_next_cron_time(&self, gid: &Gid, now: Millis) -> Result<bool> {
        let found = sqlx::query("SELECT id FROM braid_txn WHERE gid = ?")
            .bind(gid.as_str())
            .fetch_optional(&self.pool)
            .await?;
        if found.is_none() {
            return Ok(false);
        }
        sqlx::query(
            "UPDATE braid_txn SET next_cron_time = ?, update_time = ? WHERE gid = ? AND next_cron_time IS NOT NULL",
        )
        .bind(now.0)
        .bind(now.0)
        .bind(gid.as_str())
        .execute(&self.pool)
        .await?;
        Ok(true)
    }

    async fn delete_finished(&self, before: Millis, limit: u32) -> Result<u64> {
        let mut tx = self.pool.begin_with(self.dialect.begin()).await?;
        let gids: Vec<String> = sqlx::query(
            "SELECT gid FROM braid_txn WHERE status IN ('succeed', 'failed') AND update_time < ? LIMIT ?",
        )
        .bind(before.0)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| text(r, "gid"))
        .collect::<Result<_>>()?;
        if gids.is_empty() {
            tx.commit().await?;
            return Ok(0);
        }
        let in_list = placeholders(gids.len());
        for table in ["braid_branch", "braid_txn"] {
            let sql = format!("DELETE FROM {table} WHERE gid IN ({in_list})");
            let mut q = sqlx::query(&sql);
            for g in &gids {
                q = q.bind(g.as_str());
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(gids.len() as u64)
    }

    async fn kv_scan(&self, cat: &str, after_id: Option<i64>, limit: u32) -> Result<Vec<KvRecord>> {
        let sql = format!("SELECT {KV_COLS} FROM braid_kv WHERE cat = ? AND id > ? ORDER BY id LIMIT ?");
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
        let row = sqlx::query(&sql).bind(cat).bind(k).fetch_optional(&self.pool).await?;
        row.as_ref().map(decode_kv).transpose()
    }

    async fn kv_create(&self, cat: &str, k: &str, v: &str, now: Millis) -> Result<bool> {
        let done = sqlx::query("INSERT INTO braid_kv (cat, k, v, version, create_time, update_time) VALUES (?, ?, ?, 1, ?, ?)")
            .bind(cat)
            .bind(k)
            .bind(v)
            .bind(now.0)
            .bind(now.0)
            .execute(&self.pool)
            .await;
        match done {
            Ok(_) => Ok(true),
            Err(e) if self.dialect.is_duplicate_key(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn kv_update(&self, cat: &str, k: &str, v: &str, expect_version: i64, now: Millis) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE braid_kv SET v = ?, version = version + 1, update_time = ? WHERE cat = ? AND k = ? AND version = ?",
        )
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
        let done = sqlx::query("DELETE FROM braid_kv WHERE cat = ? AND k = ?").bind(cat).bind(k).execute(&self.pool).await?;
        Ok(done.rows_affected() > 0)
    }
}
