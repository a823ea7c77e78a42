//! The real binary: SIGTERM flushes everything, bad configuration exits 2 with one line,
//! and a password never shows.

use std::time::Duration;

use reqwest::Method;
use tally_testkit::{
    AWKWARD_PASSWORDS, RedisCluster, RedisNode, assert_password_hidden, free_port,
};

use crate::helpers::{
    ServerProcess, owner, page_owned_by_name, post_visits_concurrently, run_to_exit, send, stored,
    stored_total,
};

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
async fn sigterm_flushes_every_acknowledged_visit_and_exits_0() {
    const VISITS: usize = 10_000;
    const CLIENTS: usize = 16;
    const PAGES: usize = 50;
    let cluster = RedisCluster::start(3).unwrap();
    let nodes = cluster.urls();
    let mut server = ServerProcess::start(&[
        ("REDIS_NODES", nodes.as_str()),
        ("BATCH_INTERVAL_SECONDS", "60"),
    ]);
    let address = format!("127.0.0.1:{}", server.port);

    post_visits_concurrently(&address, "/api/v1", "term", (VISITS, CLIENTS, PAGES)).await;
    // With a 60 s interval nothing is written yet: the flush below is the shutdown's.
    assert_eq!(stored_total(&cluster), 0);

    server.terminate();
    let status = server.wait(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "output:\n{}", server.output());

    assert_eq!(stored_total(&cluster), VISITS as u64);
    for page in 0..PAGES {
        let page = format!("term{page}");
        assert_eq!(
            stored(cluster.node(owner(&cluster, &page)), &page),
            Some((VISITS / PAGES) as u64)
        );
    }
    let output = server.output();
    assert!(output.contains("SIGTERM received"), "{output}");
    assert!(
        output.contains("shutdown complete: every pending visit was written"),
        "{output}"
    );
}

