//! [`TxnStore`] on SQL: a batch is applied in one database transaction, with as few statements as it can
//! (multi-row inserts, grouped branch status changes), and gives exactly what applying its writes one by one
//! would.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::OnceLock;

use async_trait::async_trait;
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use super::{
    AnyQuery, Dialect, INSERT_CHUNK, SqlStore, corrupt, is_duplicate_key, placeholders, text,
};
use crate::model::{
    Branch, BranchId, BranchStatus, Gid, GlobalStatus, GlobalTxn, Millis, Partition, Version,
};
use crate::store::{
    BranchUpdate, Result, ScanFilter, Schedule, TxnStore, TxnUpdate, Write, WriteOutcome,
};

/// The columns of a `braid_txn` row.
pub(super) const TXN_COLS: &str = "id, gid, trans_type, status, query_prepared, protocol, custom_data, \
    options, result, rollback_reason, create_time, update_time, finish_time, rollback_time, \
    next_cron_interval, next_cron_time, owner, version, partition_id";

const BRANCH_COLS: &str = "id, gid, branch_id, op, url, bin_data, status, create_time, update_time, finish_time, rollback_time";

/// One statement text per power-of-two chunk length up to [`INSERT_CHUNK`], each built on first use.
type SqlSlots = [OnceLock<String>; INSERT_CHUNK.ilog2() as usize + 1];

/// The statement text for a chunk of `rows` rows: from `slots` when `rows` is a power of two (what
/// [`pow2_chunks`] makes), built once per process instead of once per batch; built afresh otherwise.
fn chunk_sql(
    slots: &'static SqlSlots,
    rows: usize,
    build: fn(usize) -> String,
) -> Cow<'static, str> {
    if rows.is_power_of_two()
        && let Some(slot) = slots.get(rows.trailing_zeros() as usize)
    {
        return Cow::Borrowed(slot.get_or_init(|| build(rows)).as_str());
    }
    Cow::Owned(build(rows))
}

static TXN_INSERT_SQL: SqlSlots = [const { OnceLock::new() }; INSERT_CHUNK.ilog2() as usize + 1];
static BRANCH_INSERT_SQL: SqlSlots = [const { OnceLock::new() }; INSERT_CHUNK.ilog2() as usize + 1];
/// Branch status changes: to `succeed`, to `failed`, to `prepared`.
static BRANCH_SUCCEED_SQL: SqlSlots =
    [const { OnceLock::new() }; INSERT_CHUNK.ilog2() as usize + 1];
static BRANCH_FAILED_SQL: SqlSlots = [const { OnceLock::new() }; INSERT_CHUNK.ilog2() as usize + 1];
static BRANCH_PREPARED_SQL: SqlSlots =
    [const { OnceLock::new() }; INSERT_CHUNK.ilog2() as usize + 1];

/// Splits `n` rows into chunks whose lengths are powers of two (largest first), each at most `max`.
///
/// Every distinct statement text is a prepared statement on the connection. With chunks of any length,
/// each batch size would prepare (and evict from sqlx's per-connection statement cache) a statement of its
/// own, costing an extra round trip per statement; with powers of two a connection keeps about a dozen.
fn pow2_chunks(mut n: usize, max: usize) -> Vec<usize> {
    let mut out = Vec::new();
    while n > 0 {
        let mut len = max.max(1).min(n);
        len = 1 << len.ilog2();
        out.push(len);
        n -= len;
    }
    out
}

/// Splits a batch into runs in which no gid appears twice, in order. Within such a run every write touches
/// rows of its own gid only, so its statements may be grouped (all inserts in one statement, all branch
/// status changes in another) without changing any outcome; a gid written twice starts a new run, so the
/// second write sees the first.
fn distinct_gid_runs(writes: &[Write]) -> Vec<std::ops::Range<usize>> {
    let mut runs = Vec::new();
    let mut start = 0;
    let mut seen: HashSet<&str> = HashSet::new();
    for (i, w) in writes.iter().enumerate() {
        if !seen.insert(w.gid().as_str()) {
            runs.push(start..i);
            start = i;
            seen.clear();
            seen.insert(w.gid().as_str());
        }
    }
    if start < writes.len() {
        runs.push(start..writes.len());
    }
    runs
}

