//! Reads: the read cache, store reads shared by concurrent misses of a key, and the read
//! protocol that keeps a count exact while batches are in flight.
//!
//! # Invariants
//!
//! - A count is a stored value plus what of this instance's deltas that value does not
//!   include: the pending delta always (no store value has it; summed over the buffer's
//!   stripes, see `buffer`), the in-flight one only when its batch's sequence is above the
//!   highest of ours the value includes. Every cache entry records that sequence next to
//!   its value, and the store reports it with every read. The in-flight state is read
//!   under the shard's `in_flight` read lock, held until the pending delta is read too, so
//!   a delta moving between the sets meanwhile is seen once.
//! - A store answer that misses a batch of ours acknowledged while it was on the wire (the
//!   shard's `acked_seq` is above the answer's `applied_seq`) is not used as it is: the
//!   store is asked again, up to [`READ_ATTEMPTS`] times, then the read answers with the
//!   fresher count that acknowledgement cached, and caches nothing.
//! - A read during which a reset of its shard landed answers (it was concurrent with the
//!   reset, so either side is right) but caches nothing: its value may be from before the
//!   reset, and the reset's zero must stay.
//! - An acknowledged batch refreshes the cached totals of its keys that are cached, so a
//!   cache entry never misses a batch that is no longer in flight. It caches the keys that
//!   are not only while a store read of the shard is in progress ([`Reading`]): that read
//!   may give up on a consistent answer and look for the fresher total. Otherwise a key
//!   written but never read stays out of the cache (a page visited once and never read,
//!   or a URL of the request statistics, would otherwise cost a cache insertion and its
//!   eviction); its next read reads it through. A read that starts after the batch's
//!   acknowledgement saw the shard's count of reads asks the store after the batch was
//!   applied, so its answer includes it.
//! - A cache entry is never replaced by one including fewer of our batches
//!   (`cache_unless_newer`), except by a reset's zero.
//! - At most one store read per key is in progress: the first miss reads and the others
//!   wait for it, then answer from the cache it filled. A failed read fails its waiters
//!   with its error; a cancelled one lets a waiter read instead.

use std::sync::atomic::{AtomicUsize, Ordering};

use moka::ops::compute::Op;

use crate::error::{Result, cause_text};
use crate::store::{ShardId, Store};
use crate::sync::lock;

use super::Inner;

/// A store read is retried this many times when a batch was acknowledged while it was on
/// the wire (its value would miss that batch); past that the read is used as it is, which
/// only happens when the store lost data it had acknowledged.
const READ_ATTEMPTS: usize = 4;

/// How a store read shared by concurrent misses of one key ended: `None` while it runs,
/// then `Ok` (the cache holds the value) or the error's text.
pub(super) type ReadOutcome = Option<std::result::Result<(), std::sync::Arc<str>>>;

/// A cached stored value and the highest of our batch sequences it includes.
#[derive(Clone, Copy, Debug)]
pub(super) struct CacheEntry {
    pub(super) value: u64,
    pub(super) seq: u64,
}

/// A store read of a shard in progress: counted in the shard's `reading` from before the
/// store is asked until the answer is used (or the read is cancelled).
pub(super) struct Reading<'a>(&'a AtomicUsize);

impl<'a> Reading<'a> {
    fn start(reading: &'a AtomicUsize) -> Self {
        reading.fetch_add(1, Ordering::SeqCst);
        Self(reading)
    }
}

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
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

impl<S: Store> Inner<S> {
    /// Caches `entry` for `key` unless the cache holds an entry including a later batch of
    /// ours (a higher `seq`). An acknowledgement caches its batch's totals before it takes
    /// the shard's `in_flight` lock (see `acknowledge`), so a read-through whose store
    /// answer predates that batch can come to cache after it; the fresher entry stays.
    /// The check and the write are one step for the key (moka's `and_compute_with`), so
    /// two writers of one key cannot interleave.
    pub(super) fn cache_unless_newer(&self, key: std::sync::Arc<str>, entry: CacheEntry) {
        self.cache
            .entry(key)
            .and_compute_with(|cached| match cached {
                Some(cached) if cached.value().seq > entry.seq => Op::Nop,
                _ => Op::Put(entry),
            });
    }

    /// The count from the cache, or `None` on a miss.
    pub(super) fn cached_count(&self, shard: ShardId, key: &str) -> Option<u64> {
        let in_flight = self.shards[shard].in_flight();
        let entry = self.cache.get(key)?;
        Some(entry.value + in_flight.delta(key, entry.seq) + self.pending_delta(shard, key))
    }

    /// The count of a key that missed the cache: read through, or, when a read of the key
    /// is already in progress, wait for it and answer from the cache it fills, as a hit
    /// would (its own pending and in-flight deltas included). A failed read fails its
    /// waiters with the same error; a cancelled one lets the first waiter read instead.
    pub(super) async fn read_shared(&self, shard: ShardId, key: &str) -> Result<u64> {
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
        let counts = self.read_through_many(shard, &[key]).await?;
        Ok(counts.first().copied().unwrap_or(0))
    }

    /// [`Inner::read_through`] of several keys of `shard` in one store read.
    pub(super) async fn read_through_many(
        &self,
        shard: ShardId,
        keys: &[&str],
    ) -> Result<Vec<u64>> {
        let _reading = Reading::start(&self.shards[shard].reading);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let resets = self.shards[shard].in_flight().resets;
            let read = self
                .store
                .get(shard, self.instance, keys)
                .await
                .map_err(|source| self.store_error(shard, source))?;
            let stored = |i: usize| read.values.get(i).copied().unwrap_or(0);
            let in_flight = self.shards[shard].in_flight();
            if in_flight.acked_seq > read.applied_seq {
                if attempt < READ_ATTEMPTS {
                    // A batch of ours was acknowledged after the store answered: that
                    // answer misses it and it is no longer in flight. Ask again.
                    continue;
                }
                // Batches keep landing under our reads: give up on a consistent read and
                // answer without caching. A batch acknowledged since the read cached the
                // totals of its keys; when it held a key, that count is the fresher.
                return Ok(keys
                    .iter()
                    .enumerate()
                    .map(|(i, key)| {
                        let fresher = self
                            .cache
                            .get(*key)
                            .filter(|entry| entry.seq > read.applied_seq);
                        let (value, included_seq) = fresher
                            .map_or((stored(i), read.applied_seq), |entry| {
                                (entry.value, entry.seq)
                            });
                        value + in_flight.delta(key, included_seq) + self.pending_delta(shard, key)
                    })
                    .collect());
            }
            // A reset during the read: answer (the read was concurrent with it, so either
            // side is right), but do not cache what may be the value before the reset
            // over the reset's zero.
            let cache = in_flight.resets == resets;
            return Ok(keys
                .iter()
                .enumerate()
                .map(|(i, key)| {
                    if cache {
                        self.cache_unless_newer(
                            (*key).into(),
                            CacheEntry {
                                value: stored(i),
                                seq: read.applied_seq,
                            },
                        );
                    }
                    stored(i)
                        + in_flight.delta(key, read.applied_seq)
                        + self.pending_delta(shard, key)
                })
                .collect());
        }
    }
}
