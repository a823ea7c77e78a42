//! The request-stats layout: one sorted set per node, exact totals, top-k per node.

use std::collections::HashMap;
use std::time::Duration;

use tally_counter::{Counter, Store as _};
use tally_redis::{Error, Layout, URLS_KEY};
use tally_testkit::{RedisCluster, RedisNode};

use crate::support::{TestResult, batch, connect, fast_counter};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zincrby_totals_are_exact_and_top_k_is_readable_per_node() -> TestResult {
    let cluster = RedisCluster::start(3)?;
    let stats = connect(&cluster.urls())
        .await
        .with_layout(Layout::SortedSet);
    let counter = Counter::new(stats.clone(), fast_counter())?;
    let mut expected: HashMap<String, u64> = HashMap::new();
    for i in 0..60_u64 {
        let url = format!("/api/products/{i}/");
        // Counts 1..=60, each distinct, so the ranking has no ties.
        for _ in 0..=i {
            counter.increment(&url, 1)?;
        }
        expected.insert(url, i + 1);
    }
    tokio::time::timeout(Duration::from_secs(10), counter.flush()).await?;

    for (url, &count) in &expected {
        let owner = stats.shard_of(url);
        assert_eq!(
            cluster.node(owner).zscore(URLS_KEY, url)?,
            Some(count as f64),
            "{url}"
        );
    }
    let mut members = 0;
    for shard in 0..cluster.len() {
        let mut on_node: Vec<(String, u64)> = expected
            .iter()
            .filter(|(url, _)| stats.shard_of(url) == shard)
            .map(|(url, &count)| (url.clone(), count))
            .collect();
        on_node.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        on_node.truncate(5);
        assert_eq!(stats.top(shard, 5).await?, on_node, "top 5 of node {shard}");
        members += stats.len(shard).await?;
    }
    assert_eq!(members, 60);
    Ok(())
}

#[tokio::test]
async fn top_orders_ties_by_member_ascending_and_cuts_ties_exactly() -> TestResult {
    let node = RedisNode::start()?;
    let stats = connect(&node.url()).await.with_layout(Layout::SortedSet);
    let deltas = [
        ("/api/a/", 2),
        ("/api/e/", 2),
        ("/api/c/", 2),
        ("/api/b/", 5),
        ("/api/d/", 2),
        ("/api/z/", 1),
    ];
    stats.apply(0, &batch(1, 1, &deltas)).await?;
    let owned = |v: &[(&str, u64)]| -> Vec<(String, u64)> {
        v.iter().map(|(u, c)| (u.to_string(), *c)).collect()
    };

    let all = stats.top(0, 10).await?;
    // The cut-off (3) falls inside the run of 2s: the smallest members of the run win,
    // which `ZREVRANGE` alone (reverse order for ties) would get wrong.
    let cut = stats.top(0, 3).await?;

    let want = [
        ("/api/b/", 5),
        ("/api/a/", 2),
        ("/api/c/", 2),
        ("/api/d/", 2),
        ("/api/e/", 2),
        ("/api/z/", 1),
    ];
    assert_eq!(all, owned(&want));
    assert_eq!(cut, owned(&want[..3]));
    assert!(stats.top(0, 0).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn top_and_the_one_step_script_agree_with_a_sorted_tally_at_every_cut() -> TestResult {
    let node = RedisNode::start()?;
    let stats = connect(&node.url()).await.with_layout(Layout::SortedSet);
    // 300 members over 12 counts: long runs of ties, so most cuts fall inside one. The
    // members' order is not their insertion order.
    let tally: Vec<(String, u64)> = (0..300u64)
        .map(|i| {
            (
                format!("/api/m/{:03}/", (i * 7919) % 1000),
                1 + (i * 31) % 12,
            )
        })
        .collect();
    let deltas: Vec<(&str, u64)> = tally.iter().map(|(m, c)| (m.as_str(), *c)).collect();
    stats.apply(0, &batch(1, 1, &deltas)).await?;
    let mut want = tally.clone();
    want.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));

    for limit in [1, 2, 24, 25, 26, 100, 299, 300, 301, 1000] {
        let expected = &want[..limit.min(want.len())];
        assert_eq!(stats.top(0, limit).await?, expected, "top, limit {limit}");
        assert_eq!(
            stats.top_by_script_only(0, limit).await?,
            expected,
            "script, limit {limit}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn sorted_set_reads_and_resets_go_through_the_same_script() -> TestResult {
    let node = RedisNode::start()?;
    let stats = connect(&node.url()).await.with_layout(Layout::SortedSet);
    let first = stats.apply(0, &batch(1, 1, &[("/api/a/", 2)])).await?;
    let replay = stats.apply(0, &batch(1, 1, &[("/api/a/", 2)])).await?;
    let read = stats
        .get(
            0,
            tally_counter::InstanceId::from_u64(1),
            &["/api/a/", "/api/none/"],
        )
        .await?;

    stats.reset(0, "/api/a/").await?;

    assert_eq!(first, [2]);
    assert_eq!(replay, [2]);
    assert_eq!(read.values, [2, 0]);
    assert_eq!(read.applied_seq, 1);
    assert_eq!(node.zscore(URLS_KEY, "/api/a/")?, None);
    assert_eq!(stats.len(0).await?, 0);
    Ok(())
}

#[tokio::test]
async fn ranked_reads_need_the_sorted_set_layout() -> TestResult {
    let node = RedisNode::start()?;
    let visits = connect(&node.url()).await;

    let err = visits.top(0, 10).await.unwrap_err();

    assert!(
        matches!(err, Error::WrongLayout { op: "top", .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("sorted-set"), "{err}");
    Ok(())
}
