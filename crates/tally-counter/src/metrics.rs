//! The counter's activity, each event recorded by one call for both of its readers: the
//! totals of [`crate::Snapshot`] and the `tally_counter_*` metrics of the `metrics` facade.
//!
//! Metric handles are registered once per counter so the hot paths pay an atomic add, not a
//! registry lookup. With no recorder installed they are no-ops.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

use crate::sync::lock;

/// What one counter did: the totals its snapshots read, and its metric handles.
pub(crate) struct Metrics {
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    batches_ok: AtomicU64,
    batches_failed: AtomicU64,
    keys_written: AtomicU64,
    increments_written: AtomicU64,
    task_panics: AtomicU64,
    members_written: AtomicU64,
    members_failed: AtomicU64,
    largest_batch_keys: AtomicUsize,
    largest_batch_bytes: AtomicUsize,
    last_batch_at: Mutex<Option<SystemTime>>,
    /// Keys held in every shard's quarantine. Also read on the hot paths: increments and
    /// reads look a key up in a quarantine only while this is not 0.
    held_keys: AtomicUsize,
    handles: Handles,
}

/// Metric handles of one counter, labelled `counter="{name}"`.
struct Handles {
    cache_hits: Counter,
    cache_misses: Counter,
    overloaded: Counter,
    batches_ok: Counter,
    batches_failed: Counter,
    keys_written: Counter,
    increments_written: Counter,
    buffered_keys: Gauge,
    batch_seconds: Histogram,
    /// `tally_task_panics_total{task="flusher"}`: flusher tasks that panicked and were
    /// restarted.
    flusher_panics: Counter,
    /// `tally_counter_quarantined_keys`: keys whose increments are held because their
    /// stored value is not a count.
    quarantined_keys: Gauge,
    /// `tally_counter_batch_keys_max`: most keys one acknowledged batch held.
    largest_batch_keys: Gauge,
    /// `tally_counter_batch_bytes_max`: most bytes of keys one acknowledged batch held.
    largest_batch_bytes: Gauge,
    /// `tally_counter_sketch_members_written_total`: sketch members the store took.
    members_written: Counter,
    /// `tally_counter_sketch_adds_total{outcome="failed"}`: failed store calls adding
    /// sketch members.
    members_failed: Counter,
}

impl Handles {
    fn new(name: &str) -> Self {
        let label = name.to_owned();
        Self {
            cache_hits: counter!("tally_counter_cache_hits_total", "counter" => label.clone()),
            cache_misses: counter!("tally_counter_cache_misses_total", "counter" => label.clone()),
            overloaded: counter!("tally_counter_overloaded_total", "counter" => label.clone()),
            batches_ok: counter!("tally_counter_batches_total", "counter" => label.clone(), "outcome" => "ok"),
            batches_failed: counter!("tally_counter_batches_total", "counter" => label.clone(), "outcome" => "failed"),
            keys_written: counter!("tally_counter_keys_written_total", "counter" => label.clone()),
            increments_written: counter!("tally_counter_increments_written_total", "counter" => label.clone()),
            buffered_keys: gauge!("tally_counter_buffered_keys", "counter" => label.clone()),
            batch_seconds: histogram!("tally_counter_batch_duration_seconds", "counter" => label.clone()),
            flusher_panics: counter!("tally_task_panics_total", "task" => "flusher", "counter" => label.clone()),
            quarantined_keys: gauge!("tally_counter_quarantined_keys", "counter" => label.clone()),
            largest_batch_keys: gauge!("tally_counter_batch_keys_max", "counter" => label.clone()),
            largest_batch_bytes: gauge!("tally_counter_batch_bytes_max", "counter" => label.clone()),
            members_written: counter!("tally_counter_sketch_members_written_total", "counter" => label.clone()),
            members_failed: counter!("tally_counter_sketch_adds_total", "counter" => label, "outcome" => "failed"),
        }
    }
}

impl Metrics {
    /// Zero totals, and handles registered with the recorder installed now.
    pub(crate) fn new(name: &str) -> Self {
        Self {
            cache_hits: AtomicU64::new(0),
            cache_misses: AtomicU64::new(0),
            batches_ok: AtomicU64::new(0),
            batches_failed: AtomicU64::new(0),
            keys_written: AtomicU64::new(0),
            increments_written: AtomicU64::new(0),
            task_panics: AtomicU64::new(0),
            members_written: AtomicU64::new(0),
            members_failed: AtomicU64::new(0),
            largest_batch_keys: AtomicUsize::new(0),
            largest_batch_bytes: AtomicUsize::new(0),
            last_batch_at: Mutex::new(None),
            held_keys: AtomicUsize::new(0),
            handles: Handles::new(name),
        }
    }

    /// A read answered from the cache.
    pub(crate) fn cache_hit(&self) {
        self.cache_hits.fetch_add(1, Ordering::Relaxed);
        self.handles.cache_hits.increment(1);
    }

    /// A read that goes to the store.
    pub(crate) fn cache_miss(&self) {
        self.cache_misses.fetch_add(1, Ordering::Relaxed);
        self.handles.cache_misses.increment(1);
    }

    /// An increment refused by a bound on the write buffer.
    pub(crate) fn increment_refused(&self) {
        self.handles.overloaded.increment(1);
    }

