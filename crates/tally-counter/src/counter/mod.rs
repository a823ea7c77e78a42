//! The counter: [`Counter`], its answers, and the state its parts share.
//!
//! A counter is four parts over one store, each in a module of its own:
//!
//! - `buffer`: the write buffer. Increments land in striped tables, one per store shard,
//!   each thread in a stripe of its own, under the bounds on keys and bytes waiting.
//! - `read`: the read cache and the read protocol: a stored value plus what of this
//!   instance's deltas it does not include yet, and one store read per key for all the
//!   misses of it at once.
//! - `flush`: the flushers. A task per store shard sends its pending deltas in batches, one
//!   in flight at a time, each retried unchanged until the store acknowledges it.
//! - `quarantine`: keys whose stored value is not a count, and the increments held for
//!   them.
//! - `sketch`: sketch members waiting to be added ([`Counter::add_to_sketches`]), sent at
//!   least once, apart from the batches.
//!
//! This module holds what they share: [`Counter`] and its state (`Inner`), and for each
//! shard the in-flight batch as readers see it (`InFlight`).
//!
//! # Invariants
//!
//! For each store shard the counter knows three disjoint sets of this instance's deltas:
//! *pending* (in the striped write buffer), *in flight* (the one unacknowledged batch) and
//! *acknowledged* (reflected in the store). A read adds the store's value to whatever of the
//! first two the store value does not already include. The store reports, with every read,
//! the highest sequence of ours it has applied, which is what makes "does not already
//! include" decidable even when a reply is lost.
//!
//! Moving deltas between the sets (pending → in flight, in flight → acknowledged) happens
//! under the shard's `in_flight` write lock, and reads combine the sets under its read lock,
//! so a read never sees a delta in two sets or in none. Increments only touch stripe locks:
//! their thread's, and a key's home stripe when the key is new to the thread's stripe.
//!
//! Where `std::sync` locks nest, they are taken in one order: `in_flight`, then a shard's
//! `quarantine`, then stripes of the buffer (in index order); the others are taken alone. Each is held for
//! a few map operations, never across an `.await`. The shard's `outbox` (a tokio mutex) is
//! held across an `.await`: by whoever sends the shard's batches, for the whole send; so is
//! the shard's sketch `send` lock, by whoever sends its sketch members, and a reset takes
//! it after the outbox (the one order the two are taken in).

mod buffer;
mod flush;
mod quarantine;
mod read;
mod sketch;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::config::CounterConfig;
use crate::error::{Error, Result};
use crate::hash::KeyHash;
use crate::metrics::Metrics;
use crate::store::{InstanceId, ShardId, Store};
use crate::sync::{self, lock};

use buffer::Buffer;
use flush::Outbox;
use quarantine::Held;
use read::{CacheEntry, ReadOutcome};
use sketch::Sketches;

type KeyMap<V> = HashMap<Arc<str>, V, KeyHash>;

/// Where the stored part of a [`Count`] came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ServedVia {
    /// The read cache answered: no store round trip.
    Cache,
    /// The store shard with this id answered (a cache miss).
    Store(ShardId),
}

/// The answer to [`Counter::get`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Count {
    /// Stored value plus this instance's pending and in-flight deltas.
    pub value: u64,
    /// Whether the stored part came from the cache or from a store shard.
    pub served_via: ServedVia,
}

