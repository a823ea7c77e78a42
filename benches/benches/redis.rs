//! Keys written per second to one Redis node: `RedisStore::apply` with batches of 1,000
//! keys (one Lua script round trip per batch, plus the pool's checkout PING) against one
//! `INCRBY` round trip per increment on a dedicated connection, in one run.
//!
//! Needs `redis-server` (started here through tally-testkit on a free port). Both sides
//! report `Throughput::Elements` in keys, so criterion prints keys/s for each and the ratio
//! is the batching gain.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tally_counter::{Batch, BatchId, InstanceId};
use tally_redis::{RedisConfig, RedisStore};
use tally_testkit::RedisNode;

const BATCH_KEYS: usize = 1_000;

fn redis_writes(c: &mut Criterion) {
    let node = RedisNode::start().expect("redis-server starts (apt-get install redis-server)");
    // One thread for the client, as a flusher task would run; the node gets the other core.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let config = RedisConfig::from_urls(&node.url()).expect("node URL parses");
    let store = rt
        .block_on(RedisStore::connect(config))
        .expect("store connects");
    let conn = rt
        .block_on(async {
            redis::Client::open(node.url())?
                .get_multiplexed_async_connection()
                .await
        })
        .expect("baseline connection");
    let keys: Vec<std::sync::Arc<str>> = (0..BATCH_KEYS)
        .map(|i| format!("bench{i}").into())
        .collect();
    let instance = InstanceId::random();
    let seq = AtomicU64::new(0);

    let mut group = c.benchmark_group("redis_writes");
    group.measurement_time(Duration::from_secs(5));
    group.sample_size(20);

    group.throughput(Throughput::Elements(BATCH_KEYS as u64));
    group.bench_function("apply_batch_1000_keys", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let (store, keys, seq) = (&store, &keys, &seq);
            async move {
                let mut elapsed = Duration::ZERO;
                for _ in 0..iters {
                    let batch = Batch {
                        id: BatchId {
                            instance,
                            seq: seq.fetch_add(1, Ordering::Relaxed) + 1,
                        },
                        deltas: keys.iter().map(|k| (k.clone(), 1)).collect(),
                    };
                    // Only the store call is timed, not building the batch.
                    let started = Instant::now();
                    let totals = store.apply(0, &batch).await.expect("batch applies");
                    elapsed += started.elapsed();
                    black_box(totals);
                }
                elapsed
            }
        });
    });

    group.throughput(Throughput::Elements(1));
    group.bench_function("incrby_per_key", |b| {
        let mut i = 0_usize;
        b.to_async(&rt).iter(|| {
            let key = format!("tally:v:{}", keys[i % BATCH_KEYS]);
            i += 1;
            let mut conn = conn.clone();
            async move {
                let total: u64 = redis::cmd("INCRBY")
                    .arg(key)
                    .arg(1)
                    .query_async(&mut conn)
                    .await
                    .expect("INCRBY");
                black_box(total)
            }
        });
    });
    group.finish();
    report_server_time(&node);
    drop(conn);
    drop(store);
}

/// Prints the node's own time per command, which separates server work (the script) from
/// client work and round trips in the figures above.
fn report_server_time(node: &RedisNode) {
    let Ok(info) = node.query::<String>(redis::cmd("INFO").arg("commandstats")) else {
        return;
    };
    for stat in tally_testkit::commandstats(&info) {
        eprintln!(
            "redis-server time per {}: {:.2} us",
            stat.name, stat.usec_per_call
        );
    }
}

criterion_group!(benches, redis_writes);
criterion_main!(benches);
