//! The SQL implementation of [`Store`], shared by the SQLite and MySQL backends through sqlx's `Any` driver.
//! The backends differ only in the [`Dialect`]: how a write transaction begins, how due rows are claimed,
//! and which error codes mean "duplicate key".

use async_trait::async_trait;
use sqlx::AnyPool;
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use super::{
    Claim, ClaimScope, Claimed, Error, LeaseRecord, PartitionFence, Result, ScanFilter, Schedule,
    Store, TxnUpdate, Write, WriteOutcome,
};
use crate::model::{
    Branch, BranchId, BranchStatus, Fence, Gid, GlobalStatus, GlobalTxn, KvRecord, LeaseEpoch,
    Millis, Partition, Version,
};

/// What differs between SQL databases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// SQLite: one writer at a time; `BEGIN IMMEDIATE` takes the write lock up front; `UPDATE .. RETURNING`.
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    Sqlite,
    /// MySQL 8 / MariaDB 10.6+: row locks; claims use `FOR UPDATE SKIP LOCKED`.
    #[cfg_attr(not(feature = "mysql"), allow(dead_code))]
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

    /// Appended to a `SELECT` that must keep the rows it read unchanged until commit. SQLite needs nothing:
    /// its write transactions (`BEGIN IMMEDIATE`) exclude every other writer.
    fn share_lock(self) -> &'static str {
        match self {
            Self::Sqlite => "",
            Self::Mysql => " LOCK IN SHARE MODE",
        }
    }

    /// An `INSERT` that skips rows whose key exists.
    fn insert_ignore(self) -> &'static str {
        match self {
            Self::Sqlite => "INSERT OR IGNORE INTO",
            Self::Mysql => "INSERT IGNORE INTO",
        }
    }
}

/// Whether `err` is a unique-key violation (a gid, branch or KV key that exists). Asks the driver's error
/// kind: MySQL's `code()` is the SQLSTATE (`23000` for many constraint errors), not the error number.
fn is_duplicate_key(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}

const TXN_COLS: &str = "id, gid, trans_type, status, query_prepared, protocol, custom_data, options, result, \
    rollback_reason, create_time, update_time, finish_time, rollback_time, next_cron_interval, next_cron_time, \
    owner, version, partition_id";

const BRANCH_COLS: &str = "id, gid, branch_id, op, url, bin_data, status, create_time, update_time, finish_time, rollback_time";

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

/// A text column. sqlx's `Any` driver reports MySQL `TEXT` columns as BLOB and refuses to decode them as
/// `String`, so bytes are accepted too (and must be UTF-8).
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
        trans_type: text(row, "trans_type")?
            .parse()
            .map_err(|e| corrupt("trans_type", e))?,
        status: text(row, "status")?
            .parse()
            .map_err(|e| corrupt("status", e))?,
        query_prepared: text(row, "query_prepared")?,
        protocol: text(row, "protocol")?
            .parse()
            .map_err(|e| corrupt("protocol", e))?,
        custom_data: text(row, "custom_data")?,
        options: serde_json::from_str(&options)
            .map_err(|e| corrupt(&format!("options of {gid}"), e))?,
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
        status: text(row, "status")?
            .parse()
            .map_err(|e| corrupt("branch status", e))?,
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

fn options_json(txn_options: &crate::model::TransOptions) -> Result<String> {
    serde_json::to_string(txn_options).map_err(|e| corrupt("options", e))
}

