//! The counter's metrics, emitted through the `metrics` facade.
//!
//! Handles are registered once per counter so the hot paths pay an atomic add, not a
//! registry lookup. With no recorder installed they are no-ops.

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

/// Metric handles of one counter, labelled `counter="{name}"`.
pub(crate) struct CounterMetrics {
    pub(crate) cache_hits: Counter,
    pub(crate) cache_misses: Counter,
    pub(crate) overloaded: Counter,
    pub(crate) batches_ok: Counter,
    pub(crate) batches_failed: Counter,
    pub(crate) keys_written: Counter,
    pub(crate) increments_written: Counter,
    pub(crate) buffered_keys: Gauge,
    pub(crate) batch_seconds: Histogram,
    /// `tally_task_panics_total{task="flusher"}`: flusher tasks that panicked and were
    /// restarted.
    pub(crate) flusher_panics: Counter,
    /// `tally_counter_quarantined_keys`: keys whose increments are held because their
    /// stored value is not a count.
    pub(crate) quarantined_keys: Gauge,
    /// `tally_counter_batch_keys_max`: most keys one acknowledged batch held.
    pub(crate) largest_batch_keys: Gauge,
    /// `tally_counter_batch_bytes_max`: most bytes of keys one acknowledged batch held.
    pub(crate) largest_batch_bytes: Gauge,
}

impl CounterMetrics {
    pub(crate) fn new(name: &str) -> Self {
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
            largest_batch_bytes: gauge!("tally_counter_batch_bytes_max", "counter" => label),
        }
    }
}
