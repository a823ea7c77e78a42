//! Scenario 11: a backlog. One node is paused (and seen down) while visits to 20,000
//! distinct pages of it arrive; they all wait in memory. After the resume the backlog
//! drains as a sequence of batches of at most `BATCH_SIZE_LIMIT` keys each (one in flight,
//! each with its own sequence number), never as one call too large for the node, and every
//! count is exact.
//!
//! `TALLY_E2E_BACKLOG_PAGES` sets the number of pages (the README's drain figure for
//! 300,000 pages comes from this scenario run with that setting).

use std::time::{Duration, Instant};

use tally_testkit::{LoadSpec, keys_on, run_load};

use crate::support::{Rig, assert_answered_promptly, one_at_a_time, report};

/// The node paused.
const PAUSED: usize = 1;
/// Pages waiting for it, unless `TALLY_E2E_BACKLOG_PAGES` says otherwise.
const PAGES: usize = 20_000;
/// `BATCH_SIZE_LIMIT` of the server.
const BATCH_SIZE_LIMIT: u64 = 1_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_twenty_thousand_pages_drains_in_bounded_batches_and_exactly() {
    let _serial = one_at_a_time().await;
    let started = Instant::now();
    let pages: usize = std::env::var("TALLY_E2E_BACKLOG_PAGES")
        .ok()
        .map(|v| v.parse().expect("TALLY_E2E_BACKLOG_PAGES is a number"))
        .unwrap_or(PAGES);
    let rig = Rig::start(3);
    let limit = BATCH_SIZE_LIMIT.to_string();
    // Room for every page on one node: the bound is not what this scenario is about.
    let bound = (4 * pages).max(1_000_000).to_string();
    let server = rig.server(&[("BATCH_SIZE_LIMIT", &limit), ("MAX_PENDING_KEYS", &bound)]);
    let paused_url = rig.cluster.node(PAUSED).url();
    rig.cluster.node(PAUSED).pause().expect("SIGSTOP");
    server.wait_for_node(&paused_url, false).await;

    let keys: Vec<String> = keys_on(&rig.ring, PAUSED, "backlog-").take(pages).collect();
    let board = run_load(LoadSpec {
        concurrency: 32,
        time_limit: Duration::from_secs(600),
        ..LoadSpec::visits(&server.base_url(), keys, 2 * pages as u64)
    })
    .await;
    let waiting = server.get_json("/status").await["counter_status"]["write_buffer_size"]
        .as_u64()
        .expect("write_buffer_size");
    let batches_before = server
        .metric(
            "tally_counter_batches_total",
            &["counter=\"visits\"", "outcome=\"ok\""],
        )
        .await;

    rig.cluster.node(PAUSED).resume().expect("SIGCONT");
    let resumed = Instant::now();
    server.wait_flushed(Duration::from_secs(600)).await;
    let drained = resumed.elapsed();
    let largest = server
        .metric("tally_counter_batch_keys_max", &["counter=\"visits\""])
        .await;
    let batches = server
        .metric(
            "tally_counter_batches_total",
            &["counter=\"visits\"", "outcome=\"ok\""],
        )
        .await
        - batches_before;
    let counted = rig.visits_counted(&board);
    server.stop();
    report("scenario 11: backlog", &board, &counted, started.elapsed());
    println!(
        "[scenario 11: backlog] {waiting} pages waited for the paused node; drained in {drained:.1?} after the resume, {batches} batches, largest {largest} keys (BATCH_SIZE_LIMIT {BATCH_SIZE_LIMIT})"
    );

    let totals = board.totals();
    assert_eq!(totals.acked, 2 * pages as u64, "{board:?}");
    assert_answered_promptly(&board, Duration::from_secs(5));
    assert!(
        waiting >= pages as u64,
        "every page waited in memory: {waiting} of {pages}"
    );
    assert!(
        largest <= BATCH_SIZE_LIMIT as f64,
        "a batch of {largest} keys, over BATCH_SIZE_LIMIT {BATCH_SIZE_LIMIT}"
    );
    assert!(
        batches >= (pages as u64).div_ceil(BATCH_SIZE_LIMIT) as f64,
        "the backlog went out as {batches} batches"
    );
    assert_eq!((counted.lost, counted.doubled), (0, 0));
    counted.assert_exact(&board);
}
