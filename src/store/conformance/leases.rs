//! Checks of [`LeaseStore`](crate::store::LeaseStore).

use crate::model::Millis;
use crate::store::DynStore;
use crate::store::testing::{T0, at};

/// Leases: taken when missing, free or expired on the caller's clock, renewed by the holder only; released
/// by the holder only; listed by prefix while live.
pub async fn check_leases(s: &DynStore) {
    let (p1, m) = ("partition/1", "member/n1");
    assert!(s.lease_acquire(p1, "a_1", T0, 4000).await.unwrap());
    assert!(
        !s.lease_acquire(p1, "b_1", at(1), 4000).await.unwrap(),
        "live"
    );
    assert!(
        s.lease_acquire(p1, "a_1", at(2), 4000).await.unwrap(),
        "renewal"
    );
    assert!(s.lease_acquire(m, "a_1", at(2), 4000).await.unwrap());
    let listed = s.lease_list("partition/", at(3)).await.unwrap();
    assert_eq!(listed.len(), 1);
    let l = &listed[0];
    assert_eq!(
        (
            l.name.as_str(),
            l.holder.as_str(),
            l.acquired_at,
            l.renewed_at,
            l.expires_at,
            l.transitions
        ),
        (p1, "a_1", T0, at(2), at(6), 1)
    );
    assert_eq!(s.lease_list("", at(3)).await.unwrap().len(), 2);
    assert_eq!(s.lease_list("member/", at(3)).await.unwrap()[0].name, m);
    assert!(
        s.lease_list("", at(6)).await.unwrap().is_empty(),
        "expired at expires_at"
    );
    assert!(
        !s.lease_acquire(p1, "b_1", Millis(at(6).0 - 1), 4000)
            .await
            .unwrap()
    );
    assert!(
        s.lease_acquire(p1, "b_1", at(6), 4000).await.unwrap(),
        "expired"
    );
    let l = &s.lease_list("partition/", at(7)).await.unwrap()[0];
    assert_eq!(
        (l.holder.as_str(), l.acquired_at, l.transitions),
        ("b_1", at(6), 2)
    );
    assert!(
        !s.lease_release(p1, "a_1").await.unwrap(),
        "not a's any more"
    );
    assert!(s.lease_release(p1, "b_1").await.unwrap());
    assert!(s.lease_list("partition/", at(7)).await.unwrap().is_empty());
    assert!(
        s.lease_acquire(p1, "c_1", at(7), 4000).await.unwrap(),
        "free after release"
    );

    // Concurrent first acquisitions: exactly one wins.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..8 {
        let s = s.clone();
        tasks.spawn(async move {
            s.lease_acquire("partition/2", &format!("n{i}_x"), at(8), 4000)
                .await
                .unwrap()
        });
    }
    let mut winners = 0;
    while let Some(won) = tasks.join_next().await {
        winners += usize::from(won.unwrap());
    }
    assert_eq!(winners, 1);
}
