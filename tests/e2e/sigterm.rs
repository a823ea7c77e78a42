//! Scenario 5: SIGTERM to the server in the middle of a visit load, before any batch has
//! been written. It stops accepting, finishes the requests in flight, writes every pending
//! visit and exits 0 within `SHUTDOWN_TIMEOUT_SECONDS`; every visit it acknowledged is in
//! Redis afterwards, written by the shutdown.

use std::time::{Duration, Instant};

use tally_testkit::{LoadSpec, run_load};

use crate::support::{Rig, one_at_a_time, report, visits_on};

/// `SHUTDOWN_TIMEOUT_SECONDS` of the server.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections of the visit load. Each can leave at most two requests without an answer:
/// the one written as the server closed its keep-alive connection, and one on a new
/// connection that the kernel accepted into the listener's backlog just before the server
/// closed it (seen: 33 unknown with 32 connections). A server that dropped requests it
/// had read would leave many more.
const CONNECTIONS: usize = 32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_run_writes_every_acknowledged_visit_and_exits_0() {
    let _serial = one_at_a_time().await;
    let started = Instant::now();
    let rig = Rig::start(3);
    // A long interval: what the server holds at SIGTERM is written by the shutdown.
    let mut server = rig.server(&[
        ("BATCH_INTERVAL_SECONDS", "30"),
        ("SHUTDOWN_TIMEOUT_SECONDS", "10"),
    ]);
    let pages: Vec<String> = (0..1000).map(|i| format!("page-{i}")).collect();
    let load = tokio::spawn(run_load(LoadSpec {
        concurrency: CONNECTIONS,
        requests: u64::MAX,
        // Outlasts the server: the load goes on against a server that is stopping, then gone.
        time_limit: Duration::from_secs(6),
        // Short, so the run is not held up by requests the dying server never answers.
        request_timeout: Duration::from_secs(3),
        ..LoadSpec::visits(&server.base_url(), pages, 0)
    }));

    tokio::time::sleep(Duration::from_secs(3)).await;
    // With a 30 s interval, and no node's pages near BATCH_SIZE_LIMIT, no batch has gone
    // out yet: every visit Redis holds afterwards was written by the shutdown.
    let written_before: u64 = rig.nodes().into_iter().map(visits_on).sum();
    let (status, took) = server.terminate(SHUTDOWN_TIMEOUT + Duration::from_secs(5));
    let board = load.await.expect("load task");
    let output = server.output();
    let counted = rig.visits_counted(&board);
    report("scenario 5: SIGTERM", &board, &counted, started.elapsed());
    println!(
        "[scenario 5: SIGTERM] {status} {took:.1?} after SIGTERM (SHUTDOWN_TIMEOUT_SECONDS {})",
        SHUTDOWN_TIMEOUT.as_secs()
    );

    assert_eq!(written_before, 0, "visits written before SIGTERM");
    assert_eq!(status.code(), Some(0), "output:\n{output}");
    assert!(took < SHUTDOWN_TIMEOUT, "shutdown took {took:?}");
    assert!(output.contains("SIGTERM received"), "{output}");
    assert!(
        output.contains("shutdown complete: every pending visit was written"),
        "{output}"
    );
    let totals = board.totals();
    assert!(totals.acked > 0);
    assert!(
        totals.unsent > 0,
        "the load outlasted the server (connections refused at the end): {board:?}"
    );
    assert_eq!(totals.other, 0, "{board:?}");
    // Requests in flight at SIGTERM are finished, not refused: the server stops taking
    // connections and then drains, so no request it reads gets 503 `shutting_down`.
    assert_eq!(
        totals.rejected, 0,
        "requests refused while the server stopped: {board:?}"
    );
    // A request is left without an answer only if it was on the wire when its connection
    // closed: two per connection at most (see CONNECTIONS).
    assert!(
        totals.unknown <= 2 * CONNECTIONS as u64,
        "{} requests without an answer, more than two for each of the {CONNECTIONS} connections: {board:?}",
        totals.unknown
    );
    assert_eq!((counted.lost, counted.doubled), (0, 0));
    counted.assert_exact(&board);
}
