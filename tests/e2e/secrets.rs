//! Scenario 10: secrets. Nodes that require a password, the server given it in
//! `REDIS_PASSWORD`; scenarios 1 and 2 run again, smaller, with debug logs. The password
//! appears in no log line and no response, including the 503s of the paused node.
//!
//! The same holds for a password written in the `REDIS_NODES` URLs: in every answer and
//! log line of a server with a node down, in the exit-2 line of a `REDIS_NODES` it cannot
//! use, and for passwords holding the characters a URL or the list treats specially, which
//! still authenticate. A wrong password is reported as an authentication failure, without
//! it.

use std::time::Duration;

use tally_testkit::{
    AWKWARD_PASSWORDS, RedisCluster, RedisNode, assert_password_hidden, free_port, keys_on, ring,
};

use crate::support::{Rig, Server, one_at_a_time};
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

/// `password` as the README says to write it in a URL: `/ ? # %` percent-encoded, the rest
/// as it is.
fn url_password(password: &str) -> String {
    password
        .replace('%', "%25")
        .replace('/', "%2F")
        .replace('?', "%3F")
        .replace('#', "%23")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_password_appears_in_no_output_response_or_error() {
    const SECRET: &str = "pw-s3cr3t-8c1e";
    let _serial = one_at_a_time().await;
    let node = RedisNode::builder().password(SECRET).start().unwrap();
    let dead = free_port().unwrap();
    // A live node with the password in its URL, and an unreachable one with it too.
    let nodes = format!(
        "redis://:{SECRET}@127.0.0.1:{},redis://:{SECRET}@127.0.0.1:{dead}",
        node.port()
    );
    let mut server = Server::start(
        &nodes,
        &[
            ("LOG_LEVEL", "debug"),
            ("LOG_FORMAT", "json"),
            ("REDIS_TIMEOUT", "0.5"),
            ("SHUTDOWN_TIMEOUT_SECONDS", "2"),
        ],
    );
    let ring = ring(&[node.addr().to_string(), format!("127.0.0.1:{dead}")]);
    let live_page = keys_on(&ring, 0, "live").next().expect("a page");
    let dead_page = keys_on(&ring, 1, "dead").next().expect("a page");
    let mut bodies = Vec::new();
    for (method, path) in [
        ("POST", format!("/api/v1/counter/visit/{live_page}")),
        ("POST", format!("/api/v1/counter/visit/{dead_page}")),
        ("GET", format!("/api/v1/counter/visits/{live_page}")),
        ("GET", format!("/api/v1/counter/visits/{dead_page}")),
        ("DELETE", format!("/api/v1/counter/visits/{dead_page}")),
        ("GET", "/api/v1/counter/metrics".to_owned()),
        ("GET", "/status".to_owned()),
        ("GET", "/health".to_owned()),
        ("GET", "/metrics".to_owned()),
        ("GET", "/nope".to_owned()),
    ] {
        let response = server.request(method, &path).await;
        assert!(
            response
                .header("x-process-time")
                .is_some_and(|v| v.parse::<f64>().is_ok()),
            "no X-Process-Time on {method} {path}"
        );
        bodies.push(format!(
            "{} {:?} {}",
            response.status,
            response.headers,
            response.text()
        ));
    }
    let bodies = bodies.join("\n");
    // The live node was reached with the password: its page was read from it.
    assert!(
        bodies.contains(&format!("\"served_via\":\"redis_{}\"", node.port())),
        "{bodies}"
    );
    // The unreachable node's pages answered 503, naming the node without credentials.
    assert!(
        bodies.contains(&format!("redis node 127.0.0.1:{dead} is unavailable")),
        "{bodies}"
    );
    assert!(
        bodies.contains(&format!("\"redis://127.0.0.1:{dead}\":false")),
        "{bodies}"
    );

    let (status, _) = server.terminate(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0));
    let output = server.output();
    assert!(output.lines().count() > 5, "{output}");
    for line in output.lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| {
            panic!("LOG_FORMAT=json gives one JSON object per line ({e}): {line}")
        });
    }
    assert!(
        output.contains("could not be written"),
        "the dead node's visits are reported: {output}"
    );
    assert!(
        !bodies.contains(SECRET),
        "password in a response:\n{bodies}"
    );
    assert!(
        !output.contains(SECRET),
        "password in the output:\n{output}"
    );

    // A wrong REDIS_PASSWORD: authentication errors are logged, the password is not.
    let wrong = "wr0ng-pw-4d2b";
    let server = Server::start(
        &node.url(),
        &[("REDIS_PASSWORD", wrong), ("LOG_LEVEL", "debug")],
    );
    let response = server.request("GET", "/health").await;
    assert_eq!(response.status, 503, "{}", response.text());
    assert!(!response.text().contains(wrong));
    let output = server.output();
    assert!(output.contains("authentication"), "{output}");
    assert!(!output.contains(wrong), "password in the output:\n{output}");
}