/// Counters of the counter's own activity, for status pages and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Reads answered from the cache.
    pub cache_hits: u64,
    /// Reads that went to the store.
    pub cache_misses: u64,
    /// Entries in the read cache (approximate: the cache settles lazily).
    pub cache_size: u64,
    /// Distinct keys waiting to be written or in flight (the write buffer).
    pub write_buffer_size: usize,
    /// When a batch was last acknowledged by the store.
    pub last_batch_at: Option<SystemTime>,
    /// Batches the store acknowledged.
    pub batches_ok: u64,
    /// Batch attempts that failed (each retry that fails counts once).
    pub batches_failed: u64,
    /// `(key, delta)` pairs written.
    pub keys_written: u64,
    /// Sum of the deltas written: increments that reached the store.
    pub increments_written: u64,
    /// Flusher tasks that panicked (a store that panicked in `apply`, say) and were
    /// restarted; each is logged at `error` level with its message.
    pub task_panics: u64,
    /// What the keys waiting (pending, in flight or held) cost in bytes (see
    /// [`PendingBytes`](crate::PendingBytes)).
    pub write_buffer_bytes: usize,
    /// Keys whose increments are held because the store's value for them is not a count
    /// (see [`Error::Corrupt`]).
    pub quarantined_keys: usize,
    /// Shards whose last batch attempt failed and none has been acknowledged since: the
    /// shard's name and the error, as the store reported it (retried with backoff).
    pub failing_shards: Vec<(String, String)>,
    /// Most keys one acknowledged batch held (at most `batch_size_limit`).
    pub largest_batch_keys: usize,
    /// Sketch members waiting to be added ([`Counter::add_to_sketches`]).
    pub sketch_members_pending: usize,
    /// Sketch members the store took (a member sent again after a failure counts again).
    pub sketch_members_written: u64,
    /// Store calls adding sketch members that failed (their members stayed pending).
    pub sketch_adds_failed: u64,
    /// Most bytes of keys one acknowledged batch held (at most `batch_max_bytes`, or one
    /// longer key alone).
    pub largest_batch_bytes: usize,
}

/// What [`Counter::shutdown`] could not write before its deadline.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// `(key, delta)` pairs written during the shutdown flush.
    pub keys_written: u64,
    /// Distinct keys still pending or in flight at the deadline (0 in the normal case),
    /// sub-keys ([`crate::routing_key`]) apart.
    pub keys_unwritten: usize,
    /// Sum of their deltas: increments acknowledged to callers but not stored.
    pub increments_unwritten: u64,
    /// Distinct sub-keys (a page's day counts) still pending or in flight at the deadline.
    pub subkeys_unwritten: usize,
    /// Sum of their deltas.
    pub subkey_increments_unwritten: u64,
    /// Sketch members ([`Counter::add_to_sketches`]) still waiting at the deadline.
    pub members_unwritten: usize,
}

/// A batched, cache-through counter over a [`Store`].
///
/// Cheap to clone: clones share one buffer, cache and set of flushers. See the crate docs
/// for the guarantees.
pub struct Counter<S: Store> {
    inner: Arc<Inner<S>>,
}

impl<S: Store> Clone for Counter<S> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<S: Store> std::fmt::Debug for Counter<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counter")
            .field("name", &self.inner.config.name)
            .field("instance", &self.inner.instance)
            .field("shards", &self.inner.shards.len())
            .finish_non_exhaustive()
    }
}

