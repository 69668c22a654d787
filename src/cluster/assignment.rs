//! Which member should own which partition: balanced rendezvous hashing.
//!
//! Every (member, partition) pair has a score from a stable hash. With N members and P partitions, member
//! quotas are `P / N`, plus one for the first `P % N` members ordered by their own score. Pairs are taken in
//! descending score order, and a pair assigns its partition when the partition is still free and the member
//! is under quota. The result:
//! - depends only on the set of node ids (every replica that sees the same members computes the same map);
//! - is balanced: each member gets `floor(P / N)` or `ceil(P / N)` partitions;
//! - moves few partitions when a member joins or leaves, because most pairs keep their rank (plain
//!   rendezvous hashing moves the minimum but is unbalanced; the quota costs a few extra moves).
//!
//! The hash is FNV-1a with a splitmix64 finalizer: stable across builds, hosts and versions, so replicas of
//! different versions agree during a rolling upgrade.

use std::collections::BTreeMap;

use crate::model::Partition;

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn fnv(bytes: impl IntoIterator<Item = u8>) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// The rendezvous score of `member` for partition `p`.
pub fn score(member: &str, p: Partition) -> u64 {
    mix(fnv(member.bytes().chain(p.0.to_le_bytes())) ^ mix(u64::from(p.0) + 1))
}

/// Assigns partitions `0..count` to `members` (node ids; duplicates count once). Empty when there are no
/// members.
pub fn assign(count: u16, members: &[&str]) -> BTreeMap<Partition, String> {
    let mut members: Vec<&str> = members.to_vec();
    members.sort_unstable();
    members.dedup();
    let mut out = BTreeMap::new();
    if members.is_empty() || count == 0 {
        return out;
    }
    let n = members.len();
    let base = usize::from(count) / n;
    let extra = usize::from(count) % n;
    // Who gets the extra partitions: the members with the highest score for a partition beyond the range.
    let mut by_rank: Vec<usize> = (0..n).collect();
    by_rank.sort_by_key(|&i| std::cmp::Reverse((fnv(members[i].bytes()), i)));
    let mut quota = vec![base; n];
    for &i in by_rank.iter().take(extra) {
        quota[i] += 1;
    }
    let mut pairs: Vec<(u64, u16, usize)> = Vec::with_capacity(usize::from(count) * n);
    for p in 0..count {
        for (i, m) in members.iter().enumerate() {
            pairs.push((score(m, Partition(p)), p, i));
        }
    }
    pairs.sort_unstable_by(|a, b| b.cmp(a));
    let mut taken = vec![0usize; n];
    for (_, p, i) in pairs {
        if taken[i] < quota[i] && !out.contains_key(&Partition(p)) {
            taken[i] += 1;
            out.insert(Partition(p), members[i].to_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("braid-{i}")).collect()
    }

    fn counts(map: &BTreeMap<Partition, String>) -> BTreeMap<String, usize> {
        let mut c = BTreeMap::new();
        for m in map.values() {
            *c.entry(m.clone()).or_insert(0) += 1;
        }
        c
    }

    #[test]
    fn no_members_no_assignment() {
        assert!(assign(64, &[]).is_empty());
    }

    #[test]
    fn order_and_duplicates_do_not_matter() {
        let a = assign(64, &["b", "a", "c"]);
        let b = assign(64, &["c", "a", "b", "a"]);
        assert_eq!(a, b);
    }

    /// Moves when one member joins a cluster of n: for P = 64 the count stays close to the minimum
    /// (ceil(P / (n + 1)), the joiner's share).
    #[test]
    fn joins_move_few_partitions() {
        for n in 1..8 {
            let before_names = names(n);
            let after_names = names(n + 1);
            let before = assign(
                64,
                &before_names.iter().map(String::as_str).collect::<Vec<_>>(),
            );
            let after = assign(
                64,
                &after_names.iter().map(String::as_str).collect::<Vec<_>>(),
            );
            let moved = before.iter().filter(|(p, m)| after[*p] != **m).count();
            let minimum = 64usize.div_ceil(n + 1);
            assert!(
                moved <= minimum + 64 / (n + 1) / 2 + 2,
                "n={n}: moved {moved}, minimum {minimum}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn every_partition_once_and_balanced(count in 1u16..300, n in 1usize..12, salt in 0u32..1000) {
            let members: Vec<String> = (0..n).map(|i| format!("node-{salt}-{i}")).collect();
            let refs: Vec<&str> = members.iter().map(String::as_str).collect();
            let map = assign(count, &refs);
            proptest::prop_assert_eq!(map.len(), usize::from(count));
            let keys: BTreeSet<u16> = map.keys().map(|p| p.0).collect();
            proptest::prop_assert_eq!(keys, (0..count).collect::<BTreeSet<_>>());
            let floor = usize::from(count) / n;
            let ceil = usize::from(count).div_ceil(n);
            for (m, c) in counts(&map) {
                proptest::prop_assert!(c >= floor && c <= ceil, "{} has {} (floor {}, ceil {})", m, c, floor, ceil);
            }
            // Members with a zero quota (n > count) are simply absent.
            proptest::prop_assert!(counts(&map).len() == n.min(usize::from(count)));
        }
    }
}
