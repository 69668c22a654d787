//! The store conformance suite: each rule of the store contract (the docs of each trait and of
//! `store/mod.rs`) is written once, as `check_*`, in the file of its trait: `txns.rs`, `claims.rs`,
//! `leases.rs`, `kv.rs`, `maintenance.rs`, and `base.rs` for [`StoreBase`](super::StoreBase) and the rules
//! across traits.
//! [`conformance!`] runs every check against every backend, each test on a fresh database from
//! [`super::testing`], so a new backend proves itself concern by concern.
//!
//! Times written by the checks are fixed values around [`T0`](super::testing::T0) (the store takes the
//! caller's `now`), so every assertion compares exact values; only [`base::check_db_now`] reads a real clock.

pub mod base;
pub mod claims;
pub mod kv;
pub mod leases;
pub mod maintenance;
pub mod txns;

use super::{DynStore, Write, WriteOutcome};
use crate::model::{Branch, Gid, GlobalTxn, Version};

fn insert(t: GlobalTxn, branches: Vec<Branch>) -> Write {
    Write::Insert { txn: t, branches }
}

/// Applies one write and returns its outcome.
async fn apply1(s: &DynStore, w: Write) -> WriteOutcome {
    let outcomes = s.apply(std::slice::from_ref(&w)).await.unwrap();
    assert_eq!(outcomes.len(), 1, "one outcome per write for {w:?}");
    outcomes[0]
}

/// Inserts and returns the row as stored.
async fn seed(s: &DynStore, t: GlobalTxn, branches: Vec<Branch>) -> GlobalTxn {
    let g = t.gid.clone();
    assert_eq!(
        apply1(s, insert(t, branches)).await,
        WriteOutcome::Applied(Version(1)),
        "insert {g}"
    );
    get(s, &g).await
}

/// The stored row, which must exist.
async fn get(s: &DynStore, g: &Gid) -> GlobalTxn {
    s.find_txn(g)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{g} is not stored"))
}

fn gids(txns: &[GlobalTxn]) -> Vec<&str> {
    txns.iter().map(|t| t.gid.as_str()).collect()
}

fn sorted_by_gid(mut txns: Vec<GlobalTxn>) -> Vec<GlobalTxn> {
    txns.sort_by(|a, b| a.gid.cmp(&b.gid));
    txns
}

/// Stamps out one `#[tokio::test]` per check for a backend: `conformance!(sqlite, testing::sqlite_store)`
/// makes `store::conformance::sqlite::check_*`. Each test gets a fresh database, which a passing test drops.
macro_rules! conformance {
    ($backend:ident, $fresh:path) => {
        mod $backend {
            conformance!(@store_checks $fresh);
            conformance!(@db $fresh; base: check_reopen_is_idempotent);
        }
    };
    // A database that cannot be opened twice (in memory): the checks on one store only.
    ($backend:ident, $fresh:path, single_open) => {
        mod $backend {
            conformance!(@store_checks $fresh);
        }
    };
    (@store_checks $fresh:path) => {
        conformance!(@store $fresh; base:
            check_db_now,
            check_large_values_are_never_truncated,
        );
        conformance!(@store $fresh; txns:
            check_insert_round_trip,
            check_insert_existing_gid_conflicts,
            check_update_compare_and_set,
            check_final_status_and_schedule,
            check_branch_status_updates,
            check_new_branches_and_duplicates,
            check_concurrent_updates,
            check_mixed_batch,
            check_grouped_batch,
            check_scan_txns,
        );
        conformance!(@store $fresh; claims:
            check_claim_due,
            check_concurrent_claims_are_disjoint,
            check_live_claims_are_exclusive,
            check_partition_count_is_fixed,
            check_fence_partition_bumps_epochs,
            check_stale_epoch_writes_conflict,
            check_fenced_claims,
        );
        conformance!(@store $fresh; leases: check_leases);
        conformance!(@store $fresh; kv: check_kv);
        conformance!(@store $fresh; maintenance:
            check_reset_cron_time,
            check_reset_next_cron_time,
            check_delete_finished,
        );
    };
    // Checks on the store of a fresh database.
    (@store $fresh:path; $concern:ident: $($check:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $check() {
                let db = $fresh().await;
                super::$concern::$check(&db.store).await;
                db.finish().await;
            }
        )+
    };
    // Checks on the fresh database itself (they open it again).
    (@db $fresh:path; $concern:ident: $($check:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $check() {
                let db = $fresh().await;
                super::$concern::$check(&db).await;
                db.finish().await;
            }
        )+
    };
}

#[cfg(feature = "sqlite")]
conformance!(sqlite, crate::store::testing::sqlite_store);
#[cfg(feature = "sqlite")]
conformance!(
    sqlite_memory,
    crate::store::testing::sqlite_memory_store,
    single_open
);
#[cfg(feature = "mysql")]
conformance!(mysql, crate::store::testing::mysql_store);
#[cfg(feature = "postgres")]
conformance!(postgres, crate::store::testing::postgres_store);
