//! Nodes that stop answering: paused (SIGSTOP) and killed then restarted with AOF.

use std::time::Duration;

use tally_counter::{Counter, Store as _};
use tally_testkit::{RedisCluster, RedisNode};

use crate::support::{TestResult, connect, eventually, fast_counter, key_on};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_node_holds_its_keys_while_the_others_flush() -> TestResult {
    let cluster = RedisCluster::start(3)?;
    let store = connect(&cluster.urls()).await;
    let counter = Counter::new(store.clone(), fast_counter())?;
    let keys: Vec<String> = (0..3).map(|shard| key_on(&store, shard, "p")).collect();
    for key in &keys {
        counter.increment(key, 1)?;
    }
    tokio::time::timeout(Duration::from_secs(5), counter.flush()).await?;

    cluster.node(0).pause()?;
    for _ in 0..5 {
        for key in &keys {
            counter.increment(key, 1)?;
        }
    }
    // The live nodes' values land while node 0 is stopped.
    let others_landed = eventually(Duration::from_secs(5), || async {
        (1..3).all(|i| holds(&cluster, i, &keys[i], 6))
    })
    .await;
    assert!(others_landed, "live nodes did not get their batches");
    let marked_down = eventually(Duration::from_secs(5), || async { !store.health()[0].up }).await;
    assert!(marked_down, "the paused node is still reported up");
    assert!(
        counter.snapshot().write_buffer_size >= 1,
        "node 0's key is not pending"
    );

    cluster.node(0).resume()?;
    tokio::time::timeout(Duration::from_secs(10), counter.flush()).await?;

    for (i, key) in keys.iter().enumerate() {
        assert_eq!(
            cluster.node(i).get_u64(&format!("tally:v:{key}"))?,
            Some(6),
            "{key} on node {i}"
        );
    }
    assert_eq!(counter.snapshot().write_buffer_size, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_node_restarted_with_aof_loses_nothing() -> TestResult {
    let mut cluster = RedisCluster::start_with(3, &RedisNode::builder().aof(true))?;
    let store = connect(&cluster.urls()).await;
    let counter = Counter::new(store.clone(), fast_counter())?;
    let keys: Vec<String> = (0..3).map(|shard| key_on(&store, shard, "k")).collect();
    for key in &keys {
        counter.increment(key, 2)?;
    }
    tokio::time::timeout(Duration::from_secs(5), counter.flush()).await?;

    cluster.node_mut(1).kill()?;
    for key in &keys {
        counter.increment(key, 3)?;
    }
    let others_landed = eventually(Duration::from_secs(5), || async {
        [0, 2].iter().all(|&i| holds(&cluster, i, &keys[i], 5))
    })
    .await;
    assert!(others_landed, "live nodes did not get their batches");
    let marked_down = eventually(Duration::from_secs(5), || async { !store.health()[1].up }).await;
    assert!(marked_down, "the killed node is still reported up");

    cluster.node_mut(1).restart()?;
    tokio::time::timeout(Duration::from_secs(10), counter.flush()).await?;

    for (i, key) in keys.iter().enumerate() {
        assert_eq!(
            cluster.node(i).get_u64(&format!("tally:v:{key}"))?,
            Some(5),
            "{key} on node {i}"
        );
    }
    assert_eq!(counter.get(&keys[1]).await?.value, 5);
    assert_eq!(store.shard_of(&keys[1]), 1);
    Ok(())
}

/// Whether node `shard` of `cluster` holds `value` for the counter `key`; a node that does
/// not answer does not.
fn holds(cluster: &RedisCluster, shard: usize, key: &str, value: u64) -> bool {
    cluster
        .node(shard)
        .get_u64(&format!("tally:v:{key}"))
        .ok()
        .flatten()
        == Some(value)
}
