//! A configuration the server cannot run with: it exits with code 2 before listening,
//! printing one line on stderr that names the variable, shows the value (passwords as
//! `***`) and says what is expected, and nothing on stdout. That includes two `REDIS_NODES`
//! entries that reach one Redis database, found only by asking the nodes at start.

use tally_testkit::RedisNode;

use crate::support::{Server, one_at_a_time};

#[tokio::test]
async fn bad_configuration_exits_2_with_one_line_naming_the_variable() {
    let _serial = one_at_a_time().await;
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
        ("STORE", "disk", "expected embedded or memory"),
        ("EMBEDDED_CACHE_MB", "0", "expected a whole number from 1"),
    ];
    for (variable, value, expected) in cases {
        let (status, stdout, stderr) = Server::run_to_exit(&[(variable, value)]);
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

#[tokio::test]
async fn a_shutdown_timeout_under_2_seconds_exits_2_naming_the_smallest_value() {
    let _serial = one_at_a_time().await;
    for value in ["1.5", "1", "0.1"] {
        let (status, stdout, stderr) = Server::run_to_exit(&[("SHUTDOWN_TIMEOUT_SECONDS", value)]);
        assert_eq!(status.code(), Some(2), "{value}: {stdout}{stderr}");
        assert_eq!(
            stderr.trim_end(),
            format!(
                "tally-server: invalid configuration: SHUTDOWN_TIMEOUT_SECONDS=\"{value}\": expected a number of seconds from 2 to 31536000, such as 25: requests in flight get at least 1 s, and less than 2 would leave under 1 s to write pending visits"
            )
        );
    }
}

#[tokio::test]
async fn the_same_redis_listed_twice_exits_2_naming_both_entries() {
    const SECRET: &str = "same-node-pw-71c3";
    let _serial = one_at_a_time().await;
    let node = RedisNode::builder().password(SECRET).start().unwrap();
    let port = node.port();
    let nodes = format!("redis://:{SECRET}@localhost:{port},redis://:{SECRET}@127.0.0.1:{port}");

    let (status, stdout, stderr) = Server::run_to_exit(&[("REDIS_NODES", nodes.as_str())]);

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
