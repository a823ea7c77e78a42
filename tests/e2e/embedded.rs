//! The server without `REDIS_NODES`, on its default store: the embedded store in
//! `DATA_DIR` (real files in temporary directories). Counts and the `/stats/` ranking
//! survive a graceful restart and a SIGKILL once written; a `DATA_DIR` that another server
//! holds, that cannot be created, or whose `tally.redb` is not a database, exits with code
//! 2 and one line naming it.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tally_testkit::{LoadSpec, run_load};

use crate::support::{Samples, Server, one_at_a_time, sample};

/// Pages and the visits each gets (ties included, so the ranking's order by URL counts).
const PAGES: &[(&str, u64)] = &[("home", 5), ("about", 3), ("blog", 3), ("contact", 1)];

/// Paths under `/api/` and the requests each gets (`/api/a` and `/api/a/` are two URLs).
const PATHS: &[(&str, u64)] = &[
    ("/api/products/123/", 4),
    ("/api/users/456/", 3),
    ("/api/a", 2),
    ("/api/a/", 1),
];

/// Sends [`PAGES`]' visits and [`PATHS`]' requests, each answered 200.
async fn send_traffic(server: &Server) {
    for (page, visits) in PAGES {
        for _ in 0..*visits {
            let response = server
                .request("POST", &format!("/api/v1/counter/visit/{page}"))
                .await;
            assert_eq!(response.status, 200, "{}", response.text());
        }
    }
    for (path, requests) in PATHS {
        for _ in 0..*requests {
            let response = server.request("GET", path).await;
            assert_eq!(response.status, 200, "{}", response.text());
        }
    }
}

/// The ranking [`send_traffic`] makes: every visit's URL and every path, by count
/// descending, then URL ascending.
fn expected_ranking() -> Value {
    let mut entries: Vec<(String, u64)> = PAGES
        .iter()
        .map(|(page, n)| (format!("/api/v1/counter/visit/{page}"), *n))
        .chain(PATHS.iter().map(|(path, n)| ((*path).to_owned(), *n)))
        .collect();
    entries.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Value::Array(
        entries
            .into_iter()
            .map(|(url, count)| json!({"count": count, "url": url}))
            .collect(),
    )
}

/// Asserts every page of [`PAGES`] reads its count.
async fn assert_page_counts(server: &Server) {
    for (page, visits) in PAGES {
        let (count, _) = server.count(page).await;
        assert_eq!(count, *visits, "{page}");
    }
}

/// The one line a server refusing `DATA_DIR={dir}` prints on stderr, checked to be that.
fn assert_data_dir_refused(dir: &Path, what: &str) -> String {
    let shown = dir.display().to_string();
    let (status, stdout, stderr) = Server::run_to_exit(&[("DATA_DIR", shown.as_str())]);
    assert_eq!(status.code(), Some(2), "{what}: {stdout}{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{what}: {stderr}");
    let line = lines[0].to_owned();
    assert!(
        line.starts_with(&format!(
            "tally-server: invalid configuration: DATA_DIR={shown:?}: "
        )),
        "{what}: {line}"
    );
    line
}

#[tokio::test]
async fn a_restart_after_sigterm_keeps_every_count_and_the_ranking() {
    let _serial = one_at_a_time().await;
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().display().to_string();
    let env = [("DATA_DIR", data_dir.as_str())];

    let server = Server::start_without_redis(&env);
    send_traffic(&server).await;
    server.stop();

    let server = Server::start_without_redis(&env);
    // Before any other /api/ request, which would be counted too.
    let ranking = server.get_json("/stats/?limit=100").await;
    assert_eq!(ranking, expected_ranking());
    assert_page_counts(&server).await;
    let file = data.path().join("tally.redb").display().to_string();
    let status = server.get_json("/status").await;
    assert_eq!(status["store"], json!({"kind": "embedded", "path": file}));
    let output = server.stop();
    assert!(
        output.contains(&format!("embedded store at {file}")),
        "{output}"
    );
    assert!(
        !output.contains("repair"),
        "the first server closed its file cleanly: {output}"
    );
}

