//! The SQL barrier (spec §12.1, §12.2) on MySQL/MariaDB and PostgreSQL, inside the caller's sqlx
//! transaction.

use super::{BranchBarrier, MSG_BARRIER_ID, MSG_BRANCH_ID, MSG_OP};
use crate::error::{Error, Result};

use crate::BoxFuture;

/// One barrier row.
#[derive(Debug, Clone, Copy)]
pub struct BarrierRow<'a> {
    /// Transaction type.
    pub trans_type: &'a str,
    /// Global id.
    pub gid: &'a str,
    /// Branch id.
    pub branch_id: &'a str,
    /// The op the row stands for.
    pub op: &'a str,
    /// The barrier id (`01`, `02`...).
    pub barrier_id: &'a str,
    /// The op that inserted the row.
    pub reason: &'a str,
}

mod sealed {
    pub trait Sealed {}
    #[cfg(feature = "mysql")]
    impl Sealed for sqlx::MySql {}
    #[cfg(feature = "postgres")]
    impl Sealed for sqlx::Postgres {}
}

/// A database the barrier runs on: MySQL/MariaDB (`sqlx::MySql`) or PostgreSQL (`sqlx::Postgres`).
pub trait BarrierDatabase: sqlx::Database + sealed::Sealed {
    /// Inserts `row` unless its key exists (MySQL `INSERT IGNORE`, Postgres `ON CONFLICT DO NOTHING`);
    /// returns the number of rows inserted. Waits while another open transaction holds the same key.
    fn insert_ignore<'a>(
        conn: &'a mut Self::Connection,
        table: &'a str,
        row: BarrierRow<'a>,
    ) -> BoxFuture<'a, Result<u64, sqlx::Error>>;

    /// The `reason` of a row, if it exists.
    fn reason<'a>(
        conn: &'a mut Self::Connection,
        table: &'a str,
        row: BarrierRow<'a>,
    ) -> BoxFuture<'a, Result<Option<String>, sqlx::Error>>;

    /// DDL creating DTM's barrier table `table` (schema/database included) if it does not exist.
    fn create_table_sql(table: &str) -> Vec<String>;
}

#[cfg(feature = "mysql")]
impl BarrierDatabase for sqlx::MySql {
    fn insert_ignore<'a>(
        conn: &'a mut sqlx::MySqlConnection,
        table: &'a str,
        row: BarrierRow<'a>,
    ) -> BoxFuture<'a, Result<u64, sqlx::Error>> {
        Box::pin(async move {
            let sql = format!(
                "INSERT IGNORE INTO {table} (trans_type, gid, branch_id, op, barrier_id, reason) \
                 VALUES (?, ?, ?, ?, ?, ?)"
            );
            let done = sqlx::query(&sql)
                .bind(row.trans_type)
                .bind(row.gid)
                .bind(row.branch_id)
                .bind(row.op)
                .bind(row.barrier_id)
                .bind(row.reason)
                .execute(&mut *conn)
                .await?;
            Ok(done.rows_affected())
        })
    }

    fn reason<'a>(
        conn: &'a mut sqlx::MySqlConnection,
        table: &'a str,
        row: BarrierRow<'a>,
    ) -> BoxFuture<'a, Result<Option<String>, sqlx::Error>> {
        Box::pin(async move {
            let sql = format!(
                "SELECT reason FROM {table} WHERE gid = ? AND branch_id = ? AND op = ? AND barrier_id = ?"
            );
            sqlx::query_scalar::<_, String>(&sql)
                .bind(row.gid)
                .bind(row.branch_id)
                .bind(row.op)
                .bind(row.barrier_id)
                .fetch_optional(&mut *conn)
                .await
        })
    }

    fn create_table_sql(table: &str) -> Vec<String> {
        let mut out = Vec::new();
        if let Some((db, _)) = table.split_once('.') {
            out.push(format!("CREATE DATABASE IF NOT EXISTS {db}"));
        }
        out.push(format!(
            "CREATE TABLE IF NOT EXISTS {table} (
  id bigint(22) PRIMARY KEY AUTO_INCREMENT,
  trans_type varchar(45) default '',
  gid varchar(128) default '',
  branch_id varchar(128) default '',
  op varchar(45) default '',
  barrier_id varchar(45) default '',
  reason varchar(45) default '' comment 'the branch type who insert this record',
  create_time datetime DEFAULT now(),
  update_time datetime DEFAULT now(),
  key(create_time),
  key(update_time),
  UNIQUE key(gid, branch_id, op, barrier_id)
)"
        ));
        out
    }
}

