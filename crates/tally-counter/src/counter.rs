//! The counter: write buffer, read cache, per-shard flushers and the read protocol that
//! keeps reads exact while batches are in flight.
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
//! under the shard's `view` write lock, and reads combine the sets under its read lock, so a
//! read never sees a delta in two sets or in none. Increments only touch a stripe lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::{CounterConfig, PendingBytes};
use crate::error::{Error, Result};
use crate::hash::KeyHash;
use crate::metrics::CounterMetrics;
use crate::store::{Applied, Batch, BatchId, InstanceId, ShardId, Store};

/// Number of lock stripes of the write buffer. A power of two well above the core count of
/// the machines tally runs on, so two increments rarely wait on one another.
const STRIPES: usize = 64;

/// A store read is retried this many times when a batch was acknowledged while it was on
/// the wire (its value would miss that batch); past that the read is used as it is, which
/// only happens when the store lost data it had acknowledged.
const READ_ATTEMPTS: usize = 4;

/// How often a failed batch waiting for its retry asks whether its shard, down at the
/// failure, is back up.
const UP_POLL: Duration = Duration::from_millis(50);

type KeyMap<V> = HashMap<Arc<str>, V, KeyHash>;

/// How a store read shared by concurrent misses of one key ended: `None` while it runs,
/// then `Ok` (the cache holds the value) or the error's text.
type ReadOutcome = Option<std::result::Result<(), Arc<str>>>;

/// A shard's pending deltas within one stripe. A `HashTable` rather than a `HashMap` so the
/// hash computed once per increment (which also picked the stripe) is reused for the slot.
type PendingTable = hashbrown::HashTable<(Arc<str>, u64)>;

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
    /// [`PendingBytes`]).
    pub write_buffer_bytes: usize,
    /// Keys whose increments are held because the store's value for them is not a count
    /// (see [`Error::Corrupt`]).
    pub quarantined_keys: usize,
    /// Shards whose last batch attempt failed and none has been acknowledged since: the
    /// shard's name and the error, as the store reported it (retried with backoff).
    pub failing_shards: Vec<(String, String)>,
    /// Most keys one acknowledged batch held (at most `batch_size_limit`).
    pub largest_batch_keys: usize,
    /// Most bytes of keys one acknowledged batch held (at most `batch_max_bytes`, or one
    /// longer key alone).
    pub largest_batch_bytes: usize,
}

/// What [`Counter::shutdown`] could not write before its deadline.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// `(key, delta)` pairs written during the shutdown flush.
    pub keys_written: u64,
    /// Distinct keys still pending or in flight at the deadline (0 in the normal case).
    pub keys_unwritten: usize,
    /// Sum of their deltas: increments acknowledged to callers but not stored.
    pub increments_unwritten: u64,
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

struct Inner<S> {
    store: S,
    config: CounterConfig,
    instance: InstanceId,
    hash: KeyHash,
    stripes: Box<[Stripe]>,
    shards: Box<[Shard]>,
    /// Distinct keys pending or in flight, over all shards: the memory bound.
    buffered_keys: AtomicUsize,
    /// Keys in every shard's quarantine: increments check a quarantine only while it is
    /// not 0.
    quarantined: AtomicUsize,
    /// Most keys one shard may hold pending or in flight: its share of `max_pending_keys`
    /// (rounded up). A shard whose store is down cannot drain, so without a share of its
    /// own it would fill the whole bound and every other shard's new keys would be refused
    /// too, although their stores take batches.
    shard_limit: usize,
    /// Most bytes of keys one shard may hold: its share of `max_pending_bytes`, so a shard
    /// whose store is down cannot take the bytes of the others either.
    shard_byte_limit: usize,
    cache: moka::sync::Cache<Arc<str>, CacheEntry, KeyHash>,
    /// Store reads in progress, by key: a miss of a key already being read waits for that
    /// read instead of sending its own, so an entry expiring under load costs one read,
    /// not one per concurrent reader.
    reads: Mutex<KeyMap<tokio::sync::watch::Receiver<ReadOutcome>>>,
    stats: Stats,
    metrics: CounterMetrics,
    closed: std::sync::atomic::AtomicBool,
    /// Tells the flushers to stop: set on shutdown and when the last handle is dropped.
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl<S> Inner<S> {
    /// What this counter's waiting keys cost in bytes (see [`PendingBytes`]): the sum of
    /// its shards'.
    fn buffered_bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.bytes.load(Ordering::Acquire))
            .sum()
    }
}

impl<S> Drop for Inner<S> {
    fn drop(&mut self) {
        // Only signals: a dropped counter cannot flush; `Counter::shutdown` is the way.
        self.stop.send_replace(true);
        // Its keys are gone with it: their bytes go back to a budget other counters share.
        self.config
            .max_pending_bytes
            .give_back(self.buffered_bytes());
    }
}

/// One lock stripe of the write buffer: a map per store shard, so draining one shard
/// never touches another's keys.
///
/// A `std::sync::Mutex`, not an async one: it is held for a map operation, never across
/// an `.await`. Aligned to keep neighbouring stripes off one cache line.
#[repr(align(128))]
struct Stripe {
    maps: Mutex<Vec<PendingTable>>,
}

