//! Scenario 3: a node with an append-only file (`appendfsync always`) is killed with
//! SIGKILL in the middle of a visit load and started again on the same port 3 s later.
//! Its batches fail meanwhile and are retried unchanged; a batch it applied but could not
//! answer is recognised by the high-water mark it persisted. Exact after recovery.

use std::time::{Duration, Instant};

use tally_testkit::{LoadSpec, RedisNode, run_load};

use crate::support::{Rig, one_at_a_time, report, visits_on};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_and_restarted_with_its_aof_loses_no_acknowledged_visit() {
    const KILLED: usize = 1;
    let _serial = one_at_a_time().await;
    let started = Instant::now();
    let mut rig = Rig::start_with(3, &RedisNode::builder().aof(true), None);
    let server = rig.server(&[]);
    let pages: Vec<String> = (0..300).map(|i| format!("page-{i}")).collect();
    let load = tokio::spawn(run_load(LoadSpec {
        concurrency: 16,
        requests: u64::MAX,
        time_limit: Duration::from_secs(10),
        ..LoadSpec::visits(&server.base_url(), pages, 0)
    }));

    tokio::time::sleep(Duration::from_secs(3)).await;
    let node = rig.cluster.node_mut(KILLED);
    let before = visits_on(node);
    node.kill().expect("SIGKILL");
    tokio::time::sleep(Duration::from_secs(3)).await;
    node.restart().expect("restarted on the same port");
    let after = visits_on(node);

    let board = load.await.expect("load task");
    server.wait_flushed(Duration::from_secs(30)).await;
    let counted = rig.visits_counted(&board);
    let replays = server
        .metric("tally_redis_batches_replayed_total", &[])
        .await as u64;
    let output = server.stop();
    report(
        "scenario 3: SIGKILL + AOF",
        &board,
        &counted,
        started.elapsed(),
    );
    println!(
        "[scenario 3: SIGKILL + AOF] killed node held {before} visits before the kill, {after} after the restart; batches replayed {replays}"
    );

    assert!(
        before > 0,
        "the killed node had counted visits before the kill"
    );
    assert!(
        after >= before,
        "the AOF kept what the node had acknowledged"
    );
    assert!(
        output.contains("redis node marked down"),
        "the server saw the node go: {output}"
    );
    let totals = board.totals();
    assert_eq!(totals.rejected + totals.other, 0, "{board:?}");
    assert_eq!((counted.lost, counted.doubled), (0, 0));
    counted.assert_exact(&board);
}
