//! A Redis Cluster on loopback, owned by a test: `redis-server` processes started with
//! `cluster-enabled yes`, joined by `redis-cli --cluster create`, then killed, restarted,
//! paused, resharded and read back by the test.
//!
//! Each node is a [`RedisNode`] started with the cluster's directives
//! ([`crate::NodeBuilder::config`]) on a port that leaves room for its cluster bus
//! ([`crate::NodeBuilder::pick_port`]). Its `nodes.conf` lives in the node's directory
//! beside the append-only file, so a restart brings it back with its identity and its
//! place in the cluster.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::node::RedisNode;

/// Environment variable naming the `redis-cli` binary (default: `redis-cli` on `PATH`).
pub const REDIS_CLI_ENV: &str = "TALLY_REDIS_CLI";

/// Highest port a cluster node listens on: its cluster bus listens on the port + 10000.
pub const MAX_CLUSTER_PORT: u16 = 55_535;

/// Lowest port the kit picks for a node.
const MIN_CLUSTER_PORT: u16 = 20_000;

/// Ports a start tries before giving up on finding a free pair (the port and its bus port).
const PORT_ATTEMPTS: usize = 200;

/// Longest wait for the cluster to settle (created, or restarted).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Lines of a log or of `redis-cli` output quoted in errors.
const TAIL_LINES: usize = 30;

/// Every hash slot of a Redis Cluster.
pub const SLOTS: u32 = 16_384;

/// Options for a [`Cluster`]; made by [`Cluster::builder`].
#[derive(Clone, Debug)]
pub struct ClusterBuilder {
    primaries: usize,
    replicas: usize,
    aof: bool,
    node_timeout: Duration,
    password: Option<String>,
    start_timeout: Duration,
}

impl Default for ClusterBuilder {
    fn default() -> Self {
        Self {
            primaries: 3,
            replicas: 1,
            aof: false,
            node_timeout: Duration::from_millis(2000),
            password: None,
            start_timeout: Duration::from_secs(10),
        }
    }
}

impl ClusterBuilder {
    /// Primaries (default 3, at least 3, as `redis-cli --cluster create` asks).
    pub fn primaries(mut self, n: usize) -> Self {
        self.primaries = n;
        self
    }

    /// Replicas per primary (default 1).
    pub fn replicas(mut self, n: usize) -> Self {
        self.replicas = n;
        self
    }

    /// Append-only files with `appendfsync always` on every node, so a node killed with
    /// SIGKILL and restarted keeps every write it acknowledged.
    pub fn aof(mut self, on: bool) -> Self {
        self.aof = on;
        self
    }

    /// `cluster-node-timeout` (default 2 s): how long a node may not answer before the
    /// others mark it failed and its replica takes over.
    pub fn node_timeout(mut self, timeout: Duration) -> Self {
        self.node_timeout = timeout;
        self
    }

    /// Starts every node with `--requirepass` (and `--masterauth`, for replication).
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// Starts the nodes, creates the cluster (`redis-cli --cluster create ...
    /// --cluster-replicas N --cluster-yes`) and waits until every node says
    /// `cluster_state:ok`, knows every other node, and every replica's link to its primary
    /// is up.
    ///
    /// # Errors
    ///
    /// [`Error::RedisNotInstalled`] without `redis-server`; [`Error::Io`] naming
    /// `redis-cli` when it is missing, and with its output when the creation fails or the
    /// cluster does not settle; [`Error::StartFailed`] when a node does not start.
    pub fn start(self) -> Result<Cluster> {
        let count = self.primaries * (1 + self.replicas);
        let nodes = (0..count)
            .map(|_| ClusterNode::start(&self))
            .collect::<Result<Vec<_>>>()?;
        let cluster = Cluster {
            announced: vec![None; nodes.len()],
            nodes,
            password: self.password.clone(),
        };
        let mut args = vec!["--cluster".to_owned(), "create".to_owned()];
        args.extend(cluster.nodes.iter().map(|n| n.addr().to_string()));
        args.extend([
            "--cluster-replicas".to_owned(),
            self.replicas.to_string(),
            "--cluster-yes".to_owned(),
        ]);
        cluster.redis_cli(&args)?;
        cluster.wait_until_settled()?;
        Ok(cluster)
    }
}

