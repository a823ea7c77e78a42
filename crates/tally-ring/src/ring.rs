//! The built ring: sorted points, their owners and the lookup table, and the queries on them.

use std::fmt;

use xxhash_rust::xxh3::xxh3_64;

use crate::builder::RingBuilder;
use crate::node::Node;

/// The table gets `2^TABLE_EXTRA_BITS` slots per point, rounded up to a power of two. At
/// 160 points per node that leaves no change of owner inside 79 % of the slots at 100 nodes,
/// and those answer a lookup from the table alone. Measured at 100 nodes, two extra bits
/// (128 KiB of `u16` slots) beat one: the rarer scans and mispredicted branches save more
/// than the larger table costs in cache misses.
const TABLE_EXTRA_BITS: u32 = 2;
/// Small rings get 2^14 slots anyway (32 KiB, still cache-resident): then 98 % of the slots
/// answer directly at 3 nodes and 92 % at 10, and a lookup rarely mispredicts its branch.
const MIN_TABLE_BITS: u32 = 14;
/// 2^24 slots (64 MiB) is past any sensible ring; beyond it scans just get longer.
const MAX_TABLE_BITS: u32 = 24;

/// One slot of the lookup table, `u16` for small rings (half the cache footprint, which is
/// what a lookup pays for at 100 nodes) and `u32` otherwise. With the `DIRECT` bit set the
/// rest is the owner's position: every hash in the slot has that owner. Otherwise it is the
/// index of the first point at or above the slot's smallest hash, where the scan starts.
trait Slot: Copy + Into<u32> {
    const DIRECT: u32;
    /// `value` is below `DIRECT << 1`, checked when choosing the slot type.
    fn from_u32(value: u32) -> Self;
}

impl Slot for u16 {
    const DIRECT: u32 = 1 << 15;
    fn from_u32(value: u32) -> Self {
        value as u16
    }
}

impl Slot for u32 {
    const DIRECT: u32 = 1 << 31;
    fn from_u32(value: u32) -> Self {
        value
    }
}

#[derive(Clone)]
enum Table {
    Narrow(Box<[u16]>),
    Wide(Box<[u32]>),
}

impl Table {
    fn len(&self) -> usize {
        match self {
            Self::Narrow(t) => t.len(),
            Self::Wide(t) => t.len(),
        }
    }
}

/// The table over `points` (sorted, sentinel last) with `2^bits` slots.
fn build_table<S: Slot>(points: &[u64], owners: &[u32], bits: u32) -> Box<[S]> {
    let shift = 64 - bits;
    let mut table = Vec::with_capacity(1 << bits);
    // `first`: first point >= the slot's smallest hash; `last`: first point >= its largest.
    // A hash in the slot resolves to a point in first..=last, so if those points share an
    // owner, the slot can name it. Both only move forward: building is linear.
    let (mut first, mut last) = (0, 0);
    for slot in 0..1u64 << bits {
        let slot_start = slot << shift;
        let slot_end = slot_start | (u64::MAX >> bits);
        while points[first] < slot_start {
            first += 1;
        }
        last = last.max(first);
        while points[last] < slot_end {
            last += 1;
        }
        let owner = owners[first];
        if owners[first..=last].iter().all(|&o| o == owner) {
            table.push(S::from_u32(S::DIRECT | owner));
        } else {
            table.push(S::from_u32(first as u32));
        }
    }
    table.into_boxed_slice()
}

/// The hash of a key: `xxh3_64(key)` with seed 0. Part of the frozen data layout.
///
/// [`Ring::lookup`] is [`Ring::index_of_hash`] of this hash; callers that route one key
/// several times can hash once.
#[inline]
pub fn key_hash(key: &[u8]) -> u64 {
    xxh3_64(key)
}