impl SqlStore {
    async fn insert_txn(
        &self,
        tx: &mut Transaction<'static, Any>,
        txn: &GlobalTxn,
        branches: &[Branch],
    ) -> Result<WriteOutcome> {
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
            .bind(if txn.status.is_final() {
                None
            } else {
                txn.next_cron_time.map(|m| m.0)
            })
            .bind(txn.owner.as_str())
            .bind(1_i64)
            .bind(i64::from(txn.partition.0))
            .execute(&mut **tx)
            .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_duplicate_key(&e) => return Ok(WriteOutcome::Conflict),
            Err(e) => return Err(e.into()),
        }
        self.insert_branches(tx, branches).await?;
        Ok(WriteOutcome::Applied(Version(1)))
    }

    async fn insert_branches(
        &self,
        tx: &mut Transaction<'static, Any>,
        branches: &[Branch],
    ) -> Result<(), sqlx::Error> {
        for chunk in branches.chunks(INSERT_CHUNK) {
            let row = format!("({})", placeholders(10));
            let values = vec![row; chunk.len()].join(", ");
            let sql = format!(
                "INSERT INTO braid_branch ({}) VALUES {values}",
                BRANCH_COLS.trim_start_matches("id, ")
            );
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

    /// One conditional update inside the batch's transaction.
    ///
    /// The compare-and-set `UPDATE` of the row runs first, so a failed condition is `Conflict` whatever else
    /// the write carries; on MySQL it also locks the row, which serializes concurrent writers of one gid. New
    /// branches are then inserted and the unique key `(gid, branch_id, op)` decides duplicates (a `SELECT`
    /// check could read a stale snapshot under MySQL's repeatable read). The write runs under a savepoint, so
    /// a duplicate undoes all of it (`DuplicateBranch`) and leaves the rest of the batch alone.
    async fn update_txn(
        &self,
        tx: &mut Transaction<'static, Any>,
        u: &TxnUpdate,
    ) -> Result<WriteOutcome> {
        if u.new_branches.is_empty() {
            return self.update_row_and_branches(tx, u).await;
        }
        sqlx::query("SAVEPOINT braid_write")
            .execute(&mut **tx)
            .await?;
        let outcome = match self.update_row_and_branches(tx, u).await? {
            WriteOutcome::Applied(version) => match self.insert_branches(tx, &u.new_branches).await
            {
                Ok(()) => WriteOutcome::Applied(version),
                Err(e) if is_duplicate_key(&e) => {
                    sqlx::query("ROLLBACK TO SAVEPOINT braid_write")
                        .execute(&mut **tx)
                        .await?;
                    WriteOutcome::DuplicateBranch
                }
                Err(e) => return Err(e.into()),
            },
            unchanged @ (WriteOutcome::Conflict | WriteOutcome::DuplicateBranch) => unchanged,
        };
        sqlx::query("RELEASE SAVEPOINT braid_write")
            .execute(&mut **tx)
            .await?;
        Ok(outcome)
    }

    /// The compare-and-set of the row and the status changes of existing branches (not the new branches).
    async fn update_row_and_branches(
        &self,
        tx: &mut Transaction<'static, Any>,
        u: &TxnUpdate,
    ) -> Result<WriteOutcome> {
        if let Some(fence) = u.fence
            && !self.stale_fences(tx, &[fence]).await?.is_empty()
        {
            return Ok(WriteOutcome::Conflict);
        }
        // The status the row has after this write: when it is final, the row is never scheduled (also for an
        // update of a row that already was final).
        let resulting = u.status.unwrap_or(u.expect_status);
        let final_time_col = match u.status {
            Some(GlobalStatus::Succeed) => Some("finish_time = ?"),
            Some(GlobalStatus::Failed) => Some("rollback_time = ?"),
            Some(GlobalStatus::Prepared | GlobalStatus::Submitted | GlobalStatus::Aborting)
            | None => None,
        };
        let schedule = match u.schedule {
            Schedule::At { interval, at } if !resulting.is_final() => Some((interval, at)),
            Schedule::At { .. } | Schedule::Keep => None,
        };

        let mut sets = vec!["version = version + 1", "update_time = ?"];
        if u.status.is_some() {
            sets.push("status = ?");
        }
        sets.extend(final_time_col);
        if resulting.is_final() {
            sets.push("next_cron_time = NULL");
        } else if schedule.is_some() {
            sets.extend(["next_cron_interval = ?", "next_cron_time = ?"]);
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
        let version_cond = if u.expect_version.is_some() {
            " AND version = ?"
        } else {
            ""
        };
        let sql = format!(
            "UPDATE braid_txn SET {} WHERE gid = ? AND status = ?{version_cond}",
            sets.join(", ")
        );
        let mut q = sqlx::query(&sql).bind(u.now.0);
        if let Some(status) = u.status {
            q = q.bind(status.as_str());
        }
        if final_time_col.is_some() {
            q = q.bind(u.now.0);
        }
        if let Some((interval, at)) = schedule {
            q = q.bind(interval).bind(at.0);
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
            q = q.bind(
                i64::try_from(v.0)
                    .map_err(|e| corrupt(&format!("expected version of {}", u.gid), e))?,
            );
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
            q.bind(u.gid.as_str())
                .bind(b.branch_id.as_str())
                .bind(b.op.as_str())
                .execute(&mut **tx)
                .await?;
        }

        let version = match u.expect_version {
            Some(v) => Version(v.0 + 1),
            None => {
                let row = sqlx::query("SELECT version FROM braid_txn WHERE gid = ?")
                    .bind(u.gid.as_str())
                    .fetch_one(&mut **tx)
                    .await?;
                Version(
                    u64::try_from(row.try_get::<i64, _>("version")?)
                        .map_err(|e| corrupt("version", e))?,
                )
            }
        };
        Ok(WriteOutcome::Applied(version))
    }

    /// The partitions of `fences` whose stored epoch is another (or that have no fencing row). On MySQL the
    /// partition rows stay share-locked until the transaction ends, so no epoch bump can commit in between:
    /// the check holds for every write made in the same transaction.
    async fn stale_fences(
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
            Dialect::Sqlite => {
                // One statement under SQLite's single-writer lock.
                let sql = format!(
                    "UPDATE braid_txn SET next_cron_time = ?, owner = ? WHERE id IN (SELECT id FROM braid_txn \
                     WHERE next_cron_time <= ?{pfilter} ORDER BY next_cron_time LIMIT ?) RETURNING {TXN_COLS}"
                );
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
                    "UPDATE braid_txn SET next_cron_time = ?, owner = ? WHERE id IN ({in_list})"
                );
                let mut q = sqlx::query(&sql)
                    .bind(c.lease_until.0)
                    .bind(c.owner.as_str());
                for id in &ids {
                    q = q.bind(*id);
                }
                q.execute(&mut **tx).await?;
                let sql = format!("SELECT {TXN_COLS} FROM braid_txn WHERE id IN ({in_list})");
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
            Dialect::Sqlite => {
                "SELECT CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER) AS now_ms"
            }
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
        let row = sqlx::query(&sql)
            .bind(gid.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(decode_txn).transpose()
    }

    async fn find_branches(&self, gid: &Gid) -> Result<Vec<Branch>> {
        let sql = format!("SELECT {BRANCH_COLS} FROM braid_branch WHERE gid = ? ORDER BY id");
        let rows = sqlx::query(&sql)
            .bind(gid.as_str())
            .fetch_all(&self.pool)
            .await?;
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
        let sql = format!(
            "SELECT {TXN_COLS} FROM braid_txn WHERE {} ORDER BY id DESC LIMIT ?",
            conds.join(" AND ")
        );
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
            "{} braid_meta (k, v) VALUES ('partitions', ?)",
            self.dialect.insert_ignore()
        );
        sqlx::query(&sql)
            .bind(count.to_string())
            .execute(&mut *tx)
            .await?;
        let row = sqlx::query("SELECT v FROM braid_meta WHERE k = 'partitions'")
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
                "{} braid_partition (partition_id) VALUES {values}",
                self.dialect.insert_ignore()
            );
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
        let bumped = sqlx::query(
            "UPDATE braid_partition SET epoch = epoch + 1, owner = ?, fenced_at = ? WHERE partition_id = ?",
        )
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
        let row = sqlx::query("SELECT epoch FROM braid_partition WHERE partition_id = ?")
            .bind(i64::from(p.0))
            .fetch_one(&mut *tx)
            .await?;
        let epoch = decode_epoch(&row)?;
        tx.commit().await?;
        Ok(epoch)
    }

    async fn partition_fences(&self) -> Result<Vec<PartitionFence>> {
        let rows = sqlx::query(
            "SELECT partition_id, epoch, owner, fenced_at FROM braid_partition ORDER BY partition_id",
        )
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
        let taken = sqlx::query(
            "UPDATE braid_lease SET \
             transitions = transitions + CASE WHEN holder = ? THEN 0 ELSE 1 END, \
             acquired_at = CASE WHEN holder = ? THEN acquired_at ELSE ? END, \
             renewed_at = ?, expires_at = ?, holder = ? \
             WHERE name = ? AND (holder = ? OR holder = '' OR expires_at <= ?)",
        )
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
        let created = sqlx::query(
            "INSERT INTO braid_lease (name, holder, acquired_at, renewed_at, expires_at, transitions) \
             VALUES (?, ?, ?, ?, ?, 1)",
        )
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
        let done = sqlx::query("DELETE FROM braid_lease WHERE name = ? AND holder = ?")
            .bind(name)
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn lease_list(&self, prefix: &str, now: Millis) -> Result<Vec<LeaseRecord>> {
        let rows = sqlx::query(
            "SELECT name, holder, acquired_at, renewed_at, expires_at, transitions FROM braid_lease \
             WHERE SUBSTR(name, 1, ?) = ? AND expires_at > ? ORDER BY name",
        )
        .bind(i64::try_from(prefix.chars().count()).unwrap_or(i64::MAX))
        .bind(prefix)
        .bind(now.0)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decode_lease).collect()
    }

    async fn reset_cron_time(&self, after: Millis, now: Millis, limit: u32) -> Result<u64> {
        let sql = match self.dialect {
            Dialect::Sqlite => {
                "UPDATE braid_txn SET next_cron_time = ?, update_time = ? WHERE id IN \
                 (SELECT id FROM braid_txn WHERE next_cron_time > ? LIMIT ?)"
            }
            Dialect::Mysql => {
                "UPDATE braid_txn SET next_cron_time = ?, update_time = ? WHERE next_cron_time > ? LIMIT ?"
            }
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
        // Unfinished by status, not by `next_cron_time IS NOT NULL`: an unfinished row without a schedule is
        // scheduled too, and a final row never is.
        let done = sqlx::query(
            "UPDATE braid_txn SET next_cron_time = ?, update_time = ? \
             WHERE gid = ? AND status NOT IN ('succeed', 'failed')",
        )
        .bind(now.0)
        .bind(now.0)
        .bind(gid.as_str())
        .execute(&self.pool)
        .await?;
        if done.rows_affected() > 0 {
            return Ok(true);
        }
        let found = sqlx::query("SELECT id FROM braid_txn WHERE gid = ?")
            .bind(gid.as_str())
            .fetch_optional(&self.pool)
            .await?;
        Ok(found.is_some())
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
        .collect::<Result<_, _>>()?;
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
        let sql =
            format!("SELECT {KV_COLS} FROM braid_kv WHERE cat = ? AND id > ? ORDER BY id LIMIT ?");
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
        let row = sqlx::query(&sql)
            .bind(cat)
            .bind(k)
            .fetch_optional(&self.pool)
            .await?;
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
        let done = sqlx::query("DELETE FROM braid_kv WHERE cat = ? AND k = ?")
            .bind(cat)
            .bind(k)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}
