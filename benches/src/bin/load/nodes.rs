//! The redis-server children: started once for the run, flushed before each scenario,
//! and killed on every way out, since the signal handler and the watchdog end the process
//! with `exit`, where no destructor runs (`RedisCluster`'s `Drop` would otherwise stop
//! them).

use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context as _;
use tally_testkit::RedisCluster;

/// redis-server children, to kill on Ctrl-C, SIGTERM or the watchdog.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Starts the three nodes and registers their pids to be killed on the way out.
pub fn start() -> anyhow::Result<RedisCluster> {
    let cluster = RedisCluster::start(3).context("cannot start 3 redis-server nodes")?;
    let mut children = CHILDREN.lock().unwrap_or_else(|e| e.into_inner());
    children.extend(cluster.nodes().iter().filter_map(|n| n.pid()));
    Ok(cluster)
}

/// Empties every node, so a scenario starts from nothing.
pub fn flush(cluster: &RedisCluster) -> anyhow::Result<()> {
    for node in cluster.nodes() {
        node.query::<()>(&redis::cmd("FLUSHALL"))?;
    }
    Ok(())
}

/// Kills every registered redis-server child.
pub fn kill_children() {
    let children = CHILDREN.lock().unwrap_or_else(|e| e.into_inner());
    for pid in children.iter() {
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
