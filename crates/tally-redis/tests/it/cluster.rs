//! The Redis Cluster store against a real cluster of six `redis-server` processes (three
//! primaries, one replica each; see `tally_testkit::Cluster`): the bucket layout, exactly
//! once through replays, and the `WAIT` that keeps a batch in memory until a replica has it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tally_counter::{Counter, InstanceId, Store as _};
use tally_redis::{
    COUNTER_BUCKETS, ClusterConfig, ClusterStore, Error, Layout, STATS_BUCKETS, bucket_of,
    bucket_tag, cluster_slot,
};
use tally_testkit::{Cluster, ClusterNode};

use crate::support::{TestResult, batch, eventually, fast_counter, redis_error};

/// Long enough for a cluster to notice what a test did, on a busy machine.
const PATIENCE: Duration = Duration::from_secs(20);

/// A store config with short timeouts; `health` sets how often every node is pinged.
pub(crate) fn config(cluster: &Cluster, health: Duration) -> ClusterConfig {
    let mut config = ClusterConfig::from_urls(&cluster.seeds()).expect("the seeds parse");
    config.timeout = Duration::from_millis(800);
    config.retry_attempts = 1;
    config.pool_size = 4;
    config.health_check_interval = health;
    config
}

/// The node serving `slot`, and its replica.
fn primary_and_replica(cluster: &Cluster, slot: u16) -> (usize, usize) {
    let primary = cluster.owner_of(slot).expect("a primary serves the slot");
    let replica = cluster
        .replicas_of(primary)
        .expect("the view lists replicas")[0];
    (primary, replica)
}

