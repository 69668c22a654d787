//! The Redis barrier (spec §12.3): the barrier check and the balance change happen in one Lua script, so
//! they are atomic without a transaction.

use redis::Script;
use redis::aio::ConnectionLike;

use super::{BranchBarrier, MSG_BARRIER_ID, MSG_BRANCH_ID, MSG_OP};
use crate::error::{Error, Result};

/// KEYS: amount key, current-op barrier key, origin-op barrier key. ARGV: amount, origin op, expiry secs.
const CHECK_ADJUST_AMOUNT: &str = r"
local v = redis.call('GET', KEYS[1])
local e1 = redis.call('GET', KEYS[2])
if v == false or v + ARGV[1] < 0 then
  return 'FAILURE'
end
if e1 ~= false then
  return 'DUPLICATE'
end
redis.call('SET', KEYS[2], 'op', 'EX', ARGV[3])
if ARGV[2] ~= '' then
  local e2 = redis.call('GET', KEYS[3])
  if e2 == false then
    redis.call('SET', KEYS[3], 'rollback', 'EX', ARGV[3])
    return
  end
end
redis.call('INCRBY', KEYS[1], ARGV[1])
";

/// KEYS: the msg barrier key. ARGV: expiry secs.
const QUERY_PREPARED: &str = r"
local v = redis.call('GET', KEYS[1])
if v == false then
  redis.call('SET', KEYS[1], 'rollback', 'EX', ARGV[1])
  v = 'rollback'
end
if v == 'rollback' then
  return 'FAILURE'
end
";

impl BranchBarrier {
    fn redis_key(&self, op: &str, barrier_id: &str) -> String {
        format!("{}-{}-{}-{}", self.gid, self.branch_id, op, barrier_id)
    }

    /// Adds `amount` (negative to take) to the integer at `key` behind the barrier, in one Lua script
    /// (spec §12.3). The barrier keys expire after `expire_secs`. Errors:
    /// [`Error::Failure`] when `key` is missing or would go below zero (checked before the duplicate
    /// check, as DTM does); [`Error::Duplicated`] when the msg op already ran. A repeated or hanging call
    /// of any other op succeeds without changing `key`; a null compensation records itself and succeeds.
    pub async fn redis_check_adjust_amount<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        key: &str,
        amount: i64,
        expire_secs: u64,
    ) -> Result<()> {
        let barrier_id = self.next_barrier_id();
        let origin = self.origin_op();
        let reply: Option<String> = Script::new(CHECK_ADJUST_AMOUNT)
            .key(key)
            .key(self.redis_key(&self.op, &barrier_id))
            .key(self.redis_key(origin, &barrier_id))
            .arg(amount)
            .arg(origin)
            .arg(expire_secs)
            .invoke_async(conn)
            .await?;
        match reply.as_deref() {
            Some("FAILURE") => Err(Error::failure(format!(
                "redis key {key} is missing or too small for {amount}"
            ))),
            Some("DUPLICATE") if self.op == MSG_OP => Err(Error::Duplicated {
                gid: self.gid.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// The Redis msg back-check (spec §12.3): `Ok(())` if the `DoAndSubmit` business committed,
    /// [`Error::Failure`] if it did not (and now never will: its barrier key is taken).
    pub async fn redis_query_prepared<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        expire_secs: u64,
    ) -> Result<()> {
        let key = format!(
            "{}-{}-{}-{}",
            self.gid, MSG_BRANCH_ID, MSG_OP, MSG_BARRIER_ID
        );
        let reply: Option<String> = Script::new(QUERY_PREPARED)
            .key(&key)
            .arg(expire_secs)
            .invoke_async(conn)
            .await?;
        if reply.as_deref() == Some("FAILURE") {
            return Err(Error::failure(format!(
                "msg {} was not committed in redis; it is rolled back",
                self.gid
            )));
        }
        Ok(())
    }
}
