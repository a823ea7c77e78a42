//! Scenario 15: deep `/stats/` queries cannot take a node down. Three nodes hold 360,000
//! URLs of about 1 KB (written straight into each owner's sorted set), and 20 clients ask
//! at once for `/stats/?offset=100000&limit=10000`: each merge moves some 180 MB. First
//! 20 different pages (no two can share a merge, so the bound on concurrent merges is what
//! holds), then 20 identical ones (the original report).
//!
//! While they run, every node stays up (no "marked down" in the server's log, `/status`
//! sees all three, `/health` says `healthy`), and uncached visit reads, which need a
//! node's answer, succeed. Every deep query answers 200 with the exact page, or 503
//! `overloaded` with `Retry-After`; a refused query starts no merge, deep pages are read
//! around their counts, and the bound was reached (some were refused).
//!
//! What it guards against: unbounded, the 20 merges would take the connections of the
//! nodes' one pool, health pings would wait behind them past `REDIS_TIMEOUT`, and each node
//! would be marked down.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{Rig, Server, json, one_at_a_time};

/// URLs written, their length, and their counts: `1 + i % COUNTS`. Two runs of 180,000
/// equal counts: the page falls inside one, 100,000 places into it, which is the costliest
/// case for a deep page (ties are ordered by URL, so each node sends every member of its
/// share of the run up to the page's end, some 60,000 of 1 KB), and so the one that
/// reaches the bound on any machine: 20 such merges cannot pass two at a time through
/// one second of waiting.
const URLS: usize = 360_000;
const URL_BYTES: usize = 1_000;
const COUNTS: usize = 2;
/// Concurrent deep queries, and their page.
const QUERIES: usize = 20;
const OFFSET: usize = 100_000;
const LIMIT: usize = 10_000;
/// The server's metrics: merges run (by how the page was read), merges refused, and
/// queries that joined a merge queued for the same page.
const MERGES: &str = "tally_stats_merges_total";
const WINDOW: &str = "read=\"window\"";
const REFUSED: &str = "tally_stats_rankings_refused_total";
const JOINED: &str = "tally_stats_rankings_joined_total";
/// Visit counters written straight to the nodes, read (uncached) during the queries.
const PAGES: usize = 400;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_deep_stats_queries_leave_every_node_up_and_reads_served() {
    let _serial = one_at_a_time().await;
    let started = Instant::now();
    let rig = Rig::start(3);
    let ranking = ranked(seed_urls(&rig));
    let pages = seed_visits(&rig);
    // The default timeout (the suite's is 0.5 s): each merge moves some 180 MB, which on a
    // loaded two-core machine (a debug build parsing it) may hold up the server's other
    // work for a while. Unbounded merges take the nodes down at this timeout too.
    let server = rig.server(&[("REDIS_TIMEOUT", "5")]);
    let mut reads = pages.iter();

    let distinct: Vec<usize> = (0..QUERIES).map(|i| OFFSET - i).collect();
    let identical = vec![OFFSET; QUERIES];
    let mut refused = 0;
    for (round, offsets) in [("distinct pages", distinct), ("identical", identical)] {
        let merges_before = server.metric(MERGES, &[]).await;
        let windows_before = server.metric(MERGES, &[WINDOW]).await;
        let refused_before = server.metric(REFUSED, &[]).await;
        let joined_before = server.metric(JOINED, &[]).await;
        let outcome = storm(&server, &offsets, &mut reads).await;
        let merges = (server.metric(MERGES, &[]).await - merges_before) as u64;
        let windows = (server.metric(MERGES, &[WINDOW]).await - windows_before) as u64;
        let refused_counted = (server.metric(REFUSED, &[]).await - refused_before) as usize;
        let joined = (server.metric(JOINED, &[]).await - joined_before) as usize;
        let answered = outcome.answers.iter().filter(|a| a.is_some()).count();
        for (offset, answer) in offsets.iter().zip(&outcome.answers) {
            if let Some(page) = answer {
                assert_eq!(
                    page.as_slice(),
                    &ranking[*offset..*offset + LIMIT],
                    "{round}: offset {offset}"
                );
            }
        }
        println!(
            "scenario 15, {round}: {answered} answered, {} refused (503 overloaded), {merges} merges ({windows} read around their counts), {refused_counted} refusals counted, {joined} queries joined one, {} uncached reads, /health checked {} times",
            QUERIES - answered,
            outcome.reads,
            outcome.health_checks
        );
        assert!(answered > 0, "{round}: no deep query answered");
        assert!(
            merges <= answered as u64,
            "{round}: {merges} merges for {answered} answers: refused queries read the nodes"
        );
        // Each query queued a merge of its own (which ran, or was refused) or joined one
        // queued for its page (and shares its answer or refusal); every query refused is
        // counted once.
        assert_eq!(
            refused_counted,
            QUERIES - answered,
            "{round}: the server counted {refused_counted} refusals for {} 503s seen",
            QUERIES - answered
        );
        assert!(
            merges as usize + joined <= QUERIES,
            "{round}: {merges} merges and {joined} joined for {QUERIES} queries"
        );
        assert!(
            windows > 0,
            "{round}: no deep page was read around its counts (every merge read the heads)"
        );
        assert!(
            outcome.reads > 0,
            "{round}: no read made during the queries"
        );
        refused += QUERIES - answered;
    }
    assert!(
        refused > 0,
        "the bound on concurrent merges was never reached"
    );

    let output = server.output();
    assert!(
        !output.contains("marked down"),
        "a node was marked down:\n{output}"
    );
    println!("scenario 15: {:.1} s", started.elapsed().as_secs_f64());
}