#[tokio::test]
async fn a_sigkill_after_the_visits_are_written_loses_nothing() {
    let _serial = one_at_a_time().await;
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().display().to_string();
    let env = [("DATA_DIR", data_dir.as_str())];

    let server = Server::start_without_redis(&env);
    send_traffic(&server).await;
    server.wait_flushed(Duration::from_secs(20)).await;
    // `/stats/` writes the pending request statistics before it answers, so this is the
    // ranking as written (with the metrics requests `wait_flushed` made).
    let before = server.get_json("/stats/?limit=100").await;
    for (page, visits) in PAGES {
        let url = format!("/api/v1/counter/visit/{page}");
        assert!(
            before
                .as_array()
                .unwrap()
                .contains(&json!({"count": visits, "url": url})),
            "{url}: {before}"
        );
    }
    server.kill();

    let server = Server::start_without_redis(&env);
    let after = server.get_json("/stats/?limit=100").await;
    assert_eq!(after, before);
    assert_page_counts(&server).await;
    let output = server.stop();
    assert!(
        output.contains("was not closed cleanly") && output.contains("was repaired at start"),
        "the killed server's file was repaired: {output}"
    );
}

#[tokio::test]
async fn a_second_server_on_the_same_data_dir_exits_2_saying_it_is_in_use() {
    let _serial = one_at_a_time().await;
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().display().to_string();
    let server = Server::start_without_redis(&[("DATA_DIR", data_dir.as_str())]);

    let line = assert_data_dir_refused(data.path(), "a second server");

    assert!(
        line.contains("is in use by another tally process"),
        "{line}"
    );
    // The first one is not disturbed.
    let response = server.request("POST", "/api/v1/counter/visit/home").await;
    assert_eq!(response.status, 200);
    server.stop();
}

#[tokio::test]
async fn an_unusable_data_dir_or_a_corrupt_file_exits_2_naming_it() {
    let _serial = one_at_a_time().await;
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let under_a_file = file.join("data");

    let line = assert_data_dir_refused(&under_a_file, "a path under a file");
    assert!(
        line.contains(&format!(
            "cannot create the data directory {}",
            under_a_file.display()
        )),
        "{line}"
    );

    let corrupt = scratch.path().join("corrupt");
    std::fs::create_dir(&corrupt).unwrap();
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 37 % 251 + 1) as u8).collect();
    std::fs::write(corrupt.join("tally.redb"), garbage).unwrap();

    let line = assert_data_dir_refused(&corrupt, "a corrupt tally.redb");
    assert!(
        line.contains(&format!(
            "{} is not a tally database",
            corrupt.join("tally.redb").display()
        )),
        "{line}"
    );
}

#[tokio::test]
async fn store_memory_with_redis_nodes_exits_2() {
    let _serial = one_at_a_time().await;
    let (status, stdout, stderr) =
        Server::run_to_exit(&[("STORE", "memory"), ("REDIS_NODES", "redis://127.0.0.1:1")]);
    assert_eq!(status.code(), Some(2), "{stdout}{stderr}");
    assert_eq!(
        stderr.trim_end(),
        "tally-server: invalid configuration: STORE=\"memory\": REDIS_NODES is set, which counts in Redis; unset STORE (or REDIS_NODES)"
    );
}

/// Pages of the flood killed mid-way.
const FLOOD_PAGES: usize = 400;
/// Visits the flood may send at most; the server is killed once [`KILL_AT_SHARE`] of them
/// are answered (a machine's speed moves the time of the kill, not its place in the flood).
const FLOOD_REQUESTS: u64 = 200_000;
const KILL_AT_SHARE: f64 = 0.4;

