//! Group commit: the batches of buckets one primary serves, sent within [`LINGER`] of one
//! another, go to it together as one pipeline on one connection: a call of the combined
//! batch script per [`MAX_KEYS`] keys, then one `WAIT`.
//!
//! Each bucket has its own flusher (a shard of the counter) and sends a batch every batch
//! interval, so a hot set of 100 pages keeps about 95 of the 1,024 buckets busy: sent one
//! by one, that is 95 script calls and 95 `WAIT`s per interval where standalone nodes
//! take three calls. Together, a primary takes one call and one `WAIT` per interval. The
//! flushers of a primary's buckets stay together: they all wake within [`LINGER`], and
//! their batches are acknowledged at the same moment, so they sleep the same interval.
//!
//! Every batch keeps its own mark and its own reply, applied exactly as alone. Whatever
//! goes wrong with the combined call as a whole (an error reply such as `MOVED` or a key
//! the node does not serve, a lost connection, a node that cannot run the combined
//! script), each of its batches is sent again on its own through the single-bucket path
//! ([`Outcome::Alone`]), which follows redirections; the batches the combined call did
//! apply are answered there as replays by their marks. A `WAIT` that falls short fails
//! every batch of the pipeline ([`Outcome::NotReplicated`]), and the counter retries each.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use redis::{ServerErrorKind, Value};
use tokio::sync::oneshot;

use super::Shared;
use super::buckets::Bucket;
use crate::error::Error;
use crate::layout::{COMBINED_BATCH_SCRIPT, ScriptCall};
use crate::lock;

/// The batches for a primary go once none has come for this long (or [`MAX_LINGER`] after
/// the first). A batch's write is not on any visit's path (visits are answered from
/// memory), so milliseconds here cost nothing a client sees; long enough that a flusher
/// descheduled on a busy machine still joins its primary's write.
pub(super) const LINGER: Duration = Duration::from_millis(10);

/// Longest a batch waits for others, however many keep coming.
const MAX_LINGER: Duration = Duration::from_millis(50);

/// The batches waiting for one primary's next combined write.
#[derive(Default)]
pub(super) struct Queue {
    waiting: Vec<Waiting>,
    /// When the last of them came.
    last: Option<Instant>,
}

/// Keys per combined call at most. A script blocks the node while it runs; past this, the
/// batches go as several calls in the same pipeline, under the same `WAIT`.
const MAX_KEYS: usize = 8_192;

/// A batch waiting for its primary's combined write.
pub(super) struct Waiting {
    call: Arc<ScriptCall>,
    reply: oneshot::Sender<Outcome>,
}

