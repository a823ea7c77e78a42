//! Deep pages read around their own counts: the merge behind [`crate::StatsTracker::ranking`]
//! for an offset of [`WINDOW_FROM_OFFSET`] or more on a store that
//! [serves windows](tally_counter::RankedStore::serves_windows).
//!
//! Merging every shard's top `offset + limit` moves `shards * (offset + limit)` entries to
//! return `limit` (300,300 for `offset=100000&limit=100` on three nodes). Instead:
//!
//! 1. **Search.** `G(t)`, the number of keys valued at least `t` over all shards, is read
//!    with [`RankedStore::count_at_least`] (one index lookup per threshold). The value at
//!    global position `p` is the largest `t` with `G(t) > p`. A search with
//!    [`SEARCH_FANOUT`] thresholds per round finds the values at the page's first and last
//!    positions, `high` and `low`, in a few round trips.
//! 2. **Window.** Each shard reads, in one consistent step ([`RankedStore::window`]), how
//!    many keys it holds above `high` and below `low`, every key strictly between, and
//!    only the smallest keys at `high` and at `low` that the page can need.
//! 3. **Check.** The page is cut from the merged window, and kept only if the window
//!    proves it exact: the keys above `high` leave the page's first position inside the
//!    run at `high`, the runs read were long enough, and a short page has nothing below
//!    it. Writes between the steps can break that (a count rose past `high`); the caller
//!    then merges the full heads, so the answer is exact either way.
//!
//! The cost is then the runs of equal counts at the page's two ends, not its offset.

use tally_counter::{RankedStore, ShardId, Window, WindowRead, rank_order};

/// Offsets from which a page is read around its counts, when the store can.
pub const WINDOW_FROM_OFFSET: usize = 1_000;

/// Thresholds per searched position in one round of the search.
const SEARCH_FANOUT: u64 = 15;

/// A failed read: the shard and what the store reported.
pub(crate) type ShardFailure = (ShardId, tally_counter::StoreError);

/// Runs `read` on every shard at once; the answers in shard order, or the first failure.
pub(crate) async fn on_every_shard<S, T, F, Fut>(store: &S, read: F) -> Result<Vec<T>, ShardFailure>
where
    S: RankedStore,
    F: Fn(ShardId) -> Fut,
    Fut: std::future::Future<Output = Result<T, tally_counter::StoreError>>,
{
    let answers = futures::future::join_all((0..store.shard_count()).map(|shard| {
        let answer = read(shard);
        async move { (shard, answer.await) }
    }))
    .await;
    answers
        .into_iter()
        .map(|(shard, answer)| answer.map_err(|e| (shard, e)))
        .collect()
}

/// One searched position: the largest `t` in `lo..=hi` with `G(t) > position`.
#[derive(Clone, Copy, Debug)]
struct Search {
    position: u64,
    /// `G(lo) > position` (as last read).
    lo: u64,
    /// `G(hi + 1) <= position` (as last read).
    hi: u64,
    /// `G(hi + 1)`: the keys valued above the answer, as last read.
    above: u64,
}

impl Search {
    fn thresholds(&self) -> impl Iterator<Item = u64> + '_ {
        let span = self.hi - self.lo;
        let step = span.div_ceil(SEARCH_FANOUT).max(1);
        (1..=SEARCH_FANOUT)
            .map(move |i| self.lo.saturating_add(step.saturating_mul(i)))
            .take_while(move |t| *t <= self.hi)
    }

    fn narrow(&mut self, threshold: u64, keys: u64) {
        if threshold <= self.lo || threshold > self.hi {
            return;
        }
        if keys > self.position {
            self.lo = threshold;
        } else {
            self.hi = threshold - 1;
            self.above = keys;
        }
    }
}

