//! `StatsTracker`: counting through the batching core, and the exact merged ranking.

use std::cmp::Ordering;
use std::time::Duration;

use tally_counter::{Counter, CounterConfig, RankedStore, ShutdownReport};

use crate::error::{Error, Result};
use crate::path::UrlPath;

/// Default number of entries `/stats/` returns.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest accepted `limit`.
pub const MAX_LIMIT: usize = 10_000;
/// Largest accepted `offset`. Every shard is asked for `offset + limit` entries, so the
/// offset is bounded to keep one request's cost bounded.
pub const MAX_OFFSET: usize = 100_000;

/// One page of the ranking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

/// The ranking order: count descending, then url ascending.
fn rank_order(a: &UrlCount, b: &UrlCount) -> Ordering {
    b.count.cmp(&a.count).then_with(|| a.url.cmp(&b.url))
}

/// Counts requests by path into a [`RankedStore`] through a [`Counter`], and ranks them.
///
/// Recording is an in-memory increment (no store round trip); the counter batches the
/// writes like any other counts.
#[derive(Debug)]
pub struct StatsTracker<S: RankedStore> {
    counter: Counter<S>,
    flush_timeout: Duration,
}

impl<S: RankedStore> Clone for StatsTracker<S> {
    /// Clones share one counter (cheap).
    fn clone(&self) -> Self {
        Self {
            counter: self.counter.clone(),
            flush_timeout: self.flush_timeout,
        }
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
    pub fn new(store: S, config: CounterConfig, flush_timeout: Duration) -> Result<Self> {
        Ok(Self {
            counter: Counter::new(store, config)?,
            flush_timeout,
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
    /// This instance's pending counts are flushed first (waiting at most the flush
    /// timeout; past it the ranking shows what the store holds), then every shard's top
    /// `offset + limit` entries are merged. The merge is exact because each URL lives on
    /// exactly one shard and shards break ties in the same order.
    ///
    /// # Errors
    /// [`Error::Counter`] when a shard does not answer.
    pub async fn ranking(&self, page: Page) -> Result<Vec<UrlCount>> {
        let _ = tokio::time::timeout(self.flush_timeout, self.counter.flush()).await;
        let store = self.counter.store();
        let wanted = page.offset + page.limit;
        let answers = futures::future::join_all(
            (0..store.shard_count())
                .map(|shard| async move { (shard, store.top(shard, wanted).await) }),
        )
        .await;
        let mut merged = Vec::new();
        for (shard, answer) in answers {
            let entries = answer.map_err(|source| {
                Error::Counter(tally_counter::Error::Store {
                    shard,
                    name: store.shard_name(shard).to_owned(),
                    source,
                })
            })?;
            merged.extend(
                entries
                    .into_iter()
                    .map(|(url, count)| UrlCount { count, url }),
            );
        }
        merged.sort_unstable_by(rank_order);
        Ok(merged
            .into_iter()
            .skip(page.offset)
            .take(page.limit)
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

    #[test]
    fn rank_order_is_count_desc_then_url_asc() {
        let mut v = [
            UrlCount {
                count: 1,
                url: "/api/b/".into(),
            },
            UrlCount {
                count: 2,
                url: "/api/z/".into(),
            },
            UrlCount {
                count: 1,
                url: "/api/a/".into(),
            },
        ];
        v.sort_by(rank_order);
        let urls: Vec<_> = v.iter().map(|u| u.url.as_str()).collect();
        assert_eq!(urls, ["/api/z/", "/api/a/", "/api/b/"]);
    }
}