/// One node of a [`Cluster`]: a `redis-server` child process on `127.0.0.1` (a
/// [`RedisNode`]), with its own temporary directory (its `nodes.conf`, its append-only file
/// and its log).
///
/// Killed (SIGKILL) and reaped when dropped, also when a test panics; the directory is
/// removed afterwards.
#[derive(Debug)]
pub struct ClusterNode {
    node: RedisNode,
}

impl ClusterNode {
    fn start(options: &ClusterBuilder) -> Result<Self> {
        let mut builder = RedisNode::builder()
            .aof(options.aof)
            .start_timeout(options.start_timeout)
            .pick_port(free_cluster_port)
            .config("cluster-enabled", "yes")
            .config("cluster-config-file", "nodes.conf")
            .config(
                "cluster-node-timeout",
                options.node_timeout.as_millis().to_string(),
            );
        if let Some(password) = &options.password {
            builder = builder
                .password(password.clone())
                .config("masterauth", password.clone());
        }
        Ok(Self {
            node: builder.start()?,
        })
    }

    /// The port clients connect to; the cluster bus is on this + 10000.
    pub fn port(&self) -> u16 {
        self.node.port()
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        self.node.addr()
    }

    /// `redis://127.0.0.1:port`, without credentials.
    pub fn url(&self) -> String {
        self.node.url()
    }

    /// Process id of the running server, `None` after [`ClusterNode::kill`].
    pub fn pid(&self) -> Option<u32> {
        self.node.pid()
    }

    /// Whether the process runs (it may be paused).
    pub fn is_running(&self) -> bool {
        self.node.pid().is_some()
    }

    /// The node's working directory (`nodes.conf`, the append-only file).
    pub fn dir(&self) -> &Path {
        self.node.dir()
    }

    /// The file receiving the server's output.
    pub fn log_path(&self) -> PathBuf {
        self.node.log_path()
    }

    /// Stops the process with SIGSTOP: connections stay open, nothing is answered.
    ///
    /// # Errors
    ///
    /// [`Error::Signal`] when the node does not run or `kill` fails.
    pub fn pause(&self) -> Result<()> {
        self.node.pause()
    }

    /// Continues a paused process with SIGCONT.
    ///
    /// # Errors
    ///
    /// [`Error::Signal`] when the node does not run or `kill` fails.
    pub fn resume(&self) -> Result<()> {
        self.node.resume()
    }

    /// Kills the process with SIGKILL and waits for it; a node that does not run is left
    /// as it is.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the process cannot be killed or reaped.
    pub fn kill(&mut self) -> Result<()> {
        self.node.kill()
    }

    /// Kills the process if it runs, then starts it again on the same port and directory:
    /// it comes back with its `nodes.conf` (its id, its place in the cluster) and, with
    /// AOF, its data. Waits until it answers.
    ///
    /// # Errors
    ///
    /// As [`ClusterNode::kill`]; [`Error::StartFailed`] when it does not answer in time.
    pub fn restart(&mut self) -> Result<()> {
        self.node.restart()
    }

    /// A client for this node, authenticated when the cluster has a password.
    ///
    /// # Errors
    ///
    /// [`Error::Command`] when the connection info is rejected.
    pub fn client(&self) -> Result<redis::Client> {
        self.node.client()
    }

    /// Runs one command on a fresh connection to this node (no redirection: a key of a
    /// slot it does not serve answers `MOVED`) and converts the reply.
    ///
    /// # Errors
    ///
    /// [`Error::Command`] when connecting, the command or the conversion fails, also after
    /// two seconds without an answer (a paused node).
    pub fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T> {
        self.node.query(cmd)
    }

    /// Runs a pipeline on one fresh connection to this node (e.g. one `GET` per key, keys
    /// of several slots: only `MGET` and transactions need one slot).
    ///
    /// # Errors
    ///
    /// As [`ClusterNode::query`].
    pub fn query_pipeline<T: redis::FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T> {
        let mut conn = self.node.connection("pipeline")?;
        pipe.query(&mut conn).map_err(|source| Error::Command {
            command: "pipeline".into(),
            port: self.port(),
            source,
        })
    }