/// `G(t)` for every threshold, summed over the shards.
async fn keys_at_least<S: RankedStore>(
    store: &S,
    thresholds: &[u64],
) -> Result<Vec<u64>, ShardFailure> {
    let per_shard = on_every_shard(store, |shard| store.count_at_least(shard, thresholds)).await?;
    Ok((0..thresholds.len())
        .map(|i| {
            per_shard
                .iter()
                .map(|counts| counts.get(i).copied().unwrap_or(0))
                .sum()
        })
        .collect())
}

/// The page `offset..offset + limit` of the ranking as `(key, value)` pairs, read around
/// its counts; `None` when writes during the read left the window unable to prove the page
/// exact (the caller merges the full heads instead).
pub(crate) async fn page<S: RankedStore>(
    store: &S,
    offset: usize,
    limit: usize,
) -> Result<Option<Vec<(String, u64)>>, ShardFailure> {
    // The highest value anywhere bounds the search; the number of keys, the last position.
    let heads = on_every_shard(store, |shard| store.top(shard, 1)).await?;
    let Some(max) = heads.iter().flatten().map(|(_, value)| *value).max() else {
        return Ok(Some(Vec::new()));
    };
    let total = keys_at_least(store, &[0]).await?[0];
    let (offset, limit) = (offset as u64, limit as u64);
    if total <= offset {
        return Ok(Some(Vec::new()));
    }
    let last = (offset + limit).min(total) - 1;
    let mut searches = [offset, last].map(|position| Search {
        position,
        lo: 0,
        hi: max,
        above: 0,
    });
    loop {
        let mut thresholds: Vec<u64> = searches.iter().flat_map(Search::thresholds).collect();
        if thresholds.is_empty() {
            break;
        }
        thresholds.sort_unstable();
        thresholds.dedup();
        let keys = keys_at_least(store, &thresholds).await?;
        for search in &mut searches {
            for (threshold, keys) in thresholds.iter().zip(&keys) {
                search.narrow(*threshold, *keys);
            }
        }
    }
    let [first, end] = searches;
    let (high, low) = (first.lo, end.lo.min(first.lo));
    let skip_read = offset.saturating_sub(first.above);
    let window = Window {
        high,
        low,
        high_run: usize::try_from(skip_read + limit).unwrap_or(usize::MAX),
        low_run: usize::try_from(limit).unwrap_or(usize::MAX),
    };
    let reads = on_every_shard(store, |shard| store.window(shard, window)).await?;
    Ok(assemble(reads, offset, limit, first.above))
}

