//! Node identity: two entries of `REDIS_NODES` that reach one Redis database are refused at
//! start, kept down when found later, and never share a high-water mark.

use std::time::Duration;

use tally_counter::{InstanceId, Store};
use tally_redis::{COUNTER_MARKS_KEY, Error, NODE_ID_KEY, RedisStore, mark_field};
use tally_testkit::{FaultProxy, Mode, RedisCluster, RedisNode};

use crate::support::{
    Logs, TestResult, batch, connect, eventually, everything_shown, fast_config, redis_error,
};

const PASSWORD: &str = "alias-pw-5e1f";

/// How long the tests below give a condition to come true: far more than it needs on a
/// loaded machine.
const PATIENCE: Duration = Duration::from_secs(30);

#[tokio::test]
async fn the_same_redis_listed_under_two_names_is_refused_naming_both() -> TestResult {
    let node = RedisNode::builder().password(PASSWORD).start()?;
    let port = node.port();
    let urls = format!("redis://:{PASSWORD}@localhost:{port},redis://:{PASSWORD}@127.0.0.1:{port}");

    let err = RedisStore::connect(fast_config(&urls))
        .await
        .expect_err("two names of one node must be refused");

    assert!(matches!(err, Error::DuplicateNode { .. }), "{err:?}");
    assert!(
        err.is_config(),
        "a server must treat it as bad configuration"
    );
    let shown = everything_shown(&err);
    assert!(
        shown.contains(&format!("redis://:***@localhost:{port}")),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("redis://:***@127.0.0.1:{port}")),
        "{shown}"
    );
    assert!(
        shown.contains("list each Redis database once in REDIS_NODES"),
        "{shown}"
    );
    assert!(!shown.contains(PASSWORD), "password leaked: {shown}");
    Ok(())
}

#[tokio::test]
async fn a_proxy_in_front_of_a_listed_node_is_refused() -> TestResult {
    let node = RedisNode::start()?;
    let proxy = FaultProxy::start(node.addr()).await?;

    let err = RedisStore::connect(fast_config(&format!("{},{}", node.url(), proxy.url())))
        .await
        .expect_err("a node and a proxy in front of it must be refused");

    let Error::DuplicateNode { first, second, .. } = &err else {
        panic!("expected DuplicateNode, got {err:?}");
    };
    assert_eq!(first, &node.url());
    assert_eq!(second, &proxy.url());
    Ok(())
}

#[tokio::test]
async fn each_node_keeps_one_id_for_every_store() -> TestResult {
    let cluster = RedisCluster::start(2)?;

    let first = connect(&cluster.urls()).await;
    let ids: Vec<Option<String>> = (0..2)
        .map(|i| cluster.node(i).get(NODE_ID_KEY))
        .collect::<Result<_, _>>()?;
    drop(first);
    let _second = connect(&cluster.urls()).await;

    assert!(
        ids.iter()
            .all(|id| id.as_ref().is_some_and(|id| id.len() == 32))
    );
    assert_ne!(ids[0], ids[1]);
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            &cluster.node(i).get(NODE_ID_KEY)?,
            id,
            "node {i}'s id changed"
        );
    }
    Ok(())
}

#[tokio::test]
async fn an_alias_that_answers_only_later_is_kept_down_with_an_error_logged() -> TestResult {
    let logs = Logs::capture();
    let node = RedisNode::start()?;
    let proxy = FaultProxy::start(node.addr()).await?;
    proxy.set_mode(Mode::Refuse);
    let config = fast_config(&format!("{},{}", node.url(), proxy.url()));
    let quiet = config.health_check_interval * 10;
    let store = RedisStore::connect(config).await?;
    assert!(store.shard_up(0));
    assert!(!store.shard_up(1), "the proxy refuses: down at start");

    proxy.set_mode(Mode::Pass);
    let found = eventually(PATIENCE, || async {
        logs.text().contains("taken out of service")
    })
    .await;
    // Rounds of the health task after it found out: the node must stay down.
    tokio::time::sleep(quiet).await;

    assert!(found, "no error logged; logs:\n{}", logs.text());
    assert!(!store.shard_up(1), "an alias was marked up");
    let err = Store::apply(&store, 1, &batch(1, 1, &[("k", 1)]))
        .await
        .unwrap_err();
    let Error::NodeUnavailable { reason, .. } = redis_error(&err) else {
        panic!("expected NodeUnavailable, got {err:?}");
    };
    assert!(reason.contains("reach the same Redis database"), "{reason}");
    let text = logs.text();
    let line = text
        .lines()
        .find(|line| line.contains("taken out of service"))
        .unwrap_or_default();
    assert!(line.contains("ERROR"), "{line}");
    assert!(
        line.contains(&node.url()) && line.contains(&proxy.url()),
        "{line}"
    );
    store.apply(0, &batch(1, 1, &[("k", 1)])).await?;
    assert_eq!(node.get_u64("tally:v:k")?, Some(1));
    Ok(())
}

#[tokio::test]
async fn two_shards_reaching_one_redis_keep_separate_marks() -> TestResult {
    // Shard 1 is a proxy in front of shard 0's node, unreachable at start; the node's id
    // is deleted before it answers, so the identity check cannot tell (as with a DNS name
    // that comes to point at a listed node after start). Both shards then write to one
    // database.
    let node = RedisNode::start()?;
    let proxy = FaultProxy::start(node.addr()).await?;
    proxy.set_mode(Mode::Refuse);
    let store = connect(&format!("{},{}", node.url(), proxy.url())).await;
    node.query::<()>(redis::cmd("DEL").arg(NODE_ID_KEY))?;
    proxy.set_mode(Mode::Pass);
    let both_up = eventually(PATIENCE, || async { store.shard_up(1) }).await;
    assert!(both_up, "the proxied shard did not come up");

    store.apply(0, &batch(1, 5, &[("a", 3)])).await?;
    let totals = store.apply(1, &batch(1, 1, &[("b", 7)])).await?;

    assert_eq!(totals, [7], "shard 1's first batch was taken for a replay");
    assert_eq!(node.get_u64("tally:v:b")?, Some(7));
    assert_eq!(node.get_u64("tally:v:a")?, Some(3));
    let instance = InstanceId::from_u64(1);
    for (shard, seq) in [(0, "5"), (1, "1")] {
        let mark = node.hget(COUNTER_MARKS_KEY, &mark_field(instance, shard))?;
        assert_eq!(
            mark.as_deref().and_then(|m| m.split(':').next()),
            Some(seq),
            "shard {shard}: {mark:?}"
        );
    }
    Ok(())
}
