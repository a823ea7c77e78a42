//! `StatsTracker`: counting through the batching core, and the exact merged ranking.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::FutureExt as _;
use futures::future::{BoxFuture, Shared, WeakShared};
use tally_counter::{Counter, CounterConfig, RankedStore, ShardId, ShutdownReport, rank_order};
use tokio::sync::Semaphore;
use tokio_util::task::AbortOnDropHandle;

use crate::error::{Error, Result};
use crate::path::UrlPath;
use crate::window::{self, ShardFailure, WINDOW_FROM_OFFSET, on_every_shard};

/// Default number of entries `/stats/` returns.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest accepted `limit`.
pub const MAX_LIMIT: usize = 10_000;
/// Largest accepted `offset`. Every shard is asked for `offset + limit` entries, so the
/// offset is bounded to keep one request's cost bounded.
pub const MAX_OFFSET: usize = 100_000;

/// One page of the ranking.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Page {
    /// Entries to return, 1..=[`MAX_LIMIT`].
    pub limit: usize,
    /// Entries to skip first, 0..=[`MAX_OFFSET`].
    pub offset: usize,
}

impl Default for Page {
    fn default() -> Self {
        Self {
            limit: DEFAULT_LIMIT,
            offset: 0,
        }
    }
}

impl Page {
    /// Parses the `limit` and `offset` query parameters (absent: the defaults).
    ///
    /// # Errors
    /// [`Error::InvalidLimit`] / [`Error::InvalidOffset`] for a value that is not a whole
    /// number in range.
    pub fn parse(limit: Option<&str>, offset: Option<&str>) -> Result<Self> {
        let limit = match limit {
            None => DEFAULT_LIMIT,
            Some(raw) => raw
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| Error::InvalidLimit {
                    value: raw.to_owned(),
                    max: MAX_LIMIT,
                })?,
        };
        let offset = match offset {
            None => 0,
            Some(raw) => raw
                .parse::<usize>()
                .ok()
                .filter(|n| *n <= MAX_OFFSET)
                .ok_or_else(|| Error::InvalidOffset {
                    value: raw.to_owned(),
                    max: MAX_OFFSET,
                })?,
        };
        Ok(Self { limit, offset })
    }
}

/// One ranked URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UrlCount {
    /// Requests counted for it.
    pub count: u64,
    /// The path as received, without query string.
    pub url: String,
}

/// At most this many rankings are merged at once by one tracker.
///
/// A merge asks every shard for up to `offset + limit` entries (110,000 at the bounds), so
/// its cost is set by the store's answer sizes; bounding how many run at once bounds the
/// memory, the store connections and the store time the rankings take, whatever the
/// request rate. `tally-redis` gives ranking reads connections of their own as well, so
/// merges never take those of batch writes and health pings.
pub const MAX_CONCURRENT_MERGES: usize = 2;

/// How long a ranking waits for one of the [`MAX_CONCURRENT_MERGES`] slots before it gives
/// up with [`Error::Busy`].
pub const MERGE_WAIT: Duration = Duration::from_secs(1);

/// Counts requests by path into a [`RankedStore`] through a [`Counter`], and ranks them.
///
/// Recording is an in-memory increment (no store round trip); the counter batches the
/// writes like any other counts. Rankings are bounded: see [`StatsTracker::ranking`].
#[derive(Debug)]
pub struct StatsTracker<S: RankedStore> {
    counter: Counter<S>,
    flush_timeout: Duration,
    gate: Arc<Gate>,
}

impl<S: RankedStore> Clone for StatsTracker<S> {
    /// Clones share one counter and one bound on merges (cheap).
    fn clone(&self) -> Self {
        Self {
            counter: self.counter.clone(),
            flush_timeout: self.flush_timeout,
            gate: Arc::clone(&self.gate),
        }
    }
}

