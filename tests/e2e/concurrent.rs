//! Scenario 1: many clients at once. 50,000 visits over 1,000 pages on 64 keep-alive
//! connections, batches written while visits arrive: every acknowledged visit is in Redis
//! exactly once, on the page's node, and the API reads the same numbers.

use std::time::{Duration, Instant};

use tally_testkit::{LoadSpec, run_load};

use crate::support::{Outcome, Rig, one_at_a_time, report};

/// How big a run is, so the secrets scenario can repeat this one smaller.
pub struct Size {
    /// Visits in all.
    pub visits: u64,
    /// Distinct pages.
    pub pages: usize,
    /// Concurrent connections.
    pub connections: usize,
    /// Extra server settings (e.g. debug logs).
    pub env: &'static [(&'static str, &'static str)],
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_fifty_thousand_concurrent_visits_are_counted_exactly() {
    let _serial = one_at_a_time().await;
    let rig = Rig::start(3);
    let size = Size {
        visits: 50_000,
        pages: 1_000,
        connections: 64,
        env: &[],
    };
    visits_counted_exactly("scenario 1: concurrency", &rig, &size).await;
}

/// Runs `size` visits through a server over `rig` and checks Redis and the API against the
/// score. Panics on any loss or double count.
pub async fn visits_counted_exactly(scenario: &str, rig: &Rig, size: &Size) -> Outcome {
    let started = Instant::now();
    let server = rig.server(size.env);
    let pages: Vec<String> = (0..size.pages).map(|i| format!("page-{i}")).collect();
    let board = run_load(LoadSpec {
        concurrency: size.connections,
        time_limit: Duration::from_secs(120),
        forbidden: rig.password.clone(),
        ..LoadSpec::visits(&server.base_url(), pages.clone(), size.visits)
    })
    .await;

    // Written by the flusher, not (yet) by a shutdown.
    server.wait_flushed(Duration::from_secs(20)).await;
    let counted = rig.visits_counted(&board);
    // The API agrees with Redis (and reads its own writes).
    let mut bodies = Vec::new();
    for page in pages.iter().step_by(10) {
        let response = server
            .request("GET", &format!("/api/v1/counter/visits/{page}"))
            .await;
        bodies.push(response.text());
        let body = crate::support::json(&response);
        assert_eq!(body["visits"], counted.counts[page], "{page}: {body}");
    }
    for target in ["/api/v1/counter/metrics", "/status", "/health", "/metrics"] {
        bodies.push(server.request("GET", target).await.text());
    }
    let output = server.stop();
    report(scenario, &board, &counted, started.elapsed());

    let totals = board.totals();
    assert_eq!(
        totals.acked, size.visits,
        "every visit is acknowledged: {board:?}"
    );
    assert_eq!(counted.total, size.visits);
    assert_eq!((counted.lost, counted.doubled), (0, 0));
    counted.assert_exact(&board);
    Outcome {
        board,
        output,
        bodies,
    }
}
