//! The write buffer: this instance's pending deltas, and the bounds on what waits to be
//! written.
//!
//! Increments land in [`STRIPES`] lock stripes, each holding one table per store shard, so
//! two increments rarely wait on one another and draining a shard never touches another
//! shard's keys. A key waits from its first increment until its batch is acknowledged (or
//! the key is reset, or released from its quarantine), and the buffer counts every key
//! waiting, wherever it is: pending here, in its shard's batch in flight, or held.
//!
//! # Invariants
//!
//! - A waiting key holds one *place*: one of `max_pending_keys`, one of its shard's share
//!   of them, and [`PendingBytes::cost`] of its key in bytes, of the shard's share of
//!   `max_pending_bytes` and of the budget shared with other counters. A place is taken
//!   when the key enters the buffer (taken back at once if a bound refuses it) and given
//!   back once, by `forget_keys`, when the key is written, dropped by a reset or released
//!   from its quarantine; the bytes of a counter dropped with keys waiting go back with it.
//! - A key already waiting is never refused: pending, it only adds to its delta; in
//!   flight, it takes one more place past the bounds.
//! - A shard's `pending` count changes under the stripe lock of the table it counts (when
//!   a key is inserted, drained into a batch or dropped by a reset), so it never runs
//!   below the keys in its tables.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::config::{CounterConfig, PendingBytes};
use crate::error::{Error, Result};
use crate::store::{ShardId, Store};
use crate::sync::lock;

use super::{Inner, KeyMap};

/// Number of lock stripes of the write buffer. A power of two well above the core count of
/// the machines tally runs on, so two increments rarely wait on one another.
const STRIPES: usize = 64;

/// A shard's pending deltas within one stripe. A `HashTable` rather than a `HashMap` so the
/// hash computed once per increment (which also picked the stripe) is reused for the slot.
type PendingTable = hashbrown::HashTable<(Arc<str>, u64)>;

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

/// One lock stripe of the write buffer: a table per store shard, so draining one shard
/// never touches another's keys.
///
/// A `std::sync::Mutex`, not an async one: it is held for a map operation, never across
/// an `.await`. Aligned to keep neighbouring stripes off one cache line.
#[repr(align(128))]
struct Stripe {
    tables: Mutex<Vec<PendingTable>>,
}

/// A shard's part of the buffer's counts.
#[derive(Default)]
struct ShardCounts {
    /// Distinct keys pending (not in flight) for this shard: the batch-size trigger.
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
                    tables: Mutex::new((0..shard_count).map(|_| PendingTable::new()).collect()),
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
        for stripe in self.stripes.iter() {
            for table in lock(&stripe.tables).iter() {
                for (key, delta) in table.iter() {
                    totals.add(key, *delta);
                }
            }
        }
        totals
    }

    fn stripe(&self, hash: u64) -> &Stripe {
        &self.stripes[stripe_index(hash)]
    }
}

/// The stripe of a key's hash. Middle bits pick it: the tables inside use the low bits
/// (bucket) and the top seven (tag) of the same hash, which must stay varied within a
/// stripe.
fn stripe_index(hash: u64) -> usize {
    (hash >> 32) as usize % STRIPES
}

impl Buffer {
    /// Locks the stripes of `hashes`, each once, in index order: the only place that holds
    /// two stripes at once, so the order rules out a deadlock. The guards come sorted by
    /// stripe index.
    fn lock_stripes(&self, hashes: &[u64]) -> Vec<(usize, MutexGuard<'_, Vec<PendingTable>>)> {
        let mut stripes: Vec<usize> = hashes.iter().map(|&hash| stripe_index(hash)).collect();
        stripes.sort_unstable();
        stripes.dedup();
        stripes
            .into_iter()
            .map(|i| (i, lock(&self.stripes[i].tables)))
            .collect()
    }
}

impl<S: Store> Inner<S> {
    /// Records `n` for `key` on `shard` (see [`super::Counter::increment`] for the bounds
    /// and the errors).
    pub(super) fn record(&self, shard: ShardId, key: &str, n: u64) -> Result<()> {
        let hash = self.hash.hash_str(key);
        let Err(refused) = self.add_pending(shard, hash, key, n, false) else {
            return Ok(());
        };
        if self.is_in_flight(shard, key) {
            // Already waiting (in the batch on the wire, perhaps to a shard that is
            // down): it takes its increments past the bounds, one more place at most.
            return self.add_pending(shard, hash, key, n, true);
        }
        self.metrics.increment_refused();
        Err(refused)
    }