struct Shard {
    /// Distinct keys pending (not in flight) for this shard: the batch-size trigger.
    pending: AtomicUsize,
    /// Distinct keys pending or in flight for this shard: checked against `shard_limit`.
    buffered: AtomicUsize,
    /// What those keys cost in bytes (see [`PendingBytes`]): checked against the shard's
    /// share of `max_pending_bytes`.
    bytes: AtomicUsize,
    /// Wakes the shard's flusher early (size limit reached). Shared with the flusher task,
    /// which holds no strong reference to the counter while it waits.
    wake: Arc<Notify>,
    /// Held by whoever sends this shard's batches, for the whole send including retries:
    /// at most one batch per shard is in flight, and resets wait their turn behind it.
    slot: tokio::sync::Mutex<Slot>,
    /// The in-flight deltas as readers see them. Held briefly, never across an `.await`.
    view: RwLock<View>,
    /// Keys whose stored value is not a count, with their held increments. Held briefly,
    /// never across an `.await`.
    quarantine: Mutex<KeyMap<Held>>,
    /// Why the shard's last batch attempt failed, until a batch is acknowledged.
    last_error: Mutex<Option<String>>,
}

/// Increments held for a key the store rejected (its value is not a count).
struct Held {
    /// Increments not written.
    delta: u64,
    /// Where the store keeps the key, and what it found there.
    stored_as: String,
    found: String,
    /// Its delta is out in a recheck batch (and this entry keeps its place in the
    /// buffer and refuses increments meanwhile).
    rechecking: bool,
}

impl Shard {
    /// The in-flight view, for reading. Plain data: a panic elsewhere cannot leave it
    /// inconsistent, so a poisoned lock is used as it is.
    fn view(&self) -> RwLockReadGuard<'_, View> {
        self.view.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The in-flight view, for changing it.
    fn view_mut(&self) -> RwLockWriteGuard<'_, View> {
        self.view.write().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Default)]
struct Slot {
    /// Sequence of the last batch built for this shard.
    last_seq: u64,
    /// When held increments were last offered to the store again.
    last_recheck: Option<Instant>,
    /// A batch built but not acknowledged (an attempt was cancelled): sent again, unchanged,
    /// before anything newer.
    unacked: Option<Batch>,
}

#[derive(Default)]
struct View {
    inflight_seq: u64,
    inflight: Option<KeyMap<u64>>,
    acked_seq: u64,
    /// Resets done on this shard: a read that saw this change while it was on the wire
    /// may hold a value from before the reset, and does not cache it.
    resets: u64,
}

impl View {
    /// The in-flight delta for `key` unless the store value (which includes batches up to
    /// `included_seq`) already has it.
    fn inflight_delta(&self, key: &str, included_seq: u64) -> u64 {
        match &self.inflight {
            Some(map) if self.inflight_seq > included_seq => map.get(key).copied().unwrap_or(0),
            _ => 0,
        }
    }
}

/// A cached stored value and the highest of our batch sequences it includes.
#[derive(Clone, Copy, Debug)]
struct CacheEntry {
    value: u64,
    seq: u64,
}

#[derive(Default)]
struct Stats {
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    batches_ok: AtomicU64,
    batches_failed: AtomicU64,
    keys_written: AtomicU64,
    increments_written: AtomicU64,
    task_panics: AtomicU64,
    largest_batch_keys: AtomicUsize,
    largest_batch_bytes: AtomicUsize,
    last_batch_at: Mutex<Option<SystemTime>>,
}

/// Takes a finished (or cancelled) shared read out of [`Inner::reads`].
struct ReadLeader<'a, S> {
    inner: &'a Inner<S>,
    key: &'a str,
}

impl<S> Drop for ReadLeader<'_, S> {
    fn drop(&mut self) {
        lock(&self.inner.reads).remove(self.key);
    }
}

/// What caused `error`, its chain of sources on one line (the error itself when it has
/// none): the store error that waiters of a failed shared read report as theirs.
fn cause_text(error: &Error) -> String {
    let causes: Vec<String> = chain(std::error::Error::source(error))
        .map(ToString::to_string)
        .collect();
    if causes.is_empty() {
        error.to_string()
    } else {
        causes.join(": ")
    }
}

/// `first` and each of its sources in turn.
fn chain<'a>(
    first: Option<&'a (dyn std::error::Error + 'static)>,
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(first, |error| error.source())
}