#[test]
fn bad_configuration_exits_2_with_one_line_naming_the_variable() {
    let cases: &[(&str, &str, &str)] = &[
        ("VIRTUAL_NODES", "abc", "expected a whole number"),
        (
            "REDIS_NODES",
            "redis://:hunter2@redis1:notaport",
            "expected comma-separated redis:// URLs",
        ),
        (
            "REDIS_NODES",
            "http://redis1:6379",
            "expected comma-separated redis:// URLs",
        ),
        ("PORT", "70000", "expected a whole number from 0 to 65535"),
        (
            "BATCH_INTERVAL_SECONDS",
            "-1",
            "expected a number of seconds above 0",
        ),
        (
            "HEALTH_CHECK_INTERVAL_SECONDS",
            "-5",
            "expected a number of seconds above 0",
        ),
        (
            "SHUTDOWN_TIMEOUT_SECONDS",
            "soon",
            "expected a number of seconds from 2",
        ),
        (
            "CACHE_TTL_SECONDS",
            "0",
            "expected a number of seconds above 0",
        ),
        ("REDIS_TIMEOUT", "0", "expected a number of seconds above 0"),
        ("CACHE_CAPACITY", "-1", "expected a whole number"),
        ("MAX_PENDING_KEYS", "lots", "expected a whole number"),
        ("ENABLE_METRICS", "maybe", "expected true or false"),
        ("DEBUG", "2", "expected true or false"),
        ("LOG_FORMAT", "xml", "expected text or json"),
        (
            "LOG_LEVEL",
            "loud",
            "expected one of trace, debug, info, warn, error, off",
        ),
        ("HOST", "somewhere", "expected an IP address"),
        ("API_PREFIX", "api v1", "expected a path such as /api/v1"),
        ("REDIS_DB", "-2", "expected a whole number from 0"),
        ("TEST_MAX_REQUESTS", "0", "expected a whole number from 1"),
    ];
    for (variable, value, expected) in cases {
        let (status, stdout, stderr) = run_to_exit(&[(variable, value)]);
        assert_eq!(
            status.code(),
            Some(2),
            "{variable}={value}: {stdout}{stderr}"
        );
        assert_eq!(stdout, "", "{variable}={value}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{variable}={value}: {stderr}");
        let line = lines[0];
        assert!(
            line.starts_with(&format!("tally-server: invalid configuration: {variable}=")),
            "{line}"
        );
        assert!(line.contains(expected), "{line}");
        let shown = value.replace("hunter2", "***");
        assert!(
            line.contains(&format!("{shown:?}")),
            "the value is named: {line}"
        );
        assert!(!line.contains("hunter2"), "password shown: {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_password_appears_in_no_output_response_or_error() {
    const SECRET: &str = "pw-s3cr3t-8c1e";
    let node = RedisNode::builder().password(SECRET).start().unwrap();
    let dead = free_port().unwrap();
    // A live node with the password in its URL, and an unreachable one with it too.
    let nodes = format!(
        "redis://:{SECRET}@127.0.0.1:{},redis://:{SECRET}@127.0.0.1:{dead}",
        node.port()
    );
    let mut server = ServerProcess::start(&[
        ("REDIS_NODES", nodes.as_str()),
        ("LOG_LEVEL", "debug"),
        ("LOG_FORMAT", "json"),
        ("REDIS_TIMEOUT", "0.5"),
        ("SHUTDOWN_TIMEOUT_SECONDS", "2"),
    ]);
    let names = [
        format!("127.0.0.1:{}", node.port()),
        format!("127.0.0.1:{dead}"),
    ];
    let live_page = page_owned_by_name(&names, 0, "live");
    let dead_page = page_owned_by_name(&names, 1, "dead");
    let http = reqwest::Client::new();
    let base = server.address();
    let mut bodies = Vec::new();
    for (method, path) in [
        (Method::POST, format!("/api/v1/counter/visit/{live_page}")),
        (Method::POST, format!("/api/v1/counter/visit/{dead_page}")),
        (Method::GET, format!("/api/v1/counter/visits/{live_page}")),
        (Method::GET, format!("/api/v1/counter/visits/{dead_page}")),
        (
            Method::DELETE,
            format!("/api/v1/counter/visits/{dead_page}"),
        ),
        (Method::GET, "/api/v1/counter/metrics".to_owned()),
        (Method::GET, "/status".to_owned()),
        (Method::GET, "/health".to_owned()),
        (Method::GET, "/metrics".to_owned()),
        (Method::GET, "/nope".to_owned()),
    ] {
        let response = send(&http, method, &format!("{base}{path}")).await;
        bodies.push(format!(
            "{} {:?} {}",
            response.status, response.headers, response.text
        ));
    }
    drop(http);
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

    server.terminate();
    assert_eq!(server.wait(Duration::from_secs(30)).code(), Some(0));
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
    let nodes = format!("redis://127.0.0.1:{}", node.port());
    let server = ServerProcess::start(&[
        ("REDIS_NODES", nodes.as_str()),
        ("REDIS_PASSWORD", wrong),
        ("LOG_LEVEL", "debug"),
    ]);
    let response = send(
        &reqwest::Client::new(),
        Method::GET,
        &format!("{}/health", server.address()),
    )
    .await;
    assert_eq!(response.status, 503, "{}", response.text);
    assert!(!response.text.contains(wrong));
    let output = server.output();
    assert!(output.contains("authentication"), "{output}");
    assert!(!output.contains(wrong), "password in the output:\n{output}");
}

#[test]
fn a_bad_redis_nodes_never_shows_a_password_holding_url_characters() {
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
                let (status, stdout, stderr) = run_to_exit(&[("REDIS_NODES", value)]);
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
    let mut server = ServerProcess::start(&[
        ("REDIS_NODES", nodes.as_str()),
        ("LOG_LEVEL", "debug"),
        ("BATCH_INTERVAL_SECONDS", "60"),
    ]);

    let http = reqwest::Client::new();
    let base = server.address();
    let health = send(&http, Method::GET, &format!("{base}/health")).await;
    for _ in 0..VISITS {
        let response = send(
            &http,
            Method::POST,
            &format!("{base}/api/v1/counter/visit/awk"),
        )
        .await;
        assert_eq!(response.status, 200, "{}", response.text);
    }
    drop(http);
    server.terminate();
    let status = server.wait(Duration::from_secs(30));

    let output = server.output();
    assert_password_hidden(password, &format!("{output}{}", health.text));
    assert_eq!(
        health.status, 200,
        "both nodes accept the password: {}",
        health.text
    );
    assert_eq!(status.code(), Some(0), "{output}");
    assert_eq!(
        stored(cluster.node(owner(&cluster, "awk")), "awk"),
        Some(VISITS)
    );
}

#[test]
fn a_shutdown_timeout_under_2_seconds_exits_2_naming_the_smallest_value() {
    for value in ["1.5", "1", "0.1"] {
        let (status, stdout, stderr) = run_to_exit(&[("SHUTDOWN_TIMEOUT_SECONDS", value)]);
        assert_eq!(status.code(), Some(2), "{value}: {stdout}{stderr}");
        assert_eq!(
            stderr.trim_end(),
            format!(
                "tally-server: invalid configuration: SHUTDOWN_TIMEOUT_SECONDS=\"{value}\": expected a number of seconds from 2 to 31536000, such as 25: requests in flight get at least 1 s, and less than 2 would leave under 1 s to write pending visits"
            )
        );
    }
}

#[test]
fn the_same_redis_listed_twice_exits_2_naming_both_entries() {
    const SECRET: &str = "same-node-pw-71c3";
    let node = RedisNode::builder().password(SECRET).start().unwrap();
    let port = node.port();
    let nodes = format!("redis://:{SECRET}@localhost:{port},redis://:{SECRET}@127.0.0.1:{port}");

    let (status, stdout, stderr) = run_to_exit(&[("REDIS_NODES", nodes.as_str())]);

    assert_eq!(status.code(), Some(2), "{stdout}{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    let line = lines[0];
    assert!(
        line.starts_with("tally-server: invalid configuration: REDIS_NODES: "),
        "{line}"
    );
    for entry in [
        format!("redis://:***@localhost:{port}"),
        format!("redis://:***@127.0.0.1:{port}"),
    ] {
        assert!(line.contains(&entry), "{entry} is not named: {line}");
    }
    assert!(
        line.contains("list each Redis database once in REDIS_NODES"),
        "{line}"
    );
    assert!(
        !stdout.contains(SECRET) && !stderr.contains(SECRET),
        "password shown:\n{stdout}{stderr}"
    );
}
