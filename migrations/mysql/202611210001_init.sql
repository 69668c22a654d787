-- braid schema for MySQL / MariaDB. Times are milliseconds since the Unix epoch on the store clock.
CREATE TABLE IF NOT EXISTS braid_txn (
  id                 BIGINT        NOT NULL AUTO_INCREMENT PRIMARY KEY,
  gid                VARCHAR(128)  NOT NULL,
  trans_type         VARCHAR(16)   NOT NULL,
  status             VARCHAR(16)   NOT NULL,
  query_prepared     VARCHAR(1024) NOT NULL DEFAULT '',
  protocol           VARCHAR(16)   NOT NULL DEFAULT 'http',
  custom_data        TEXT          NOT NULL,
  options            TEXT          NOT NULL,
  result             TEXT          NOT NULL,
  rollback_reason    TEXT          NOT NULL,
  create_time        BIGINT        NOT NULL,
  update_time        BIGINT        NOT NULL,
  finish_time        BIGINT        NULL,
  rollback_time      BIGINT        NULL,
  next_cron_interval BIGINT        NOT NULL,
  -- NULL once the transaction is final: the recovery scan reads this index only.
  next_cron_time     BIGINT        NULL,
  owner              VARCHAR(128)  NOT NULL DEFAULT '',
  version            BIGINT        NOT NULL,
  partition_id       BIGINT        NOT NULL,
  UNIQUE KEY uniq_gid (gid),
  KEY idx_next_cron (next_cron_time),
  KEY idx_partition_cron (partition_id, next_cron_time),
  KEY idx_finished (status, update_time)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE IF NOT EXISTS braid_branch (
  id            BIGINT        NOT NULL AUTO_INCREMENT PRIMARY KEY,
  gid           VARCHAR(128)  NOT NULL,
  branch_id     VARCHAR(128)  NOT NULL,
  op            VARCHAR(16)   NOT NULL,
  url           VARCHAR(1024) NOT NULL,
  bin_data      LONGBLOB      NOT NULL,
  status        VARCHAR(16)   NOT NULL,
  create_time   BIGINT        NOT NULL,
  update_time   BIGINT        NOT NULL,
  finish_time   BIGINT        NULL,
  rollback_time BIGINT        NULL,
  UNIQUE KEY uniq_branch (gid, branch_id, op)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE IF NOT EXISTS braid_kv (
  id          BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
  cat         VARCHAR(64)  NOT NULL,
  k           VARCHAR(128) NOT NULL,
  v           TEXT         NOT NULL,
  version     BIGINT       NOT NULL DEFAULT 1,
  create_time BIGINT       NOT NULL,
  update_time BIGINT       NOT NULL,
  UNIQUE KEY uniq_kv (cat, k)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
