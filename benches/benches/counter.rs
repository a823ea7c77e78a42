//! The counter's hot path: `increment` on a key already pending, against a plain
//! `Mutex<HashMap<String, u64>>` doing the same job, in one run; and the read that adds a
//! key's pending deltas to its cached value (`get_cached`).
//!
//! The flusher is configured not to fire during a sample (an hour's interval, a size limit
//! above the key count), so this measures the increment itself: stripe lock, map update, no
//! allocation. Flush costs are the store's and are measured by the `redis` bench.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tally_counter::{Counter, CounterConfig, MemoryStore};

const KEYS: usize = 10_000;

fn keys() -> Vec<String> {
    (0..KEYS).map(|i| format!("page{i}")).collect()
}

/// What is being incremented: the same loop drives both implementations.
trait Target: Sync {
    fn add(&self, key: &str);
}

impl Target for Counter<MemoryStore> {
    fn add(&self, key: &str) {
        self.increment(key, 1)
            .expect("the bound is far above the key count");
    }
}

struct MutexMap(Mutex<HashMap<String, u64>>);

impl Target for MutexMap {
    fn add(&self, key: &str) {
        let mut map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match map.get_mut(key) {
            Some(v) => *v += 1,
            None => {
                map.insert(key.to_owned(), 1);
            }
        }
    }
}

/// Runs `iters` increments on each of `threads` threads at once; returns the wall time.
fn run(target: &dyn Target, keys: &[String], threads: usize, iters: u64) -> Duration {
    let start = Instant::now();
    std::thread::scope(|scope| {
        for t in 0..threads {
            scope.spawn(move || {
                // Threads walk the keys from different offsets, as independent requests do.
                let mut i = t * KEYS / threads.max(1);
                for _ in 0..iters {
                    target.add(black_box(&keys[i]));
                    i = if i + 1 == KEYS { 0 } else { i + 1 };
                }
            });
        }
    });
    start.elapsed()
}

/// A counter whose flusher does not fire during a sample, and whose cache keeps every key
/// for the whole run.
fn quiet_config() -> CounterConfig {
    CounterConfig {
        batch_interval: Duration::from_secs(3600),
        batch_size_limit: KEYS * 10,
        max_pending_keys: KEYS * 10,
        cache_ttl: Duration::from_secs(3600),
        ..CounterConfig::default()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn increment(c: &mut Criterion) {
    let runtime = runtime();
    let _guard = runtime.enter();
    let config = quiet_config();
    let counter = Counter::new(MemoryStore::new(), config).expect("valid config");
    let map = MutexMap(Mutex::new(HashMap::new()));
    let keys = keys();
    // Warm both so every measured increment hits a pending key.
    for key in &keys {
        counter.add(key);
        map.add(key);
    }

    let mut group = c.benchmark_group("increment");
    for threads in [1usize, 2] {
        let label = if threads == 1 {
            "1-thread".to_owned()
        } else {
            format!("{threads}-threads")
        };
        group.throughput(Throughput::Elements(threads as u64));
        let targets: [(&str, &dyn Target); 2] =
            [("tally-counter", &counter), ("mutex-hashmap", &map)];
        for (name, target) in targets {
            group.bench_function(BenchmarkId::new(name, &label), |b| {
                b.iter_custom(|iters| run(target, &keys, threads, iters));
            });
        }
    }
    group.finish();
}

/// `get_cached` on keys whose stored value is cached and which have pending deltas,
/// recorded by two threads besides the reading one (as a server's workers record them), so
/// a buffer that keeps deltas where they were recorded has them in several places.
fn read(c: &mut Criterion) {
    let runtime = runtime();
    let _guard = runtime.enter();
    let counter = Counter::new(MemoryStore::new(), quiet_config()).expect("valid config");
    let keys = keys();
    for key in &keys {
        counter.add(key);
    }
    // Read once (a read caches its key; a flush refreshes only cached keys), then written
    // and acknowledged: every key's stored value is cached from here on.
    runtime.block_on(async {
        for key in &keys {
            counter.get(key).await.expect("a memory store read");
        }
        counter.flush().await;
    });
    run(&counter, &keys, 2, KEYS as u64);
    for key in &keys {
        counter.add(key);
    }

    let mut group = c.benchmark_group("read");
    group.throughput(Throughput::Elements(1));
    group.bench_function(BenchmarkId::new("get_cached-pending", "1-thread"), |b| {
        let mut i = 0;
        b.iter(|| {
            let count = counter.get_cached(black_box(&keys[i]));
            i = if i + 1 == KEYS { 0 } else { i + 1 };
            count.expect("every key is cached")
        });
    });
    group.finish();
}

criterion_group!(benches, increment, read);
criterion_main!(benches);
