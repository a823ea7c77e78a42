//! Store faults: lost replies, failures, a hung shard, resets racing batches.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tally_counter::{Counter, CounterConfig, Store};

use crate::support::{
    Fault, ScriptedStore, fast_config, gated_applies, manual_config, spawn_flush, wait_until,
};

#[tokio::test]
async fn lost_reply_is_retried_and_counted_once() {
    let store = ScriptedStore::new(1).with_faults(&[Fault::LoseReply]);
    let counter = Counter::new(store, manual_config()).unwrap();
    counter.increment("page", 3).unwrap();

    counter.flush().await;

    assert_eq!(
        counter.store().inner.value("page"),
        3,
        "applied once, not twice"
    );
    assert_eq!(
        counter.store().applies.load(Ordering::SeqCst),
        2,
        "the batch was sent again"
    );
    let snapshot = counter.snapshot();
    assert_eq!((snapshot.batches_ok, snapshot.batches_failed), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn read_during_retry_after_lost_reply_counts_the_batch_once() {
    let store = ScriptedStore::new(1).with_faults(&[Fault::LoseReply]);
    let counter = hour_backoff(store);
    let flusher = flush_after_one_failure(&counter, 3).await;
    // The store applied the batch but the counter does not know: it is still in flight,
    // its retry an hour away on the paused clock.
    assert_eq!(counter.store().inner.value("page"), 3);

    let count = counter.get("page").await.unwrap();
    let acknowledged_before_the_read = counter.snapshot().batches_ok;

    assert_eq!(
        acknowledged_before_the_read, 0,
        "the read ran while the batch was in flight"
    );
    assert_eq!(
        count.value, 3,
        "the store value already holds the in-flight batch"
    );
    flusher.await.unwrap();
    assert_eq!(counter.store().applies.load(Ordering::SeqCst), 2);
    assert_eq!(counter.get("page").await.unwrap().value, 3);
}

#[tokio::test]
async fn store_failing_three_times_then_recovering_loses_nothing_and_keeps_reset_order() {
    let store = ScriptedStore::new(1).with_faults(&[Fault::Fail, Fault::Fail, Fault::Fail]);
    let counter = Counter::new(store, manual_config()).unwrap();
    counter.increment("a", 5).unwrap();
    counter.increment("b", 7).unwrap();
    counter.flush().await;
    assert_eq!(
        counter.store().applies.load(Ordering::SeqCst),
        4,
        "3 failures, then success"
    );

    counter.increment("a", 1).unwrap();
    counter.reset("a").await.unwrap();
    counter.increment("a", 2).unwrap();
    counter.flush().await;

    assert_eq!(
        counter.store().inner.value("a"),
        2,
        "the reset came after 5+1, before 2"
    );
    assert_eq!(counter.store().inner.value("b"), 7);
    assert_eq!(counter.get("a").await.unwrap().value, 2);
}

#[tokio::test(start_paused = true)]
async fn reset_wins_over_inflight_batch() {
    let (counter, gate) = gated_applies(manual_config());
    counter.increment("page", 10).unwrap();
    let flusher = spawn_flush(&counter);
    counter.store().entered.notified().await;

    // The reset must wait for the held batch; release it only once the reset is waiting.
    // On the paused clock the sleep ends only when every task is idle: the reset has gone
    // as far as it can.
    let reset = {
        let counter = counter.clone();
        tokio::spawn(async move { counter.reset("page").await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!reset.is_finished(), "reset waits for the in-flight batch");
    gate.add_permits(1);
    flusher.await.unwrap();
    reset.await.unwrap().unwrap();

    assert_eq!(counter.store().inner.value("page"), 0);
    assert_eq!(counter.get("page").await.unwrap().value, 0);
    counter.increment("page", 4).unwrap();
    gate.add_permits(1);
    counter.flush().await;
    assert_eq!(
        counter.store().inner.value("page"),
        4,
        "counts again from zero"
    );
}

#[tokio::test]
async fn reset_drops_pending_deltas_of_the_key_only() {
    let counter = Counter::new(ScriptedStore::new(1), manual_config()).unwrap();
    counter.increment("a", 3).unwrap();
    counter.increment("b", 4).unwrap();

    counter.reset("a").await.unwrap();
    counter.flush().await;

    assert_eq!(counter.store().inner.value("a"), 0);
    assert_eq!(counter.store().inner.value("b"), 4);
    assert_eq!(counter.snapshot().write_buffer_size, 0);
}

#[tokio::test(start_paused = true)]
async fn one_failing_shard_does_not_hold_back_others() {
    // Find one key per shard of a two-shard store.
    let probe = ScriptedStore::new(2);
    let key_on = |shard| {
        (0..)
            .map(|i| format!("k{i}"))
            .find(|k| probe.shard_of(k) == shard)
    };
    let (healthy, hung) = (key_on(0).unwrap(), key_on(1).unwrap());
    let store = ScriptedStore::new(2)
        .with_faults(&[Fault::Hang])
        .on_shard(1);
    let config = CounterConfig {
        batch_interval: Duration::from_millis(10),
        ..manual_config()
    };
    let counter = Counter::new(store, config).unwrap();

    counter.increment(&hung, 1).unwrap();
    counter.increment(&healthy, 1).unwrap();
    wait_until("the healthy shard flushed", || {
        counter.store().inner.value(&healthy) != 0
    })
    .await;

    assert_eq!(counter.store().inner.value(&hung), 0);
    assert_eq!(
        counter.get(&hung).await.unwrap().value,
        1,
        "still readable from memory"
    );
}

#[tokio::test]
async fn overload_refuses_new_keys_and_counts_nothing_it_refused() {
    let config = CounterConfig {
        max_pending_keys: 10,
        ..manual_config()
    };
    let counter = Counter::new(ScriptedStore::new(1), config).unwrap();
    for i in 0..10 {
        counter.increment(&format!("k{i}"), 1).unwrap();
    }

    let refused = counter.increment("k10", 1);
    let existing = counter.increment("k0", 1);

    assert!(
        matches!(
            refused,
            Err(tally_counter::Error::Overloaded {
                pending: 10,
                limit: 10
            })
        ),
        "{refused:?}"
    );
    assert!(existing.is_ok(), "a pending key still takes increments");
    counter.flush().await;
    assert_eq!(
        counter.store().inner.value("k10"),
        0,
        "the refused increment is not counted"
    );
    assert_eq!(counter.store().inner.value("k0"), 2);
    assert!(
        counter.increment("k10", 1).is_ok(),
        "room again after the flush"
    );
}

#[tokio::test(start_paused = true)]
async fn a_hung_shard_fills_only_its_share_of_the_pending_bound() {
    let probe = ScriptedStore::new(2);
    let keys_on = |shard, n| {
        (0..)
            .map(|i| format!("k{i}"))
            .filter(|k| probe.shard_of(k) == shard)
            .take(n)
            .collect::<Vec<_>>()
    };
    let (hung, healthy) = (keys_on(1, 6), keys_on(0, 20));
    let store = ScriptedStore::new(2)
        .with_faults(&[Fault::Hang])
        .on_shard(1);
    let config = CounterConfig {
        max_pending_keys: 10,
        batch_interval: Duration::from_millis(10),
        ..manual_config()
    };
    let counter = Counter::new(store, config).unwrap();

    // The hung shard takes its share (10 / 2 shards = 5 keys), then refuses new keys.
    for key in &hung[..5] {
        counter.increment(key, 1).unwrap();
    }
    let refused = counter.increment(&hung[5], 1);
    assert!(
        matches!(
            refused,
            Err(tally_counter::Error::Overloaded {
                pending: 5,
                limit: 5
            })
        ),
        "{refused:?}"
    );
    assert!(
        counter.increment(&hung[0], 1).is_ok(),
        "a key already waiting still takes increments"
    );
    // The healthy shard keeps taking new keys, one batch at a time, well past what a
    // bound shared with the hung shard would leave it.
    for key in &healthy {
        counter.increment(key, 1).unwrap();
        wait_until(&format!("{key} flushed"), || {
            counter.store().inner.value(key) != 0
        })
        .await;
    }
    assert_eq!(
        counter.snapshot().write_buffer_size,
        5,
        "only the hung shard's keys wait"
    );
}

/// A counter over `store` whose failed batches wait 30 to 60 minutes before a retry: on
/// the paused clock, until the test lets time run.
fn hour_backoff(store: ScriptedStore) -> Counter<ScriptedStore> {
    let config = CounterConfig {
        retry_backoff_min: Duration::from_secs(3600),
        retry_backoff_max: Duration::from_secs(3600),
        ..manual_config()
    };
    Counter::new(store, config).unwrap()
}

/// Adds `n` to `page`, starts a flush and returns it once its first batch has failed.
async fn flush_after_one_failure(
    counter: &Counter<ScriptedStore>,
    n: u64,
) -> tokio::task::JoinHandle<()> {
    counter.increment("page", n).unwrap();
    let flush = spawn_flush(counter);
    wait_until("the first attempt failed", || {
        counter.snapshot().batches_failed == 1
    })
    .await;
    flush
}

#[tokio::test(start_paused = true)]
async fn a_batch_failed_on_a_down_shard_is_retried_as_soon_as_the_shard_is_back() {
    let store = ScriptedStore::new(1).with_faults(&[Fault::Fail]);
    store.down.store(true, Ordering::SeqCst);
    let counter = hour_backoff(store);

    let flush = flush_after_one_failure(&counter, 1).await;
    // Twenty minutes down, well inside the backoff (30 to 60 minutes).
    tokio::time::sleep(Duration::from_secs(20 * 60)).await;
    let waited_while_down = !flush.is_finished();
    counter.store().down.store(false, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(1), flush)
        .await
        .expect("retried once the shard was back up, not after the hour's backoff")
        .unwrap();

    assert!(waited_while_down, "no retry while the shard was down");
    assert_eq!(counter.store().applies.load(Ordering::SeqCst), 2);
    assert_eq!(counter.store().inner.value("page"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_batch_failed_on_a_shard_that_is_up_waits_its_whole_backoff() {
    let store = ScriptedStore::new(1).with_faults(&[Fault::Fail]);
    let counter = hour_backoff(store);

    let flush = flush_after_one_failure(&counter, 1).await;
    // The backoff is 30 to 60 minutes (jittered): no retry before 30, one by 60.
    tokio::time::sleep(Duration::from_secs(29 * 60)).await;
    let applies_before_the_backoff = counter.store().applies.load(Ordering::SeqCst);
    let finished_before_the_backoff = flush.is_finished();
    tokio::time::timeout(Duration::from_secs(32 * 60), flush)
        .await
        .expect("retried at the end of the backoff")
        .unwrap();

    assert!(!finished_before_the_backoff, "not retried early");
    assert_eq!(applies_before_the_backoff, 1, "not retried early");
    assert_eq!(counter.store().applies.load(Ordering::SeqCst), 2);
    assert_eq!(counter.store().inner.value("page"), 1);
}

#[tokio::test]
async fn a_key_in_a_stuck_batch_still_takes_increments_when_the_share_is_full() {
    let (counter, gate) = gated_applies(CounterConfig {
        max_pending_keys: 3,
        ..manual_config()
    });
    for key in ["a", "b"] {
        counter.increment(key, 1).unwrap();
    }
    // "a" and "b" go out in a batch the store holds; "c" and "d" fill the bound behind it.
    let flush = spawn_flush(&counter);
    counter.store().entered.notified().await;
    counter.increment("c", 1).unwrap();

    let in_flight = counter.increment("a", 10);
    let in_flight_again = counter.increment("a", 100);
    let new_key = counter.increment("d", 1);
    gate.add_permits(100);
    flush.await.unwrap();
    counter.flush().await;

    assert!(in_flight.is_ok(), "{in_flight:?}");
    assert!(in_flight_again.is_ok(), "{in_flight_again:?}");
    assert!(
        matches!(new_key, Err(tally_counter::Error::Overloaded { .. })),
        "a new key is still refused: {new_key:?}"
    );
    let values: Vec<u64> = ["a", "b", "c", "d"]
        .iter()
        .map(|k| counter.store().inner.value(k))
        .collect();
    assert_eq!(values, [111, 1, 1, 0]);
    assert_eq!(
        counter.snapshot().write_buffer_size,
        0,
        "every place given back"
    );
}

#[tokio::test(start_paused = true)]
async fn a_flusher_that_panics_is_restarted_and_resends_its_batch_once() {
    // The store panics in the first apply: the shard's flusher must not stop for good.
    let store = ScriptedStore::new(2)
        .on_shard(0)
        .with_faults(&[Fault::Panic]);
    let counter = Counter::new(store, fast_config()).unwrap();
    let page = (0..)
        .map(|i| format!("p{i}"))
        .find(|key| counter.store().shard_of(key) == 0)
        .unwrap();
    counter.increment(&page, 3).unwrap();

    wait_until("the batch was written after the panic", || {
        counter.store().inner.value(&page) == 3
    })
    .await;
    counter.increment(&page, 2).unwrap();
    wait_until("the restarted flusher keeps writing", || {
        counter.store().inner.value(&page) == 5
    })
    .await;

    assert_eq!(counter.snapshot().task_panics, 1, "the panic was counted");
    let sent = counter.store().sent();
    assert_eq!(
        sent[1], sent[0],
        "the batch cut off by the panic went out again with its id"
    );
    assert_eq!(counter.snapshot().write_buffer_size, 0);
}
