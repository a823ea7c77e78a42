//! The flushers: a task per store shard that sends the shard's pending deltas to the store
//! in batches, retries a failed batch until the store acknowledges it, and then makes it
//! visible as stored.
//!
//! # Invariants
//!
//! - At most one batch per shard is on the wire: whoever sends one holds the shard's
//!   `outbox` for the whole send, retries included. Resets and quarantine rechecks take it
//!   too, so they are ordered with the shard's batches.
//! - A batch is retried unchanged, with its id, until acknowledged, and stores apply an id
//!   at most once. A send cut off (cancelled, or by a panic) leaves its batch in
//!   [`Outbox::unacked`], and whoever takes the outbox next sends it again before anything
//!   newer. Each new batch takes the shard's next sequence number.
//! - Deltas move from pending to in flight (`take_pending`) and from in flight to stored
//!   (`acknowledge`) under the shard's `in_flight` write lock. An acknowledgement caches
//!   the batch's totals, marked with its sequence, just before it takes that lock.
//! - A flusher holds no strong reference to the counter while it waits, so dropping the
//!   last [`super::Counter`] stops it; a flusher that panics is started again.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::PendingBytes;
use crate::error::error_chain;
use crate::store::{Applied, Batch, BatchId, InstanceId, ShardId, Store};
use crate::sync::lock;

use super::Inner;
use super::read::CacheEntry;

/// How often a failed batch waiting for its retry asks whether its shard, down at the
/// failure, is back up.
const UP_POLL: Duration = Duration::from_millis(50);

/// What the sender of a shard's batches keeps between sends: the shard's batch sequence,
/// and a batch that went out without an acknowledgement.
#[derive(Default)]
pub(super) struct Outbox {
    /// Sequence of the last batch built for this shard.
    last_seq: u64,
    /// When held increments were last offered to the store again.
    pub(super) last_recheck: Option<Instant>,
    /// A batch built but not acknowledged (an attempt was cancelled): sent again, unchanged,
    /// before anything newer.
    unacked: Option<Batch>,
}

impl Outbox {
    /// A batch of `deltas` with the shard's next sequence number.
    pub(super) fn next_batch(
        &mut self,
        instance: InstanceId,
        deltas: Vec<(Arc<str>, u64)>,
    ) -> Batch {
        self.last_seq += 1;
        Batch {
            id: BatchId {
                instance,
                seq: self.last_seq,
            },
            deltas,
        }
    }
}

/// Puts a batch back into the outbox if its send is cancelled before the store
/// acknowledges it.
struct UnackedGuard<'a> {
    outbox: &'a mut Outbox,
    batch: Option<Batch>,
}

