//! The write buffer: this instance's pending deltas, and the bounds on what waits to be
//! written.
//!
//! Increments land in [`STRIPES`] lock stripes, each holding tables per store shard, so
//! draining one shard never touches another shard's keys. Each thread records into a
//! stripe of its own (picked once per thread, round robin), so threads incrementing at once
//! keep to their own locks and cache lines instead of taking every stripe's line from one
//! another. A key's pending delta may therefore be spread over several stripes: its *home*
//! stripe (picked by the key's hash) holds its home entry, which marks it pending, and any
//! other stripe a thread recorded it in holds an *extra* delta of it. A key waits from its
//! first increment until its batch is acknowledged (or the key is reset, or released from
//! its quarantine), and the buffer counts every key waiting, wherever it is: pending here,
//! in its shard's batch in flight, or held.
//!
//! # Invariants
//!
//! - A key is pending on a shard exactly when its home stripe's table for that shard holds
//!   its home entry. Extras of a key exist only while its home entry does, at most one per
//!   stripe, and the home entry's `extras` mask names exactly the stripes holding one. An
//!   extra is inserted with both its stripe and the home stripe locked; a drain or a reset
//!   removes a key's home entry and every extra of it with all stripes locked, so no one
//!   sees a key half removed, and an extra never outlives its home entry.
//! - A key's pending delta is its home delta plus its extras. Each extra is a cell written
//!   only under its stripe's lock, and the home entry holds a handle to each, so a read
//!   sums them with the home stripe locked alone. It does so under its shard's `in_flight`
//!   read lock, and drains and resets hold that lock for writing, so while a read sums,
//!   deltas only grow (an increment racing with the read may or may not be seen; one that
//!   returned before the read began is). An extra out of its table (taken by a drain) is
//!   found by no increment, so its cell holds its final delta.
//! - A waiting key holds one *place*: one of `max_pending_keys`, one of its shard's share
//!   of them, and [`PendingBytes::cost`] of its key in bytes, of the shard's share of
//!   `max_pending_bytes` and of the budget shared with other counters. A place is taken
//!   when the home entry is inserted (taken back at once if a bound refuses it); extras take
//!   none (they share the key's text; their table slots and cells, about 50 bytes per
//!   thread that recorded the key, are not counted). It is given back once, by `forget_keys`, when the key is
//!   written, dropped by a reset or released from its quarantine; the bytes of a counter
//!   dropped with keys waiting go back with it.
//! - A key already waiting is never refused: pending, it only adds to a delta of its; in
//!   flight, it takes one more place past the bounds.
//! - A shard's `pending` count (its home entries) changes under the lock of the stripe
//!   holding the entry it counts (when one is inserted, drained into a batch or dropped by a
//!   reset), so it never runs below the keys in its tables.
//! - Whoever holds several stripes takes them in index order.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::config::{CounterConfig, PendingBytes};
use crate::error::{Error, Result};
use crate::store::{ShardId, Store};
use crate::sync::lock;

use super::{Inner, KeyMap};

/// Number of lock stripes of the write buffer. A power of two well above the core count of
/// the machines tally runs on, so threads rarely share one; at most the bits of a [`Mask`].
const STRIPES: usize = 64;

/// A set of stripes, bit `i` for stripe `i`.
type Mask = u64;

const _: () = assert!(STRIPES <= Mask::BITS as usize);

/// Hands out stripes to threads, round robin, so threads started together get different
/// ones.
static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// The stripe this thread records its increments in.
    static THREAD_STRIPE: usize = NEXT_STRIPE.fetch_add(1, Ordering::Relaxed) % STRIPES;
}

/// The stripe the calling thread records in (stripe 0 while the thread is being torn down).
fn thread_stripe() -> usize {
    THREAD_STRIPE.try_with(|stripe| *stripe).unwrap_or(0)
}

/// An extra delta: written under the lock of the stripe holding it, read (by a read of
/// its key) under its home stripe's lock only.
type Cell = Arc<AtomicU64>;