/// What one round of concurrent deep queries saw.
struct Storm {
    /// Per query, in order: the page answered, or `None` for 503 `overloaded`.
    answers: Vec<Option<Vec<(u64, String)>>>,
    /// Uncached visit reads made (and checked) while the queries ran.
    reads: usize,
    /// `/health` and `/status` checks made while they ran.
    health_checks: usize,
}

/// Sends one deep query per offset at once; until all are answered, checks `/health`,
/// `/status` and one uncached visit read after another.
async fn storm<'a>(
    server: &Server,
    offsets: &[usize],
    reads: &mut impl Iterator<Item = &'a (String, u64)>,
) -> Storm {
    let done = Arc::new(AtomicBool::new(false));
    let queries = futures::future::join_all(offsets.iter().map(|offset| {
        let target = format!("/stats/?offset={offset}&limit={LIMIT}");
        async move {
            let response = server.request("GET", &target).await;
            match response.status {
                200 => {
                    let body = json(&response);
                    let entries = body.as_array().expect("a JSON array");
                    Some(
                        entries
                            .iter()
                            .map(|e| {
                                (
                                    e["count"].as_u64().expect("count"),
                                    e["url"].as_str().expect("url").to_owned(),
                                )
                            })
                            .collect(),
                    )
                }
                503 => {
                    assert_eq!(
                        json(&response)["error"]["code"],
                        "overloaded",
                        "{target}: {}",
                        response.text()
                    );
                    assert!(
                        response.header("retry-after").is_some(),
                        "{target}: 503 without Retry-After"
                    );
                    None
                }
                other => panic!("{target}: {other} {}", response.text()),
            }
        }
    }));
    let watch = {
        let done = Arc::clone(&done);
        async move {
            let (mut made, mut checks) = (0, 0);
            while !done.load(Ordering::SeqCst) {
                let health = server.get_json("/health").await;
                assert_eq!(
                    health["status"],
                    "healthy",
                    "/health: {health}; the server's log:\n{}",
                    server.output()
                );
                let status = server.get_json("/status").await;
                assert_all_up(&status);
                checks += 1;
                let (page, visits) = reads.next().expect("enough pages to read");
                let (counted, via) = server.count(page).await;
                assert_eq!(counted, *visits, "{page}");
                assert!(
                    via.starts_with("redis_"),
                    "{page} not read from its node: {via}"
                );
                made += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (made, checks)
        }
    };
    let queries = async {
        let answers = queries.await;
        done.store(true, Ordering::SeqCst);
        answers
    };
    let (answers, (reads, health_checks)) = tokio::join!(queries, watch);
    Storm {
        answers,
        reads,
        health_checks,
    }
}

fn assert_all_up(status: &Value) {
    let nodes = status["redis_status"]["node_status"]
        .as_object()
        .expect("node_status");
    assert_eq!(nodes.len(), 3, "{status}");
    assert!(
        nodes.values().all(|up| up == true),
        "a node is down in /status: {status}"
    );
}

/// URL `i`: `/api/deep/{i}/` padded to [`URL_BYTES`].
fn url(i: usize) -> String {
    let head = format!("/api/deep/{i:06}/");
    format!("{head}{}/", "x".repeat(URL_BYTES - head.len() - 1))
}

/// Writes [`URLS`] URLs into their owners' sorted sets; returns them with their counts.
fn seed_urls(rig: &Rig) -> Vec<(u64, String)> {
    let urls: Vec<(u64, String)> = (0..URLS)
        .map(|i| ((1 + i % COUNTS) as u64, url(i)))
        .collect();
    let mut by_node: HashMap<usize, Vec<&(u64, String)>> = HashMap::new();
    for entry in &urls {
        by_node.entry(rig.owner(&entry.1)).or_default().push(entry);
    }
    for (index, entries) in by_node {
        let node = rig.cluster.node(index);
        for chunk in entries.chunks(2_000) {
            let mut zadd = redis::cmd("ZADD");
            zadd.arg("tally:urls");
            for (count, url) in chunk {
                zadd.arg(*count).arg(url);
            }
            let added: u64 = node.query(&zadd).expect("ZADD");
            assert_eq!(added, chunk.len() as u64);
        }
    }
    urls
}

/// Writes [`PAGES`] visit counters (`deep-page-{i}`: `i + 1` visits) into their owners;
/// the server has never seen them, so its first read of each goes to the node.
fn seed_visits(rig: &Rig) -> Vec<(String, u64)> {
    let pages: Vec<(String, u64)> = (0..PAGES)
        .map(|i| (format!("deep-page-{i}"), i as u64 + 1))
        .collect();
    for (page, visits) in &pages {
        let mut set = redis::cmd("SET");
        set.arg(format!("tally:v:{page}")).arg(visits);
        let _: () = rig.cluster.node(rig.owner(page)).query(&set).expect("SET");
    }
    pages
}

/// `urls` in ranking order (count descending, then url ascending), sorted here.
fn ranked(mut urls: Vec<(u64, String)>) -> Vec<(u64, String)> {
    urls.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    urls
}
