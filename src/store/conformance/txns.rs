//! Checks of [`TxnStore`](crate::store::TxnStore): inserts, compare-and-set updates, branches, batches,
//! reads and listing.

use std::collections::BTreeMap;

use super::{apply1, get, gids, insert, seed};
use crate::model::{
    Branch, BranchId, BranchStatus, GlobalStatus, GlobalTxn, Op, Partition, Protocol, TransOptions,
    TransType, Version,
};
use crate::store::testing::{T0, at, branch, gid, txn, txn_with};
use crate::store::{
    BranchUpdate, Claim, ClaimScope, DynStore, ScanFilter, Schedule, TxnUpdate, Write, WriteOutcome,
};

/// Every field of a transaction and its branches survives the round trip; the store assigns ids and
/// version 1; branches come back in insertion order; a final insert is never scheduled.
pub async fn check_insert_round_trip(s: &DynStore) {
    let mut headers = BTreeMap::new();
    headers.insert("x-tenant".to_owned(), "acme".to_owned());
    headers.insert("authorization".to_owned(), "Bearer t0k3n".to_owned());
    let t = GlobalTxn {
        id: 4242,            // ignored: the store assigns ids
        version: Version(9), // ignored: stored as 1
        trans_type: TransType::Msg,
        protocol: Protocol::Grpc,
        query_prepared: "http://svc/query-prepared".to_owned(),
        custom_data: r#"{"delay":3,"name":"ünïcödé ✓ 💸"}"#.to_owned(),
        options: TransOptions {
            wait_result: true,
            timeout_to_fail: 30,
            request_timeout: 5,
            retry_interval: 7,
            branch_headers: headers,
            retry_limit: 4,
            retry_count: 2,
            concurrent: true,
            backoff_cap: 60,
            policy: "shop/payments".to_owned(),
        },
        result: "cmVzdWx0".to_owned(),
        rollback_reason: "not yet".to_owned(),
        update_time: at(1),
        next_cron_interval: 15,
        next_cron_time: Some(at(15)),
        owner: "replica-7".to_owned(),
        partition: Partition(63),
        ..txn("round-trip")
    };
    let mut done = branch("round-trip", "01", Op::Action);
    done.status = BranchStatus::Succeed;
    done.update_time = at(2);
    done.finish_time = Some(at(2));
    let mut undone = branch("round-trip", "01", Op::Compensate);
    undone.status = BranchStatus::Failed;
    undone.rollback_time = Some(at(3));
    undone.url = String::new();
    undone.bin_data = Vec::new();
    let mut binary = branch("round-trip", "00", Op::Msg);
    binary.bin_data = vec![0, 255, 1, 128, 0, 0xC3, 0x28]; // not UTF-8
    // Deliberately not in branch-id order: the store keeps insertion order.
    let branches = vec![binary, done, undone];

    let outcomes = s
        .apply(&[insert(t.clone(), branches.clone())])
        .await
        .unwrap();
    assert_eq!(outcomes, vec![WriteOutcome::Applied(Version(1))]);

    let stored = get(s, &t.gid).await;
    assert!(stored.id > 0, "id assigned: {}", stored.id);
    assert_eq!(
        stored,
        GlobalTxn {
            id: stored.id,
            version: Version(1),
            ..t.clone()
        }
    );

    let stored_branches = s.find_branches(&t.gid).await.unwrap();
    assert_eq!(stored_branches.len(), 3);
    assert!(stored_branches[0].id > 0);
    assert!(
        stored_branches.windows(2).all(|w| w[0].id < w[1].id),
        "ids grow in insertion order"
    );
    let expected: Vec<Branch> = branches
        .iter()
        .zip(&stored_branches)
        .map(|(b, got)| Branch {
            id: got.id,
            ..b.clone()
        })
        .collect();
    assert_eq!(stored_branches, expected);

    // A second transaction does not see the first one's branches; a missing gid has none.
    let other = seed(
        s,
        txn("round-trip-2"),
        vec![branch("round-trip-2", "01", Op::Action)],
    )
    .await;
    assert!(other.id > stored.id);
    assert_eq!(s.find_branches(&other.gid).await.unwrap().len(), 1);
    assert_eq!(s.find_txn(&gid("missing")).await.unwrap(), None);
    assert_eq!(s.find_branches(&gid("missing")).await.unwrap(), Vec::new());

    // Final transactions are never scheduled, even when inserted with a schedule.
    let final_txn = GlobalTxn {
        rollback_time: Some(at(1)),
        ..txn_with("inserted-final", GlobalStatus::Failed, Some(at(5)))
    };
    let stored = seed(s, final_txn.clone(), Vec::new()).await;
    assert_eq!(
        stored,
        GlobalTxn {
            id: stored.id,
            next_cron_time: None,
            ..final_txn
        }
    );
}

