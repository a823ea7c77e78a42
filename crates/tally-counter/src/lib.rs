//! tally-counter: a batched, cache-through counter that never loses or double-counts an
//! acknowledged increment.
//!
//! [`Counter::increment`] records a delta in memory (no I/O, no `.await`); a flusher per
//! store shard writes the deltas in batches to a [`Store`]; [`Counter::get`] answers from a
//! short-lived read cache (or the store on a miss) plus this instance's own unwritten
//! deltas; [`Counter::get_cached`] is its await-free half, for threads that should answer
//! cache hits themselves and hand only misses elsewhere. The crate knows nothing of Redis
//! or HTTP: a store is anything implementing [`Store`]. [`MemoryStore`] is the embedded
//! one; `tally-redis` provides Redis.
//!
//! # Example
//!
//! The example of the crate's README, word for word (a test holds them together):
//!
//! ```
//! use std::time::Duration;
//! use tally_counter::{Counter, CounterConfig, MemoryStore, ServedVia};
//!
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() -> Result<(), tally_counter::Error> {
//!     let counter = Counter::new(MemoryStore::new(), CounterConfig::default())?;
//!     counter.increment("page1", 1)?;
//!     counter.increment("page1", 2)?;
//!     // Read your own writes before anything is flushed.
//!     assert_eq!(counter.get("page1").await?.value, 3);
//!     counter.flush().await;
//!     assert_eq!(counter.store().value("page1"), 3);
//!     // The read above cached page1, so the flush refreshed it with the stored total.
//!     assert_eq!(counter.get("page1").await?.served_via, ServedVia::Cache);
//!     let report = counter.shutdown(Duration::from_secs(5)).await;
//!     assert_eq!(report.keys_unwritten, 0);
//!     Ok(())
//! }
//! ```
//!
//! # Guarantees
//!
//! - **Exactly once.** An increment that returned `Ok` is written exactly once, provided
//!   the process lives until its batch is acknowledged (at most `batch_interval` plus the
//!   store's outage) or until [`Counter::shutdown`] has flushed it. A failed batch is
//!   retried unchanged, with the same [`BatchId`], and stores apply an id at most once, so
//!   a retry after a lost reply cannot count twice. Retries back off (jittered, doubling
//!   up to `retry_backoff_max`), except that a batch whose shard the store reports down
//!   ([`Store::shard_up`]) is sent again as soon as the shard is back up. A shard has at
//!   most one batch in flight; newer deltas wait for the next batch. One failing shard
//!   never holds others.
//! - **Bounded batches.** A batch holds at most `batch_size_limit` keys and
//!   `batch_max_bytes` bytes of keys (a longer key goes alone), so a backlog built up
//!   while a shard was down drains as a sequence of such batches, each with its own
//!   sequence number and one in flight at a time, rather than as one call too large for
//!   the store to take within its timeout.
//! - **Read your writes.** [`Counter::get`] adds this instance's pending and in-flight
//!   deltas to the stored value, using the store's record of which of our batches it holds,
//!   so a delta is never added twice or missed, even while a batch is on the wire. A read
//!   whose answers keep missing a batch of ours acknowledged meanwhile asks again a few
//!   times, then answers with the fresher count the acknowledgement cached, and caches
//!   nothing older over it.
//! - **A bad stored value holds only its key.** A store whose value for a key is not a
//!   count (another type, text, a negative or too large number) rejects that key
//!   ([`Store::apply_checked`]) and applies the rest of the batch. The counter holds the
//!   key's increments apart, outside the shard's batches, and offers them again every
//!   `quarantine_recheck` until the value is repaired (then they are written) or the key
//!   is reset (then they are dropped, like any unwritten increment of a reset key).
//!   Meanwhile [`Counter::increment`] and [`Counter::get`] of that key answer
//!   [`Error::Corrupt`] (a refused increment is not counted),
//!   [`Snapshot::quarantined_keys`] and `tally_counter_quarantined_keys` count the held
//!   keys, each is logged once at `error`, and shutdown logs what it still holds, key by
//!   key, for an operator to add by hand.
//! - **A panic does not stop a shard.** A flusher task that panics (a store's `apply`
//!   that panics, say) is logged at `error` with its message, counted
//!   ([`Snapshot::task_panics`], `tally_task_panics_total{task="flusher"}`) and started
//!   again; a batch it had on the wire goes out again with the same id.
//! - **Staleness.** Other instances' writes show after at most their `batch_interval` plus
//!   this instance's `cache_ttl`.
//! - **Only what is read is cached.** An acknowledged batch refreshes the cached totals of
//!   its keys that are cached (so a cached count never misses a written batch) and leaves
//!   the others out, unless a store read of its shard is in progress: a page visited once
//!   and never read, or a URL of the request statistics, costs no cache insertion and no
//!   eviction. Its first read reads it through.
//! - **One store read per miss, not per reader.** Concurrent misses of one key share one
//!   store read: the first reads, the others wait for it and answer from the cache it
//!   fills (with their own deltas, as any hit), so an entry expiring under load costs one
//!   read. A failed read fails its waiters with its error; a cancelled one passes the read
//!   to a waiter.
//! - **Reset.** [`Counter::reset`] waits for the shard's in-flight batch, so a delta
//!   recorded before the reset is never applied after it, and a read on the wire while
//!   it ran does not cache its answer, so a read after it never sees the count from
//!   before it.
//! - **Bounded memory.** At most `max_pending_keys` distinct keys are buffered, and at
//!   most a shard's share of them (`max_pending_keys / shards`, rounded up) for any one
//!   shard, so a shard whose store is down fills only its own share and the others keep
//!   taking new keys; past either bound [`Counter::increment`] returns
//!   [`Error::Overloaded`] and records nothing. Keys already waiting are never refused:
//!   pending ones, and those of a shard's batch in flight (a shard down for long has
//!   every key it had in flight), which take one more place each, so a shard holds at
//!   most twice its share. The bytes of the keys waiting are bounded the same way by
//!   `max_pending_bytes` (a [`PendingBytes`] budget several counters can share; a key costs
//!   its length plus [`PendingBytes::KEY_OVERHEAD`], each shard at most its share), past
//!   which a new key gets [`Error::OverloadedBytes`]. A key's text is held once: the
//!   buffer, the batch on the wire and the read cache share it.
//! - **Sketches of distinct members.** [`Counter::add_to_sketches`] records members (a
//!   page's visitor ids) for the store's HyperLogLog sketches ([`Store::sketch`]), in
//!   memory like increments and bounded by `max_pending_members` ([`Error::OverloadedMembers`],
//!   all or nothing). They go out after each batch round, one store call per shard with
//!   each key's new members, at least once: no batch id is needed, since adding a member
//!   a sketch holds changes nothing, so a call whose reply is lost is sent again, and a
//!   failed one puts its members back. [`Counter::estimate_many`] sends the waiting
//!   members of the keys it reads first, so a caller reads its own adds; a reset drops
//!   the key's waiting members once the store has emptied its sketch.
//! - **What a crash loses.** If the process dies without [`Counter::shutdown`], the
//!   increments not yet written (at most one `batch_interval` of them, more while a shard
//!   is down) are lost. A store that loses data it acknowledged (Redis without AOF) loses
//!   it; the counter cannot know.
//!
//! # Layout
//!
//! - `store`: the [`Store`] contract and its types.
//! - `counter`: [`Counter`] and the state its parts share, one module a part:
//!   `counter::buffer` the write buffer and its bounds, `counter::read` the read cache and
//!   the reads shared by concurrent misses, `counter::flush` the flushers and their
//!   retries, `counter::quarantine` the keys whose stored value is not a count,
//!   `counter::sketch` the sketch members waiting. Each
//!   opens with what it owns and the invariants it keeps.
//! - `memory`: [`MemoryStore`].
//! - [`hll`]: [`hll::HyperLogLog`], the Redis-compatible sketch of distinct members that
//!   in-process stores keep for [`Store::sketch`].
//! - `config`: [`CounterConfig`]; `error`: [`Error`].
//! - `metrics`: the counter's activity, each event recorded once for both [`Snapshot`]
//!   and the `tally_counter_*` metrics of the `metrics` facade. [`Counter::new`] registers
//!   their handles with the recorder installed at that moment (once, so the hot paths pay
//!   an atomic add): install yours before creating counters, or theirs go nowhere.
//! - `task`: [`restart_on_panic`]; `hash`: the seeded hasher of keys; `sync`:
//!   poison-tolerant locking.
#![deny(missing_docs)]

mod config;
mod counter;
mod error;
mod hash;
pub mod hll;
mod memory;
mod metrics;
mod store;
mod sync;
mod task;

pub use config::{CounterConfig, PendingBytes};
pub use counter::{Count, Counter, ServedVia, ShutdownReport, Snapshot};
pub use error::{Error, Result};
pub use memory::MemoryStore;
pub use store::{
    Applied, Batch, BatchId, InstanceId, RankedStore, RejectedKey, SUBKEY_SEPARATOR, ShardHealth,
    ShardId, SketchAdd, Store, StoreError, StoredValues, Window, WindowRead, rank_order,
    routing_key, routing_key_bytes, subkey,
};
pub use task::restart_on_panic;

/// The README's example runs as a doctest too, so what a reader of the README copies
/// compiles and does what it says.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

#[cfg(test)]
mod tests {
    /// The code blocks of a Markdown text (in crate docs, without their `//! ` prefixes).
    fn code_blocks(text: &str) -> Vec<String> {
        let mut blocks = Vec::new();
        let mut block: Option<String> = None;
        for line in text.lines() {
            match (&mut block, line.trim_start().starts_with("```")) {
                (None, true) => block = Some(String::new()),
                (Some(_), true) => blocks.extend(block.take()),
                (Some(code), false) => {
                    code.push_str(line);
                    code.push('\n');
                }
                (None, false) => {}
            }
        }
        blocks
    }

    #[test]
    fn the_readme_example_is_the_crate_docs_example() {
        let docs: String = include_str!("lib.rs")
            .lines()
            .map_while(|line| line.strip_prefix("//!"))
            .map(|line| format!("{}\n", line.strip_prefix(' ').unwrap_or(line)))
            .collect();

        let readme = code_blocks(include_str!("../README.md"));
        let crate_docs = code_blocks(&docs);

        assert_eq!(readme.len(), 1, "the README has one example");
        assert_eq!(readme.first(), crate_docs.first());
    }
}
