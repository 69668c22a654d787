-- TEXT holds at most 64 KiB, too little for workflow data and results, long rollback reasons and large topic
-- lists (SQLite has no such limit, so the backends disagreed). MEDIUMTEXT holds 16 MiB.
ALTER TABLE braid_txn
  MODIFY custom_data     MEDIUMTEXT NOT NULL,
  MODIFY options         MEDIUMTEXT NOT NULL,
  MODIFY result          MEDIUMTEXT NOT NULL,
  MODIFY rollback_reason MEDIUMTEXT NOT NULL;

ALTER TABLE braid_kv
  MODIFY v MEDIUMTEXT NOT NULL;