/// The state every clone of a [`Counter`] and every flusher shares.
struct Inner<S> {
    store: S,
    config: CounterConfig,
    instance: InstanceId,
    hash: KeyHash,
    shards: Box<[Shard]>,
    /// The pending deltas, and the bounds on the keys and bytes waiting.
    buffer: Buffer,
    /// Sketch members waiting to be added.
    sketches: Sketches,
    cache: moka::sync::Cache<Arc<str>, CacheEntry, KeyHash>,
    /// Store reads in progress, by key: a miss of a key already being read waits for that
    /// read instead of sending its own, so an entry expiring under load costs one read,
    /// not one per concurrent reader.
    reads: Mutex<KeyMap<tokio::sync::watch::Receiver<ReadOutcome>>>,
    metrics: Metrics,
    closed: AtomicBool,
    /// Tells the flushers to stop: set on shutdown and when the last handle is dropped.
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl<S> Drop for Inner<S> {
    fn drop(&mut self) {
        // Only signals: a dropped counter cannot flush; `Counter::shutdown` is the way.
        self.stop.send_replace(true);
        // Its keys are gone with it: their bytes go back to a budget other counters share.
        self.config.max_pending_bytes.give_back(self.buffer.bytes());
    }
}

/// The state of one store shard, apart from its pending deltas (in the buffer's stripes).
struct Shard {
    /// Wakes the shard's flusher early (size limit reached). Shared with the flusher task,
    /// which holds no strong reference to the counter while it waits.
    wake: Arc<Notify>,
    /// Held by whoever sends this shard's batches, for the whole send including retries:
    /// at most one batch per shard is in flight, and resets wait their turn behind it.
    outbox: tokio::sync::Mutex<Outbox>,
    /// The in-flight deltas as readers see them. Held briefly, never across an `.await`.
    in_flight: RwLock<InFlight>,
    /// Keys whose stored value is not a count, with their held increments. Held briefly,
    /// never across an `.await`.
    quarantine: Mutex<KeyMap<Held>>,
    /// Why the shard's last batch attempt failed, until a batch is acknowledged.
    last_error: Mutex<Option<String>>,
    /// When the shard's last batch was acknowledged. Held briefly, never across an
    /// `.await`.
    last_written: Mutex<Option<SystemTime>>,
    /// Store reads of this shard in progress ([`read::Reading`]): while one runs, an
    /// acknowledged batch caches the totals of all its keys, not only of those cached
    /// already (see the `read` module's invariants).
    reading: std::sync::atomic::AtomicUsize,
}

impl Shard {
    fn new(hash: KeyHash) -> Self {
        Self {
            wake: Arc::new(Notify::new()),
            outbox: tokio::sync::Mutex::new(Outbox::default()),
            in_flight: RwLock::new(InFlight::default()),
            quarantine: Mutex::new(KeyMap::with_hasher(hash)),
            last_error: Mutex::new(None),
            last_written: Mutex::new(None),
            reading: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// The in-flight deltas, for reading.
    fn in_flight(&self) -> RwLockReadGuard<'_, InFlight> {
        sync::read(&self.in_flight)
    }

    /// The in-flight deltas, for moving deltas into or out of them.
    fn in_flight_mut(&self) -> RwLockWriteGuard<'_, InFlight> {
        sync::write(&self.in_flight)
    }
}

/// A shard's batch on the wire, and how far the store has acknowledged this instance's
/// batches: what a read must add to a stored value, and what it must not.
#[derive(Default)]
struct InFlight {
    /// Sequence of the batch in `deltas`.
    seq: u64,
    /// The deltas of the batch on the wire, until the store acknowledges it.
    deltas: Option<KeyMap<u64>>,
    /// Sequence of the last batch the store acknowledged.
    acked_seq: u64,
    /// Resets done on this shard: a read that saw this change while it was on the wire
    /// may hold a value from before the reset, and does not cache it.
    resets: u64,
}

impl InFlight {
    /// The in-flight delta for `key` unless the store value (which includes batches up to
    /// `included_seq`) already has it.
    fn delta(&self, key: &str, included_seq: u64) -> u64 {
        match &self.deltas {
            Some(map) if self.seq > included_seq => map.get(key).copied().unwrap_or(0),
            _ => 0,
        }
    }
}

impl<S: Store> Counter<S> {
    /// Creates a counter over `store` and starts one flusher task per store shard on the
    /// current tokio runtime. Its metrics go to the `metrics` recorder installed now (a
    /// recorder installed later does not see them).
    ///
    /// # Errors
    /// [`Error::Config`] when `config` is out of range.
    ///
    /// # Panics
    /// When called outside a tokio runtime.
    pub fn new(store: S, config: CounterConfig) -> Result<Self> {
        config.validate()?;
        let shard_count = store.shard_count().max(1);
        let hash = KeyHash::random();
        let cache = moka::sync::Cache::builder()
            .max_capacity(config.cache_capacity)
            .time_to_live(config.cache_ttl)
            .build_with_hasher(hash);
        let inner = Arc::new(Inner {
            buffer: Buffer::new(shard_count, &config),
            sketches: Sketches::new(shard_count, hash),
            metrics: Metrics::new(&config.name),
            store,
            config,
            instance: InstanceId::random(),
            hash,
            shards: (0..shard_count).map(|_| Shard::new(hash)).collect(),
            cache,
            reads: Mutex::new(KeyMap::with_hasher(hash)),
            closed: AtomicBool::new(false),
            stop: tokio::sync::watch::Sender::new(false),
            tasks: Mutex::new(Vec::new()),
        });
        *lock(&inner.tasks) = flush::spawn_flushers(&inner);
        Ok(Self { inner })
    }