/// A pending key's entry in its home stripe: part of its delta, and where the rest is.
struct Home {
    key: Arc<str>,
    delta: u64,
    /// The stripes holding an extra delta of the key.
    extras: Mask,
    /// Those extra deltas, so a read sums them without locking their stripes.
    cells: Vec<Cell>,
}

/// A shard's pending deltas within one stripe: the home entries of keys whose home this
/// stripe is, and the extra deltas recorded here of keys whose home is elsewhere.
/// `HashTable`s rather than `HashMap`s so the hash computed once per increment (which also
/// picks the home stripe) is reused for the slot.
#[derive(Default)]
struct Tables {
    home: hashbrown::HashTable<Home>,
    extra: hashbrown::HashTable<(Arc<str>, Cell)>,
}

impl Tables {
    /// Adds `n` to the delta of `key` (of hash `hash`) recorded in this stripe, its home
    /// delta when this is its home stripe (`home`), its extra otherwise; false when it has
    /// none here.
    fn add(&mut self, home: bool, hash: u64, key: &str, n: u64) -> bool {
        if home {
            let Some(entry) = self.home_mut(hash, key) else {
                return false;
            };
            entry.delta += n;
        } else {
            let Some((_, cell)) = self.extra.find(hash, |(k, _)| &**k == key) else {
                return false;
            };
            // Every writer of a cell holds this stripe's lock, so a load and a store add
            // without losing one; readers only load.
            cell.store(cell.load(Ordering::Relaxed) + n, Ordering::Relaxed);
        }
        true
    }

    /// Whether `key` has a delta recorded in this stripe (see [`Tables::add`]).
    fn holds(&self, home: bool, hash: u64, key: &str) -> bool {
        if home {
            self.home.find(hash, |entry| &*entry.key == key).is_some()
        } else {
            self.extra.find(hash, |(k, _)| &**k == key).is_some()
        }
    }

    /// The home entry of `key`, if this stripe holds it.
    fn home_mut(&mut self, hash: u64, key: &str) -> Option<&mut Home> {
        self.home.find_mut(hash, |entry| &*entry.key == key)
    }
}

/// A locked stripe: its tables, one per shard.
type Locked<'a> = MutexGuard<'a, Vec<Tables>>;

/// The pending deltas of every shard, and the counts the bounds are checked against.
pub(super) struct Buffer {
    stripes: Box<[Stripe]>,
    shards: Box<[ShardCounts]>,
    /// Distinct keys waiting, over all shards: checked against `max_pending_keys`.
    keys: AtomicUsize,
    /// Most keys one shard may have waiting: its share of `max_pending_keys` (rounded up).
    /// A shard whose store is down cannot drain, so without a share of its own it would
    /// fill the whole bound and every other shard's new keys would be refused too,
    /// although their stores take batches.
    shard_limit: usize,
    /// Most bytes of keys one shard may have waiting: its share of `max_pending_bytes`, so
    /// a shard whose store is down cannot take the bytes of the others either.
    shard_byte_limit: usize,
}

/// One lock stripe of the write buffer: tables per store shard, so draining one shard
/// never touches another's keys.
///
/// A `std::sync::Mutex`, not an async one: it is held for a few map operations, never
/// across an `.await`. Aligned to keep neighbouring stripes off one cache line.
#[repr(align(128))]
struct Stripe {
    tables: Mutex<Vec<Tables>>,
}

/// A shard's part of the buffer's counts.
#[derive(Default)]
struct ShardCounts {
    /// Distinct keys pending (not in flight) for this shard, its home entries: the
    /// batch-size trigger.
    pending: AtomicUsize,
    /// Distinct keys waiting for this shard: checked against `shard_limit`.
    buffered: AtomicUsize,
    /// What those keys cost in bytes: checked against `shard_byte_limit`.
    bytes: AtomicUsize,
}

