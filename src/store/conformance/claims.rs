//! Checks of [`ClaimStore`](crate::store::ClaimStore): claims of due transactions and their exclusivity,
//! the partition count, fencing epochs, and fenced writes and claims.

use std::collections::{BTreeMap, BTreeSet};

use super::{apply1, get, gids, insert, seed, sorted_by_gid};
use crate::model::{
    Fence, Gid, GlobalStatus, GlobalTxn, LeaseEpoch, Millis, Op, Partition, Version,
};
use crate::store::testing::{T0, at, branch, gid, txn, txn_with};
use crate::store::{
    self, Claim, ClaimScope, DynStore, PartitionFence, Schedule, TxnUpdate, Write, WriteOutcome,
};

/// `claim_due` takes unfinished rows due at `now`, earliest first, up to `limit`, in the given partitions;
/// it sets `next_cron_time = lease_until` and `owner`, bumps the version, and changes nothing else.
pub async fn check_claim_due(s: &DynStore) {
    let rows = [
        ("due-1", GlobalStatus::Submitted, Some(at(-40)), 1),
        ("due-2", GlobalStatus::Aborting, Some(at(-30)), 2),
        ("due-3", GlobalStatus::Prepared, Some(at(-20)), 2),
        ("due-now", GlobalStatus::Submitted, Some(T0), 3),
        ("later", GlobalStatus::Submitted, Some(at(1)), 1),
        ("unscheduled", GlobalStatus::Submitted, None, 1),
        ("done", GlobalStatus::Succeed, Some(at(-50)), 1),
    ];
    let mut stored = BTreeMap::new();
    for (g, status, next, p) in rows {
        let t = seed(
            s,
            GlobalTxn {
                partition: Partition(p),
                ..txn_with(g, status, next)
            },
            Vec::new(),
        )
        .await;
        stored.insert(g, t);
    }
    let claimed_as = |g: &str, owner: &str, until: Millis| GlobalTxn {
        next_cron_time: Some(until),
        owner: owner.to_owned(),
        version: Version(stored[g].version.0 + 1),
        ..stored[g].clone()
    };
    let claim = |limit, partitions: Option<Vec<Partition>>, owner: &str| Claim {
        now: T0,
        lease_until: at(60),
        owner: owner.to_owned(),
        limit,
        scope: partitions.map_or(ClaimScope::All, ClaimScope::Partitions),
    };

    // Nothing in partitions 7 and 8, nothing for an empty partition list.
    assert_eq!(
        s.claim_due(&claim(10, Some(vec![Partition(7), Partition(8)]), "r0"))
            .await
            .unwrap()
            .txns,
        Vec::new()
    );
    assert_eq!(
        s.claim_due(&claim(10, Some(Vec::new()), "r0"))
            .await
            .unwrap()
            .txns,
        Vec::new()
    );
    assert_eq!(
        s.claim_due(&claim(0, None, "r0")).await.unwrap().txns,
        Vec::new(),
        "limit 0"
    );

    // Partition 2 only, limit 1: the earliest there.
    let got = s
        .claim_due(&claim(1, Some(vec![Partition(2)]), "r1"))
        .await
        .unwrap()
        .txns;
    assert_eq!(got, vec![claimed_as("due-2", "r1", at(60))]);

    // All partitions, limit 2: the two earliest still due.
    let got = sorted_by_gid(s.claim_due(&claim(2, None, "r2")).await.unwrap().txns);
    assert_eq!(
        got,
        vec![
            claimed_as("due-1", "r2", at(60)),
            claimed_as("due-3", "r2", at(60))
        ]
    );

    // The rest that is due (a row due exactly at `now` counts), with partitions 1 and 3.
    let got = s
        .claim_due(&claim(10, Some(vec![Partition(1), Partition(3)]), "r3"))
        .await
        .unwrap()
        .txns;
    assert_eq!(got, vec![claimed_as("due-now", "r3", at(60))]);
    assert_eq!(
        s.claim_due(&claim(10, None, "r4")).await.unwrap().txns,
        Vec::new(),
        "everything due is leased"
    );

    // The store holds what the claims returned, and nothing else changed.
    for (g, owner) in [
        ("due-1", "r2"),
        ("due-2", "r1"),
        ("due-3", "r2"),
        ("due-now", "r3"),
    ] {
        assert_eq!(get(s, &gid(g)).await, claimed_as(g, owner, at(60)), "{g}");
    }
    for g in ["later", "unscheduled", "done"] {
        assert_eq!(get(s, &gid(g)).await, stored[g], "{g} untouched");
    }
    assert_eq!(stored["done"].next_cron_time, None);

    // When the lease runs out, the rows are due again (with `later`), earliest first.
    let again = Claim {
        now: at(60),
        lease_until: at(120),
        owner: "r5".into(),
        limit: 10,
        scope: ClaimScope::All,
    };
    let got = s.claim_due(&again).await.unwrap().txns;
    let mut got_gids = gids(&got);
    got_gids.sort_unstable();
    assert_eq!(
        got_gids,
        vec!["due-1", "due-2", "due-3", "due-now", "later"]
    );
    for t in &got {
        let claims = if t.gid.as_str() == "later" { 1 } else { 2 };
        assert_eq!(
            (t.owner.as_str(), t.next_cron_time, t.version),
            ("r5", Some(at(120)), Version(1 + claims)),
            "every claim bumps the version ({})",
            t.gid
        );
    }
}

