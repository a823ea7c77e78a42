//! Counts are exact under concurrency, and reads include this instance's own deltas.

use tally_counter::{Counter, CounterConfig, MemoryStore, ServedVia, Store as _};

use crate::support::{fast_config, gated_applies, manual_config, spawn_flush};

const TASKS: u64 = 8;
const PER_TASK: u64 = 125_000;
const KEYS: u64 = 1_000;

/// The key task `t` increments on its `i`th step, and by how much: a spread that differs per
/// task so the expected totals are not uniform.
fn step(t: u64, i: u64) -> (u64, u64) {
    ((t * 7_919 + i * 31) % KEYS, 1 + (i % 3))
}

#[test]
fn eight_threads_million_increments_are_exact() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(8)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // Small batches and a short interval: flushes run while increments pour in.
        let config = CounterConfig {
            batch_size_limit: 200,
            ..fast_config()
        };
        let counter = Counter::new(MemoryStore::with_shards(3), config).unwrap();
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| {
                let counter = counter.clone();
                tokio::spawn(async move {
                    for i in 0..PER_TASK {
                        let (key, n) = step(t, i);
                        counter.increment(&format!("key{key}"), n).unwrap();
                        if i % 4096 == 0 {
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

        let mut expected = vec![0u64; KEYS as usize];
        for t in 0..TASKS {
            for i in 0..PER_TASK {
                let (key, n) = step(t, i);
                expected[key as usize] += n;
            }
        }
        for (key, want) in expected.iter().enumerate() {
            assert_eq!(
                counter.store().value(&format!("key{key}")),
                *want,
                "key{key}"
            );
        }
        let snapshot = counter.snapshot();
        assert_eq!(snapshot.increments_written, expected.iter().sum::<u64>());
        assert_eq!(snapshot.write_buffer_size, 0);
    });
}

#[tokio::test]
async fn waiting_keys_and_last_batches_are_kept_per_shard() {
    let store = MemoryStore::with_shards(3);
    let counter = Counter::new(store, manual_config()).unwrap();
    for key in 0..30 {
        counter.increment(&format!("key{key}"), 1).unwrap();
    }
    counter.increment("key0", 4).unwrap();

    let by_shard = counter.waiting_keys_by_shard();
    let expected: Vec<usize> = (0..3)
        .map(|shard| {
            (0..30)
                .filter(|key| counter.store().shard_of(&format!("key{key}")) == shard)
                .count()
        })
        .collect();
    assert_eq!(by_shard, expected);
    assert_eq!(
        by_shard.iter().sum::<usize>(),
        counter.snapshot().write_buffer_size
    );

    assert_eq!(counter.last_batch_by_shard(), vec![None, None, None]);

    counter.flush().await;
    assert_eq!(counter.waiting_keys_by_shard(), vec![0, 0, 0]);
    let written = counter.last_batch_by_shard();
    assert!(written.iter().all(Option::is_some), "{written:?}");
    // The counter's own time is taken after each shard's, for the same batch.
    let last = counter.snapshot().last_batch_at;
    assert!(written.iter().all(|at| *at <= last), "{written:?} {last:?}");
}

#[tokio::test]
async fn reads_own_writes_before_any_flush() {
    let counter = Counter::new(MemoryStore::new(), manual_config()).unwrap();
    counter.increment("page1", 2).unwrap();
    counter.increment("page1", 5).unwrap();

    let count = counter.get("page1").await.unwrap();

    assert_eq!(count.value, 7);
    assert_eq!(count.served_via, ServedVia::Store(0));
    assert_eq!(counter.store().value("page1"), 0, "nothing flushed yet");
}

#[tokio::test]
async fn reads_stay_exact_while_a_batch_is_in_flight() {
    let (counter, gate) = gated_applies(manual_config());
    counter.increment("k", 4).unwrap();

    let flusher = spawn_flush(&counter);
    counter.store().entered.notified().await;
    counter.increment("k", 1).unwrap();
    // The batch of 4 is in flight and not applied; 1 is pending; the store holds 0.
    assert_eq!(counter.get("k").await.unwrap().value, 5);

    gate.add_permits(1);
    flusher.await.unwrap();
    // Applied: the cache holds 4 from the batch's totals, 1 still pending.
    let count = counter.get("k").await.unwrap();
    assert_eq!((count.value, count.served_via), (5, ServedVia::Cache));
    assert_eq!(counter.store().inner.value("k"), 4);
}

#[tokio::test(start_paused = true)]
async fn two_counters_sharing_a_byte_budget_refuse_new_keys_past_it_and_count_the_rest() {
    use tally_counter::{CounterConfig, Error, PendingBytes};

    // Room for ten 4-byte keys between the two counters.
    let budget = PendingBytes::new(10 * PendingBytes::cost(4));
    let config = |name: &str| CounterConfig {
        name: name.to_owned(),
        max_pending_bytes: budget.clone(),
        ..crate::support::manual_config()
    };
    let visits = Counter::new(MemoryStore::new(), config("visits")).unwrap();
    let stats = Counter::new(MemoryStore::new(), config("stats")).unwrap();
    for i in 0..6 {
        visits.increment(&format!("v{i:03}"), 1).unwrap();
    }
    for i in 0..4 {
        stats.increment(&format!("s{i:03}"), 1).unwrap();
    }

    let refused = stats.increment("s004", 1).unwrap_err();
    assert!(
        matches!(refused, Error::OverloadedBytes { .. }),
        "{refused:?}"
    );
    assert!(matches!(
        visits.increment("v006", 1),
        Err(Error::OverloadedBytes { .. })
    ));
    visits.increment("v000", 1).unwrap();
    assert_eq!(budget.used(), budget.limit());
    assert_eq!(
        visits.snapshot().write_buffer_bytes,
        6 * PendingBytes::cost(4)
    );

    visits.flush().await;
    assert_eq!(
        budget.used(),
        4 * PendingBytes::cost(4),
        "written keys give their bytes back"
    );
    stats.increment("s004", 1).unwrap();
    stats.flush().await;
    assert_eq!(visits.store().value("v000"), 2);
    assert_eq!(visits.store().value("v006"), 0, "refused, not counted");
    assert_eq!(stats.store().value("s004"), 1);
    assert_eq!(budget.used(), 0);
}

#[test]
fn a_key_recorded_by_several_threads_takes_one_place_and_is_never_refused() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let config = CounterConfig {
        max_pending_keys: 4,
        ..manual_config()
    };
    let counter = Counter::new(MemoryStore::new(), config).unwrap();
    let keys = ["a", "b", "c", "d"];
    for key in keys {
        counter.increment(key, 1).unwrap();
    }

    // Each thread records in a stripe of its own: the keys' deltas spread over them.
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                for key in keys {
                    counter.increment(key, 1).unwrap();
                    counter.increment_all(&[(key, 2), ("a", 1)]).unwrap();
                }
                assert!(matches!(
                    counter.increment("e", 1),
                    Err(tally_counter::Error::Overloaded { .. })
                ));
                assert!(matches!(
                    counter.increment_all(&[("a", 1), ("e", 1)]),
                    Err(tally_counter::Error::Overloaded { .. })
                ));
            });
        }
    });

    assert_eq!(counter.snapshot().write_buffer_size, 4);
    let want = |key: &str| 1 + 4 * 3 + if key == "a" { 4 * 4 } else { 0 };
    for key in keys {
        assert_eq!(runtime.block_on(counter.get(key)).unwrap().value, want(key));
    }
    runtime.block_on(counter.flush());
    for key in keys {
        assert_eq!(counter.store().value(key), want(key), "{key} written");
    }
    assert_eq!(counter.snapshot().write_buffer_size, 0);
    assert_eq!(counter.store().value("e"), 0, "a refused increment written");
}
