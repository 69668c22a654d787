//! The store conformance suite: each rule of the [`Store`](super::Store) contract (the trait and module docs
//! in `store/mod.rs`) is written once, as `check_*`, and [`conformance!`] runs every check against every
//! backend, each test on a fresh database from [`super::testing`].
//!
//! Times written by the checks are fixed values around [`T0`] (the store takes the caller's `now`), so every
//! assertion compares exact values; only [`check_db_now`] reads a real clock.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{SystemTime, UNIX_EPOCH};

use super::testing::{T0, TestDb, at, branch, gid, txn, txn_with};
use super::{
    BranchUpdate, Claim, ClaimScope, DynStore, PartitionFence, ScanFilter, Schedule, TxnUpdate,
    Write, WriteOutcome,
};
use crate::model::{
    Branch, BranchId, BranchStatus, Fence, Gid, GlobalStatus, GlobalTxn, LeaseEpoch, Millis, Op,
    Partition, Protocol, TransOptions, TransType, Version,
};

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
            assert!(matches!(e, super::Error::Query(_)), "{e:?}");
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
            assert!(matches!(e, super::Error::Query(_)), "{e:?}");
            assert_eq!(s.kv_scan("topics", None, 10).await.unwrap().len(), 1);
        }
        Ok(created) => {
            assert!(created);
            assert_eq!(s.kv_find("topics", &key).await.unwrap().unwrap().k, key);
        }
    }
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
        Err(super::Error::Corrupt(_))
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
    assert_eq!(s.claim_due(&none).await.unwrap(), super::Claimed::default());
}

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
        let again = super::open(&db.dsn).await.unwrap();
        assert_eq!(again.kind(), db.store.kind());
        assert_eq!(get(&again, &t.gid).await, t);
        assert_eq!(again.find_branches(&t.gid).await.unwrap().len(), 1);
    }
    let again = super::open(&db.dsn).await.unwrap();
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

/// Stamps out one `#[tokio::test]` per check for a backend: `conformance!(sqlite, testing::sqlite_store)`
/// makes `store::conformance::sqlite::check_*`. Each test gets a fresh database, which a passing test drops.
macro_rules! conformance {
    ($backend:ident, $fresh:path) => {
        mod $backend {
            conformance!(@store_checks $fresh);
            $crate::store::testing::db_tests!($fresh;
                check_reopen_is_idempotent,
            );
        }
    };
    // A database that cannot be opened twice (in memory): the checks on one store only.
    ($backend:ident, $fresh:path, single_open) => {
        mod $backend {
            conformance!(@store_checks $fresh);
        }
    };
    (@store_checks $fresh:path) => {
            conformance!(@store $fresh;
                check_insert_round_trip,
                check_insert_existing_gid_conflicts,
                check_update_compare_and_set,
                check_final_status_and_schedule,
                check_branch_status_updates,
                check_new_branches_and_duplicates,
                check_concurrent_updates,
                check_mixed_batch,
                check_grouped_batch,
                check_claim_due,
                check_concurrent_claims_are_disjoint,
                check_reset_cron_time,
                check_reset_next_cron_time,
                check_live_claims_are_exclusive,
                check_delete_finished,
                check_kv,
                check_scan_txns,
                check_large_values_are_never_truncated,
                check_db_now,
                check_partition_count_is_fixed,
                check_fence_partition_bumps_epochs,
                check_stale_epoch_writes_conflict,
                check_fenced_claims,
                check_leases,
            );
    };
    (@store $fresh:path; $($check:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $check() {
                let db = $fresh().await;
                super::$check(&db.store).await;
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