/// The page from the shards' windows, or `None` when they do not prove it exact.
fn assemble(
    reads: Vec<WindowRead>,
    offset: u64,
    limit: u64,
    above_searched: u64,
) -> Option<Vec<(String, u64)>> {
    let above: u64 = reads.iter().map(|r| r.above).sum();
    let below: u64 = reads.iter().map(|r| r.below).sum();
    // More keys above `high` than the search saw: the runs at `high` were read too short.
    // Any above `offset`: the page no longer starts inside the run at `high`.
    if above < above_searched || above > offset {
        return None;
    }
    let skip = usize::try_from(offset - above).ok()?;
    let sorted = |part: fn(&mut WindowRead) -> Vec<(String, u64)>, reads: &mut [WindowRead]| {
        let mut merged: Vec<(String, u64)> = reads.iter_mut().flat_map(part).collect();
        merged.sort_unstable_by(rank_order);
        merged
    };
    let mut reads = reads;
    let at_high = sorted(|r| std::mem::take(&mut r.at_high), &mut reads);
    if at_high.len() <= skip {
        return None;
    }
    let between = sorted(|r| std::mem::take(&mut r.between), &mut reads);
    let at_low = sorted(|r| std::mem::take(&mut r.at_low), &mut reads);
    let limit = usize::try_from(limit).ok()?;
    let page: Vec<(String, u64)> = at_high
        .into_iter()
        .skip(skip)
        .chain(between)
        .chain(at_low)
        .take(limit)
        .collect();
    // A short page is the end of the ranking only if nothing lies below it.
    if page.len() < limit && below > 0 {
        return None;
    }
    Some(page)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tally_counter::{Batch, BatchId, InstanceId, Store as _};
    use tally_redis::{Layout, RedisConfig, RedisStore};
    use tally_testkit::RedisCluster;

    use super::*;

    fn read(above: u64, below: u64, at_high: &[(&str, u64)], at_low: &[(&str, u64)]) -> WindowRead {
        let owned = |v: &[(&str, u64)]| v.iter().map(|(k, c)| ((*k).to_owned(), *c)).collect();
        WindowRead {
            above,
            below,
            at_high: owned(at_high),
            between: Vec::new(),
            at_low: owned(at_low),
        }
    }

    #[test]
    fn a_window_that_cannot_prove_its_page_is_refused() {
        let run = [("a", 5), ("b", 5), ("c", 5)];
        // As searched: 2 above, the page (offset 3, limit 2) is b, c of the run at 5.
        let fine = assemble(vec![read(2, 0, &run, &[])], 3, 2, 2);
        assert_eq!(fine, Some(vec![("b".to_owned(), 5), ("c".to_owned(), 5)]));
        // A count rose past `high` since the search: the page starts above the run.
        assert_eq!(assemble(vec![read(4, 0, &run, &[])], 3, 2, 2), None);
        // Fewer above than searched: the runs read may be too short.
        assert_eq!(assemble(vec![read(1, 0, &run, &[])], 3, 2, 2), None);
        // The run ends before the page starts.
        assert_eq!(assemble(vec![read(0, 0, &run, &[])], 3, 2, 0), None);
        // A short page with keys below it.
        assert_eq!(assemble(vec![read(2, 1, &run, &[])], 3, 5, 2), None);
        // A short page at the end of the ranking.
        assert_eq!(
            assemble(vec![read(2, 0, &run, &[])], 3, 5, 2),
            Some(vec![("b".to_owned(), 5), ("c".to_owned(), 5)])
        );
    }

    /// `keys` distinct keys over three real nodes, values skewed with long runs of ties.
    async fn three_nodes(keys: u64) -> (RedisCluster, RedisStore, Vec<(String, u64)>) {
        let cluster = RedisCluster::start(3).expect("three redis-server nodes");
        let mut config = RedisConfig::from_urls(&cluster.urls()).expect("node URLs");
        config.layout = Layout::SortedSet;
        let store = RedisStore::connect(config)
            .await
            .expect("the store connects");
        let entries: Vec<(String, u64)> = (0..keys)
            .map(|i| {
                (
                    format!("/api/k/{:05}/", (i * 7_919) % 100_000),
                    1 + 2_000 / (i + 1),
                )
            })
            .collect();
        for shard in 0..store.shard_count() {
            let deltas: Vec<(Arc<str>, u64)> = entries
                .iter()
                .filter(|(key, _)| store.shard_of(key) == shard)
                .map(|(key, value)| (Arc::from(key.as_str()), *value))
                .collect();
            let batch = Batch {
                id: BatchId {
                    instance: InstanceId::from_u64(1),
                    seq: 1,
                },
                deltas,
            };
            store.apply(shard, &batch).await.expect("the batch applies");
        }
        let mut ranked = entries;
        ranked.sort_by(rank_order);
        (cluster, store, ranked)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deep_pages_read_around_their_counts_are_exact() {
        let (_cluster, store, ranked) = three_nodes(6_000).await;
        for offset in [1_000, 1_001, 2_345, 4_000, 5_990, 5_999, 6_000, 7_000] {
            for limit in [1, 7, 100, 3_000] {
                let want: Vec<(String, u64)> =
                    ranked.iter().skip(offset).take(limit).cloned().collect();
                let got = page(&store, offset, limit).await.expect("the nodes answer");
                assert_eq!(got, Some(want), "offset {offset}, limit {limit}");
            }
        }
    }
}