/// Concurrent claims never return the same row, and together they take every due row.
pub async fn check_concurrent_claims_are_disjoint(s: &DynStore) {
    const ROWS: usize = 100;
    const CLAIMERS: usize = 8;
    let writes: Vec<Write> = (0..ROWS)
        .map(|i| {
            let t = GlobalTxn {
                partition: Partition((i % 4) as u16),
                ..txn_with(
                    &format!("cc-{i:03}"),
                    GlobalStatus::Submitted,
                    Some(at(-(i as i64))),
                )
            };
            insert(t, Vec::new())
        })
        .collect();
    let outcomes = s.apply(&writes).await.unwrap();
    assert!(
        outcomes
            .iter()
            .all(|o| *o == WriteOutcome::Applied(Version(1))),
        "{outcomes:?}"
    );

    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..CLAIMERS {
        let s = s.clone();
        tasks.spawn(async move {
            let owner = format!("claimer-{c}");
            let claim = Claim {
                now: T0,
                lease_until: at(60),
                owner: owner.clone(),
                limit: 7,
                scope: ClaimScope::All,
            };
            let mut mine = Vec::new();
            // Claim until nothing is left; a claim that returns rows always makes progress.
            for _ in 0..=ROWS {
                let got = s.claim_due(&claim).await.unwrap().txns;
                if got.is_empty() {
                    return (owner, mine);
                }
                assert!(got.len() <= 7, "limit respected: {}", got.len());
                mine.extend(got);
            }
            panic!("{owner} kept claiming rows: claims do not lease them");
        });
    }
    let mut owner_of = BTreeMap::new();
    let mut total = 0;
    while let Some(joined) = tasks.join_next().await {
        let (owner, mine) = joined.unwrap();
        for t in mine {
            total += 1;
            assert_eq!(
                (t.owner.as_str(), t.next_cron_time, t.version),
                (owner.as_str(), Some(at(60)), Version(2))
            );
            if let Some(first) = owner_of.insert(t.gid.clone(), owner.clone()) {
                panic!("{} claimed by both {first} and {owner}", t.gid);
            }
        }
    }
    assert_eq!(total, ROWS, "every due row claimed exactly once");
    let expected: BTreeSet<Gid> = (0..ROWS).map(|i| gid(&format!("cc-{i:03}"))).collect();
    assert_eq!(owner_of.keys().cloned().collect::<BTreeSet<_>>(), expected);
    for (g, owner) in &owner_of {
        assert_eq!(
            &get(s, g).await.owner,
            owner,
            "the store agrees on the owner of {g}"
        );
    }
}

