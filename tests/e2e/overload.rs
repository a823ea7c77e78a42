//! Scenario 7: overload. A tiny `MAX_PENDING_KEYS` and a paused node: visits to new pages
//! of that node pile up until its share of the buffer is full, then answer 503
//! `overloaded` with `Retry-After` and are not counted. The server stays responsive: pages
//! of the other nodes are still counted and read, and every answer comes quickly. After
//! the resume, counts are exact and nothing refused was counted.

use std::time::{Duration, Instant};

use tally_testkit::{LoadSpec, keys_on, run_load};

use crate::support::{Rig, one_at_a_time, report};

const PAUSED: usize = 1;
/// `MAX_PENDING_KEYS`: with three nodes, each node's keys may hold 100 places. The other
/// nodes' batches go out as soon as 10 keys (5 pages) wait (`BATCH_SIZE_LIMIT`), so their keys stay
/// far below that share however fast requests come: a refusal of theirs would be the
/// paused node's doing.
const MAX_PENDING_KEYS: &str = "300";
/// Each node's share of it, in pages: a page waits as two keys, its total and its day
/// count, so 100 places hold 50 pages.
const SHARE: u64 = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_server_refuses_with_retry_after_counts_nothing_refused_and_serves_the_rest()
{
    let _serial = one_at_a_time().await;
    let started = Instant::now();
    let rig = Rig::start(3);
    let server = rig.server(&[
        ("MAX_PENDING_KEYS", MAX_PENDING_KEYS),
        ("BATCH_SIZE_LIMIT", "10"),
    ]);
    // A visit or a read is also a request under /api/, counted by URL in the request
    // statistics on the node that owns the URL, which needs room there too: a page is
    // wholly on healthy nodes when its count and the URLs of its visits and reads are.
    let healthy = |page: &String| {
        [
            page.clone(),
            format!("/api/v1/counter/visit/{page}"),
            format!("/api/v1/counter/visits/{page}"),
        ]
        .iter()
        .all(|key| rig.owner(key) != PAUSED)
    };
    let on_paused: Vec<String> = keys_on(&rig.ring, PAUSED, "down-")
        .take(3 * SHARE as usize)
        .collect();
    let elsewhere: Vec<String> = (0..)
        .map(|i| format!("up-{i}"))
        .filter(healthy)
        .take(100)
        .collect();
    let visits = |pages: Vec<String>, requests: u64| {
        run_load(LoadSpec {
            concurrency: 4,
            time_limit: Duration::from_secs(30),
            ..LoadSpec::visits(&server.base_url(), pages, requests)
        })
    };

    rig.cluster.node(PAUSED).pause().expect("SIGSTOP");
    // The fault reached the server before the visits come: it has seen the node down. (A
    // server that refused every new page of a down node would refuse them all now.)
    server
        .wait_for_node(&rig.cluster.node(PAUSED).url(), false)
        .await;
    // New pages of the paused node, one visit each: the first few wait in the buffer, the
    // rest are refused.
    let mut board = visits(on_paused.clone(), on_paused.len() as u64).await;
    let first = board.totals();
    let extra = keys_on(&rig.ring, PAUSED, "down-extra-")
        .next()
        .expect("a page");
    let refused = server
        .request("POST", &format!("/api/v1/counter/visit/{extra}"))
        .await;
    // The other nodes' pages, four visits each, new pages throughout: all counted.
    let healthy_board = visits(elsewhere.clone(), 400).await;
    // Reads of the other nodes' pages answer too.
    let read_started = Instant::now();
    let mut reads = Vec::new();
    for page in elsewhere.iter().take(20) {
        reads.push((page.clone(), server.count(page).await.0));
    }
    let reads_took = read_started.elapsed();
    let health = server.request("GET", "/health").await;
    rig.cluster.node(PAUSED).resume().expect("SIGCONT");

    board.merge(&healthy_board);
    server.wait_flushed(Duration::from_secs(30)).await;
    let counted = rig.visits_counted(&board);
    server.stop();
    report("scenario 7: overload", &board, &counted, started.elapsed());
    let slowest = Duration::from_micros(board.latency_us.max());
    println!(
        "[scenario 7: overload] paused node's new pages: {} buffered, {} refused | other nodes' pages: {} of {} visits counted | slowest answer {slowest:.1?} | 20 reads in {reads_took:.1?}",
        first.acked,
        first.rejected,
        healthy_board.totals().acked,
        healthy_board.totals().answered(),
    );

    // Refusals: 503 `overloaded` with Retry-After, only for new pages of the paused node.
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.header("retry-after"), Some("1"));
    let body = crate::support::json(&refused);
    assert_eq!(body["error"]["code"], "overloaded", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not counted")),
        "{body}"
    );
    assert!(
        first.rejected > 0,
        "the paused node's share filled up: {board:?}"
    );
    assert_eq!(
        first.acked, SHARE,
        "exactly its share of MAX_PENDING_KEYS buffered, no fewer, no more: {first:?}"
    );
    assert_eq!(board.unavailable_without_retry_after, 0);
    assert_eq!(
        board.totals().other + board.totals().unknown,
        0,
        "{board:?}"
    );
    // The rest of the server is unaffected.
    assert_eq!(healthy_board.totals().acked, 400, "{healthy_board:?}");
    assert_eq!(health.status, 200, "{}", health.text());
    assert!(
        slowest < Duration::from_secs(2),
        "an answer took {slowest:?}"
    );
    for (page, read) in &reads {
        assert_eq!(*read, healthy_board.score(page).acked, "{page}");
    }
    // Nothing refused was counted, everything acknowledged was.
    assert_eq!((counted.lost, counted.doubled), (0, 0));
    counted.assert_exact(&board);
    for page in &on_paused {
        if board.score(page).acked == 0 {
            assert_eq!(counted.counts[page], 0, "{page} was refused, yet counted");
        }
    }
}