#[cfg(feature = "postgres")]
impl BarrierDatabase for sqlx::Postgres {
    fn insert_ignore<'a>(
        conn: &'a mut sqlx::PgConnection,
        table: &'a str,
        row: BarrierRow<'a>,
    ) -> BoxFuture<'a, Result<u64, sqlx::Error>> {
        Box::pin(async move {
            let sql = format!(
                "INSERT INTO {table} (trans_type, gid, branch_id, op, barrier_id, reason) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING"
            );
            let done = sqlx::query(&sql)
                .bind(row.trans_type)
                .bind(row.gid)
                .bind(row.branch_id)
                .bind(row.op)
                .bind(row.barrier_id)
                .bind(row.reason)
                .execute(&mut *conn)
                .await?;
            Ok(done.rows_affected())
        })
    }

    fn reason<'a>(
        conn: &'a mut sqlx::PgConnection,
        table: &'a str,
        row: BarrierRow<'a>,
    ) -> BoxFuture<'a, Result<Option<String>, sqlx::Error>> {
        Box::pin(async move {
            let sql = format!(
                "SELECT reason FROM {table} WHERE gid = $1 AND branch_id = $2 AND op = $3 AND barrier_id = $4"
            );
            sqlx::query_scalar::<_, String>(&sql)
                .bind(row.gid)
                .bind(row.branch_id)
                .bind(row.op)
                .bind(row.barrier_id)
                .fetch_optional(&mut *conn)
                .await
        })
    }

    fn create_table_sql(table: &str) -> Vec<String> {
        let mut out = Vec::new();
        if let Some((schema, _)) = table.split_once('.') {
            out.push(format!("CREATE SCHEMA IF NOT EXISTS {schema}"));
        }
        out.push(format!(
            "CREATE TABLE IF NOT EXISTS {table} (
  id bigserial PRIMARY KEY,
  trans_type varchar(45) default '',
  gid varchar(128) default '',
  branch_id varchar(128) default '',
  op varchar(45) default '',
  barrier_id varchar(4) default '',
  reason varchar(45) default '',
  create_time timestamp(0) with time zone DEFAULT NULL,
  update_time timestamp(0) with time zone DEFAULT NULL,
  CONSTRAINT uniq_barrier unique(gid, branch_id, op, barrier_id)
)"
        ));
        out
    }
}

/// What [`BranchBarrier::enter`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// First time here: run the business in this transaction, then commit.
    Run,
    /// A compensation whose origin op never ran: do nothing and commit (the origin is now blocked).
    NullCompensation,
    /// This op already ran, or its compensation already ran (hanging): do nothing and commit.
    Skip,
}

impl Entry {
    /// Whether the business should run.
    pub fn should_run(self) -> bool {
        self == Self::Run
    }
}

/// Creates DTM's barrier table (`dtm_barrier.barrier` by default) if it does not exist. Needs the right to
/// create the `dtm_barrier` database (MySQL) or schema (Postgres); DTM ships the same DDL.
pub async fn create_barrier_table<DB: BarrierDatabase>(
    pool: &sqlx::Pool<DB>,
    table: &str,
) -> Result<()>
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    let mut conn = pool.acquire().await?;
    for stmt in DB::create_table_sql(table) {
        sqlx::Executor::execute(&mut *conn, stmt.as_str()).await?;
    }
    Ok(())
}

