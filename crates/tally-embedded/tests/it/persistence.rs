//! Counts and marks outlive the store: close, reopen, and batches retried across both.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tally_counter::{Counter, InstanceId, Store};

use crate::support::{Spy, TestResult, batch, fast_counter, open, read};

#[tokio::test]
async fn counts_and_marks_survive_close_and_reopen() -> TestResult {
    let dir = tempfile::tempdir()?;
    {
        let visits = open(dir.path());
        let stats = visits.ranked();
        visits
            .apply(0, &batch(1, 1, &[("page1", 3), ("page2", 1)]))
            .await?;
        visits.apply(0, &batch(1, 2, &[("page1", 4)])).await?;
        stats.apply(0, &batch(2, 9, &[("/api/a/", 5)])).await?;
    }

    let visits = open(dir.path());
    let stats = visits.ranked();

    assert_eq!(read(&visits, 1, &["page1", "page2"]).await, (vec![7, 1], 2));
    assert_eq!(read(&stats, 2, &["/api/a/"]).await, (vec![5], 9));
    assert_eq!(stats.top(0, 10).await?, [("/api/a/".to_owned(), 5)]);
    assert!(
        !visits.was_repaired(),
        "a store dropped closes its file cleanly"
    );
    Ok(())
}

#[tokio::test]
async fn the_same_batch_twice_is_counted_once_even_across_a_reopen() -> TestResult {
    let dir = tempfile::tempdir()?;
    let first = batch(7, 1, &[("a", 2), ("b", 3)]);
    let second = batch(7, 2, &[("a", 10)]);
    {
        let store = open(dir.path());
        assert_eq!(store.apply(0, &first).await?, [2, 3]);
        assert_eq!(
            store.apply(0, &first).await?,
            [2, 3],
            "a replay answers the totals"
        );
        assert_eq!(store.apply(0, &second).await?, [12]);
    }

    let store = open(dir.path());
    let replayed = store.apply_checked(0, &first).await?;

    assert_eq!(replayed.totals, [12, 3], "current totals, nothing applied");
    assert!(replayed.rejected.is_empty());
    assert_eq!(store.apply(0, &second).await?, [12]);
    assert_eq!(read(&store, 7, &["a", "b"]).await, (vec![12, 3], 2));
    Ok(())
}

#[tokio::test]
async fn marks_are_kept_per_instance_and_per_layout() -> TestResult {
    let dir = tempfile::tempdir()?;
    let visits = open(dir.path());
    let stats = visits.ranked();

    visits.apply(0, &batch(1, 5, &[("k", 1)])).await?;
    visits.apply(0, &batch(2, 1, &[("k", 1)])).await?;
    // Same instance and sequence, other layout: a batch of its own.
    stats.apply(0, &batch(1, 5, &[("k", 1)])).await?;

    assert_eq!(read(&visits, 1, &["k"]).await, (vec![2], 5));
    assert_eq!(read(&visits, 2, &["k"]).await, (vec![2], 1));
    assert_eq!(read(&stats, 1, &["k"]).await, (vec![1], 5));
    assert_eq!(read(&stats, 3, &["k"]).await, (vec![1], 0));
    Ok(())
}

#[tokio::test]
async fn a_counter_retrying_lost_replies_counts_every_increment_once() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = Spy {
        lose_replies: true,
        ..Spy::new(open(dir.path()))
    };
    let counter = Counter::new(store.clone(), fast_counter())?;

    for round in 0..20u64 {
        for page in 0..10u64 {
            counter.increment(&format!("page{page}"), round + 1)?;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let report = counter.shutdown(Duration::from_secs(10)).await;

    assert_eq!(report.keys_unwritten, 0);
    assert!(
        store.batches.load(Ordering::Relaxed) >= 2,
        "replies were lost"
    );
    let keys: Vec<String> = (0..10).map(|page| format!("page{page}")).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let read = store.inner.get(0, InstanceId::from_u64(0), &keys).await?;
    // 1 + 2 + ... + 20 per page, each increment exactly once.
    assert_eq!(read.values, vec![210; 10]);
    Ok(())
}

#[tokio::test]
async fn the_shard_is_reported_up_under_its_name() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path());

    let health = store.health();

    assert_eq!(health.len(), 1);
    assert_eq!(health[0].name, tally_embedded::SHARD_NAME);
    assert!(health[0].up);
    assert!(store.shard_up(0));
    assert_eq!(store.shard_count(), 1);
    assert_eq!(store.shard_of("anything"), 0);
    Ok(())
}

#[tokio::test]
async fn old_marks_are_swept_and_recent_ones_kept() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path());
    store.apply(0, &batch(1, 3, &[("k", 1)])).await?;
    store.ranked().apply(0, &batch(1, 4, &[("k", 1)])).await?;

    assert_eq!(store.sweep_marks(Duration::from_secs(3600)).await?, 0);
    assert_eq!(read(&store, 1, &["k"]).await, (vec![1], 3));
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(store.sweep_marks(Duration::from_millis(10)).await?, 2);
    assert_eq!(
        read(&store, 1, &["k"]).await,
        (vec![1], 0),
        "the counts stay"
    );
    Ok(())
}
