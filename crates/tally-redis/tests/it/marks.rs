//! High-water marks: they carry their time, old ones are removed, a live instance's never;
//! and nodes that may evict them are warned about.

use std::time::{Duration, Instant};

use tally_counter::{InstanceId, Store as _};
use tally_redis::{COUNTER_MARKS_KEY, Layout, RedisStore, URLS_MARKS_KEY, mark_field};
use tally_testkit::RedisNode;

use crate::support::{Logs, TestResult, batch, connect, eventually, fast_config};

/// Companion hash of [`COUNTER_MARKS_KEY`]: when the sweep first saw a mark without a time.
const LEGACY_SEEN: &str = "tally:applied:legacy-seen";

/// The node's clock in unix milliseconds.
fn node_time_ms(node: &RedisNode) -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
    let (secs, micros): (u64, u64) = node.query(&redis::cmd("TIME"))?;
    Ok(secs * 1000 + micros / 1000)
}

fn mark(node: &RedisNode, hash: &str, instance: u64) -> Option<String> {
    node.hget(hash, &mark_field(InstanceId::from_u64(instance), 0))
        .expect("HGET answers")
}

#[tokio::test]
async fn a_mark_holds_the_seq_and_the_nodes_time_of_the_last_batch() -> TestResult {
    let node = RedisNode::start()?;
    let store = connect(&node.url()).await;

    store.apply(0, &batch(1, 1, &[("k", 1)])).await?;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let before = node_time_ms(&node)?;
    store.apply(0, &batch(1, 2, &[("k", 1)])).await?;
    let after = node_time_ms(&node)?;

    let value = mark(&node, COUNTER_MARKS_KEY, 1).expect("a mark was written");
    let (seq, written) = value.split_once(':').expect("'{seq}:{unix ms}'");
    assert_eq!(seq, "2");
    let written: u64 = written.parse()?;
    assert!(
        (before..=after).contains(&written),
        "{written} not in {before}..={after}"
    );
    Ok(())
}

#[tokio::test]
async fn old_marks_are_removed_and_fresh_ones_kept() -> TestResult {
    const RETENTION: Duration = Duration::from_secs(2);
    let past_retention = RETENTION + Duration::from_millis(500);
    let node = RedisNode::start()?;
    let mut config = fast_config(&node.url());
    config.marks_retention = RETENTION;
    let visits = RedisStore::connect(config).await?;
    let stats = visits.with_layout(Layout::SortedSet);
    // Instance 1 writes in both layouts, then stops.
    visits.apply(0, &batch(1, 1, &[("a", 1)])).await?;
    stats.apply(0, &batch(1, 1, &[("/a/", 1)])).await?;
    tokio::time::sleep(past_retention).await;
    // Instance 2 writes now; so does an older tally, whose marks are bare sequences: one
    // that will stop writing, one that will keep writing.
    visits.apply(0, &batch(2, 1, &[("a", 1)])).await?;
    node.query::<()>(
        redis::cmd("HSET")
            .arg(COUNTER_MARKS_KEY)
            .arg("old-stops")
            .arg("3"),
    )?;
    node.query::<()>(
        redis::cmd("HSET")
            .arg(COUNTER_MARKS_KEY)
            .arg("old-writes")
            .arg("3"),
    )?;

    visits.sweep_marks().await?;

    assert_eq!(
        mark(&node, COUNTER_MARKS_KEY, 1),
        None,
        "old visit mark kept"
    );
    assert_eq!(mark(&node, URLS_MARKS_KEY, 1), None, "old stats mark kept");
    assert!(
        mark(&node, COUNTER_MARKS_KEY, 2).is_some(),
        "fresh mark removed"
    );
    assert_eq!(
        node.hget(COUNTER_MARKS_KEY, "old-stops")?.as_deref(),
        Some("3"),
        "a bare mark is kept, unchanged, until it has been seen for the retention"
    );
    assert!(node.hget(LEGACY_SEEN, "old-stops")?.is_some());

    // Half-way through the bare marks' retention, the older tally writes one of them again.
    tokio::time::sleep(past_retention / 2).await;
    node.query::<()>(
        redis::cmd("HSET")
            .arg(COUNTER_MARKS_KEY)
            .arg("old-writes")
            .arg("4"),
    )?;
    tokio::time::sleep(past_retention / 2).await;
    visits.apply(0, &batch(2, 2, &[("a", 1)])).await?;
    visits.sweep_marks().await?;

    assert_eq!(node.hget(COUNTER_MARKS_KEY, "old-stops")?, None);
    assert_eq!(node.hget(LEGACY_SEEN, "old-stops")?, None);
    assert_eq!(
        node.hget(COUNTER_MARKS_KEY, "old-writes")?.as_deref(),
        Some("4"),
        "a bare mark that changed is fresh"
    );
    assert!(
        mark(&node, COUNTER_MARKS_KEY, 2).is_some(),
        "fresh mark removed"
    );
    assert_eq!(node.get_u64("tally:v:a")?, Some(3));
    Ok(())
}

