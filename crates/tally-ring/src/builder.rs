//! Building a ring: validating the node list and placing every node's points.

use std::collections::HashSet;
use std::fmt::Write as _;

use xxhash_rust::xxh3::xxh3_64;

use crate::error::{Error, Result};
use crate::node::Node;
use crate::ring::Ring;

/// Points per unit of weight when [`RingBuilder::vnodes`] is not called.
///
/// 160 points keep each node's share of the hash space within a few percent of its weight's
/// share (standard deviation about `1/sqrt(160)`, 8 %), at 12 bytes of memory per point.
pub const DEFAULT_VNODES: u32 = 160;

/// Table entries spend their top bit on a flag, leaving 31 bits for point indices, and one
/// index goes to the end-of-ring sentinel.
const MAX_POINTS: u64 = (1 << 31) - 2;

/// Collects nodes and settings for a [`Ring`]; made by [`Ring::builder`].
///
/// Nothing is checked until [`RingBuilder::build`], which reports the first problem found.
#[derive(Debug, Clone)]
pub struct RingBuilder<N> {
    vnodes: u32,
    nodes: Vec<(N, u32)>,
}

impl<N> Default for RingBuilder<N> {
    fn default() -> Self {
        Self {
            vnodes: DEFAULT_VNODES,
            nodes: Vec::new(),
        }
    }
}

impl<N> RingBuilder<N> {
    /// An empty builder with [`DEFAULT_VNODES`] points per unit of weight.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the number of points per unit of weight: a node of weight `w` gets `vnodes * w`
    /// points. Must be at least 1.
    pub fn vnodes(mut self, vnodes: u32) -> Self {
        self.vnodes = vnodes;
        self
    }

    /// Adds a node with a weight (at least 1). Its position in [`Ring::nodes`] is the number
    /// of nodes added before it.
    pub fn node(mut self, node: N, weight: u32) -> Self {
        self.nodes.push((node, weight));
        self
    }

    /// Adds every `(node, weight)` pair, in order, as [`RingBuilder::node`] would.
    pub fn nodes<I: IntoIterator<Item = (N, u32)>>(mut self, nodes: I) -> Self {
        self.nodes.extend(nodes);
        self
    }
}

impl<N: Node> RingBuilder<N> {
    /// Checks the description and builds the ring.
    ///
    /// # Errors
    ///
    /// [`Error::Empty`] without nodes, [`Error::ZeroVnodes`],
    /// [`Error::EmptyName`], [`Error::DuplicateNode`], [`Error::ZeroWeight`], and
    /// [`Error::TooManyPoints`] past 2^31 - 2 points.
    pub fn build(self) -> Result<Ring<N>> {
        if self.nodes.is_empty() {
            return Err(Error::Empty);
        }
        if self.vnodes == 0 {
            return Err(Error::ZeroVnodes);
        }
        let mut seen = HashSet::with_capacity(self.nodes.len());
        let mut total: u64 = 0;
        for (position, (node, weight)) in self.nodes.iter().enumerate() {
            let name = node.name();
            if name.is_empty() {
                return Err(Error::EmptyName { position });
            }
            if !seen.insert(name) {
                return Err(Error::DuplicateNode { name: name.into() });
            }
            if *weight == 0 {
                return Err(Error::ZeroWeight { name: name.into() });
            }
            total = total.saturating_add(u64::from(self.vnodes) * u64::from(*weight));
        }
        if total > MAX_POINTS {
            return Err(Error::TooManyPoints {
                points: total,
                max: MAX_POINTS,
            });
        }

        let vnodes = self.vnodes;
        let (nodes, weights): (Vec<N>, Vec<u32>) = self.nodes.into_iter().unzip();
        let mut points: Vec<(u64, u32)> = Vec::with_capacity(total as usize);
        for (owner, (node, &weight)) in nodes.iter().zip(&weights).enumerate() {
            let count = u64::from(vnodes) * u64::from(weight);
            // `owner` fits: the point limit above bounds the node count too.
            node_points(node.name(), count, |hash| points.push((hash, owner as u32)));
        }
        sort_points(&mut points, |owner| nodes[owner as usize].name());
        Ok(Ring::from_sorted_points(nodes, weights, vnodes, points))
    }
}

