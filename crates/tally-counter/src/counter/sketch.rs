//! Sketch members waiting to be added: visitor ids of pages, say ([`Store::sketch`]).
//!
//! Adding a member to a HyperLogLog it is already in changes nothing, so members need none
//! of the batches' machinery: no ids, no high-water marks, no in-flight set. Each shard
//! keeps a set of members per key; whoever sends the shard's adds (the flusher after each
//! batch round, a read of estimates, a flush) takes the shard's `send` lock, sends the
//! members it took, and puts them back when the store fails, to go again later. A member
//! may therefore reach the store more than once, which is harmless, and reaches it at
//! least once unless the process dies first.
//!
//! A read of estimates sends the pending members of the keys it reads in the same store
//! call, so a caller reads its own adds. A reset takes the `send` lock after the shard's
//! outbox (the one order the two are taken in), and drops the key's pending members once
//! the store has emptied its sketch.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::{Error, Result, error_chain};
use crate::hash::KeyHash;
use crate::store::{ShardId, SketchAdd, Store};
use crate::sync::lock;

use super::{Counter, Inner, KeyMap};

/// One key's members waiting.
type Members = HashSet<Box<[u8]>, KeyHash>;

/// Most keys one store call adds to (the rest wait for the next call).
const KEYS_PER_CALL: usize = 1_000;

/// Members waiting, per shard, and their bound.
pub(super) struct Sketches {
    shards: Box<[SketchShard]>,
    /// Members waiting in all shards (a key and a member count once).
    pending: AtomicUsize,
    hash: KeyHash,
}

struct SketchShard {
    pending: Mutex<KeyMap<Members>>,
    /// Held by whoever sends the shard's adds, and by a reset of one of its keys.
    send: tokio::sync::Mutex<()>,
}

/// Members taken out of a shard's pending set for one store call.
type Taken = Vec<(std::sync::Arc<str>, Members)>;

impl Sketches {
    pub(super) fn new(shard_count: usize, hash: KeyHash) -> Self {
        Self {
            shards: (0..shard_count)
                .map(|_| SketchShard {
                    pending: Mutex::new(KeyMap::with_hasher(hash)),
                    send: tokio::sync::Mutex::new(()),
                })
                .collect(),
            pending: AtomicUsize::new(0),
            hash,
        }
    }

    /// Members waiting in all shards.
    pub(super) fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    /// Takes `places` places under `limit`, all or none.
    fn reserve(&self, places: usize, limit: usize) -> Result<()> {
        self.pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |pending| {
                pending.checked_add(places).filter(|&after| after <= limit)
            })
            .map(drop)
            .map_err(|pending| Error::OverloadedMembers { pending, limit })
    }

    fn release(&self, places: usize) {
        self.pending.fetch_sub(places, Ordering::AcqRel);
    }

    /// Records `member` for `key`; whether it was new (then it keeps its place).
    fn insert(&self, shard: ShardId, key: &str, member: &[u8]) -> bool {
        let mut pending = lock(&self.shards[shard].pending);
        match pending.get_mut(key) {
            Some(members) => members.insert(member.into()),
            None => {
                let mut members = Members::with_hasher(self.hash);
                members.insert(member.into());
                pending.insert(key.into(), members);
                true
            }
        }
    }

    /// Takes the pending members of `keys` (all, when `None`: at most [`KEYS_PER_CALL`]
    /// keys' worth) out of the shard's set; they keep their places until given back.
    fn take(&self, shard: ShardId, keys: Option<&[&str]>) -> Taken {
        let mut pending = lock(&self.shards[shard].pending);
        match keys {
            Some(keys) => keys
                .iter()
                .filter_map(|key| pending.remove_entry(*key))
                .collect(),
            None => {
                let chosen: Vec<_> = pending.keys().take(KEYS_PER_CALL).cloned().collect();
                chosen
                    .into_iter()
                    .filter_map(|key| pending.remove_entry(&key))
                    .collect()
            }
        }
    }

    /// Puts members a failed store call took back, merging them with any added meanwhile
    /// (a member in both gives its second place back).
    fn put_back(&self, shard: ShardId, taken: Taken) {
        let mut pending = lock(&self.shards[shard].pending);
        let mut doubled = 0;
        for (key, members) in taken {
            match pending.get_mut(&key) {
                Some(waiting) => {
                    for member in members {
                        if !waiting.insert(member) {
                            doubled += 1;
                        }
                    }
                }
                None => {
                    pending.insert(key, members);
                }
            }
        }
        drop(pending);
        self.release(doubled);
    }

    /// Drops the pending members of `key` (reset), giving their places back.
    fn drop_key(&self, shard: ShardId, key: &str) {
        let removed = lock(&self.shards[shard].pending).remove(key);
        if let Some(members) = removed {
            self.release(members.len());
        }
    }

    /// Keys of the shard with members waiting.
    fn shard_keys(&self, shard: ShardId) -> usize {
        lock(&self.shards[shard].pending).len()
    }
}

/// Members of `taken` in the form [`Store::sketch`] takes.
fn member_lists(taken: &Taken) -> Vec<Vec<&[u8]>> {
    taken
        .iter()
        .map(|(_, members)| members.iter().map(|m| &**m).collect())
        .collect()
}

fn sketch_adds<'a>(taken: &'a Taken, lists: &'a [Vec<&'a [u8]>]) -> Vec<SketchAdd<'a>> {
    taken
        .iter()
        .zip(lists)
        .map(|((key, _), members)| SketchAdd { key, members })
        .collect()
}

fn places(taken: &Taken) -> usize {
    taken.iter().map(|(_, members)| members.len()).sum()
}

