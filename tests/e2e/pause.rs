//! Scenario 2: a node stops answering (SIGSTOP) for 10 s while visits keep coming, then
//! resumes. Visits are acknowledged throughout (they wait in the buffer); reads of pages
//! the server has not cached and that live on the paused node answer 503 with
//! `Retry-After`, and no other read does; after the resume and a flush every acknowledged
//! visit is counted exactly once.

use std::time::{Duration, Instant};

use tally_testkit::{LoadSpec, keys_on, run_load};

use crate::support::{Outcome, Rig, assert_answered_promptly, json, one_at_a_time, report};

/// How big a run is, so the secrets scenario can repeat this one smaller.
pub struct Size {
    /// Pages visited.
    pub pages: usize,
    /// Concurrent connections of the visit load.
    pub connections: usize,
    /// Load before the pause.
    pub before: Duration,
    /// How long the node stays stopped.
    pub pause: Duration,
    /// Load after the resume.
    pub after: Duration,
    /// Extra server settings (e.g. debug logs).
    pub env: &'static [(&'static str, &'static str)],
}

/// How long a cached count is trusted: short, so the cache of the paused node's visited
/// pages runs out during the pause and their reads turn to 503 too.
const CACHE_TTL: &str = "1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_paused_for_ten_seconds_loses_no_acknowledged_visit() {
    let _serial = one_at_a_time().await;
    let rig = Rig::start(3);
    let size = Size {
        pages: 300,
        connections: 16,
        before: Duration::from_secs(3),
        pause: Duration::from_secs(10),
        after: Duration::from_secs(3),
        env: &[],
    };
    paused_node_loses_nothing("scenario 2: SIGSTOP", &rig, &size).await;
}

/// A read made during the pause, and what it got.
struct Read {
    page: String,
    on_paused: bool,
    status: u16,
    served_via: Option<String>,
    retry_after: Option<String>,
    took: Duration,
}