/// Inserting an existing gid is a `Conflict` and changes neither the row nor its branches.
pub async fn check_insert_existing_gid_conflicts(s: &DynStore) {
    let before = seed(s, txn("dup"), vec![branch("dup", "01", Op::Action)]).await;
    let before_branches = s.find_branches(&before.gid).await.unwrap();

    let again = GlobalTxn {
        status: GlobalStatus::Prepared,
        custom_data: "{}".to_owned(),
        create_time: at(5),
        ..txn("dup")
    };
    let outcome = apply1(
        s,
        insert(
            again,
            vec![
                branch("dup", "02", Op::Action),
                branch("dup", "03", Op::Action),
            ],
        ),
    )
    .await;
    assert_eq!(outcome, WriteOutcome::Conflict);
    assert_eq!(get(s, &before.gid).await, before);
    assert_eq!(s.find_branches(&before.gid).await.unwrap(), before_branches);
}

/// `Update` is a compare-and-set on status and version (or status only), bumping the version by one.
pub async fn check_update_compare_and_set(s: &DynStore) {
    let base = seed(s, txn("cas"), Vec::new()).await;
    assert_eq!(base.version, Version(1));

    let mut u = TxnUpdate::of(&base, at(1));
    u.status = Some(GlobalStatus::Aborting);
    u.rollback_reason = Some("branch 02 failed".to_owned());
    u.result = Some("cmVzdWx0".to_owned());
    u.options = Some(TransOptions {
        retry_count: 3,
        ..TransOptions::default()
    });

    let wrong_status = TxnUpdate {
        expect_status: GlobalStatus::Prepared,
        ..u.clone()
    };
    assert_eq!(
        apply1(s, Write::Update(wrong_status)).await,
        WriteOutcome::Conflict
    );
    let wrong_version = TxnUpdate {
        expect_version: Some(Version(2)),
        ..u.clone()
    };
    assert_eq!(
        apply1(s, Write::Update(wrong_version)).await,
        WriteOutcome::Conflict
    );
    assert_eq!(get(s, &base.gid).await, base, "a conflict changes nothing");

    assert_eq!(
        apply1(s, Write::Update(u.clone())).await,
        WriteOutcome::Applied(Version(2))
    );
    let after = get(s, &base.gid).await;
    let expected = GlobalTxn {
        status: GlobalStatus::Aborting,
        rollback_reason: "branch 02 failed".to_owned(),
        result: "cmVzdWx0".to_owned(),
        options: TransOptions {
            retry_count: 3,
            ..TransOptions::default()
        },
        update_time: at(1),
        version: Version(2),
        ..base.clone()
    };
    assert_eq!(after, expected);

    // Not idempotent: the same update again has a stale condition.
    assert_eq!(apply1(s, Write::Update(u)).await, WriteOutcome::Conflict);
    assert_eq!(get(s, &base.gid).await, expected);

    // Status-only condition (e.g. registerBranch): any version, the right status.
    let mut status_only = TxnUpdate::of(&after, at(2));
    status_only.expect_version = None;
    status_only.result = Some("second".to_owned());
    assert_eq!(
        apply1(s, Write::Update(status_only.clone())).await,
        WriteOutcome::Applied(Version(3))
    );
    assert_eq!(
        get(s, &base.gid).await,
        GlobalTxn {
            result: "second".to_owned(),
            update_time: at(2),
            version: Version(3),
            ..expected.clone()
        }
    );
    assert_eq!(
        apply1(s, Write::Update(status_only.clone())).await,
        WriteOutcome::Applied(Version(4)),
        "a status-only condition still holds"
    );
    let wrong = TxnUpdate {
        expect_status: GlobalStatus::Submitted,
        ..status_only.clone()
    };
    assert_eq!(
        apply1(s, Write::Update(wrong)).await,
        WriteOutcome::Conflict
    );
    assert_eq!(get(s, &base.gid).await.version, Version(4));

    // A missing row is a conflict too.
    let missing = TxnUpdate {
        gid: gid("cas-missing"),
        ..status_only
    };
    assert_eq!(
        apply1(s, Write::Update(missing)).await,
        WriteOutcome::Conflict
    );
    assert_eq!(s.find_txn(&gid("cas-missing")).await.unwrap(), None);
}

