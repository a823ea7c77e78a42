//! The health task: marks down on failure, up on a good ping, stops with the store.

use std::time::Duration;

use tally_counter::{InstanceId, Store as _};
use tally_redis::Error;
use tally_testkit::RedisNode;

use crate::helpers::{TestResult, connect, eventually, redis_error};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_command_marks_the_node_down_until_it_answers_a_ping() -> TestResult {
    let node = RedisNode::start()?;
    let store = connect(&node.url()).await;
    let before = store.health()[0].clone();
    assert!(before.up);
    assert!(store.shard_up(0), "shard_up agrees with health");

    node.pause()?;
    let timed_out = store
        .get(0, InstanceId::from_u64(1), &["k"])
        .await
        .unwrap_err();
    let started = std::time::Instant::now();
    let fast_fail = store
        .get(0, InstanceId::from_u64(1), &["k"])
        .await
        .unwrap_err();

    assert!(
        matches!(redis_error(&timed_out), Error::Timeout { .. }),
        "{timed_out:?}"
    );
    assert!(
        matches!(redis_error(&fast_fail), Error::NodeUnavailable { .. }),
        "{fast_fail:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "a down node was asked again"
    );
    let down = store.health()[0].clone();
    assert!(!down.up);
    assert!(!store.shard_up(0), "shard_up agrees with health");
    assert!(down.since > before.since);

    node.resume()?;
    let back = eventually(Duration::from_secs(3), || async { store.shard_up(0) }).await;
    assert!(back, "the node answered again but stayed down");
    store.get(0, InstanceId::from_u64(1), &["k"]).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_task_pings_until_the_store_is_dropped() -> TestResult {
    let node = RedisNode::start()?;
    let pings = || -> Result<u64, tally_testkit::Error> {
        Ok(node.info_commandstats()?.get("ping").copied().unwrap_or(0))
    };
    let store = connect(&node.url()).await;
    let view = store.with_layout(tally_redis::Layout::SortedSet);
    let start = pings()?;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(pings()? >= start + 2, "the health task does not ping");

    drop(store);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let with_view = pings()?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        pings()? > with_view,
        "a view's handle must keep the task alive"
    );

    drop(view);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = pings()?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(pings()?, after, "the health task outlived its store");
    Ok(())
}