/// Claims are exclusive: a row under a live claim (non-empty `owner`, `next_cron_time` later than now) is
/// left alone by `reset_cron_time`, `reset_next_cron_time` and an update conditioned on `unclaimed_at`;
/// once the claim runs out (or its holder releases it with `owner = ""`) each of them applies again.
pub async fn check_live_claims_are_exclusive(s: &DynStore) {
    let claimed = seed(
        s,
        GlobalTxn {
            owner: "pass-a".to_owned(),
            ..txn_with("lc-claimed", GlobalStatus::Submitted, Some(at(30)))
        },
        Vec::new(),
    )
    .await;
    let free = seed(
        s,
        txn_with("lc-free", GlobalStatus::Submitted, Some(at(30))),
        Vec::new(),
    )
    .await;

    assert_eq!(
        s.reset_cron_time(at(10), at(1), 10).await.unwrap(),
        1,
        "only the unclaimed row is pulled forward"
    );
    assert_eq!(get(s, &claimed.gid).await, claimed, "a live claim stays");
    assert!(s.reset_next_cron_time(&claimed.gid, at(2)).await.unwrap());
    assert_eq!(get(s, &claimed.gid).await, claimed, "a live claim stays");

    // Taking the claim while it is live: `Conflict`, nothing changes.
    let take = |now: Millis, t: &GlobalTxn| {
        let mut u = TxnUpdate::of(t, now);
        u.owner = Some("pass-b".to_owned());
        u.unclaimed_at = Some(now);
        u.schedule = Schedule::At {
            interval: 10,
            at: now.plus_secs(20),
        };
        Write::Update(u)
    };
    assert_eq!(
        apply1(s, take(at(29), &claimed)).await,
        WriteOutcome::Conflict
    );
    assert_eq!(get(s, &claimed.gid).await, claimed);
    // Once it ran out, the take applies and bumps the version.
    assert_eq!(
        apply1(s, take(at(30), &claimed)).await,
        WriteOutcome::Applied(Version(2))
    );
    let t = get(s, &claimed.gid).await;
    assert_eq!(
        (t.owner.as_str(), t.next_cron_time, t.version),
        ("pass-b", Some(at(50)), Version(2))
    );
    // The holder releases it: free for everyone again, however far the schedule lies ahead.
    let mut release = TxnUpdate::of(&t, at(31));
    release.owner = Some(String::new());
    release.schedule = Schedule::At {
        interval: 10,
        at: at(400),
    };
    assert_eq!(
        apply1(s, Write::Update(release)).await,
        WriteOutcome::Applied(Version(3))
    );
    let t = get(s, &claimed.gid).await;
    assert_eq!(
        apply1(s, take(at(32), &t)).await,
        WriteOutcome::Applied(Version(4)),
        "a released row can be taken before its schedule"
    );
    let t = get(s, &free.gid).await;
    assert_eq!(t.next_cron_time, Some(at(1)));
    assert_eq!(
        apply1(s, take(at(0), &t)).await,
        WriteOutcome::Applied(Version(2))
    );
}

/// The partition count is recorded by the first `init_partitions` and never changes; each partition gets a
/// fencing row at epoch 0.
pub async fn check_partition_count_is_fixed(s: &DynStore) {
    assert_eq!(s.init_partitions(8).await.unwrap(), 8);
    assert_eq!(s.init_partitions(8).await.unwrap(), 8, "idempotent");
    assert_eq!(
        s.init_partitions(16).await.unwrap(),
        8,
        "a later count does not replace the recorded one"
    );
    let fences = s.partition_fences().await.unwrap();
    assert_eq!(
        fences,
        (0..8)
            .map(|p| PartitionFence {
                partition: Partition(p),
                epoch: LeaseEpoch(0),
                owner: String::new(),
                fenced_at: Millis(0),
            })
            .collect::<Vec<_>>()
    );
}

/// `fence_partition` bumps one partition's epoch by one per call and records the owner; concurrent bumps
/// get distinct epochs; a partition without a fencing row is an error.
pub async fn check_fence_partition_bumps_epochs(s: &DynStore) {
    s.init_partitions(4).await.unwrap();
    assert_eq!(
        s.fence_partition(Partition(1), "a_1", at(1)).await.unwrap(),
        LeaseEpoch(1)
    );
    assert_eq!(
        s.fence_partition(Partition(1), "b_1", at(2)).await.unwrap(),
        LeaseEpoch(2)
    );
    assert_eq!(
        s.fence_partition(Partition(2), "a_1", at(3)).await.unwrap(),
        LeaseEpoch(1)
    );
    let fences = s.partition_fences().await.unwrap();
    assert_eq!(
        fences[1],
        PartitionFence {
            partition: Partition(1),
            epoch: LeaseEpoch(2),
            owner: "b_1".to_owned(),
            fenced_at: at(2),
        }
    );
    assert_eq!(fences[0].epoch, LeaseEpoch(0), "others untouched");
    assert!(matches!(
        s.fence_partition(Partition(9), "a_1", at(4)).await,
        Err(store::Error::Corrupt(_))
    ));

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..12 {
        let s = s.clone();
        tasks.spawn(async move {
            s.fence_partition(Partition(3), &format!("n{i}_x"), at(5))
                .await
                .unwrap()
        });
    }
    let mut epochs = BTreeSet::new();
    while let Some(e) = tasks.join_next().await {
        assert!(epochs.insert(e.unwrap()), "every bump its own epoch");
    }
    assert_eq!(epochs, (1..=12).map(LeaseEpoch).collect::<BTreeSet<_>>());
}

