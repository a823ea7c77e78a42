//! Batch triggers (interval, size) and shutdown, on tokio's paused clock.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tally_counter::{Counter, CounterConfig, Error, MemoryStore};
use tokio::time::Instant;

use crate::support::{Fault, ScriptedStore, manual_config};

#[tokio::test(start_paused = true)]
async fn interval_trigger_writes_after_batch_interval() {
    let config = CounterConfig {
        batch_interval: Duration::from_secs(5),
        ..manual_config()
    };
    let counter = Counter::new(MemoryStore::new(), config).unwrap();
    counter.increment("page", 1).unwrap();

    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(counter.store().value("page"), 0, "not before the interval");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        counter.store().value("page"),
        1,
        "written once the interval elapsed"
    );
}

#[tokio::test(start_paused = true)]
async fn size_trigger_writes_before_the_interval() {
    let config = CounterConfig {
        batch_size_limit: 100,
        ..manual_config()
    };
    let counter = Counter::new(MemoryStore::new(), config).unwrap();
    for i in 0..99 {
        counter.increment(&format!("k{i}"), 1).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(counter.store().value("k0"), 0, "99 keys: below the limit");

    counter.increment("k99", 1).unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;

    assert_eq!(
        counter.store().entries().len(),
        100,
        "the 100th key sent the batch"
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_flushes_everything() {
    let counter = Counter::new(MemoryStore::new(), manual_config()).unwrap();
    let handle = counter.clone();
    for i in 0..50 {
        counter.increment(&format!("k{i}"), i + 1).unwrap();
    }

    let report = counter.shutdown(Duration::from_secs(5)).await;

    assert_eq!(
        (
            report.keys_written,
            report.keys_unwritten,
            report.increments_unwritten
        ),
        (50, 0, 0)
    );
    assert_eq!(handle.store().value("k49"), 50);
    assert!(matches!(handle.increment("k0", 1), Err(Error::ShutDown)));
}

#[tokio::test(start_paused = true)]
async fn shutdown_with_a_store_that_never_answers_returns_within_the_deadline() {
    let store = ScriptedStore::new(1).with_faults(&[Fault::Hang]);
    let counter = Counter::new(store, manual_config()).unwrap();
    counter.increment("a", 2).unwrap();
    counter.increment("b", 3).unwrap();
    let started = Instant::now();

    let report = counter.shutdown(Duration::from_secs(2)).await;

    assert!(started.elapsed() <= Duration::from_secs(2) + Duration::from_millis(10));
    assert_eq!(
        (
            report.keys_written,
            report.keys_unwritten,
            report.increments_unwritten
        ),
        (0, 2, 5)
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_resends_a_batch_cut_off_mid_retry_with_the_same_id() {
    // The flusher's first attempt loses its reply; shutdown aborts the flusher during its
    // backoff and must send the same batch again (applied once), not a new one.
    let config = CounterConfig {
        batch_interval: Duration::from_millis(10),
        retry_backoff_min: Duration::from_secs(60),
        retry_backoff_max: Duration::from_secs(60),
        ..manual_config()
    };
    let store = ScriptedStore::new(1).with_faults(&[Fault::LoseReply]);
    let counter = Counter::new(store, config).unwrap();
    let handle = counter.clone();
    counter.increment("page", 7).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let store = handle.store();
    assert_eq!(
        (
            store.applies.load(Ordering::SeqCst),
            store.inner.value("page")
        ),
        (1, 7),
        "first attempt applied, reply lost, retry waiting out its backoff"
    );

    let report = counter.shutdown(Duration::from_secs(5)).await;

    assert_eq!(report.keys_unwritten, 0);
    assert_eq!(
        store.applies.load(Ordering::SeqCst),
        2,
        "the lost reply's attempt, then the shutdown's resend"
    );
    let sent = store.sent();
    assert_eq!(sent[1], sent[0], "resent with the same id");
    assert_eq!(store.inner.value("page"), 7, "the resend was recognised");
}

/// `n` distinct keys of `len` bytes each.
fn keys_of(n: usize, len: usize) -> Vec<String> {
    (0..n).map(|i| format!("{i:0>len$}")).collect()
}

#[tokio::test(start_paused = true)]
async fn a_backlog_drains_in_batches_of_at_most_the_size_limit_with_rising_sequences() {
    let config = CounterConfig {
        batch_size_limit: 10,
        ..manual_config()
    };
    let counter = Counter::new(ScriptedStore::new(1), config).unwrap();
    let keys = keys_of(95, 4);
    for key in &keys {
        counter.increment(key, 2).unwrap();
    }

    counter.flush().await;

    let store = counter.store();
    assert!(
        keys.iter().all(|key| store.inner.value(key) == 2),
        "all written"
    );
    let snapshot = counter.snapshot();
    assert_eq!(snapshot.largest_batch_keys, 10);
    assert_eq!(snapshot.batches_ok, 10, "95 keys in batches of 10");
    let seqs: Vec<u64> = store.sent().iter().map(|id| id.seq).collect();
    assert_eq!(seqs, (1..=10).collect::<Vec<_>>(), "one sequence per batch");
}

#[tokio::test(start_paused = true)]
async fn a_batch_holds_at_most_its_bytes_and_a_longer_key_goes_alone() {
    let config = CounterConfig {
        batch_max_bytes: 100,
        ..manual_config()
    };
    let counter = Counter::new(MemoryStore::new(), config).unwrap();
    let keys = keys_of(20, 30);
    let long = "l".repeat(150);
    for key in keys.iter().chain([&long]) {
        counter.increment(key, 1).unwrap();
    }

    counter.flush().await;

    let snapshot = counter.snapshot();
    assert!(
        keys.iter()
            .chain([&long])
            .all(|key| counter.store().value(key) == 1),
        "all written"
    );
    assert_eq!(
        snapshot.largest_batch_bytes, 150,
        "the 150-byte key went out alone; the others at most 3 (90 bytes) a batch"
    );
    assert_eq!(
        snapshot.batches_ok, 8,
        "20 keys of 30 bytes by 3, and the long one"
    );
}

#[tokio::test(start_paused = true)]
async fn the_flusher_drains_a_backlog_without_waiting_an_interval_per_batch() {
    // One batch is held at the store while 50 more keys arrive: once it is acknowledged,
    // the rest go out at once, batch after batch, not one batch per (hour-long) interval.
    let config = CounterConfig {
        batch_interval: Duration::from_secs(3600),
        batch_size_limit: 10,
        ..manual_config()
    };
    let (counter, gate) = crate::support::gated_applies(config);
    let keys = keys_of(60, 4);
    for key in &keys[..10] {
        counter.increment(key, 1).unwrap();
    }
    crate::support::wait_until("the first batch is at the store", || {
        counter.store().applies.load(Ordering::SeqCst) == 1
    })
    .await;
    for key in &keys[10..] {
        counter.increment(key, 1).unwrap();
    }
    gate.add_permits(100);

    crate::support::wait_until("the backlog is written", || {
        keys.iter().all(|key| counter.store().inner.value(key) == 1)
    })
    .await;
    assert_eq!(counter.snapshot().largest_batch_keys, 10);
}

#[tokio::test(start_paused = true)]
async fn shutdown_writes_a_backlog_of_many_byte_bounded_batches() {
    let config = CounterConfig {
        batch_max_bytes: 64,
        ..manual_config()
    };
    let counter = Counter::new(MemoryStore::new(), config).unwrap();
    let handle = counter.clone();
    let keys = keys_of(100, 32);
    for key in &keys {
        counter.increment(key, 1).unwrap();
    }

    let report = counter.shutdown(Duration::from_secs(5)).await;

    assert_eq!((report.keys_written, report.keys_unwritten), (100, 0));
    assert_eq!(handle.snapshot().largest_batch_bytes, 64);
}
