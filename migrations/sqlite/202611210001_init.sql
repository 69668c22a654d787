-- braid schema for SQLite. Times are milliseconds since the Unix epoch on the store clock.
CREATE TABLE IF NOT EXISTS braid_txn (
  id                 INTEGER PRIMARY KEY AUTOINCREMENT,
  gid                TEXT    NOT NULL UNIQUE,
  trans_type         TEXT    NOT NULL,
  status             TEXT    NOT NULL,
  query_prepared     TEXT    NOT NULL DEFAULT '',
  protocol           TEXT    NOT NULL DEFAULT 'http',
  custom_data        TEXT    NOT NULL,
  options            TEXT    NOT NULL,
  result             TEXT    NOT NULL,
  rollback_reason    TEXT    NOT NULL,
  create_time        INTEGER NOT NULL,
  update_time        INTEGER NOT NULL,
  finish_time        INTEGER NULL,
  rollback_time      INTEGER NULL,
  next_cron_interval INTEGER NOT NULL,
  -- NULL once the transaction is final: the recovery scan reads this index only.
  next_cron_time     INTEGER NULL,
  owner              TEXT    NOT NULL DEFAULT '',
  version            INTEGER NOT NULL,
  partition_id       INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_next_cron ON braid_txn (next_cron_time);
CREATE INDEX IF NOT EXISTS idx_partition_cron ON braid_txn (partition_id, next_cron_time);
CREATE INDEX IF NOT EXISTS idx_finished ON braid_txn (status, update_time);

CREATE TABLE IF NOT EXISTS braid_branch (
  id            INTEGER PRIMARY KEY AUTOINCREMENT,
  gid           TEXT    NOT NULL,
  branch_id     TEXT    NOT NULL,
  op            TEXT    NOT NULL,
  url           TEXT    NOT NULL,
  bin_data      BLOB    NOT NULL,
  status        TEXT    NOT NULL,
  create_time   INTEGER NOT NULL,
  update_time   INTEGER NOT NULL,
  finish_time   INTEGER NULL,
  rollback_time INTEGER NULL,
  UNIQUE (gid, branch_id, op)
);

CREATE TABLE IF NOT EXISTS braid_kv (
  id          INTEGER PRIMARY KEY AUTOINCREMENT,
  cat         TEXT    NOT NULL,
  k           TEXT    NOT NULL,
  v           TEXT    NOT NULL,
  version     INTEGER NOT NULL DEFAULT 1,
  create_time INTEGER NOT NULL,
  update_time INTEGER NOT NULL,
  UNIQUE (cat, k)
);
