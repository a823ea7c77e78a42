//! Visitor sketches on Redis (`tally_redis::sketch`): a counter's waiting members go out as
//! one `PFADD` per key per round; a day's sketch expires after `subkey_ttl`; a reset
//! deletes the sketch with the count; a sketch key holding something that is not a
//! HyperLogLog drops its own members and holds nothing else.

use std::time::Duration;

use tally_counter::{Counter, CounterConfig, Error};
use tally_redis::RedisStore;
use tally_testkit::RedisCluster;

use crate::support::{TestResult, fast_config};

const DAY: &str = "p1\u{1f}2026-12-01";

/// A counter whose flushers never run on their own during the test.
fn quiet_config() -> CounterConfig {
    CounterConfig {
        batch_interval: Duration::from_secs(3_600),
        ..CounterConfig::default()
    }
}

fn pfadd_calls(nodes: &RedisCluster) -> u64 {
    nodes
        .node(0)
        .info_commandstats()
        .expect("INFO commandstats")
        .get("pfadd")
        .copied()
        .unwrap_or(0)
}

#[tokio::test]
async fn members_go_out_as_one_pfadd_per_key_per_round_and_days_expire() -> TestResult {
    let nodes = RedisCluster::start(1)?;
    let mut config = fast_config(&nodes.urls());
    config.subkey_ttl = Some(Duration::from_secs(1_000));
    let counter = Counter::new(RedisStore::connect(config).await?, quiet_config())?;
    let ids: Vec<String> = (0..5_000).map(|i| format!("v{i}")).collect();
    for id in &ids {
        for key in ["p1", DAY, "p2"] {
            counter.add_to_sketches(&[(key, id.as_bytes())])?;
        }
    }
    let before = pfadd_calls(&nodes);
    counter.flush().await;
    assert_eq!(pfadd_calls(&nodes) - before, 3, "one PFADD per key");
    assert_eq!(counter.snapshot().sketch_members_pending, 0);

    let estimates = counter.estimate_many(&["p1", DAY, "p2", "never"]).await?;
    let error = (estimates[0] as f64 - 5_000.0).abs() / 5_000.0;
    assert!(error < 0.02, "{estimates:?}");
    assert_eq!(estimates[0], estimates[1], "same ids, same estimate");
    assert_eq!(estimates[3], 0);

    let node = nodes.node(0);
    let ttl = |key: &str| -> i64 {
        node.query(redis::cmd("TTL").arg(format!("tally:u:{key}")))
            .expect("TTL answers")
    };
    assert!(
        (990..=1_000).contains(&ttl(DAY)),
        "the day's sketch expires"
    );
    assert_eq!(ttl("p1"), -1, "the page's sketch does not");

    // Adding the same ids again changes nothing; a reset deletes the sketch.
    for id in &ids[..100] {
        counter.add_to_sketches(&[("p1", id.as_bytes())])?;
    }
    assert_eq!(counter.estimate_many(&["p1"]).await?, [estimates[0]]);
    counter.reset("p1").await?;
    assert_eq!(counter.estimate_many(&["p1"]).await?, [0]);
    assert_eq!(
        node.query::<i64>(redis::cmd("EXISTS").arg("tally:u:p1"))?,
        0
    );
    Ok(())
}

#[tokio::test]
async fn a_sketch_that_is_not_a_hyperloglog_holds_only_its_own_members() -> TestResult {
    let nodes = RedisCluster::start(1)?;
    let counter = Counter::new(
        RedisStore::connect(fast_config(&nodes.urls())).await?,
        quiet_config(),
    )?;
    let node = nodes.node(0);
    node.query::<()>(redis::cmd("SET").arg("tally:u:bad").arg("not a sketch"))?;
    for i in 0..100 {
        let id = format!("v{i}");
        counter.add_to_sketches(&[("bad", id.as_bytes()), ("good", id.as_bytes())])?;
    }
    tokio::time::timeout(Duration::from_secs(30), counter.flush())
        .await
        .expect("the flush ends: the bad key's members are dropped, not retried forever");
    assert_eq!(counter.snapshot().sketch_members_pending, 0);
    assert_eq!(counter.estimate_many(&["good"]).await?, [100]);
    let error = counter
        .estimate_many(&["bad"])
        .await
        .expect_err("the bad sketch cannot be read");
    let Error::Store { source, .. } = &error else {
        panic!("a store error: {error}");
    };
    let message = source.to_string();
    assert!(
        message.contains("tally:u:bad") && message.contains("not a HyperLogLog"),
        "{message}"
    );
    // Repaired (deleted), it takes members again.
    node.query::<()>(redis::cmd("DEL").arg("tally:u:bad"))?;
    counter.add_to_sketches(&[("bad", b"v1")])?;
    assert_eq!(counter.estimate_many(&["bad"]).await?, [1]);
    Ok(())
}
