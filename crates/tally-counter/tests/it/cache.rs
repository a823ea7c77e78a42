//! The read cache: hits, misses, TTL and capacity.
//!
//! The cache (moka) keeps its own clock, so TTL is tested on real time with short values.

use std::time::Duration;

use tally_counter::{Counter, CounterConfig, MemoryStore, ServedVia};

use crate::support::manual_config;

#[tokio::test]
async fn hits_and_misses_are_counted() {
    let counter = Counter::new(MemoryStore::new(), manual_config()).unwrap();

    let first = counter.get("a").await.unwrap();
    let second = counter.get("a").await.unwrap();
    let other = counter.get("b").await.unwrap();

    assert_eq!(first.served_via, ServedVia::Store(0));
    assert_eq!(second.served_via, ServedVia::Cache);
    assert_eq!(other.served_via, ServedVia::Store(0));
    let snapshot = counter.snapshot();
    assert_eq!((snapshot.cache_hits, snapshot.cache_misses), (1, 2));
}

#[tokio::test]
async fn get_cached_answers_hits_only_and_includes_pending_deltas() {
    let counter = Counter::new(MemoryStore::new(), manual_config()).unwrap();
    counter.increment("a", 2).unwrap();

    let before_read = counter.get_cached("a");
    assert_eq!(counter.get("a").await.unwrap().value, 2);
    counter.increment("a", 3).unwrap();
    let after_read = counter.get_cached("a");

    assert_eq!(before_read, None, "nothing cached before the first read");
    let after_read = after_read.expect("the read cached the stored value");
    assert_eq!(
        (after_read.value, after_read.served_via),
        (5, ServedVia::Cache)
    );
    let snapshot = counter.snapshot();
    assert_eq!(
        (snapshot.cache_hits, snapshot.cache_misses),
        (1, 1),
        "a miss of get_cached is counted by the get that follows, not twice"
    );
}

#[tokio::test]
async fn cache_entry_expires_after_ttl() {
    let config = CounterConfig {
        cache_ttl: Duration::from_millis(100),
        ..manual_config()
    };
    let counter = Counter::new(MemoryStore::new(), config).unwrap();
    counter.increment("a", 1).unwrap();
    counter.flush().await;
    assert_eq!(counter.get("a").await.unwrap().served_via, ServedVia::Cache);

    tokio::time::sleep(Duration::from_millis(250)).await;
    let count = counter.get("a").await.unwrap();

    assert_eq!((count.value, count.served_via), (1, ServedVia::Store(0)));
}

#[tokio::test]
async fn cache_capacity_bounds_its_size() {
    let config = CounterConfig {
        cache_capacity: 10,
        ..manual_config()
    };
    let counter = Counter::new(MemoryStore::new(), config).unwrap();
    for i in 0..200 {
        counter.increment(&format!("k{i}"), 1).unwrap();
    }
    counter.flush().await;

    let size = counter.snapshot().cache_size;

    assert!(
        size <= 10,
        "cache holds {size} entries over a capacity of 10"
    );
    for i in 0..200 {
        assert_eq!(
            counter.get(&format!("k{i}")).await.unwrap().value,
            1,
            "evicted keys read through"
        );
    }
}

#[tokio::test]
async fn a_flush_refreshes_the_cache_with_store_totals() {
    let counter = Counter::new(MemoryStore::new(), manual_config()).unwrap();
    assert_eq!(counter.get("a").await.unwrap().value, 0);
    counter.increment("a", 4).unwrap();

    counter.flush().await;
    let count = counter.get("a").await.unwrap();

    assert_eq!((count.value, count.served_via), (4, ServedVia::Cache));
}