/// `error` and each of its sources, joined with `: `: what a store said, whole (its
/// outer message alone may only say which operation failed).
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    for cause in chain(error.source()) {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
    }
    text
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain maps behind, still consistent
    // for our purposes; keep counting rather than poisoning every later call.
    m.lock().unwrap_or_else(PoisonError::into_inner)
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
        let stripes = (0..STRIPES)
            .map(|_| Stripe {
                maps: Mutex::new((0..shard_count).map(|_| PendingTable::new()).collect()),
            })
            .collect();
        let shards = (0..shard_count)
            .map(|_| Shard {
                pending: AtomicUsize::new(0),
                buffered: AtomicUsize::new(0),
                bytes: AtomicUsize::new(0),
                wake: Arc::new(Notify::new()),
                slot: tokio::sync::Mutex::new(Slot::default()),
                view: RwLock::new(View::default()),
                quarantine: Mutex::new(KeyMap::with_hasher(hash)),
                last_error: Mutex::new(None),
            })
            .collect();
        let cache = moka::sync::Cache::builder()
            .max_capacity(config.cache_capacity)
            .time_to_live(config.cache_ttl)
            .build_with_hasher(hash);
        let metrics = CounterMetrics::new(&config.name);
        let shard_limit = config.max_pending_keys.div_ceil(shard_count);
        let shard_byte_limit = config.max_pending_bytes.limit().div_ceil(shard_count);
        let inner = Arc::new(Inner {
            store,
            config,
            instance: InstanceId::random(),
            hash,
            stripes,
            shards,
            buffered_keys: AtomicUsize::new(0),
            quarantined: AtomicUsize::new(0),
            shard_limit,
            shard_byte_limit,
            cache,
            reads: Mutex::new(KeyMap::with_hasher(hash)),
            stats: Stats::default(),
            metrics,
            closed: std::sync::atomic::AtomicBool::new(false),
            stop: tokio::sync::watch::Sender::new(false),
            tasks: Mutex::new(Vec::new()),
        });
        let tasks = (0..shard_count)
            .map(|shard| {
                let signals = FlusherSignals {
                    wake: Arc::clone(&inner.shards[shard].wake),
                    stop: inner.stop.subscribe(),
                };
                tokio::spawn(supervise_flusher(Arc::downgrade(&inner), shard, signals))
            })
            .collect();
        *lock(&inner.tasks) = tasks;
        Ok(Self { inner })
    }

    /// This counter's identity in the store's exactly-once bookkeeping.
    pub fn instance_id(&self) -> InstanceId {
        self.inner.instance
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
    /// `max_pending_bytes` (shared with the counters given the same [`PendingBytes`]); the
    /// same exception for a key in flight.
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
        let hash = inner.hash.hash_str(key);
        let mut maps = lock(&inner.stripe(hash).maps);
        let table = &mut maps[shard];
        if let Some((_, delta)) = table.find_mut(hash, |(k, _)| &**k == key) {
            *delta += n;
            return Ok(());
        }
        let state = &inner.shards[shard];
        let limit = inner.config.max_pending_keys;
        let bytes = &inner.config.max_pending_bytes;
        let cost = PendingBytes::cost(key.len());
        let buffered = inner.buffered_keys.fetch_add(1, Ordering::AcqRel);
        let shard_buffered = state.buffered.fetch_add(1, Ordering::AcqRel);
        let shard_bytes = state.bytes.load(Ordering::Acquire);
        // The bound that refuses it, if any: the whole buffer, this shard's share, or the
        // bytes of keys waiting.
        let refused = if buffered >= limit {
            Some(Error::Overloaded {
                pending: buffered,
                limit,
            })
        } else if shard_buffered >= inner.shard_limit {
            Some(Error::Overloaded {
                pending: shard_buffered,
                limit: inner.shard_limit,
            })
        } else if shard_bytes + cost > inner.shard_byte_limit {
            Some(Error::OverloadedBytes {
                pending_bytes: shard_bytes,
                limit: inner.shard_byte_limit,
            })
        } else {
            bytes
                .take(cost, false)
                .err()
                .map(|held| Error::OverloadedBytes {
                    pending_bytes: held,
                    limit: bytes.limit(),
                })
        };
        if let Some(error) = refused {
            inner.buffered_keys.fetch_sub(1, Ordering::AcqRel);
            state.buffered.fetch_sub(1, Ordering::AcqRel);
            drop(maps);
            if inner.in_flight(shard, key) {
                // Already waiting (in the batch on the wire, perhaps to a shard that is
                // down): it takes its increments past the bound, one more place at most.
                inner.record_over_bound(shard, hash, key, n);
                return Ok(());
            }
            inner.metrics.overloaded.increment(1);
            return Err(error);
        }
        state.bytes.fetch_add(cost, Ordering::AcqRel);
        inner.insert_pending(maps, shard, hash, key, n);
        Ok(())
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
        inner.stats.cache_misses.fetch_add(1, Ordering::Relaxed);
        inner.metrics.cache_misses.increment(1);
        let value = inner.read_shared(shard, key).await?;
        Ok(Count {
            value,
            served_via: ServedVia::Store(shard),
        })
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
        inner.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
        inner.metrics.cache_hits.increment(1);
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
        let mut slot = inner.shards[shard].slot.lock().await;
        // A batch left unacknowledged by a cancelled flush must land before the reset.
        if let Some(batch) = slot.unacked.take() {
            inner.send_until_acked(shard, &mut slot, batch).await;
        }
        inner
            .store
            .reset(shard, key)
            .await
            .map_err(|source| inner.store_error(shard, source))?;
        let mut view = inner.shards[shard].view_mut();
        if lock(&inner.shards[shard].quarantine).remove(key).is_some() {
            // Its held increments go, like any unwritten visit of a reset key.
            inner.quarantined.fetch_sub(1, Ordering::AcqRel);
            inner.metrics.quarantined_keys.decrement(1.0);
            inner.forget_keys(shard, 1, PendingBytes::cost(key.len()));
        }
        {
            let hash = inner.hash.hash_str(key);
            let mut maps = lock(&inner.stripe(hash).maps);
            if let Ok(entry) = maps[shard].find_entry(hash, |(k, _)| &**k == key) {
                entry.remove();
                inner.forget_keys(shard, 1, PendingBytes::cost(key.len()));
                inner.shards[shard].pending.fetch_sub(1, Ordering::AcqRel);
            }
        }
        inner.cache.insert(
            key.into(),
            CacheEntry {
                value: 0,
                seq: view.acked_seq,
            },
        );
        view.resets += 1;
        drop(view);
        drop(slot);
        Ok(())
    }

    /// Writes everything pending at the time of the call, waiting for in-flight batches and
    /// retrying failed ones (unchanged, with backoff) until the store takes them.
    ///
    /// Does not return while a shard with pending deltas stays down; wrap it in a timeout
    /// where that matters.
    pub async fn flush(&self) {
        let inner = &*self.inner;
        futures::future::join_all(
            (0..inner.shards.len())
                .map(|shard| inner.flush_shard(shard, inner.pending_keys(shard).max(1))),
        )
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
        let written_before = inner.stats.keys_written.load(Ordering::Relaxed);
        let _ = tokio::time::timeout(deadline, async {
            self.flush().await;
            // A value repaired since the last recheck takes its held increments now.
            for shard in 0..inner.shards.len() {
                inner.recheck_quarantine(shard, true).await;
            }
        })
        .await;
        inner.log_held();
        let keys_written = inner.stats.keys_written.load(Ordering::Relaxed) - written_before;
        let (keys_unwritten, increments_unwritten) = inner.unwritten();
        if keys_unwritten > 0 {
            tracing::error!(
                counter = %inner.config.name,
                keys_unwritten,
                increments_unwritten,
                "counter shut down with deltas the store did not take"
            );
        }
        ShutdownReport {
            keys_written,
            keys_unwritten,
            increments_unwritten,
        }
    }

    /// The counter's activity figures.
    pub fn snapshot(&self) -> Snapshot {
        // Let the cache settle its bookkeeping so `cache_size` is current (cheap, and
        // snapshots are taken by status pages, not per request).
        self.inner.cache.run_pending_tasks();
        let s = &self.inner.stats;
        Snapshot {
            cache_hits: s.cache_hits.load(Ordering::Relaxed),
            cache_misses: s.cache_misses.load(Ordering::Relaxed),
            cache_size: self.inner.cache.entry_count(),
            write_buffer_size: self.inner.buffered_keys.load(Ordering::Relaxed),
            last_batch_at: *lock(&s.last_batch_at),
            batches_ok: s.batches_ok.load(Ordering::Relaxed),
            batches_failed: s.batches_failed.load(Ordering::Relaxed),
            keys_written: s.keys_written.load(Ordering::Relaxed),
            increments_written: s.increments_written.load(Ordering::Relaxed),
            task_panics: s.task_panics.load(Ordering::Relaxed),
            write_buffer_bytes: self.inner.buffered_bytes(),
            quarantined_keys: self.inner.quarantined.load(Ordering::Relaxed),
            failing_shards: self
                .inner
                .shards
                .iter()
                .enumerate()
                .filter_map(|(shard, state)| {
                    let error = lock(&state.last_error).clone()?;
                    Some((self.inner.store.shard_name(shard).to_owned(), error))
                })
                .collect(),
            largest_batch_keys: s.largest_batch_keys.load(Ordering::Relaxed),
            largest_batch_bytes: s.largest_batch_bytes.load(Ordering::Relaxed),
        }
    }
}

