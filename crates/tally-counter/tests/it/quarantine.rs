//! Keys whose stored value is not a count: their increments are held apart, and the rest
//! of the shard goes on being written.

use std::time::Duration;

use tally_counter::{Counter, CounterConfig, Error, MemoryStore};

use crate::support::{manual_config, wait_until};

const POISON: &str = "poison";

/// A counter over one shard whose store holds text for [`POISON`], with increments for it
/// and for 120 other keys written (the poisoned key's held).
async fn poisoned(config: CounterConfig) -> Counter<MemoryStore> {
    let store = MemoryStore::new();
    store.corrupt(POISON, "a string: abc");
    let counter = Counter::new(store, config).unwrap();
    counter.increment(POISON, 2).unwrap();
    for i in 0..120 {
        counter.increment(&format!("page-{i}"), 1).unwrap();
    }
    tokio::time::timeout(Duration::from_secs(3600), counter.flush())
        .await
        .expect("the flush finished within an hour: the poisoned key did not wedge its shard");
    counter
}

#[tokio::test(start_paused = true)]
async fn a_poisoned_key_is_held_and_the_rest_of_its_shard_is_written() {
    let counter = poisoned(manual_config()).await;

    let store = counter.store();
    assert!(
        (0..120).all(|i| store.value(&format!("page-{i}")) == 1),
        "every other key of the shard was written"
    );
    let snapshot = counter.snapshot();
    assert_eq!(snapshot.quarantined_keys, 1);
    assert_eq!(
        snapshot.write_buffer_size, 1,
        "the held key keeps its place"
    );
    let refused = counter.increment(POISON, 1).unwrap_err();
    match &refused {
        Error::Corrupt {
            key,
            stored_as,
            found,
            ..
        } => assert_eq!(
            (key.as_str(), stored_as.as_str(), found.as_str()),
            (POISON, POISON, "a string: abc")
        ),
        other => panic!("not Corrupt: {other:?}"),
    }
    assert!(refused.to_string().contains("a string: abc"), "{refused}");
    assert!(matches!(
        counter.get(POISON).await,
        Err(Error::Corrupt { .. })
    ));
    assert_eq!(counter.get_cached(POISON), None);
    // Others are still counted and read.
    counter.increment("page-0", 1).unwrap();
    assert_eq!(counter.get("page-0").await.unwrap().value, 2);
}

#[tokio::test(start_paused = true)]
async fn a_repaired_key_takes_its_held_increments_at_the_next_recheck() {
    let config = CounterConfig {
        batch_interval: Duration::from_secs(60),
        quarantine_recheck: Duration::from_secs(1),
        ..manual_config()
    };
    let counter = poisoned(config).await;
    counter.store().repair(POISON, 10);

    wait_until("the held increments were written", || {
        counter.store().value(POISON) == 12
    })
    .await;
    assert_eq!(counter.snapshot().quarantined_keys, 0);
    assert_eq!(counter.snapshot().write_buffer_size, 0);
    counter.increment(POISON, 1).unwrap();
    assert_eq!(counter.get(POISON).await.unwrap().value, 13);
}

#[tokio::test(start_paused = true)]
async fn a_held_key_stays_held_while_its_value_is_bad() {
    let config = CounterConfig {
        quarantine_recheck: Duration::from_secs(1),
        batch_interval: Duration::from_millis(500),
        ..manual_config()
    };
    let counter = poisoned(config).await;
    tokio::time::sleep(Duration::from_secs(10)).await;

    assert_eq!(counter.snapshot().quarantined_keys, 1);
    assert_eq!(counter.snapshot().write_buffer_size, 1);
    let report = counter.shutdown(Duration::from_secs(1)).await;
    assert_eq!(
        (report.keys_unwritten, report.increments_unwritten),
        (1, 2),
        "held increments are reported unwritten at shutdown"
    );
}

#[tokio::test(start_paused = true)]
async fn a_reset_drops_the_held_increments_and_frees_the_key() {
    let counter = poisoned(manual_config()).await;

    counter.reset(POISON).await.unwrap();

    assert_eq!(counter.snapshot().quarantined_keys, 0);
    assert_eq!(counter.snapshot().write_buffer_size, 0);
    counter.increment(POISON, 1).unwrap();
    counter.flush().await;
    assert_eq!(counter.store().value(POISON), 1);
}
