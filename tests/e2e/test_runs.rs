//! Scenario 14: `/test/{n}/` runs cannot be multiplied by hanging up. A client starts a run
//! of 100,000 requests and resets its connection (SO_LINGER 0) as soon as the run is seen
//! going, ten times over. Each run owns the one run slot until it ends, and a client that
//! goes away cancels its run: while a run goes another is refused with 429, after each
//! reset the run stops, and in all fewer requests than one run's worth reach the server.

use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

use crate::support::{Rig, Server, json, one_at_a_time};

/// `TEST_MAX_REQUESTS` of the server, and the size of each run started.
const RUN: u64 = 100_000;
/// Runs started and hung up on.
const RESETS: u64 = 10;
/// Route label of the `/api/` requests a run sends.
const API_ROUTE: &str = "route=\"/api/{tail:.*}\"";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_cancels_its_test_run() {
    let _serial = one_at_a_time().await;
    let rig = Rig::start(3);
    let server = rig.server(&[("TEST_MAX_REQUESTS", &RUN.to_string())]);
    let api_requests = async || {
        server
            .metric("tally_http_requests_total", &[API_ROUTE])
            .await
    };
    let before = api_requests().await;
    let mut refused_while_running = 0;
    for _ in 0..RESETS {
        let mut client = TcpStream::connect(server.addr()).await.expect("connect");
        let seen = api_requests().await;
        client
            .write_all(
                format!(
                    "POST /test/{RUN}/ HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n"
                )
                .as_bytes(),
            )
            .await
            .expect("request written");
        // Seen going: its requests reach the server.
        wait_until("the run sends requests", async || {
            api_requests().await > seen
        })
        .await;
        // While it goes, another run is refused.
        let second = server.request("POST", "/test/1/").await;
        assert_eq!(second.status, 429, "{}", second.text());
        assert_eq!(json(&second)["error"]["code"], "test_already_running");
        refused_while_running += 1;
        hang_up(client);
        // The run stops and frees the slot: a one-request run is taken again.
        wait_until("the slot is free after the reset", async || {
            server.request("POST", "/test/1/").await.status == 200
        })
        .await;
    }
    let total = settled(&server, api_requests, before).await;
    println!(
        "[scenario 14: test runs] {RESETS} runs of {RUN} started and hung up on: {total} requests reached the server in all; {refused_while_running} runs refused while one was going"
    );
    assert!(
        total < RUN as f64,
        "{total} requests reached the server: more than one run's worth ({RUN})"
    );
}

/// Closes `stream` with a reset (SO_LINGER 0), as a client that goes away abruptly.
#[allow(deprecated)] // A zero linger never blocks: the close sends RST at once.
fn hang_up(stream: TcpStream) {
    stream.set_linger(Some(Duration::ZERO)).expect("SO_LINGER");
    drop(stream);
}

/// Polls `done` every 10 ms until it says yes; panics with `what` after 30 s.
async fn wait_until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done().await {
        assert!(Instant::now() < deadline, "{what}: not within 30 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the count of `/api/` requests has not moved for 2 s (every run has
/// stopped), panicking as soon as it passes one run's worth; returns the requests since
/// `before`.
async fn settled(server: &Server, mut api_requests: impl AsyncFnMut() -> f64, before: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = api_requests().await;
    let mut still_since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = api_requests().await;
        assert!(
            now - before < RUN as f64,
            "runs go on after their clients left: {} requests so far ({})",
            now - before,
            server.addr()
        );
        if now != last {
            (last, still_since) = (now, Instant::now());
        } else if still_since.elapsed() >= Duration::from_secs(2) {
            return now - before;
        }
        assert!(Instant::now() < deadline, "the runs never stopped");
    }
}
