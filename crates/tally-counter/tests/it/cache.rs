//! The read cache: hits, misses, TTL and capacity.
//!
//! The cache (moka) keeps time on the real clock, not tokio's, so paused time does not
//! move it. Tests that expect a hit run with the hour-long TTL of the support configs; the
//! test of expiry uses a short TTL and waits for the entry to go, however long the machine
//! takes, rather than sleeping a fixed time.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tally_counter::{
    Batch, BatchId, Counter, CounterConfig, Error, InstanceId, MemoryStore, ServedVia, Store,
};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::support::{PATIENCE, ScriptedStore, eventually, manual_config, wait_until};

/// A counter over one shard whose reads wait for permits of the returned gate.
fn gated_reads() -> (Counter<ScriptedStore>, Arc<Semaphore>) {
    let gate = Arc::new(Semaphore::new(0));
    let store = ScriptedStore::new(1).reads_gated(Arc::clone(&gate));
    (Counter::new(store, manual_config()).unwrap(), gate)
}

/// Adds `delta` to `key` in the store as another instance would (this counter's cache
/// does not learn of it).
async fn stored_elsewhere(counter: &Counter<ScriptedStore>, key: &str, delta: u64) {
    let batch = Batch {
        id: BatchId {
            instance: InstanceId::from_u64(7),
            seq: 1,
        },
        deltas: vec![(key.into(), delta)],
    };
    counter.store().inner.apply(0, &batch).await.unwrap();
}

/// `n` concurrent `get`s of `key`, returned once every one of them has missed the cache
/// (and so has joined the read in progress or started it).
async fn concurrent_gets(
    counter: &Counter<ScriptedStore>,
    key: &'static str,
    n: u64,
) -> Vec<JoinHandle<tally_counter::Result<tally_counter::Count>>> {
    let misses_before = counter.snapshot().cache_misses;
    let tasks = (0..n)
        .map(|_| {
            let counter = counter.clone();
            tokio::spawn(async move { counter.get(key).await })
        })
        .collect();
    wait_until("every reader missed the cache", || {
        counter.snapshot().cache_misses == misses_before + n
    })
    .await;
    tasks
}

/// A gated counter whose store holds `stored` for key `a`, and a `get("a")` that has read
/// it from the store and waits for a permit of the gate to answer.
async fn a_read_held_back(
    stored: u64,
) -> (
    Counter<ScriptedStore>,
    Arc<Semaphore>,
    JoinHandle<tally_counter::Result<tally_counter::Count>>,
) {
    let (counter, gate) = gated_reads();
    stored_elsewhere(&counter, "a", stored).await;
    let reader = concurrent_gets(&counter, "a", 1).await.remove(0);
    wait_until("the read reached the store", || store_reads(&counter) == 1).await;
    (counter, gate, reader)
}

/// Store reads started so far.
fn store_reads(counter: &Counter<ScriptedStore>) -> usize {
    counter.store().gets.load(Ordering::SeqCst)
}

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
    let ttl = Duration::from_millis(100);
    let config = CounterConfig {
        cache_ttl: ttl,
        ..manual_config()
    };
    let counter = Counter::new(ScriptedStore::new(1), config).unwrap();
    counter.increment("a", 1).unwrap();
    // Read once, so the flush refreshes a cached entry (it caches no key never read).
    assert_eq!(counter.get("a").await.unwrap().value, 1);
    let before_caching = std::time::Instant::now();
    counter.flush().await;
    // Another instance's write: a cached answer still says 1, the store says 3.
    stored_elsewhere(&counter, "a", 2).await;

    let count = first_miss(&counter, "a").await;
    let waited = before_caching.elapsed();

    assert!(
        waited >= ttl,
        "served from the cache until the TTL passed, not {waited:?}"
    );
    assert_eq!((count.value, count.served_via), (3, ServedVia::Store(0)));
}