#[tokio::test]
async fn the_health_task_removes_old_marks_but_never_a_live_instances() -> TestResult {
    const RETENTION: Duration = Duration::from_millis(1500);
    const RUN: Duration = Duration::from_secs(5);
    let node = RedisNode::start()?;
    let mut config = fast_config(&node.url());
    config.marks_retention = RETENTION;
    let store = RedisStore::connect(config).await?;
    store.apply(0, &batch(1, 1, &[("gone", 1)])).await?;

    // Instance 2 writes a batch every 100 ms, through several sweeps of the health task;
    // before each, its previous mark must still be there.
    let started = Instant::now();
    let mut seq = 0;
    let mut longest_gap = Duration::ZERO;
    let mut last_write = Instant::now();
    while started.elapsed() < RUN {
        if seq > 0 {
            let value = mark(&node, COUNTER_MARKS_KEY, 2);
            let prefix = format!("{seq}:");
            assert!(
                value.as_deref().is_some_and(|v| v.starts_with(&prefix)),
                "the live instance's mark is {value:?} before batch {} (longest gap between its writes {longest_gap:?}, retention {RETENTION:?})",
                seq + 1
            );
        }
        seq += 1;
        let totals = store.apply(0, &batch(2, seq, &[("live", 1)])).await?;
        assert_eq!(totals, [seq], "batch {seq} was taken for a replay");
        longest_gap = longest_gap.max(last_write.elapsed());
        last_write = Instant::now();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gone = eventually(Duration::from_secs(30), || async {
        mark(&node, COUNTER_MARKS_KEY, 1).is_none()
    })
    .await;

    assert!(gone, "the health task kept a mark past its retention");
    Ok(())
}

#[tokio::test]
async fn a_node_that_may_evict_any_key_is_warned_about() -> TestResult {
    let logs = Logs::capture();
    let evicting = RedisNode::start()?;
    evicting.query::<()>(
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory-policy")
            .arg("allkeys-lru"),
    )?;
    let safe = RedisNode::start()?;
    safe.query::<()>(
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory-policy")
            .arg("volatile-lru"),
    )?;

    let _store = connect(&format!("{},{}", evicting.url(), safe.url())).await;

    let text = logs.text();
    let warnings: Vec<&str> = text
        .lines()
        .filter(|line| line.contains("WARN") && line.contains("maxmemory-policy"))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning expected; logs:\n{text}");
    let evicting_name = format!("127.0.0.1:{}", evicting.port());
    assert!(warnings[0].contains(&evicting_name), "{}", warnings[0]);
    assert!(warnings[0].contains("allkeys-lru"), "{}", warnings[0]);
    assert!(warnings[0].contains("noeviction"), "{}", warnings[0]);
    Ok(())
}

#[tokio::test]
async fn a_node_that_refuses_config_get_is_used_all_the_same() -> TestResult {
    let logs = Logs::capture();
    let node = RedisNode::start()?;
    node.query::<()>(
        redis::cmd("ACL")
            .arg("SETUSER")
            .arg("counter")
            .arg("on")
            .arg(">counter-pw")
            .arg("~*")
            .arg("&*")
            .arg("+@all")
            .arg("-config"),
    )?;

    let store = connect(&format!(
        "redis://counter:counter-pw@127.0.0.1:{}",
        node.port()
    ))
    .await;
    store.apply(0, &batch(1, 1, &[("k", 2)])).await?;

    assert!(store.shard_up(0));
    assert_eq!(node.get_u64("tally:v:k")?, Some(2));
    let text = logs.text();
    assert!(
        text.lines()
            .any(|l| l.contains("DEBUG") && l.contains("cannot read maxmemory-policy")),
        "{text}"
    );
    assert!(
        !text.contains("counter-pw"),
        "password in the logs:\n{text}"
    );
    Ok(())
}
