//! Real `redis-server` processes owned by a test: start, pause, kill, restart, inspect.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use redis::IntoConnectionInfo as _;
use tally_ring::Ring;

use crate::error::{Error, Result};
use crate::process::send_signal;
use crate::ring::ring;

/// Environment variable naming the `redis-server` binary (default: `redis-server` on `PATH`).
pub const REDIS_SERVER_ENV: &str = "TALLY_REDIS_SERVER";

/// How many fresh ports [`NodeBuilder::start`] tries when another process takes the port
/// between the free-port probe and redis-server's own `bind`.
const PORT_ATTEMPTS: usize = 5;

/// Read/connect timeout of the kit's own assertion connections, so a helper called on a
/// paused node fails instead of hanging the test.
const HELPER_TIMEOUT: Duration = Duration::from_secs(2);

/// Lines of the server log quoted in start errors.
const LOG_TAIL_LINES: usize = 20;

/// Options for a [`RedisNode`]; made by [`RedisNode::builder`].
#[derive(Clone, Debug)]
pub struct NodeBuilder {
    program: Option<String>,
    aof: bool,
    password: Option<String>,
    start_timeout: Duration,
    /// Further `--name value` arguments of the server, in order.
    config: Vec<(String, String)>,
    pick_port: fn() -> Result<u16>,
}

impl Default for NodeBuilder {
    fn default() -> Self {
        Self {
            program: None,
            aof: false,
            password: None,
            start_timeout: Duration::from_secs(10),
            config: Vec::new(),
            pick_port: free_port,
        }
    }
}

impl NodeBuilder {
    /// Turns on the append-only file with `appendfsync always`, so every acknowledged write
    /// survives [`RedisNode::kill`] + [`RedisNode::restart`].
    pub fn aof(mut self, on: bool) -> Self {
        self.aof = on;
        self
    }

    /// Starts the server with `--requirepass`.
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// The `redis-server` binary to run (default: [`REDIS_SERVER_ENV`] if set, else
    /// `redis-server` on `PATH`).
    pub fn program(mut self, program: impl Into<String>) -> Self {
        self.program = Some(program.into());
        self
    }

    /// Longest wait for the server to answer after each start (default 10 s).
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// Starts the server with the configuration directive `name` set to `value`
    /// (`--name value`), after the kit's own (port, bind address, directory, AOF,
    /// password), e.g. `.config("cluster-enabled", "yes")`. Kept for every restart.
    pub fn config(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.push((name.into(), value.into()));
        self
    }

    /// How each start attempt picks the node's port (default [`free_port`]), e.g. one
    /// that also checks a second port the server will bind. A port another process takes
    /// before the server binds it is replaced by a new pick.
    pub fn pick_port(mut self, pick: fn() -> Result<u16>) -> Self {
        self.pick_port = pick;
        self
    }

    /// Starts the server on a free 127.0.0.1 port ([`NodeBuilder::pick_port`]) in a fresh
    /// temporary directory and waits until it answers commands.
    ///
    /// # Errors
    ///
    /// [`Error::RedisNotInstalled`] when there is no `redis-server`, [`Error::StartFailed`]
    /// (with the log tail) when it exits or does not answer in time.
    pub fn start(self) -> Result<RedisNode> {
        let dir = tempfile::Builder::new()
            .prefix("tally-redis-")
            .tempdir()
            .map_err(|e| Error::io("cannot create a temporary directory for redis-server", e))?;
        let mut node = RedisNode {
            child: None,
            port: (self.pick_port)()?,
            dir,
            options: self,
        };
        let mut attempt = 1;
        loop {
            let log_start = node.log_len();
            match node.spawn_and_wait() {
                Ok(()) => return Ok(node),
                Err(Error::StartFailed { .. })
                    if attempt < PORT_ATTEMPTS && node.log_says_port_taken(log_start) =>
                {
                    // Lost the race for the port to another process; try another one.
                    attempt += 1;
                    node.port = (node.options.pick_port)()?;
                }
                Err(err) => return Err(err),
            }
        }
    }
}

/// A `redis-server` child process bound to `127.0.0.1`, with its own temporary directory.
///
/// The process is killed (SIGKILL) and reaped when the value is dropped, which also happens
/// when a test panics, and the directory is removed afterwards. Helpers such as
/// [`RedisNode::get`] open a short-lived connection of their own, authenticated when the node
/// has a password, so assertions never go through the code under test.
#[derive(Debug)]
pub struct RedisNode {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    options: NodeBuilder,
}

impl RedisNode {
    /// Starts a node with default options (no persistence, no password).
    ///
    /// # Errors
    ///
    /// As [`NodeBuilder::start`].
    pub fn start() -> Result<Self> {
        Self::builder().start()
    }

