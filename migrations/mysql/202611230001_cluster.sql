-- Cluster state. Forward-only, like every migration.
-- braid_meta: settings fixed at the first start (`partitions`: the partition count P).
CREATE TABLE IF NOT EXISTS braid_meta (
  k VARCHAR(64)  NOT NULL PRIMARY KEY,
  v VARCHAR(255) NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- braid_partition: the fencing epoch of each partition, bumped by every take-over. Fenced claims and writes
-- read it under a shared lock in their own transaction.
CREATE TABLE IF NOT EXISTS braid_partition (
  partition_id BIGINT       NOT NULL PRIMARY KEY,
  epoch        BIGINT       NOT NULL DEFAULT 0,
  owner        VARCHAR(255) NOT NULL DEFAULT '',
  fenced_at    BIGINT       NOT NULL DEFAULT 0
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- braid_lease: leases of the `sql` lease backend (`member/<node>`, `partition/<n>`), times on the store clock.
CREATE TABLE IF NOT EXISTS braid_lease (
  name        VARCHAR(191) NOT NULL PRIMARY KEY,
  holder      VARCHAR(255) NOT NULL,
  acquired_at BIGINT       NOT NULL,
  renewed_at  BIGINT       NOT NULL,
  expires_at  BIGINT       NOT NULL,
  transitions BIGINT       NOT NULL DEFAULT 0
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