/// `Schedule::At` sets interval and time, `Keep` keeps them; a final status sets `finish_time` (succeed) or
/// `rollback_time` (failed) and unschedules, whatever the schedule says, and a final row stays unscheduled.
pub async fn check_final_status_and_schedule(s: &DynStore) {
    let a = seed(s, txn("sched-a"), Vec::new()).await;
    assert_eq!((a.next_cron_interval, a.next_cron_time), (10, Some(at(10))));

    let mut u = TxnUpdate::of(&a, at(1));
    u.schedule = Schedule::At {
        interval: 20,
        at: at(21),
    };
    assert_eq!(
        apply1(s, Write::Update(u)).await,
        WriteOutcome::Applied(Version(2))
    );
    let a2 = get(s, &a.gid).await;
    let expected = GlobalTxn {
        next_cron_interval: 20,
        next_cron_time: Some(at(21)),
        update_time: at(1),
        version: Version(2),
        ..a.clone()
    };
    assert_eq!(a2, expected);

    let mut u = TxnUpdate::of(&a2, at(2));
    u.status = Some(GlobalStatus::Aborting);
    assert_eq!(
        apply1(s, Write::Update(u)).await,
        WriteOutcome::Applied(Version(3))
    );
    let a3 = get(s, &a.gid).await;
    let expected = GlobalTxn {
        status: GlobalStatus::Aborting,
        update_time: at(2),
        version: Version(3),
        ..expected
    };
    assert_eq!(a3, expected, "Keep keeps interval and time");

    let mut u = TxnUpdate::of(&a3, at(3));
    u.status = Some(GlobalStatus::Succeed);
    u.schedule = Schedule::At {
        interval: 40,
        at: at(43),
    };
    assert_eq!(
        apply1(s, Write::Update(u)).await,
        WriteOutcome::Applied(Version(4))
    );
    let a4 = get(s, &a.gid).await;
    let expected = GlobalTxn {
        status: GlobalStatus::Succeed,
        finish_time: Some(at(3)),
        rollback_time: None,
        next_cron_time: None,
        update_time: at(3),
        version: Version(4),
        ..expected
    };
    assert_eq!(
        a4, expected,
        "succeed sets finish_time and unschedules; the schedule is ignored"
    );

    // An update of a row that is already final (say, a late result) does not schedule it again.
    let mut u = TxnUpdate::of(&a4, at(4));
    u.result = Some("late".to_owned());
    u.schedule = Schedule::At {
        interval: 50,
        at: at(54),
    };
    assert_eq!(
        apply1(s, Write::Update(u)).await,
        WriteOutcome::Applied(Version(5))
    );
    let a5 = get(s, &a.gid).await;
    assert_eq!(
        a5,
        GlobalTxn {
            result: "late".to_owned(),
            update_time: at(4),
            version: Version(5),
            ..expected
        },
        "a final row stays unscheduled"
    );

    let b = seed(s, txn("sched-b"), Vec::new()).await;
    let mut u = TxnUpdate::of(&b, at(5));
    u.status = Some(GlobalStatus::Failed);
    u.rollback_reason = Some("timeout".to_owned());
    assert_eq!(
        apply1(s, Write::Update(u)).await,
        WriteOutcome::Applied(Version(2))
    );
    assert_eq!(
        get(s, &b.gid).await,
        GlobalTxn {
            status: GlobalStatus::Failed,
            rollback_reason: "timeout".to_owned(),
            finish_time: None,
            rollback_time: Some(at(5)),
            next_cron_time: None,
            update_time: at(5),
            version: Version(2),
            ..b
        },
        "failed sets rollback_time and unschedules"
    );

    // Neither is ever due again.
    let claim = Claim {
        now: at(1_000_000),
        lease_until: at(1_000_060),
        owner: "r".into(),
        limit: 10,
        scope: ClaimScope::All,
    };
    assert_eq!(s.claim_due(&claim).await.unwrap().txns, Vec::new());
}

