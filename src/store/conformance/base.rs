//! Checks of [`StoreBase`](crate::store::StoreBase) (`kind`, `ping`, `db_now`, opening a database again)
//! and of the rules that hold across the concern traits (nothing is truncated).

use std::time::{SystemTime, UNIX_EPOCH};

use super::{apply1, get, insert, seed};
use crate::model::{Branch, GlobalStatus, GlobalTxn, Op, Version};
use crate::store::testing::{T0, TestDb, at, branch, txn};
use crate::store::{self, DynStore, TxnUpdate, Write, WriteOutcome};

/// `db_now` reads the database's clock, which is close to this host's; `ping` answers.
pub async fn check_db_now(s: &DynStore) {
    s.ping().await.unwrap();
    let db = s.db_now().await.unwrap();
    let host = i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    assert!(
        (db.0 - host).abs() < 60_000,
        "db_now {} vs host {host}: {} ms apart",
        db.0,
        db.0 - host
    );
    let later = s.db_now().await.unwrap();
    assert!(
        later >= db,
        "the database clock does not go back: {} then {}",
        db.0,
        later.0
    );
}

/// Opening the same database again runs the migrations again without harm, and sees the same data.
pub async fn check_reopen_is_idempotent(db: &TestDb) {
    let t = seed(
        &db.store,
        txn("reopen"),
        vec![branch("reopen", "01", Op::Action)],
    )
    .await;
    for _ in 0..2 {
        let again = store::open(&db.dsn).await.unwrap();
        assert_eq!(again.kind(), db.store.kind());
        assert_eq!(get(&again, &t.gid).await, t);
        assert_eq!(again.find_branches(&t.gid).await.unwrap().len(), 1);
    }
    let again = store::open(&db.dsn).await.unwrap();
    let mut u = TxnUpdate::of(&t, at(1));
    u.status = Some(GlobalStatus::Succeed);
    assert_eq!(
        apply1(&again, Write::Update(u)).await,
        WriteOutcome::Applied(Version(2))
    );
    assert_eq!(
        get(&db.store, &t.gid).await.status,
        GlobalStatus::Succeed,
        "both handles share one database"
    );
}

/// Large values (payloads, results, topic lists) round-trip exactly; a value longer than a bounded column
/// (URLs, owner, KV key) is refused with `Error::Query` or stored exactly, never truncated.
pub async fn check_large_values_are_never_truncated(s: &DynStore) {
    let big_json = format!(r#"{{"data":"{}"}}"#, "é".repeat(100_000)); // 200 kB of UTF-8
    let big_bytes: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let t = GlobalTxn {
        custom_data: big_json.clone(),
        result: "Q".repeat(300_000),
        rollback_reason: "r".repeat(70_000),
        ..txn("large")
    };
    let mut b = branch("large", "01", Op::Action);
    b.bin_data = big_bytes;
    let stored = seed(s, t.clone(), vec![b.clone()]).await;
    assert_eq!(stored, GlobalTxn { id: stored.id, ..t });
    let branches = s.find_branches(&stored.gid).await.unwrap();
    assert_eq!(
        branches,
        vec![Branch {
            id: branches[0].id,
            ..b
        }]
    );
    assert!(s.kv_create("topics", "large", &big_json, T0).await.unwrap());
    assert_eq!(
        s.kv_find("topics", "large").await.unwrap().unwrap().v,
        big_json
    );

    // Bounded columns: an error that stores nothing, or the exact value.
    let long_url = format!("http://svc/{}", "u".repeat(2_000));
    let t = GlobalTxn {
        query_prepared: long_url.clone(),
        ..txn("long-url")
    };
    let mut b = branch("long-url", "01", Op::Action);
    b.url = long_url;
    match s.apply(&[insert(t.clone(), vec![b.clone()])]).await {
        Err(e) => {
            assert!(matches!(e, store::Error::Query(_)), "{e:?}");
            assert_eq!(s.find_txn(&t.gid).await.unwrap(), None);
            assert_eq!(s.find_branches(&t.gid).await.unwrap(), Vec::new());
        }
        Ok(outcomes) => {
            assert_eq!(outcomes, vec![WriteOutcome::Applied(Version(1))]);
            let stored = get(s, &t.gid).await;
            assert_eq!(stored, GlobalTxn { id: stored.id, ..t });
            assert_eq!(s.find_branches(&stored.gid).await.unwrap()[0].url, b.url);
        }
    }
    let key = "k".repeat(300);
    match s.kv_create("topics", &key, "v", T0).await {
        Err(e) => {
            assert!(matches!(e, store::Error::Query(_)), "{e:?}");
            assert_eq!(s.kv_scan("topics", None, 10).await.unwrap().len(), 1);
        }
        Ok(created) => {
            assert!(created);
            assert_eq!(s.kv_find("topics", &key).await.unwrap().unwrap().k, key);
        }
    }
}
