//! Comparing two rings: which hash ranges change owner, for resharding tools.

use crate::node::Node;
use crate::ring::Ring;

/// A range of key hashes whose owner differs between two rings; see [`Ring::moves_to`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Move<'a> {
    /// First hash of the range.
    pub start: u64,
    /// Last hash of the range, inclusive, so a range can end at `u64::MAX`.
    pub end: u64,
    /// Name of the owner in the old ring (the receiver of `moves_to`).
    pub from: &'a str,
    /// Name of the owner in the new ring (the argument of `moves_to`).
    pub to: &'a str,
}

impl Move<'_> {
    /// Whether the key hash `hash` (see [`crate::key_hash`]) lies in this range.
    pub fn contains(&self, hash: u64) -> bool {
        (self.start..=self.end).contains(&hash)
    }

    /// How many hashes the range holds; `u128` because one range can be all 2^64.
    pub fn width(&self) -> u128 {
        u128::from(self.end - self.start) + 1
    }
}

impl<N: Node> Ring<N> {
    /// The hash ranges whose owner changes when going from this ring to `other`.
    ///
    /// Owners are compared by name, so the rings may hold different node types. The ranges
    /// are sorted by `start`, do not overlap and do not wrap (a range that would cross
    /// `u64::MAX` is split at 0); adjacent ranges with the same `from` and `to` are merged.
    /// A key moves exactly when its [`crate::key_hash`] lies in one of them. Identical rings,
    /// whatever their insertion order, give no moves.
    pub fn moves_to<'a, M: Node>(&'a self, other: &'a Ring<M>) -> Vec<Move<'a>> {
        let (a, b) = (self.real_points(), other.real_points());
        let (mut i, mut j) = (0, 0);
        let mut moves: Vec<Move<'a>> = Vec::new();
        let mut start = 0u64;
        // Between two consecutive points of either ring both owners are constant, so each
        // such range is decided by its last hash, which is a point (or u64::MAX).
        loop {
            let end = match (a.get(i), b.get(j)) {
                (Some(&x), Some(&y)) => x.min(y),
                (Some(&x), None) => x,
                (None, Some(&y)) => y,
                (None, None) => u64::MAX,
            };
            if a.get(i) == Some(&end) {
                i += 1;
            }
            if b.get(j) == Some(&end) {
                j += 1;
            }
            let from = self.nodes()[self.index_of_hash(end)].name();
            let to = other.nodes()[other.index_of_hash(end)].name();
            if from != to {
                match moves.last_mut() {
                    Some(last) if last.end + 1 == start && last.from == from && last.to == to => {
                        last.end = end;
                    }
                    _ => moves.push(Move {
                        start,
                        end,
                        from,
                        to,
                    }),
                }
            }
            if end == u64::MAX {
                return moves;
            }
            start = end + 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(nodes: &[&'static str]) -> Ring<&'static str> {
        Ring::builder()
            .vnodes(20)
            .nodes(nodes.iter().map(|&n| (n, 1)))
            .build()
            .unwrap()
    }

    #[test]
    fn identical_rings_have_no_moves() {
        let a = ring(&["a:1", "b:1", "c:1"]);
        let b = ring(&["c:1", "a:1", "b:1"]);
        assert!(a.moves_to(&b).is_empty());
    }

    #[test]
    fn adding_a_node_moves_its_share_to_it() {
        let old = ring(&["a:1", "b:1"]);
        let new = ring(&["a:1", "b:1", "c:1"]);
        let moves = old.moves_to(&new);
        assert!(!moves.is_empty());
        assert!(moves.iter().all(|m| m.to == "c:1" && m.from != "c:1"));
        let moved: u128 = moves.iter().map(Move::width).sum();
        let expected = new.shares()[2] * 2f64.powi(64);
        assert!((moved as f64 - expected).abs() / expected < 1e-9);
    }

    #[test]
    fn moves_are_sorted_disjoint_and_merged() {
        let old = ring(&["a:1", "b:1", "c:1"]);
        let new = ring(&["a:1", "d:1", "c:1", "e:1"]);
        let moves = old.moves_to(&new);
        for pair in moves.windows(2) {
            assert!(pair[0].end < pair[1].start);
            let touching = pair[0].end + 1 == pair[1].start;
            assert!(!(touching && pair[0].from == pair[1].from && pair[0].to == pair[1].to));
        }
        for m in &moves {
            assert!(m.start <= m.end);
            assert_eq!(old.nodes()[old.index_of_hash(m.start)], m.from);
            assert_eq!(new.nodes()[new.index_of_hash(m.end)], m.to);
        }
    }

    #[test]
    fn disjoint_single_node_rings_move_everything_in_one_range() {
        let (a, b) = (ring(&["a:1"]), ring(&["b:1"]));
        let moves = a.moves_to(&b);
        assert_eq!(
            moves,
            vec![Move {
                start: 0,
                end: u64::MAX,
                from: "a:1",
                to: "b:1"
            }]
        );
        assert_eq!(moves[0].width(), 1 << 64);
        assert!(moves[0].contains(0) && moves[0].contains(u64::MAX));
    }
}