/// A consistent-hash ring over weighted nodes; see the crate docs for the mapping.
///
/// Immutable once built: to add or remove a node, build a new ring, and use
/// [`Ring::moves_to`] to see which hash ranges change owner.
#[derive(Clone)]
pub struct Ring<N> {
    /// In insertion order; positions are the indices [`Ring::lookup_index`] returns.
    nodes: Vec<N>,
    weights: Vec<u32>,
    vnodes: u32,
    /// Sorted, distinct point hashes, then one `u64::MAX` sentinel that owns what wraps
    /// around, so a scan always stops without testing for the end of the array.
    points: Vec<u64>,
    /// `owners[i]` is the position in `nodes` of the node owning `points[i]`.
    owners: Vec<u32>,
    /// Indexed by a hash's top bits; see [`Slot`].
    table: Table,
    /// `64 - table bits`: a hash's slot is `hash >> shift`.
    shift: u32,
}

impl<N> Ring<N> {
    /// Starts a ring description; see [`RingBuilder`].
    pub fn builder() -> RingBuilder<N> {
        RingBuilder::new()
    }

    /// Builds the table over points sorted by hash, distinct, each with its owner's position.
    pub(crate) fn from_sorted_points(
        nodes: Vec<N>,
        weights: Vec<u32>,
        vnodes: u32,
        sorted: Vec<(u64, u32)>,
    ) -> Self {
        debug_assert!(!sorted.is_empty());
        debug_assert!(sorted.windows(2).all(|w| w[0].0 < w[1].0));
        let wrap_owner = sorted[0].1;
        let (mut points, mut owners): (Vec<u64>, Vec<u32>) = sorted.into_iter().unzip();
        points.push(u64::MAX);
        owners.push(wrap_owner);

        let real = points.len() - 1;
        let bits = (real.next_power_of_two().trailing_zeros() + TABLE_EXTRA_BITS)
            .clamp(MIN_TABLE_BITS, MAX_TABLE_BITS);
        // The sentinel's index, `real`, is the largest value a slot holds.
        let table = if real < 1 << 15 {
            Table::Narrow(build_table(&points, &owners, bits))
        } else {
            Table::Wide(build_table(&points, &owners, bits))
        };
        Self {
            nodes,
            weights,
            vnodes,
            points,
            owners,
            table,
            shift: 64 - bits,
        }
    }

    /// The node owning `key`: the owner of the first point at or after `key_hash(key)`,
    /// wrapping around to the first point. Does not allocate.
    #[inline]
    pub fn lookup(&self, key: &[u8]) -> &N {
        &self.nodes[self.lookup_index(key)]
    }

    /// [`Ring::lookup`] of the key's UTF-8 bytes.
    #[inline]
    pub fn lookup_str(&self, key: &str) -> &N {
        self.lookup(key.as_bytes())
    }

    /// The position in [`Ring::nodes`] (insertion order) of the node owning `key`; use it as
    /// a shard id that indexes per-node state kept beside the ring.
    #[inline]
    pub fn lookup_index(&self, key: &[u8]) -> usize {
        self.index_of_hash(key_hash(key))
    }

    /// The position in [`Ring::nodes`] of the node owning the key hash `hash` (see
    /// [`key_hash`]).
    #[inline]
    pub fn index_of_hash(&self, hash: u64) -> usize {
        let slot = (hash >> self.shift) as usize;
        match &self.table {
            Table::Narrow(table) => self.resolve(hash, table[slot]),
            Table::Wide(table) => self.resolve(hash, table[slot]),
        }
    }

    #[inline(always)]
    fn resolve<S: Slot>(&self, hash: u64, slot: S) -> usize {
        let entry: u32 = slot.into();
        // A real branch: a branch-free version that always reads a point measured slower,
        // as most lookups end here having read nothing but the slot.
        if entry & S::DIRECT != 0 {
            return (entry ^ S::DIRECT) as usize;
        }
        let mut i = entry as usize;
        // Stops at the latest on the u64::MAX sentinel.
        while self.points[i] < hash {
            i += 1;
        }
        self.owners[i] as usize
    }

