//! The redis-server children: the three standalone nodes and, for `tally-cluster`, a
//! six-node Redis Cluster, started once for the run, flushed before each scenario, and
//! killed on every way out, since the signal handler and the watchdog end the process
//! with `exit`, where no destructor runs (the `Drop` of `RedisCluster` and `Cluster`
//! would otherwise stop them).
//!
//! The children to kill are found in `/proc` by their parent, this process, rather than
//! kept in a list: a cluster's nodes are started one by one inside the testkit's start,
//! and a signal or the watchdog during it (seconds) must kill those already running too.

use std::fs;
use std::time::Duration;

use anyhow::Context as _;
use tally_testkit::{Cluster, RedisCluster};

use crate::measure::{self, CommandCounts};

/// Primaries of the Redis Cluster; each has one replica (six nodes).
pub const CLUSTER_PRIMARIES: usize = 3;

/// The redis-servers a target counts on: what a scenario flushes and whose commands and
/// CPU its phases read.
#[derive(Clone, Copy, Debug)]
pub enum Servers<'a> {
    /// The three standalone nodes (`REDIS_NODES`).
    Standalone(&'a RedisCluster),
    /// The Redis Cluster (`REDIS_CLUSTER`): its primaries and their replicas.
    Cluster(&'a Cluster),
}

impl Servers<'_> {
    /// Empties every node, so a scenario starts from nothing. On the cluster only the
    /// primaries are asked (a replica refuses writes); their replicas apply the flush.
    pub fn flush(self) -> anyhow::Result<()> {
        match self {
            Servers::Standalone(nodes) => {
                for node in nodes.nodes() {
                    node.query::<()>(&redis::cmd("FLUSHALL"))?;
                }
            }
            Servers::Cluster(cluster) => {
                let primaries = cluster.primaries().context("the cluster's primaries")?;
                anyhow::ensure!(
                    primaries.len() == CLUSTER_PRIMARIES,
                    "the cluster has {} primaries serving slots, not {CLUSTER_PRIMARIES}",
                    primaries.len()
                );
                for i in primaries {
                    cluster.node(i).query::<()>(&redis::cmd("FLUSHALL"))?;
                }
            }
        }
        Ok(())
    }

    /// Indices (in [`Servers::command_counts`]'s order) of the cluster's replicas, as the
    /// cluster sees it now; `None` for the standalone nodes.
    pub fn replicas(self) -> anyhow::Result<Option<Vec<usize>>> {
        match self {
            Servers::Standalone(_) => Ok(None),
            Servers::Cluster(cluster) => {
                let primaries = cluster.primaries().context("the cluster's primaries")?;
                Ok(Some(
                    (0..cluster.nodes().len())
                        .filter(|i| !primaries.contains(i))
                        .collect(),
                ))
            }
        }
    }

    /// Every node's `INFO cpu`, as Redis writes it, in [`Servers::command_counts`]'s order.
    pub fn info_cpu(self) -> anyhow::Result<Vec<String>> {
        let mut info = redis::cmd("INFO");
        info.arg("cpu");
        let answers = match self {
            Servers::Standalone(nodes) => nodes
                .nodes()
                .iter()
                .map(|node| node.query(&info))
                .collect::<Result<_, _>>(),
            Servers::Cluster(cluster) => cluster
                .nodes()
                .iter()
                .map(|node| node.query(&info))
                .collect(),
        };
        answers.context("INFO cpu")
    }

    /// Calls per command since start on every node, `info` left out (the harness's own
    /// reads). On the cluster that is all six nodes: a replica counts the writes it
    /// applies from its primary's stream, a primary the replicas' `REPLCONF`s.
    pub fn command_counts(self) -> anyhow::Result<Vec<CommandCounts>> {
        match self {
            Servers::Standalone(nodes) => {
                nodes.nodes().iter().map(measure::node_commands).collect()
            }
            Servers::Cluster(cluster) => cluster
                .nodes()
                .iter()
                .map(measure::cluster_node_commands)
                .collect(),
        }
    }
}

