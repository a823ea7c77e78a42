//! Integration tests of tally-stats on the embedded ranked store.

use std::collections::HashMap;
use std::time::Duration;

mod gate;

use proptest::prelude::*;
use tally_counter::{CounterConfig, MemoryStore};
use tally_stats::{Page, StatsTracker, UrlCount, UrlPath};

fn tracker(shards: usize) -> StatsTracker<MemoryStore> {
    let config = CounterConfig {
        name: "stats".into(),
        batch_interval: Duration::from_secs(3600),
        cache_capacity: 16,
        ..CounterConfig::default()
    };
    StatsTracker::new(MemoryStore::ranked(shards), config, Duration::from_secs(5)).unwrap()
}

fn record(stats: &StatsTracker<MemoryStore>, target: &str) {
    stats.record(&UrlPath::parse(target).unwrap()).unwrap();
}

/// Sorts an independent tally the way `/stats/` must.
fn expected(tally: &HashMap<String, u64>) -> Vec<UrlCount> {
    let mut want: Vec<UrlCount> = tally
        .iter()
        .map(|(url, count)| UrlCount {
            count: *count,
            url: url.clone(),
        })
        .collect();
    want.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.url.cmp(&b.url)));
    want
}

#[tokio::test]
async fn empty_stats_are_empty() {
    assert_eq!(tracker(3).ranking(Page::default()).await.unwrap(), vec![]);
}

#[tokio::test]
async fn walkthrough_of_the_original_service() {
    let stats = tracker(3);
    for target in [
        "/api/products/123/",
        "/api/users/456/",
        "/api/products/123/",
    ] {
        record(&stats, target);
    }

    let ranking = stats.ranking(Page::default()).await.unwrap();

    assert_eq!(
        ranking,
        vec![
            UrlCount {
                count: 2,
                url: "/api/products/123/".into()
            },
            UrlCount {
                count: 1,
                url: "/api/users/456/".into()
            },
        ]
    );
}

#[tokio::test]
async fn two_hundred_thousand_distinct_urls_rank_exactly() {
    let stats = tracker(3);
    let mut tally: HashMap<String, u64> = HashMap::new();
    for i in 0..200_000u64 {
        // A skewed but deterministic spread: a few hot URLs, a long tail of singles.
        let url = format!("/api/item/{}/", i % 50_000 + if i % 7 == 0 { 0 } else { i });
        record(&stats, &url);
        *tally.entry(url).or_default() += 1;
    }
    let want = expected(&tally);

    let top = stats
        .ranking(Page {
            limit: 10,
            offset: 0,
        })
        .await
        .unwrap();
    let page = stats
        .ranking(Page {
            limit: 25,
            offset: 1_000,
        })
        .await
        .unwrap();

    assert_eq!(top, want[..10]);
    assert_eq!(page, want[1_000..1_025]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn merged_ranking_equals_a_sorted_tally(
        hits in proptest::collection::vec(0u16..40, 1..300),
        limit in 1usize..20,
        offset in 0usize..30,
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let stats = tracker(3);
            let mut tally: HashMap<String, u64> = HashMap::new();
            for h in hits {
                let url = format!("/api/{h}/");
                record(&stats, &url);
                *tally.entry(url).or_default() += 1;
            }
            let want: Vec<UrlCount> = expected(&tally).into_iter().skip(offset).take(limit).collect();
            prop_assert_eq!(stats.ranking(Page { limit, offset }).await.unwrap(), want);
            Ok(())
        })?;
    }
}
