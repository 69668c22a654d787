//! Checks of [`KvStore`](crate::store::KvStore).

use crate::store::DynStore;
use crate::store::testing::at;

/// KV records: create once (version 1), compare-and-set updates, find, scan by id, delete.
pub async fn check_kv(s: &DynStore) {
    let topic = r#"[{"url":"http://svc/äöü/receive","remark":"ünïcödé ✓"}]"#;
    assert!(s.kv_create("topics", "orders", topic, at(1)).await.unwrap());
    assert!(
        !s.kv_create("topics", "orders", "other", at(2))
            .await
            .unwrap(),
        "second create"
    );
    let orders = s.kv_find("topics", "orders").await.unwrap().unwrap();
    assert!(orders.id > 0);
    assert_eq!(
        (
            orders.cat.as_str(),
            orders.k.as_str(),
            orders.v.as_str(),
            orders.version,
            orders.create_time,
            orders.update_time
        ),
        ("topics", "orders", topic, 1, at(1), at(1))
    );

    assert!(
        s.kv_update("topics", "orders", "v2", 1, at(3))
            .await
            .unwrap()
    );
    assert!(
        !s.kv_update("topics", "orders", "stale", 1, at(4))
            .await
            .unwrap(),
        "stale version"
    );
    assert!(
        !s.kv_update("topics", "missing", "x", 1, at(4))
            .await
            .unwrap(),
        "missing key"
    );
    let updated = s.kv_find("topics", "orders").await.unwrap().unwrap();
    assert_eq!(
        updated,
        crate::model::KvRecord {
            v: "v2".to_owned(),
            version: 2,
            update_time: at(3),
            ..orders.clone()
        }
    );
    assert!(
        s.kv_update("topics", "orders", "v3", 2, at(5))
            .await
            .unwrap()
    );
    assert_eq!(
        s.kv_find("topics", "orders")
            .await
            .unwrap()
            .unwrap()
            .version,
        3
    );

    assert!(
        s.kv_create("topics", "payments", "[]", at(6))
            .await
            .unwrap()
    );
    assert!(
        s.kv_create("other", "orders", "elsewhere", at(6))
            .await
            .unwrap(),
        "keys are per category"
    );
    assert!(s.kv_create("topics", "refunds", "[]", at(7)).await.unwrap());
    assert_eq!(
        s.kv_find("other", "orders").await.unwrap().unwrap().v,
        "elsewhere"
    );
    assert_eq!(s.kv_find("topics", "nope").await.unwrap(), None);

    let keys =
        |records: Vec<crate::model::KvRecord>| records.into_iter().map(|r| r.k).collect::<Vec<_>>();
    let all = s.kv_scan("topics", None, 10).await.unwrap();
    assert!(all.windows(2).all(|w| w[0].id < w[1].id), "by id");
    assert!(all.iter().all(|r| r.cat == "topics"));
    assert_eq!(keys(all.clone()), vec!["orders", "payments", "refunds"]);
    assert_eq!(
        keys(s.kv_scan("topics", Some(all[0].id), 1).await.unwrap()),
        vec!["payments"]
    );
    assert_eq!(
        keys(s.kv_scan("topics", Some(all[1].id), 10).await.unwrap()),
        vec!["refunds"]
    );
    assert_eq!(
        keys(s.kv_scan("topics", Some(all[2].id), 10).await.unwrap()),
        Vec::<String>::new()
    );
    assert_eq!(
        keys(s.kv_scan("other", None, 10).await.unwrap()),
        vec!["orders"]
    );

    assert!(s.kv_delete("topics", "orders").await.unwrap());
    assert!(
        !s.kv_delete("topics", "orders").await.unwrap(),
        "already deleted"
    );
    assert_eq!(s.kv_find("topics", "orders").await.unwrap(), None);
    assert_eq!(
        keys(s.kv_scan("topics", None, 10).await.unwrap()),
        vec!["payments", "refunds"]
    );
    assert_eq!(
        s.kv_find("other", "orders").await.unwrap().unwrap().v,
        "elsewhere",
        "other category kept"
    );
    assert!(
        s.kv_create("topics", "orders", "again", at(8))
            .await
            .unwrap(),
        "a deleted key can be created again"
    );
    assert_eq!(
        s.kv_find("topics", "orders")
            .await
            .unwrap()
            .unwrap()
            .version,
        1
    );
}