impl<S: Store> Inner<S> {
    /// [`Error::Corrupt`] when `key`'s increments are held (its stored value is not a
    /// count). One atomic load while no key anywhere is held.
    fn refuse_if_held(&self, shard: ShardId, key: &str) -> Result<()> {
        if self.quarantined.load(Ordering::Acquire) == 0 {
            return Ok(());
        }
        match lock(&self.shards[shard].quarantine).get(key) {
            None => Ok(()),
            Some(held) => Err(Error::Corrupt {
                key: key.to_owned(),
                shard,
                name: self.store.shard_name(shard).to_owned(),
                stored_as: held.stored_as.clone(),
                found: held.found.clone(),
            }),
        }
    }

    /// Offers the shard's held increments to the store again as one batch of their own
    /// (its own sequence number, one in flight like any batch): those whose value was
    /// repaired are written, the others stay held. Only when `quarantine_recheck` has
    /// passed since the last time, unless `now`.
    async fn recheck_quarantine(&self, shard: ShardId, now: bool) {
        if self.quarantined.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut slot = self.shards[shard].slot.lock().await;
        let due = slot
            .last_recheck
            .is_none_or(|at| at.elapsed() >= self.config.quarantine_recheck);
        if !(now || due) {
            return;
        }
        if let Some(batch) = slot.unacked.take() {
            self.send_until_acked(shard, &mut slot, batch).await;
        }
        slot.last_recheck = Some(Instant::now());
        let deltas: Vec<(Arc<str>, u64)> = {
            let mut held = lock(&self.shards[shard].quarantine);
            held.iter_mut()
                .filter(|(_, held)| !held.rechecking && held.delta > 0)
                .map(|(key, held)| {
                    held.rechecking = true;
                    (key.clone(), std::mem::take(&mut held.delta))
                })
                .collect()
        };
        if deltas.is_empty() {
            return;
        }
        slot.last_seq += 1;
        let batch = Batch {
            id: BatchId {
                instance: self.instance,
                seq: slot.last_seq,
            },
            deltas,
        };
        self.send_until_acked(shard, &mut slot, batch).await;
    }

    /// Logs every held key with the increments it could not write (for an operator to
    /// repair by hand), at shutdown.
    fn log_held(&self) {
        for (shard, state) in self.shards.iter().enumerate() {
            for (key, held) in lock(&state.quarantine).iter() {
                tracing::error!(
                    counter = %self.config.name,
                    key = %key,
                    stored_as = %held.stored_as,
                    node = %self.store.shard_name(shard),
                    found = %held.found,
                    increments = held.delta,
                    "shut down with increments held for a key whose stored value is not a count: add them by hand once it is repaired"
                );
            }
        }
    }