    /// The nodes in the order they were added. Their positions are the shard ids returned by
    /// [`Ring::lookup_index`]; the mapping itself does not depend on this order.
    pub fn nodes(&self) -> &[N] {
        &self.nodes
    }

    /// Each node's weight, parallel to [`Ring::nodes`].
    pub fn weights(&self) -> &[u32] {
        &self.weights
    }

    /// Points per unit of weight this ring was built with.
    pub fn vnodes(&self) -> u32 {
        self.vnodes
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always `false`: building a ring without nodes fails with [`crate::Error::Empty`].
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Number of distinct points on the ring: `vnodes * total weight`, less the rare points
    /// that landed on a hash another point already held.
    pub fn point_count(&self) -> usize {
        self.points.len() - 1
    }

    /// Each node's fraction of the 2^64 key-hash space, parallel to [`Ring::nodes`].
    ///
    /// Exact counts divided by 2^64, so the fractions sum to 1 up to `f64` rounding. With
    /// uniformly distributed key hashes this is each node's expected share of the keys.
    pub fn shares(&self) -> Vec<f64> {
        const SPACE: f64 = 18_446_744_073_709_551_616.0; // 2^64
        let mut owned = vec![0u128; self.nodes.len()];
        let mut next: u128 = 0;
        for (&point, &owner) in self.real_points().iter().zip(&self.owners) {
            owned[owner as usize] += u128::from(point) + 1 - next;
            next = u128::from(point) + 1;
        }
        // Hashes above the last point wrap around to the first point's owner.
        owned[self.owners[0] as usize] += (1u128 << 64) - next;
        owned.into_iter().map(|n| n as f64 / SPACE).collect()
    }

    /// The points without the sentinel.
    pub(crate) fn real_points(&self) -> &[u64] {
        &self.points[..self.points.len() - 1]
    }
}

impl<N: Node> Ring<N> {
    /// The position in [`Ring::nodes`] of the node named `name`, if any.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name() == name)
    }
}

impl<N: fmt::Debug> fmt::Debug for Ring<N> {
    // Thousands of points say nothing to a reader; the counts do.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("nodes", &self.nodes)
            .field("weights", &self.weights)
            .field("vnodes", &self.vnodes)
            .field("points", &self.point_count())
            .field("table_slots", &self.table.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// First point >= hash by binary search, wrapping: the plain definition of the lookup.
    fn owner_by_search<N>(ring: &Ring<N>, hash: u64) -> usize {
        let points = ring.real_points();
        let i = points.partition_point(|&p| p < hash);
        ring.owners[if i == points.len() { 0 } else { i }] as usize
    }

    fn three() -> Ring<&'static str> {
        Ring::builder()
            .vnodes(50)
            .node("redis1:6379", 1)
            .node("redis2:6379", 2)
            .node("redis3:6379", 1)
            .build()
            .unwrap()
    }

    #[test]
    fn table_lookup_matches_binary_search_on_and_around_every_point() {
        let ring = three();
        for &p in ring.real_points() {
            for h in [p.wrapping_sub(1), p, p.wrapping_add(1)] {
                assert_eq!(ring.index_of_hash(h), owner_by_search(&ring, h), "hash {h}");
            }
        }
        for h in [0, 1, u64::MAX - 1, u64::MAX] {
            assert_eq!(ring.index_of_hash(h), owner_by_search(&ring, h), "hash {h}");
        }
    }

    #[test]
    fn hashes_past_the_last_point_wrap_to_the_first() {
        let ring = three();
        let last = *ring.real_points().last().unwrap();
        assert!(last < u64::MAX);
        assert_eq!(ring.index_of_hash(last + 1), ring.owners[0] as usize);
        assert_eq!(ring.index_of_hash(u64::MAX), ring.owners[0] as usize);
        assert_eq!(ring.index_of_hash(0), ring.owners[0] as usize);
    }

