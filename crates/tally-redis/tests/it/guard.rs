//! The ring guard against real nodes: the ring is recorded on first start, another ring
//! is refused naming the change, nodes that disagree are named, a node answering only
//! later with another ring is kept down, and the reshard markers and leases keep a reshard
//! and a writing store apart.

use std::time::Duration;

use tally_counter::Store;
use tally_redis::guard::{LEASES_KEY, RESHARD_KEY, RING_KEY};
use tally_redis::{Error, RedisConfig, RedisStore, RingRecord, begin_reshard, finish_reshard};
use tally_testkit::{FaultProxy, Mode, RedisCluster};

use crate::support::{Logs, TestResult, batch, eventually, fast_config, redis_error};

/// Far more than any condition below needs on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(40);

/// The config of `nodes` of `cluster` (by index), fast timeouts.
fn config_of(cluster: &RedisCluster, nodes: &[usize]) -> RedisConfig {
    let urls: Vec<String> = nodes.iter().map(|&i| cluster.node(i).url()).collect();
    fast_config(&urls.join(","))
}

#[tokio::test]
async fn the_first_start_records_the_ring_and_another_ring_is_refused_naming_the_change()
-> TestResult {
    let cluster = RedisCluster::start(4)?;
    let three = config_of(&cluster, &[0, 1, 2]);
    let store = RedisStore::connect(three.clone()).await?;
    let record = RingRecord::of(&three).encode();
    for i in 0..3 {
        assert_eq!(cluster.node(i).get(RING_KEY)?, Some(record.clone()));
    }
    assert_eq!(cluster.node(3).get(RING_KEY)?, None, "not in the ring");
    store.release_lease().await;
    drop(store);
    // The same ring, listed in another order, is the same ring.
    let reordered = config_of(&cluster, &[2, 0, 1]);
    RedisStore::connect(reordered).await?.release_lease().await;

    let four = config_of(&cluster, &[0, 1, 2, 3]);
    let added = RedisStore::connect(four.clone())
        .await
        .expect_err("a fourth node must be refused");
    let text = added.to_string();
    assert!(matches!(added, Error::RingMismatch { .. }), "{added:?}");
    assert!(added.is_config(), "a server exits 2 on it");
    let fourth = cluster.node(3).addr().to_string();
    assert!(text.contains(&format!("adds {fourth}")), "{text}");
    assert!(
        text.contains(&format!(
            "tally-server reshard --to {}",
            RingRecord::of(&four).node_list()
        )),
        "{text}"
    );
    assert_eq!(
        cluster.node(3).get(RING_KEY)?,
        None,
        "a refused start records nothing on the new node"
    );
    assert!(
        cluster.node(3).keys(LEASES_KEY)?.is_empty(),
        "a refused start leaves no lease"
    );

    let two = config_of(&cluster, &[0, 1]);
    let text = RedisStore::connect(two).await.unwrap_err().to_string();
    assert!(
        text.contains(&format!("removes {}", cluster.node(2).addr())),
        "{text}"
    );

    let mut other_points = three.clone();
    other_points.vnodes = 100;
    let text = RedisStore::connect(other_points)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("sets VIRTUAL_NODES=100 where the nodes were written with 160"),
        "{text}"
    );
    Ok(())
}

#[tokio::test]
async fn nodes_that_disagree_are_named() -> TestResult {
    let cluster = RedisCluster::start(3)?;
    let three = config_of(&cluster, &[0, 1, 2]);
    RedisStore::connect(three.clone())
        .await?
        .release_lease()
        .await;
    // As a reshard to two nodes interrupted after recording the new ring on node 0.
    let two = config_of(&cluster, &[0, 1]);
    let mut set = redis::cmd("SET");
    set.arg(RING_KEY).arg(RingRecord::of(&two).encode());
    cluster.node(0).query::<()>(&set)?;

    let err = RedisStore::connect(three.clone()).await.unwrap_err();
    let text = err.to_string();
    assert!(err.is_config());
    assert!(text.contains("disagree"), "{text}");
    let (a, b, c) = (
        cluster.node(0).addr(),
        cluster.node(1).addr(),
        cluster.node(2).addr(),
    );
    assert!(
        text.contains(&format!(
            "{a} record {} with",
            RingRecord::of(&two).nodes().join(",")
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{b}, {c} record {} with",
            RingRecord::of(&three).nodes().join(",")
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "tally-server reshard --to {} --apply",
            RingRecord::of(&two).node_list()
        )),
        "{text}"
    );
    Ok(())
}

