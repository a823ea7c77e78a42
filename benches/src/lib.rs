//! tally-benches: criterion benchmarks and the HTTP load harness for tally.
//!
//! Run `cargo xtask bench` (all criterion benches) or `cargo bench -p tally-benches --bench
//! ring`. Report binaries live in `src/bin`.
#![deny(missing_docs)]

pub mod redis_info {
    //! Figures read from a Redis node's `INFO cpu`, shared by the load harness and
    //! `cold-apply` (`INFO commandstats` is read by `tally_testkit::commandstats`).

    use std::time::Duration;

    /// CPU time of a node's main thread from `INFO cpu` (`used_cpu_user_main_thread` plus
    /// `used_cpu_sys_main_thread`, in seconds; the whole process's before Redis 6.2).
    pub fn main_thread_cpu(info: &str) -> Duration {
        let field = |name: &str| {
            info.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|value| value.trim().parse::<f64>().ok())
        };
        let seconds = match (
            field("used_cpu_user_main_thread"),
            field("used_cpu_sys_main_thread"),
        ) {
            (Some(user), Some(sys)) => user + sys,
            _ => field("used_cpu_user").unwrap_or(0.0) + field("used_cpu_sys").unwrap_or(0.0),
        };
        Duration::from_secs_f64(seconds.max(0.0))
    }
}

pub mod ring {
    //! The ring implementations compared by the `ring` bench and the `ring-report` binary,
    //! behind one [`Router`] trait so both measure exactly the same code.
    //!
    //! Every router takes a key as `&str` and hashes it itself, inside the measured call, so
    //! the comparison is key to node, hash included. Nodes are named `redis{i}:6379` and get
    //! [`VNODES`] points each wherever the implementation has points.

    use std::hash::{Hash, Hasher};
    use std::sync::Arc;

    use tally_ring::Ring;
    use xxhash_rust::xxh3::xxh3_64;

    /// Points per node for every ring implementation.
    pub const VNODES: u32 = 160;

    /// The node counts compared.
    pub const NODE_COUNTS: [usize; 3] = [3, 10, 100];

    /// `count` node names, `redis1:6379` onwards.
    pub fn node_names(count: usize) -> Vec<String> {
        (1..=count).map(|i| format!("redis{i}:6379")).collect()
    }

    /// The `i`-th name a node added to a ring of [`node_names`] would get, so added nodes
    /// never clash with existing ones.
    pub fn extra_node_name(i: usize) -> String {
        format!("redis-new{i}:6379")
    }

    /// `count` page keys, `page0` onwards, as the visit counter would route them.
    pub fn keys(count: usize) -> Vec<String> {
        (0..count).map(|i| format!("page{i}")).collect()
    }

    /// A key-to-node mapping over a list of named nodes.
    pub trait Router: Sized {
        /// The implementation's name in reports and benchmark ids.
        const NAME: &'static str;
        /// Whether any node can be removed. Jump hash can only drop its last bucket.
        const REMOVES_ANY_NODE: bool = true;
        /// A router over `names`.
        fn build(names: &[String]) -> Self;
        /// The position in `names` of the node owning `key`, hashing the key on the way.
        fn route(&self, key: &str) -> usize;
    }

    /// tally-ring itself.
    #[derive(Debug)]
    pub struct TallyRing(Ring<String>);

    impl Router for TallyRing {
        const NAME: &'static str = "tally-ring";

        fn build(names: &[String]) -> Self {
            let ring = Ring::builder()
                .vnodes(VNODES)
                .nodes(names.iter().map(|n| (n.clone(), 1)))
                .build()
                .expect("bench node names are valid");
            Self(ring)
        }

        #[inline]
        fn route(&self, key: &str) -> usize {
            self.0.lookup_index(key.as_bytes())
        }
    }

    /// One point of a node in the `hashring` crate, which has no virtual nodes of its own:
    /// its docs suggest adding one entry per (node, replica).
    #[derive(Debug, Clone)]
    pub struct HashRingPoint {
        name: Arc<str>,
        replica: u32,
        position: usize,
    }

    // The position is left out so a node keeps its points when others come or go.
    impl Hash for HashRingPoint {
        fn hash<H: Hasher>(&self, state: &mut H) {
            self.name.hash(state);
            self.replica.hash(state);
        }
    }

