//! Store-level behaviour: exactly-once batches, atomic reads, resets, refused batches.

use tally_counter::{InstanceId, Store};
use tally_redis::{COUNTER_MARKS_KEY, Error, Layout, mark_field};
use tally_testkit::{FaultProxy, Mode, RedisNode};

use crate::support::{TestResult, batch, connect, everything_shown, redis_error};

#[tokio::test]
async fn apply_returns_new_totals_in_batch_order() -> TestResult {
    let node = RedisNode::start()?;
    let store = connect(&node.url()).await;

    let first = store.apply(0, &batch(1, 1, &[("a", 5), ("b", 7)])).await?;
    let second = store
        .apply(0, &batch(1, 2, &[("b", 1), ("a", 2), ("c", 3)]))
        .await?;

    assert_eq!(first, [5, 7]);
    assert_eq!(second, [8, 7, 3]);
    assert_eq!(node.get_u64("tally:v:a")?, Some(7));
    assert_eq!(node.get_u64("tally:v:b")?, Some(8));
    assert_eq!(node.get_u64("tally:v:c")?, Some(3));
    Ok(())
}

#[tokio::test]
async fn same_batch_sent_twice_is_applied_once() -> TestResult {
    let node = RedisNode::start()?;
    let store = connect(&node.url()).await;
    let once = batch(42, 1, &[("page1", 3), ("page2", 4)]);

    let first = store.apply(0, &once).await?;
    let again = store.apply(0, &once).await?;

    assert_eq!(first, [3, 4]);
    assert_eq!(again, [3, 4], "a replay must answer the current totals");
    assert_eq!(node.get_u64("tally:v:page1")?, Some(3));
    assert_eq!(node.get_u64("tally:v:page2")?, Some(4));
    let mark = node.hget(COUNTER_MARKS_KEY, &mark_field(InstanceId::from_u64(42), 0))?;
    let seq = mark.as_deref().and_then(|m| m.split(':').next());
    assert_eq!(seq, Some("1"), "the mark holds the batch's seq: {mark:?}");
    Ok(())
}

#[tokio::test]
async fn an_older_batch_arriving_late_is_not_applied() -> TestResult {
    let node = RedisNode::start()?;
    let store = connect(&node.url()).await;
    store.apply(0, &batch(7, 1, &[("k", 1)])).await?;
    store.apply(0, &batch(7, 2, &[("k", 10)])).await?;

    // Seq 1 again (e.g. a copy stuck in a paused node's socket) after seq 2 landed.
    let late = store.apply(0, &batch(7, 1, &[("k", 1)])).await?;

    assert_eq!(late, [11]);
    assert_eq!(node.get_u64("tally:v:k")?, Some(11));
    Ok(())
}

#[tokio::test]
async fn instances_have_separate_marks() -> TestResult {
    let node = RedisNode::start()?;
    let store = connect(&node.url()).await;

    store.apply(0, &batch(1, 1, &[("k", 1)])).await?;
    let other = store.apply(0, &batch(2, 1, &[("k", 1)])).await?;

    assert_eq!(other, [2], "another instance's seq 1 is a different batch");
    Ok(())
}

#[tokio::test]
async fn get_reads_values_and_the_instances_mark_together() -> TestResult {
    let node = RedisNode::start()?;
    let store = connect(&node.url()).await;
    store.apply(0, &batch(9, 3, &[("a", 2), ("b", 5)])).await?;

    let mine = store
        .get(0, InstanceId::from_u64(9), &["b", "missing", "a"])
        .await?;
    let theirs = store.get(0, InstanceId::from_u64(10), &["a"]).await?;

    assert_eq!(mine.values, [5, 0, 2]);
    assert_eq!(mine.applied_seq, 3);
    assert_eq!(theirs.values, [2]);
    assert_eq!(theirs.applied_seq, 0);
    Ok(())
}

#[tokio::test]
async fn reset_deletes_the_counter() -> TestResult {
    let node = RedisNode::start()?;
    let store = connect(&node.url()).await;
    store.apply(0, &batch(1, 1, &[("a", 2), ("b", 3)])).await?;

    store.reset(0, "a").await?;

    assert_eq!(node.get("tally:v:a")?, None);
    assert_eq!(node.get_u64("tally:v:b")?, Some(3));
    let read = store.get(0, InstanceId::from_u64(1), &["a"]).await?;
    assert_eq!(read.values, [0]);
    Ok(())
}

