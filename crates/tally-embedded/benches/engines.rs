//! redb against fjall on the embedded store's job, each committing durably (fdatasync) every
//! write transaction, as the store must before it acknowledges a batch:
//!
//! - `apply_1000`: one write transaction adds 1 to 1,000 keys scattered over 100,000: read
//!   each count, write the new one, move the key in the ranking index (remove
//!   `(u64::MAX - old, key)`, insert `(u64::MAX - new, key)`), write the instance's mark.
//! - `get_100`: 100 point reads of scattered keys in one snapshot.
//! - `top_100`: the first 100 entries of the ranking index in one snapshot.
//!
//! Both engines hold the same data in the same shape: counts keyed by URL, and a ranking
//! index keyed by the big-endian `u64::MAX - count` followed by the URL (redb's typed
//! `(u64, &str)` tuple orders the same way). The runs table of the real store adds the same
//! few writes to either engine, so it is left out.
//!
//! `cargo bench -p tally-embedded --bench engines -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{BatchSize, Criterion, SamplingMode, criterion_group, criterion_main};
use fjall::{KeyspaceCreateOptions, PersistMode, Readable as _, SingleWriterTxDatabase};
use redb::{ReadableDatabase as _, ReadableTable as _, TableDefinition};

/// Keys in each database before the benches start.
const KEYS: usize = 100_000;
/// Keys of one batch.
const BATCH: usize = 1_000;
/// A step coprime with `KEYS`, so consecutive positions land far apart in key order, as a
/// batch's keys do.
const STRIDE: usize = 7_919;

const COUNTS: TableDefinition<&str, u64> = TableDefinition::new("counts");
const RANKING: TableDefinition<(u64, &str), ()> = TableDefinition::new("ranking");
const MARKS: TableDefinition<&str, (u64, u64)> = TableDefinition::new("marks");

fn key(i: usize) -> String {
    format!("/api/items/{:06}/", (i * STRIDE) % KEYS)
}

/// The starting count of key `i`: long runs of ties, as request statistics have.
fn initial_count(i: usize) -> u64 {
    1 + (i % 97) as u64
}

trait Engine {
    /// One durable write transaction incrementing `keys` by 1, with the index and a mark.
    fn apply(&self, keys: &[String], seq: u64);
    /// The counts of `keys` in one snapshot.
    fn get(&self, keys: &[String]) -> Vec<u64>;
    /// The first `limit` entries of the ranking.
    fn top(&self, limit: usize) -> Vec<(String, u64)>;
}

struct Redb(redb::Database);

impl Redb {
    fn open(dir: &Path) -> Self {
        let mut builder = redb::Database::builder();
        builder.set_cache_size(tally_embedded::DEFAULT_CACHE_BYTES);
        let db = builder.create(dir.join("bench.redb")).expect("create redb");
        let txn = db.begin_write().expect("begin");
        {
            let mut counts = txn.open_table(COUNTS).expect("table");
            let mut ranking = txn.open_table(RANKING).expect("table");
            txn.open_table(MARKS).expect("table");
            for i in 0..KEYS {
                let (key, count) = (key(i), initial_count(i));
                counts.insert(key.as_str(), count).expect("insert");
                ranking
                    .insert((u64::MAX - count, key.as_str()), ())
                    .expect("insert");
            }
        }
        txn.commit().expect("commit");
        Self(db)
    }
}

impl Engine for Redb {
    fn apply(&self, keys: &[String], seq: u64) {
        let txn = self.0.begin_write().expect("begin");
        {
            let mut counts = txn.open_table(COUNTS).expect("table");
            let mut ranking = txn.open_table(RANKING).expect("table");
            for key in keys {
                let old = counts
                    .get(key.as_str())
                    .expect("get")
                    .map_or(0, |g| g.value());
                counts.insert(key.as_str(), old + 1).expect("insert");
                ranking
                    .remove((u64::MAX - old, key.as_str()))
                    .expect("remove");
                ranking
                    .insert((u64::MAX - old - 1, key.as_str()), ())
                    .expect("insert");
            }
            let mut marks = txn.open_table(MARKS).expect("table");
            marks.insert("0000000000000001:0", (seq, 0)).expect("mark");
        }
        txn.commit().expect("commit");
    }

    fn get(&self, keys: &[String]) -> Vec<u64> {
        let txn = self.0.begin_read().expect("begin");
        let counts = txn.open_table(COUNTS).expect("table");
        keys.iter()
            .map(|key| {
                counts
                    .get(key.as_str())
                    .expect("get")
                    .map_or(0, |g| g.value())
            })
            .collect()
    }

    fn top(&self, limit: usize) -> Vec<(String, u64)> {
        let txn = self.0.begin_read().expect("begin");
        let ranking = txn.open_table(RANKING).expect("table");
        ranking
            .iter()
            .expect("iter")
            .take(limit)
            .map(|entry| {
                let (key, _) = entry.expect("entry");
                let (rank, url) = key.value();
                (url.to_owned(), u64::MAX - rank)
            })
            .collect()
    }
}

