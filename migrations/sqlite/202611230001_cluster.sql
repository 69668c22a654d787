-- Cluster state. Forward-only, like every migration.
-- braid_meta: settings fixed at the first start (`partitions`: the partition count P).
CREATE TABLE IF NOT EXISTS braid_meta (
  k TEXT NOT NULL PRIMARY KEY,
  v TEXT NOT NULL
);

-- braid_partition: the fencing epoch of each partition, bumped by every take-over.
CREATE TABLE IF NOT EXISTS braid_partition (
  partition_id INTEGER NOT NULL PRIMARY KEY,
  epoch        INTEGER NOT NULL DEFAULT 0,
  owner        TEXT    NOT NULL DEFAULT '',
  fenced_at    INTEGER NOT NULL DEFAULT 0
);

-- braid_lease: leases of the `sql` lease backend (`member/<node>`, `partition/<n>`), times on the store clock.
CREATE TABLE IF NOT EXISTS braid_lease (
  name        TEXT    NOT NULL PRIMARY KEY,
  holder      TEXT    NOT NULL,
  acquired_at INTEGER NOT NULL,
  renewed_at  INTEGER NOT NULL,
  expires_at  INTEGER NOT NULL,
  transitions INTEGER NOT NULL DEFAULT 0
);