    fn shard_of(&self, key: &str) -> ShardId {
        if self.shards.len() == 1 {
            return 0;
        }
        // Clamp so a misbehaving store cannot make us index out of bounds.
        self.store.shard_of(key).min(self.shards.len() - 1)
    }

    fn stripe(&self, hash: u64) -> &Stripe {
        // Middle bits pick the stripe: the tables inside use the low bits (bucket) and the
        // top seven (tag) of the same hash, which must stay varied within a stripe.
        &self.stripes[(hash >> 32) as usize % STRIPES]
    }

    fn pending_delta(&self, shard: ShardId, key: &str) -> u64 {
        let hash = self.hash.hash_str(key);
        let maps = lock(&self.stripe(hash).maps);
        maps[shard]
            .find(hash, |(k, _)| &**k == key)
            .map_or(0, |(_, delta)| *delta)
    }

    /// Inserts `key`, absent from its stripe's map for `shard` (held in `maps`), as a new
    /// pending key already counted in the buffered totals.
    fn insert_pending(
        &self,
        mut maps: MutexGuard<'_, Vec<PendingTable>>,
        shard: ShardId,
        hash: u64,
        key: &str,
        n: u64,
    ) {
        maps[shard].insert_unique(hash, (key.into(), n), |(k, _)| self.hash.hash_str(k));
        // Counted under the stripe lock, like the drain that subtracts it, so the shard's
        // count never runs below the keys actually in its maps.
        let state = &self.shards[shard];
        let pending = state.pending.fetch_add(1, Ordering::AcqRel) + 1;
        drop(maps);
        self.metrics.buffered_keys.increment(1.0);
        if pending == self.config.batch_size_limit {
            state.wake.notify_one();
        }
    }

    /// Whether `key` is in `shard`'s batch in flight.
    fn in_flight(&self, shard: ShardId, key: &str) -> bool {
        let view = self.shards[shard].view();
        view.inflight
            .as_ref()
            .is_some_and(|keys| keys.contains_key(key))
    }

    /// Records `n` for `key` whatever the bounds (a key in flight, see
    /// [`Counter::increment`]).
    fn record_over_bound(&self, shard: ShardId, hash: u64, key: &str, n: u64) {
        let mut maps = lock(&self.stripe(hash).maps);
        if let Some((_, delta)) = maps[shard].find_mut(hash, |(k, _)| &**k == key) {
            *delta += n;
            return;
        }
        self.buffered_keys.fetch_add(1, Ordering::AcqRel);
        self.shards[shard].buffered.fetch_add(1, Ordering::AcqRel);
        let cost = PendingBytes::cost(key.len());
        let _ = self.config.max_pending_bytes.take(cost, true);
        self.shards[shard].bytes.fetch_add(cost, Ordering::AcqRel);
        self.insert_pending(maps, shard, hash, key, n);
    }

    /// Gives back the places (and `bytes`, see [`PendingBytes`]) of `keys` keys that are
    /// written, dropped by a reset, or no longer held.
    fn forget_keys(&self, shard: ShardId, keys: usize, bytes: usize) {
        self.config.max_pending_bytes.give_back(bytes);
        self.shards[shard].bytes.fetch_sub(bytes, Ordering::AcqRel);
        self.buffered_keys.fetch_sub(keys, Ordering::AcqRel);
        self.shards[shard]
            .buffered
            .fetch_sub(keys, Ordering::AcqRel);
        self.metrics.buffered_keys.decrement(keys as f64);
    }

    fn store_error(&self, shard: ShardId, source: crate::store::StoreError) -> Error {
        Error::Store {
            shard,
            name: self.store.shard_name(shard).to_owned(),
            source,
        }
    }

    /// The count from the cache, or `None` on a miss.
    fn cached_count(&self, shard: ShardId, key: &str) -> Option<u64> {
        let view = self.shards[shard].view();
        let entry = self.cache.get(key)?;
        Some(entry.value + view.inflight_delta(key, entry.seq) + self.pending_delta(shard, key))
    }

    /// The count of a key that missed the cache: read through, or, when a read of the key
    /// is already in progress, wait for it and answer from the cache it fills, as a hit
    /// would (its own pending and in-flight deltas included). A failed read fails its
    /// waiters with the same error; a cancelled one lets the first waiter read instead.
    async fn read_shared(&self, shard: ShardId, key: &str) -> Result<u64> {
        loop {
            let joined = {
                let mut reads = lock(&self.reads);
                match reads.get(key) {
                    Some(running) => Ok(running.clone()),
                    None => {
                        let (done, running) = tokio::sync::watch::channel(None);
                        reads.insert(key.into(), running);
                        Err(done)
                    }
                }
            };
            let mut running = match joined {
                Ok(running) => running,
                Err(done) => {
                    let _leave = ReadLeader { inner: self, key };
                    let result = self.read_through(shard, key).await;
                    done.send_replace(Some(match &result {
                        Ok(_) => Ok(()),
                        Err(e) => Err(cause_text(e).into()),
                    }));
                    return result;
                }
            };
            let outcome = match running.wait_for(Option::is_some).await {
                Ok(outcome) => outcome.clone(),
                // The reading call was cancelled: read again, perhaps as the reader.
                Err(_) => continue,
            };
            return match outcome {
                Some(Err(message)) => Err(self.store_error(shard, message.to_string().into())),
                // Evicted already (or never cached): read it ourselves.
                _ => match self.cached_count(shard, key) {
                    Some(value) => Ok(value),
                    None => self.read_through(shard, key).await,
                },
            };
        }
    }