/// `GET key` on a replica (`READONLY` first, or it answers `MOVED`).
fn replica_get(node: &ClusterNode, key: &str) -> Option<u64> {
    let mut pipe = redis::pipe();
    pipe.cmd("READONLY").ignore().cmd("GET").arg(key);
    let (value,): (Option<u64>,) = node.query_pipeline(&pipe).expect("the replica answers");
    value
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_writes_one_slot_once_and_the_counter_and_ranking_read_it_back() -> TestResult {
    // With a password: every connection (the primaries' pools, the cluster client's
    // connections to nodes it learns from the cluster) authenticates.
    let cluster = Cluster::builder().password("s3cret,@:pw").start()?;
    let mut config = config(&cluster, Duration::from_millis(200));
    config.password = Some(tally_redis::Secret::new("s3cret,@:pw"));
    let store = ClusterStore::connect(config).await?;
    assert_eq!(store.wait_replicas(), Some(1), "the cluster has replicas");
    assert_eq!(store.shard_count(), COUNTER_BUCKETS);

    // Three keys of one bucket: one batch, one script call, one slot.
    let bucket = bucket_of(Layout::Counters, "page-0");
    let pages: Vec<String> = (0..)
        .map(|i| format!("page-{i}"))
        .filter(|page| store.shard_of(page) == bucket)
        .take(3)
        .collect();
    let deltas: Vec<(&str, u64)> = pages.iter().map(|p| (p.as_str(), 2)).collect();
    let first = batch(7, 1, &deltas);
    assert_eq!(store.apply(bucket, &first).await?, [2, 2, 2]);
    let tag = bucket_tag(bucket);
    let slot = cluster_slot(tag.as_bytes());
    let primary = cluster.node(cluster.owner_of(slot)?);
    let writes = || -> u64 {
        let stats = primary.info("commandstats").expect("INFO commandstats");
        stats
            .iter()
            .find(|(name, _)| name == "cmdstat_hset")
            .and_then(|(_, fields)| {
                fields
                    .split(',')
                    .next()?
                    .strip_prefix("calls=")?
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    };
    let before = writes();
    // The same batch again (a retry after a lost reply): answered, not applied, but its
    // mark written again, so the WAIT after it covers the first application.
    assert_eq!(store.apply(bucket, &first).await?, [2, 2, 2]);
    assert_eq!(writes(), before + 1, "a replay rewrites its mark");
    store
        .get(bucket, InstanceId::from_u64(7), &[&pages[0]])
        .await?;
    assert_eq!(writes(), before + 1, "a read writes nothing");
    assert_eq!(store.apply(bucket, &batch(7, 2, &deltas)).await?, [4, 4, 4]);

    let mut keys = primary.keys(&format!("tally:v:{tag}:*"))?;
    keys.sort();
    let mut expected: Vec<String> = pages.iter().map(|p| format!("tally:v:{tag}:{p}")).collect();
    expected.sort();
    assert_eq!(
        keys, expected,
        "every key of the batch on the slot's primary"
    );
    for key in &keys {
        assert_eq!(cluster.slot_of(key)?, slot, "{key}");
        assert_eq!(
            primary.query::<Option<u64>>(redis::cmd("GET").arg(key))?,
            Some(4)
        );
    }
    let mark: Option<String> = primary.query(
        redis::cmd("HGET")
            .arg(format!("tally:applied:{tag}"))
            .arg(format!("{}:{bucket}", InstanceId::from_u64(7))),
    )?;
    assert!(
        mark.is_some_and(|m| m.starts_with("2:")),
        "the mark is in the slot"
    );
    assert_eq!(
        store
            .get(bucket, InstanceId::from_u64(7), &[&pages[0]])
            .await?
            .applied_seq,
        2
    );

    // Through the counter: many pages over many buckets, read back exactly.
    let counter = Counter::new(store.clone(), fast_counter())?;
    let mut counts = HashMap::new();
    for i in 0..300_u64 {
        let page = format!("p{i}");
        counter.increment(&page, i % 7 + 1)?;
        counts.insert(page, i % 7 + 1);
    }
    tokio::time::timeout(PATIENCE, counter.flush()).await?;
    for (page, count) in &counts {
        assert_eq!(
            store
                .get(store.shard_of(page), InstanceId::from_u64(1), &[page])
                .await?
                .values,
            [*count]
        );
    }

    // The statistics: one sorted set per bucket, merged into one exact ranking.
    let stats = store.with_layout(Layout::SortedSet);
    assert_eq!(stats.shard_count(), STATS_BUCKETS);
    let stats_counter = Counter::new(stats.clone(), fast_counter())?;
    let mut ranking: Vec<(String, u64)> = (0..200_u64)
        .map(|i| (format!("/api/u/{i}/"), 1 + i % 13))
        .collect();
    for (url, count) in &ranking {
        stats_counter.increment(url, *count)?;
    }
    tokio::time::timeout(PATIENCE, stats_counter.flush()).await?;
    ranking.sort_by(tally_counter::rank_order);
    let mut merged = Vec::new();
    for bucket in 0..STATS_BUCKETS {
        merged.extend(stats.top(bucket, 20).await?);
    }
    merged.sort_by(tally_counter::rank_order);
    merged.truncate(20);
    assert_eq!(merged, ranking[..20]);
    let members: u64 = {
        let mut total = 0;
        for bucket in 0..STATS_BUCKETS {
            total += stats.len(bucket).await?;
        }
        total
    };
    assert_eq!(members, 200);
    // Ties at a bucket's cut-off go to the smallest members.
    let tied_bucket = 5;
    let tied: Vec<String> = (0..)
        .map(|i| format!("/api/tie/{i}/"))
        .filter(|url| stats.shard_of(url) == tied_bucket)
        .take(5)
        .collect();
    let counts = [1_002, 1_001, 1_001, 1_001, 1_000];
    let deltas: Vec<(&str, u64)> = tied.iter().map(String::as_str).zip(counts).collect();
    stats.apply(tied_bucket, &batch(8, 1, &deltas)).await?;
    let mut at_cut = tied[1..4].to_vec();
    at_cut.sort();
    assert_eq!(
        stats.top(tied_bucket, 3).await?,
        [
            (tied[0].clone(), 1_002),
            (at_cut[0].clone(), 1_001),
            (at_cut[1].clone(), 1_001)
        ]
    );

    let status = store.status();
    assert_eq!(status.status(), "healthy", "{status:?}");
    assert_eq!(status.shards.len(), 3);
    assert!(status.shards.iter().all(|s| s.replicas.len() == 1));
    assert_eq!(status.slots_without_primary, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_short_of_its_replicas_fails_and_its_retry_counts_once() -> TestResult {
    let cluster = Cluster::start()?;
    // Nodes pinged once a minute: the store keeps seeing the paused replica up, so it
    // sends the batch and its WAIT, which the replica cannot answer.
    let store = ClusterStore::connect(config(&cluster, Duration::from_secs(60))).await?;
    let bucket = 3;
    let page = (0..)
        .map(|i| format!("page-{i}"))
        .find(|page| store.shard_of(page) == bucket)
        .expect("some page lands in every bucket");
    let key = format!("tally:v:{}:{page}", bucket_tag(bucket));
    let slot = cluster_slot(bucket_tag(bucket).as_bytes());
    let (primary, replica) = primary_and_replica(&cluster, slot);
    let batch = batch(9, 1, &[(page.as_str(), 3)]);

    cluster.node(replica).pause()?;
    let short = store.apply(bucket, &batch).await;

    let short = short.expect_err("a batch no replica confirmed is not applied");
    assert!(
        matches!(
            short,
            Error::NotReplicated {
                acked: 0,
                wanted: 1,
                ..
            }
        ),
        "{short}"
    );
    assert!(short.to_string().contains("REDIS_WAIT_REPLICAS"), "{short}");
    // The primary applied it; only the confirmation is missing.
    assert_eq!(
        cluster
            .node(primary)
            .query::<Option<u64>>(redis::cmd("GET").arg(&key))?,
        Some(3)
    );

    // Seen down, the replica gets no batch at all: nothing is sent.
    store.check_health().await;
    assert!(!store.shard_up(bucket));
    let held = tally_counter::Store::apply(&store, bucket, &batch).await;
    let held = held.expect_err("no batch while the replica is down");
    assert!(
        matches!(
            redis_error(&held),
            Error::ReplicasMissing {
                online: 0,
                wanted: 1,
                ..
            }
        ),
        "{held}"
    );

    // Back: the retry, unchanged, is answered as already applied, counted once, and
    // confirmed by the replica this time.
    cluster.node(replica).resume()?;
    let back = eventually(PATIENCE, || async {
        store.check_health().await;
        store.shard_up(bucket)
    })
    .await;
    assert!(
        back,
        "the replica answered again but its bucket stayed down"
    );
    let retried = Instant::now();
    assert_eq!(store.apply(bucket, &batch).await?, [3]);
    assert!(retried.elapsed() < Duration::from_millis(800));
    assert_eq!(
        cluster
            .node(primary)
            .query::<Option<u64>>(redis::cmd("GET").arg(&key))?,
        Some(3),
        "the retry did not apply the batch again"
    );
    assert_eq!(replica_get(cluster.node(replica), &key), Some(3));
    Ok(())
}

#[tokio::test]
async fn a_standalone_node_in_redis_cluster_is_a_configuration_error() -> TestResult {
    let node = tally_testkit::RedisNode::start()?;
    let config = ClusterConfig::from_urls(&node.url())?;

    let err = ClusterStore::connect(config).await.unwrap_err();

    assert!(err.is_config(), "{err}");
    let message = err.to_string();
    assert!(message.contains("REDIS_CLUSTER"), "{message}");
    assert!(message.contains("not a cluster node"), "{message}");
    assert!(message.contains("REDIS_NODES"), "{message}");
    Ok(())
}