impl Buffer {
    /// An empty buffer for `shard_count` shards under `config`'s bounds.
    pub(super) fn new(shard_count: usize, config: &CounterConfig) -> Self {
        Self {
            stripes: (0..STRIPES)
                .map(|_| Stripe {
                    tables: Mutex::new((0..shard_count).map(|_| Tables::default()).collect()),
                })
                .collect(),
            shards: (0..shard_count).map(|_| ShardCounts::default()).collect(),
            keys: AtomicUsize::new(0),
            shard_limit: config.max_pending_keys.div_ceil(shard_count),
            shard_byte_limit: config.max_pending_bytes.limit().div_ceil(shard_count),
        }
    }

    /// Distinct keys waiting, over all shards.
    pub(super) fn keys(&self) -> usize {
        self.keys.load(Ordering::Relaxed)
    }

    /// What the keys waiting cost in bytes: the sum of the shards'.
    pub(super) fn bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.bytes.load(Ordering::Acquire))
            .sum()
    }

    /// Keys waiting for `shard`: pending, in flight or held.
    pub(super) fn waiting_keys(&self, shard: ShardId) -> usize {
        self.shards[shard].buffered.load(Ordering::Relaxed)
    }

    /// Keys `shard` has pending (not in flight).
    pub(super) fn pending_keys(&self, shard: ShardId) -> usize {
        self.shards[shard].pending.load(Ordering::Acquire)
    }

    /// Keys pending in every shard, and the sum of their deltas.
    pub(super) fn pending_totals(&self) -> super::Unwritten {
        let mut totals = super::Unwritten::default();
        let stripes = self.lock_all();
        for tables in stripes.iter().flat_map(|stripe| stripe.iter()) {
            for entry in tables.home.iter() {
                totals.add(&entry.key, entry.delta);
            }
            for (key, cell) in tables.extra.iter() {
                totals.add_delta(key, cell.load(Ordering::Relaxed));
            }
        }
        totals
    }

    /// Every stripe, locked in index order: for moving or summing a key's deltas wherever
    /// they are.
    fn lock_all(&self) -> Vec<Locked<'_>> {
        self.stripes
            .iter()
            .map(|stripe| lock(&stripe.tables))
            .collect()
    }

    /// Locks the stripes `indices`, each once, in index order (see the invariants). The
    /// guards come sorted by stripe index.
    fn lock_stripes(&self, mut indices: Vec<usize>) -> Vec<(usize, Locked<'_>)> {
        indices.sort_unstable();
        indices.dedup();
        indices
            .into_iter()
            .map(|i| (i, lock(&self.stripes[i].tables)))
            .collect()
    }
}

/// The home stripe of a key's hash. Middle bits pick it: the tables inside use the low bits
/// (bucket) and the top seven (tag) of the same hash, which must stay varied within a
/// stripe.
fn stripe_index(hash: u64) -> usize {
    (hash >> 32) as usize % STRIPES
}

/// The stripes of `mask`, lowest first.
fn stripes_of(mut mask: Mask) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        if mask == 0 {
            return None;
        }
        let stripe = mask.trailing_zeros() as usize;
        mask &= mask - 1;
        Some(stripe)
    })
}