    /// Reads the stored value, caches it and adds what the store does not include yet.
    async fn read_through(&self, shard: ShardId, key: &str) -> Result<u64> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let resets = self.shards[shard].view().resets;
            let read = self
                .store
                .get(shard, self.instance, &[key])
                .await
                .map_err(|source| self.store_error(shard, source))?;
            let stored = read.values.first().copied().unwrap_or(0);
            let view = self.shards[shard].view();
            if view.acked_seq > read.applied_seq {
                if attempt < READ_ATTEMPTS {
                    // A batch of ours was acknowledged after the store answered: that
                    // answer misses it and it is no longer in flight. Ask again.
                    continue;
                }
                // Batches keep landing under our reads: give up on a consistent read and
                // answer without caching. A batch acknowledged since the read cached the
                // totals of its keys; when it held this key, that count is the fresher.
                let fresher = self
                    .cache
                    .get(key)
                    .filter(|entry| entry.seq > read.applied_seq);
                let (value, included_seq) =
                    fresher.map_or((stored, read.applied_seq), |entry| (entry.value, entry.seq));
                return Ok(value
                    + view.inflight_delta(key, included_seq)
                    + self.pending_delta(shard, key));
            }
            // A reset during the read: answer (the read was concurrent with it, so either
            // side is right), but do not cache what may be the value before the reset
            // over the reset's zero.
            if view.resets == resets {
                self.cache.insert(
                    key.into(),
                    CacheEntry {
                        value: stored,
                        seq: read.applied_seq,
                    },
                );
            }
            return Ok(stored
                + view.inflight_delta(key, read.applied_seq)
                + self.pending_delta(shard, key));
        }
    }

    /// Sends the shard's unacknowledged batch, then pending deltas, each batch until the
    /// store acknowledges it: batches until at least `keys` keys went out (or nothing is
    /// left), then more while a full batch is waiting, so a backlog drains batch after
    /// batch. The slot is taken anew for each batch, so a reset waits behind one batch, not
    /// a whole backlog.
    async fn flush_shard(&self, shard: ShardId, keys: usize) {
        let mut sent = 0;
        loop {
            let mut slot = self.shards[shard].slot.lock().await;
            if let Some(batch) = slot.unacked.take() {
                self.send_until_acked(shard, &mut slot, batch).await;
            }
            let more = sent < keys || self.full_batch_waiting(shard);
            let Some(batch) = more.then(|| self.take_pending(shard, &mut slot)).flatten() else {
                return;
            };
            sent += batch.deltas.len();
            self.send_until_acked(shard, &mut slot, batch).await;
        }
    }

    /// Whether `shard` has at least `batch_size_limit` keys pending: a backlog.
    fn full_batch_waiting(&self, shard: ShardId) -> bool {
        self.pending_keys(shard) >= self.config.batch_size_limit
    }

    /// Keys `shard` has pending (not in flight).
    fn pending_keys(&self, shard: ShardId) -> usize {
        self.shards[shard].pending.load(Ordering::Acquire)
    }

    /// Moves up to `batch_size_limit` keys and `batch_max_bytes` bytes of keys (at least one
    /// key) of the shard's pending deltas into a new in-flight batch. Stripes are visited
    /// from a point that moves with every batch, so under a backlog no key waits behind
    /// others for long.
    fn take_pending(&self, shard: ShardId, slot: &mut Slot) -> Option<Batch> {
        let state = &self.shards[shard];
        let pending = state.pending.load(Ordering::Acquire);
        if pending == 0 {
            return None;
        }
        let mut view = state.view_mut();
        let max_keys = self.config.batch_size_limit;
        let mut taken = KeyMap::with_capacity_and_hasher(pending.min(max_keys), self.hash);
        let max_bytes = self.config.batch_max_bytes;
        let mut bytes = 0;
        let start = (slot.last_seq as usize).wrapping_mul(7) % STRIPES;
        for i in 0..STRIPES {
            if taken.len() >= max_keys || bytes >= max_bytes {
                break;
            }
            let mut maps = lock(&self.stripes[(start + i) % STRIPES].maps);
            let table = &mut maps[shard];
            let table_bytes: usize = table.iter().map(|(key, _)| key.len()).sum();
            let moved = if taken.len() + table.len() <= max_keys && bytes + table_bytes <= max_bytes
            {
                // The common case: the whole table fits (and its memory goes with it).
                bytes += table_bytes;
                let table = std::mem::take(table);
                let moved = table.len();
                taken.extend(table);
                moved
            } else {
                let mut count = taken.len();
                let part: Vec<(Arc<str>, u64)> = table
                    .extract_if(|(key, _)| {
                        let fits =
                            count < max_keys && (count == 0 || bytes + key.len() <= max_bytes);
                        if fits {
                            count += 1;
                            bytes += key.len();
                        }
                        fits
                    })
                    .collect();
                let moved = part.len();
                taken.extend(part);
                moved
            };
            state.pending.fetch_sub(moved, Ordering::AcqRel);
        }
        if taken.is_empty() {
            return None;
        }
        slot.last_seq += 1;
        let batch = Batch {
            id: BatchId {
                instance: self.instance,
                seq: slot.last_seq,
            },
            deltas: taken.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        };
        view.inflight_seq = slot.last_seq;
        view.inflight = Some(taken);
        Some(batch)
    }

    /// Applies `batch`, retrying it unchanged with capped, jittered exponential backoff
    /// until the store acknowledges it. If this future is dropped mid-way, the guard puts
    /// the batch back in `slot.unacked` so the next send repeats the same id.
    async fn send_until_acked(&self, shard: ShardId, slot: &mut Slot, batch: Batch) {
        let mut guard = UnackedGuard {
            slot,
            batch: Some(batch),
        };
        let mut backoff = self.config.retry_backoff_min;
        loop {
            let Some(batch) = guard.batch.as_ref() else {
                return;
            };
            let started = Instant::now();
            let span = tracing::debug_span!(
                "apply_batch",
                counter = %self.config.name,
                shard,
                seq = batch.id.seq,
                batch_len = batch.deltas.len()
            );
            // Boxed: the store's future nests inside every caller's (flusher, flush,
            // recheck, shutdown, and the server's whole run), and unboxed the chain is deep
            // enough to pass rustc's layout depth limit. One allocation per batch.
            let apply: std::pin::Pin<Box<dyn Future<Output = _> + Send + '_>> =
                Box::pin(self.store.apply_checked(shard, batch));
            let result = tracing::Instrument::instrument(apply, span).await;
            self.metrics
                .batch_seconds
                .record(started.elapsed().as_secs_f64());
            match result {
                Ok(applied)
                    if applied.totals.len() == batch.deltas.len()
                        && applied
                            .rejected
                            .iter()
                            .all(|r| r.index < batch.deltas.len()) =>
                {
                    if let Some(batch) = guard.batch.take() {
                        self.acknowledge(shard, &batch, &applied);
                    }
                    return;
                }
                Ok(applied) => {
                    // Retrying is safe (the id makes it idempotent) and the next answer may
                    // be whole; a store that keeps doing this is broken and says so here.
                    self.batch_failed(
                        shard,
                        &format!(
                            "store answered {} totals for {} keys",
                            applied.totals.len(),
                            batch.deltas.len()
                        ),
                    );
                }
                Err(e) => self.batch_failed(shard, &error_chain(&*e)),
            }
            let jittered = backoff / 2 + backoff.mul_f64(rand::random::<f64>() / 2.0);
            self.wait_to_retry(shard, jittered).await;
            backoff = (backoff * 2).min(self.config.retry_backoff_max);
        }
    }

    /// Waits `pause` before a failed batch is sent again, or less: when the shard is down
    /// (as the store says) and comes back up during the pause, until then. A store that is
    /// up and failing waits the whole pause.
    async fn wait_to_retry(&self, shard: ShardId, pause: Duration) {
        let until = Instant::now() + pause;
        if self.store.shard_up(shard) {
            tokio::time::sleep_until(until).await;
            return;
        }
        while Instant::now() < until {
            tokio::time::sleep_until(until.min(Instant::now() + UP_POLL)).await;
            if self.store.shard_up(shard) {
                return;
            }
        }
    }

    fn batch_failed(&self, shard: ShardId, message: &str) {
        *lock(&self.shards[shard].last_error) = Some(message.to_owned());
        self.stats.batches_failed.fetch_add(1, Ordering::Relaxed);
        self.metrics.batches_failed.increment(1);
        tracing::warn!(
            counter = %self.config.name,
            shard,
            node = %self.store.shard_name(shard),
            error.message = %message,
            "batch write failed; retrying the same batch"
        );
    }

    /// Makes an applied batch visible as stored: cache the totals, clear the in-flight set.
    /// Keys the store rejected (their value is not a count) keep their increments, held in
    /// the shard's quarantine; a held key the store took (its value was repaired) is
    /// released.
    fn acknowledge(&self, shard: ShardId, batch: &Batch, applied: &Applied) {
        let state = &self.shards[shard];
        let mut view = state.view_mut();
        // Each key's rejection, if any; nothing allocated in the common case of none.
        let mut rejected_at = Vec::new();
        if !applied.rejected.is_empty() {
            rejected_at = vec![None; batch.deltas.len()];
            for key in &applied.rejected {
                rejected_at[key.index] = Some(key);
            }
        }
        let rejected = (0..batch.deltas.len()).map(|i| rejected_at.get(i).copied().flatten());
        // Buffer places this batch gives back: one per key written, one per rejected key
        // already held under a place of its own.
        let (mut freed, mut freed_bytes) = (0, 0);
        let (mut keys_written, mut increments) = (0_u64, 0_u64);
        {
            let mut held = lock(&state.quarantine);
            for (((key, delta), total), rejected) in
                batch.deltas.iter().zip(&applied.totals).zip(rejected)
            {
                match (rejected, held.get_mut(key)) {
                    (Some(why), Some(entry)) => {
                        // Still bad: held again (a recheck), or more for a held key.
                        if !entry.rechecking {
                            freed += 1;
                            freed_bytes += PendingBytes::cost(key.len());
                        }
                        entry.delta += delta;
                        entry.rechecking = false;
                        entry.found.clone_from(&why.found);
                    }
                    (Some(why), None) => {
                        tracing::error!(
                            counter = %self.config.name,
                            key = %key,
                            stored_as = %why.stored_as,
                            node = %self.store.shard_name(shard),
                            found = %why.found,
                            increments = delta,
                            "the stored value of a key is not a count: its increments are held until it is repaired or the key is reset"
                        );
                        held.insert(
                            key.clone(),
                            Held {
                                delta: *delta,
                                stored_as: why.stored_as.clone(),
                                found: why.found.clone(),
                                rechecking: false,
                            },
                        );
                        self.quarantined.fetch_add(1, Ordering::AcqRel);
                        self.metrics.quarantined_keys.increment(1.0);
                    }
                    (None, entry) => {
                        if entry.is_some_and(|e| e.rechecking) {
                            held.remove(key);
                            self.quarantined.fetch_sub(1, Ordering::AcqRel);
                            self.metrics.quarantined_keys.decrement(1.0);
                            tracing::info!(
                                counter = %self.config.name,
                                key = %key,
                                increments = delta,
                                "a repaired key took its held increments"
                            );
                        }
                        freed += 1;
                        freed_bytes += PendingBytes::cost(key.len());
                        keys_written += 1;
                        increments += delta;
                        self.cache.insert(
                            key.clone(),
                            CacheEntry {
                                value: *total,
                                seq: batch.id.seq,
                            },
                        );
                    }
                }
            }
        }
        view.inflight = None;
        view.acked_seq = batch.id.seq;
        drop(view);
        *lock(&state.last_error) = None;
        self.forget_keys(shard, freed, freed_bytes);
        let s = &self.stats;
        s.batches_ok.fetch_add(1, Ordering::Relaxed);
        s.keys_written.fetch_add(keys_written, Ordering::Relaxed);
        s.increments_written
            .fetch_add(increments, Ordering::Relaxed);
        let bytes: usize = batch.deltas.iter().map(|(key, _)| key.len()).sum();
        let most_keys = s
            .largest_batch_keys
            .fetch_max(batch.deltas.len(), Ordering::Relaxed)
            .max(batch.deltas.len());
        let most_bytes = s
            .largest_batch_bytes
            .fetch_max(bytes, Ordering::Relaxed)
            .max(bytes);
        self.metrics.largest_batch_keys.set(most_keys as f64);
        self.metrics.largest_batch_bytes.set(most_bytes as f64);
        *lock(&s.last_batch_at) = Some(SystemTime::now());
        self.metrics.batches_ok.increment(1);
        self.metrics.keys_written.increment(keys_written);
        self.metrics.increments_written.increment(increments);
    }

    /// Keys and increment sum still pending or in flight.
    fn unwritten(&self) -> (usize, u64) {
        let mut keys = 0;
        let mut sum = 0;
        for shard in self.shards.iter() {
            let view = shard.view();
            if let Some(map) = &view.inflight {
                keys += map.len();
                sum += map.values().sum::<u64>();
            }
            let held = lock(&shard.quarantine);
            keys += held.len();
            sum += held.values().map(|held| held.delta).sum::<u64>();
        }
        for stripe in self.stripes.iter() {
            for table in lock(&stripe.maps).iter() {
                keys += table.len();
                sum += table.iter().map(|(_, delta)| delta).sum::<u64>();
            }
        }
        (keys, sum)
    }
}

