//! Redis CPU per 1,000 cold keys: what one node spends applying batches whose every key is
//! new (issue 22, the cold page set), by way of applying them.
//!
//! `cargo run -p tally-benches --release --bin cold-apply [-- --batches N] [--rounds N]`
//!
//! Starts one `redis-server` (tally-testkit, a free loopback port) and, for each variant,
//! empties it and applies `--batches` batches of 1,000 new keys, then reports the node's
//! main-thread CPU (`INFO cpu`) per 1,000 keys and its time per command (`INFO
//! commandstats`). With `--rounds` the variants run interleaved that many times and each
//! row is the variant's median round (the machine's noise moves single rounds by 30%). A cold visit writes two counter keys (the page's total and its count on
//! the day, which expires) and one member of the request statistics' sorted set, so the
//! counter variants write 500 pages and their 500 day keys a batch.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tally_counter::{Batch, BatchId, InstanceId};
use tally_redis::{Layout, RedisConfig, RedisStore};
use tally_testkit::RedisNode;

const BATCH_KEYS: usize = 1_000;
const DAY_TTL: Duration = Duration::from_secs(40 * 86_400);

fn main() -> Result<()> {
    let mut batches = 200_usize;
    let mut rounds = 1_usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--batches" => {
                batches = args
                    .next()
                    .context("--batches needs a number")?
                    .parse()
                    .context("--batches needs a number")?;
            }
            "--rounds" => {
                rounds = args
                    .next()
                    .context("--rounds needs a number")?
                    .parse()
                    .context("--rounds needs a number")?;
            }
            other => anyhow::bail!(
                "unknown argument {other:?} (usage: cold-apply [--batches N] [--rounds N])"
            ),
        }
    }
    let node = RedisNode::start().context("redis-server starts (apt-get install redis-server)")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Per variant, each round's (CPU ms per 1,000 keys, command stats).
    let mut measured: Vec<Vec<(f64, String)>> = vec![Vec::new(); VARIANTS.len()];
    for _ in 0..rounds.max(1) {
        for (variant, rows) in VARIANTS.iter().zip(&mut measured) {
            node.query::<()>(&redis::cmd("FLUSHALL"))?;
            node.query::<()>(redis::cmd("CONFIG").arg("RESETSTAT"))?;
            let before = main_cpu(&node)?;
            rt.block_on(variant.run(&node, batches))?;
            let after = main_cpu(&node)?;
            let per_1000 = (after - before) * 1000.0 / (batches * BATCH_KEYS) as f64 * 1000.0;
            rows.push((per_1000, commandstats(&node)?));
        }
    }
    println!(
        "| variant | Redis CPU ms per 1,000 keys (median; all rounds) | commands of the median round (usec per call) |"
    );
    println!("|---|--:|---|");
    for (variant, mut rows) in VARIANTS.iter().zip(measured) {
        let all: Vec<String> = rows.iter().map(|(ms, _)| format!("{ms:.2}")).collect();
        rows.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (median, stats) = &rows[rows.len() / 2];
        println!(
            "| {} | {median:.3} ({}) | {stats} |",
            variant.name(),
            all.join(", ")
        );
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Variant {
    /// `RedisStore::apply`, counters: 500 pages and their day keys (expiring).
    StoreCounters,
    /// `RedisStore::apply`, counters: 1,000 pages, no day keys.
    StorePagesOnly,
    /// `RedisStore::apply`, the request statistics' sorted set: 1,000 new members.
    StoreSortedSet,
    /// Native commands: `WATCH` the marks, `HGET` the mark, then `MULTI`, an `INCRBY` per
    /// key, `EXPIRE .. NX` per day key, `HSET` of the mark, `EXEC`.
    NativeCounters,
    /// Native commands, sorted set: `ZINCRBY` per member in a `MULTI`.
    NativeSortedSet,
}

const VARIANTS: [Variant; 5] = [
    Variant::StoreCounters,
    Variant::StorePagesOnly,
    Variant::StoreSortedSet,
    Variant::NativeCounters,
    Variant::NativeSortedSet,
];

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Self::StoreCounters => "script, pages + day keys",
            Self::StorePagesOnly => "script, pages only",
            Self::StoreSortedSet => "script, sorted set",
            Self::NativeCounters => "MULTI, pages + day keys",
            Self::NativeSortedSet => "MULTI, sorted set",
        }
    }

    fn keys(self, batch: usize) -> Vec<Arc<str>> {
        match self {
            Self::StoreCounters | Self::NativeCounters => (0..BATCH_KEYS / 2)
                .flat_map(|i| {
                    let page = format!("cold-{batch}-{i}");
                    [
                        Arc::<str>::from(format!("{page}\u{1f}2026-12-02")),
                        page.into(),
                    ]
                })
                .collect(),
            _ => (0..BATCH_KEYS)
                .map(|i| format!("/api/cold/{batch}/{i}/").into())
                .collect(),
        }
    }

    async fn run(self, node: &RedisNode, batches: usize) -> Result<()> {
        let instance = InstanceId::random();
        match self {
            Self::StoreCounters | Self::StorePagesOnly | Self::StoreSortedSet => {
                let mut config = RedisConfig::from_urls(&node.url())?;
                if matches!(self, Self::StoreSortedSet) {
                    config.layout = Layout::SortedSet;
                } else {
                    config.subkey_ttl = Some(DAY_TTL);
                }
                let store = RedisStore::connect(config).await?;
                for b in 0..batches {
                    let batch = Batch {
                        id: BatchId {
                            instance,
                            seq: b as u64 + 1,
                        },
                        deltas: self.keys(b).into_iter().map(|k| (k, 1)).collect(),
                    };
                    store.apply(0, &batch).await?;
                }
            }
            Self::NativeCounters | Self::NativeSortedSet => {
                let client = redis::Client::open(node.url())?;
                let mut conn = client.get_multiplexed_async_connection().await?;
                let sorted = matches!(self, Self::NativeSortedSet);
                let marks = if sorted {
                    "tally:applied:urls"
                } else {
                    "tally:applied"
                };
                let field = tally_redis::mark_field(instance, 0);
                for b in 0..batches {
                    // The check, then the transaction (one round trip each). A real
                    // implementation would hold the connection for the WATCH.
                    let (_, mark): ((), Option<String>) = redis::pipe()
                        .cmd("WATCH")
                        .arg(marks)
                        .cmd("HGET")
                        .arg(marks)
                        .arg(&field)
                        .query_async(&mut conn)
                        .await?;
                    let _ = mark;
                    let mut pipe = redis::pipe();
                    pipe.atomic();
                    for key in self.keys(b) {
                        if sorted {
                            pipe.cmd("ZINCRBY").arg("tally:urls").arg(1).arg(&*key);
                        } else {
                            pipe.cmd("INCRBY").arg(format!("tally:v:{key}")).arg(1);
                            if key.contains('\u{1f}') {
                                pipe.cmd("EXPIRE")
                                    .arg(format!("tally:v:{key}"))
                                    .arg(DAY_TTL.as_secs())
                                    .arg("NX");
                            }
                        }
                    }
                    pipe.cmd("HSET").arg(marks).arg(&field).arg(b + 1);
                    let _: redis::Value = pipe.query_async(&mut conn).await?;
                }
            }
        }
        Ok(())
    }
}

/// The node's main-thread CPU seconds (user + system).
fn main_cpu(node: &RedisNode) -> Result<f64> {
    let info: String = node.query(redis::cmd("INFO").arg("cpu"))?;
    Ok(tally_benches::redis_info::main_thread_cpu(&info).as_secs_f64())
}

/// `name calls (usec per call)` of every command the node ran, busiest first.
fn commandstats(node: &RedisNode) -> Result<String> {
    let info: String = node.query(redis::cmd("INFO").arg("commandstats"))?;
    let mut stats: Vec<_> = tally_testkit::commandstats(&info)
        .into_iter()
        .filter(|stat| !matches!(stat.name.as_str(), "info" | "flushall" | "config|resetstat"))
        .collect();
    stats.sort_by_key(|stat| std::cmp::Reverse(stat.usec));
    Ok(stats
        .iter()
        .map(|stat| format!("{} {} ({:.1})", stat.name, stat.calls, stat.usec_per_call))
        .collect::<Vec<_>>()
        .join(", "))
}