#[tokio::test]
async fn a_node_answering_only_later_with_another_ring_is_kept_down() -> TestResult {
    let logs = Logs::capture();
    let cluster = RedisCluster::start(2)?;
    // Node 1 belongs to another deployment's ring.
    let mut set = redis::cmd("SET");
    set.arg(RING_KEY)
        .arg("tally-ring/1 vnodes=160 nodes=10.0.0.1:6379");
    cluster.node(1).query::<()>(&set)?;
    let proxy = FaultProxy::start(cluster.node(1).addr()).await?;
    proxy.set_mode(Mode::Refuse);
    let config = fast_config(&format!("{},{}", cluster.node(0).url(), proxy.url()));
    let quiet = config.health_check_interval * 10;
    let store = RedisStore::connect(config).await?;
    assert!(!store.shard_up(1), "down at start");

    proxy.set_mode(Mode::Pass);
    let found = eventually(PATIENCE, || async {
        logs.text().contains("taken out of service")
    })
    .await;
    tokio::time::sleep(quiet).await;

    assert!(found, "no error logged; logs:\n{}", logs.text());
    assert!(!store.shard_up(1), "a node of another ring was marked up");
    let err = Store::apply(&store, 1, &batch(1, 1, &[("k", 1)]))
        .await
        .unwrap_err();
    let Error::NodeUnavailable { reason, .. } = redis_error(&err) else {
        panic!("expected NodeUnavailable, got {err:?}");
    };
    assert!(reason.contains("10.0.0.1:6379"), "{reason}");
    assert_eq!(cluster.node(1).get("tally:v:k")?, None);
    Ok(())
}

#[tokio::test]
async fn a_reshard_and_a_writing_store_exclude_each_other() -> TestResult {
    let cluster = RedisCluster::start(3)?;
    let two = config_of(&cluster, &[0, 1]);
    let three = config_of(&cluster, &[0, 1, 2]);
    let store = RedisStore::connect(two.clone()).await?;

    // A store is writing: refused, naming its lease, and nothing stays marked.
    let refused = begin_reshard(&two, &three).await.unwrap_err();
    let text = refused.to_string();
    assert!(
        matches!(refused, Error::ServerRunning { .. }),
        "{refused:?}"
    );
    assert!(text.contains("(lease "), "{text}");
    assert!(
        text.contains(&format!("tally process {}", std::process::id())),
        "{text}"
    );
    assert!(text.contains("SIGTERM"), "{text}");
    for node in cluster.nodes() {
        assert_eq!(node.get(RESHARD_KEY)?, None);
    }
    store.apply(0, &batch(1, 1, &[("k", 1)])).await?;

    // Released (as a server does after its final flush): the reshard begins.
    store.release_lease().await;
    drop(store);
    begin_reshard(&two, &three).await?;
    begin_reshard(&two, &three)
        .await
        .expect("a re-run resumes the same reshard");
    let text = begin_reshard(&two, &config_of(&cluster, &[0]))
        .await
        .unwrap_err()
        .to_string();
    assert!(text.contains("has not finished; resume it"), "{text}");

    // No store starts on either ring while it runs, and the message names the resume.
    for config in [&two, &three] {
        let err = RedisStore::connect(config.clone()).await.unwrap_err();
        assert!(matches!(err, Error::ReshardInProgress { .. }), "{err:?}");
        assert!(err.is_config());
        assert!(
            err.to_string().contains(&format!(
                "tally-server reshard --to {} --apply",
                RingRecord::of(&three).node_list()
            )),
            "{err}"
        );
    }

    finish_reshard(&two, &three).await?;
    for node in cluster.nodes() {
        assert_eq!(node.get(RESHARD_KEY)?, None);
        assert_eq!(node.get(RING_KEY)?, Some(RingRecord::of(&three).encode()));
    }
    RedisStore::connect(three).await?.release_lease().await;
    let old = RedisStore::connect(two).await.unwrap_err().to_string();
    assert!(
        old.contains(&format!("removes {}", cluster.node(2).addr())),
        "a server on the old list after the reshard: {old}"
    );
    Ok(())
}

#[tokio::test]
async fn a_running_store_whose_lease_lapsed_stops_writing_to_a_node_being_resharded() -> TestResult
{
    let logs = Logs::capture();
    let cluster = RedisCluster::start(2)?;
    let two = config_of(&cluster, &[0, 1]);
    let one = config_of(&cluster, &[0]);
    let store = RedisStore::connect(two.clone()).await?;
    // As if the store had stalled past its lease.
    for node in cluster.nodes() {
        let mut del = redis::cmd("DEL");
        del.arg(LEASES_KEY);
        node.query::<()>(&del)?;
    }
    begin_reshard(&two, &one).await?;

    let stopped = eventually(PATIENCE, || async {
        !store.shard_up(0) && !store.shard_up(1)
    })
    .await;

    assert!(
        stopped,
        "the store kept writing to nodes being resharded; logs:\n{}",
        logs.text()
    );
    let err = Store::apply(&store, 0, &batch(1, 1, &[("k", 1)]))
        .await
        .unwrap_err();
    let Error::NodeUnavailable { reason, .. } = redis_error(&err) else {
        panic!("expected NodeUnavailable, got {err:?}");
    };
    assert!(reason.contains("has not finished"), "{reason}");
    assert_eq!(cluster.node(0).get("tally:v:k")?, None);
    for node in cluster.nodes() {
        assert!(node.keys(LEASES_KEY)?.is_empty());
    }
    Ok(())
}
