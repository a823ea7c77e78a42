//! The storage contract: what a backend must do for the counter to be exact.

use std::fmt;
use std::future::Future;
use std::time::SystemTime;

/// Index of a store shard, in `0..Store::shard_count()`.
pub type ShardId = usize;

/// Boxed error a [`Store`] reports; the counter keeps it as the cause of
/// [`crate::Error::Store`].
pub type StoreError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Identity of one [`crate::Counter`] for the lifetime of its process, random at start.
///
/// Stores keep one high-water mark per instance and shard, so two counters (two processes,
/// or the visit and stats counters of one process) never share a sequence.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceId(u64);

impl InstanceId {
    /// A fresh random id.
    pub fn random() -> Self {
        Self(rand::random::<u64>())
    }

    /// An id with a chosen value (tests and tools that replay a batch).
    pub const fn from_u64(value: u64) -> Self {
        Self(value)
    }
}

impl fmt::Display for InstanceId {
    /// Sixteen lowercase hex digits: the form stores use as a field name.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InstanceId({self})")
    }
}

/// Identity of one batch: the counter instance plus a per-shard sequence number.
///
/// Sequence numbers start at 1 and increase by one for every new batch sent to a shard; a
/// retry re-sends the same id. Since a counter has at most one batch in flight per shard, a
/// store that remembers the highest applied sequence per (instance, shard) can tell a retry
/// from a new batch with constant memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BatchId {
    /// The counter that built the batch.
    pub instance: InstanceId,
    /// Position of the batch in this instance's sequence for the shard.
    pub seq: u64,
}

/// A batch of increments for one shard, applied all or nothing and at most once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// Identity used for exactly-once application.
    pub id: BatchId,
    /// `(key, delta)` pairs; each key appears once, every delta is positive. Keys are
    /// shared with the counter's buffer and cache (an `Arc`, not a copy), so a long key
    /// waiting to be written is held once in memory.
    pub deltas: Vec<(std::sync::Arc<str>, u64)>,
}

/// A key of a batch that a store could not add to, because the value it holds for the key
/// is not a count it can take: another type, text that is not a whole number, a negative
/// number, or one the delta would take past what the store holds exactly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RejectedKey {
    /// Position of the key in the batch's `deltas`.
    pub index: usize,
    /// Where the store keeps the key (for Redis, e.g. `tally:v:page`), for an operator
    /// who repairs it.
    pub stored_as: String,
    /// What the store found there: its type, or its value cut to 64 bytes.
    pub found: String,
}

/// What [`Store::apply_checked`] did with a batch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// One total per key of the batch, in order; 0 for a rejected key.
    pub totals: Vec<u64>,
    /// The keys left untouched because their stored value is not a count. Every other key
    /// was applied, and the batch id is spent.
    pub rejected: Vec<RejectedKey>,
}

/// What a store returns for a read: the stored values and how far this instance's batches
/// are reflected in them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredValues {
    /// One value per requested key, in request order; 0 for a key never written.
    pub values: Vec<u64>,
    /// The highest batch sequence of the asking instance applied on this shard at the time
    /// of the read (0 when none). The counter uses it to know whether its in-flight batch is
    /// already included in `values`, so a read never counts a delta twice or misses one.
    pub applied_seq: u64,
}

/// Health of one shard as a store sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardHealth {
    /// Credential-free name of the shard (for Redis, `host:port`).
    pub name: String,
    /// Whether the shard answered its last command or check.
    pub up: bool,
    /// When `up` last changed (or when the store started).
    pub since: SystemTime,
}

/// Separates a key from a sub-key of it: `page1\u{1f}2026-12-01` is page1's count on that
/// day. U+001F (unit separator) is a control character, which no page id or URL path the
/// server accepts contains, so the split is never ambiguous.
pub const SUBKEY_SEPARATOR: char = '\u{1f}';

/// The part of `key` that chooses its shard: everything before the first
/// [`SUBKEY_SEPARATOR`] (the whole key when it has none). Every [`Store::shard_of`] hashes
/// this, so a key and its sub-keys live together (one node, one bucket): read with one
/// store call, reset together.
///
/// ```
/// use tally_counter::routing_key;
///
/// assert_eq!(routing_key("page1\u{1f}2026-12-01"), "page1");
/// assert_eq!(routing_key("page1"), "page1");
/// ```
pub fn routing_key(key: &str) -> &str {
    key.split_once(SUBKEY_SEPARATOR)
        .map_or(key, |(routed, _)| routed)
}

