//! Sub-keys (`page\u{1f}day`, see `tally_counter::routing_key`): they live with their key
//! (same node, same cluster bucket), and the ones a batch creates expire after
//! `subkey_ttl`, set once when created.

use std::time::Duration;

use tally_counter::Store as _;
use tally_redis::{ClusterStore, RedisStore};
use tally_testkit::{Cluster, RedisCluster};

use crate::support::{TestResult, batch, fast_config};

const DAY: &str = "p1\u{1f}2026-12-01";

#[tokio::test]
async fn sub_keys_share_their_keys_node_and_expire_after_the_ttl_set_at_creation() -> TestResult {
    let nodes = RedisCluster::start(3)?;
    let mut config = fast_config(&nodes.urls());
    config.subkey_ttl = Some(Duration::from_secs(1_000));
    let store = RedisStore::connect(config).await?;
    for i in 0..200 {
        let page = format!("page-{i}");
        let day = format!("{page}\u{1f}2026-12-01");
        assert_eq!(store.shard_of(&day), store.shard_of(&page), "{page}");
    }
    let shard = store.shard_of("p1");
    let node = nodes.node(shard);

    assert_eq!(
        store
            .apply(shard, &batch(1, 1, &[("p1", 2), (DAY, 2)]))
            .await?,
        [2, 2]
    );
    let ttl = |key: &str| -> i64 {
        node.query(redis::cmd("TTL").arg(format!("tally:v:{key}")))
            .expect("TTL answers")
    };
    let first = ttl(DAY);
    assert!(
        (990..=1_000).contains(&first),
        "the day key expires: TTL {first}"
    );
    assert_eq!(ttl("p1"), -1, "the page's total does not expire");

    // A later batch adds to the day without moving its expiry.
    node.query::<()>(redis::cmd("EXPIRE").arg(format!("tally:v:{DAY}")).arg(500))?;
    assert_eq!(store.apply(shard, &batch(1, 2, &[(DAY, 3)])).await?, [5]);
    let later = ttl(DAY);
    assert!(
        (490..=500).contains(&later),
        "set once, when created, and kept by later writes: TTL {later}"
    );
    Ok(())
}

#[tokio::test]
async fn without_a_ttl_sub_keys_do_not_expire() -> TestResult {
    let nodes = RedisCluster::start(1)?;
    let store = RedisStore::connect(fast_config(&nodes.urls())).await?;
    store.apply(0, &batch(1, 1, &[(DAY, 1)])).await?;
    let ttl: i64 = nodes
        .node(0)
        .query(redis::cmd("TTL").arg(format!("tally:v:{DAY}")))?;
    assert_eq!(ttl, -1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_sub_keys_share_their_keys_bucket_and_expire() -> TestResult {
    let cluster = Cluster::start()?;
    let mut config = crate::cluster::config(&cluster, Duration::from_secs(60));
    config.subkey_ttl = Some(Duration::from_secs(1_000));
    let store = ClusterStore::connect(config).await?;
    let bucket = store.shard_of("p1");
    assert_eq!(store.shard_of(DAY), bucket);
    assert_eq!(
        store
            .apply(bucket, &batch(1, 1, &[("p1", 1), (DAY, 4)]))
            .await?,
        [1, 4]
    );
    let key = store.stored_as(DAY);
    let slot = cluster.slot_of(&key)?;
    let ttl: i64 = cluster
        .node(cluster.owner_of(slot)?)
        .query(redis::cmd("TTL").arg(&key))?;
    assert!((990..=1_000).contains(&ttl), "{key}: TTL {ttl}");
    Ok(())
}
