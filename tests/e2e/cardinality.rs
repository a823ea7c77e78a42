//! Scenario 9: a cardinality flood. A hundred thousand distinct `/api/` URLs, each one a
//! new key of the request statistics, with one node paused for 6 s once 30% of the flood
//! is answered, so the pending bound is reached: the server's resident memory stays under a stated bound (it
//! holds at most `MAX_PENDING_KEYS` URLs, Redis holds the rest; past the bound it answers
//! 503 and counts nothing), and `/stats/` stays exact.
//!
//! Sized for a debug build on two cores: 100,000 distinct URLs (not 1,000,000) with
//! `MAX_PENDING_KEYS` 3,000, so the paused node's share (1,000) fills early in the pause
//! even at a few hundred requests a second.
//! The mechanism does not depend on the count: memory is bounded by `MAX_PENDING_KEYS`,
//! whatever the number of URLs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tally_testkit::{LoadSpec, run_load};

use crate::support::{Rig, Samples, check_urls, one_at_a_time, sample, urls_counted};

/// Distinct URLs in the flood.
const DISTINCT: usize = 100_000;
/// `MAX_PENDING_KEYS` of the server.
const MAX_PENDING_KEYS: &str = "3000";
/// Node paused during the flood, when (the share of the flood answered: a machine's speed
/// moves the time, not the place in the flood), and for how long.
const PAUSED: usize = 1;
const PAUSE_AT_SHARE: f64 = 0.3;
const PAUSE_FOR: Duration = Duration::from_secs(6);
/// Hot URLs: `/api/hot/{i}/` is requested `HOT_BASE + i` times on top of the flood, spread
/// evenly through it, so each is requested before, during and after the pause.
const HOT: usize = 10;
const HOT_BASE: usize = 20;
/// Nodes, and each node's share of `MAX_PENDING_KEYS`.
const NODES: u64 = 3;
const SHARE: u64 = 1_000;
/// What the crate docs allow pending at once: each node at most twice its share (its keys
/// in flight take one more place each).
const MOST_PENDING: u64 = 2 * SHARE * NODES;
/// The stated bounds on the server's resident memory during the flood (a debug build):
/// in all, and above what it used before the flood. The growth allowed is what the
/// documented bound can hold, [`MOST_PENDING`] URLs at [`BYTES_PER_PENDING_URL`] each
/// (the URL in the pending map, in the batch on the wire and in the script's arguments,
/// with the tables' overhead), plus [`FIXED_GROWTH`] for what a flood costs whatever it
/// holds (32 connections' buffers, the allocator's per-thread arenas). Holding every URL
/// of the flood instead (100,000 of them) would cost some 10 MB more, and fails it; a
/// missing bound that lets a few tens of thousands wait shows in the pending samples
/// first (seen: 24,910 pending with the bound disabled, RSS growth 5.7 MB). Measured on
/// two cores: about 20 MB before, 24 MB at the peak.
const RSS_BOUND: u64 = 64 * 1024 * 1024;
const BYTES_PER_PENDING_URL: u64 = 512;
const FIXED_GROWTH: u64 = 4 * 1024 * 1024;
const RSS_GROWTH_BOUND: u64 = FIXED_GROWTH + MOST_PENDING * BYTES_PER_PENDING_URL;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_a_flood_of_distinct_urls_keeps_memory_bounded_and_stats_exact() {
    let _serial = one_at_a_time().await;
    let started = Instant::now();
    let rig = Rig::start(3);
    let server = rig.server(&[
        ("MAX_PENDING_KEYS", MAX_PENDING_KEYS),
        ("BATCH_INTERVAL_SECONDS", "0.2"),
    ]);
    let keys = flood_keys();
    let requests = keys.len() as u64;
    let baseline = server.rss_bytes();

    // Sample the server's resident memory and its pending URLs while the flood runs.
    let done = Arc::new(AtomicBool::new(false));
    let sampler = sample(&server, &done);
    let spec = LoadSpec {
        method: "GET",
        path: |key| format!("/api/{key}/"),
        concurrency: 32,
        time_limit: Duration::from_secs(240),
        ..LoadSpec::visits(&server.base_url(), keys, requests)
    };
    let path = spec.path;
    let load = tokio::spawn(run_load(spec));
    let pause_after = requests as f64 * PAUSE_AT_SHARE;
    while server.metric("tally_http_requests_total", &[]).await < pause_after {
        assert!(!load.is_finished(), "the flood ended before the pause");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    rig.cluster.node(PAUSED).pause().expect("SIGSTOP");
    tokio::time::sleep(PAUSE_FOR).await;
    rig.cluster.node(PAUSED).resume().expect("SIGCONT");
    let board = load.await.expect("load task");
    done.store(true, Ordering::Relaxed);
    let Samples {
        rss: samples,
        pending,
        ..
    } = sampler.await.expect("sampler");
    let peak = samples.iter().copied().max().unwrap_or(baseline);
    let most_pending = pending.iter().copied().max().unwrap_or(0);
    let at_end = server.rss_bytes();

    // `/stats/` writes this instance's pending counts, then ranks every node's.
    let top = server.get_json(&format!("/stats/?limit={HOT}")).await;
    let urls = urls_counted(&rig.nodes(), &rig.ring);
    server.stop();

    let totals = board.totals();
    let mb = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    println!(
        "[scenario 9: cardinality] acknowledged {} | counted {} | 503 {} | unknown {} | distinct URLs stored {} | wall {:.1?}",
        totals.acked,
        urls.values().sum::<u64>(),
        totals.rejected,
        totals.unknown,
        urls.len(),
        started.elapsed()
    );
    println!(
        "[scenario 9: cardinality] VmRSS: {:.1} MB at start, peak {:.1} MB, {:.1} MB at the end (bounds {:.0} MB, growth {:.1} MB; {} samples) | URLs pending at most {most_pending} (bound {MOST_PENDING}) | load: {}",
        mb(baseline),
        mb(peak),
        mb(at_end),
        mb(RSS_BOUND),
        mb(RSS_GROWTH_BOUND),
        samples.len(),
        board.summary()
    );

    assert_eq!(
        totals.acked + totals.rejected,
        requests,
        "every request answered, 2xx or 503: {board:?}"
    );
    assert_eq!(totals.other + totals.unknown, 0, "{board:?}");
    assert_eq!(board.unavailable_without_retry_after, 0);
    assert!(
        totals.rejected > 0,
        "the paused node's share of the bound filled up: {board:?}"
    );
    assert!(
        most_pending <= MOST_PENDING,
        "{most_pending} URLs pending, over the documented bound of {MOST_PENDING}"
    );
    assert!(
        most_pending >= SHARE,
        "the samples saw the bound reached: {most_pending} URLs pending at most"
    );
    assert!(peak < RSS_BOUND, "peak VmRSS {:.1} MB", mb(peak));
    assert!(
        peak.saturating_sub(baseline) < RSS_GROWTH_BOUND,
        "VmRSS grew from {:.1} MB to {:.1} MB",
        mb(baseline),
        mb(peak)
    );
    // Exactly the answered requests are counted: a 503 here is the statistics refusing a
    // URL it had no room for, which it does not count.
    check_urls(&board, path, &urls, |s| (s.acked, s.acked + s.unknown))
        .unwrap_or_else(|wrong| panic!("{wrong}"));
    assert_eq!(
        urls.len() as u64,
        board.keys.values().filter(|s| s.acked > 0).count() as u64,
        "one stored URL per URL answered 2xx, nothing else"
    );
    // The ranking: the hot URLs, most requested first, with their exact counts.
    let mut hot: Vec<(u64, String)> = (0..HOT)
        .map(|i| {
            let url = format!("/api/hot/{i}/");
            (urls.get(&url).copied().unwrap_or(0), url)
        })
        .collect();
    hot.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    assert!(hot.iter().all(|(count, _)| *count > 1), "{hot:?}");
    let want: Vec<serde_json::Value> = hot
        .into_iter()
        .map(|(count, url)| serde_json::json!({"count": count, "url": url}))
        .collect();
    assert_eq!(top, serde_json::Value::Array(want));
}

/// The flood's keys in request order: `DISTINCT` distinct URLs with the hot URLs' requests
/// spread evenly among them, the hot URLs taking turns.
fn flood_keys() -> Vec<String> {
    let rounds = HOT_BASE + HOT;
    let hot: Vec<String> = (0..rounds)
        .flat_map(|round| (0..HOT).filter(move |i| round < HOT_BASE + i))
        .map(|i| format!("hot/{i}"))
        .collect();
    let mut keys = Vec::with_capacity(DISTINCT + hot.len());
    let mut next_hot = hot.iter().enumerate().peekable();
    for i in 0..DISTINCT {
        keys.push(format!("u{i}"));
        while let Some((_, url)) = next_hot.next_if(|(j, _)| j * DISTINCT / hot.len() <= i) {
            keys.push(url.clone());
        }
    }
    keys
}

/// `MAX_PENDING_BYTES` and `BATCH_MAX_BYTES` of the long-path flood.
const LONG_MAX_PENDING_BYTES: u64 = 8 * 1024 * 1024;
const LONG_BATCH_MAX_BYTES: u64 = 256 * 1024;
/// Distinct paths of 2 KiB in the long-path flood (about 120 MB of paths).
const LONG_PATHS: usize = 60_000;

/// The README's bound on what the server holds beyond its idle size, for `nodes` nodes:
/// the byte budget, for every node and counter three copies of one batch on its way out
/// (the script's arguments, the client's buffer, the socket), the statistics' read cache
/// (1,024 entries) and a fixed allowance for connections and allocator arenas.
fn memory_bound(nodes: u64, path_len: u64) -> u64 {
    LONG_MAX_PENDING_BYTES
        + 2 * nodes * 3 * LONG_BATCH_MAX_BYTES
        + 1024 * (path_len + 150)
        + FIXED_GROWTH
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_two_kib_paths_with_a_node_down_stay_under_the_byte_bound() {
    const PAUSED: usize = 1;
    let _serial = one_at_a_time().await;
    let rig = Rig::start(3);
    let max_bytes = LONG_MAX_PENDING_BYTES.to_string();
    let batch_bytes = LONG_BATCH_MAX_BYTES.to_string();
    let server = rig.server(&[
        ("MAX_PENDING_BYTES", &max_bytes),
        ("BATCH_MAX_BYTES", &batch_bytes),
        ("BATCH_INTERVAL_SECONDS", "0.2"),
    ]);
    let paused_url = rig.cluster.node(PAUSED).url();
    rig.cluster.node(PAUSED).pause().expect("SIGSTOP");
    server.wait_for_node(&paused_url, false).await;
    let baseline = server.rss_bytes();
    // "/api/" + 2,036 characters + "/": 2,042 bytes, under the 2,048 of the overflow key.
    let keys: Vec<String> = (0..LONG_PATHS).map(|i| format!("{i:0>2036}")).collect();
    let path_len = 2042;
    let done = Arc::new(AtomicBool::new(false));
    let sampler = sample(&server, &done);
    let board = run_load(LoadSpec {
        method: "GET",
        path: |key| format!("/api/{key}/"),
        concurrency: 16,
        time_limit: Duration::from_secs(300),
        ..LoadSpec::visits(&server.base_url(), keys, LONG_PATHS as u64)
    })
    .await;
    done.store(true, Ordering::Relaxed);
    let samples = sampler.await.expect("sampler");
    rig.cluster.node(PAUSED).resume().expect("SIGCONT");
    let peak = samples.rss.iter().copied().max().unwrap_or(baseline);
    let most_bytes = samples.pending_bytes.iter().copied().max().unwrap_or(0);
    let bound = memory_bound(3, path_len);
    let totals = board.totals();
    let mb = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    println!(
        "[scenario 9b: 2 KiB paths, a node down] acknowledged {} | 503 {} | pending bytes at most {:.1} MB (MAX_PENDING_BYTES {:.1} MB) | VmRSS {:.1} MB idle, peak {:.1} MB: growth {:.1} MB, bound {:.1} MB | {}",
        totals.acked,
        totals.rejected,
        mb(most_bytes),
        mb(LONG_MAX_PENDING_BYTES),
        mb(baseline),
        mb(peak),
        mb(peak.saturating_sub(baseline)),
        mb(bound),
        board.summary()
    );
    server.wait_flushed(Duration::from_secs(120)).await;
    server.stop();

    assert_eq!(
        totals.other + totals.unknown + totals.unsent,
        0,
        "{board:?}"
    );
    assert!(
        totals.rejected > 0,
        "the paused node's share of the bytes filled up: {board:?}"
    );
    assert!(
        most_bytes <= LONG_MAX_PENDING_BYTES + 3 * LONG_BATCH_MAX_BYTES,
        "{most_bytes} bytes pending, over MAX_PENDING_BYTES (plus keys in flight)"
    );
    assert!(
        peak.saturating_sub(baseline) < bound,
        "VmRSS grew {:.1} MB, over the README's bound of {:.1} MB",
        mb(peak.saturating_sub(baseline)),
        mb(bound)
    );
}