    /// The table's entries as `(is_direct, value)`, whatever the slot type.
    fn entries<N>(ring: &Ring<N>) -> Vec<(bool, usize)> {
        fn decode<S: Slot>(table: &[S]) -> Vec<(bool, usize)> {
            let direct = |e: u32| (e & S::DIRECT != 0, (e & !S::DIRECT) as usize);
            table.iter().map(|&e| direct(e.into())).collect()
        }
        match &ring.table {
            Table::Narrow(t) => decode(t),
            Table::Wide(t) => decode(t),
        }
    }

    fn check_table<N>(ring: &Ring<N>) {
        let points = ring.real_points();
        for (slot, (direct, value)) in entries(ring).into_iter().enumerate() {
            let start = (slot as u64) << ring.shift;
            let end = start | (u64::MAX >> (64 - ring.shift));
            if direct {
                let inside =
                    points.partition_point(|&p| p < start)..points.partition_point(|&p| p <= end);
                for &owner in &ring.owners[inside] {
                    assert_eq!(owner as usize, value, "slot {slot}");
                }
                assert_eq!(owner_by_search(ring, start), value, "slot {slot}");
                assert_eq!(owner_by_search(ring, end), value, "slot {slot}");
            } else {
                assert!(ring.points[value] >= start, "slot {slot}");
                assert!(value == 0 || ring.points[value - 1] < start, "slot {slot}");
            }
        }
    }

    #[test]
    fn narrow_table_slots_are_right() {
        let ring = three();
        assert!(matches!(ring.table, Table::Narrow(_)));
        check_table(&ring);
    }

    #[test]
    fn wide_table_serves_rings_past_2_pow_15_points() {
        let ring = Ring::builder()
            .vnodes(11_000)
            .node("a:1", 1)
            .node("b:1", 2)
            .build()
            .unwrap();
        assert!(matches!(ring.table, Table::Wide(_)));
        check_table(&ring);
        let mut hash = 0u64;
        for _ in 0..10_000 {
            hash = hash.wrapping_add(0x9E37_79B9_7F4A_7C15);
            assert_eq!(ring.index_of_hash(hash), owner_by_search(&ring, hash));
        }
    }

    #[test]
    fn lookup_is_index_of_the_key_hash() {
        let ring = three();
        for key in ["page1", "", "tally:v:page2", "ünïcode"] {
            let i = ring.index_of_hash(xxh3_64(key.as_bytes()));
            assert_eq!(ring.lookup_index(key.as_bytes()), i);
            assert_eq!(ring.lookup_str(key), &ring.nodes()[i]);
        }
    }

    #[test]
    fn shares_sum_to_one_and_follow_weight() {
        let ring = three();
        let shares = ring.shares();
        assert_eq!(shares.len(), 3);
        assert!((shares.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        // Weight 2 of 4 should hold about half; 50 points per unit keep it within 0.15.
        assert!((shares[1] - 0.5).abs() < 0.15, "{shares:?}");
    }

    #[test]
    fn single_node_owns_everything() {
        let ring = Ring::builder().vnodes(3).node("only:1", 1).build().unwrap();
        assert_eq!(ring.shares(), vec![1.0]);
        assert_eq!(*ring.lookup(b"x"), "only:1");
        assert_eq!(ring.index_of_hash(u64::MAX), 0);
    }

    #[test]
    fn position_finds_nodes_by_name() {
        let ring = three();
        assert_eq!(ring.position("redis2:6379"), Some(1));
        assert_eq!(ring.position("redis9:6379"), None);
        assert_eq!(ring.len(), 3);
        assert!(!ring.is_empty());
    }

    #[test]
    fn debug_shows_counts_not_points() {
        let text = format!("{:?}", three());
        assert!(text.contains("points: 200"), "{text}");
        assert!(text.contains("redis2:6379"), "{text}");
    }
}