/// Starts the three standalone nodes.
pub fn start() -> anyhow::Result<RedisCluster> {
    RedisCluster::start(3).context("cannot start 3 redis-server nodes")
}

/// Starts the Redis Cluster: three primaries with a replica each, no persistence, the
/// testkit's node timeout (2 s). A start that fails drops, and so kills, the nodes it
/// had started.
pub fn start_cluster() -> anyhow::Result<Cluster> {
    Cluster::builder()
        .primaries(CLUSTER_PRIMARIES)
        .replicas(1)
        .start()
        .context("cannot start a Redis Cluster of 6 nodes (redis-server and redis-cli)")
}

/// Pids of this process's children whose name starts with `redis-`: the redis-servers
/// (whether or not a start has returned their handles yet) and a `redis-cli` under way.
pub fn children() -> Vec<u32> {
    let me = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| parent_and_name(&stat).map(|(p, n)| (p, n.to_owned())))
                .is_some_and(|(parent, name)| parent == me && name.starts_with("redis-"))
        })
        .collect()
}

/// The parent pid and the command name from a `/proc/PID/stat` line (`pid (name) state
/// ppid ...`; the name may itself hold spaces and parentheses).
fn parent_and_name(stat: &str) -> Option<(u32, &str)> {
    let name = &stat[stat.find('(')? + 1..stat.rfind(')')?];
    let mut fields = stat[stat.rfind(')')? + 1..].split_ascii_whitespace();
    let _state = fields.next()?;
    Some((fields.next()?.parse().ok()?, name))
}

/// Kills every redis child of this process (see [`children`]).
pub fn kill_children() {
    for pid in children() {
        // `unsafe_code` is forbidden (no libc::kill); the `kill` command does the job.
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
}

/// Kills the children and exits on Ctrl-C or SIGTERM (destructors do not run on exit).
pub async fn stop_on_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    eprintln!("load: interrupted; stopping the redis-server nodes");
    kill_children();
    std::process::exit(130);
}

/// Ends the run (children killed, exit code 3) when it is still going after `limit`.
pub fn start_watchdog(limit: Duration) {
    std::thread::Builder::new()
        .name("load-watchdog".to_owned())
        .spawn(move || {
            std::thread::sleep(limit);
            eprintln!("load: still running after {limit:?}; giving up");
            kill_children();
            std::process::exit(3);
        })
        .expect("cannot start the watchdog thread");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parent_is_read_after_the_name() {
        let stat = "4242 (redis-server) S 1085 4242 30790 0 -1 4194560 900 0 0 0 7 3";
        assert_eq!(parent_and_name(stat), Some((1085, "redis-server")));
        let odd = "77 (a) b (c) R 12 77 0";
        assert_eq!(parent_and_name(odd), Some((12, "a) b (c")));
        assert_eq!(parent_and_name("77 (cut"), None);
    }

    #[test]
    fn a_redis_child_is_found_by_its_parent_also_without_a_handle_listing_it() {
        // A `sleep` named `redis-sleep`: the kernel takes the name from the file.
        let dir = tempfile::tempdir().unwrap();
        let program = dir.path().join("redis-sleep");
        let sleep = ["/bin/sleep", "/usr/bin/sleep"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap();
        fs::copy(sleep, &program).unwrap();
        let mut redis_child = std::process::Command::new(&program)
            .arg("30")
            .spawn()
            .unwrap();
        let mut other_child = std::process::Command::new(sleep).arg("30").spawn().unwrap();

        let found = children();
        for child in [&mut redis_child, &mut other_child] {
            child.kill().unwrap();
            child.wait().unwrap();
        }

        assert!(found.contains(&redis_child.id()), "{found:?}");
        assert!(!found.contains(&other_child.id()), "{found:?}");
    }
}