#[tokio::test]
async fn keys_holding_non_counts_are_reported_and_the_rest_of_the_batch_applied() -> TestResult {
    let node = RedisNode::start()?;
    node.query::<()>(redis::cmd("SET").arg("tally:v:text").arg("not a number"))?;
    node.query::<()>(redis::cmd("SET").arg("tally:v:negative").arg("-5"))?;
    node.query::<()>(redis::cmd("SET").arg("tally:v:fraction").arg("1.5"))?;
    node.query::<()>(redis::cmd("SET").arg("tally:v:long").arg("x".repeat(100)))?;
    node.query::<()>(redis::cmd("HSET").arg("tally:v:hash").arg("f").arg("v"))?;
    let store = connect(&node.url()).await;
    let keys = [
        "good",
        "text",
        "negative",
        "fraction",
        "long",
        "hash",
        "also-good",
    ];
    let one_each: Vec<(&str, u64)> = keys.iter().map(|k| (*k, 1)).collect();

    let applied = store.apply_checked(0, &batch(1, 1, &one_each)).await?;

    assert_eq!(applied.totals, [1, 0, 0, 0, 0, 0, 1]);
    let rejected: Vec<(usize, &str, &str)> = applied
        .rejected
        .iter()
        .map(|r| (r.index, r.stored_as.as_str(), r.found.as_str()))
        .collect();
    let long = format!("the value {}", "x".repeat(64));
    assert_eq!(
        rejected,
        [
            (5, "tally:v:hash", "a hash"),
            (1, "tally:v:text", "the value not a number"),
            (2, "tally:v:negative", "the value -5"),
            (3, "tally:v:fraction", "the value 1.5"),
            (4, "tally:v:long", long.as_str()),
        ],
        "each bad key named, with its type or its value cut to 64 bytes"
    );
    assert_eq!(node.get_u64("tally:v:good")?, Some(1));
    assert_eq!(node.get_u64("tally:v:also-good")?, Some(1));
    assert_eq!(node.get("tally:v:text")?.as_deref(), Some("not a number"));
    assert_eq!(node.get("tally:v:negative")?.as_deref(), Some("-5"));
    assert!(
        node.hget(COUNTER_MARKS_KEY, &mark_field(InstanceId::from_u64(1), 0))?
            .is_some_and(|mark| mark.starts_with("1:")),
        "the batch is spent"
    );
    // A retry of the same batch applies nothing more and still names the bad keys.
    let replay = store.apply_checked(0, &batch(1, 1, &one_each)).await?;
    assert_eq!(replay.totals, [1, 0, 0, 0, 0, 0, 1]);
    assert_eq!(replay.rejected.len(), 5);
    // The all-or-nothing `apply` says which key, and a read of it fails naming it.
    let refused = Store::apply(&store, 0, &batch(1, 2, &[("good", 1), ("text", 1)]))
        .await
        .unwrap_err();
    assert!(
        matches!(redis_error(&refused), Error::CorruptValue { .. }),
        "{refused:?}"
    );
    let read = Store::get(&store, 0, InstanceId::from_u64(1), &["good", "hash"])
        .await
        .unwrap_err();
    assert!(
        everything_shown(&*read).contains("tally:v:hash on redis node"),
        "{read}"
    );
    // Bad data is not a node problem: the node stays up.
    assert!(store.health()[0].up);
    Ok(())
}

#[tokio::test]
async fn a_key_of_another_type_is_found_past_the_first_chunk() -> TestResult {
    // The script checks absent keys with one EXISTS per 500; the hash sits in the third
    // chunk of a batch of new keys.
    let node = RedisNode::start()?;
    node.query::<()>(redis::cmd("HSET").arg("tally:v:hash").arg("f").arg("v"))?;
    let store = connect(&node.url()).await;
    let mut keys: Vec<String> = (0..1_200).map(|i| format!("new{i}")).collect();
    keys.insert(1_100, "hash".to_owned());

    let applied = store
        .apply_checked(0, &batch(1, 1, &deltas_of(&keys)))
        .await?;

    let rejected: Vec<(usize, &str)> = applied
        .rejected
        .iter()
        .map(|r| (r.index, r.found.as_str()))
        .collect();
    assert_eq!(rejected, [(1_100, "a hash")]);
    assert_eq!(node.get_u64("tally:v:new0")?, Some(1));
    assert_eq!(node.get_u64("tally:v:new1199")?, Some(1));
    Ok(())
}

fn deltas_of(keys: &[String]) -> Vec<(&str, u64)> {
    keys.iter().map(|k| (k.as_str(), 1)).collect()
}

