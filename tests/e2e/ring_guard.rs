//! The ring guard through the real binary: a server started with another node list (or
//! other `VIRTUAL_NODES`) than the one the Redis nodes record exits with code 2 and one
//! line naming the change and the reshard command, and the nodes keep their counts.

use tally_testkit::RedisCluster;

use crate::support::{Server, one_at_a_time};

/// `REDIS_NODES` of `nodes` of `cluster`.
fn list(cluster: &RedisCluster, nodes: &[usize]) -> String {
    nodes
        .iter()
        .map(|&i| cluster.node(i).url())
        .collect::<Vec<_>>()
        .join(",")
}

/// Runs the server to its exit and returns its one stderr line, asserting exit code 2.
fn refused(env: &[(&str, &str)]) -> String {
    let (status, stdout, stderr) = Server::run_to_exit(env);
    assert_eq!(status.code(), Some(2), "{stdout}{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    lines[0].to_owned()
}

#[tokio::test]
async fn a_server_on_another_ring_exits_2_naming_the_change_and_the_command() {
    let _serial = one_at_a_time().await;
    let cluster = RedisCluster::start(4).unwrap();
    let three = list(&cluster, &[0, 1, 2]);
    let server = Server::start(&three, &[]);
    for page in ["home", "about", "blog", "contact", "news", "faq"] {
        let response = server
            .request("POST", &format!("/api/v1/counter/visit/{page}"))
            .await;
        assert_eq!(response.status, 200);
    }
    server.stop();
    // Six pages, each with its day count.
    let written: u64 = (0..3)
        .map(|i| cluster.node(i).keys("tally:v:*").unwrap().len() as u64)
        .sum();
    assert_eq!(written, 12);

    let four = list(&cluster, &[0, 1, 2, 3]);
    let line = refused(&[("REDIS_NODES", &four)]);
    assert!(
        line.starts_with("tally-server: invalid configuration: REDIS_NODES: "),
        "{line}"
    );
    assert!(
        line.contains(&format!("adds {}", cluster.node(3).addr())),
        "{line}"
    );
    assert!(line.contains("tally-server reshard --to "), "{line}");
    assert!(line.contains("--apply"), "{line}");

    let line = refused(&[("REDIS_NODES", &list(&cluster, &[0, 1]))]);
    assert!(
        line.contains(&format!("removes {}", cluster.node(2).addr())),
        "{line}"
    );
    let line = refused(&[("REDIS_NODES", &three), ("VIRTUAL_NODES", "100")]);
    assert!(line.contains("VIRTUAL_NODES=100"), "{line}");

    // Nothing was written by the refused starts, and the right list still serves.
    assert!(cluster.node(3).keys("tally:v:*").unwrap().is_empty());
    assert_eq!(cluster.node(3).get("tally:ring").unwrap(), None);
    let server = Server::start(&three, &[]);
    assert_eq!(server.count("home").await.0, 1);
    server.stop();
}
