//! The health task: marks down on failure, up on a good ping, stops with the store.

use std::time::Duration;

use tally_counter::{InstanceId, Store};
use tally_redis::{Error, RedisStore};
use tally_testkit::RedisNode;

use crate::support::{TestResult, eventually, fast_config, redis_error};

/// How long the tests below give a condition to come true: far more than it needs on a
/// loaded machine.
const PATIENCE: Duration = Duration::from_secs(30);

/// The command timeout of the fast-fail test: long, so that a read that waits for it
/// cannot pass for one that failed fast on any machine.
const TIMEOUT: Duration = Duration::from_secs(10);

/// What "fast" means for a read against a node already marked down: a fifth of
/// [`TIMEOUT`], where the read itself is a lock and an error value.
const FAST_FAIL: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_command_marks_the_node_down_until_it_answers_a_ping() -> TestResult {
    let node = RedisNode::start()?;
    let mut config = fast_config(&node.url());
    config.timeout = TIMEOUT;
    let store = RedisStore::connect(config).await?;
    let before = store.health()[0].clone();
    assert!(before.up);
    assert!(store.shard_up(0), "shard_up agrees with health");
    // Opens a connection of the command pool (the start-up check used the probe pool), so
    // that the read below times out on a command rather than on connecting.
    store.get(0, InstanceId::from_u64(1), &["k"]).await?;

    node.pause()?;
    let timed_out = Store::get(&store, 0, InstanceId::from_u64(1), &["k"])
        .await
        .unwrap_err();
    let started = std::time::Instant::now();
    let fast_fail = Store::get(&store, 0, InstanceId::from_u64(1), &["k"])
        .await
        .unwrap_err();
    let fast_fail_took = started.elapsed();

    assert!(
        matches!(redis_error(&timed_out), Error::Timeout { .. }),
        "{timed_out:?}"
    );
    assert!(
        matches!(redis_error(&fast_fail), Error::NodeUnavailable { .. }),
        "{fast_fail:?}"
    );
    assert!(
        fast_fail_took < FAST_FAIL,
        "a down node was asked again: the read took {fast_fail_took:?} (timeout {TIMEOUT:?})"
    );
    let down = store.health()[0].clone();
    assert!(!down.up);
    assert!(!store.shard_up(0), "shard_up agrees with health");
    assert!(down.since > before.since);

    node.resume()?;
    let back = eventually(PATIENCE, || async { store.shard_up(0) }).await;
    assert!(back, "the node answered again but stayed down");
    store.get(0, InstanceId::from_u64(1), &["k"]).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_task_pings_until_the_store_is_dropped() -> TestResult {
    let node = RedisNode::start()?;
    let pings = || {
        let stats = node.info_commandstats().expect("the node answers INFO");
        stats.get("ping").copied().unwrap_or(0)
    };
    let config = fast_config(&node.url());
    // A window in which a live task pings ten times: quiet through it, the task is gone.
    let quiet = config.health_check_interval * 10;
    let store = RedisStore::connect(config).await?;
    let view = store.with_layout(tally_redis::Layout::SortedSet);

    let start = pings();
    let pinging = eventually(PATIENCE, || async { pings() >= start + 2 }).await;
    assert!(pinging, "the health task does not ping");

    drop(store);
    // One round may have been on its way when the store went: two more pings are the
    // task still running.
    let with_view = pings();
    let kept = eventually(PATIENCE, || async { pings() >= with_view + 2 }).await;
    assert!(kept, "a view's handle must keep the task alive");

    drop(view);
    let stopped = eventually(PATIENCE, || async {
        let before = pings();
        tokio::time::sleep(quiet).await;
        pings() == before
    })
    .await;
    assert!(stopped, "the health task outlived its store");
    Ok(())
}