/// Reads `key` until the answer comes from the store, and returns that answer.
async fn first_miss(counter: &Counter<ScriptedStore>, key: &str) -> tally_counter::Count {
    eventually("the cache entry expired", || async {
        let count = counter.get(key).await.unwrap();
        (count.served_via != ServedVia::Cache).then_some(count)
    })
    .await
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
    // Each read caches its key.
    for i in 0..200 {
        assert_eq!(counter.get(&format!("k{i}")).await.unwrap().value, 1);
    }

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
async fn a_flush_caches_only_keys_already_cached() {
    // A page visited but never read (the cold page set, every URL of the request
    // statistics) costs no cache insertion and no eviction; a read one stays fresh.
    let counter = Counter::new(MemoryStore::new(), manual_config()).unwrap();
    for i in 0..100 {
        counter.increment(&format!("k{i}"), 1).unwrap();
    }
    assert_eq!(counter.get("k0").await.unwrap().value, 1);
    counter.increment("k0", 1).unwrap();

    counter.flush().await;

    assert_eq!(
        counter.snapshot().cache_size,
        1,
        "only the key read is cached"
    );
    assert_eq!(
        counter.get_cached("k1"),
        None,
        "a key never read is not cached"
    );
    let read = counter.get_cached("k0").expect("the key read stays cached");
    assert_eq!(read.value, 2, "with the flushed total");
    assert_eq!(counter.get("k1").await.unwrap().value, 1, "read through");
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

#[tokio::test]
async fn concurrent_misses_of_one_key_share_one_store_read() {
    let (counter, gate) = gated_reads();
    stored_elsewhere(&counter, "a", 3).await;

    let readers = concurrent_gets(&counter, "a", 20).await;
    // Recorded while the read is on the wire: every reader's answer includes it.
    counter.increment("a", 4).unwrap();
    gate.add_permits(100);
    let mut answers = Vec::new();
    for reader in readers {
        answers.push(reader.await.unwrap().unwrap());
    }

    assert_eq!(store_reads(&counter), 1, "one store read");
    assert!(
        answers
            .iter()
            .all(|count| (count.value, count.served_via) == (7, ServedVia::Store(0))),
        "{answers:?}"
    );
    let next = counter.get("a").await.unwrap();
    assert_eq!((next.value, next.served_via), (7, ServedVia::Cache));
}

#[tokio::test]
async fn a_failed_shared_read_fails_each_of_its_waiters_and_is_not_reused() {
    let (counter, gate) = gated_reads();
    counter.store().fail_reads.store(true, Ordering::SeqCst);

    let readers = concurrent_gets(&counter, "a", 10).await;
    gate.add_permits(100);
    let mut messages = Vec::new();
    for reader in readers {
        match reader.await.unwrap() {
            Err(e @ Error::Store { .. }) => {
                let cause = std::error::Error::source(&e).map(ToString::to_string);
                messages.push(format!("{e}: {}", cause.unwrap_or_default()));
            }
            other => panic!("expected a store error, got {other:?}"),
        }
    }
    counter.store().fail_reads.store(false, Ordering::SeqCst);
    let after = counter.get("a").await;

    assert_eq!(store_reads(&counter), 2, "one read each");
    assert!(
        messages
            .iter()
            .all(|m| m == "store shard 0 (memory-0) is unavailable: scripted read failure"),
        "{messages:?}"
    );
    assert_eq!(after.unwrap().value, 0, "the next miss reads again");
}

#[tokio::test]
async fn a_cancelled_shared_read_hands_over_to_a_waiter() {
    let (counter, gate, first) = a_read_held_back(5).await;
    let waiter = concurrent_gets(&counter, "a", 1).await.remove(0);
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    gate.add_permits(100);
    let answer = tokio::time::timeout(PATIENCE, waiter)
        .await
        .expect("the waiter answers once the reader is gone")
        .unwrap()
        .unwrap();

    assert_eq!(answer.value, 5);
    assert_eq!(store_reads(&counter), 2, "the waiter read");
}

#[tokio::test]
async fn a_read_that_raced_a_reset_does_not_cache_the_count_from_before_it() {
    // The read has the stored 5 and is on its way back when the reset lands.
    let (counter, gate, reader) = a_read_held_back(5).await;
    counter.reset("a").await.unwrap();
    gate.add_permits(100);
    let raced = reader.await.unwrap().unwrap();
    let after = counter.get("a").await.unwrap();

    assert!(
        raced.value == 5 || raced.value == 0,
        "a read concurrent with the reset answers either side: {raced:?}"
    );
    assert_eq!(after.value, 0, "the reset's zero stays: {after:?}");
}

#[tokio::test]
async fn a_read_that_gives_up_while_batches_keep_landing_answers_and_caches_the_fresher_count() {
    // Each store read answers only after one more batch of ours for the key has been
    // acknowledged, so every answer misses a batch: the read asks again a few times, then
    // gives up. It must neither answer nor cache the count it last read over the fresher
    // one the acknowledgement cached: a client would miss its own visits.
    let (counter, gate) = gated_reads();
    let reader = concurrent_gets(&counter, "a", 1).await.remove(0);
    let mut recorded = 0;
    for round in 1..=10 {
        wait_until("the read reached the store again", || {
            store_reads(&counter) == round || reader.is_finished()
        })
        .await;
        if reader.is_finished() {
            break;
        }
        counter.increment("a", 1).unwrap();
        recorded += 1;
        counter.flush().await;
        gate.add_permits(1);
    }
    let answer = tokio::time::timeout(PATIENCE, reader)
        .await
        .expect("the read answers")
        .expect("reader task")
        .expect("a count");

    assert!(
        store_reads(&counter) > 1,
        "the read was asked again: {} store reads",
        store_reads(&counter)
    );
    assert_eq!(
        answer.value, recorded,
        "the read answers every acknowledged visit"
    );
    let cached = counter.get_cached("a").expect("cached");
    assert_eq!(
        cached.value, recorded,
        "the count cached by the last acknowledgement is kept"
    );
}