impl BranchBarrier {
    /// Inserts this call's barrier rows into the open transaction `conn` and says whether the business
    /// should run (spec §12.2 steps 1–7). The caller runs the business if [`Entry::should_run`], then commits
    /// the transaction in every `Ok` case (skipping must commit too: the rows are the record). For the msg
    /// op a repeat is [`Error::Duplicated`]: roll back.
    pub async fn enter<DB: BarrierDatabase>(&self, conn: &mut DB::Connection) -> Result<Entry> {
        let barrier_id = self.next_barrier_id();
        let origin = self.origin_op();
        let row = |op: &'static str, reason| BarrierRow {
            trans_type: &self.trans_type,
            gid: &self.gid,
            branch_id: &self.branch_id,
            op,
            barrier_id: &barrier_id,
            reason,
        };
        let origin_affected = if origin.is_empty() {
            0
        } else {
            DB::insert_ignore(&mut *conn, &self.table, row(origin, &self.op)).await?
        };
        let current = BarrierRow {
            op: &self.op,
            ..row("", &self.op)
        };
        let current_affected = DB::insert_ignore(&mut *conn, &self.table, current).await?;
        if self.op == MSG_OP && current_affected == 0 {
            return Err(Error::Duplicated {
                gid: self.gid.clone(),
            });
        }
        if !origin.is_empty() && origin_affected > 0 {
            return Ok(Entry::NullCompensation);
        }
        if current_affected == 0 {
            return Ok(Entry::Skip);
        }
        Ok(Entry::Run)
    }

    /// Runs `business` behind the barrier inside `tx`, and commits or rolls back `tx` (spec §12.2): the
    /// business runs at most once per op, never after its compensation, and a compensation whose action
    /// never ran does nothing. An error from `business` rolls back the barrier rows with it.
    ///
    /// ```no_run
    /// # async fn handler(pool: sqlx::MySqlPool, bb: braid_client::BranchBarrier) -> braid_client::Result<()> {
    /// let amount = 30;
    /// bb.call(pool.begin().await?, move |conn| {
    ///     Box::pin(async move {
    ///         sqlx::query("UPDATE dtm_busi.user_account SET balance = balance - ? WHERE user_id = 1")
    ///             .bind(amount)
    ///             .execute(&mut *conn)
    ///             .await?;
    ///         Ok(())
    ///     })
    /// })
    /// .await
    /// # }
    /// ```
    pub async fn call<'c, DB, F>(
        &self,
        mut tx: sqlx::Transaction<'c, DB>,
        business: F,
    ) -> Result<()>
    where
        DB: BarrierDatabase,
        F: for<'t> FnOnce(&'t mut DB::Connection) -> BoxFuture<'t, Result<()>>,
    {
        let entry = match self.enter::<DB>(&mut tx).await {
            Ok(entry) => entry,
            Err(e) => {
                // The rollback error, if any, is less telling than the barrier's.
                let _ = tx.rollback().await;
                return Err(e);
            }
        };
        if entry.should_run()
            && let Err(e) = business(&mut tx).await
        {
            let _ = tx.rollback().await;
            return Err(e);
        }
        tx.commit().await?;
        Ok(())
    }

    /// [`BranchBarrier::call`] in a new transaction of `pool`.
    pub async fn call_with_pool<DB, F>(&self, pool: &sqlx::Pool<DB>, business: F) -> Result<()>
    where
        DB: BarrierDatabase,
        F: for<'t> FnOnce(&'t mut DB::Connection) -> BoxFuture<'t, Result<()>>,
    {
        self.call(pool.begin().await?, business).await
    }

    /// The msg back-check (spec §12.2 `QueryPrepared`): pre-inserts the `DoAndSubmit` row with reason
    /// `rollback`, then reads it. `Ok(())` means the local transaction committed (answer SUCCESS);
    /// [`Error::Failure`] means it did not and now never will (answer FAILURE). While the local
    /// transaction is still open, the insert waits for it, so the answer is always right.
    pub async fn query_prepared<DB: BarrierDatabase>(&self, pool: &sqlx::Pool<DB>) -> Result<()> {
        let mut conn = pool.acquire().await?;
        let row = BarrierRow {
            trans_type: &self.trans_type,
            gid: &self.gid,
            branch_id: MSG_BRANCH_ID,
            op: MSG_OP,
            barrier_id: MSG_BARRIER_ID,
            reason: "rollback",
        };
        DB::insert_ignore(&mut conn, &self.table, row).await?;
        let reason = DB::reason(&mut conn, &self.table, row).await?;
        if reason.as_deref() == Some("rollback") {
            return Err(Error::failure(format!(
                "msg {} was not committed locally; it is rolled back",
                self.gid
            )));
        }
        Ok(())
    }
}