/// Puts a batch back into the slot if its send is cancelled before the store acknowledges.
struct UnackedGuard<'a> {
    slot: &'a mut Slot,
    batch: Option<Batch>,
}

impl Drop for UnackedGuard<'_> {
    fn drop(&mut self) {
        if let Some(batch) = self.batch.take() {
            self.slot.unacked = Some(batch);
        }
    }
}

/// What a flusher waits on, held apart from the counter so a waiting flusher keeps it
/// alive no longer than its handles do.
#[derive(Clone)]
struct FlusherSignals {
    wake: Arc<Notify>,
    stop: tokio::sync::watch::Receiver<bool>,
}

/// Runs the shard's flusher and starts it again whenever it panics (a store whose `apply`
/// panics, say), so a panic never stops a shard's writes silently: it is logged with its
/// message and counted. The shard's state lives in the counter, not the task: the slot
/// lock is released by the unwinding, and a batch cut off mid-send is kept as unacked and
/// sent again, same id, by the restarted flusher.
async fn supervise_flusher<S: Store>(
    inner: std::sync::Weak<Inner<S>>,
    shard: ShardId,
    signals: FlusherSignals,
) {
    crate::task::restart_on_panic(
        || run_flusher(inner.clone(), shard, signals.clone()),
        |message| {
            let Some(inner) = inner.upgrade() else { return };
            inner.stats.task_panics.fetch_add(1, Ordering::Relaxed);
            inner.metrics.flusher_panics.increment(1);
            tracing::error!(
                counter = %inner.config.name,
                shard,
                node = %inner.store.shard_name(shard),
                panic.message = %message,
                "a batch flusher panicked; restarted it"
            );
        },
    )
    .await;
}

/// The per-shard flusher: sends the shard's batch every `batch_interval`, or sooner when
/// the size limit is reached, until told to stop or the counter is dropped.
async fn run_flusher<S: Store>(
    inner: std::sync::Weak<Inner<S>>,
    shard: ShardId,
    mut signals: FlusherSignals,
) {
    loop {
        // Shorter while increments are held, so a repaired value takes them soon.
        let Some(wait) = inner.upgrade().map(|inner| {
            let config = &inner.config;
            if inner.quarantined.load(Ordering::Acquire) > 0 {
                config.batch_interval.min(config.quarantine_recheck)
            } else {
                config.batch_interval
            }
        }) else {
            return;
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = signals.wake.notified() => {}
            _ = signals.stop.wait_for(|stop| *stop) => return,
        }
        let Some(inner) = inner.upgrade() else { return };
        inner.flush_shard(shard, 1).await;
        inner.recheck_quarantine(shard, false).await;
    }
}