    /// The node's id in the cluster (`CLUSTER MYID`).
    ///
    /// # Errors
    ///
    /// As [`ClusterNode::query`].
    pub fn id(&self) -> Result<String> {
        self.query(redis::cmd("CLUSTER").arg("MYID"))
    }

    /// The fields of `CLUSTER INFO`, e.g. `cluster_state` → `ok`.
    ///
    /// # Errors
    ///
    /// As [`ClusterNode::query`].
    pub fn cluster_info(&self) -> Result<Vec<(String, String)>> {
        let text: String = self.query(redis::cmd("CLUSTER").arg("INFO"))?;
        Ok(info_fields(&text))
    }

    /// The fields of `INFO {section}`, e.g. `role` → `master`.
    ///
    /// # Errors
    ///
    /// As [`ClusterNode::query`].
    pub fn info(&self, section: &str) -> Result<Vec<(String, String)>> {
        let text: String = self.query(redis::cmd("INFO").arg(section))?;
        Ok(info_fields(&text))
    }

    /// The cluster as this node sees it (`CLUSTER NODES`).
    ///
    /// # Errors
    ///
    /// As [`ClusterNode::query`].
    pub fn view(&self) -> Result<Vec<NodeView>> {
        let text: String = self.query(redis::cmd("CLUSTER").arg("NODES"))?;
        Ok(parse_cluster_nodes(&text))
    }

    /// Every key matching `pattern` held by this node (`KEYS`; fine for test-sized data),
    /// sorted.
    ///
    /// # Errors
    ///
    /// As [`ClusterNode::query`].
    pub fn keys(&self, pattern: &str) -> Result<Vec<String>> {
        self.node.keys(pattern)
    }
}

/// One line of `CLUSTER NODES`: a node as the node asked sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    /// The node's id.
    pub id: String,
    /// The port it announces (its `cluster-announce-port` when set).
    pub port: u16,
    /// Whether it is a primary (`master`).
    pub primary: bool,
    /// The id of its primary, for a replica.
    pub primary_id: Option<String>,
    /// Whether it is flagged `fail` (or `fail?`, suspected by the node asked).
    pub failed: bool,
    /// Whether this line is the node asked (`myself`).
    pub myself: bool,
    /// The slot ranges it serves, inclusive (a primary's).
    pub slots: Vec<(u16, u16)>,
}

impl NodeView {
    /// Whether it serves `slot`.
    pub fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot))
    }

    /// How many slots it serves.
    pub fn slot_count(&self) -> u32 {
        self.slots
            .iter()
            .map(|(a, b)| u32::from(*b) - u32::from(*a) + 1)
            .sum()
    }
}

/// A Redis Cluster of [`ClusterNode`]s on loopback, started by [`Cluster::builder`] (or
/// [`Cluster::start`]: three primaries, one replica each).
///
/// Node indices are start order and do not change; which node is a primary does (after a
/// failover), so tests ask [`Cluster::primaries`] and [`Cluster::replicas_of`].
#[derive(Debug)]
pub struct Cluster {
    nodes: Vec<ClusterNode>,
    password: Option<String>,
    /// Per node, the port it announces instead of its own ([`Cluster::announce_port`]).
    announced: Vec<Option<u16>>,
}

impl Cluster {
    /// Options: primaries, replicas, AOF, node timeout, password.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// Three primaries with one replica each, no persistence, a node timeout of 2 s.
    ///
    /// # Errors
    ///
    /// As [`ClusterBuilder::start`].
    pub fn start() -> Result<Self> {
        Self::builder().start()
    }

    /// The nodes, in start order.
    pub fn nodes(&self) -> &[ClusterNode] {
        &self.nodes
    }

    /// Node `i` (panics when out of range, like indexing).
    pub fn node(&self, i: usize) -> &ClusterNode {
        &self.nodes[i]
    }

    /// Node `i`, mutably (to kill or restart it).
    pub fn node_mut(&mut self, i: usize) -> &mut ClusterNode {
        &mut self.nodes[i]
    }