/// Sorts `(hash, owner)` points by hash and keeps one point per hash.
///
/// Two nodes can place a point on the same hash. Breaking the tie by name, not by position,
/// is what keeps the mapping independent of the order nodes were added; after the sort only
/// the first point of a tie can ever be found, so the rest go.
fn sort_points<'a>(points: &mut Vec<(u64, u32)>, name: impl Fn(u32) -> &'a str) {
    points.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| name(a.1).cmp(name(b.1))));
    points.dedup_by_key(|p| p.0);
}

/// Calls `each` with the hash of every point of the node named `name`, in order: point `i`
/// is at `xxh3_64("{name}-{i}")`, seed 0, for `i` in `0..count`.
///
/// Part of the frozen data layout, see the crate docs. One buffer holds `"{name}-"` and
/// only the digits are rewritten per point, so placing points allocates once per node.
fn node_points(name: &str, count: u64, mut each: impl FnMut(u64)) {
    let mut buf = String::with_capacity(name.len() + 21);
    buf.push_str(name);
    buf.push('-');
    let prefix = buf.len();
    for i in 0..count {
        buf.truncate(prefix);
        write!(buf, "{i}").expect("writing to a String cannot fail");
        each(xxh3_64(buf.as_bytes()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_hash_name_dash_index() {
        let mut hashes = Vec::new();
        node_points("redis1:6379", 12, |h| hashes.push(h));
        assert_eq!(hashes.len(), 12);
        assert_eq!(hashes[0], xxh3_64(b"redis1:6379-0"));
        assert_eq!(hashes[9], xxh3_64(b"redis1:6379-9"));
        assert_eq!(hashes[11], xxh3_64(b"redis1:6379-11"));
    }

    #[test]
    fn tied_points_go_to_the_smaller_name_whatever_the_order() {
        let names = ["b:1", "a:1", "c:1"];
        for points in [
            vec![(7, 0), (7, 1), (3, 2), (7, 2)],
            vec![(7, 2), (3, 2), (7, 1), (7, 0)],
        ] {
            let mut points = points;
            sort_points(&mut points, |owner| names[owner as usize]);
            assert_eq!(points, vec![(3, 2), (7, 1)]);
        }
    }

    #[test]
    fn build_rejects_an_empty_ring() {
        let err = RingBuilder::<&str>::new().build().unwrap_err();
        assert!(matches!(err, Error::Empty), "{err}");
    }

    #[test]
    fn build_rejects_zero_vnodes() {
        let err = Ring::builder()
            .vnodes(0)
            .node("a:1", 1)
            .build()
            .unwrap_err();
        assert!(matches!(err, Error::ZeroVnodes), "{err}");
    }

    #[test]
    fn build_rejects_a_duplicate_name() {
        let err = Ring::builder()
            .node("a:1", 1)
            .node("b:1", 1)
            .node("a:1", 2)
            .build()
            .unwrap_err();
        assert!(
            matches!(&err, Error::DuplicateNode { name } if name == "a:1"),
            "{err}"
        );
    }

    #[test]
    fn build_rejects_a_zero_weight() {
        let err = Ring::builder()
            .node("a:1", 1)
            .node("b:1", 0)
            .build()
            .unwrap_err();
        assert!(
            matches!(&err, Error::ZeroWeight { name } if name == "b:1"),
            "{err}"
        );
    }

    #[test]
    fn build_rejects_an_empty_name() {
        let err = Ring::builder()
            .node("a:1", 1)
            .node("", 1)
            .build()
            .unwrap_err();
        assert!(matches!(err, Error::EmptyName { position: 1 }), "{err}");
    }

    #[test]
    fn build_rejects_more_points_than_it_can_index() {
        let err = Ring::builder()
            .vnodes(u32::MAX)
            .node("a:1", 2)
            .build()
            .unwrap_err();
        assert!(matches!(err, Error::TooManyPoints { .. }), "{err}");
    }

    #[test]
    fn weight_multiplies_points() {
        let ring = Ring::builder()
            .vnodes(10)
            .node("a:1", 1)
            .node("b:1", 3)
            .build()
            .unwrap();
        // xxh3 of 40 distinct short strings does not collide; this pins the count.
        assert_eq!(ring.point_count(), 40);
        assert_eq!(ring.weights(), &[1, 3]);
        assert_eq!(ring.vnodes(), 10);
    }

    #[test]
    fn default_vnodes_is_160() {
        let ring = Ring::builder().node("a:1", 1).build().unwrap();
        assert_eq!(ring.vnodes(), DEFAULT_VNODES);
        assert_eq!(ring.point_count(), 160);
    }
}
