//! `Counter::increment_all`: several keys recorded together or not at all, within the same
//! bounds as one key at a time, and counted exactly once when written.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tally_counter::{Counter, CounterConfig, Error, MemoryStore};

use crate::support::manual_config;

/// A counter over one shard with room for `keys` keys waiting.
fn bounded(keys: usize) -> Counter<MemoryStore> {
    let config = CounterConfig {
        max_pending_keys: keys,
        ..manual_config()
    };
    Counter::new(MemoryStore::new(), config).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_bulk_that_does_not_fit_records_nothing_and_gives_every_place_back() {
    let counter = bounded(10);
    for i in 0..8 {
        counter.increment(&format!("k{i}"), 1).unwrap();
    }

    // Three new keys for two places: refused, none recorded, not even the two that fit.
    let refused = counter
        .increment_all(&[("k0", 5), ("new-a", 1), ("new-b", 1), ("new-c", 1)])
        .unwrap_err();
    assert!(matches!(refused, Error::Overloaded { .. }), "{refused:?}");
    assert_eq!(counter.snapshot().write_buffer_size, 8);
    assert_eq!(
        counter.get("k0").await.unwrap().value,
        1,
        "k0's 5 not recorded"
    );
    assert_eq!(counter.get("new-a").await.unwrap().value, 0);

    // The places taken for new-a and new-b before new-c was refused came back: two new
    // keys still fit, with keys already waiting beside them.
    counter
        .increment_all(&[("new-a", 2), ("k0", 5), ("new-b", 3)])
        .unwrap();
    assert_eq!(counter.snapshot().write_buffer_size, 10);
    assert!(matches!(
        counter.increment("new-c", 1),
        Err(Error::Overloaded { .. })
    ));

    counter.flush().await;
    let store = counter.store();
    assert_eq!(
        (
            store.value("k0"),
            store.value("new-a"),
            store.value("new-b")
        ),
        (6, 2, 3)
    );
    assert_eq!(store.value("new-c"), 0);
    assert_eq!(
        counter.snapshot().write_buffer_size,
        0,
        "every place given back"
    );
}

#[tokio::test(start_paused = true)]
async fn a_key_listed_twice_gets_both_increments_and_one_place() {
    let counter = bounded(2);
    counter
        .increment_all(&[("a", 1), ("a", 2), ("b", 4)])
        .unwrap();
    assert_eq!(counter.snapshot().write_buffer_size, 2);
    counter.flush().await;
    assert_eq!(
        (counter.store().value("a"), counter.store().value("b")),
        (3, 4)
    );
    assert_eq!(counter.snapshot().write_buffer_size, 0);

    // A long list (looked up by a map, not by scanning): the same.
    let counter = bounded(11);
    let keys: Vec<String> = (0..11).map(|i| format!("k{i}")).collect();
    let mut list: Vec<(&str, u64)> = keys.iter().map(|k| (k.as_str(), 1)).collect();
    list.push(("k3", 5));
    counter.increment_all(&list).unwrap();
    assert_eq!(counter.snapshot().write_buffer_size, 11);
    counter.flush().await;
    assert_eq!(counter.store().value("k3"), 6);
}

#[tokio::test(start_paused = true)]
async fn a_held_key_refuses_the_whole_bulk() {
    let store = MemoryStore::new();
    store.corrupt("poison", "a string: abc");
    let counter = Counter::new(store, manual_config()).unwrap();
    counter.increment("poison", 1).unwrap();
    counter.flush().await;
    assert_eq!(counter.snapshot().quarantined_keys, 1);

    let refused = counter
        .increment_all(&[("fine", 1), ("poison", 1)])
        .unwrap_err();
    assert!(matches!(refused, Error::Corrupt { .. }), "{refused:?}");
    counter.flush().await;
    assert_eq!(
        counter.store().value("fine"),
        0,
        "nothing of the bulk recorded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_bulks_and_single_increments_under_a_tight_bound_count_what_was_accepted() {
    // Room for 40 keys of 60: many bulks are refused while batches drain the buffer.
    let config = CounterConfig {
        max_pending_keys: 40,
        batch_interval: std::time::Duration::from_millis(2),
        ..crate::support::fast_config()
    };
    let counter = Counter::new(MemoryStore::with_shards(4), config).unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..4_u64)
        .map(|t| {
            let counter = counter.clone();
            let accepted = Arc::clone(&accepted);
            let refused = Arc::clone(&refused);
            tokio::spawn(async move {
                for round in 0..2_000_u64 {
                    let keys: Vec<String> = (0..5)
                        .map(|i| format!("p{}", (t * 7 + round + i * 11) % 60))
                        .collect();
                    let bulk: Vec<(&str, u64)> =
                        keys.iter().map(|k| (k.as_str(), 1 + round % 3)).collect();
                    let sum: u64 = bulk.iter().map(|(_, n)| n).sum();
                    match counter.increment_all(&bulk) {
                        Ok(()) => accepted.fetch_add(sum, Ordering::Relaxed),
                        Err(Error::Overloaded { .. }) => refused.fetch_add(1, Ordering::Relaxed),
                        Err(other) => panic!("{other:?}"),
                    };
                    if counter.increment(&keys[0], 1).is_ok() {
                        accepted.fetch_add(1, Ordering::Relaxed);
                    }
                    if round % 64 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    counter.flush().await;

    let stored: u64 = counter.store().entries().iter().map(|(_, v)| v).sum();
    assert_eq!(
        stored,
        accepted.load(Ordering::Relaxed),
        "exactly what was accepted"
    );
    assert!(refused.load(Ordering::Relaxed) > 0, "the bound was reached");
    assert_eq!(
        counter.snapshot().write_buffer_size,
        0,
        "every place given back"
    );
}