pub(super) fn decode_txn(row: &AnyRow) -> Result<GlobalTxn> {
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

fn options_json(txn_options: &crate::model::TransOptions) -> Result<String> {
    serde_json::to_string(txn_options).map_err(|e| corrupt("options", e))
}

/// `INSERT INTO braid_txn` of `rows` rows.
fn txn_insert_sql(rows: usize) -> Cow<'static, str> {
    chunk_sql(&TXN_INSERT_SQL, rows, build_txn_insert_sql)
}

fn build_txn_insert_sql(rows: usize) -> String {
    let row = format!("({})", placeholders(18));
    format!(
        "INSERT INTO braid_txn ({}) VALUES {}",
        TXN_COLS.trim_start_matches("id, "),
        vec![row; rows].join(", ")
    )
}

/// Binds the 18 columns of a new row (its version is 1; a final row is never scheduled).
fn bind_txn<'q>(q: AnyQuery<'q>, txn: &'q GlobalTxn) -> Result<AnyQuery<'q>> {
    Ok(q.bind(txn.gid.as_str())
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
        .bind(i64::from(txn.partition.0)))
}

/// `UPDATE braid_branch` of the status of `rows` branches, each matched by its unique key.
fn branch_status_sql(time_col: &str, rows: usize) -> String {
    let matches = vec!["(gid = ? AND branch_id = ? AND op = ?)"; rows].join(" OR ");
    format!("UPDATE braid_branch SET status = ?, update_time = ?{time_col} WHERE {matches}")
}

/// One new branch row of a batch.
type NewBranch<'a> = &'a Branch;

/// A branch status change of an applied update: (gid, branch, op) and the new status at the write's time.
struct BranchChange<'a> {
    gid: &'a Gid,
    update: &'a BranchUpdate,
    now: Millis,
}

