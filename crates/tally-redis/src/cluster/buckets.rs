//! Buckets: the fixed groups of keys a Redis Cluster store writes together, and their key
//! names.
//!
//! Redis Cluster runs a script only when all its keys hash to one slot, and a batch of a
//! bucket is one script call. So every key a bucket writes carries the bucket's hash tag,
//! `{bNNNN}`, and only the tag is hashed: the bucket's counters, its sorted set and its
//! high-water marks share one slot, and move together when the slot moves.
//!
//! A key's bucket is `xxh3_64(key) mod buckets` ([`tally_ring::key_hash`]). Both the hash
//! and the bucket counts are part of the stored layout: changing either moves every key to
//! another bucket, where its count, written under the old name, is no longer found.

use crate::layout::{COUNTER_KEY_PREFIX, KeySpace, Layout, SKETCH_KEY_PREFIX, URLS_KEY};

/// Buckets of the visit counters ([`Layout::Counters`]). Frozen (see the module docs).
///
/// Each bucket is a shard of the counter: one batch in flight and one high-water mark per
/// counter instance, so a bucket's batches are ordered and replayed on their own. 1024
/// spreads the buckets over the slot ranges of a cluster's primaries evenly (with the
/// three equal ranges `redis-cli --cluster create` makes: 345, 346 and 333) and lets a
/// reshard move load in steps of 0.1%, while each bucket still gets a batch of many keys
/// under load.
pub const COUNTER_BUCKETS: usize = 1024;

/// Buckets of the request statistics ([`Layout::SortedSet`]): one sorted set each. Frozen.
///
/// A `/stats/` page reads every bucket's head and merges them, so fewer, larger sets
/// answer faster: the top 100 of 1,000,000 URLs over 16 buckets takes a few milliseconds
/// (the crate docs' measurement), where 1024 would take 64 times the reads.
pub const STATS_BUCKETS: usize = 16;

/// Hash slots of a Redis Cluster.
pub const CLUSTER_SLOTS: u16 = 16_384;

/// The number of buckets of `layout`: [`COUNTER_BUCKETS`] or [`STATS_BUCKETS`].
pub fn bucket_count(layout: Layout) -> usize {
    match layout {
        Layout::Counters => COUNTER_BUCKETS,
        Layout::SortedSet => STATS_BUCKETS,
    }
}

/// The bucket of `key` in `layout`: `xxh3_64` of its [`tally_counter::routing_key`] `mod`
/// [`bucket_count`] (a page's day counts share its bucket).
///
/// ```
/// use tally_redis::{Layout, bucket_of};
///
/// assert!(bucket_of(Layout::Counters, "page1") < tally_redis::COUNTER_BUCKETS);
/// assert!(bucket_of(Layout::SortedSet, "/api/x/") < tally_redis::STATS_BUCKETS);
/// ```
pub fn bucket_of(layout: Layout, key: &str) -> usize {
    let buckets = bucket_count(layout) as u64;
    let key = tally_counter::routing_key(key);
    (tally_ring::key_hash(key.as_bytes()) % buckets) as usize
}

/// The hash tag of bucket `bucket`, braces included: `{b0042}`.
pub fn bucket_tag(bucket: usize) -> String {
    format!("{{b{bucket:04}}}")
}

/// The hash slot of `key` in a Redis Cluster: CRC16 (XMODEM) of its hash tag (the text
/// between the first `{` and the next `}`, when not empty) or of the whole key, mod 16384.
///
/// ```
/// assert_eq!(tally_redis::cluster_slot(b"foo"), 12182);
/// assert_eq!(tally_redis::cluster_slot(b"tally:v:{b0042}:page1"), tally_redis::cluster_slot(b"b0042"));
/// ```
pub fn cluster_slot(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|b| *b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|b| *b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16_xmodem(hashed) % CLUSTER_SLOTS
}

