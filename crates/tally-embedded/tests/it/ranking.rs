//! The ranking index against a sorted tally, on data with long runs of ties: `top`,
//! `count_at_least`, `window`, and every page of tally-stats' ranking, deep pages included.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tally_counter::{Window, WindowRead, rank_order};
use tally_embedded::EmbeddedStore;
use tally_stats::{Page, StatsTracker, UrlCount, WINDOW_FROM_OFFSET};

use crate::support::{Spy, TestResult, batch, fast_counter, open};

const KEYS: usize = 6_000;

/// The count of key `i`: runs of 3,000 keys at 1, 1,200 at 7 and 600 at 250, 600 keys
/// spread over 500 counts, and 600 distinct counts above 1,000.
fn count_of(i: usize) -> u64 {
    match i % 10 {
        0..=4 => 1,
        5 | 6 => 7,
        7 => 250,
        8 => 3 + (i as u64 * 37) % 500,
        _ => 1_000 + i as u64,
    }
}

fn url(i: usize) -> String {
    // Not in index order, so a run's keys are not in the order they were written.
    format!("/api/u/{:05}/", (i * 7_919) % 100_000)
}

/// Writes the data set into `stats` in batches of 1,000 keys, each count in two parts
/// written by different batches so keys move in the index, plus keys written and reset.
/// Returns the expected tally.
async fn fill(stats: &EmbeddedStore) -> BTreeMap<String, u64> {
    let mut tally = BTreeMap::new();
    let mut seq = 0;
    for part in 0..2 {
        for chunk in (0..KEYS).collect::<Vec<_>>().chunks(1_000) {
            let deltas: Vec<(String, u64)> = chunk
                .iter()
                .map(|&i| {
                    let count = count_of(i);
                    let first = count / 2;
                    (url(i), if part == 0 { first } else { count - first })
                })
                .filter(|(_, delta)| *delta > 0)
                .collect();
            let deltas: Vec<(&str, u64)> = deltas.iter().map(|(k, d)| (k.as_str(), *d)).collect();
            seq += 1;
            stats
                .apply(0, &batch(1, seq, &deltas))
                .await
                .expect("batch");
        }
    }
    for i in 0..KEYS {
        tally.insert(url(i), count_of(i));
    }
    seq += 1;
    stats
        .apply(
            0,
            &batch(1, seq, &[("/api/gone/", 9), ("/api/gone/too/", 1)]),
        )
        .await
        .expect("batch");
    stats.reset(0, "/api/gone/").await.expect("reset");
    stats.reset(0, "/api/gone/too/").await.expect("reset");
    tally
}

fn ranked(tally: &BTreeMap<String, u64>) -> Vec<(String, u64)> {
    let mut ranked: Vec<(String, u64)> = tally.iter().map(|(k, v)| (k.clone(), *v)).collect();
    ranked.sort_by(rank_order);
    ranked
}

fn window_of(ranked: &[(String, u64)], window: Window) -> WindowRead {
    let low = window.low.min(window.high);
    let at = |count: u64, run: usize| -> Vec<(String, u64)> {
        ranked
            .iter()
            .filter(|(_, v)| *v == count)
            .take(run)
            .cloned()
            .collect()
    };
    WindowRead {
        above: ranked.iter().filter(|(_, v)| *v > window.high).count() as u64,
        below: ranked.iter().filter(|(_, v)| *v < low).count() as u64,
        at_high: at(window.high, window.high_run),
        between: ranked
            .iter()
            .filter(|(_, v)| *v > low && *v < window.high)
            .cloned()
            .collect(),
        at_low: if low < window.high {
            at(low, window.low_run)
        } else {
            Vec::new()
        },
    }
}

#[tokio::test]
async fn top_counts_and_windows_agree_with_a_sorted_tally() -> TestResult {
    let dir = tempfile::tempdir()?;
    let stats = open(dir.path()).ranked();
    let ranked = ranked(&fill(&stats).await);

    for limit in [0, 1, 7, 599, 600, 601, 1_200, 3_000, KEYS, KEYS + 10] {
        let want = &ranked[..limit.min(ranked.len())];
        assert_eq!(stats.top(0, limit).await?, want, "top {limit}");
    }

    let mut thresholds: Vec<u64> = (0..=1_100).collect();
    thresholds.extend([6_999, 7_000, 7_001, u64::MAX]);
    let counts = stats.count_at_least(0, &thresholds).await?;
    for (threshold, count) in thresholds.iter().zip(counts) {
        let want = ranked.iter().filter(|(_, v)| v >= threshold).count() as u64;
        assert_eq!(count, want, "at least {threshold}");
    }

    let values = [0, 1, 2, 7, 8, 250, 251, 1_000, 1_009, 6_999, 10_000];
    for high in values {
        for low in values {
            for (high_run, low_run) in [(0, 0), (1, 5), (700, 2_000), (usize::MAX, usize::MAX)] {
                let window = Window {
                    high,
                    low,
                    high_run,
                    low_run,
                };
                assert_eq!(
                    stats.window(0, window).await?,
                    window_of(&ranked, window),
                    "{window:?}"
                );
            }
        }
    }
    Ok(())
}

#[tokio::test]
async fn every_page_of_the_stats_ranking_matches_the_sorted_tally() -> TestResult {
    let dir = tempfile::tempdir()?;
    let stats = open(dir.path()).ranked();
    let ranked = ranked(&fill(&stats).await);
    let spy = Spy::new(stats);
    let tracker = StatsTracker::new(spy.clone(), fast_counter(), Duration::from_secs(5))?;

    // Offsets from 1,000 on are read through windows.
    const { assert!(WINDOW_FROM_OFFSET <= 1_000) };
    let offsets = [
        0, 1, 999, 1_000, 1_001, 1_199, 2_999, 3_000, 4_321, 5_990, 5_999, 6_000, 9_000,
    ];
    for offset in offsets {
        for limit in [1, 10, 100, 1_000] {
            let page = tracker.ranking(Page { limit, offset }).await?;

            let want: Vec<UrlCount> = ranked
                .iter()
                .skip(offset)
                .take(limit)
                .map(|(url, count)| UrlCount {
                    count: *count,
                    url: url.clone(),
                })
                .collect();
            assert_eq!(page, want, "offset {offset} limit {limit}");
        }
    }
    assert!(
        spy.windows.load(Ordering::Relaxed) > 0,
        "deep pages were read through windows"
    );
    tracker.shutdown(Duration::from_secs(5)).await;
    Ok(())
}
