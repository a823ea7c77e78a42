//! reshard: how fast `tally_redis::reshard` moves counts when a node is added.
//! `cargo run -p tally-benches --release --bin reshard [-- --keys N]`.
//!
//! Starts four real `redis-server` nodes (tally-testkit), writes N visit counters (default
//! 1,000,000, distinct counts) on the ring of the first three, then plans and applies the
//! reshard to all four, as `tally-server reshard --to ... --apply` does. Reports the time
//! of the plan (one scan of every node, reading the counts that move) and of the move
//! (scan, the four steps per chunk, a second scan that finds nothing), the keys moved per
//! second of the move, and checks that every count arrived.

use std::time::Instant;

use anyhow::{Context as _, ensure};
use tally_redis::RedisConfig;
use tally_redis::reshard::{self, thousands};
use tally_testkit::{RedisCluster, ring};

/// Counters written per pipeline when seeding.
const SEED_PIPELINE: usize = 10_000;

fn main() -> anyhow::Result<()> {
    let keys = keys_from_args()?;
    let cluster = RedisCluster::start(4).context("starting redis-server nodes")?;
    let names: Vec<String> = cluster
        .nodes()
        .iter()
        .map(|n| n.addr().to_string())
        .collect();
    let urls: Vec<String> = cluster.nodes().iter().map(|n| n.url()).collect();
    let from = RedisConfig::from_urls(&urls[..3].join(","))?;
    let to = RedisConfig::from_urls(&urls.join(","))?;

    eprintln!(
        "reshard bench: seeding {} counters on 3 nodes",
        thousands(keys as u64)
    );
    let seeding = Instant::now();
    let old = ring(&names[..3]);
    let mut by_node: Vec<Vec<usize>> = vec![Vec::new(); 3];
    for i in 0..keys {
        by_node[old.lookup_index(page(i).as_bytes())].push(i);
    }
    for (node, pages) in cluster.nodes().iter().zip(&by_node) {
        let mut conn = node.client()?.get_connection()?;
        for chunk in pages.chunks(SEED_PIPELINE) {
            let mut mset = redis::cmd("MSET");
            for &i in chunk {
                mset.arg(format!("tally:v:{}", page(i))).arg(count(i));
            }
            mset.query::<()>(&mut conn)?;
        }
    }
    eprintln!(
        "reshard bench: seeded in {:.1} s",
        seeding.elapsed().as_secs_f64()
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (plan, planning, moved, moving) = runtime.block_on(async {
        let started = Instant::now();
        let plan = reshard::plan(&from, &to).await?;
        let planning = started.elapsed();
        let started = Instant::now();
        let moved = reshard::apply(&plan, |_| {}).await?;
        anyhow::Ok((plan, planning, moved, started.elapsed()))
    })?;

    let new = ring(&names);
    let expected = (0..keys)
        .filter(|i| new.lookup_index(page(*i).as_bytes()) == 3)
        .count() as u64;
    let on_new = cluster.node(3).keys("tally:v:*")?.len() as u64;
    ensure!(
        moved.total().counters == expected && on_new == expected,
        "moved {} and node 4 holds {on_new}, expected {expected}",
        moved.total().counters
    );
    ensure!(moved.total() == plan.total(), "moved {moved} of {plan}");
    let total = planning + moving;
    println!(
        "| keys | moved | plan s | move s | total s | keys moved/s (move) | keys moved/s (plan + move) |"
    );
    println!("|--:|--:|--:|--:|--:|--:|--:|");
    println!(
        "| {} | {} | {:.2} | {:.2} | {:.2} | {} | {} |",
        thousands(keys as u64),
        thousands(expected),
        planning.as_secs_f64(),
        moving.as_secs_f64(),
        total.as_secs_f64(),
        thousands((expected as f64 / moving.as_secs_f64()) as u64),
        thousands((expected as f64 / total.as_secs_f64()) as u64),
    );
    Ok(())
}

fn page(i: usize) -> String {
    format!("page-{i}")
}

fn count(i: usize) -> u64 {
    i as u64 + 1
}

/// `--keys N`, default 1,000,000.
fn keys_from_args() -> anyhow::Result<usize> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => Ok(1_000_000),
        [flag, n] if flag == "--keys" => n.parse().context("--keys takes a whole number"),
        _ => anyhow::bail!("usage: reshard [--keys N]"),
    }
}