impl<S: Store> Counter<S> {
    /// Adds each member to its key's sketch (a HyperLogLog of distinct members, kept by
    /// the store: see [`Store::sketch`]), all or nothing. Memory only, like
    /// [`Counter::increment`]: the members go to the store with the shard's next batch
    /// round, at least once (adding a member twice changes no estimate).
    ///
    /// A caller that also counts something for the same request should add the members
    /// first: a refused add then refuses the request before anything was counted, and a
    /// retried request adds its members again harmlessly.
    ///
    /// # Errors
    /// [`Error::OverloadedMembers`] when `max_pending_members` would be passed: nothing was
    /// added. [`Error::NoSketches`] when the store keeps none. [`Error::ShutDown`] after
    /// [`Counter::shutdown`].
    pub fn add_to_sketches(&self, adds: &[(&str, &[u8])]) -> Result<()> {
        let inner = &*self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return Err(Error::ShutDown);
        }
        if !inner.store.keeps_sketches() {
            return Err(Error::NoSketches);
        }
        let sketches = &inner.sketches;
        sketches.reserve(adds.len(), inner.config.max_pending_members)?;
        let mut known = 0;
        for &(key, member) in adds {
            if !sketches.insert(inner.shard_of(key), key, member) {
                known += 1;
            }
        }
        sketches.release(known);
        Ok(())
    }

    /// The estimated number of distinct members in each key's sketch, in order: one store
    /// call per shard, which first adds this instance's pending members of those keys, so
    /// a caller reads its own adds.
    ///
    /// # Errors
    /// [`Error::Store`] when a shard does not answer (its members stay pending);
    /// [`Error::NoSketches`] when the store keeps none.
    pub async fn estimate_many(&self, keys: &[&str]) -> Result<Vec<u64>> {
        let inner = &*self.inner;
        if !inner.store.keeps_sketches() {
            return Err(Error::NoSketches);
        }
        let mut by_shard: Vec<(ShardId, Vec<usize>)> = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let shard = inner.shard_of(key);
            match by_shard.iter_mut().find(|(s, _)| *s == shard) {
                Some((_, at)) => at.push(i),
                None => by_shard.push((shard, vec![i])),
            }
        }
        let mut estimates = vec![0; keys.len()];
        for (shard, at) in by_shard {
            let wanted: Vec<&str> = at.iter().map(|&i| keys[i]).collect();
            let values = inner.send_sketches(shard, Some(&wanted)).await?;
            if values.len() != wanted.len() {
                return Err(inner.store_error(
                    shard,
                    format!(
                        "store answered {} estimates for {} keys",
                        values.len(),
                        wanted.len()
                    )
                    .into(),
                ));
            }
            for (i, value) in at.into_iter().zip(values) {
                estimates[i] = value;
            }
        }
        Ok(estimates)
    }
}

impl<S: Store> Inner<S> {
    /// Sends the shard's pending members (of `keys`, estimating them; or of any keys) in
    /// one store call under the shard's `send` lock; on failure they are put back.
    async fn send_sketches(&self, shard: ShardId, keys: Option<&[&str]>) -> Result<Vec<u64>> {
        let sketches = &self.sketches;
        let _sending = sketches.shards[shard].send.lock().await;
        let taken = sketches.take(shard, keys);
        if taken.is_empty() && keys.is_none() {
            return Ok(Vec::new());
        }
        let lists = member_lists(&taken);
        let adds = sketch_adds(&taken, &lists);
        let result = self
            .store
            .sketch(shard, &adds, keys.unwrap_or_default())
            .await;
        drop(adds);
        drop(lists);
        match result {
            Ok(estimates) => {
                let sent = places(&taken);
                self.metrics.members_written(sent as u64);
                sketches.release(sent);
                Ok(estimates)
            }
            Err(source) => {
                sketches.put_back(shard, taken);
                Err(self.store_error(shard, source))
            }
        }
    }

    /// Sends the members the shard has waiting at the call (members added meanwhile may go
    /// too, or wait for the next round: under a steady stream of new members the flusher
    /// must get back to its batches), in calls of at most [`KEYS_PER_CALL`] keys. Once (the
    /// flusher: what fails goes with its next round) or, with `retry`, retrying failures
    /// with backoff until they went (a flush; wrap it in a timeout).
    pub(super) async fn flush_sketches(&self, shard: ShardId, retry: bool) {
        let mut backoff = self.config.retry_backoff_min;
        let mut calls = self.sketches.shard_keys(shard).div_ceil(KEYS_PER_CALL);
        while calls > 0 && self.sketches.shard_keys(shard) > 0 {
            match self.send_sketches(shard, None).await {
                Ok(_) => {
                    calls -= 1;
                    backoff = self.config.retry_backoff_min;
                }
                Err(e) => {
                    self.metrics.members_failed();
                    tracing::warn!(
                        counter = %self.config.name,
                        shard,
                        node = %self.store.shard_name(shard),
                        error.message = %error_chain(&e),
                        "adding sketch members failed; they stay pending"
                    );
                    if !retry {
                        return;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.config.retry_backoff_max);
                }
            }
        }
    }

    /// Drops `key`'s pending members, after its reset emptied the store's sketch. The
    /// caller holds the shard's `send` lock ([`Inner::sketch_send_lock`]).
    pub(super) fn drop_sketch_members(&self, shard: ShardId, key: &str) {
        self.sketches.drop_key(shard, key);
    }

    /// The shard's `send` lock, for a reset to hold while the store empties a sketch.
    pub(super) async fn sketch_send_lock(&self, shard: ShardId) -> tokio::sync::MutexGuard<'_, ()> {
        self.sketches.shards[shard].send.lock().await
    }
}