#[tokio::test]
async fn lost_reply_then_retry_counts_once() -> TestResult {
    let node = RedisNode::start()?;
    let proxy = FaultProxy::start(node.addr()).await?;
    let store = connect(&proxy.url()).await;
    // Load the script first, so the lost reply is the one of the batch itself and not a
    // NOSCRIPT answer.
    store.get(0, InstanceId::from_u64(5), &["warm-up"]).await?;
    let once = batch(5, 1, &[("k", 4)]);
    proxy.set_mode(Mode::DropRepliesMatching(1, b"EVALSHA".to_vec()));

    let lost = Store::apply(&store, 0, &once).await.unwrap_err();

    assert!(
        matches!(redis_error(&lost), Error::Connection { .. }),
        "{lost:?}"
    );
    assert_eq!(proxy.replies_dropped(), 1);
    assert_eq!(
        node.get_u64("tally:v:k")?,
        Some(4),
        "the node did not apply the batch"
    );

    store.check_health().await;
    let retried = store.apply(0, &once).await?;

    assert_eq!(retried, [4]);
    assert_eq!(
        node.get_u64("tally:v:k")?,
        Some(4),
        "the retry was applied again"
    );
    Ok(())
}

#[tokio::test]
async fn layouts_share_nodes_but_not_marks() -> TestResult {
    let node = RedisNode::start()?;
    let visits = connect(&node.url()).await;
    let stats = visits.with_layout(Layout::SortedSet);
    // The same instance id and seq in both layouts: two different batches.
    let same_id = batch(3, 1, &[("/api/x/", 2)]);

    visits.apply(0, &same_id).await?;
    let stats_totals = stats.apply(0, &same_id).await?;

    assert_eq!(stats_totals, [2], "the stats batch was taken for a replay");
    assert_eq!(node.get_u64("tally:v:/api/x/")?, Some(2));
    assert_eq!(node.zscore("tally:urls", "/api/x/")?, Some(2.0));
    Ok(())
}

#[tokio::test]
async fn large_batches_are_applied_in_one_call() -> TestResult {
    let node = RedisNode::start()?;
    let store = connect(&node.url()).await;
    // Far above the script's chunk size, like a batch built up during an outage.
    let keys: Vec<String> = (0..12_345).map(|i| format!("big{i}")).collect();
    let deltas: Vec<(&str, u64)> = keys.iter().map(|k| (k.as_str(), 2)).collect();

    let totals = store.apply(0, &batch(1, 1, &deltas)).await?;
    let read = store
        .get(
            0,
            InstanceId::from_u64(1),
            &[keys[0].as_str(), keys[12_344].as_str()],
        )
        .await?;

    assert_eq!(totals.len(), 12_345);
    assert!(totals.iter().all(|&t| t == 2));
    assert_eq!(
        node.dbsize()?,
        12_345 + 4,
        "counters plus the marks hash, the node id, the ring record and the lease"
    );
    assert_eq!(node.get_u64("tally:v:big12344")?, Some(2));
    assert_eq!(read.values, [2, 2]);
    Ok(())
}

#[tokio::test]
async fn totals_stay_exact_up_to_two_to_the_53() -> TestResult {
    let node = RedisNode::start()?;
    let near = tally_redis::MAX_TOTAL - 10;
    node.query::<()>(redis::cmd("SET").arg("tally:v:big").arg(near))?;
    let store = connect(&node.url()).await;

    let totals = store.apply(0, &batch(1, 1, &[("big", 7)])).await?;
    let over = store
        .apply_checked(0, &batch(1, 2, &[("big", 7), ("small", 1)]))
        .await?;

    assert_eq!(totals, [near + 7]);
    assert_eq!(node.get("tally:v:big")?, Some((near + 7).to_string()));
    assert_eq!(over.totals, [0, 1]);
    assert_eq!(over.rejected.len(), 1);
    assert!(
        over.rejected[0].found.contains("would take past 2^53-1"),
        "{:?}",
        over.rejected
    );
    assert_eq!(node.get_u64("tally:v:big")?, Some(near + 7));
    assert_eq!(node.get_u64("tally:v:small")?, Some(1));
    Ok(())
}

#[tokio::test]
async fn a_batch_naming_a_key_twice_is_refused_before_sending() -> TestResult {
    let node = RedisNode::start()?;
    let store = connect(&node.url()).await;

    let err = Store::apply(&store, 0, &batch(1, 1, &[("k", 1), ("j", 5), ("k", 2)]))
        .await
        .unwrap_err();

    assert!(
        matches!(redis_error(&err), Error::InvalidBatch { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("'k'"), "{err}");
    assert_eq!(node.get("tally:v:j")?, None);
    Ok(())
}