/// What became of a batch sent with others.
pub(super) enum Outcome {
    /// The node that ran the combined call, and this batch's own reply to it (a
    /// [`BATCH_SCRIPT`](crate::layout::BATCH_SCRIPT) reply, or an error reply of its own),
    /// confirmed by the `WAIT`.
    Reply(&'static str, Value),
    /// The batch's reply came, but the `WAIT` after it counted `acked` replicas, fewer
    /// than wanted.
    NotReplicated {
        /// The primary.
        node: &'static str,
        /// Replicas the `WAIT` counted.
        acked: u64,
        /// Replicas wanted.
        wanted: usize,
    },
    /// No connection of the primary became free in time.
    Busy(&'static str),
    /// Send it on its own.
    Alone,
}

/// Queues `call` (a batch of `bucket`) for its primary's next combined write and waits for
/// the outcome. A batch whose primary is unknown, or whose write cannot be sent yet, goes
/// alone, where the single-bucket path answers why.
pub(super) async fn submit(
    shared: &Arc<Shared>,
    bucket: &Bucket,
    call: Arc<ScriptCall>,
) -> Outcome {
    if shared.combine_unsupported.load(Ordering::Relaxed) {
        return Outcome::Alone;
    }
    let Ok(wait) = shared.wait_replicas(bucket) else {
        return Outcome::Alone;
    };
    let name = match shared.primary(bucket) {
        Ok((primary, replicas)) if replicas >= wait && !primary.name.is_empty() => {
            shared.intern(&primary.name)
        }
        _ => return Outcome::Alone,
    };
    let (reply, outcome) = oneshot::channel();
    let first = {
        let mut queues = lock(&shared.combining);
        let queue = queues.entry(name).or_default();
        queue.waiting.push(Waiting { call, reply });
        queue.last = Some(Instant::now());
        queue.waiting.len() == 1
    };
    if first {
        // A task of its own: the batches of others must not depend on this caller staying.
        tokio::spawn(send_together(Arc::clone(shared), name, wait));
    }
    outcome.await.unwrap_or(Outcome::Alone)
}

/// Once no batch for `name` has come for [`LINGER`] (or [`MAX_LINGER`] after the first),
/// sends every batch queued for it and answers each.
async fn send_together(shared: Arc<Shared>, name: &'static str, wait: usize) {
    let started = Instant::now();
    let mut pause = LINGER;
    loop {
        tokio::time::sleep(pause).await;
        let last = lock(&shared.combining)
            .get(name)
            .and_then(|queue| queue.last);
        let quiet = last.map_or(LINGER, |last| last.elapsed());
        if quiet >= LINGER || started.elapsed() >= MAX_LINGER {
            break;
        }
        pause = LINGER - quiet;
    }
    let waiting = lock(&shared.combining)
        .remove(name)
        .map(|queue| queue.waiting)
        .unwrap_or_default();
    let outcomes = if waiting.len() < 2 {
        // Nothing to combine with: the single-bucket path costs the same.
        waiting.iter().map(|_| Outcome::Alone).collect()
    } else {
        send(&shared, name, wait, &waiting).await
    };
    for (waiting, outcome) in waiting.into_iter().zip(outcomes) {
        // A caller that stopped waiting has nothing to be told.
        let _ = waiting.reply.send(outcome);
    }
}

/// The pipeline for `waiting` on `name`: its outcomes, one per batch, in order.
async fn send(
    shared: &Shared,
    name: &'static str,
    wait: usize,
    waiting: &[Waiting],
) -> Vec<Outcome> {
    let all = |outcome: &dyn Fn() -> Outcome| waiting.iter().map(|_| outcome()).collect::<Vec<_>>();
    let (_lane, node, mut conn) = match shared.write_connection(name, "apply").await {
        Ok(connection) => connection,
        Err(Error::Busy { .. }) => return all(&|| Outcome::Busy(name)),
        Err(_) => return all(&|| Outcome::Alone),
    };
    let groups = groups(waiting.iter().map(|w| w.call.key_count()));
    let calls: Vec<ScriptCall> = groups
        .iter()
        .map(|group| ScriptCall::combine(waiting[group.clone()].iter().map(|w| &*w.call)))
        .collect();
    let wait_ms = u64::try_from(shared.config.wait_timeout().as_millis()).unwrap_or(u64::MAX);
    let mut replies = Vec::new();
    for eval in [false, true] {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for call in &calls {
            pipe.add_command(if eval {
                call.eval(COMBINED_BATCH_SCRIPT)
            } else {
                call.evalsha(&shared.combined_script)
            });
        }
        if wait > 0 {
            pipe.cmd("WAIT").arg(wait).arg(wait_ms);
        }
        replies = match node.send::<Vec<Value>>(&mut conn, "apply", &pipe).await {
            Ok(replies) => replies,
            Err(_) => return all(&|| Outcome::Alone),
        };
        let unknown = replies.iter().take(calls.len()).any(|reply| {
            matches!(reply, Value::ServerError(e) if e.kind() == Some(ServerErrorKind::NoScript))
        });
        if !unknown {
            break;
        }
    }
    let mut replies = replies.into_iter();
    let mut outcomes = Vec::with_capacity(waiting.len());
    for group in &groups {
        match replies.next() {
            Some(Value::Array(items)) if items.len() == group.len() => {
                outcomes.extend(items.into_iter().map(|item| Outcome::Reply(name, item)));
            }
            other => {
                if let Some(Value::ServerError(error)) = &other {
                    note_failure(shared, name, error);
                }
                outcomes.extend(group.clone().map(|_| Outcome::Alone));
            }
        }
    }
    if wait > 0 {
        let acked = match replies.next() {
            Some(Value::Int(n)) => u64::try_from(n).unwrap_or(0),
            _ => 0,
        };
        if acked < wait as u64 {
            for outcome in &mut outcomes {
                if matches!(outcome, Outcome::Reply(..)) {
                    *outcome = Outcome::NotReplicated {
                        node: name,
                        acked,
                        wanted: wait,
                    };
                }
            }
        }
    }
    metrics::counter!("tally_redis_cluster_combined_writes_total", "node" => name).increment(1);
    metrics::counter!("tally_redis_cluster_combined_batches_total", "node" => name)
        .increment(waiting.len() as u64);
    outcomes
}

/// What a combined call that failed as a whole tells the store: a slot map to read again,
/// or a node that cannot run the combined script at all (before Redis 7.0: no script
/// flags), after which every batch goes alone.
fn note_failure(shared: &Shared, name: &str, error: &redis::ServerError) {
    let details = error.details().unwrap_or_default();
    if details.contains("compiling script") || details.contains("shebang") {
        if !shared.combine_unsupported.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                node = name,
                error = %details,
                "this node cannot run the combined batch script (script flags need Redis 7.0+); every bucket's batch now goes on its own"
            );
        }
    } else {
        tracing::debug!(node = name, error = %error, "a combined write failed; its batches go on their own");
        shared.mark_stale();
    }
}

/// Consecutive runs of batches (by their key counts) of at most [`MAX_KEYS`] keys each, a
/// larger batch alone in its run.
fn groups(keys: impl Iterator<Item = usize>) -> Vec<Range<usize>> {
    let mut groups = Vec::new();
    let (mut start, mut in_group, mut len) = (0, 0, 0);
    for (i, count) in keys.enumerate() {
        if i > start && in_group + count > MAX_KEYS {
            groups.push(start..i);
            start = i;
            in_group = 0;
        }
        in_group += count;
        len = i + 1;
    }
    if len > start {
        groups.push(start..len);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_hold_at_most_max_keys_and_keep_order() {
        assert_eq!(groups([10, 20, 30].into_iter()), vec![0..3]);
        assert_eq!(
            groups([MAX_KEYS - 5, 5, 1, MAX_KEYS + 3, 2].into_iter()),
            vec![0..2, 2..3, 3..4, 4..5]
        );
        assert_eq!(groups(std::iter::empty()), Vec::<Range<usize>>::new());
    }
}