/// Branch status updates set `update_time`, and `finish_time` (succeed) or `rollback_time` (failed).
pub async fn check_branch_status_updates(s: &DynStore) {
    let g = "br";
    let t = seed(
        s,
        txn(g),
        vec![
            branch(g, "01", Op::Action),
            branch(g, "01", Op::Compensate),
            branch(g, "02", Op::Action),
            branch(g, "03", Op::Action),
        ],
    )
    .await;
    let before = s.find_branches(&t.gid).await.unwrap();

    let mut u = TxnUpdate::of(&t, at(7));
    u.branches = vec![
        BranchUpdate {
            branch_id: BranchId::new("01"),
            op: Op::Action,
            status: BranchStatus::Succeed,
        },
        BranchUpdate {
            branch_id: BranchId::new("01"),
            op: Op::Compensate,
            status: BranchStatus::Failed,
        },
        BranchUpdate {
            branch_id: BranchId::new("02"),
            op: Op::Action,
            status: BranchStatus::Prepared,
        },
    ];
    assert_eq!(
        apply1(s, Write::Update(u)).await,
        WriteOutcome::Applied(Version(2))
    );

    let after = s.find_branches(&t.gid).await.unwrap();
    let expected = vec![
        Branch {
            status: BranchStatus::Succeed,
            update_time: at(7),
            finish_time: Some(at(7)),
            ..before[0].clone()
        },
        Branch {
            status: BranchStatus::Failed,
            update_time: at(7),
            rollback_time: Some(at(7)),
            ..before[1].clone()
        },
        Branch {
            status: BranchStatus::Prepared,
            update_time: at(7),
            ..before[2].clone()
        },
        before[3].clone(),
    ];
    assert_eq!(after, expected);
    assert_eq!(
        get(s, &t.gid).await,
        GlobalTxn {
            update_time: at(7),
            version: Version(2),
            ..t
        }
    );
}

/// New branches are appended; a new branch that already exists (same gid, branch_id, op) makes the whole
/// update `DuplicateBranch` and changes nothing; a failed condition is `Conflict` whatever the branches.
pub async fn check_new_branches_and_duplicates(s: &DynStore) {
    let g = "nb";
    let t = seed(s, txn(g), vec![branch(g, "01", Op::Action)]).await;

    let mut u = TxnUpdate::of(&t, at(1));
    u.new_branches = vec![branch(g, "02", Op::Action), branch(g, "02", Op::Compensate)];
    assert_eq!(
        apply1(s, Write::Update(u)).await,
        WriteOutcome::Applied(Version(2))
    );
    let t2 = get(s, &t.gid).await;
    let branches = s.find_branches(&t.gid).await.unwrap();
    let keys: Vec<(&str, Op)> = branches
        .iter()
        .map(|b| (b.branch_id.as_str(), b.op))
        .collect();
    assert_eq!(
        keys,
        vec![
            ("01", Op::Action),
            ("02", Op::Action),
            ("02", Op::Compensate)
        ]
    );
    assert_eq!(
        branches[1],
        Branch {
            id: branches[1].id,
            ..branch(g, "02", Op::Action)
        }
    );

    // The update would change status, schedule and a branch, and add one new and one existing branch.
    let mut dup = TxnUpdate::of(&t2, at(2));
    dup.status = Some(GlobalStatus::Aborting);
    dup.schedule = Schedule::At {
        interval: 30,
        at: at(32),
    };
    dup.branches = vec![BranchUpdate {
        branch_id: BranchId::new("01"),
        op: Op::Action,
        status: BranchStatus::Succeed,
    }];
    dup.new_branches = vec![branch(g, "03", Op::Action), branch(g, "02", Op::Compensate)];
    assert_eq!(
        apply1(s, Write::Update(dup.clone())).await,
        WriteOutcome::DuplicateBranch
    );
    assert_eq!(
        get(s, &t.gid).await,
        t2,
        "a duplicate branch changes nothing"
    );
    assert_eq!(
        s.find_branches(&t.gid).await.unwrap(),
        branches,
        "a duplicate branch adds nothing"
    );

    // Status-only condition (registerBranch) with an existing branch.
    let status_only = TxnUpdate {
        expect_version: None,
        new_branches: vec![branch(g, "01", Op::Action)],
        ..dup.clone()
    };
    assert_eq!(
        apply1(s, Write::Update(status_only)).await,
        WriteOutcome::DuplicateBranch
    );
    // The same new branch twice in one update.
    let twice = TxnUpdate {
        new_branches: vec![branch(g, "04", Op::Action), branch(g, "04", Op::Action)],
        ..dup.clone()
    };
    assert_eq!(
        apply1(s, Write::Update(twice)).await,
        WriteOutcome::DuplicateBranch
    );
    // A failed condition is a conflict, even when a branch is a duplicate too.
    let stale = TxnUpdate {
        expect_version: Some(Version(1)),
        ..dup.clone()
    };
    assert_eq!(
        apply1(s, Write::Update(stale)).await,
        WriteOutcome::Conflict
    );
    let wrong_status = TxnUpdate {
        expect_status: GlobalStatus::Prepared,
        expect_version: None,
        ..dup
    };
    assert_eq!(
        apply1(s, Write::Update(wrong_status)).await,
        WriteOutcome::Conflict
    );

    assert_eq!(get(s, &t.gid).await, t2);
    assert_eq!(s.find_branches(&t.gid).await.unwrap(), branches);

    // Still writable afterwards.
    let mut u = TxnUpdate::of(&t2, at(3));
    u.new_branches = vec![branch(g, "03", Op::Action)];
    assert_eq!(
        apply1(s, Write::Update(u)).await,
        WriteOutcome::Applied(Version(3))
    );
    assert_eq!(s.find_branches(&t.gid).await.unwrap().len(), 4);
}