    /// Options for a node: AOF, password, start timeout, further directives, its port.
    pub fn builder() -> NodeBuilder {
        NodeBuilder::default()
    }

    /// The TCP port the node listens on (stable across [`RedisNode::restart`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// `redis://127.0.0.1:port`, without credentials.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The node's password, if it was started with one.
    pub fn password(&self) -> Option<&str> {
        self.options.password.as_deref()
    }

    /// Process id of the running server, `None` after [`RedisNode::kill`].
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The node's working directory (AOF files live here).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The file receiving the server's stdout and stderr.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// Stops the process with SIGSTOP: connections stay open, nothing is answered.
    ///
    /// # Errors
    ///
    /// [`Error::Signal`] if the node is not running or `kill` fails.
    pub fn pause(&self) -> Result<()> {
        self.signal("STOP")
    }

    /// Continues a paused process with SIGCONT; it then answers everything queued meanwhile.
    ///
    /// # Errors
    ///
    /// [`Error::Signal`] if the node is not running or `kill` fails.
    pub fn resume(&self) -> Result<()> {
        self.signal("CONT")
    }

    /// Kills the process with SIGKILL and waits for it. Without AOF its data is gone.
    /// Killing a node that is not running does nothing.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the process cannot be killed or reaped.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            let pid = child.id();
            child
                .kill()
                .map_err(|e| Error::io(format!("cannot kill redis-server (pid {pid})"), e))?;
            child
                .wait()
                .map_err(|e| Error::io(format!("cannot reap redis-server (pid {pid})"), e))?;
        }
        Ok(())
    }

    /// Kills the process if it runs, then starts it again on the same port and directory,
    /// so an AOF node comes back with its data. Waits until it answers.
    ///
    /// # Errors
    ///
    /// As [`RedisNode::kill`] and [`NodeBuilder::start`].
    pub fn restart(&mut self) -> Result<()> {
        self.kill()?;
        self.spawn_and_wait()
    }

    /// A client for this node, authenticated if it has a password.
    ///
    /// # Errors
    ///
    /// [`Error::Command`] if the connection info is rejected.
    pub fn client(&self) -> Result<redis::Client> {
        let err = |source| Error::Command {
            command: "connect".into(),
            port: self.port,
            source,
        };
        let mut info = self.url().into_connection_info().map_err(err)?;
        if let Some(password) = &self.options.password {
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
        }
        redis::Client::open(info).map_err(err)
    }

    /// Runs one command on a fresh connection and converts the reply.
    ///
    /// # Errors
    ///
    /// [`Error::Command`] when connecting, the command or the conversion fails (also after
    /// two seconds without an answer, e.g. on a paused node).
    pub fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T> {
        let command = command_name(cmd);
        let mut conn = self.connection(&command)?;
        cmd.query(&mut conn).map_err(|source| Error::Command {
            command,
            port: self.port,
            source,
        })
    }

    /// A fresh connection for `command`, with the helpers' timeouts (a paused node fails
    /// it instead of hanging the test).
    pub(crate) fn connection(&self, command: &str) -> Result<redis::Connection> {
        let err = |source| Error::Command {
            command: command.to_owned(),
            port: self.port,
            source,
        };
        let conn = self
            .client()?
            .get_connection_with_timeout(HELPER_TIMEOUT)
            .map_err(err)?;
        conn.set_read_timeout(Some(HELPER_TIMEOUT)).map_err(err)?;
        conn.set_write_timeout(Some(HELPER_TIMEOUT)).map_err(err)?;
        Ok(conn)
    }

    /// `GET key`.
    ///
    /// # Errors
    ///
    /// As [`RedisNode::query`].
    pub fn get(&self, key: &str) -> Result<Option<String>> {
        self.query(redis::cmd("GET").arg(key))
    }

    /// `GET key` as an integer (`None` when the key does not exist).
    ///
    /// # Errors
    ///
    /// As [`RedisNode::query`]; also when the value is not an integer.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>> {
        self.query(redis::cmd("GET").arg(key))
    }

    /// `ZSCORE key member`.
    ///
    /// # Errors
    ///
    /// As [`RedisNode::query`].
    pub fn zscore(&self, key: &str, member: &str) -> Result<Option<f64>> {
        self.query(redis::cmd("ZSCORE").arg(key).arg(member))
    }

    /// Every member of the sorted set `key` with its score as a whole count
    /// (`ZRANGE key 0 -1 WITHSCORES`), lowest score first.
    ///
    /// # Errors
    ///
    /// As [`RedisNode::query`].
    pub fn zrange_counts(&self, key: &str) -> Result<Vec<(String, u64)>> {
        self.query(
            redis::cmd("ZRANGE")
                .arg(key)
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES"),
        )
    }

    /// `HGET key field`.
    ///
    /// # Errors
    ///
    /// As [`RedisNode::query`].
    pub fn hget(&self, key: &str, field: &str) -> Result<Option<String>> {
        self.query(redis::cmd("HGET").arg(key).arg(field))
    }

    /// Every key matching `pattern` (`KEYS`; fine for test-sized data), sorted.
    ///
    /// # Errors
    ///
    /// As [`RedisNode::query`].
    pub fn keys(&self, pattern: &str) -> Result<Vec<String>> {
        let mut keys: Vec<String> = self.query(redis::cmd("KEYS").arg(pattern))?;
        keys.sort_unstable();
        Ok(keys)
    }

    /// Number of keys in the selected database (`DBSIZE`).
    ///
    /// # Errors
    ///
    /// As [`RedisNode::query`].
    pub fn dbsize(&self) -> Result<u64> {
        self.query(&redis::cmd("DBSIZE"))
    }

    /// Calls per command since start, from `INFO commandstats`, keyed by lowercase command
    /// name (`evalsha`, `incrby`, `ping`, ...).
    ///
    /// # Errors
    ///
    /// As [`RedisNode::query`].
    pub fn info_commandstats(&self) -> Result<BTreeMap<String, u64>> {
        let info: String = self.query(redis::cmd("INFO").arg("commandstats"))?;
        Ok(parse_commandstats(&info))
    }

    fn signal(&self, signal: &'static str) -> Result<()> {
        let Some(pid) = self.pid() else {
            return Err(Error::Signal {
                signal,
                process: "redis-server",
                pid: 0,
                detail: "the node is not running".into(),
            });
        };
        send_signal(pid, signal, "redis-server")
    }

    fn program(&self) -> String {
        self.options.program.clone().unwrap_or_else(|| {
            std::env::var(REDIS_SERVER_ENV).unwrap_or_else(|_| "redis-server".to_owned())
        })
    }

    fn spawn_and_wait(&mut self) -> Result<()> {
        let program = self.program();
        let log_path = self.log_path();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| Error::io(format!("cannot open {}", log_path.display()), e))?;
        let log_err = log
            .try_clone()
            .map_err(|e| Error::io(format!("cannot open {}", log_path.display()), e))?;
        let mut cmd = Command::new(&program);
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path());
        if self.options.aof {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        }
        if let Some(password) = &self.options.password {
            cmd.arg("--requirepass").arg(password);
        }
        for (name, value) in &self.options.config {
            cmd.arg(format!("--{name}")).arg(value);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|source| {
                if source.kind() == std::io::ErrorKind::NotFound {
                    Error::RedisNotInstalled {
                        program: program.clone(),
                    }
                } else {
                    Error::Spawn {
                        program: program.clone(),
                        source,
                    }
                }
            })?;
        self.child = Some(child);
        self.wait_ready()
    }

    /// Polls until the server answers a read (not only PING: while an AOF loads, Redis
    /// answers PING but refuses reads with LOADING). The read names no key, so a cluster
    /// node answers it too, before it serves any slot.
    fn wait_ready(&mut self) -> Result<()> {
        let started = Instant::now();
        let client = self.client()?;
        loop {
            if let Some(status) = self.exited()? {
                self.child = None;
                return Err(self.start_failed(started, format!("redis-server exited: {status}")));
            }
            let answered = client
                .get_connection_with_timeout(Duration::from_millis(250))
                .and_then(|mut conn| {
                    conn.set_read_timeout(Some(Duration::from_millis(500)))?;
                    redis::cmd("PING").query::<String>(&mut conn)?;
                    redis::cmd("DBSIZE").query::<u64>(&mut conn)
                });
            let last = match answered {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            if started.elapsed() >= self.options.start_timeout {
                // Leave nothing behind: a half-started server would outlive the error.
                let _ = self.kill();
                return Err(self.start_failed(started, format!("not answering: {last}")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn exited(&mut self) -> Result<Option<ExitStatus>> {
        match &mut self.child {
            Some(child) => child
                .try_wait()
                .map_err(|e| Error::io("cannot poll redis-server", e)),
            None => Ok(None),
        }
    }

    fn start_failed(&self, started: Instant, reason: String) -> Error {
        Error::StartFailed {
            port: self.port,
            waited: started.elapsed(),
            reason,
            log: self.log_path(),
            log_tail: log_tail(&self.log_path()),
        }
    }

    fn log_len(&self) -> u64 {
        std::fs::metadata(self.log_path()).map_or(0, |m| m.len())
    }

    /// Whether the log written since byte `from` reports a failed bind.
    fn log_says_port_taken(&self, from: u64) -> bool {
        let Ok(mut file) = File::open(self.log_path()) else {
            return false;
        };
        let mut bytes = Vec::new();
        if file.seek(SeekFrom::Start(from)).is_err() || file.read_to_end(&mut bytes).is_err() {
            return false;
        }
        String::from_utf8_lossy(&bytes).contains("Address already in use")
    }
}

impl Drop for RedisNode {
    fn drop(&mut self) {
        // Best effort: there is no one to report to, and a stopped (SIGSTOP) process dies
        // from SIGKILL too.
        let _ = self.kill();
    }
}

/// A set of nodes started together, e.g. the three shards of an integration test.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisNode>,
}

impl RedisCluster {
    /// Starts `n` independent nodes with default options.
    ///
    /// # Errors
    ///
    /// As [`NodeBuilder::start`]; nodes already started are stopped.
    pub fn start(n: usize) -> Result<Self> {
        Self::start_with(n, &RedisNode::builder())
    }

    /// Starts `n` independent nodes with the given options.
    ///
    /// # Errors
    ///
    /// As [`NodeBuilder::start`]; nodes already started are stopped.
    pub fn start_with(n: usize, options: &NodeBuilder) -> Result<Self> {
        let nodes = (0..n)
            .map(|_| options.clone().start())
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { nodes })
    }

    /// The nodes, in start order.
    pub fn nodes(&self) -> &[RedisNode] {
        &self.nodes
    }

    /// Node `i` (panics when out of range, like indexing).
    pub fn node(&self, i: usize) -> &RedisNode {
        &self.nodes[i]
    }

    /// Node `i`, mutably (to kill or restart it).
    pub fn node_mut(&mut self, i: usize) -> &mut RedisNode {
        &mut self.nodes[i]
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the cluster has no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The nodes' URLs joined by commas, the format of `REDIS_NODES`.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(RedisNode::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The ring a tally server given [`RedisCluster::urls`] builds ([`ring`](fn@crate::ring)
    /// over the nodes' `127.0.0.1:port` names): which node owns a key.
    pub fn ring(&self) -> Ring<String> {
        let names: Vec<String> = self.nodes.iter().map(|n| n.addr().to_string()).collect();
        ring(&names)
    }

    /// Index of the node that owns `key` on [`RedisCluster::ring`].
    pub fn owner(&self, key: &str) -> usize {
        self.ring().lookup_index(key.as_bytes())
    }
}

/// A port that was free a moment ago: bind port 0, read the port, release it.
///
/// Another process may take it before redis-server binds it; [`NodeBuilder::start`] retries
/// on a new port when the server log says so.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| Error::io("cannot bind 127.0.0.1:0 to find a free port", e))?;
    let port = listener
        .local_addr()
        .map_err(|e| Error::io("cannot read the address of a bound socket", e))?
        .port();
    Ok(port)
}

/// A command's name for errors: its first word, and the second for the commands that
/// have subcommands (`CLUSTER INFO`, `CONFIG SET`, `INFO replication`).
fn command_name(cmd: &redis::Cmd) -> String {
    let words: Vec<String> = cmd
        .args_iter()
        .take(2)
        .map(|arg| match arg {
            redis::Arg::Simple(bytes) => String::from_utf8_lossy(bytes).into_owned(),
            _ => String::new(),
        })
        .collect();
    match words.first().map(String::as_str) {
        Some("CLUSTER" | "CONFIG" | "INFO") => words.join(" "),
        _ => words.first().cloned().unwrap_or_default(),
    }
}

fn log_tail(path: &Path) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::from("(no log file)");
    };
    // The last 8 KiB is plenty for LOG_TAIL_LINES lines of redis-server output.
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(8192)));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

