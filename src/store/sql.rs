//! The SQL implementation of [`Store`], shared by the SQLite and MySQL backends through sqlx's `Any` driver.
//! The backends differ only in the [`Dialect`]: how a write transaction begins, how due rows are claimed,
//! and which error codes mean "duplicate key".

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::OnceLock;

use async_trait::async_trait;
use sqlx::AnyPool;
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use super::{
    BranchUpdate, Claim, ClaimScope, Claimed, Error, LeaseRecord, PartitionFence, Result,
    ScanFilter, Schedule, Store, TxnUpdate, Write, WriteOutcome,
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

/// Most rows per multi-row statement (keeps well under every database's bind-parameter limit).
const INSERT_CHUNK: usize = 256;

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
        let mut outcomes = Vec::with_capacity(inserts.len());
        let mut done = 0;
        for len in pow2_chunks(inserts.len(), INSERT_CHUNK) {
            let chunk = &inserts[done..done + len];
            let sql = txn_insert_sql(len);
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
        sqlx::query("SAVEPOINT braid_write")
            .execute(&mut **tx)
            .await?;
        let outcome = match self.update_row_and_branches(tx, u).await? {
            WriteOutcome::Applied(version) => {
                match self.insert_branches(tx, u.new_branches.iter()).await {
                    Ok(()) => WriteOutcome::Applied(version),
                    Err(e) if is_duplicate_key(&e) => {
                        sqlx::query("ROLLBACK TO SAVEPOINT braid_write")
                            .execute(&mut **tx)
                            .await?;
                        WriteOutcome::DuplicateBranch
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            unchanged @ (WriteOutcome::Conflict | WriteOutcome::DuplicateBranch) => unchanged,
        };
        sqlx::query("RELEASE SAVEPOINT braid_write")
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
            (None, Dialect::Sqlite) => ("version = version + 1", " RETURNING version"),
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
            (None, Dialect::Sqlite) => {
                let Some(row) = q.fetch_optional(&mut **tx).await? else {
                    return Ok(WriteOutcome::Conflict);
                };
                u64::try_from(row.try_get::<i64, _>("version")?)
                    .map_err(|e| corrupt("version", e))?
            }
        };
        Ok(WriteOutcome::Applied(Version(version)))
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
                    "UPDATE braid_txn SET next_cron_time = ?, owner = ?, version = version + 1 WHERE id IN (SELECT id FROM braid_txn \
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
                    "UPDATE braid_txn SET next_cron_time = ?, owner = ?, version = version + 1 WHERE id IN ({in_list})"
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

    async fn max_packet_bytes(&self) -> Result<Option<u64>> {
        match self.dialect {
            Dialect::Sqlite => Ok(None),
            Dialect::Mysql => {
                let sql = "SELECT CAST(@@max_allowed_packet AS SIGNED) AS packet";
                let packet: i64 = sqlx::query(sql)
                    .fetch_one(&self.pool)
                    .await?
                    .try_get("packet")?;
                Ok(u64::try_from(packet).ok())
            }
        }
    }

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
                 (SELECT id FROM braid_txn WHERE next_cron_time > ? AND owner = '' LIMIT ?)"
            }
            Dialect::Mysql => {
                "UPDATE braid_txn SET next_cron_time = ?, update_time = ? WHERE next_cron_time > ? \
                 AND owner = '' LIMIT ?"
            }
        };
        // `next_cron_time > after >= now` for every row it touches, so `owner = ''` is what leaves live claims
        // alone (an expired claim is due already).
        let done = sqlx::query(sql)
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
        let done = sqlx::query(
            "UPDATE braid_txn SET next_cron_time = ?, update_time = ? \
             WHERE gid = ? AND status NOT IN ('succeed', 'failed') \
             AND (owner = '' OR next_cron_time IS NULL OR next_cron_time <= ?)",
        )
        .bind(now.0)
        .bind(now.0)
        .bind(gid.as_str())
        .bind(now.0)
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