/// A SIGKILL in the middle of a visit flood loses at most the visits not yet written: no
/// page counts more than was sent to it (acknowledged, or without an answer), and the
/// file holds at least every visit the server had reported written before the kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_a_sigkill_mid_flood_keeps_every_count_between_written_and_acknowledged() {
    let _serial = one_at_a_time().await;
    let started = Instant::now();
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().display().to_string();
    // Daily counts off: "written before the kill" is the counter's increments written,
    // which would count each visit's day too (daily.rs covers the days on this store).
    let env = [
        ("DATA_DIR", data_dir.as_str()),
        ("BATCH_INTERVAL_SECONDS", "0.2"),
        ("DAILY_RETENTION_DAYS", "0"),
    ];
    let server = Server::start_without_redis(&env);
    let pages: Vec<String> = (0..FLOOD_PAGES).map(|i| format!("page-{i}")).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(run_load(LoadSpec {
        concurrency: 32,
        time_limit: Duration::from_secs(120),
        stop: Some(Arc::clone(&stop)),
        ..LoadSpec::visits(&server.base_url(), pages.clone(), FLOOD_REQUESTS)
    }));

    // Once a good share of the flood is answered and visit batches are being written,
    // take the figure written so far and kill the server at once, the flood still running.
    let kill_after = FLOOD_REQUESTS as f64 * KILL_AT_SHARE;
    let visit_route = "route=\"/api/v1/counter/visit/{page_id}\"";
    while server
        .metric("tally_http_requests_total", &[visit_route])
        .await
        < kill_after
    {
        assert!(!load.is_finished(), "the flood ended before the kill");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let visits = ["counter=\"visits\""];
    server
        .wait_for_metric(
            "tally_counter_batches_total",
            &[visits[0], "outcome=\"ok\""],
            1.0,
            Duration::from_secs(30),
            "visit batches written",
        )
        .await;
    let written = server
        .metric("tally_counter_increments_written_total", &visits)
        .await as u64;
    let killed_at = started.elapsed();
    server.kill();
    stop.store(true, Ordering::Relaxed);
    let board = load.await.expect("load task");

    let server = Server::start_without_redis(&env);
    let mut counted = 0;
    let mut wrong = Vec::new();
    for page in &pages {
        let (count, _) = server.count(page).await;
        let score = board.score(page);
        counted += count;
        if count > score.acked + score.unknown {
            wrong.push(format!(
                "{page}: counted {count}, acknowledged {}, unknown outcome {}",
                score.acked, score.unknown
            ));
        }
    }
    let output = server.stop();

    let totals = board.totals();
    println!(
        "[embedded: SIGKILL mid-flood] written before the kill {written} | acknowledged {} | unknown {} | unsent {} | counted after the restart {counted} | lost (acknowledged - counted) {} | killed at {killed_at:.1?} | wall {:.1?}",
        totals.acked,
        totals.unknown,
        totals.unsent,
        totals.acked.saturating_sub(counted),
        started.elapsed()
    );
    println!("[embedded: SIGKILL mid-flood] load: {}", board.summary());
    assert!(
        wrong.is_empty(),
        "counted more than was sent:\n{}",
        wrong.join("\n")
    );
    assert_eq!(totals.rejected + totals.other, 0, "{board:?}");
    assert!(written > 0, "visits were written before the kill");
    assert!(
        totals.acked > written,
        "visits were acknowledged after the written figure was taken: the kill was mid-flood"
    );
    assert!(
        counted >= written,
        "{counted} visits counted after the restart, fewer than the {written} written before the kill"
    );
    assert!(
        output.contains("was not closed cleanly") && output.contains("was repaired at start"),
        "the killed server's file was repaired: {output}"
    );
}