    /// `hashring` 0.3 (SipHash, binary search over a sorted `Vec`).
    #[derive(Debug)]
    pub struct HashRingCrate(hashring::HashRing<HashRingPoint>);

    impl Router for HashRingCrate {
        const NAME: &'static str = "hashring";

        fn build(names: &[String]) -> Self {
            let mut ring = hashring::HashRing::new();
            let mut points = Vec::with_capacity(names.len() * VNODES as usize);
            for (position, name) in names.iter().enumerate() {
                let name: Arc<str> = name.as_str().into();
                for replica in 0..VNODES {
                    points.push(HashRingPoint {
                        name: Arc::clone(&name),
                        replica,
                        position,
                    });
                }
            }
            ring.batch_add(points);
            Self(ring)
        }

        #[inline]
        fn route(&self, key: &str) -> usize {
            self.0.get(&key).expect("ring is not empty").position
        }
    }

    /// A node of the `conhash` crate, which names nodes by an owned `String`.
    #[derive(Debug, Clone)]
    pub struct ConHashNode {
        name: String,
        position: usize,
    }

    impl conhash::Node for ConHashNode {
        fn name(&self) -> String {
            self.name.clone()
        }
    }

    /// `conhash` 0.5 (MD5, `BTreeMap` keyed by the digest bytes).
    pub struct ConHashCrate(conhash::ConsistentHash<ConHashNode>);

    // conhash's map type has no Debug; the node count is what a reader wants anyway.
    impl std::fmt::Debug for ConHashCrate {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("ConHashCrate")
                .field("points", &self.0.len())
                .finish()
        }
    }

    impl Router for ConHashCrate {
        const NAME: &'static str = "conhash";

        fn build(names: &[String]) -> Self {
            let mut ring = conhash::ConsistentHash::new();
            for (position, name) in names.iter().enumerate() {
                let node = ConHashNode {
                    name: name.clone(),
                    position,
                };
                ring.add(&node, VNODES as usize);
            }
            Self(ring)
        }

        #[inline]
        fn route(&self, key: &str) -> usize {
            self.0.get_str(key).expect("ring is not empty").position
        }
    }

    /// Jump consistent hash (Lamping and Veach, 2014) of the key's xxh3: no points, perfect
    /// balance and minimal moves, but buckets are numbers, so only the last can be removed.
    /// The theoretical reference, not a candidate.
    #[derive(Debug)]
    pub struct Jump {
        buckets: u32,
    }

    impl Router for Jump {
        const NAME: &'static str = "jump";
        const REMOVES_ANY_NODE: bool = false;

        fn build(names: &[String]) -> Self {
            Self {
                buckets: u32::try_from(names.len()).expect("fewer than 2^32 nodes"),
            }
        }

        #[inline]
        fn route(&self, key: &str) -> usize {
            jump_hash(xxh3_64(key.as_bytes()), self.buckets) as usize
        }
    }

    /// The bucket in `0..buckets` for `key`: a pseudo-random walk whose next jump lands
    /// past the current bucket with exactly the probability that keeps moves minimal.
    pub fn jump_hash(mut key: u64, buckets: u32) -> u32 {
        let mut bucket: i64 = -1;
        let mut next: i64 = 0;
        while next < i64::from(buckets) {
            bucket = next;
            key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
            let step = (1u64 << 31) as f64 / ((key >> 33) + 1) as f64;
            next = ((bucket + 1) as f64 * step) as i64;
        }
        bucket as u32
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn all_agree_on_membership<R: Router>() {
            let names = node_names(10);
            let router = R::build(&names);
            for key in keys(1_000) {
                assert!(router.route(&key) < names.len(), "{}", R::NAME);
            }
        }

        #[test]
        fn every_router_returns_a_member() {
            all_agree_on_membership::<TallyRing>();
            all_agree_on_membership::<HashRingCrate>();
            all_agree_on_membership::<ConHashCrate>();
            all_agree_on_membership::<Jump>();
        }

        #[test]
        fn jump_hash_moves_keys_only_to_the_new_bucket() {
            for key in 0..10_000u64 {
                let key = xxh3_64(&key.to_le_bytes());
                let (before, after) = (jump_hash(key, 10), jump_hash(key, 11));
                assert!(before == after || after == 10);
            }
        }
    }
}