/// Concurrent compare-and-sets on one row: exactly one of the same-version updates wins; status-only
/// updates all apply, each with its own version; one new branch registered concurrently is added once.
pub async fn check_concurrent_updates(s: &DynStore) {
    const WRITERS: usize = 8;
    let t = seed(s, txn("race"), Vec::new()).await;

    let run = |make: Box<dyn Fn(usize) -> TxnUpdate + Send + Sync>| {
        let make = std::sync::Arc::new(make);
        async move {
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..WRITERS {
                let (s, make) = (s.clone(), make.clone());
                tasks.spawn(
                    async move { (i, s.apply(&[Write::Update(make(i))]).await.unwrap()[0]) },
                );
            }
            let mut outcomes = tasks.join_all().await;
            outcomes.sort_by_key(|(i, _)| *i);
            outcomes.into_iter().map(|(_, o)| o).collect::<Vec<_>>()
        }
    };

    // Same expected version: one winner.
    let base = t.clone();
    let outcomes = run(Box::new(move |i| {
        let mut u = TxnUpdate::of(&base, at(1));
        u.result = Some(format!("writer-{i}"));
        u
    }))
    .await;
    let winners: Vec<usize> = (0..WRITERS)
        .filter(|i| outcomes[*i] == WriteOutcome::Applied(Version(2)))
        .collect();
    assert_eq!(winners.len(), 1, "{outcomes:?}");
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == WriteOutcome::Conflict)
            .count(),
        WRITERS - 1,
        "{outcomes:?}"
    );
    let after = get(s, &t.gid).await;
    assert_eq!(
        (after.version, after.result),
        (Version(2), format!("writer-{}", winners[0]))
    );

    // Status only, each with a different new branch: all apply, one after the other.
    let outcomes = run(Box::new(|i| {
        let mut u = TxnUpdate::of(&txn("race"), at(2));
        u.expect_version = None;
        u.new_branches = vec![branch("race", &format!("{:02}", i + 1), Op::Action)];
        u
    }))
    .await;
    let mut versions: Vec<u64> = outcomes
        .iter()
        .map(|o| match o {
            WriteOutcome::Applied(v) => v.0,
            other => panic!("{other:?} in {outcomes:?}"),
        })
        .collect();
    versions.sort_unstable();
    assert_eq!(versions, (3..3 + WRITERS as u64).collect::<Vec<_>>());
    assert_eq!(get(s, &t.gid).await.version, Version(2 + WRITERS as u64));
    assert_eq!(s.find_branches(&t.gid).await.unwrap().len(), WRITERS);

    // Status only, all registering the same new branch: it is added once.
    let outcomes = run(Box::new(|_| {
        let mut u = TxnUpdate::of(&txn("race"), at(3));
        u.expect_version = None;
        u.new_branches = vec![branch("race", "99", Op::Compensate)];
        u
    }))
    .await;
    let applied = outcomes
        .iter()
        .filter(|o| matches!(o, WriteOutcome::Applied(_)))
        .count();
    let duplicates = outcomes
        .iter()
        .filter(|o| **o == WriteOutcome::DuplicateBranch)
        .count();
    assert_eq!((applied, duplicates), (1, WRITERS - 1), "{outcomes:?}");
    assert_eq!(s.find_branches(&t.gid).await.unwrap().len(), WRITERS + 1);
    assert_eq!(get(s, &t.gid).await.version, Version(3 + WRITERS as u64));
}