/// A fenced update applies only under the partition's current epoch; a stale epoch is `Conflict` and
/// changes nothing (also when the write carries new branches), and does not affect its batch neighbours.
pub async fn check_stale_epoch_writes_conflict(s: &DynStore) {
    s.init_partitions(4).await.unwrap();
    let t = seed(s, txn("fenced"), Vec::new()).await;
    let other = seed(s, txn("fenced-neighbour"), Vec::new()).await;
    let p = t.partition;
    let e1 = s.fence_partition(p, "a_1", at(1)).await.unwrap();
    let fence1 = Fence {
        partition: p,
        epoch: e1,
    };

    let mut u = TxnUpdate::of(&t, at(2));
    u.fence = Some(fence1);
    u.rollback_reason = Some("under e1".into());
    assert_eq!(
        apply1(s, Write::Update(u)).await,
        WriteOutcome::Applied(Version(2))
    );
    let t = get(s, &t.gid).await;

    // Another owner takes the partition over: e1 is stale from now on.
    let e2 = s.fence_partition(p, "b_1", at(3)).await.unwrap();
    assert_eq!(e2, LeaseEpoch(e1.0 + 1));
    let mut stale = TxnUpdate::of(&t, at(4));
    stale.fence = Some(fence1);
    stale.status = Some(GlobalStatus::Succeed);
    let mut stale_with_branch = stale.clone();
    stale_with_branch.status = None;
    stale_with_branch.new_branches = vec![branch("fenced", "09", Op::Action)];
    let mut neighbour = TxnUpdate::of(&other, at(4));
    neighbour.status = Some(GlobalStatus::Aborting);
    let outcomes = s
        .apply(&[
            Write::Update(stale),
            Write::Update(neighbour),
            Write::Update(stale_with_branch),
        ])
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        vec![
            WriteOutcome::Conflict,
            WriteOutcome::Applied(Version(2)),
            WriteOutcome::Conflict
        ]
    );
    assert_eq!(get(s, &t.gid).await, t, "the stale writes changed nothing");
    assert!(s.find_branches(&t.gid).await.unwrap().is_empty());

    // The same change under the current epoch applies; an unfenced write still only checks the version.
    let mut current = TxnUpdate::of(&t, at(5));
    current.fence = Some(Fence {
        partition: p,
        epoch: e2,
    });
    current.status = Some(GlobalStatus::Succeed);
    assert_eq!(
        apply1(s, Write::Update(current)).await,
        WriteOutcome::Applied(Version(3))
    );
    // A fence naming a partition without a fencing row never applies.
    let t = get(s, &other.gid).await;
    let mut unknown = TxnUpdate::of(&t, at(6));
    unknown.fence = Some(Fence {
        partition: Partition(40),
        epoch: LeaseEpoch(0),
    });
    assert_eq!(
        apply1(s, Write::Update(unknown)).await,
        WriteOutcome::Conflict
    );
}

/// A fenced claim takes rows only from partitions whose epoch is current, and reports the stale ones.
pub async fn check_fenced_claims(s: &DynStore) {
    s.init_partitions(4).await.unwrap();
    for (g, p) in [("fc-1", 1), ("fc-2", 2), ("fc-3", 3)] {
        seed(
            s,
            GlobalTxn {
                partition: Partition(p),
                ..txn_with(g, GlobalStatus::Submitted, Some(at(-10)))
            },
            Vec::new(),
        )
        .await;
    }
    let e1 = s.fence_partition(Partition(1), "a_1", at(0)).await.unwrap();
    let e2 = s.fence_partition(Partition(2), "a_1", at(0)).await.unwrap();
    // Partition 2 changes hands after "a" read its epoch.
    s.fence_partition(Partition(2), "b_1", at(0)).await.unwrap();
    let claim = Claim {
        now: T0,
        lease_until: at(60),
        owner: "a".into(),
        limit: 10,
        scope: ClaimScope::Fenced(vec![
            Fence {
                partition: Partition(1),
                epoch: e1,
            },
            Fence {
                partition: Partition(2),
                epoch: e2,
            },
        ]),
    };
    let claimed = s.claim_due(&claim).await.unwrap();
    assert_eq!(gids(&claimed.txns), vec!["fc-1"]);
    assert_eq!(claimed.stale, vec![Partition(2)]);
    let untouched = get(s, &gid("fc-2")).await;
    assert_eq!(
        (untouched.owner.as_str(), untouched.next_cron_time),
        ("", Some(at(-10)))
    );
    // Nothing fenced: nothing claimed.
    let none = Claim {
        scope: ClaimScope::Fenced(Vec::new()),
        ..claim
    };
    assert_eq!(s.claim_due(&none).await.unwrap(), store::Claimed::default());
}