/// A merge's outcome, shared by every request waiting on it (so it must be `Clone`).
type Merged = std::result::Result<Arc<Vec<UrlCount>>, Failure>;
/// A merge every request for its page can await.
type SharedMerge = Shared<BoxFuture<'static, Merged>>;
/// The merges waiting for a slot: page → (merge id, the merge).
type Queued = HashMap<Page, (u64, WeakShared<BoxFuture<'static, Merged>>)>;

/// Why a shared merge gave no ranking; each waiter gets it as an [`Error`].
#[derive(Clone, Debug)]
enum Failure {
    Busy,
    Unavailable {
        shard: ShardId,
        name: String,
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    Stopped(Arc<str>),
}

impl Failure {
    fn into_error(self) -> Error {
        match self {
            Self::Busy => Error::Busy {
                merges: MAX_CONCURRENT_MERGES,
                waited: MERGE_WAIT,
            },
            Self::Unavailable {
                shard,
                name,
                source,
            } => Error::ShardUnavailable {
                shard,
                name,
                source,
            },
            Self::Stopped(reason) => Error::MergeStopped {
                reason: reason.to_string(),
            },
        }
    }
}

/// The bound on concurrent merges, and the merges asked for but not started yet.
#[derive(Debug)]
struct Gate {
    slots: Arc<Semaphore>,
    /// Merges waiting for a slot, by page: a request for the same page joins one of these
    /// rather than queueing a merge of its own. A merge leaves this map when it starts, so
    /// whoever joins it arrived before it started. Weak: when every request waiting on a
    /// merge has gone, the merge is dropped, which cancels it.
    /// A `std::sync::Mutex`: held to look up or insert, never across `.await`.
    queued: Mutex<Queued>,
    next_id: AtomicU64,
    /// Where merges run: the runtime the tracker was made on, where the store's
    /// connections live.
    runtime: tokio::runtime::Handle,
}

impl Gate {
    fn queued(&self) -> MutexGuard<'_, Queued> {
        // Plain data: a panic elsewhere cannot leave it inconsistent.
        self.queued.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<S: RankedStore> StatsTracker<S> {
    /// A tracker writing to `store` with the counter tuned by `config`.
    ///
    /// The tracker never reads single counts, so its read cache is useless: give it a small
    /// `cache_capacity` (the cache holds batch totals otherwise). `flush_timeout` bounds how
    /// long [`StatsTracker::ranking`] waits for this instance's pending counts to be written.
    ///
    /// # Errors
    /// [`Error::Counter`] for an invalid config.
    ///
    /// # Panics
    /// Outside a tokio runtime (the counter's flushers and the merges run on it).
    pub fn new(store: S, config: CounterConfig, flush_timeout: Duration) -> Result<Self> {
        describe_metrics();
        Ok(Self {
            counter: Counter::new(store, config)?,
            flush_timeout,
            gate: Arc::new(Gate {
                slots: Arc::new(Semaphore::new(MAX_CONCURRENT_MERGES)),
                queued: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(0),
                runtime: tokio::runtime::Handle::current(),
            }),
        })
    }

    /// Counts one request for `path`.
    ///
    /// # Errors
    /// [`Error::Counter`] with [`tally_counter::Error::Overloaded`] when too many distinct
    /// paths are waiting to be written: the request was not counted.
    pub fn record(&self, path: &UrlPath) -> Result<()> {
        Ok(self.counter.increment(path.as_str(), 1)?)
    }

    /// The ranking page `page`: counts descending, then url ascending.
    ///
    /// A merge flushes this instance's pending counts first (waiting at most the flush
    /// timeout; past it the ranking shows what the store holds), then merges every shard's
    /// top `offset + limit` entries. The merge is exact because each URL lives on exactly
    /// one shard and shards break ties in the same order.
    ///
    /// Merges are bounded and shared:
    /// - at most [`MAX_CONCURRENT_MERGES`] run at once, on the runtime the tracker was
    ///   made on; a ranking that cannot start one within [`MERGE_WAIT`] fails with
    ///   [`Error::Busy`];
    /// - concurrent calls for the same page share one merge that started after each of
    ///   them was made, so no answer is older than its call;
    /// - dropping this future (a client that went away) cancels the merge once no other
    ///   call waits on it.
    ///
    /// # Errors
    /// [`Error::Busy`] as above; [`Error::ShardUnavailable`] when a shard does not answer.
    pub async fn ranking(&self, page: Page) -> Result<Vec<UrlCount>> {
        match self.join_or_queue(page).await {
            Ok(ranking) => Ok(Arc::unwrap_or_clone(ranking)),
            Err(failure) => {
                if matches!(failure, Failure::Busy) {
                    // Per call: every caller of a refused merge is refused.
                    metrics::counter!("tally_stats_rankings_refused_total").increment(1);
                }
                Err(failure.into_error())
            }
        }
    }

    /// The merge queued for `page`, or a new one.
    fn join_or_queue(&self, page: Page) -> SharedMerge {
        let mut queued = self.gate.queued();
        if let Some(merge) = queued.get(&page).and_then(|(_, weak)| weak.upgrade()) {
            metrics::counter!("tally_stats_rankings_joined_total").increment(1);
            return merge;
        }
        // Entries whose callers all went away (their merges cancelled).
        queued.retain(|_, (_, weak)| weak.upgrade().is_some());
        let id = self.gate.next_id.fetch_add(1, Ordering::Relaxed);
        let tracker = self.clone();
        let task = AbortOnDropHandle::new(
            self.gate
                .runtime
                .spawn(async move { tracker.merge_when_admitted(page, id).await }),
        );
        let merge = task
            .map(|joined| joined.unwrap_or_else(|e| Err(Failure::Stopped(e.to_string().into()))))
            .boxed()
            .shared();
        if let Some(weak) = merge.downgrade() {
            queued.insert(page, (id, weak));
        }
        merge
    }

    /// Waits for a merge slot (at most [`MERGE_WAIT`]), leaves the queue, and merges.
    async fn merge_when_admitted(self, page: Page, id: u64) -> Merged {
        let slot =
            tokio::time::timeout(MERGE_WAIT, Arc::clone(&self.gate.slots).acquire_owned()).await;
        {
            // Started (or given up): calls from now on queue a merge of their own.
            let mut queued = self.gate.queued();
            if queued
                .get(&page)
                .is_some_and(|(queued_id, _)| *queued_id == id)
            {
                queued.remove(&page);
            }
        }
        let Ok(Ok(_slot)) = slot else {
            return Err(Failure::Busy);
        };
        self.merge(page).await.map(Arc::new)
    }

    /// One merge, unbounded: flush, then the page, read around its counts (a deep page on
    /// a store that serves windows, see the `window` module) or from every shard's top
    /// `offset + limit`.
    async fn merge(&self, page: Page) -> std::result::Result<Vec<UrlCount>, Failure> {
        let _ = tokio::time::timeout(self.flush_timeout, self.counter.flush()).await;
        let store = self.counter.store();
        let unavailable = |(shard, source): ShardFailure| Failure::Unavailable {
            shard,
            name: store.shard_name(shard).to_owned(),
            source: Arc::from(source),
        };
        let windowed = page.offset >= WINDOW_FROM_OFFSET && store.serves_windows();
        let mut found = None;
        if windowed {
            found = window::page(store, page.offset, page.limit)
                .await
                .map_err(unavailable)?;
        }
        let read = match (windowed, found.is_some()) {
            (true, true) => "window",
            (true, false) => "window_fallback",
            (false, _) => "heads",
        };
        metrics::counter!("tally_stats_merges_total", "read" => read).increment(1);
        let entries = match found {
            Some(entries) => entries,
            None => {
                let wanted = page.offset + page.limit;
                let heads = on_every_shard(store, |shard| store.top(shard, wanted))
                    .await
                    .map_err(unavailable)?;
                let mut merged: Vec<(String, u64)> = heads.into_iter().flatten().collect();
                merged.sort_unstable_by(rank_order);
                merged
                    .into_iter()
                    .skip(page.offset)
                    .take(page.limit)
                    .collect()
            }
        };
        Ok(entries
            .into_iter()
            .map(|(url, count)| UrlCount { count, url })
            .collect())
    }

    /// The counter underneath (snapshots, store access).
    pub fn counter(&self) -> &Counter<S> {
        &self.counter
    }

    /// Writes what is pending within `deadline` and stops the counter.
    pub async fn shutdown(self, deadline: Duration) -> ShutdownReport {
        self.counter.shutdown(deadline).await
    }
}

/// Describes the tracker's own metrics (the counter describes its own).
fn describe_metrics() {
    metrics::describe_counter!(
        "tally_stats_merges_total",
        "ranking merges run, by how the page was read: window (around its counts), window_fallback (the window could not prove it; every shard's head read after), heads"
    );
    metrics::describe_counter!(
        "tally_stats_rankings_joined_total",
        "rankings that shared a merge queued for the same page"
    );
    metrics::describe_counter!(
        "tally_stats_rankings_refused_total",
        "rankings refused because the merges allowed at once were busy for MERGE_WAIT"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_defaults_and_bounds() {
        assert_eq!(
            Page::parse(None, None).unwrap(),
            Page {
                limit: 100,
                offset: 0
            }
        );
        assert_eq!(
            Page::parse(Some("10000"), Some("5")).unwrap(),
            Page {
                limit: 10_000,
                offset: 5
            }
        );
        for bad in ["0", "10001", "-1", "abc", "", "1.5"] {
            let err = Page::parse(Some(bad), None).unwrap_err();
            assert!(matches!(err, Error::InvalidLimit { .. }), "{bad}: {err}");
        }
        for bad in ["-1", "x", "100001"] {
            assert!(
                matches!(
                    Page::parse(None, Some(bad)),
                    Err(Error::InvalidOffset { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn invalid_limit_message_names_the_value_and_range() {
        let message = Page::parse(Some("abc"), None).unwrap_err().to_string();
        assert_eq!(
            message,
            "invalid limit \"abc\": expected a whole number from 1 to 10000"
        );
    }
}