/// One `apply` of mixed writes gives one outcome per write, in order; writes see the earlier writes of the
/// batch, and a lost condition does not affect the others.
pub async fn check_mixed_batch(s: &DynStore) {
    let a = seed(s, txn("mix-a"), vec![branch("mix-a", "01", Op::Action)]).await;
    let mut aborting = TxnUpdate::of(&a, at(1));
    aborting.status = Some(GlobalStatus::Aborting);
    let mut stale = aborting.clone();
    stale.expect_version = Some(Version(7));
    stale.result = Some("stale".to_owned());
    let mut follow_up = TxnUpdate::of(
        &GlobalTxn {
            status: GlobalStatus::Aborting,
            version: Version(2),
            ..a.clone()
        },
        at(2),
    );
    follow_up.result = Some("second".to_owned());
    let mut dup = TxnUpdate::of(
        &GlobalTxn {
            status: GlobalStatus::Aborting,
            version: Version(3),
            ..a.clone()
        },
        at(3),
    );
    dup.result = Some("dup".to_owned());
    dup.new_branches = vec![branch("mix-a", "01", Op::Action)];
    let b = txn("mix-b");
    let mut grow_b = TxnUpdate::of(&b, at(4));
    grow_b.new_branches = vec![branch("mix-b", "02", Op::Action)];
    let missing = TxnUpdate::of(&txn("mix-missing"), at(5));

    let batch = vec![
        insert(b.clone(), vec![branch("mix-b", "01", Op::Action)]),
        Write::Update(stale),
        Write::Update(aborting),
        insert(txn("mix-a"), Vec::new()),
        Write::Update(missing),
        Write::Update(follow_up),
        Write::Update(dup),
        Write::Update(grow_b),
    ];
    let outcomes = s.apply(&batch).await.unwrap();
    assert_eq!(
        outcomes,
        vec![
            WriteOutcome::Applied(Version(1)),
            WriteOutcome::Conflict,
            WriteOutcome::Applied(Version(2)),
            WriteOutcome::Conflict,
            WriteOutcome::Conflict,
            WriteOutcome::Applied(Version(3)),
            WriteOutcome::DuplicateBranch,
            WriteOutcome::Applied(Version(2)),
        ]
    );

    assert_eq!(
        get(s, &a.gid).await,
        GlobalTxn {
            status: GlobalStatus::Aborting,
            result: "second".to_owned(),
            update_time: at(2),
            version: Version(3),
            ..a.clone()
        }
    );
    assert_eq!(s.find_branches(&a.gid).await.unwrap().len(), 1);
    let b_stored = get(s, &b.gid).await;
    assert_eq!(
        b_stored,
        GlobalTxn {
            id: b_stored.id,
            update_time: at(4),
            version: Version(2),
            ..b.clone()
        }
    );
    let b_branches: Vec<_> = s
        .find_branches(&b.gid)
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.branch_id)
        .collect();
    assert_eq!(b_branches, vec![BranchId::new("01"), BranchId::new("02")]);
    assert_eq!(s.find_txn(&gid("mix-missing")).await.unwrap(), None);
    assert_eq!(
        s.apply(&[]).await.unwrap(),
        Vec::new(),
        "an empty batch is fine"
    );
}