    /// `keys` keys entered the write buffer.
    pub(crate) fn keys_buffered(&self, keys: usize) {
        self.handles.buffered_keys.increment(keys as f64);
    }

    /// `keys` keys left the write buffer (written, reset, or released).
    pub(crate) fn keys_unbuffered(&self, keys: usize) {
        self.handles.buffered_keys.decrement(keys as f64);
    }

    /// One attempt to apply a batch took `took`, whatever its outcome.
    pub(crate) fn batch_attempted(&self, took: Duration) {
        self.handles.batch_seconds.record(took.as_secs_f64());
    }

    /// An attempt to apply a batch failed.
    pub(crate) fn batch_failed(&self) {
        self.batches_failed.fetch_add(1, Ordering::Relaxed);
        self.handles.batches_failed.increment(1);
    }

    /// The store acknowledged a batch of `keys` keys holding `bytes` bytes of keys, of
    /// which `keys_written` keys were written with `increments` increments between them.
    pub(crate) fn batch_acknowledged(
        &self,
        keys: usize,
        bytes: usize,
        keys_written: u64,
        increments: u64,
    ) {
        self.batches_ok.fetch_add(1, Ordering::Relaxed);
        self.keys_written.fetch_add(keys_written, Ordering::Relaxed);
        self.increments_written
            .fetch_add(increments, Ordering::Relaxed);
        let most_keys = self
            .largest_batch_keys
            .fetch_max(keys, Ordering::Relaxed)
            .max(keys);
        let most_bytes = self
            .largest_batch_bytes
            .fetch_max(bytes, Ordering::Relaxed)
            .max(bytes);
        self.handles.largest_batch_keys.set(most_keys as f64);
        self.handles.largest_batch_bytes.set(most_bytes as f64);
        *lock(&self.last_batch_at) = Some(SystemTime::now());
        self.handles.batches_ok.increment(1);
        self.handles.keys_written.increment(keys_written);
        self.handles.increments_written.increment(increments);
    }

    /// The store took `members` sketch members.
    pub(crate) fn members_written(&self, members: u64) {
        self.members_written.fetch_add(members, Ordering::Relaxed);
        self.handles.members_written.increment(members);
    }

    /// A store call adding sketch members failed.
    pub(crate) fn members_failed(&self) {
        self.members_failed.fetch_add(1, Ordering::Relaxed);
        self.handles.members_failed.increment(1);
    }

    /// Sketch members the store took.
    pub(crate) fn members_written_total(&self) -> u64 {
        self.members_written.load(Ordering::Relaxed)
    }

    /// Failed store calls adding sketch members.
    pub(crate) fn members_failed_total(&self) -> u64 {
        self.members_failed.load(Ordering::Relaxed)
    }

    /// A flusher task panicked and is restarted.
    pub(crate) fn flusher_panicked(&self) {
        self.task_panics.fetch_add(1, Ordering::Relaxed);
        self.handles.flusher_panics.increment(1);
    }

    /// A key went into a quarantine.
    pub(crate) fn key_held(&self) {
        self.held_keys.fetch_add(1, Ordering::AcqRel);
        self.handles.quarantined_keys.increment(1.0);
    }

    /// A key left its quarantine (repaired, or reset).
    pub(crate) fn key_released(&self) {
        self.held_keys.fetch_sub(1, Ordering::AcqRel);
        self.handles.quarantined_keys.decrement(1.0);
    }

    /// Keys held in every shard's quarantine.
    pub(crate) fn held_keys(&self) -> usize {
        self.held_keys.load(Ordering::Acquire)
    }

    /// Reads answered from the cache.
    pub(crate) fn cache_hits(&self) -> u64 {
        self.cache_hits.load(Ordering::Relaxed)
    }

    /// Reads that went to the store.
    pub(crate) fn cache_misses(&self) -> u64 {
        self.cache_misses.load(Ordering::Relaxed)
    }

    /// Batches the store acknowledged.
    pub(crate) fn batches_ok(&self) -> u64 {
        self.batches_ok.load(Ordering::Relaxed)
    }

    /// Batch attempts that failed.
    pub(crate) fn batches_failed(&self) -> u64 {
        self.batches_failed.load(Ordering::Relaxed)
    }

    /// `(key, delta)` pairs written.
    pub(crate) fn keys_written(&self) -> u64 {
        self.keys_written.load(Ordering::Relaxed)
    }

    /// Sum of the deltas written.
    pub(crate) fn increments_written(&self) -> u64 {
        self.increments_written.load(Ordering::Relaxed)
    }

    /// Flusher tasks that panicked.
    pub(crate) fn task_panics(&self) -> u64 {
        self.task_panics.load(Ordering::Relaxed)
    }

    /// Most keys one acknowledged batch held.
    pub(crate) fn largest_batch_keys(&self) -> usize {
        self.largest_batch_keys.load(Ordering::Relaxed)
    }

    /// Most bytes of keys one acknowledged batch held.
    pub(crate) fn largest_batch_bytes(&self) -> usize {
        self.largest_batch_bytes.load(Ordering::Relaxed)
    }

    /// When a batch was last acknowledged.
    pub(crate) fn last_batch_at(&self) -> Option<SystemTime> {
        *lock(&self.last_batch_at)
    }
}