impl SqlStore {
    /// Inserts one transaction and its branches; `Conflict` when the gid exists. The fallback of
    /// [`SqlStore::insert_txns`] when a gid of the batch exists.
    async fn insert_txn(
        &self,
        tx: &mut Transaction<'static, Any>,
        txn: &GlobalTxn,
        branches: &[Branch],
    ) -> Result<WriteOutcome> {
        let sql = txn_insert_sql(1);
        let sql = self.cached_sql(sql);
        let inserted = bind_txn(sqlx::query(&sql), txn)?.execute(&mut **tx).await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_duplicate_key(&e) => return Ok(WriteOutcome::Conflict),
            Err(e) => return Err(e.into()),
        }
        self.insert_branches(tx, branches.iter()).await?;
        Ok(WriteOutcome::Applied(Version(1)))
    }

    /// Inserts the new transactions of a run of the batch (distinct gids) with as few statements as it can:
    /// their rows in multi-row `INSERT`s, then all their branches likewise. What the insert protects: once
    /// it commits, the transaction exists durably, so it may be processed (branches called) and the client
    /// may be told it was accepted; a crash after that leaves it to the recovery scan.
    ///
    /// A multi-row statement that meets an existing gid fails as a whole, and both databases undo just that
    /// statement; its rows and the later ones are then inserted one by one, so the existing gid is the
    /// `Conflict` of its own write only. Returns the outcome of each insert, in order.
    async fn insert_txns(
        &self,
        tx: &mut Transaction<'static, Any>,
        inserts: &[(&GlobalTxn, &[Branch])],
    ) -> Result<Vec<WriteOutcome>> {
        if self.dialect == Dialect::Postgres {
            return self.insert_txns_skipping(tx, inserts).await;
        }
        let mut outcomes = Vec::with_capacity(inserts.len());
        let mut done = 0;
        for len in pow2_chunks(inserts.len(), INSERT_CHUNK) {
            let chunk = &inserts[done..done + len];
            let sql = txn_insert_sql(len);
            let sql = self.cached_sql(sql);
            let mut q = sqlx::query(&sql);
            for (txn, _) in chunk {
                q = bind_txn(q, txn)?;
            }
            match q.execute(&mut **tx).await {
                Ok(_) => {
                    outcomes.extend(chunk.iter().map(|_| WriteOutcome::Applied(Version(1))));
                    done += len;
                }
                Err(e) if is_duplicate_key(&e) => break,
                Err(e) => return Err(e.into()),
            }
        }
        // Branches of the rows inserted together, together.
        let inserted = inserts[..done]
            .iter()
            .flat_map(|(_, branches)| branches.iter());
        self.insert_branches(tx, inserted).await?;
        for (txn, branches) in &inserts[done..] {
            outcomes.push(self.insert_txn(tx, txn, branches).await?);
        }
        Ok(outcomes)
    }

    /// [`SqlStore::insert_txns`] on PostgreSQL, where a failed statement would abort the whole transaction:
    /// each multi-row `INSERT` skips the gids that exist (`ON CONFLICT (gid) DO NOTHING`) and returns the
    /// ones it inserted; the others are `Conflict`, and only the branches of inserted rows are written.
    async fn insert_txns_skipping(
        &self,
        tx: &mut Transaction<'static, Any>,
        inserts: &[(&GlobalTxn, &[Branch])],
    ) -> Result<Vec<WriteOutcome>> {
        let mut outcomes = Vec::with_capacity(inserts.len());
        let mut done = 0;
        for len in pow2_chunks(inserts.len(), INSERT_CHUNK) {
            let chunk = &inserts[done..done + len];
            done += len;
            let sql = format!(
                "{} ON CONFLICT (gid) DO NOTHING RETURNING gid",
                txn_insert_sql(len)
            );
            let sql = self.sql(&sql);
            let mut q = sqlx::query(&sql);
            for (txn, _) in chunk {
                q = bind_txn(q, txn)?;
            }
            let inserted: HashSet<String> = q
                .fetch_all(&mut **tx)
                .await?
                .iter()
                .map(|row| text(row, "gid"))
                .collect::<Result<_>>()?;
            let mut branches = Vec::new();
            for (txn, txn_branches) in chunk {
                if inserted.contains(txn.gid.as_str()) {
                    outcomes.push(WriteOutcome::Applied(Version(1)));
                    branches.extend(txn_branches.iter());
                } else {
                    outcomes.push(WriteOutcome::Conflict);
                }
            }
            self.insert_branches(tx, branches.into_iter()).await?;
        }
        Ok(outcomes)
    }

    async fn insert_branches<'a>(
        &self,
        tx: &mut Transaction<'static, Any>,
        branches: impl Iterator<Item = NewBranch<'a>>,
    ) -> Result<(), sqlx::Error> {
        let branches: Vec<NewBranch<'a>> = branches.collect();
        let mut done = 0;
        for len in pow2_chunks(branches.len(), INSERT_CHUNK) {
            let chunk = &branches[done..done + len];
            done += len;
            let sql = chunk_sql(&BRANCH_INSERT_SQL, len, |rows| {
                let row = format!("({})", placeholders(10));
                format!(
                    "INSERT INTO braid_branch ({}) VALUES {}",
                    BRANCH_COLS.trim_start_matches("id, "),
                    vec![row; rows].join(", ")
                )
            });
            let sql = self.cached_sql(sql);
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

    /// The branch status changes of every update applied in a run of the batch, as few statements as
    /// possible: one per distinct (new status, time), each matching its branches by their unique key. What
    /// they protect: a branch result recorded with the status it justifies (e.g. every action `succeed` with
    /// the saga `succeed`), so a later pass does not call that branch again. When a write names the same
    /// branch twice, the last change wins, as if applied one after the other.
    async fn update_branch_statuses(
        &self,
        tx: &mut Transaction<'static, Any>,
        changes: &[BranchChange<'_>],
    ) -> Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut last: HashMap<(&str, &str, &str), usize> = HashMap::new();
        for (i, c) in changes.iter().enumerate() {
            last.insert(
                (
                    c.gid.as_str(),
                    c.update.branch_id.as_str(),
                    c.update.op.as_str(),
                ),
                i,
            );
        }
        let mut groups: BTreeMap<(&str, i64), Vec<&BranchChange<'_>>> = BTreeMap::new();
        for (i, c) in changes.iter().enumerate() {
            let key = (
                c.gid.as_str(),
                c.update.branch_id.as_str(),
                c.update.op.as_str(),
            );
            if last.get(&key) == Some(&i) {
                groups
                    .entry((c.update.status.as_str(), c.now.0))
                    .or_default()
                    .push(c);
            }
        }
        for ((_, now), group) in groups {
            let status = group[0].update.status;
            // The time column a status sets besides `update_time`, and the statement texts for it.
            let (slots, has_time_col, build): (_, _, fn(usize) -> String) = match status {
                BranchStatus::Succeed => (&BRANCH_SUCCEED_SQL, true, |n| {
                    branch_status_sql(", finish_time = ?", n)
                }),
                BranchStatus::Failed => (&BRANCH_FAILED_SQL, true, |n| {
                    branch_status_sql(", rollback_time = ?", n)
                }),
                BranchStatus::Prepared => {
                    (&BRANCH_PREPARED_SQL, false, |n| branch_status_sql("", n))
                }
            };
            let mut done = 0;
            for len in pow2_chunks(group.len(), INSERT_CHUNK) {
                let chunk = &group[done..done + len];
                done += len;
                let sql = chunk_sql(slots, len, build);
                let sql = self.cached_sql(sql);
                let mut q = sqlx::query(&sql).bind(status.as_str()).bind(now);
                if has_time_col {
                    q = q.bind(now);
                }
                for c in chunk {
                    q = q
                        .bind(c.gid.as_str())
                        .bind(c.update.branch_id.as_str())
                        .bind(c.update.op.as_str());
                }
                q.execute(&mut **tx).await?;
            }
        }
        Ok(())
    }

    /// Applies a run of the batch in which every gid appears once: its inserts first (grouped), then its
    /// updates (one compare-and-set each), then the branch status changes of the applied updates (grouped).
    async fn apply_run(
        &self,
        tx: &mut Transaction<'static, Any>,
        writes: &[Write],
        outcomes: &mut [WriteOutcome],
    ) -> Result<()> {
        let (insert_idx, inserts): (Vec<usize>, Vec<(&GlobalTxn, &[Branch])>) = writes
            .iter()
            .enumerate()
            .filter_map(|(i, w)| match w {
                Write::Insert { txn, branches } => Some((i, (txn, branches.as_slice()))),
                Write::Update(_) => None,
            })
            .unzip();
        if !inserts.is_empty() {
            let inserted = self.insert_txns(tx, &inserts).await?;
            for (i, outcome) in insert_idx.into_iter().zip(inserted) {
                outcomes[i] = outcome;
            }
        }
        let mut changes = Vec::new();
        for (i, w) in writes.iter().enumerate() {
            let Write::Update(u) = w else { continue };
            let outcome = self.update_txn(tx, u).await?;
            if let WriteOutcome::Applied(_) = outcome {
                changes.extend(u.branches.iter().map(|b| BranchChange {
                    gid: &u.gid,
                    update: b,
                    now: u.now,
                }));
            }
            outcomes[i] = outcome;
        }
        self.update_branch_statuses(tx, &changes).await
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
        sqlx::query(self.stmt("SAVEPOINT braid_write"))
            .execute(&mut **tx)
            .await?;
        let outcome = match self.update_row_and_branches(tx, u).await? {
            WriteOutcome::Applied(version) => {
                match self.insert_branches(tx, u.new_branches.iter()).await {
                    Ok(()) => WriteOutcome::Applied(version),
                    Err(e) if is_duplicate_key(&e) => {
                        sqlx::query(self.stmt("ROLLBACK TO SAVEPOINT braid_write"))
                            .execute(&mut **tx)
                            .await?;
                        WriteOutcome::DuplicateBranch
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            unchanged @ (WriteOutcome::Conflict | WriteOutcome::DuplicateBranch) => unchanged,
        };
        sqlx::query(self.stmt("RELEASE SAVEPOINT braid_write"))
            .execute(&mut **tx)
            .await?;
        Ok(outcome)
    }

    /// The compare-and-set of the row. The status changes of its existing branches follow, grouped with
    /// those of the other writes of the run ([`SqlStore::update_branch_statuses`]), once it applied.
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

        // A status-only condition (no expected version) does not know the version it makes: the statement
        // returns it (MySQL: the OK packet's insert id, set by LAST_INSERT_ID(expr); SQLite: RETURNING),
        // instead of a SELECT afterwards.
        let (version_set, returning) = match (u.expect_version, self.dialect) {
            (Some(_), _) => ("version = version + 1", ""),
            (None, Dialect::Mysql) => ("version = LAST_INSERT_ID(version + 1)", ""),
            (None, Dialect::Sqlite | Dialect::Postgres) => {
                ("version = version + 1", " RETURNING version")
            }
        };
        let mut sets = vec![version_set, "update_time = ?"];
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
        if u.owner.is_some() {
            sets.push("owner = ?");
        }
        let version_cond = if u.expect_version.is_some() {
            " AND version = ?"
        } else {
            ""
        };
        let unclaimed_cond = if u.unclaimed_at.is_some() {
            " AND (owner = '' OR next_cron_time IS NULL OR next_cron_time <= ?)"
        } else {
            ""
        };
        let sql = format!(
            "UPDATE braid_txn SET {} WHERE gid = ? AND status = ?{version_cond}{unclaimed_cond}{returning}",
            sets.join(", ")
        );
        let sql = self.sql(&sql);
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
        if let Some(owner) = &u.owner {
            q = q.bind(owner.as_str());
        }
        q = q.bind(u.gid.as_str()).bind(u.expect_status.as_str());
        if let Some(v) = u.expect_version {
            q = q.bind(
                i64::try_from(v.0)
                    .map_err(|e| corrupt(&format!("expected version of {}", u.gid), e))?,
            );
        }
        if let Some(at) = u.unclaimed_at {
            q = q.bind(at.0);
        }
        let version = match (u.expect_version, self.dialect) {
            (Some(v), _) => {
                if q.execute(&mut **tx).await?.rows_affected() == 0 {
                    return Ok(WriteOutcome::Conflict);
                }
                v.0 + 1
            }
            (None, Dialect::Mysql) => {
                let done = q.execute(&mut **tx).await?;
                if done.rows_affected() == 0 {
                    return Ok(WriteOutcome::Conflict);
                }
                let id = done
                    .last_insert_id()
                    .ok_or_else(|| corrupt(&format!("new version of {}", u.gid), "not reported"))?;
                u64::try_from(id).map_err(|e| corrupt("version", e))?
            }
            (None, Dialect::Sqlite | Dialect::Postgres) => {
                let Some(row) = q.fetch_optional(&mut **tx).await? else {
                    return Ok(WriteOutcome::Conflict);
                };
                u64::try_from(row.try_get::<i64, _>("version")?)
                    .map_err(|e| corrupt("version", e))?
            }
        };
        Ok(WriteOutcome::Applied(Version(version)))
    }
}

#[async_trait]
impl TxnStore for SqlStore {
    async fn apply(&self, writes: &[Write]) -> Result<Vec<WriteOutcome>> {
        let mut tx = self.pool.begin_with(self.dialect.begin()).await?;
        let mut outcomes = vec![WriteOutcome::Conflict; writes.len()];
        for run in distinct_gid_runs(writes) {
            self.apply_run(&mut tx, &writes[run.clone()], &mut outcomes[run])
                .await?;
        }
        tx.commit().await?;
        Ok(outcomes)
    }

    async fn find_txn(&self, gid: &Gid) -> Result<Option<GlobalTxn>> {
        let sql = format!("SELECT {TXN_COLS} FROM braid_txn WHERE gid = ?");
        let sql = self.sql(&sql);
        let row = sqlx::query(&sql)
            .bind(gid.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(decode_txn).transpose()
    }

    async fn find_branches(&self, gid: &Gid) -> Result<Vec<Branch>> {
        let sql = format!("SELECT {BRANCH_COLS} FROM braid_branch WHERE gid = ? ORDER BY id");
        let sql = self.sql(&sql);
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
        let sql = self.sql(&sql);
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::txn;

    #[test]
    fn chunks_are_powers_of_two_that_add_up() {
        let cases: &[(usize, usize, &[usize])] = &[
            (0, 256, &[]),
            (1, 256, &[1]),
            (100, 256, &[64, 32, 4]),
            (256, 256, &[256]),
            (600, 256, &[256, 256, 64, 16, 8]),
            (7, 4, &[4, 2, 1]),
        ];
        for (i, (n, max, want)) in cases.iter().enumerate() {
            let got = pow2_chunks(*n, *max);
            assert_eq!(got, *want, "case {i}: {n} rows, at most {max}");
            assert_eq!(got.iter().sum::<usize>(), *n, "case {i}");
        }
    }

    #[test]
    fn a_repeated_gid_starts_a_new_run() {
        let w = |g: &str| Write::Update(TxnUpdate::of(&txn(g), txn(g).create_time));
        let ins = |g: &str| Write::Insert {
            txn: txn(g),
            branches: Vec::new(),
        };
        let batch = vec![ins("a"), w("b"), w("a"), w("c"), ins("b"), w("d"), w("d")];
        // a b | a c b d | d: each run has every gid once, in order.
        assert_eq!(distinct_gid_runs(&batch), vec![0..2, 2..6, 6..7]);
        assert_eq!(distinct_gid_runs(&[]), Vec::<std::ops::Range<usize>>::new());
    }
}