    /// The store the counter writes to.
    pub fn store(&self) -> &S {
        &self.inner.store
    }

    /// The configuration the counter runs with.
    pub fn config(&self) -> &CounterConfig {
        &self.inner.config
    }

    /// Adds `n` to `key`. Memory only: no I/O, no `.await`, and no allocation when the key
    /// is already pending.
    ///
    /// Once this returns `Ok`, the increment is counted exactly once when its batch is
    /// written (unless the process dies first).
    ///
    /// # Errors
    /// [`Error::Overloaded`] when `key` is not pending and `max_pending_keys` keys already
    /// are, or its shard already holds its share of them (`max_pending_keys` divided by
    /// the number of shards, rounded up): the increment was not recorded. A key in its
    /// shard's batch in flight is waiting already and is never refused: past the bounds
    /// it takes one more place (so a shard holds at most its share plus its batch in
    /// flight, which is at most its share).
    /// [`Error::OverloadedBytes`] when `key` is not pending and the keys waiting hold
    /// `max_pending_bytes` (shared with the counters given the same
    /// [`PendingBytes`](crate::PendingBytes)); the same exception for a key in flight.
    /// [`Error::Corrupt`] while the key's increments are held because the store's value
    /// for it is not a count: the increment was not recorded.
    /// [`Error::ShutDown`] after [`Counter::shutdown`].
    pub fn increment(&self, key: &str, n: u64) -> Result<()> {
        let inner = &*self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return Err(Error::ShutDown);
        }
        if n == 0 {
            return Ok(());
        }
        let shard = inner.shard_of(key);
        inner.refuse_if_held(shard, key)?;
        inner.record(shard, key, n)
    }