#[tokio::test]
async fn a_bad_redis_nodes_never_shows_a_password_holding_url_characters() {
    let _serial = one_at_a_time().await;
    for password in AWKWARD_PASSWORDS {
        for written in [password.to_string(), url_password(password)] {
            // One of each message a bad REDIS_NODES gives: a bad port, scheme, database,
            // host (a wildcard, none), a bad node after a good one with the password, a
            // user name with it, and a node listed twice.
            let values = [
                format!("redis://:{written}@redis1:notaport"),
                format!("http://:{written}@redis1:6379"),
                format!("redis://:{written}@redis1:6379/notadb"),
                format!("redis://:{written}@0.0.0.0:6379"),
                format!("redis://:{written}@"),
                format!("redis://:{written}@redis1:6379,redis://redis2:notaport"),
                format!("redis://app:{written}@redis1:6379, redis://:{written}@redis2:6379/x"),
                format!("redis://:{written}@redis1:6379,redis://:{written}@redis1:6379/1"),
            ];
            for value in &values {
                let (status, stdout, stderr) = Server::run_to_exit(&[("REDIS_NODES", value)]);
                let output = format!("{stdout}{stderr}");
                assert_password_hidden(password, &output);
                assert_eq!(status.code(), Some(2), "{output}");
                let lines: Vec<&str> = stderr.lines().collect();
                assert_eq!(lines.len(), 1, "{output}");
                assert!(
                    lines[0].starts_with("tally-server: invalid configuration: REDIS_NODES=\""),
                    "{output}"
                );
                assert!(lines[0].contains(":***@"), "{output}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_holding_url_characters_authenticates_and_never_shows() {
    const VISITS: u64 = 20;
    let _serial = one_at_a_time().await;
    let password = "Kq7v,@:/% Hx2z,,Mix";
    let cluster = RedisCluster::start_with(2, &RedisNode::builder().password(password)).unwrap();
    // `,` `@` `:` and blanks as they are, `/` and `%` percent-encoded, as the README says.
    let written = url_password(password);
    assert_eq!(written, "Kq7v,@:%2F%25 Hx2z,,Mix");
    let nodes = cluster
        .nodes()
        .iter()
        .map(|node| format!("redis://:{written}@127.0.0.1:{}", node.port()))
        .collect::<Vec<_>>()
        .join(",");
    let mut server = Server::start(
        &nodes,
        &[("LOG_LEVEL", "debug"), ("BATCH_INTERVAL_SECONDS", "60")],
    );

    let health = server.request("GET", "/health").await;
    for _ in 0..VISITS {
        let response = server.request("POST", "/api/v1/counter/visit/awk").await;
        assert_eq!(response.status, 200, "{}", response.text());
    }
    let (status, _) = server.terminate(Duration::from_secs(30));

    let output = server.output();
    assert_password_hidden(password, &format!("{output}{}", health.text()));
    assert_eq!(
        health.status,
        200,
        "both nodes accept the password: {}",
        health.text()
    );
    assert_eq!(status.code(), Some(0), "{output}");
    let owner = cluster.node(cluster.owner("awk"));
    assert_eq!(owner.get_u64("tally:v:awk").unwrap(), Some(VISITS));
}