fn parse_commandstats(info: &str) -> BTreeMap<String, u64> {
    crate::commandstats::commandstats(info)
        .into_iter()
        .map(|stat| (stat.name, stat.calls))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commandstats_lines_are_parsed_into_call_counts() {
        let info = "# Commandstats\r\ncmdstat_evalsha:calls=3,usec=41,usec_per_call=13.67,rejected_calls=0,failed_calls=0\r\ncmdstat_ping:calls=12,usec=3\r\n";
        let stats = parse_commandstats(info);
        assert_eq!(stats.get("evalsha"), Some(&3));
        assert_eq!(stats.get("ping"), Some(&12));
        assert_eq!(stats.len(), 2);
    }

    fn config_get(node: &RedisNode, name: &str) -> String {
        let (_, value): (String, String) = node
            .query(redis::cmd("CONFIG").arg("GET").arg(name))
            .unwrap();
        value
    }

    #[test]
    fn further_directives_reach_the_server_and_outlive_a_restart() {
        let mut node = RedisNode::builder().config("hz", "42").start().unwrap();
        assert_eq!(config_get(&node, "hz"), "42");

        node.restart().unwrap();

        assert_eq!(config_get(&node, "hz"), "42");
    }

    #[test]
    fn free_port_returns_a_bindable_port() {
        let port = free_port().unwrap();
        assert_ne!(port, 0);
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
    }
}