    /// Records every `(shard, key, n)` of `entries`, or none of them: when a bound refuses
    /// a key that is not waiting yet, the places taken for the others are given back and
    /// that bound's error is returned, with nothing recorded. The bounds are those of
    /// [`Inner::record`], key by key (a key pending only adds to its delta; a key in
    /// flight takes a place past the bounds).
    ///
    /// Every stripe the keys fall in stays locked from the check to the last insert, so a
    /// key found pending is still pending when its delta is added. Which keys are in
    /// flight is read before (a flusher holds its shard's in-flight lock while it locks
    /// stripes): a key that leaves the flight meanwhile takes its place past the bounds,
    /// as if still in it.
    /// Each key should be listed once: a key listed twice takes two places for the check.
    pub(super) fn record_all(&self, entries: &[(ShardId, &str, u64)]) -> Result<()> {
        let in_flight: Vec<bool> = entries
            .iter()
            .map(|(shard, key, _)| self.is_in_flight(*shard, key))
            .collect();
        let hashes: Vec<u64> = entries
            .iter()
            .map(|(_, key, _)| self.hash.hash_str(key))
            .collect();
        let mut stripes = self.buffer.lock_stripes(&hashes);
        let position = |stripes: &[(usize, MutexGuard<'_, Vec<PendingTable>>)], hash: u64| {
            let index = stripe_index(hash);
            stripes
                .binary_search_by_key(&index, |(i, _)| *i)
                .unwrap_or_default()
        };
        // A place for every key not pending; the first refusal undoes them all.
        let mut placed = vec![false; entries.len()];
        for (i, (&(shard, key, _), &hash)) in entries.iter().zip(&hashes).enumerate() {
            let tables = &stripes[position(&stripes, hash)].1;
            if tables[shard].find(hash, |(k, _)| &**k == key).is_some() {
                continue;
            }
            if let Err(refused) = self.take_place(shard, key.len(), in_flight[i]) {
                for (j, &(shard, key, _)) in entries.iter().enumerate() {
                    if placed[j] {
                        self.give_back(shard, 1, PendingBytes::cost(key.len()));
                    }
                }
                self.metrics.increment_refused();
                return Err(refused);
            }
            placed[i] = true;
        }
        let mut full = Vec::new();
        for (i, (&(shard, key, n), &hash)) in entries.iter().zip(&hashes).enumerate() {
            let position = position(&stripes, hash);
            let table = &mut stripes[position].1[shard];
            if let Some((_, delta)) = table.find_mut(hash, |(k, _)| &**k == key) {
                *delta += n;
                if placed[i] {
                    // Listed twice after all (the caller lists each key once): the first
                    // took the place.
                    self.give_back(shard, 1, PendingBytes::cost(key.len()));
                }
                continue;
            }
            table.insert_unique(hash, (key.into(), n), |(k, _)| self.hash.hash_str(k));
            let pending = self.buffer.shards[shard]
                .pending
                .fetch_add(1, Ordering::AcqRel)
                + 1;
            self.metrics.keys_buffered(1);
            if pending == self.config.batch_size_limit {
                full.push(shard);
            }
        }
        drop(stripes);
        for shard in full {
            self.shards[shard].wake.notify_one();
        }
        Ok(())
    }

    /// Adds `n` to `key`'s pending delta on `shard`; for a key not pending, takes a place
    /// for it (within the bounds, unless `force`) and inserts it. `hash` is the key's.
    fn add_pending(&self, shard: ShardId, hash: u64, key: &str, n: u64, force: bool) -> Result<()> {
        let mut tables = lock(&self.buffer.stripe(hash).tables);
        if let Some((_, delta)) = tables[shard].find_mut(hash, |(k, _)| &**k == key) {
            *delta += n;
            return Ok(());
        }
        self.take_place(shard, key.len(), force)?;
        tables[shard].insert_unique(hash, (key.into(), n), |(k, _)| self.hash.hash_str(k));
        // Counted under the stripe lock, like the drain that subtracts it, so the shard's
        // count never runs below the keys actually in its tables.
        let pending = self.buffer.shards[shard]
            .pending
            .fetch_add(1, Ordering::AcqRel)
            + 1;
        drop(tables);
        self.metrics.keys_buffered(1);
        if pending == self.config.batch_size_limit {
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

    /// `key`'s pending delta on `shard` (0 when it has none).
    pub(super) fn pending_delta(&self, shard: ShardId, key: &str) -> u64 {
        let hash = self.hash.hash_str(key);
        let tables = lock(&self.buffer.stripe(hash).tables);
        tables[shard]
            .find(hash, |(k, _)| &**k == key)
            .map_or(0, |(_, delta)| *delta)
    }

    /// Drops `key`'s pending delta on `shard`, if it has one, and gives back its place (a
    /// reset).
    pub(super) fn drop_pending(&self, shard: ShardId, key: &str) {
        let hash = self.hash.hash_str(key);
        let mut tables = lock(&self.buffer.stripe(hash).tables);
        if let Ok(entry) = tables[shard].find_entry(hash, |(k, _)| &**k == key) {
            entry.remove();
            self.forget_keys(shard, 1, PendingBytes::cost(key.len()));
            self.buffer.shards[shard]
                .pending
                .fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Moves up to `batch_size_limit` keys and `batch_max_bytes` bytes of keys (at least one
    /// key) of `shard`'s pending deltas out of the buffer, for a batch; their places stay
    /// taken until it is acknowledged. Stripes are visited from a point that moves with
    /// `rotation` (the shard's last batch sequence), so under a backlog no key waits behind
    /// others for long.
    pub(super) fn drain_pending(&self, shard: ShardId, rotation: u64) -> KeyMap<u64> {
        let counts = &self.buffer.shards[shard];
        let pending = counts.pending.load(Ordering::Acquire);
        let max_keys = self.config.batch_size_limit;
        let mut taken = KeyMap::with_capacity_and_hasher(pending.min(max_keys), self.hash);
        let max_bytes = self.config.batch_max_bytes;
        let mut bytes = 0;
        let start = (rotation as usize).wrapping_mul(7) % STRIPES;
        for i in 0..STRIPES {
            if taken.len() >= max_keys || bytes >= max_bytes {
                break;
            }
            let mut tables = lock(&self.buffer.stripes[(start + i) % STRIPES].tables);
            let table = &mut tables[shard];
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
            counts.pending.fetch_sub(moved, Ordering::AcqRel);
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
