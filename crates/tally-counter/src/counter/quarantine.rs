//! The quarantine: keys whose stored value is not a count, and the increments held for
//! them.
//!
//! A store rejects such a key from a batch ([`Store::apply_checked`]) and applies the
//! rest, so one bad value cannot hold its shard. The key's delta then waits here, per
//! shard, outside the shard's batches: it is offered to the store again every
//! `quarantine_recheck`, in a batch of its own, until the value is repaired (the delta is
//! written and the key released) or the key is reset (the delta is dropped). Meanwhile
//! increments and reads of the key are refused with [`Error::Corrupt`].
//!
//! # Invariants
//!
//! - A held key keeps the one buffer place it had in the batch the store rejected it
//!   from, and gives it back when it is released or dropped, not before. A later batch
//!   that carries more increments of the key (pending before it was held) brings a place
//!   of its own, given back when that batch is acknowledged.
//! - While a held key is `rechecking`, its delta is out in a recheck batch, which holds no
//!   place for it: the held entry's place serves.
//! - `Metrics::held_keys` counts the keys held in every shard; while it is 0, increments
//!   and reads do not look at a quarantine.

use std::sync::Arc;

use tokio::time::Instant;

use crate::config::PendingBytes;
use crate::error::{Error, Result};
use crate::store::{RejectedKey, ShardId, Store};
use crate::sync::lock;

use super::{Inner, KeyMap, Unwritten};

/// Increments held for a key the store rejected (its value is not a count).
pub(super) struct Held {
    /// Increments not written.
    delta: u64,
    /// Where the store keeps the key, and what it found there.
    stored_as: String,
    found: String,
    /// Its delta is out in a recheck batch (and this entry keeps its place in the
    /// buffer and refuses increments meanwhile).
    rechecking: bool,
}

impl<S: Store> Inner<S> {
    /// [`Error::Corrupt`] when `key`'s increments are held (its stored value is not a
    /// count). One atomic load while no key anywhere is held.
    pub(super) fn refuse_if_held(&self, shard: ShardId, key: &str) -> Result<()> {
        if self.metrics.held_keys() == 0 {
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

    /// Holds `delta` for `key`, which the store rejected from a batch for the reason
    /// `why`; `held` is the shard's quarantine. Returns whether the batch's place for the
    /// key is given back: it is when the key was held already under a place of its own,
    /// not when it is newly held (its place passes to the held entry) or when the batch
    /// was its recheck (it had no place of its own).
    pub(super) fn hold(
        &self,
        shard: ShardId,
        held: &mut KeyMap<Held>,
        key: &Arc<str>,
        delta: u64,
        why: &RejectedKey,
    ) -> bool {
        if let Some(entry) = held.get_mut(key) {
            // Still bad: held again (a recheck), or more for a held key.
            let frees_place = !entry.rechecking;
            entry.delta += delta;
            entry.rechecking = false;
            entry.found.clone_from(&why.found);
            return frees_place;
        }
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
                delta,
                stored_as: why.stored_as.clone(),
                found: why.found.clone(),
                rechecking: false,
            },
        );
        self.metrics.key_held();
        false
    }

    /// Releases `key` from the quarantine `held` when the batch the store just took was its
    /// recheck: its value was repaired and its held increments are written.
    pub(super) fn release_if_rechecked(&self, held: &mut KeyMap<Held>, key: &str, delta: u64) {
        if held.get(key).is_some_and(|entry| entry.rechecking) {
            held.remove(key);
            self.metrics.key_released();
            tracing::info!(
                counter = %self.config.name,
                key = %key,
                increments = delta,
                "a repaired key took its held increments"
            );
        }
    }

    /// Drops `key`'s held increments, if it has any, and gives back its place (a reset).
    pub(super) fn drop_held(&self, shard: ShardId, key: &str) {
        if lock(&self.shards[shard].quarantine).remove(key).is_some() {
            self.metrics.key_released();
            self.forget_keys(shard, 1, PendingBytes::cost(key.len()));
        }
    }

    /// Offers the shard's held increments to the store again as one batch of their own
    /// (its own sequence number, one in flight like any batch): those whose value was
    /// repaired are written, the others stay held. Only when `quarantine_recheck` has
    /// passed since the last time, unless `now`.
    pub(super) async fn recheck_quarantine(&self, shard: ShardId, now: bool) {
        if self.metrics.held_keys() == 0 {
            return;
        }
        let mut outbox = self.shards[shard].outbox.lock().await;
        let due = outbox
            .last_recheck
            .is_none_or(|at| at.elapsed() >= self.config.quarantine_recheck);
        if !(now || due) {
            return;
        }
        self.resend_unacked(shard, &mut outbox).await;
        outbox.last_recheck = Some(Instant::now());
        let deltas = self.take_held(shard);
        if deltas.is_empty() {
            return;
        }
        let batch = outbox.next_batch(self.instance, deltas);
        self.send_until_acked(shard, &mut outbox, batch).await;
    }

    /// The held deltas of `shard` not already out in a recheck, marked as out.
    fn take_held(&self, shard: ShardId) -> Vec<(Arc<str>, u64)> {
        let mut held = lock(&self.shards[shard].quarantine);
        held.iter_mut()
            .filter(|(_, held)| !held.rechecking && held.delta > 0)
            .map(|(key, held)| {
                held.rechecking = true;
                (key.clone(), std::mem::take(&mut held.delta))
            })
            .collect()
    }

    /// Keys held on `shard`, and the sum of their held increments.
    pub(super) fn held_totals(&self, shard: ShardId) -> Unwritten {
        let mut totals = Unwritten::default();
        for (key, held) in lock(&self.shards[shard].quarantine).iter() {
            totals.add(key, held.delta);
        }
        totals
    }

    /// Logs every held key with the increments it could not write (for an operator to
    /// repair by hand), at shutdown.
    pub(super) fn log_held(&self) {
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
}