/// Where the guard of stripe `index` is in `stripes` (from [`Buffer::lock_stripes`]).
fn position(stripes: &[(usize, Locked<'_>)], index: usize) -> usize {
    stripes
        .binary_search_by_key(&index, |(i, _)| *i)
        .unwrap_or_default()
}

impl<S: Store> Inner<S> {
    /// Records `n` for `key` on `shard` (see [`super::Counter::increment`] for the bounds
    /// and the errors).
    pub(super) fn record(&self, shard: ShardId, key: &str, n: u64) -> Result<()> {
        let hash = self.hash.hash_str(key);
        let own = thread_stripe();
        {
            // The common case: the key has a delta in this thread's stripe already.
            let mut tables = lock(&self.buffer.stripes[own].tables);
            if tables[shard].add(stripe_index(hash) == own, hash, key, n) {
                return Ok(());
            }
        }
        self.record_hashed(&[(shard, key, n)], &[hash])
    }

    /// Records every `(shard, key, n)` of `entries`, or none of them: when a bound refuses
    /// a key that is not waiting yet, the places taken for the others are given back and
    /// that bound's error is returned, with nothing recorded. The bounds are those of
    /// [`Inner::record`], key by key (a key pending only adds to a delta of its; a key in
    /// flight takes a place past the bounds).
    ///
    /// Each key should be listed once: a key listed twice takes two places for the check.
    pub(super) fn record_all(&self, entries: &[(ShardId, &str, u64)]) -> Result<()> {
        let hashes: Vec<u64> = entries
            .iter()
            .map(|(_, key, _)| self.hash.hash_str(key))
            .collect();
        let own = thread_stripe();
        {
            // The common case: every key has a delta in this thread's stripe already. All
            // are found before any is added to, under the one lock, so it is all or none.
            let mut tables = lock(&self.buffer.stripes[own].tables);
            let found = entries
                .iter()
                .zip(&hashes)
                .all(|(&(shard, key, _), &hash)| {
                    tables[shard].holds(stripe_index(hash) == own, hash, key)
                });
            if found {
                for (&(shard, key, n), &hash) in entries.iter().zip(&hashes) {
                    tables[shard].add(stripe_index(hash) == own, hash, key, n);
                }
                return Ok(());
            }
        }
        self.record_hashed(entries, &hashes)
    }

    /// [`Inner::record_all`] of `entries` whose keys hash to `hashes`.
    ///
    /// Tried first as if no key were in flight, which needs no look at the batches in
    /// flight (their lock is shared by every thread); only when a bound refuses a key are
    /// the keys in flight looked up, and the entries tried again with those forced past
    /// the bounds. A key that leaves the flight in between takes its place past the bounds,
    /// as if still in it.
    fn record_hashed(&self, entries: &[(ShardId, &str, u64)], hashes: &[u64]) -> Result<()> {
        if self.try_record(entries, hashes, None).is_ok() {
            return Ok(());
        }
        // Read outside the stripe locks: a flusher holds its shard's in-flight lock while
        // it locks stripes.
        let in_flight: Vec<bool> = entries
            .iter()
            .map(|(shard, key, _)| self.is_in_flight(*shard, key))
            .collect();
        // Tried again even when none is in flight now: a key may have left the flight (its
        // batch acknowledged, its place given back) since the first attempt, and the old
        // arrangement, which read the flight first, took such a key.
        let result = self.try_record(entries, hashes, Some(&in_flight));
        if result.is_err() {
            self.metrics.increment_refused();
        }
        result
    }

    /// One attempt of [`Inner::record_hashed`]: the keys' home stripes and this thread's
    /// stripe stay locked from the check to the last insert, so a key found pending is
    /// still pending when its delta is added. `forced` says which keys take their place
    /// past the bounds (none when `None`).
    fn try_record(
        &self,
        entries: &[(ShardId, &str, u64)],
        hashes: &[u64],
        forced: Option<&[bool]>,
    ) -> Result<()> {
        let own = thread_stripe();
        let mut stripes = self.buffer.lock_stripes(
            hashes
                .iter()
                .map(|&hash| stripe_index(hash))
                .chain([own])
                .collect(),
        );
        let own_at = position(&stripes, own);
        // A place for every key not pending (no home entry); the first refusal undoes
        // them all.
        let mut placed = vec![false; entries.len()];
        for (i, (&(shard, key, _), &hash)) in entries.iter().zip(hashes).enumerate() {
            let home_at = position(&stripes, stripe_index(hash));
            if stripes[home_at].1[shard].home_mut(hash, key).is_some() {
                continue;
            }
            let force = forced.is_some_and(|forced| forced[i]);
            if let Err(refused) = self.take_place(shard, key.len(), force) {
                for (j, &(shard, key, _)) in entries.iter().enumerate() {
                    if placed[j] {
                        self.give_back(shard, 1, PendingBytes::cost(key.len()));
                    }
                }
                return Err(refused);
            }
            placed[i] = true;
        }
        let mut full = Vec::new();
        for (i, (&(shard, key, n), &hash)) in entries.iter().zip(hashes).enumerate() {
            let home = stripe_index(hash);
            let home_at = position(&stripes, home);
            if stripes[own_at].1[shard].add(home == own, hash, key, n) {
                // Recorded in this thread's stripe already.
            } else if let Some(entry) = stripes[home_at].1[shard].home_mut(hash, key) {
                // Pending, with no delta in this thread's stripe yet: one goes there, so
                // the thread's next increments of the key stay in its own stripe.
                let cell = Arc::new(AtomicU64::new(n));
                entry.extras |= 1 << own;
                entry.cells.push(Arc::clone(&cell));
                let key = Arc::clone(&entry.key);
                stripes[own_at].1[shard]
                    .extra
                    .insert_unique(hash, (key, cell), |(k, _)| self.hash.hash_str(k));
            } else {
                // Not pending: its home entry takes the place taken above. A home entry of
                // delta 0 with the delta in this thread's stripe, for the same reason.
                let (delta, extras) = if home == own { (n, 0) } else { (0, 1 << own) };
                let key: Arc<str> = key.into();
                let mut cells = Vec::new();
                if extras != 0 {
                    let cell = Arc::new(AtomicU64::new(n));
                    cells.push(Arc::clone(&cell));
                    stripes[own_at].1[shard].extra.insert_unique(
                        hash,
                        (Arc::clone(&key), cell),
                        |(k, _)| self.hash.hash_str(k),
                    );
                }
                stripes[home_at].1[shard].home.insert_unique(
                    hash,
                    Home {
                        key,
                        delta,
                        extras,
                        cells,
                    },
                    |entry| self.hash.hash_str(&entry.key),
                );
                // Counted under the home entry's stripe lock, like the drain that
                // subtracts it, so the shard's count never runs below its home entries.
                let pending = self.buffer.shards[shard]
                    .pending
                    .fetch_add(1, Ordering::AcqRel)
                    + 1;
                self.metrics.keys_buffered(1);
                if pending == self.config.batch_size_limit {
                    full.push(shard);
                }
                continue;
            }
            if placed[i] {
                // Listed twice after all (the caller lists each key once): the first took
                // the place.
                self.give_back(shard, 1, PendingBytes::cost(key.len()));
            }
        }
        drop(stripes);
        for shard in full {
            self.shards[shard].wake.notify_one();
        }
        Ok(())
    }

    /// Takes a place on `shard` for a new key of `len` bytes. Unless `force`, takes nothing
    /// when a bound refuses it, and returns the error that names that bound.
    fn take_place(&self, shard: ShardId, len: usize, force: bool) -> Result<()> {
        let counts = &self.buffer.shards[shard];
        let limit = self.config.max_pending_keys;
        let budget = &self.config.max_pending_bytes;
        let cost = PendingBytes::cost(len);
        let buffered = self.buffer.keys.fetch_add(1, Ordering::AcqRel);
        let shard_buffered = counts.buffered.fetch_add(1, Ordering::AcqRel);
        let shard_bytes = counts.bytes.load(Ordering::Acquire);
        // The bound that refuses it, if any: the whole buffer, this shard's share, or the
        // bytes of keys waiting.
        let refused = if !force && buffered >= limit {
            Some(Error::Overloaded {
                pending: buffered,
                limit,
            })
        } else if !force && shard_buffered >= self.buffer.shard_limit {
            Some(Error::Overloaded {
                pending: shard_buffered,
                limit: self.buffer.shard_limit,
            })
        } else if !force && shard_bytes + cost > self.buffer.shard_byte_limit {
            Some(Error::OverloadedBytes {
                pending_bytes: shard_bytes,
                limit: self.buffer.shard_byte_limit,
            })
        } else {
            budget
                .take(cost, force)
                .err()
                .map(|held| Error::OverloadedBytes {
                    pending_bytes: held,
                    limit: budget.limit(),
                })
        };
        if let Some(error) = refused {
            self.buffer.keys.fetch_sub(1, Ordering::AcqRel);
            counts.buffered.fetch_sub(1, Ordering::AcqRel);
            return Err(error);
        }
        counts.bytes.fetch_add(cost, Ordering::AcqRel);
        Ok(())
    }

    /// Gives back the places (and `bytes`, see [`PendingBytes`]) of `keys` keys that are
    /// written, dropped by a reset, or no longer held.
    pub(super) fn forget_keys(&self, shard: ShardId, keys: usize, bytes: usize) {
        self.give_back(shard, keys, bytes);
        self.metrics.keys_unbuffered(keys);
    }

    /// Gives back `keys` places and `bytes` taken by [`Inner::take_place`].
    fn give_back(&self, shard: ShardId, keys: usize, bytes: usize) {
        let counts = &self.buffer.shards[shard];
        self.config.max_pending_bytes.give_back(bytes);
        counts.bytes.fetch_sub(bytes, Ordering::AcqRel);
        self.buffer.keys.fetch_sub(keys, Ordering::AcqRel);
        counts.buffered.fetch_sub(keys, Ordering::AcqRel);
    }

    /// `key`'s pending delta on `shard` (0 when it has none): its home delta plus its
    /// extras, read through the home entry with only its stripe locked. Called under the
    /// shard's `in_flight` read lock (see the invariants).
    pub(super) fn pending_delta(&self, shard: ShardId, key: &str) -> u64 {
        let hash = self.hash.hash_str(key);
        let mut tables = lock(&self.buffer.stripes[stripe_index(hash)].tables);
        tables[shard].home_mut(hash, key).map_or(0, |entry| {
            entry.delta
                + entry
                    .cells
                    .iter()
                    .map(|cell| cell.load(Ordering::Relaxed))
                    .sum::<u64>()
        })
    }

    /// Drops `key`'s pending deltas on `shard`, if it has any, and gives back its place (a
    /// reset).
    pub(super) fn drop_pending(&self, shard: ShardId, key: &str) {
        let hash = self.hash.hash_str(key);
        let mut stripes = self.buffer.lock_all();
        let Ok(entry) = stripes[stripe_index(hash)][shard]
            .home
            .find_entry(hash, |entry| &*entry.key == key)
        else {
            return;
        };
        let (Home { extras, .. }, _) = entry.remove();
        for stripe in stripes_of(extras) {
            if let Ok(extra) = stripes[stripe][shard]
                .extra
                .find_entry(hash, |(k, _)| &**k == key)
            {
                extra.remove();
            }
        }
        self.forget_keys(shard, 1, PendingBytes::cost(key.len()));
        self.buffer.shards[shard]
            .pending
            .fetch_sub(1, Ordering::AcqRel);
    }

    /// Moves up to `batch_size_limit` keys and `batch_max_bytes` bytes of keys (at least one
    /// key) of `shard`'s pending deltas out of the buffer, for a batch, each key's deltas
    /// from every stripe summed; their places stay taken until it is acknowledged. Home
    /// stripes are visited from a point that moves with `rotation` (the shard's last batch
    /// sequence), so under a backlog no key waits behind others for long.
    ///
    /// Every stripe stays locked while the deltas are taken (a key's extras may be in any
    /// of them), so increments wait for it; when the batch takes the whole shard, tables
    /// are moved whole and merged after the stripes are let go.
    pub(super) fn drain_pending(&self, shard: ShardId, rotation: u64) -> KeyMap<u64> {
        let counts = &self.buffer.shards[shard];
        let max_keys = self.config.batch_size_limit;
        let max_bytes = self.config.batch_max_bytes;
        let (mut count, mut bytes) = (0, 0);
        // Home tables taken whole, and home entries taken from tables that did not fit.
        let mut whole: Vec<hashbrown::HashTable<Home>> = Vec::new();
        let mut part: Vec<Home> = Vec::new();
        let mut stripes = self.buffer.lock_all();
        let start = (rotation as usize).wrapping_mul(7) % STRIPES;
        for i in 0..STRIPES {
            let table = &mut stripes[(start + i) % STRIPES][shard].home;
            if table.is_empty() {
                continue;
            }
            if count >= max_keys || bytes >= max_bytes {
                break;
            }
            let table_bytes: usize = table.iter().map(|entry| entry.key.len()).sum();
            let moved = if count + table.len() <= max_keys && bytes + table_bytes <= max_bytes {
                // The common case: the whole table fits (and its memory goes with it).
                count += table.len();
                bytes += table_bytes;
                whole.push(std::mem::take(table));
                whole.last().map_or(0, hashbrown::HashTable::len)
            } else {
                let before = part.len();
                part.extend(table.extract_if(|entry| {
                    let len = entry.key.len();
                    let fits = count < max_keys && (count == 0 || bytes + len <= max_bytes);
                    if fits {
                        count += 1;
                        bytes += len;
                    }
                    fits
                }));
                part.len() - before
            };
            counts.pending.fetch_sub(moved, Ordering::AcqRel);
        }
        let homes = whole
            .into_iter()
            .flatten()
            .chain(part)
            .map(|entry| (entry.key, entry.delta));
        let mut taken = KeyMap::with_capacity_and_hasher(count, self.hash);
        if stripes.iter().all(|tables| tables[shard].home.is_empty()) {
            // Every key of the shard taken: every extra of the shard goes too, and the
            // stripes are let go before the deltas are merged.
            let extras: Vec<hashbrown::HashTable<(Arc<str>, Cell)>> = stripes
                .iter_mut()
                .map(|tables| &mut tables[shard].extra)
                .filter(|extra| !extra.is_empty())
                .map(std::mem::take)
                .collect();
            drop(stripes);
            taken.extend(homes);
            for (key, cell) in extras.into_iter().flatten() {
                // Out of every table, so no increment writes the cell any more.
                let delta = cell.load(Ordering::Relaxed);
                // Every extra's home entry was taken (see the invariants); were one not,
                // its delta still goes out, counted once, rather than being lost.
                debug_assert!(taken.contains_key(&key), "an extra without its home entry");
                *taken.entry(key).or_insert(0) += delta;
            }
            return taken;
        }
        // Part of the shard's keys taken: the extras of those only.
        taken.extend(homes);
        for tables in stripes.iter_mut() {
            let extra = &mut tables[shard].extra;
            if extra.is_empty() {
                continue;
            }
            let moved: Vec<(Arc<str>, Cell)> = extra
                .extract_if(|(key, _)| taken.contains_key(key))
                .collect();
            for (key, cell) in moved {
                if let Some(total) = taken.get_mut(&key) {
                    *total += cell.load(Ordering::Relaxed);
                }
            }
        }
        taken
    }

    /// Whether `key` is in `shard`'s batch in flight.
    fn is_in_flight(&self, shard: ShardId, key: &str) -> bool {
        let in_flight = self.shards[shard].in_flight();
        in_flight
            .deltas
            .as_ref()
            .is_some_and(|keys| keys.contains_key(key))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{Counter, CounterConfig, MemoryStore};

    const THREADS: u64 = 4;

    /// Keys spread over both shards of the store.
    fn keys() -> Vec<String> {
        (0..40).map(|i| format!("page{i}")).collect()
    }

    /// A counter over two shards whose flushers wait for `flush`, with batches of at most
    /// `batch_size_limit` keys.
    fn counter(batch_size_limit: usize) -> Counter<MemoryStore> {
        let config = CounterConfig {
            batch_interval: Duration::from_secs(3600),
            batch_size_limit,
            ..CounterConfig::default()
        };
        Counter::new(MemoryStore::with_shards(2), config).unwrap()
    }

    /// `THREADS` threads, each with a stripe of its own, add `t + 1` to every key.
    fn increment_from_threads(counter: &Counter<MemoryStore>, keys: &[String]) {
        std::thread::scope(|scope| {
            for t in 0..THREADS {
                scope.spawn(move || {
                    for key in keys {
                        counter.increment(key, t + 1).unwrap();
                    }
                });
            }
        });
    }

    /// The stripes holding a delta of `key` (its home entry or an extra).
    fn stripes_holding(counter: &Counter<MemoryStore>, key: &str) -> usize {
        let inner = &*counter.inner;
        let shard = inner.shard_of(key);
        let hash = inner.hash.hash_str(key);
        inner
            .buffer
            .stripes
            .iter()
            .enumerate()
            .filter(|(i, stripe)| {
                lock(&stripe.tables)[shard].holds(*i == stripe_index(hash), hash, key)
            })
            .count()
    }

    /// Entries (home or extra) left in the buffer, over every stripe and shard.
    fn entries_left(counter: &Counter<MemoryStore>) -> usize {
        counter
            .inner
            .buffer
            .stripes
            .iter()
            .map(|stripe| {
                lock(&stripe.tables)
                    .iter()
                    .map(|tables| tables.home.len() + tables.extra.len())
                    .sum::<usize>()
            })
            .sum()
    }

    #[test]
    fn deltas_spread_over_stripes_are_read_written_and_reset_whole() {
        let sum = THREADS * (THREADS + 1) / 2;
        // Batches of 3 keys drain a shard's keys in parts; batches of 1,000, whole.
        for batch_size_limit in [3, 1_000] {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let _guard = runtime.enter();
            let counter = counter(batch_size_limit);
            let keys = keys();

            increment_from_threads(&counter, &keys);

            for key in &keys {
                assert!(
                    stripes_holding(&counter, key) >= 2,
                    "{key} was recorded by {THREADS} threads in one stripe"
                );
                assert_eq!(runtime.block_on(counter.get(key)).unwrap().value, sum);
            }
            assert_eq!(counter.snapshot().write_buffer_size, keys.len());

            runtime.block_on(counter.flush());

            for key in &keys {
                assert_eq!(counter.store().value(key), sum, "{key} written");
            }
            assert_eq!(
                entries_left(&counter),
                0,
                "a delta left behind by the drain"
            );
            assert_eq!(counter.snapshot().write_buffer_size, 0);
            assert_eq!(counter.snapshot().write_buffer_bytes, 0);

            increment_from_threads(&counter, &keys);
            runtime.block_on(counter.reset(&keys[0])).unwrap();

            assert_eq!(runtime.block_on(counter.get(&keys[0])).unwrap().value, 0);
            assert_eq!(
                runtime.block_on(counter.get(&keys[1])).unwrap().value,
                2 * sum
            );
            assert_eq!(counter.snapshot().write_buffer_size, keys.len() - 1);
            runtime.block_on(counter.flush());
            assert_eq!(counter.store().value(&keys[0]), 0, "a reset delta written");
            for key in &keys[1..] {
                assert_eq!(counter.store().value(key), 2 * sum, "{key} written");
            }
            assert_eq!(entries_left(&counter), 0);
            assert_eq!(counter.snapshot().write_buffer_size, 0);
        }
    }

    #[test]
    fn increment_all_from_several_threads_is_exact_and_takes_one_place_per_key() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = runtime.enter();
        let counter = counter(1_000);
        let keys = keys();

        std::thread::scope(|scope| {
            for t in 0..THREADS {
                let (counter, keys) = (&counter, &keys);
                scope.spawn(move || {
                    for pair in keys.chunks(2) {
                        let all: Vec<(&str, u64)> =
                            pair.iter().map(|key| (key.as_str(), t + 1)).collect();
                        // Twice: the second finds both keys in the thread's stripe.
                        counter.increment_all(&all).unwrap();
                        counter.increment_all(&all).unwrap();
                    }
                });
            }
        });

        assert_eq!(counter.snapshot().write_buffer_size, keys.len());
        runtime.block_on(counter.flush());
        let sum = THREADS * (THREADS + 1);
        for key in &keys {
            assert_eq!(counter.store().value(key), sum, "{key} written");
        }
        assert_eq!(entries_left(&counter), 0);
        assert_eq!(counter.snapshot().write_buffer_size, 0);
    }
}