fn crc16_xmodem(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for byte in bytes {
        crc ^= u16::from(*byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// One bucket of a layout: its tag, its slot, and the names of its keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Bucket {
    /// Its index, `0..bucket_count(layout)`: the counter's shard id.
    pub(crate) index: usize,
    /// `{bNNNN}`.
    pub(crate) tag: String,
    /// The hash slot of every key of the bucket.
    pub(crate) slot: u16,
}

impl Bucket {
    pub(crate) fn new(index: usize) -> Self {
        let tag = bucket_tag(index);
        let slot = cluster_slot(tag.as_bytes());
        Self { index, tag, slot }
    }

    /// Where `key` of this bucket is stored, for an operator: `tally:v:{b0042}:page1`, or
    /// `tally:urls:{b0007} member /api/x/`.
    pub(crate) fn stored_as(&self, layout: Layout, key: &str) -> String {
        match layout {
            Layout::Counters => self.counter_key(key),
            Layout::SortedSet => format!("{} member {key}", self.urls_key()),
        }
    }
}

impl KeySpace for Bucket {
    /// `tally:applied:{b0042}` (visits) or `tally:applied:urls:{b0042}` (statistics).
    fn marks_key(&self, layout: Layout) -> String {
        format!("{}:{}", layout.marks_key(), self.tag)
    }

    /// `tally:v:{b0042}:page1`.
    fn counter_key(&self, key: &str) -> String {
        format!("{COUNTER_KEY_PREFIX}{}:{key}", self.tag)
    }

    /// `tally:urls:{b0007}`.
    fn urls_key(&self) -> String {
        format!("{URLS_KEY}:{}", self.tag)
    }

    /// `tally:u:{b0042}:page1`.
    fn sketch_key(&self, key: &str) -> String {
        format!("{SKETCH_KEY_PREFIX}{}:{key}", self.tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_matches_the_xmodem_check_value_and_redis_slots() {
        assert_eq!(crc16_xmodem(b"123456789"), 0x31C3);
        // Slots Redis gives (CLUSTER KEYSLOT).
        assert_eq!(cluster_slot(b"foo"), 12182);
        assert_eq!(
            cluster_slot(b"{user1000}.following"),
            cluster_slot(b"user1000")
        );
        // An empty tag hashes the whole key.
        assert_eq!(
            cluster_slot(b"foo{}{bar}"),
            crc16_xmodem(b"foo{}{bar}") % 16384
        );
        assert_eq!(
            cluster_slot(b"foo{{bar}}zap"),
            crc16_xmodem(b"{bar") % 16384
        );
    }

    #[test]
    fn every_key_of_a_bucket_shares_its_slot() {
        let bucket = Bucket::new(42);
        assert_eq!(bucket.tag, "{b0042}");
        for layout in [Layout::Counters, Layout::SortedSet] {
            let names = [
                bucket.marks_key(layout),
                bucket.counter_key("page1"),
                bucket.counter_key("a}{b"),
                bucket.urls_key(),
                format!("{}:legacy-seen", bucket.marks_key(layout)),
            ];
            for name in names {
                assert_eq!(cluster_slot(name.as_bytes()), bucket.slot, "{name}");
            }
        }
        assert_eq!(bucket.counter_key("page1"), "tally:v:{b0042}:page1");
        assert_eq!(bucket.marks_key(Layout::Counters), "tally:applied:{b0042}");
        assert_eq!(
            bucket.marks_key(Layout::SortedSet),
            "tally:applied:urls:{b0042}"
        );
        assert_eq!(bucket.urls_key(), "tally:urls:{b0042}");
    }

    #[test]
    fn buckets_are_frozen() {
        assert_eq!((COUNTER_BUCKETS, STATS_BUCKETS), (1024, 16));
        // Pinned: a change of the hash or the counts moves every key.
        assert_eq!(bucket_of(Layout::Counters, "page1"), {
            (tally_ring::key_hash(b"page1") % 1024) as usize
        });
        let spread: std::collections::HashSet<usize> = (0..10_000)
            .map(|i| bucket_of(Layout::Counters, &format!("page-{i}")))
            .collect();
        assert!(spread.len() > 1000, "{}", spread.len());
    }

    #[test]
    fn counter_buckets_spread_evenly_over_three_equal_slot_ranges() {
        // The ranges `redis-cli --cluster create` gives three primaries.
        let mut per_range = [0; 3];
        for bucket in 0..COUNTER_BUCKETS {
            let range = match Bucket::new(bucket).slot {
                0..=5460 => 0,
                5461..=10922 => 1,
                _ => 2,
            };
            per_range[range] += 1;
        }
        assert_eq!(per_range, [345, 346, 333]);
    }
}