/// Pauses node 1 of `rig` for `size.pause` in the middle of a visit load, reading pages
/// meanwhile; checks the reads, then the counts after the resume. Panics on any breach.
pub async fn paused_node_loses_nothing(scenario: &str, rig: &Rig, size: &Size) -> Outcome {
    const PAUSED: usize = 1;
    let started = Instant::now();
    let mut env = vec![("CACHE_TTL_SECONDS", CACHE_TTL)];
    env.extend_from_slice(size.env);
    let server = rig.server(&env);
    let paused_port = rig.cluster.node(PAUSED).port();
    let pages: Vec<String> = (0..size.pages).map(|i| format!("page-{i}")).collect();
    // Pages on the paused node that nobody visits or reads before the pause: certainly
    // not cached. And visited pages on the other nodes.
    let cold: Vec<String> = keys_on(&rig.ring, PAUSED, "cold-").take(10).collect();
    let elsewhere: Vec<&String> = pages
        .iter()
        .filter(|p| rig.owner(p) != PAUSED)
        .take(10)
        .collect();
    let visited_on_paused: Vec<&String> = pages
        .iter()
        .filter(|p| rig.owner(p) == PAUSED)
        .take(10)
        .collect();

    let load = tokio::spawn(run_load(LoadSpec {
        concurrency: size.connections,
        requests: u64::MAX,
        time_limit: size.before + size.pause + size.after,
        forbidden: rig.password.clone(),
        ..LoadSpec::visits(&server.base_url(), pages.clone(), 0)
    }));
    tokio::time::sleep(size.before).await;

    rig.cluster.node(PAUSED).pause().expect("SIGSTOP");
    let paused_at = Instant::now();
    let mut reads = Vec::new();
    let mut bodies = Vec::new();
    // Leave the last half second out: a read still running at the resume could be answered
    // by the node.
    while paused_at.elapsed() + Duration::from_millis(1500) < size.pause {
        let round = cold
            .iter()
            .chain(elsewhere.iter().copied())
            .chain(visited_on_paused.iter().copied());
        for page in round {
            let sent = Instant::now();
            let response = server
                .request("GET", &format!("/api/v1/counter/visits/{page}"))
                .await;
            let took = sent.elapsed();
            bodies.push(format!("{:?} {}", response.headers, response.text()));
            let served_via = (response.status == 200)
                .then(|| json(&response)["served_via"].as_str().map(str::to_owned))
                .flatten();
            if response.status == 503 {
                let body = json(&response);
                assert_eq!(body["error"]["code"], "store_unavailable", "{body}");
                let message = body["error"]["message"].as_str().unwrap_or_default();
                assert!(
                    message.contains(&format!("127.0.0.1:{paused_port}")),
                    "the 503 names the paused node: {message}"
                );
            }
            reads.push(Read {
                page: page.clone(),
                on_paused: rig.owner(page) == PAUSED,
                status: response.status,
                served_via,
                retry_after: response.header("retry-after").map(str::to_owned),
                took,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let remaining = size.pause.saturating_sub(paused_at.elapsed());
    tokio::time::sleep(remaining).await;
    rig.cluster.node(PAUSED).resume().expect("SIGCONT");

    let board = load.await.expect("load task");
    // After the resume the node's pages read again (it is marked up within a second).
    for page in &cold {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let response = server
                .request("GET", &format!("/api/v1/counter/visits/{page}"))
                .await;
            if response.status == 200 {
                assert_eq!(json(&response)["visits"], 0, "{page}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{page} still unreadable after the resume"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    server.wait_flushed(Duration::from_secs(30)).await;
    let counted = rig.visits_counted(&board);
    let output = server.stop();
    report(scenario, &board, &counted, started.elapsed());
    let refused: Vec<&Read> = reads.iter().filter(|r| r.status == 503).collect();
    let slowest = reads.iter().map(|r| r.took).max().unwrap_or_default();
    println!(
        "[{scenario}] reads during the pause: {} | 503 {} (all on the paused node, none cached) | slowest answer {slowest:.1?}",
        reads.len(),
        refused.len()
    );

    // Reads during the pause: 503 exactly for uncached pages of the paused node.
    for read in &reads {
        match (read.on_paused, read.status) {
            (false, 200) => {}
            (true, 200) => assert_eq!(
                read.served_via.as_deref(),
                Some("in_memory"),
                "{}: a page of the paused node read from it",
                read.page
            ),
            (true, 503) => assert_eq!(read.retry_after.as_deref(), Some("1"), "{}", read.page),
            (_, status) => panic!("{}: {status} during the pause", read.page),
        }
        // A read waits at most the store deadline (twice REDIS_TIMEOUT), plus slack for a
        // debug build on a busy machine.
        assert!(
            read.took < Duration::from_secs(3),
            "{}: {:?}",
            read.page,
            read.took
        );
    }
    for page in &cold {
        assert!(
            reads
                .iter()
                .filter(|r| &r.page == page)
                .all(|r| r.status == 503),
            "{page}: never cached, on the paused node: every read answers 503"
        );
    }
    // Visits were never refused: they wait in the buffer for the node. And never held
    // back: a server that made visits to the paused node's pages wait for it would answer
    // them only after the pause (or never, within the load's timeout).
    let totals = board.totals();
    assert_eq!(totals.rejected + totals.other, 0, "{board:?}");
    assert_answered_promptly(&board, size.pause / 2);
    assert!(totals.acked > 0);
    let on_paused: u64 = board
        .keys
        .iter()
        .filter(|(page, _)| rig.owner(page) == PAUSED)
        .map(|(_, score)| score.acked)
        .sum();
    assert!(
        on_paused > 0,
        "visits to the paused node's pages were acknowledged"
    );
    assert_eq!((counted.lost, counted.doubled), (0, 0));
    counted.assert_exact(&board);
    Outcome {
        board,
        output,
        bodies,
    }
}