    /// Every node's URL joined by commas: a `REDIS_CLUSTER` value (the seeds).
    pub fn seeds(&self) -> String {
        self.nodes
            .iter()
            .map(ClusterNode::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The index of the node listening on (or announcing) `port`.
    pub fn index_of_port(&self, port: u16) -> Option<usize> {
        self.nodes
            .iter()
            .zip(&self.announced)
            .position(|(n, announced)| n.port() == port || *announced == Some(port))
    }

    /// The cluster as the first running node that answers sees it (`CLUSTER NODES`).
    ///
    /// # Errors
    ///
    /// The last node's error when none answers.
    pub fn view(&self) -> Result<Vec<NodeView>> {
        let mut last = None;
        for node in self.nodes.iter().filter(|n| n.is_running()) {
            match node.view() {
                Ok(view) => return Ok(view),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            Error::io(
                "no node of the cluster runs",
                std::io::Error::from(std::io::ErrorKind::NotConnected),
            )
        }))
    }

    /// Indices of the nodes that are primaries serving slots, not failed, as
    /// [`Cluster::view`] says, in node order.
    ///
    /// # Errors
    ///
    /// As [`Cluster::view`].
    pub fn primaries(&self) -> Result<Vec<usize>> {
        let view = self.view()?;
        let mut primaries: Vec<usize> = view
            .iter()
            .filter(|n| n.primary && !n.failed && !n.slots.is_empty())
            .filter_map(|n| self.index_of_port(n.port))
            .collect();
        primaries.sort_unstable();
        Ok(primaries)
    }

    /// Indices of the replicas of node `i`, as [`Cluster::view`] says.
    ///
    /// # Errors
    ///
    /// As [`Cluster::view`].
    pub fn replicas_of(&self, i: usize) -> Result<Vec<usize>> {
        let id = self.node_id(i)?;
        let view = self.view()?;
        let mut replicas: Vec<usize> = view
            .iter()
            .filter(|n| n.primary_id.as_deref() == Some(id.as_str()))
            .filter_map(|n| self.index_of_port(n.port))
            .collect();
        replicas.sort_unstable();
        Ok(replicas)
    }

    /// Node `i`'s id, as the cluster knows it (asked of the node, or read from another
    /// node's view while it does not run).
    ///
    /// # Errors
    ///
    /// As [`Cluster::view`]; [`Error::Io`] when no view names the node.
    pub fn node_id(&self, i: usize) -> Result<String> {
        if let Ok(id) = self.nodes[i].id() {
            return Ok(id);
        }
        self.view()?
            .into_iter()
            .find(|n| self.index_of_port(n.port) == Some(i))
            .map(|n| n.id)
            .ok_or_else(|| {
                Error::io(
                    format!("no cluster node lists 127.0.0.1:{}", self.nodes[i].port()),
                    std::io::Error::from(std::io::ErrorKind::NotFound),
                )
            })
    }

    /// The index of the node serving `slot`, as [`Cluster::view`] says.
    ///
    /// # Errors
    ///
    /// As [`Cluster::view`]; [`Error::Io`] when no running node serves it.
    pub fn owner_of(&self, slot: u16) -> Result<usize> {
        self.view()?
            .iter()
            .filter(|n| n.primary && !n.failed)
            .find(|n| n.serves(slot))
            .and_then(|n| self.index_of_port(n.port))
            .ok_or_else(|| {
                Error::io(
                    format!("no primary serves hash slot {slot}"),
                    std::io::Error::from(std::io::ErrorKind::NotFound),
                )
            })
    }

    /// The hash slot of `key` (`CLUSTER KEYSLOT`, asked of a running node).
    ///
    /// # Errors
    ///
    /// The last node's error when none answers.
    pub fn slot_of(&self, key: &str) -> Result<u16> {
        let mut last = None;
        for node in self.nodes.iter().filter(|n| n.is_running()) {
            match node.query(redis::cmd("CLUSTER").arg("KEYSLOT").arg(key)) {
                Ok(slot) => return Ok(slot),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            Error::io(
                "no node of the cluster runs",
                std::io::Error::from(std::io::ErrorKind::NotConnected),
            )
        }))
    }