struct Fjall {
    db: SingleWriterTxDatabase,
    counts: fjall::SingleWriterTxKeyspace,
    ranking: fjall::SingleWriterTxKeyspace,
    marks: fjall::SingleWriterTxKeyspace,
}

fn rank_key(count: u64, key: &str) -> Vec<u8> {
    let mut bytes = (u64::MAX - count).to_be_bytes().to_vec();
    bytes.extend_from_slice(key.as_bytes());
    bytes
}

fn count_of(value: Option<fjall::Slice>) -> u64 {
    value.map_or(0, |bytes| {
        u64::from_be_bytes(bytes.as_ref().try_into().expect("an 8-byte count"))
    })
}

impl Fjall {
    fn open(dir: &Path) -> Self {
        let db = SingleWriterTxDatabase::builder(dir.join("bench.fjall"))
            .cache_size(tally_embedded::DEFAULT_CACHE_BYTES as u64)
            .open()
            .expect("open fjall");
        let counts = db
            .keyspace("counts", KeyspaceCreateOptions::default)
            .expect("keyspace");
        let ranking = db
            .keyspace("ranking", KeyspaceCreateOptions::default)
            .expect("keyspace");
        let marks = db
            .keyspace("marks", KeyspaceCreateOptions::default)
            .expect("keyspace");
        let mut tx = db.write_tx().durability(Some(PersistMode::SyncData));
        for i in 0..KEYS {
            let (key, count) = (key(i), initial_count(i));
            tx.insert(&counts, key.as_str(), count.to_be_bytes());
            tx.insert(&ranking, rank_key(count, &key), []);
        }
        tx.commit().expect("commit");
        Self {
            db,
            counts,
            ranking,
            marks,
        }
    }
}

impl Engine for Fjall {
    fn apply(&self, keys: &[String], seq: u64) {
        let mut tx = self.db.write_tx().durability(Some(PersistMode::SyncData));
        for key in keys {
            let old = count_of(tx.get(&self.counts, key.as_str()).expect("get"));
            tx.insert(&self.counts, key.as_str(), (old + 1).to_be_bytes());
            tx.remove(&self.ranking, rank_key(old, key));
            tx.insert(&self.ranking, rank_key(old + 1, key), []);
        }
        let mut mark = seq.to_be_bytes().to_vec();
        mark.extend_from_slice(&0u64.to_be_bytes());
        tx.insert(&self.marks, "0000000000000001:0", mark);
        tx.commit().expect("commit");
    }

    fn get(&self, keys: &[String]) -> Vec<u64> {
        let snapshot = self.db.read_tx();
        keys.iter()
            .map(|key| count_of(snapshot.get(&self.counts, key.as_str()).expect("get")))
            .collect()
    }

    fn top(&self, limit: usize) -> Vec<(String, u64)> {
        let snapshot = self.db.read_tx();
        snapshot
            .iter(&self.ranking)
            .take(limit)
            .map(|guard| {
                let key = guard.key().expect("key");
                let (rank, url) = key.split_at(8);
                let rank = u64::from_be_bytes(rank.try_into().expect("8 bytes"));
                (String::from_utf8_lossy(url).into_owned(), u64::MAX - rank)
            })
            .collect()
    }
}

fn engines(c: &mut Criterion) {
    // On the target directory's disk, not /tmp: a tmpfs would make fsync free.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("bench directory");
    let redb = Redb::open(dir.path());
    let fjall = Fjall::open(dir.path());
    let engines: [(&str, &dyn Engine); 2] = [("redb", &redb), ("fjall", &fjall)];
    // Both hold the same data (until the batches, which each engine runs its own number
    // of times).
    let probes: Vec<String> = (0..100).map(|i| key(i * 997)).collect();
    assert_eq!(redb.get(&probes), fjall.get(&probes));
    assert_eq!(redb.top(100), fjall.top(100));

    let mut group = c.benchmark_group("apply_1000");
    // A durable commit takes milliseconds: flat sampling keeps the run near its target.
    group.sampling_mode(SamplingMode::Flat).sample_size(20);
    for (name, engine) in engines {
        let mut seq = 0u64;
        group.bench_function(name, |b| {
            b.iter_batched(
                || {
                    seq += 1;
                    let first = (seq as usize * BATCH) % KEYS;
                    ((first..first + BATCH).map(key).collect::<Vec<_>>(), seq)
                },
                |(keys, seq)| engine.apply(black_box(&keys), seq),
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();

    let mut group = c.benchmark_group("get_100");
    for (name, engine) in engines {
        group.bench_function(name, |b| b.iter(|| engine.get(black_box(&probes))));
    }
    group.finish();

    let mut group = c.benchmark_group("top_100");
    for (name, engine) in engines {
        group.bench_function(name, |b| b.iter(|| engine.top(black_box(100))));
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1));
    targets = engines
}
criterion_main!(benches);
