//! Scenario 10: secrets. Nodes that require a password, the server given it in
//! `REDIS_PASSWORD`; scenarios 1 and 2 run again, smaller, with debug logs. The password
//! appears in no log line and no response, including the 503s of the paused node.

use std::time::Duration;

use tally_testkit::RedisNode;

use crate::support::{Rig, one_at_a_time};
use crate::{concurrent, pause};

const PASSWORD: &str = "pw-e2e-7c4a1f9b";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_password_appears_in_no_log_line_and_no_response() {
    let _serial = one_at_a_time().await;
    let rig = Rig::start_with(3, &RedisNode::builder().password(PASSWORD), Some(PASSWORD));
    let debug_logs: &[(&str, &str)] = &[("LOG_LEVEL", "debug"), ("LOG_FORMAT", "json")];

    let concurrent = concurrent::visits_counted_exactly(
        "scenario 10: secrets, concurrency",
        &rig,
        &concurrent::Size {
            visits: 10_000,
            pages: 200,
            connections: 32,
            env: debug_logs,
        },
    )
    .await;
    // A clean slate: the second run checks that no key but its own was counted.
    for node in rig.nodes() {
        node.query::<()>(&redis::cmd("FLUSHALL")).expect("FLUSHALL");
    }
    let paused = pause::paused_node_loses_nothing(
        "scenario 10: secrets, SIGSTOP",
        &rig,
        &pause::Size {
            pages: 100,
            connections: 8,
            before: Duration::from_secs(2),
            pause: Duration::from_secs(4),
            after: Duration::from_secs(2),
            env: debug_logs,
        },
    )
    .await;

    let mut lines = 0;
    let mut responses = 0;
    for outcome in [
        (&concurrent.output, &concurrent.bodies, &concurrent.board),
        (&paused.output, &paused.bodies, &paused.board),
    ] {
        let (output, bodies, board) = outcome;
        lines += output.lines().count();
        responses += bodies.len() as u64 + board.totals().answered();
        for line in output.lines() {
            assert!(!line.contains(PASSWORD), "password in a log line: {line}");
        }
        for body in bodies {
            assert!(!body.contains(PASSWORD), "password in a response: {body}");
        }
        assert_eq!(board.forbidden_seen, 0, "password in a load response");
    }
    // The nodes were reached with the password (the counts are exact above) and the logs
    // are there to be searched.
    assert!(
        paused
            .bodies
            .iter()
            .any(|b| b.contains("store_unavailable"))
    );
    assert!(lines > 1000, "debug logs: {lines} lines");
    println!(
        "[scenario 10: secrets] password found in 0 of {lines} log lines and 0 of {responses} responses"
    );
}
