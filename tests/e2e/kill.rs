//! Scenario 3: a node with an append-only file (`appendfsync always`) applies a visit batch
//! whose reply never reaches the server, is killed with SIGKILL before the server can
//! retry, and is started again on the same port, in the middle of a visit load.
//!
//! The node sits behind a [`FaultProxy`]: the proxy lets one visit batch reach the node,
//! drops its reply, and from that moment refuses every connection, so no retry (and no
//! other batch) reaches the node until the test heals it, after the kill and the restart.
//! The high-water mark the batch wrote must come back from the AOF: the retry, unchanged,
//! is then answered as already applied (a replay) and not applied twice. Visits are
//! acknowledged promptly throughout (they wait in memory), and the counts are exact after
//! recovery.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tally_testkit::{LoadSpec, Mode, RedisNode, run_load};

use crate::support::{
    Rig, VISIT_BATCH, assert_answered_promptly, marks, one_at_a_time, report, visits_on,
    wait_for_first_sweep,
};

/// The node killed (and proxied).
const KILLED: usize = 1;
/// How long the node stays unreachable at least, from the lost reply to the heal: a
/// server that held visits back until the node answered would take this long to answer.
const OUTAGE: Duration = Duration::from_secs(6);
/// Bound on the slowest visit answer: half the outage.
const PROMPT: Duration = Duration::from_secs(3);
/// Load after the heal, so batches written after the replay are checked too.
const AFTER: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_after_applying_an_unanswered_batch_counts_it_once_from_its_aof() {
    let _serial = one_at_a_time().await;
    let started = Instant::now();
    let (mut rig, proxy) =
        Rig::start_behind_proxy(3, &RedisNode::builder().aof(true), KILLED).await;
    let server = rig.server(&[]);
    let proxy_node = format!("node=\"127.0.0.1:{}\"", proxy.port());
    let pages: Vec<String> = (0..300).map(|i| format!("page-{i}")).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(run_load(LoadSpec {
        concurrency: 16,
        requests: u64::MAX,
        time_limit: Duration::from_secs(120),
        stop: Some(Arc::clone(&stop)),
        ..LoadSpec::visits(&server.base_url(), pages, 0)
    }));

    // Once visit batches flow, lose the reply of the next one to the node, and refuse
    // everything from then on.
    server
        .wait_for_metric(
            "tally_counter_batches_total",
            &["counter=\"visits\"", "outcome=\"ok\""],
            3.0,
            Duration::from_secs(30),
            "visit batches written",
        )
        .await;
    wait_for_first_sweep(&server, &proxy_node).await;
    proxy.set_mode_then(
        Mode::DropRepliesMatching(1, VISIT_BATCH.to_vec()),
        Mode::Refuse,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while proxy.replies_discarded() < 1 {
        assert!(Instant::now() < deadline, "no visit batch reached the node");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let lost_at = Instant::now();
    let node = rig.cluster.node_mut(KILLED);
    // The node applied the batch and wrote its mark; nothing can reach it any more.
    let marks_before = marks(node, "tally:applied");
    let visits_before = visits_on(node);
    node.kill().expect("SIGKILL");
    node.restart().expect("restarted on the same port");
    let marks_after = marks(node, "tally:applied");
    let visits_after = visits_on(node);
    let replays_before_heal = server
        .metric(
            "tally_redis_batches_replayed_total",
            &[&proxy_node, "layout=\"counters\""],
        )
        .await;
    tokio::time::sleep(OUTAGE.saturating_sub(lost_at.elapsed())).await;
    proxy.set_mode(Mode::Pass);
    // The retry reaches the restarted node and is recognised by the mark from the AOF.
    let replays = server
        .wait_for_metric(
            "tally_redis_batches_replayed_total",
            &[&proxy_node, "layout=\"counters\""],
            1.0,
            Duration::from_secs(30),
            "the retried batch answered as already applied",
        )
        .await;
    tokio::time::sleep(AFTER).await;
    stop.store(true, Ordering::Relaxed);

    let board = load.await.expect("load task");
    server.wait_flushed(Duration::from_secs(30)).await;
    let counted = rig.visits_counted(&board);
    let output = server.stop();
    report(
        "scenario 3: lost reply + SIGKILL + AOF",
        &board,
        &counted,
        started.elapsed(),
    );
    println!(
        "[scenario 3: lost reply + SIGKILL + AOF] killed node: {visits_before} visits and {} marks before the kill, {visits_after} and {} after the restart; visit batches replayed {replays}",
        marks_before.len(),
        marks_after.len()
    );

    assert_eq!(proxy.replies_discarded(), 1);
    assert!(
        visits_before > 0 && !marks_before.is_empty(),
        "the node had applied batches before the kill"
    );
    assert_eq!(
        marks_after, marks_before,
        "the AOF kept the high-water marks, the lost batch's included"
    );
    assert_eq!(
        visits_after, visits_before,
        "the AOF kept every count, and nothing reached the node while it was refused"
    );
    assert_eq!(
        replays_before_heal, 0.0,
        "no retry reached the node before the kill"
    );
    assert!(
        output.contains("redis node marked down"),
        "the server saw the node go: {output}"
    );
    let totals = board.totals();
    assert_eq!(totals.rejected + totals.other, 0, "{board:?}");
    assert_answered_promptly(&board, PROMPT);
    assert_eq!((counted.lost, counted.doubled), (0, 0));
    counted.assert_exact(&board);
}
