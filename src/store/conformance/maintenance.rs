//! Checks of [`Maintenance`](crate::store::Maintenance): rescheduling and retention deletes.

use std::collections::BTreeMap;

use super::{apply1, get, seed};
use crate::model::{GlobalStatus, GlobalTxn, Op, Version};
use crate::store::testing::{at, branch, gid, txn, txn_with};
use crate::store::{DynStore, TxnUpdate, Write, WriteOutcome};

/// `reset_cron_time` pulls unfinished rows scheduled after `after` forward to `now`, at most `limit` per
/// call, and counts them.
pub async fn check_reset_cron_time(s: &DynStore) {
    let rows = [
        ("late-1", GlobalStatus::Submitted, Some(at(100))),
        ("late-2", GlobalStatus::Aborting, Some(at(200))),
        ("late-3", GlobalStatus::Prepared, Some(at(300))),
        ("at-after", GlobalStatus::Submitted, Some(at(10))),
        ("soon", GlobalStatus::Submitted, Some(at(5))),
        ("past", GlobalStatus::Submitted, Some(at(-10))),
        ("done", GlobalStatus::Succeed, Some(at(500))),
    ];
    let mut stored = BTreeMap::new();
    for (g, status, next) in rows {
        stored.insert(g, seed(s, txn_with(g, status, next), Vec::new()).await);
    }

    assert_eq!(s.reset_cron_time(at(10), at(1), 2).await.unwrap(), 2);
    assert_eq!(s.reset_cron_time(at(10), at(1), 2).await.unwrap(), 1);
    assert_eq!(s.reset_cron_time(at(10), at(1), 2).await.unwrap(), 0);

    for g in ["late-1", "late-2", "late-3"] {
        let t = get(s, &gid(g)).await;
        assert_eq!(t.next_cron_time, Some(at(1)), "{g} pulled forward");
        assert_eq!(
            (t.status, t.version, &t.owner),
            (stored[g].status, Version(1), &stored[g].owner),
            "{g}"
        );
    }
    for g in ["at-after", "soon", "past", "done"] {
        assert_eq!(get(s, &gid(g)).await, stored[g], "{g} untouched");
    }
    assert_eq!(stored["done"].next_cron_time, None);
}

/// `reset_next_cron_time` makes one unfinished transaction due now; it reports whether the gid exists, and
/// leaves a final transaction unscheduled.
pub async fn check_reset_next_cron_time(s: &DynStore) {
    let later = seed(
        s,
        txn_with("rn-later", GlobalStatus::Submitted, Some(at(100))),
        Vec::new(),
    )
    .await;
    let unscheduled = seed(
        s,
        txn_with("rn-none", GlobalStatus::Prepared, None),
        Vec::new(),
    )
    .await;
    let done = seed(
        s,
        txn_with("rn-done", GlobalStatus::Failed, Some(at(100))),
        Vec::new(),
    )
    .await;

    assert!(s.reset_next_cron_time(&later.gid, at(2)).await.unwrap());
    let t = get(s, &later.gid).await;
    assert_eq!(
        (t.next_cron_time, t.version, t.status),
        (Some(at(2)), Version(1), GlobalStatus::Submitted)
    );

    assert!(
        s.reset_next_cron_time(&unscheduled.gid, at(3))
            .await
            .unwrap()
    );
    assert_eq!(
        get(s, &unscheduled.gid).await.next_cron_time,
        Some(at(3)),
        "an unfinished row becomes due"
    );

    assert!(
        s.reset_next_cron_time(&done.gid, at(4)).await.unwrap(),
        "a final row exists"
    );
    assert_eq!(
        get(s, &done.gid).await,
        done,
        "a final row stays unscheduled and unchanged"
    );

    assert!(
        !s.reset_next_cron_time(&gid("rn-missing"), at(5))
            .await
            .unwrap()
    );
    assert_eq!(s.find_txn(&gid("rn-missing")).await.unwrap(), None);
}

/// `delete_finished` removes final transactions last updated before `before`, with their branches, at most
/// `limit` per call; unfinished and recent ones stay.
pub async fn check_delete_finished(s: &DynStore) {
    // (gid, final status and when it was reached; None: still running)
    let rows = [
        ("old-ok", Some((GlobalStatus::Succeed, -100))),
        ("old-failed", Some((GlobalStatus::Failed, -50))),
        ("old-ok-2", Some((GlobalStatus::Succeed, -60))),
        ("boundary", Some((GlobalStatus::Succeed, -10))),
        ("recent", Some((GlobalStatus::Failed, 0))),
        ("running", None),
    ];
    for (g, end) in rows {
        let t = seed(
            s,
            GlobalTxn {
                create_time: at(-200),
                update_time: at(-200),
                ..txn(g)
            },
            vec![branch(g, "01", Op::Action), branch(g, "01", Op::Compensate)],
        )
        .await;
        if let Some((status, secs)) = end {
            let mut u = TxnUpdate::of(&t, at(secs));
            u.status = Some(status);
            assert_eq!(
                apply1(s, Write::Update(u)).await,
                WriteOutcome::Applied(Version(2))
            );
        }
    }

    assert_eq!(s.delete_finished(at(-10), 2).await.unwrap(), 2);
    assert_eq!(s.delete_finished(at(-10), 2).await.unwrap(), 1);
    assert_eq!(s.delete_finished(at(-10), 2).await.unwrap(), 0);

    for g in ["old-ok", "old-failed", "old-ok-2"] {
        assert_eq!(s.find_txn(&gid(g)).await.unwrap(), None, "{g} deleted");
        assert_eq!(
            s.find_branches(&gid(g)).await.unwrap(),
            Vec::new(),
            "branches of {g} deleted"
        );
    }
    for g in ["boundary", "recent", "running"] {
        assert!(s.find_txn(&gid(g)).await.unwrap().is_some(), "{g} kept");
        assert_eq!(
            s.find_branches(&gid(g)).await.unwrap().len(),
            2,
            "branches of {g} kept"
        );
    }
}
