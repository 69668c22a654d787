-- DTM's sub-transaction barrier table for PostgreSQL (equivalent to DTM's sqls/dtmcli.barrier.postgres.sql),
-- shared by services using braid-client and DTM's own SDKs. `create_barrier_table` runs the same DDL.
CREATE SCHEMA IF NOT EXISTS dtm_barrier;
CREATE TABLE IF NOT EXISTS dtm_barrier.barrier (
  id bigserial PRIMARY KEY,
  trans_type varchar(45) default '',
  gid varchar(128) default '',
  branch_id varchar(128) default '',
  op varchar(45) default '',
  barrier_id varchar(4) default '',
  reason varchar(45) default '',
  create_time timestamp(0) with time zone DEFAULT NULL,
  update_time timestamp(0) with time zone DEFAULT NULL,
  CONSTRAINT uniq_barrier UNIQUE (gid, branch_id, op, barrier_id)
);