    /// Kills every node (SIGKILL).
    ///
    /// # Errors
    ///
    /// As [`ClusterNode::kill`].
    pub fn kill_all(&mut self) -> Result<()> {
        self.nodes.iter_mut().try_for_each(ClusterNode::kill)
    }

    /// Starts every node that does not run again (same port, directory, `nodes.conf` and
    /// data), then waits until the cluster has settled, as after its creation.
    ///
    /// # Errors
    ///
    /// As [`ClusterNode::restart`] and [`Cluster::wait_until_settled`].
    pub fn restart_stopped(&mut self) -> Result<()> {
        for node in self.nodes.iter_mut().filter(|n| !n.is_running()) {
            node.restart()?;
        }
        self.wait_until_settled()
    }

    /// Waits until every running node says `cluster_state:ok`, knows every node, sees all
    /// 16384 slots assigned, and every running replica's link to its primary is up.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] with the last answers after 60 s.
    pub fn wait_until_settled(&self) -> Result<()> {
        let total = self.nodes.len().to_string();
        self.wait_for("the cluster to settle", SETTLE_TIMEOUT, |cluster| {
            let mut seen = Vec::new();
            for node in cluster.nodes.iter().filter(|n| n.is_running()) {
                let info = node.cluster_info()?;
                let field = |name: &str| {
                    info.iter()
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default()
                };
                let replication = node.info("replication")?;
                let role = |name: &str| {
                    replication
                        .iter()
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default()
                };
                let linked = role("role") == "master" || role("master_link_status") == "up";
                let settled = field("cluster_state") == "ok"
                    && field("cluster_known_nodes") == total
                    && field("cluster_slots_assigned") == SLOTS.to_string()
                    && linked;
                if !settled {
                    seen.push(format!(
                        "127.0.0.1:{}: state {}, knows {}, slots {}, role {}, link {}",
                        node.port(),
                        field("cluster_state"),
                        field("cluster_known_nodes"),
                        field("cluster_slots_assigned"),
                        role("role"),
                        role("master_link_status")
                    ));
                }
            }
            Ok(seen.is_empty().then_some(()).ok_or(seen.join("; ")))
        })
    }