    /// Adds each `n` to its key, all or nothing: every increment is recorded, or (on an
    /// error) none is. Memory only, like [`Counter::increment`]; a key listed twice gets
    /// both increments.
    ///
    /// Each key is bounded as [`Counter::increment`] bounds it, and the first key a bound
    /// refuses refuses them all. The buffer's lock stripes of all the keys are held
    /// together while they are recorded (which briefly delays other increments of those
    /// stripes), so a batch never takes some of them without the others being recorded.
    ///
    /// # Errors
    /// As [`Counter::increment`], for the first key that fails: [`Error::Corrupt`] for a
    /// held key (checked before any is recorded), [`Error::Overloaded`] or
    /// [`Error::OverloadedBytes`] for a key a bound refuses, [`Error::ShutDown`].
    pub fn increment_all(&self, increments: &[(&str, u64)]) -> Result<()> {
        let inner = &*self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return Err(Error::ShutDown);
        }
        // One entry per key (a key listed twice takes one place), in first-listed order:
        // looked up by scanning for a few keys (a visit and its day), by a map past that.
        let mut entries: Vec<(ShardId, &str, u64)> = Vec::with_capacity(increments.len());
        let mut seen: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        for &(key, n) in increments.iter().filter(|(_, n)| *n > 0) {
            let found = if increments.len() <= 8 {
                entries.iter().position(|(_, k, _)| *k == key)
            } else {
                seen.get(key).copied()
            };
            match found {
                Some(at) => entries[at].2 += n,
                None => {
                    if increments.len() > 8 {
                        seen.insert(key, entries.len());
                    }
                    entries.push((inner.shard_of(key), key, n));
                }
            }
        }
        for &(shard, key, _) in &entries {
            inner.refuse_if_held(shard, key)?;
        }
        inner.record_all(&entries)
    }

    /// The count of `key`: the stored value (from the cache, or the store on a miss) plus
    /// this instance's pending and in-flight deltas. A caller always reads its own writes.
    ///
    /// # Errors
    /// [`Error::Store`] when the key is not cached and its shard does not answer.
    pub async fn get(&self, key: &str) -> Result<Count> {
        let inner = &*self.inner;
        let shard = inner.shard_of(key);
        inner.refuse_if_held(shard, key)?;
        if let Some(count) = self.get_cached(key) {
            return Ok(count);
        }
        inner.metrics.cache_miss();
        let value = inner.read_shared(shard, key).await?;
        Ok(Count {
            value,
            served_via: ServedVia::Store(shard),
        })
    }

    /// The counts of `keys`, in order, as [`Counter::get`] answers each: cached values
    /// where there are, and one store read per shard for the rest (not shared with other
    /// reads of those keys). For a family of keys in one shard, such as a page's days
    /// ([`routing_key`](crate::routing_key)), that is one read.
    ///
    /// # Errors
    /// As [`Counter::get`], for the first key that fails.
    pub async fn get_many(&self, keys: &[&str]) -> Result<Vec<u64>> {
        let inner = &*self.inner;
        let mut counts = vec![0; keys.len()];
        let mut misses: Vec<(ShardId, Vec<usize>)> = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let shard = inner.shard_of(key);
            inner.refuse_if_held(shard, key)?;
            match inner.cached_count(shard, key) {
                Some(value) => {
                    inner.metrics.cache_hit();
                    counts[i] = value;
                }
                None => {
                    inner.metrics.cache_miss();
                    match misses.iter_mut().find(|(s, _)| *s == shard) {
                        Some((_, at)) => at.push(i),
                        None => misses.push((shard, vec![i])),
                    }
                }
            }
        }
        for (shard, at) in misses {
            let wanted: Vec<&str> = at.iter().map(|&i| keys[i]).collect();
            let values = inner.read_through_many(shard, &wanted).await?;
            for (i, value) in at.into_iter().zip(values) {
                counts[i] = value;
            }
        }
        Ok(counts)
    }

    /// The count of `key` when its stored value is cached, without awaiting anything:
    /// what [`Counter::get`] answers on a cache hit (counted as a hit), or `None` on a miss
    /// (not counted; [`Counter::get`] then reads the store and counts the miss).
    ///
    /// For callers on a thread that should not wait for the store: answer from here, and
    /// hand only the misses to wherever store calls run.
    pub fn get_cached(&self, key: &str) -> Option<Count> {
        let inner = &*self.inner;
        let shard = inner.shard_of(key);
        if inner.refuse_if_held(shard, key).is_err() {
            return None;
        }
        let value = inner.cached_count(shard, key)?;
        inner.metrics.cache_hit();
        Some(Count {
            value,
            served_via: ServedVia::Cache,
        })
    }

    /// Sets `key` to zero.
    ///
    /// Ordered with the shard's batches: it waits for a batch in flight, so no delta
    /// recorded before the reset is applied after it, and drops this instance's pending
    /// deltas for the key. Increments that race with the reset may land on either side.
    ///
    /// # Errors
    /// [`Error::Store`] when the shard does not answer; then nothing was dropped.
    pub async fn reset(&self, key: &str) -> Result<()> {
        let inner = &*self.inner;
        let shard = inner.shard_of(key);
        let mut outbox = inner.shards[shard].outbox.lock().await;
        // A batch left unacknowledged by a cancelled flush must land before the reset.
        inner.resend_unacked(shard, &mut outbox).await;
        // Sketch adds on the wire land before it too, and none goes out during it.
        let sending = inner.sketch_send_lock(shard).await;
        inner
            .store
            .reset(shard, key)
            .await
            .map_err(|source| inner.store_error(shard, source))?;
        inner.drop_sketch_members(shard, key);
        drop(sending);
        let mut in_flight = inner.shards[shard].in_flight_mut();
        // Its held increments go, like any unwritten increment of a reset key.
        inner.drop_held(shard, key);
        inner.drop_pending(shard, key);
        inner.cache.insert(
            key.into(),
            CacheEntry {
                value: 0,
                seq: in_flight.acked_seq,
            },
        );
        in_flight.resets += 1;
        drop(in_flight);
        drop(outbox);
        Ok(())
    }

    /// Writes everything pending at the time of the call, waiting for in-flight batches and
    /// retrying failed ones (unchanged, with backoff) until the store takes them; sketch
    /// members too ([`Counter::add_to_sketches`]).
    ///
    /// Does not return while a shard with pending deltas stays down; wrap it in a timeout
    /// where that matters.
    pub async fn flush(&self) {
        let inner = &*self.inner;
        futures::future::join_all((0..inner.shards.len()).map(|shard| async move {
            inner
                .flush_shard(shard, inner.buffer.pending_keys(shard).max(1))
                .await;
            inner.flush_sketches(shard, true).await;
        }))
        .await;
    }

    /// Stops the flushers, writes what is pending within `deadline`, and reports what could
    /// not be written. Further increments on any clone fail with [`Error::ShutDown`].
    pub async fn shutdown(self, deadline: Duration) -> ShutdownReport {
        let inner = &*self.inner;
        inner.closed.store(true, Ordering::Release);
        inner.stop.send_replace(true);
        let tasks = std::mem::take(&mut *lock(&inner.tasks));
        for task in &tasks {
            // Cancelling mid-send is safe: the batch stays in `unacked` and goes out again,
            // same id, in the flush below.
            task.abort();
        }
        for task in tasks {
            let _ = task.await;
        }
        let written_before = inner.metrics.keys_written();
        let _ = tokio::time::timeout(deadline, async {
            self.flush().await;
            // A value repaired since the last recheck takes its held increments now.
            for shard in 0..inner.shards.len() {
                inner.recheck_quarantine(shard, true).await;
            }
        })
        .await;
        inner.log_held();
        let keys_written = inner.metrics.keys_written() - written_before;
        let unwritten = inner.unwritten();
        let members_unwritten = inner.sketches.pending();
        if members_unwritten > 0 {
            tracing::error!(
                counter = %inner.config.name,
                members_unwritten,
                "counter shut down with sketch members the store did not take"
            );
        }
        if unwritten.keys + unwritten.subkeys > 0 {
            tracing::error!(
                counter = %inner.config.name,
                keys_unwritten = unwritten.keys,
                increments_unwritten = unwritten.increments,
                subkeys_unwritten = unwritten.subkeys,
                subkey_increments_unwritten = unwritten.subkey_increments,
                "counter shut down with deltas the store did not take"
            );
        }
        ShutdownReport {
            keys_written,
            keys_unwritten: unwritten.keys,
            increments_unwritten: unwritten.increments,
            subkeys_unwritten: unwritten.subkeys,
            subkey_increments_unwritten: unwritten.subkey_increments,
            members_unwritten,
        }
    }

    /// The counter's activity figures.
    pub fn snapshot(&self) -> Snapshot {
        let inner = &*self.inner;
        // Let the cache settle its bookkeeping so `cache_size` is current (cheap, and
        // snapshots are taken by status pages, not per request).
        inner.cache.run_pending_tasks();
        let metrics = &inner.metrics;
        Snapshot {
            cache_hits: metrics.cache_hits(),
            cache_misses: metrics.cache_misses(),
            cache_size: inner.cache.entry_count(),
            write_buffer_size: inner.buffer.keys(),
            last_batch_at: metrics.last_batch_at(),
            batches_ok: metrics.batches_ok(),
            batches_failed: metrics.batches_failed(),
            keys_written: metrics.keys_written(),
            increments_written: metrics.increments_written(),
            task_panics: metrics.task_panics(),
            write_buffer_bytes: inner.buffer.bytes(),
            quarantined_keys: metrics.held_keys(),
            failing_shards: inner
                .shards
                .iter()
                .enumerate()
                .filter_map(|(shard, state)| {
                    let error = lock(&state.last_error).clone()?;
                    Some((inner.store.shard_name(shard).to_owned(), error))
                })
                .collect(),
            largest_batch_keys: metrics.largest_batch_keys(),
            sketch_members_pending: inner.sketches.pending(),
            sketch_members_written: metrics.members_written_total(),
            sketch_adds_failed: metrics.members_failed_total(),
            largest_batch_bytes: metrics.largest_batch_bytes(),
        }
    }

    /// Keys waiting to be written (pending, in flight or held), shard by shard: the
    /// [`Snapshot::write_buffer_size`] of each shard, read from one atomic each.
    pub fn waiting_keys_by_shard(&self) -> Vec<usize> {
        (0..self.inner.shards.len())
            .map(|shard| self.inner.buffer.waiting_keys(shard))
            .collect()
    }

    /// When each shard's last batch was acknowledged (`None` before its first): the
    /// [`Snapshot::last_batch_at`] of each shard.
    pub fn last_batch_by_shard(&self) -> Vec<Option<SystemTime>> {
        self.inner
            .shards
            .iter()
            .map(|shard| *lock(&shard.last_written))
            .collect()
    }
}