/// A large batch is applied with grouped statements, and gives exactly what applying its writes one by one
/// would: an existing gid among many new ones (in the second multi-row chunk, after a first chunk that
/// went in) is the `Conflict` of its own insert only (the others are stored with all their branches, in
/// order); branch status changes of many updates, at different times,
/// each get their own write's time; a write that names one branch twice leaves the last status.
pub async fn check_grouped_batch(s: &DynStore) {
    let existing = seed(s, txn("grp-070"), vec![branch("grp-070", "00", Op::Action)]).await;
    let names: Vec<String> = (0..100).map(|i| format!("grp-{i:03}")).collect();
    let inserts: Vec<Write> = names
        .iter()
        .map(|g| {
            insert(
                txn(g),
                vec![
                    branch(g, "01", Op::Compensate),
                    branch(g, "01", Op::Action),
                    branch(g, "02", Op::Compensate),
                    branch(g, "02", Op::Action),
                ],
            )
        })
        .collect();
    let outcomes = s.apply(&inserts).await.unwrap();
    for (g, outcome) in names.iter().zip(&outcomes) {
        let want = if g == "grp-070" {
            WriteOutcome::Conflict
        } else {
            WriteOutcome::Applied(Version(1))
        };
        assert_eq!(*outcome, want, "{g}");
    }
    assert_eq!(
        get(s, &existing.gid).await,
        existing,
        "the existing row is unchanged"
    );
    assert_eq!(s.find_branches(&existing.gid).await.unwrap().len(), 1);
    for g in names.iter().filter(|g| *g != "grp-070") {
        let stored: Vec<(String, Op)> = s
            .find_branches(&gid(g))
            .await
            .unwrap()
            .into_iter()
            .map(|b| (b.branch_id.to_string(), b.op))
            .collect();
        assert_eq!(
            stored,
            vec![
                ("01".to_owned(), Op::Compensate),
                ("01".to_owned(), Op::Action),
                ("02".to_owned(), Op::Compensate),
                ("02".to_owned(), Op::Action),
            ],
            "{g}"
        );
    }

    // Every other saga finishes at its own time; the rest fail their first action. One write names its
    // branch twice: the last status stands.
    let mut updates = Vec::new();
    for (i, g) in names.iter().enumerate().filter(|(_, g)| *g != "grp-070") {
        let t = get(s, &gid(g)).await;
        let mut u = TxnUpdate::of(&t, at(i as i64));
        let (status, branch_status) = if i % 2 == 0 {
            (GlobalStatus::Succeed, BranchStatus::Succeed)
        } else {
            (GlobalStatus::Aborting, BranchStatus::Failed)
        };
        u.status = Some(status);
        u.branches = vec![
            BranchUpdate {
                branch_id: BranchId::new("01"),
                op: Op::Action,
                status: branch_status,
            },
            BranchUpdate {
                branch_id: BranchId::new("02"),
                op: Op::Action,
                status: branch_status,
            },
        ];
        if i == 7 {
            u.branches.push(BranchUpdate {
                branch_id: BranchId::new("02"),
                op: Op::Action,
                status: BranchStatus::Prepared,
            });
        }
        updates.push(Write::Update(u));
    }
    let outcomes = s.apply(&updates).await.unwrap();
    assert!(
        outcomes
            .iter()
            .all(|o| *o == WriteOutcome::Applied(Version(2))),
        "{outcomes:?}"
    );
    for (i, g) in names.iter().enumerate().filter(|(_, g)| *g != "grp-070") {
        let branches = s.find_branches(&gid(g)).await.unwrap();
        let when = at(i as i64);
        for b in &branches {
            let (status, finish, rollback, updated) = match (b.op, b.branch_id.as_str(), i % 2) {
                (Op::Compensate, _, _) => (BranchStatus::Prepared, None, None, T0),
                (Op::Action, "02", _) if i == 7 => (BranchStatus::Prepared, None, None, when),
                (Op::Action, _, 0) => (BranchStatus::Succeed, Some(when), None, when),
                (Op::Action, _, _) => (BranchStatus::Failed, None, Some(when), when),
                _ => unreachable!(),
            };
            assert_eq!(
                (b.status, b.finish_time, b.rollback_time, b.update_time),
                (status, finish, rollback, updated),
                "{g} {} {}",
                b.branch_id,
                b.op
            );
        }
        let t = get(s, &gid(g)).await;
        assert_eq!(t.update_time, when, "{g}");
        assert_eq!(t.version, Version(2), "{g}");
    }
}