    /// Polls `check` every 50 ms until it answers `Ok(Ok(..))`; `Ok(Err(state))` means
    /// not yet (the state is quoted if time runs out), `Err` a failed query, also retried.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] naming `what`, with the last state or error, after `timeout`.
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&Self) -> Result<std::result::Result<T, String>>,
    ) -> Result<T> {
        let started = Instant::now();
        loop {
            let last = match check(self) {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(state)) => state,
                Err(e) => error_chain(&e),
            };
            if started.elapsed() >= timeout {
                return Err(Error::io(
                    format!("waited {timeout:?} for {what}; last seen: {last}"),
                    std::io::Error::from(std::io::ErrorKind::TimedOut),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Moves `slots` hash slots from node `from` to node `to` with `redis-cli --cluster
    /// reshard` (the slots come off the start of `from`'s ranges, their keys with them),
    /// and returns its output.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] with the output when `redis-cli` fails.
    pub fn reshard(&self, from: usize, to: usize, slots: u32) -> Result<String> {
        let args = [
            "--cluster".to_owned(),
            "reshard".to_owned(),
            self.nodes[from].addr().to_string(),
            "--cluster-from".to_owned(),
            self.node_id(from)?,
            "--cluster-to".to_owned(),
            self.node_id(to)?,
            "--cluster-slots".to_owned(),
            slots.to_string(),
            "--cluster-yes".to_owned(),
        ];
        self.redis_cli(&args)
    }

    /// Makes node `i` announce `port` to the cluster and its clients
    /// (`cluster-announce-port`; its bus port stays its own), e.g. a
    /// [`crate::FaultProxy`]'s, so every client that learns the node from the cluster
    /// connects through the proxy. Waits until every other running node lists it there.
    ///
    /// # Errors
    ///
    /// As [`ClusterNode::query`]; [`Error::Io`] when the others do not learn the port
    /// within 60 s.
    pub fn announce_port(&mut self, i: usize, port: u16) -> Result<()> {
        let node = &self.nodes[i];
        let bus = u32::from(node.port()) + 10_000;
        node.query::<()>(
            redis::cmd("CONFIG")
                .arg("SET")
                .arg("cluster-announce-bus-port")
                .arg(bus),
        )?;
        node.query::<()>(
            redis::cmd("CONFIG")
                .arg("SET")
                .arg("cluster-announce-port")
                .arg(port),
        )?;
        let id = node.id()?;
        self.announced[i] = Some(port);
        self.wait_for(
            &format!("the cluster to learn that node {i} announces port {port}"),
            SETTLE_TIMEOUT,
            |cluster| {
                let mut stale = Vec::new();
                for (j, other) in cluster.nodes.iter().enumerate() {
                    if j == i || !other.is_running() {
                        continue;
                    }
                    let seen = other.view()?.into_iter().find(|n| n.id == id);
                    if seen.as_ref().map(|n| n.port) != Some(port) {
                        stale.push(format!("node {j} sees {seen:?}"));
                    }
                }
                Ok(stale.is_empty().then_some(()).ok_or(stale.join("; ")))
            },
        )
    }

    /// Runs `redis-cli` with `args` (and the password), and returns its output.
    fn redis_cli(&self, args: &[String]) -> Result<String> {
        run_cli(
            &program(REDIS_CLI_ENV, "redis-cli"),
            self.password.as_deref(),
            args,
        )
    }
}

/// Runs `program` (a `redis-cli`) with `args`, authenticated with `password`, and returns
/// its output.
fn run_cli(program: &str, password: Option<&str>, args: &[String]) -> Result<String> {
    let mut command = Command::new(program);
    if let Some(password) = password {
        command.args(["-a", password, "--no-auth-warning"]);
    }
    let output = command
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            let context = if e.kind() == std::io::ErrorKind::NotFound {
                format!(
                    "redis-cli not found (looked for `{program}`): install it with `apt-get install redis-tools` (Debian's redis-server package brings it), or point {REDIS_CLI_ENV} at the binary"
                )
            } else {
                format!("cannot run `{program}`")
            };
            Error::io(context, e)
        })?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // `--cluster` commands report some failures with `[ERR]` and a zero exit status.
    if output.status.success() && !text.contains("[ERR]") {
        return Ok(text);
    }
    let shown: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .take_while(|arg| !arg.starts_with("127.0.0.1"))
        .collect();
    Err(Error::io(
        format!(
            "`redis-cli {} ...` failed ({}); its output ends with:\n{}",
            shown.join(" "),
            output.status,
            tail(&text)
        ),
        std::io::Error::other("redis-cli failed"),
    ))
}

/// The program an environment variable names, else `default` on `PATH`.
fn program(variable: &str, default: &str) -> String {
    std::env::var(variable).unwrap_or_else(|_| default.to_owned())
}

/// A port from [`MIN_CLUSTER_PORT`] to [`MAX_CLUSTER_PORT`] that is free together with its
/// bus port (+ 10000) a moment ago, so never one a node of the cluster holds (the nodes
/// already started bind both). Another process may take one before redis-server binds
/// it; [`crate::NodeBuilder::start`] then picks another.
fn free_cluster_port() -> Result<u16> {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ std::process::id().wrapping_mul(2_654_435_761);
    let span = u32::from(MAX_CLUSTER_PORT - MIN_CLUSTER_PORT);
    for attempt in 0..PORT_ATTEMPTS as u32 {
        let offset = seed.wrapping_add(attempt.wrapping_mul(7_919)) % span;
        let port = MIN_CLUSTER_PORT + offset as u16;
        let bindable = |port: u16| TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok();
        if bindable(port) && bindable(port + 10_000) {
            return Ok(port);
        }
    }
    Err(Error::io(
        format!(
            "no free pair of ports (port, port + 10000) from {MIN_CLUSTER_PORT} to {MAX_CLUSTER_PORT} after {PORT_ATTEMPTS} tries"
        ),
        std::io::Error::from(std::io::ErrorKind::AddrInUse),
    ))
}

/// `name:value` lines of an `INFO`-style answer.
fn info_fields(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| line.trim().split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// `CLUSTER NODES` lines: `<id> <ip:port@cport[,hostname]> <flags> <primary> <ping-sent>
/// <pong-recv> <config-epoch> <link-state> <slot ranges...>`; slots being moved
/// (`[slot->-id]`, `[slot-<-id]`) are left out.
pub fn parse_cluster_nodes(text: &str) -> Vec<NodeView> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 {
                return None;
            }
            let address = fields[1].split([',', '@']).next()?;
            let port = address.rsplit_once(':')?.1.parse().ok()?;
            let flags: Vec<&str> = fields[2].split(',').collect();
            let slots = fields[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => s.parse().ok().map(|a| (a, a)),
                })
                .collect();
            Some(NodeView {
                id: fields[0].to_owned(),
                port,
                primary: flags.contains(&"master"),
                primary_id: (fields[3] != "-").then(|| fields[3].to_owned()),
                failed: flags.iter().any(|f| *f == "fail" || *f == "fail?"),
                myself: flags.contains(&"myself"),
                slots,
            })
        })
        .collect()
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_lines_are_parsed_with_roles_flags_and_slots() {
        let text = "\
07c37dfe 127.0.0.1:30004@40004 slave e7d1eecc 0 1426238317239 4 connected
67ed2db8 127.0.0.1:30002@40002,host.example master - 0 1426238316232 2 connected 5461-10922
292f8b36 127.0.0.1:30003@40003 master,fail - 0 1426238318243 3 disconnected 10923-16383 [77->-e7d1eecc]
e7d1eecc 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460 16000
6ec23923 :0@0 slave,noaddr e7d1eecc 0 1426238316232 6 disconnected
";
        let view = parse_cluster_nodes(text);

        assert_eq!(view.len(), 5);
        assert_eq!(view[0].primary_id.as_deref(), Some("e7d1eecc"));
        assert!(!view[0].primary && view[0].slots.is_empty());
        assert_eq!(view[1].port, 30002);
        assert_eq!(view[1].slots, [(5461, 10922)]);
        assert!(view[2].failed && view[2].serves(16383) && !view[2].serves(77));
        assert!(view[3].myself && view[3].serves(16000) && !view[3].serves(15999));
        assert_eq!(view[3].slot_count(), 5462);
        assert_eq!(view[4].port, 0);
    }

    #[test]
    fn ports_leave_room_for_the_bus_port() {
        let port = free_cluster_port().unwrap();
        assert!((MIN_CLUSTER_PORT..=MAX_CLUSTER_PORT).contains(&port));
        assert!(u32::from(port) + 10_000 <= u32::from(u16::MAX));
    }

    #[test]
    fn a_missing_redis_cli_is_named_with_how_to_install_it() {
        let err = run_cli("redis-cli-that-does-not-exist", None, &[]).unwrap_err();

        let message = err.to_string();
        assert!(message.starts_with("redis-cli not found"), "{message}");
        assert!(message.contains("apt-get install redis-tools"), "{message}");
        assert!(message.contains(REDIS_CLI_ENV), "{message}");
    }

    #[test]
    fn a_started_cluster_has_three_primaries_each_with_a_replica_covering_every_slot() {
        let cluster = Cluster::start().unwrap();

        let primaries = cluster.primaries().unwrap();
        assert_eq!(primaries.len(), 3, "{:?}", cluster.view());
        let view = cluster.view().unwrap();
        let slots: u32 = view.iter().map(NodeView::slot_count).sum();
        assert_eq!(slots, SLOTS);
        for primary in primaries {
            assert_eq!(cluster.replicas_of(primary).unwrap().len(), 1);
        }
        assert!(cluster.nodes().iter().all(|n| n.port() <= MAX_CLUSTER_PORT));
        let slot = cluster.slot_of("foo").unwrap();
        assert_eq!(slot, 12_182);
        let owner = cluster.owner_of(slot).unwrap();
        assert!(cluster.primaries().unwrap().contains(&owner));
    }
}