/// Distinct URLs of the memory flood, each requested once.
const DISTINCT_URLS: u64 = 1_000_000;
/// The deepest offset `/stats/` serves: the page read back from the file's ranking index.
const DEEP_OFFSET: usize = 100_000;
/// `EMBEDDED_CACHE_MB` of the memory flood's server.
const CACHE_MB: u64 = 16;
/// `MAX_PENDING_KEYS` of the memory flood's server, and what may wait at once: the
/// embedded store is one shard, which may hold twice its share (its keys in flight take
/// one more place each).
const FLOOD_MAX_PENDING_KEYS: u64 = 3_000;
const FLOOD_MOST_PENDING: u64 = 2 * FLOOD_MAX_PENDING_KEYS;
/// A flood URL: `/api/u{n:07}/`, 13 bytes.
const FLOOD_URL_LEN: u64 = 13;
/// The README's bound on what the server holds beyond its idle size, on the embedded
/// store: the URLs waiting (at [`BYTES_PER_PENDING_URL`] each, as in the cardinality
/// scenario), the statistics' read cache (1,024 entries), the page cache
/// (`EMBEDDED_CACHE_MB`), and [`ARENAS`] for connections and allocator arenas. Nothing in
/// it grows with the number of URLs in the file.
const BYTES_PER_PENDING_URL: u64 = 512;
/// The README allows "a few MB" for connections and allocator arenas; on the embedded
/// store glibc's per-thread arenas also keep pages the page cache evicted, up to about
/// the cache's size again. Measured over the flood of [`DISTINCT_URLS`] (debug build, two
/// cores): growth 33.6 MB with the default arenas, 21.6 MB with `MALLOC_ARENA_MAX=1`
/// (flat from a third of the flood on), against 23.1 MB without this second cache.
const ARENAS: u64 = 4 * 1024 * 1024 + CACHE_MB * 1024 * 1024;
const EMBEDDED_GROWTH_BOUND: u64 = FLOOD_MOST_PENDING * BYTES_PER_PENDING_URL
    + 1024 * (FLOOD_URL_LEN + 150)
    + CACHE_MB * 1024 * 1024
    + ARENAS;
/// What the last tenth of the flood (100,000 requests more, a third of them new keys in
/// the file) may add to the resident memory's peak over the peak of the tenths before it
/// from the half-way mark: memory that followed the file's size would add some 3 MB
/// there.
const LAST_TENTH_GROWTH: u64 = 2 * 1024 * 1024;