/// [`routing_key`] of a key read as bytes (a Redis key name, which need not be UTF-8).
pub fn routing_key_bytes(key: &[u8]) -> &[u8] {
    // The separator is ASCII: one byte, which no other character's encoding contains.
    let separator = SUBKEY_SEPARATOR as u8;
    key.iter()
        .position(|&b| b == separator)
        .map_or(key, |at| &key[..at])
}

/// The sub-key part of `key`, after the first [`SUBKEY_SEPARATOR`] (a day, `2026-12-01`);
/// `None` for a key that is no sub-key.
///
/// ```
/// use tally_counter::subkey;
///
/// assert_eq!(subkey("page1\u{1f}2026-12-01"), Some("2026-12-01"));
/// assert_eq!(subkey("page1"), None);
/// ```
pub fn subkey(key: &str) -> Option<&str> {
    key.split_once(SUBKEY_SEPARATOR).map(|(_, sub)| sub)
}

/// Members to add to one key's sketch: see [`Store::sketch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SketchAdd<'a> {
    /// The key whose sketch takes the members (a page, or a page's day as a sub-key).
    pub key: &'a str,
    /// The members (visitor ids), each once, at least one.
    pub members: &'a [&'a [u8]],
}

/// A backend the counter writes batches to and reads totals from.
///
/// Implementations must honour one rule for exactness: [`Store::apply`] applies a batch id
/// at most once. If the batch's `seq` is not above the highest sequence already applied for
/// `(batch.id.instance, shard)`, the store must not apply it again and must answer with the
/// current totals. The counter retries a failed batch unchanged, so this is what turns "at
/// least once" delivery into "exactly once" counting.
///
/// Futures must be `Send`: the counter drives them from tokio tasks.
pub trait Store: Send + Sync + 'static {
    /// Number of shards; shard ids are `0..shard_count()`. At least 1.
    fn shard_count(&self) -> usize;

    /// The shard that owns `key`. Must be a pure function of the key for the store's life,
    /// and of its [`routing_key`] only, so a key's sub-keys share its shard.
    fn shard_of(&self, key: &str) -> ShardId;

    /// Credential-free display name of a shard (for Redis nodes, `host:port`).
    fn shard_name(&self, shard: ShardId) -> &str;

    /// Applies `batch` on `shard` at most once and returns the new total of every key in
    /// `batch.deltas`, in order. A repeated id returns current totals without applying.
    fn apply(
        &self,
        shard: ShardId,
        batch: &Batch,
    ) -> impl Future<Output = Result<Vec<u64>, StoreError>> + Send;

    /// Like [`Store::apply`], but a key whose stored value is not a count the store can add
    /// to (see [`RejectedKey`]) is left as it is and reported, and every other key is
    /// applied, so one bad stored value cannot hold a whole batch, and with it a shard.
    /// The same at-most-once rule holds: a repeated id applies nothing and answers current
    /// totals (and the keys still bad).
    ///
    /// The counter calls this, not [`Store::apply`]. The default calls [`Store::apply`]
    /// and rejects nothing: right for a store whose values are always counts.
    fn apply_checked(
        &self,
        shard: ShardId,
        batch: &Batch,
    ) -> impl Future<Output = Result<Applied, StoreError>> + Send {
        async move {
            let totals = self.apply(shard, batch).await?;
            Ok(Applied {
                totals,
                rejected: Vec::new(),
            })
        }
    }

    /// Reads the stored values of `keys` (all owned by `shard`) and the highest sequence of
    /// `instance` applied on that shard, in one consistent read.
    fn get(
        &self,
        shard: ShardId,
        instance: InstanceId,
        keys: &[&str],
    ) -> impl Future<Output = Result<StoredValues, StoreError>> + Send;

    /// Sets `key` (owned by `shard`) back to zero, and empties its sketch
    /// ([`Store::sketch`]) on a store that keeps them.
    fn reset(
        &self,
        shard: ShardId,
        key: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Whether this store keeps sketches of distinct members ([`Store::sketch`]). The
    /// default is `false`, and [`Store::sketch`] then fails.
    fn keeps_sketches(&self) -> bool {
        false
    }

    /// Adds each of `adds`' members to its key's sketch, then estimates how many distinct
    /// members each key of `estimate` holds, in order (0 for a key never added to). Every
    /// key is owned by `shard`.
    ///
    /// A sketch is a HyperLogLog (precision 14: 16,384 registers, standard error 0.81%;
    /// see [`crate::hll`]). Adding a member it already holds changes nothing, so the
    /// counter sends adds at least once, without batch ids: a retried or repeated add
    /// cannot change an estimate. A sub-key's sketch ([`routing_key`]) is kept as long as
    /// the sub-key's count, and [`Store::reset`] of a key empties its sketch too.
    fn sketch(
        &self,
        shard: ShardId,
        adds: &[SketchAdd<'_>],
        estimate: &[&str],
    ) -> impl Future<Output = Result<Vec<u64>, StoreError>> + Send {
        let _ = (shard, adds, estimate);
        async { Err("this store keeps no sketches (keeps_sketches is false)".into()) }
    }

    /// Health of every shard, indexed by shard id.
    fn health(&self) -> Vec<ShardHealth>;

    /// Whether `shard` is up, as [`Store::health`] says; a store with a cheaper way to tell
    /// should override it. While a failed batch waits to be retried, the counter asks this
    /// every few tens of milliseconds, so a shard that was down is retried as soon as it is
    /// back rather than at the end of its backoff.
    fn shard_up(&self, shard: ShardId) -> bool {
        self.health().get(shard).is_none_or(|health| health.up)
    }
}

/// A [`Store`] that can also rank its keys by value, for leaderboards such as the request
/// statistics of `tally-stats`.
pub trait RankedStore: Store {
    /// The `limit` highest values on `shard`, ordered by value descending, then key
    /// ascending (byte order). Ties at the cut-off are broken by that order too, so merging
    /// every shard's answer gives the exact global ranking.
    fn top(
        &self,
        shard: ShardId,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<(String, u64)>, StoreError>> + Send;

    /// Whether this store answers [`RankedStore::count_at_least`] and
    /// [`RankedStore::window`] cheaply (a few index lookups each). A deep page of a
    /// ranking is then read around its own counts rather than through every shard's whole
    /// head (`top(offset + limit)`). The default is `false`, and the two methods then fail.
    fn serves_windows(&self) -> bool {
        false
    }

    /// For each of `thresholds`, how many keys on `shard` hold at least that value, in one
    /// consistent read.
    fn count_at_least(
        &self,
        shard: ShardId,
        thresholds: &[u64],
    ) -> impl Future<Output = Result<Vec<u64>, StoreError>> + Send {
        let _ = (shard, thresholds);
        async { Err(windows_unsupported()) }
    }

    /// The keys of `shard` around one page of the ranking, in one consistent read: see
    /// [`Window`] and [`WindowRead`].
    fn window(
        &self,
        shard: ShardId,
        window: Window,
    ) -> impl Future<Output = Result<WindowRead, StoreError>> + Send {
        let _ = (shard, window);
        async { Err(windows_unsupported()) }
    }
}

fn windows_unsupported() -> StoreError {
    "this store does not serve ranking windows (serves_windows is false)".into()
}

/// What [`RankedStore::window`] reads: the keys valued between `low` and `high`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// The value at the top of the page (`low <= high`).
    pub high: u64,
    /// The value at the bottom of the page.
    pub low: u64,
    /// How many of the keys valued exactly `high` to read, smallest keys first.
    pub high_run: usize,
    /// How many of the keys valued exactly `low` to read, smallest keys first (when
    /// `low < high`).
    pub low_run: usize,
}

/// The answer to [`RankedStore::window`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WindowRead {
    /// Keys valued above `high`.
    pub above: u64,
    /// Keys valued below `low`.
    pub below: u64,
    /// The first `high_run` keys valued `high` (key ascending).
    pub at_high: Vec<(String, u64)>,
    /// Every key valued strictly between `low` and `high`.
    pub between: Vec<(String, u64)>,
    /// The first `low_run` keys valued `low` (key ascending), when `low < high`.
    pub at_low: Vec<(String, u64)>,
}

/// The ranking order of [`RankedStore`]: value descending, then key ascending (byte
/// order).
pub fn rank_order(a: &(String, u64), b: &(String, u64)) -> std::cmp::Ordering {
    b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_order_is_value_descending_then_key_ascending() {
        let mut ranked = [
            ("/api/b/".to_owned(), 1),
            ("/api/z/".to_owned(), 2),
            ("/api/a/".to_owned(), 1),
        ];
        ranked.sort_by(rank_order);
        let keys: Vec<&str> = ranked.iter().map(|(key, _)| key.as_str()).collect();
        assert_eq!(keys, ["/api/z/", "/api/a/", "/api/b/"]);
    }
}