impl Drop for UnackedGuard<'_> {
    fn drop(&mut self) {
        if let Some(batch) = self.batch.take() {
            self.outbox.unacked = Some(batch);
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

/// Starts a flusher for every shard of `inner` on the current tokio runtime.
pub(super) fn spawn_flushers<S: Store>(inner: &Arc<Inner<S>>) -> Vec<JoinHandle<()>> {
    (0..inner.shards.len())
        .map(|shard| {
            let signals = FlusherSignals {
                wake: Arc::clone(&inner.shards[shard].wake),
                stop: inner.stop.subscribe(),
            };
            tokio::spawn(supervise_flusher(Arc::downgrade(inner), shard, signals))
        })
        .collect()
}

/// Runs the shard's flusher and starts it again whenever it panics (a store whose `apply`
/// panics, say), so a panic never stops a shard's writes silently: it is logged with its
/// message and counted. The shard's state lives in the counter, not the task: the outbox
/// lock is released by the unwinding, and a batch cut off mid-send is kept as unacked and
/// sent again, same id, by the restarted flusher.
async fn supervise_flusher<S: Store>(
    inner: Weak<Inner<S>>,
    shard: ShardId,
    signals: FlusherSignals,
) {
    crate::task::restart_on_panic(
        || run_flusher(inner.clone(), shard, signals.clone()),
        |message| {
            let Some(inner) = inner.upgrade() else { return };
            inner.metrics.flusher_panicked();
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
async fn run_flusher<S: Store>(inner: Weak<Inner<S>>, shard: ShardId, mut signals: FlusherSignals) {
    loop {
        // Shorter while increments are held, so a repaired value takes them soon.
        let Some(wait) = inner.upgrade().map(|inner| {
            let config = &inner.config;
            if inner.metrics.held_keys() > 0 {
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
        inner.flush_sketches(shard, false).await;
    }
}

impl<S: Store> Inner<S> {
    /// Sends the shard's unacknowledged batch, then pending deltas, each batch until the
    /// store acknowledges it: batches until at least `keys` keys went out (or nothing is
    /// left), then more while a full batch is waiting, so a backlog drains batch after
    /// batch. The outbox is taken anew for each batch, so a reset waits behind one batch,
    /// not a whole backlog.
    pub(super) async fn flush_shard(&self, shard: ShardId, keys: usize) {
        let mut sent = 0;
        loop {
            let mut outbox = self.shards[shard].outbox.lock().await;
            self.resend_unacked(shard, &mut outbox).await;
            let more = sent < keys || self.full_batch_waiting(shard);
            let Some(batch) = more
                .then(|| self.take_pending(shard, &mut outbox))
                .flatten()
            else {
                return;
            };
            sent += batch.deltas.len();
            self.send_until_acked(shard, &mut outbox, batch).await;
        }
    }

    /// Sends the batch a cut-off send left unacknowledged, if any, until the store
    /// acknowledges it: it goes out before anything newer.
    pub(super) async fn resend_unacked(&self, shard: ShardId, outbox: &mut Outbox) {
        if let Some(batch) = outbox.unacked.take() {
            self.send_until_acked(shard, outbox, batch).await;
        }
    }

    /// Whether `shard` has at least `batch_size_limit` keys pending: a backlog.
    fn full_batch_waiting(&self, shard: ShardId) -> bool {
        self.buffer.pending_keys(shard) >= self.config.batch_size_limit
    }

    /// Moves a batch of the shard's pending deltas (see `drain_pending`) into a new batch,
    /// in flight from now on.
    fn take_pending(&self, shard: ShardId, outbox: &mut Outbox) -> Option<Batch> {
        if self.buffer.pending_keys(shard) == 0 {
            return None;
        }
        let mut in_flight = self.shards[shard].in_flight_mut();
        let taken = self.drain_pending(shard, outbox.last_seq);
        if taken.is_empty() {
            return None;
        }
        let deltas = taken.iter().map(|(k, v)| (k.clone(), *v)).collect();
        let batch = outbox.next_batch(self.instance, deltas);
        in_flight.seq = batch.id.seq;
        in_flight.deltas = Some(taken);
        Some(batch)
    }

    /// Applies `batch`, retrying it unchanged with capped, jittered exponential backoff
    /// until the store acknowledges it. If this future is dropped mid-way, the guard puts
    /// the batch back in `outbox.unacked` so the next send repeats the same id.
    pub(super) async fn send_until_acked(&self, shard: ShardId, outbox: &mut Outbox, batch: Batch) {
        let mut guard = UnackedGuard {
            outbox,
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
            self.metrics.batch_attempted(started.elapsed());
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
        self.metrics.batch_failed();
        tracing::warn!(
            counter = %self.config.name,
            shard,
            node = %self.store.shard_name(shard),
            error.message = %message,
            "batch write failed; retrying the same batch"
        );
    }

    /// Makes an applied batch visible as stored: refresh the cached totals (all of them
    /// while a store read of the shard runs, see the `read` module's invariants), clear the
    /// in-flight set.
    ///
    /// Keys the store rejected (their value is not a count) keep their increments, held in
    /// the shard's quarantine; a held key the store took (its value was repaired) is
    /// released.
    ///
    /// The totals are cached before the shard's `in_flight` write lock is taken, not under
    /// it: a visit's record reads that lock, so whatever the acknowledgement does under it
    /// stalls the shard's visits, and caching a batch of 1,000 keys (50,000 on the embedded
    /// store) took milliseconds to hundreds of them under load. Cached early, an entry says
    /// it includes this batch (its `seq`), so a read while the batch is still in flight
    /// leaves the in-flight delta out ([`super::InFlight::delta`]) and counts it once; a
    /// read-through whose answer predates the batch does not replace the entry
    /// (`cache_unless_newer`). The batch's map is freed after the lock is released.
    fn acknowledge(&self, shard: ShardId, batch: &Batch, applied: &Applied) {
        let state = &self.shards[shard];
        // Loaded after the store applied the batch: a read counted later asks the store
        // after that, so it needs no cache entry from here.
        let cache_all = state.reading.load(std::sync::atomic::Ordering::SeqCst) > 0;
        // Each key's rejection, if any; nothing allocated in the common case of none.
        let mut rejected_at = Vec::new();
        if !applied.rejected.is_empty() {
            rejected_at = vec![None; batch.deltas.len()];
            for key in &applied.rejected {
                rejected_at[key.index] = Some(key);
            }
        }
        let rejected = |i: usize| rejected_at.get(i).copied().flatten();
        for (i, ((key, _), total)) in batch.deltas.iter().zip(&applied.totals).enumerate() {
            if rejected(i).is_none() && (cache_all || self.cache.contains_key(&**key)) {
                self.cache_unless_newer(
                    key.clone(),
                    CacheEntry {
                        value: *total,
                        seq: batch.id.seq,
                    },
                );
            }
        }
        // Buffer places this batch gives back: one per key written, one per rejected key
        // already held under a place of its own.
        let (mut freed, mut freed_bytes) = (0, 0);
        let (mut keys_written, mut increments) = (0_u64, 0_u64);
        let mut in_flight = state.in_flight_mut();
        {
            let mut held = lock(&state.quarantine);
            for (i, (key, delta)) in batch.deltas.iter().enumerate() {
                if let Some(why) = rejected(i) {
                    if self.hold(shard, &mut held, key, *delta, why) {
                        freed += 1;
                        freed_bytes += PendingBytes::cost(key.len());
                    }
                    continue;
                }
                self.release_if_rechecked(&mut held, key, *delta);
                freed += 1;
                freed_bytes += PendingBytes::cost(key.len());
                keys_written += 1;
                increments += delta;
            }
        }
        let sent = in_flight.deltas.take();
        in_flight.acked_seq = batch.id.seq;
        drop(in_flight);
        drop(sent);
        *lock(&state.last_error) = None;
        *lock(&state.last_written) = Some(std::time::SystemTime::now());
        self.forget_keys(shard, freed, freed_bytes);
        let bytes: usize = batch.deltas.iter().map(|(key, _)| key.len()).sum();
        self.metrics
            .batch_acknowledged(batch.deltas.len(), bytes, keys_written, increments);
    }
}
