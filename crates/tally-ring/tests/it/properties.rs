//! Property tests: the ring against the naive reference, and the consistency guarantees.

use proptest::prelude::*;
use tally_ring::{Ring, key_hash};

use crate::reference::NaiveRing;

/// Few points per node keep debug-mode runs fast; the properties hold at any count.
const MAX_VNODES: u32 = 24;

fn build(vnodes: u32, nodes: &[(String, u32)]) -> Ring<String> {
    Ring::builder()
        .vnodes(vnodes)
        .nodes(nodes.iter().cloned())
        .build()
        .expect("valid ring")
}

/// 1..=max nodes with distinct names from a small alphabet, so short names and shared
/// prefixes (`a:1`, `a:12`) occur, each with weight 1..=3.
fn weighted_nodes(max: usize) -> impl Strategy<Value = Vec<(String, u32)>> {
    prop::collection::btree_set("[a-c]{1,2}:[0-9]{1,2}", 1..=max).prop_flat_map(|names| {
        let n = names.len();
        (Just(names), prop::collection::vec(1u32..=3, n))
            .prop_map(|(names, weights)| names.into_iter().zip(weights).collect())
    })
}

fn keys() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(prop::collection::vec(any::<u8>(), 0..24), 1..64)
}

fn owner_name(ring: &Ring<String>, hash: u64) -> &str {
    &ring.nodes()[ring.index_of_hash(hash)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn lookup_returns_the_member_the_naive_ring_picks(
        vnodes in 1..=MAX_VNODES, nodes in weighted_nodes(6), keys in keys(),
    ) {
        let ring = build(vnodes, &nodes);
        let naive = NaiveRing::new(vnodes, &nodes);
        for key in &keys {
            let owner = ring.lookup(key);
            prop_assert!(nodes.iter().any(|(name, _)| name == owner));
            prop_assert_eq!(owner.as_str(), naive.owner(key));
        }
    }

    #[test]
    fn adding_a_node_moves_keys_only_to_it(
        vnodes in 1..=MAX_VNODES, nodes in weighted_nodes(7), keys in keys(),
    ) {
        prop_assume!(nodes.len() >= 2);
        let (old_nodes, added) = nodes.split_at(nodes.len() - 1);
        let old = build(vnodes, old_nodes);
        let new = build(vnodes, &nodes);
        for key in &keys {
            let (before, after) = (old.lookup(key), new.lookup(key));
            prop_assert!(before == after || *after == added[0].0, "{before} -> {after}");
        }
    }

    #[test]
    fn removing_a_node_moves_only_its_keys(
        vnodes in 1..=MAX_VNODES, nodes in weighted_nodes(7), keys in keys(), pick in any::<prop::sample::Index>(),
    ) {
        prop_assume!(nodes.len() >= 2);
        let removed = pick.index(nodes.len());
        let mut rest = nodes.clone();
        let gone = rest.remove(removed).0;
        let old = build(vnodes, &nodes);
        let new = build(vnodes, &rest);
        for key in &keys {
            let (before, after) = (old.lookup(key), new.lookup(key));
            prop_assert!(before == after || *before == gone, "{before} -> {after}");
        }
    }

    #[test]
    fn mapping_does_not_depend_on_insertion_order(
        vnodes in 1..=MAX_VNODES,
        (nodes, shuffled) in weighted_nodes(6).prop_flat_map(|n| (Just(n.clone()), Just(n).prop_shuffle())),
        keys in keys(),
    ) {
        let a = build(vnodes, &nodes);
        let b = build(vnodes, &shuffled);
        for key in &keys {
            prop_assert_eq!(a.lookup(key), b.lookup(key));
        }
        prop_assert!(a.moves_to(&b).is_empty());
        let shares_b = b.shares();
        for (node, share) in a.nodes().iter().zip(a.shares()) {
            let j = b.position(node).expect("same members");
            prop_assert_eq!(share, shares_b[j]);
        }
    }

    #[test]
    fn moves_to_agrees_with_point_lookups(
        vnodes in 1..=MAX_VNODES,
        old_nodes in weighted_nodes(5),
        new_nodes in weighted_nodes(5),
        hashes in prop::collection::vec(any::<u64>(), 0..64),
    ) {
        let old = build(vnodes, &old_nodes);
        let new = build(vnodes, &new_nodes);
        let moves = old.moves_to(&new);
        // Random hashes rarely hit an edge, so also probe every range's ends and neighbours.
        let mut probes = hashes;
        for m in &moves {
            probes.extend([m.start, m.end, m.start.wrapping_sub(1), m.end.wrapping_add(1)]);
        }
        for hash in probes {
            let (from, to) = (owner_name(&old, hash), owner_name(&new, hash));
            let covering: Vec<_> = moves.iter().filter(|m| m.contains(hash)).collect();
            if from == to {
                prop_assert!(covering.is_empty(), "hash {hash} stays on {from} but is in {covering:?}");
            } else {
                prop_assert_eq!(covering.len(), 1, "hash {}", hash);
                prop_assert_eq!((covering[0].from, covering[0].to), (from, to));
            }
        }
    }

    #[test]
    fn shares_sum_to_one_and_match_the_moved_space(
        vnodes in 1..=MAX_VNODES, nodes in weighted_nodes(6),
    ) {
        let ring = build(vnodes, &nodes);
        let shares = ring.shares();
        prop_assert!((shares.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        prop_assert!(shares.iter().all(|s| (0.0..=1.0).contains(s)));
        // Moving everything to one outside node moves each node's share exactly.
        let other = build(1, &[("zz:outside".to_owned(), 1)]);
        for (i, node) in ring.nodes().iter().enumerate() {
            let moved: u128 = ring
                .moves_to(&other)
                .iter()
                .filter(|m| m.from == node)
                .map(|m| m.width())
                .sum();
            prop_assert!((moved as f64 / 2f64.powi(64) - shares[i]).abs() < 1e-12);
        }
    }
}

#[test]
fn key_hash_is_xxh3_with_seed_zero() {
    assert_eq!(
        key_hash(b"page1"),
        xxhash_rust::xxh3::xxh3_64_with_seed(b"page1", 0)
    );
}
