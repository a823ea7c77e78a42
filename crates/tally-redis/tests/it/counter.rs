//! Through a `Counter<RedisStore>`: placement on the ring, balance, and the counter's retry
//! after a lost reply.

use std::collections::HashMap;
use std::time::Duration;

use tally_counter::{Counter, Store as _};
use tally_testkit::{FaultProxy, Mode, RedisCluster, RedisNode};

use crate::support::{TestResult, connect, counters_on, fast_counter};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn increments_land_exactly_on_their_owner_nodes_in_ring_proportion() -> TestResult {
    const INCREMENTS: u64 = 100_000;
    const KEYS: u64 = 10_000;
    let cluster = RedisCluster::start(3)?;
    let store = connect(&cluster.urls()).await;
    let counter = Counter::new(store.clone(), fast_counter())?;

    // A fixed pseudo-random walk over the keys, so counts differ from key to key.
    let mut expected: HashMap<String, u64> = HashMap::new();
    let mut state: u64 = 0x2545_F491_4F6C_DD1D;
    for i in 0..INCREMENTS {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        // Every key at least once, then random ones.
        let key = format!("page-{}", if i < KEYS { i } else { state % KEYS });
        counter.increment(&key, 1)?;
        *expected.entry(key).or_default() += 1;
    }
    tokio::time::timeout(Duration::from_secs(30), counter.flush()).await?;

    let stored: Vec<_> = cluster
        .nodes()
        .iter()
        .map(counters_on)
        .collect::<Result<_, _>>()?;
    for (key, &count) in &expected {
        let owner = store.shard_of(key);
        let redis_key = format!("tally:v:{key}");
        for (shard, on_node) in stored.iter().enumerate() {
            let found = on_node.get(&redis_key).copied();
            if shard == owner {
                assert_eq!(found, Some(count), "{key} on its owner, node {shard}");
            } else {
                assert_eq!(found, None, "{key} also on node {shard}, owner is {owner}");
            }
        }
    }
    let total: usize = stored.iter().map(|m| m.len()).sum();
    assert_eq!(total as u64, KEYS, "stray keys on the nodes");
    let sum: u64 = stored.iter().flat_map(|m| m.values()).sum();
    assert_eq!(sum, INCREMENTS);
    for (shard, share) in store.ring().shares().into_iter().enumerate() {
        let held = stored[shard].len() as f64 / KEYS as f64;
        assert!(
            (held - share).abs() <= 0.15 * share,
            "node {shard} holds {held:.3} of the keys, its ring share is {share:.3}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_retry_after_a_lost_reply_counts_once() -> TestResult {
    let node = RedisNode::start()?;
    let proxy = FaultProxy::start(node.addr()).await?;
    let counter = Counter::new(connect(&proxy.url()).await, fast_counter())?;
    // A read loads the script, so the first EVALSHA of the batch runs it.
    counter.get("warm-up").await?;
    proxy.set_mode(Mode::DropRepliesMatching(1, b"EVALSHA".to_vec()));

    counter.increment("k", 3)?;
    tokio::time::timeout(Duration::from_secs(10), counter.flush()).await?;

    assert_eq!(proxy.replies_dropped(), 1, "no reply was lost");
    assert!(counter.snapshot().batches_failed >= 1);
    assert_eq!(node.get_u64("tally:v:k")?, Some(3));
    assert_eq!(counter.get("k").await?.value, 3);
    let applied_twice = node
        .info_commandstats()?
        .get("evalsha")
        .copied()
        .unwrap_or(0);
    assert!(
        applied_twice >= 3,
        "warm-up, lost attempt and retry: {applied_twice} calls"
    );
    Ok(())
}
