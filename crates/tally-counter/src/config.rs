//! Tuning knobs of a [`crate::Counter`].

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::error::{Error, Result};

/// How a [`crate::Counter`] batches, caches and bounds its memory.
///
/// `Default` gives the production defaults of the tally server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CounterConfig {
    /// Label for this counter's metrics (`counter="..."`), e.g. `visits` or `stats`.
    pub name: String,
    /// A shard's pending deltas are written at least this often (default 5 s).
    pub batch_interval: Duration,
    /// A shard's batch goes out early once this many distinct keys are pending, and no
    /// batch holds more (default 1000): a backlog (after an outage) drains as a sequence of
    /// batches of at most this many keys, one in flight at a time.
    pub batch_size_limit: usize,
    /// Most bytes of keys one batch holds (default 1 MiB), so a batch of long keys (request
    /// paths of up to 2 KiB) stays small enough to send within a store's timeout. A single
    /// key longer than this still goes out, alone.
    pub batch_max_bytes: usize,
    /// How long a stored value read or written is trusted without asking the store
    /// (default 5 s). Other instances' writes show after at most this plus their
    /// `batch_interval`.
    pub cache_ttl: Duration,
    /// Most entries the read cache holds (default 100,000).
    pub cache_capacity: u64,
    /// Most distinct keys pending or in flight across all shards; beyond it
    /// [`crate::Counter::increment`] returns [`Error::Overloaded`] (default 1,000,000). Each
    /// shard may hold at most its share of it (divided by the shard count, rounded up), so
    /// one shard whose store is down cannot take the whole bound.
    pub max_pending_keys: usize,
    /// Most sketch members (a key and a member, such as a page and a visitor id) waiting to
    /// be added to the store's sketches; beyond it [`crate::Counter::add_to_sketches`]
    /// returns [`Error::OverloadedMembers`] (default 100,000).
    pub max_pending_members: usize,
    /// First wait before retrying a failed batch (default 50 ms); doubles each attempt.
    pub retry_backoff_min: Duration,
    /// Most bytes of keys pending or in flight (see [`PendingBytes`] for what a key costs);
    /// beyond it [`crate::Counter::increment`] of a new key returns
    /// [`Error::OverloadedBytes`]. Give clones of one [`PendingBytes`] to several counters
    /// to bound them together (default: 256 MiB, this counter's own).
    pub max_pending_bytes: PendingBytes,
    /// How often increments held for keys whose stored value is not a count are offered
    /// to the store again, to be written once the value is repaired (default 1 s; the
    /// tally server uses its health-check interval).
    pub quarantine_recheck: Duration,
    /// Longest wait between retries of a failed batch (default 5 s). A batch whose shard
    /// the store reports down is retried as soon as the store reports it up again.
    pub retry_backoff_max: Duration,
}

impl Default for CounterConfig {
    fn default() -> Self {
        Self {
            name: "counter".to_owned(),
            batch_interval: Duration::from_secs(5),
            batch_size_limit: 1000,
            batch_max_bytes: 1024 * 1024,
            cache_ttl: Duration::from_secs(5),
            cache_capacity: 100_000,
            max_pending_keys: 1_000_000,
            max_pending_members: 100_000,
            max_pending_bytes: PendingBytes::new(256 * 1024 * 1024),
            quarantine_recheck: Duration::from_secs(1),
            retry_backoff_min: Duration::from_millis(50),
            retry_backoff_max: Duration::from_secs(5),
        }
    }
}

impl CounterConfig {
    /// Checks that every value is usable.
    pub fn validate(&self) -> Result<()> {
        let bad = |field, problem| Err(Error::Config { field, problem });
        if self.batch_interval.is_zero() {
            return bad("batch_interval", "must be greater than zero");
        }
        if self.batch_size_limit == 0 {
            return bad("batch_size_limit", "must be at least 1");
        }
        if self.batch_max_bytes == 0 {
            return bad("batch_max_bytes", "must be at least 1");
        }
        if self.max_pending_members == 0 {
            return bad("max_pending_members", "must be at least 1");
        }
        if self.max_pending_keys == 0 {
            return bad("max_pending_keys", "must be at least 1");
        }
        if self.max_pending_bytes.limit() == 0 {
            return bad("max_pending_bytes", "must be at least 1");
        }
        if self.quarantine_recheck.is_zero() {
            return bad("quarantine_recheck", "must be greater than zero");
        }
        if self.retry_backoff_min.is_zero() {
            return bad("retry_backoff_min", "must be greater than zero");
        }
        if self.retry_backoff_max < self.retry_backoff_min {
            return bad("retry_backoff_max", "must not be below retry_backoff_min");
        }
        Ok(())
    }
}

/// A bound on the memory of keys waiting to be written, which several counters can share
/// (the tally server gives one to its visit counter and its request statistics).
///
/// A waiting key costs its length in bytes plus [`PendingBytes::KEY_OVERHEAD`]: the key
/// text is held once (the pending table, the batch in flight and the read cache share it),
/// and the overhead covers its table slot, in-flight map slot and reference count.
/// Clones share the budget; equality is identity of the budget.
#[derive(Clone)]
pub struct PendingBytes {
    budget: Arc<Budget>,
}

struct Budget {
    limit: usize,
    used: AtomicUsize,
}

impl PendingBytes {
    /// Bytes a waiting key costs beyond its own length.
    pub const KEY_OVERHEAD: usize = 64;

    /// A budget of `limit` bytes, none used.
    pub fn new(limit: usize) -> Self {
        Self {
            budget: Arc::new(Budget {
                limit,
                used: AtomicUsize::new(0),
            }),
        }
    }

    /// The bound, in bytes.
    pub fn limit(&self) -> usize {
        self.budget.limit
    }

    /// Bytes held now by every counter sharing the budget.
    pub fn used(&self) -> usize {
        self.budget.used.load(Ordering::Relaxed)
    }

    /// What a key of `len` bytes costs while it waits.
    pub fn cost(len: usize) -> usize {
        len + Self::KEY_OVERHEAD
    }

    /// Takes `bytes` if they fit under the bound (or `force`); otherwise takes nothing and
    /// returns the bytes held.
    pub(crate) fn take(&self, bytes: usize, force: bool) -> std::result::Result<(), usize> {
        let held = self.budget.used.fetch_add(bytes, Ordering::AcqRel);
        if force || held + bytes <= self.budget.limit {
            return Ok(());
        }
        self.budget.used.fetch_sub(bytes, Ordering::AcqRel);
        Err(held)
    }

    /// Gives back `bytes` taken before.
    pub(crate) fn give_back(&self, bytes: usize) {
        self.budget.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

impl fmt::Debug for PendingBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingBytes")
            .field("limit", &self.limit())
            .field("used", &self.used())
            .finish()
    }
}

impl PartialEq for PendingBytes {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.budget, &other.budget)
    }
}

impl Eq for PendingBytes {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        assert!(CounterConfig::default().validate().is_ok());
    }

    #[test]
    fn zero_interval_is_rejected_with_field_name() {
        let config = CounterConfig {
            batch_interval: Duration::ZERO,
            ..Default::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("batch_interval"), "{err}");
    }

    #[test]
    fn backoff_max_below_min_is_rejected() {
        let config = CounterConfig {
            retry_backoff_min: Duration::from_secs(2),
            retry_backoff_max: Duration::from_secs(1),
            ..Default::default()
        };
        assert!(matches!(
            config.validate(),
            Err(Error::Config {
                field: "retry_backoff_max",
                ..
            })
        ));
    }
}