/// A flood of a million distinct `/api/` URLs, each a new key of the request statistics
/// in the file: the server's resident memory stays under the README's bound (the file
/// holds the keys; memory holds the page cache and what waits) and stops growing while
/// the file still does, every URL answered 2xx is stored once, and `/stats/` answers from
/// the file, at its head and deep. The store writes slower than the flood comes (about
/// 13,000 requests a second in a debug build on two cores, 8 s per 100,000), so
/// `MAX_PENDING_KEYS` fills and about two thirds answer 503, uncounted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_a_million_distinct_urls_keep_memory_bounded_on_the_embedded_store() {
    let _serial = one_at_a_time().await;
    let started = Instant::now();
    let cache_mb = CACHE_MB.to_string();
    let max_pending = FLOOD_MAX_PENDING_KEYS.to_string();
    let server = Server::start_without_redis(&[
        ("EMBEDDED_CACHE_MB", &cache_mb),
        ("MAX_PENDING_KEYS", &max_pending),
        ("BATCH_INTERVAL_SECONDS", "0.2"),
    ]);
    // Scattered over the key space (7,919 is prime to 10^7's factors), so consecutive
    // requests write to distant pages of the file rather than append to one.
    let keys: Vec<String> = (0..DISTINCT_URLS)
        .map(|i| format!("u{:07}", i * 7_919 % DISTINCT_URLS))
        .collect();
    let baseline = server.rss_bytes();
    let done = Arc::new(AtomicBool::new(false));
    let sampler = sample(&server, &done);
    let spec = LoadSpec {
        method: "GET",
        path: |key| format!("/api/{key}/"),
        concurrency: 32,
        time_limit: Duration::from_secs(300),
        ..LoadSpec::visits(&server.base_url(), keys, DISTINCT_URLS)
    };
    let path = spec.path;
    let board = run_load(spec).await;
    done.store(true, Ordering::Relaxed);
    let Samples {
        rss: samples,
        pending,
        ..
    } = sampler.await.expect("sampler");
    let peak = samples.iter().copied().max().unwrap_or(baseline);
    let most_pending = pending.iter().copied().max().unwrap_or(0);

    // `/stats/` writes what is pending before it ranks.
    let top = server.get_json("/stats/?limit=10").await;
    let deep = server
        .get_json(&format!("/stats/?limit=10&offset={DEEP_OFFSET}"))
        .await;
    let status = server.get_json("/status").await;
    let written = status["stats_status"]["requests_written"]
        .as_u64()
        .expect("requests_written");
    let keys_written = server
        .metric("tally_counter_keys_written_total", &["counter=\"stats\""])
        .await as u64;
    server.stop();

    let totals = board.totals();
    let mb = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    println!(
        "[embedded: {DISTINCT_URLS} distinct URLs] acknowledged {} | 503 {} | written {written} (keys {keys_written}) | VmRSS {:.1} MB idle, peak {:.1} MB: growth {:.1} MB, bound {:.1} MB ({} samples) | URLs pending at most {most_pending} | wall {:.1?} | load: {}",
        totals.acked,
        totals.rejected,
        mb(baseline),
        mb(peak),
        mb(peak.saturating_sub(baseline)),
        mb(EMBEDDED_GROWTH_BOUND),
        samples.len(),
        started.elapsed(),
        board.summary()
    );
    let tenth = |d: usize| samples[(samples.len() - 1) * d / 10];
    let deciles: Vec<String> = (0..=10).map(|d| format!("{:.1}", mb(tenth(d)))).collect();
    println!(
        "[embedded: {DISTINCT_URLS} distinct URLs] VmRSS by tenth of the flood (MB): {}",
        deciles.join(" ")
    );

    assert_eq!(
        totals.acked + totals.rejected,
        DISTINCT_URLS,
        "every request answered, 2xx or 503: {board:?}"
    );
    assert_eq!(totals.other + totals.unknown, 0, "{board:?}");
    assert_eq!(board.unavailable_without_retry_after, 0);
    assert!(
        most_pending <= FLOOD_MOST_PENDING,
        "{most_pending} URLs pending, over the documented bound of {FLOOD_MOST_PENDING}"
    );
    assert!(
        peak.saturating_sub(baseline) < EMBEDDED_GROWTH_BOUND,
        "VmRSS grew {:.1} MB, over the README's bound of {:.1} MB",
        mb(peak.saturating_sub(baseline)),
        mb(EMBEDDED_GROWTH_BOUND)
    );
    // Peaks, not single samples: the resident size swings by several MB as batches are
    // built and freed (one run's last two samples were 65.3 and 68.5 MB with peaks of 68.4
    // and 68.6), while memory that kept growing would lift the last tenth's peak too.
    let peak_of = |from: usize, to: usize| {
        let n = samples.len() - 1;
        samples[n * from / 10..=n * to / 10]
            .iter()
            .copied()
            .max()
            .unwrap_or(0)
    };
    let (earlier, last) = (peak_of(5, 9), peak_of(9, 10));
    assert!(
        last.saturating_sub(earlier) < LAST_TENTH_GROWTH,
        "the peak VmRSS of the flood's last tenth is {:.1} MB above that of its fifth to ninth tenths",
        mb(last.saturating_sub(earlier))
    );
    // Each URL was requested once: one increment and one stored URL per 2xx, none for a
    // 503.
    assert_eq!(written, totals.acked, "increments written");
    assert_eq!(keys_written, totals.acked, "distinct URLs written");
    // The ranking from the file: all counts 1, so by URL ascending, at its head and deep.
    let mut acked: Vec<String> = board
        .keys
        .iter()
        .filter(|(_, score)| score.acked > 0)
        .map(|(key, _)| path(key))
        .collect();
    acked.sort_unstable();
    let page = |from: usize| {
        Value::Array(
            acked[from..from + 10]
                .iter()
                .map(|url| json!({"count": 1, "url": url}))
                .collect(),
        )
    };
    assert_eq!(top, page(0));
    assert_eq!(deep, page(DEEP_OFFSET));
}