/// `scan_txns` filters by status, type and creation time (inclusive), newest id first, paged by `before_id`.
pub async fn check_scan_txns(s: &DynStore) {
    let rows = [
        ("s1", TransType::Saga, GlobalStatus::Submitted, 0),
        ("s2", TransType::Msg, GlobalStatus::Prepared, 1),
        ("s3", TransType::Saga, GlobalStatus::Succeed, 2),
        ("s4", TransType::Tcc, GlobalStatus::Submitted, 3),
        ("s5", TransType::Saga, GlobalStatus::Submitted, 4),
        ("s6", TransType::Saga, GlobalStatus::Failed, 5),
    ];
    let mut ids = BTreeMap::new();
    for (g, trans_type, status, created) in rows {
        let t = GlobalTxn {
            trans_type,
            create_time: at(created),
            ..txn_with(g, status, Some(at(60)))
        };
        ids.insert(g, seed(s, t, Vec::new()).await.id);
    }
    let scan = |f: ScanFilter| async move { s.scan_txns(&f).await.unwrap() };
    let all = scan(ScanFilter {
        limit: 100,
        ..ScanFilter::default()
    })
    .await;
    assert_eq!(gids(&all), vec!["s6", "s5", "s4", "s3", "s2", "s1"]);
    assert_eq!(all[5], get(s, &gid("s1")).await, "full rows");

    let submitted = scan(ScanFilter {
        limit: 100,
        status: Some(GlobalStatus::Submitted),
        ..ScanFilter::default()
    })
    .await;
    assert_eq!(gids(&submitted), vec!["s5", "s4", "s1"]);
    let sagas = scan(ScanFilter {
        limit: 100,
        trans_type: Some(TransType::Saga),
        ..ScanFilter::default()
    })
    .await;
    assert_eq!(gids(&sagas), vec!["s6", "s5", "s3", "s1"]);
    let both = ScanFilter {
        limit: 100,
        status: Some(GlobalStatus::Submitted),
        trans_type: Some(TransType::Saga),
        ..ScanFilter::default()
    };
    assert_eq!(gids(&scan(both).await), vec!["s5", "s1"]);
    let window = ScanFilter {
        limit: 100,
        create_time_start: Some(at(1)),
        create_time_end: Some(at(3)),
        ..ScanFilter::default()
    };
    assert_eq!(gids(&scan(window).await), vec!["s4", "s3", "s2"]);
    let from = ScanFilter {
        limit: 100,
        create_time_start: Some(at(4)),
        ..ScanFilter::default()
    };
    assert_eq!(gids(&scan(from).await), vec!["s6", "s5"]);
    let until = ScanFilter {
        limit: 100,
        create_time_end: Some(at(0)),
        ..ScanFilter::default()
    };
    assert_eq!(gids(&scan(until).await), vec!["s1"]);

    // Pages of two, newest first, each page below the last id of the previous one.
    let mut pages = Vec::new();
    let mut before_id = None;
    loop {
        let page = scan(ScanFilter {
            limit: 2,
            before_id,
            ..ScanFilter::default()
        })
        .await;
        if page.is_empty() {
            break;
        }
        before_id = page.last().map(|t| t.id);
        pages.push(
            gids(&page)
                .into_iter()
                .map(str::to_owned)
                .collect::<Vec<_>>(),
        );
        assert!(pages.len() <= 3, "paging ends: {pages:?}");
    }
    assert_eq!(
        pages,
        vec![vec!["s6", "s5"], vec!["s4", "s3"], vec!["s2", "s1"]]
    );
    let page = ScanFilter {
        limit: 1,
        before_id: Some(ids["s5"]),
        trans_type: Some(TransType::Saga),
        ..ScanFilter::default()
    };
    assert_eq!(gids(&scan(page).await), vec!["s3"]);
}