impl<S: Store> Inner<S> {
    fn shard_of(&self, key: &str) -> ShardId {
        if self.shards.len() == 1 {
            return 0;
        }
        // Clamp so a misbehaving store cannot make us index out of bounds.
        self.store.shard_of(key).min(self.shards.len() - 1)
    }

    fn store_error(&self, shard: ShardId, source: crate::store::StoreError) -> Error {
        Error::Store {
            shard,
            name: self.store.shard_name(shard).to_owned(),
            source,
        }
    }

    /// Keys and increment sum still pending, in flight or held.
    fn unwritten(&self) -> Unwritten {
        let mut totals = self.buffer.pending_totals();
        for (shard, state) in self.shards.iter().enumerate() {
            let in_flight = state.in_flight();
            if let Some(map) = &in_flight.deltas {
                for (key, delta) in map {
                    totals.add(key, *delta);
                }
            }
            totals.merge(&self.held_totals(shard));
        }
        totals
    }
}

/// Keys not written and the sum of their deltas, keys and sub-keys
/// ([`crate::routing_key`]) apart.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Unwritten {
    keys: usize,
    increments: u64,
    subkeys: usize,
    subkey_increments: u64,
}

impl Unwritten {
    fn add(&mut self, key: &str, delta: u64) {
        if crate::subkey(key).is_some() {
            self.subkeys += 1;
            self.subkey_increments += delta;
        } else {
            self.keys += 1;
            self.increments += delta;
        }
    }

    /// Adds `delta` of a key already counted (an extra delta of a pending key).
    fn add_delta(&mut self, key: &str, delta: u64) {
        if crate::subkey(key).is_some() {
            self.subkey_increments += delta;
        } else {
            self.increments += delta;
        }
    }

    fn merge(&mut self, other: &Unwritten) {
        self.keys += other.keys;
        self.increments += other.increments;
        self.subkeys += other.subkeys;
        self.subkey_increments += other.subkey_increments;
    }
}
