use std::process::Command;
use std::time::{Duration, Instant};

use tally_testkit::{Error, RedisCluster, RedisNode};

use crate::TestResult;

fn process_exists(pid: u32) -> bool {
    // `kill -0` checks for existence without sending anything. A reaped child is gone.
    Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn node_answers_and_its_process_dies_on_drop() -> TestResult {
    let node = RedisNode::start()?;
    let pid = node.pid().ok_or("no pid")?;
    let dir = node.dir().to_path_buf();

    node.query::<()>(redis::cmd("SET").arg("k").arg("v"))?;
    assert_eq!(node.get("k")?.as_deref(), Some("v"));
    assert_eq!(node.keys("*")?, vec!["k".to_owned()]);
    assert!(
        node.info_commandstats()?
            .get("set")
            .is_some_and(|&n| n >= 1)
    );
    drop(node);

    assert!(
        !process_exists(pid),
        "redis-server {pid} survived its RedisNode"
    );
    assert!(
        !dir.exists(),
        "temporary directory {} was left behind",
        dir.display()
    );
    Ok(())
}

#[test]
fn node_is_killed_when_a_test_panics() -> TestResult {
    let (tx, rx) = std::sync::mpsc::channel();
    let outcome = std::thread::spawn(move || {
        let node = RedisNode::start().expect("start");
        tx.send(node.pid().expect("pid")).expect("send");
        panic!("test failure while a node runs");
    })
    .join();
    assert!(outcome.is_err());
    let pid = rx.recv()?;
    assert!(!process_exists(pid), "redis-server {pid} survived a panic");
    Ok(())
}

#[test]
fn paused_node_answers_nothing_until_resumed() -> TestResult {
    let node = RedisNode::start()?;
    node.query::<()>(redis::cmd("SET").arg("k").arg("1"))?;

    node.pause()?;
    let started = Instant::now();
    let while_paused = node.get("k");
    assert!(
        while_paused.is_err(),
        "a paused node answered: {while_paused:?}"
    );
    assert!(started.elapsed() >= Duration::from_secs(1));

    node.resume()?;
    assert_eq!(node.get("k")?.as_deref(), Some("1"));
    Ok(())
}

#[test]
fn restart_with_aof_keeps_acknowledged_writes() -> TestResult {
    let mut node = RedisNode::builder().aof(true).start()?;
    let port = node.port();
    node.query::<u64>(redis::cmd("INCRBY").arg("tally:v:p").arg(41))?;
    node.query::<u64>(redis::cmd("INCRBY").arg("tally:v:p").arg(1))?;

    node.kill()?;
    assert!(node.get("tally:v:p").is_err(), "a killed node answered");
    node.restart()?;

    assert_eq!(node.port(), port);
    assert_eq!(node.get_u64("tally:v:p")?, Some(42));
    Ok(())
}

#[test]
fn restart_without_aof_starts_empty() -> TestResult {
    let mut node = RedisNode::start()?;
    node.query::<()>(redis::cmd("SET").arg("k").arg("v"))?;
    node.restart()?;
    assert_eq!(node.get("k")?, None);
    Ok(())
}

#[test]
fn password_node_refuses_unauthenticated_clients() -> TestResult {
    let node = RedisNode::builder().password("kit-secret").start()?;
    // The kit's own helpers authenticate.
    node.query::<()>(redis::cmd("SET").arg("k").arg("v"))?;

    let mut anonymous = redis::Client::open(node.url())?.get_connection()?;
    let err = redis::cmd("GET")
        .arg("k")
        .query::<Option<String>>(&mut anonymous);
    let err = err.err().ok_or("GET without AUTH succeeded")?;
    assert_eq!(err.code(), Some("NOAUTH"), "{err}");
    Ok(())
}

#[test]
fn missing_binary_error_says_how_to_install() {
    let err = RedisNode::builder()
        .program("/nonexistent/redis-server")
        .start()
        .unwrap_err();
    assert!(matches!(err, Error::RedisNotInstalled { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("cargo xtask test"), "{message}");
    assert!(
        message.contains("apt-get install redis-server"),
        "{message}"
    );
}

#[test]
fn start_failure_quotes_the_server_log() {
    // `false` exits at once without binding anything: the kit reports the exit and the
    // (empty) log instead of waiting for the timeout.
    let err = RedisNode::builder().program("false").start().unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, Error::StartFailed { .. }), "{err:?}");
    assert!(message.contains("exited"), "{message}");
    assert!(message.contains("redis.log"), "{message}");
}

#[test]
fn cluster_starts_distinct_nodes_and_lists_their_urls() -> TestResult {
    let cluster = RedisCluster::start(3)?;
    assert_eq!(cluster.len(), 3);
    let urls = cluster.urls();
    let listed: Vec<&str> = urls.split(',').collect();
    assert_eq!(listed.len(), 3);
    for (node, url) in cluster.nodes().iter().zip(&listed) {
        assert_eq!(*url, node.url());
        node.query::<()>(redis::cmd("SET").arg("who").arg(node.port()))?;
    }
    for node in cluster.nodes() {
        assert_eq!(node.get("who")?, Some(node.port().to_string()));
    }
    Ok(())
}
