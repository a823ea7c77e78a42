//! One Redis node: its connection pool, its health state, the wrapper every command goes
//! through (timeouts, error classification, metrics, marking the node down), and the first
//! contact with it (its identity and its eviction policy).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use deadpool_redis::{Connection, Pool, PoolError};
use redis::{FromRedisValue, RedisResult};
use tally_counter::ShardHealth;

use crate::config::{NodeUrl, RedisConfig};
use crate::error::{Error, Result, is_auth_error};
use crate::guard::{RingCheck, Seen};
use crate::layout::{COUNTER_MARKS_KEY, URLS_MARKS_KEY};
use crate::lock;

/// The key holding a node's identity: a random id set once (`SET NX`) by the first tally
/// store that reaches the node (in its database), and read back by every store after.
///
/// Two entries of `REDIS_NODES` whose nodes hold the same id reach the same Redis
/// database (two addresses of one server, a DNS alias, a proxy): counting through both
/// would split one node's keys over two ring positions, so the store refuses to start, or
/// keeps the later entry down when it answers only later.
pub const NODE_ID_KEY: &str = "tally:node-id";

/// Connections of a node's ranking pool: sorted-set reads (`top`, `len`) use these and
/// never the `REDIS_POOL_SIZE` connections of batch writes, reads and resets.
pub const RANKING_CONNECTIONS: usize = 2;

/// Connections of a node's probe pool: health pings and the first contact use these only,
/// so a check never waits for a connection behind busy commands.
const PROBE_CONNECTIONS: usize = 2;

/// Commands on the ranking pool; every other op uses the main pool. A slow answer to one
/// of them (a deep ranking moves a lot of data) does not mark the node down: the health
/// check, on its own connections, decides that. A failed connection still does.
const RANKING_OPS: [&str; 4] = ["top", "len", "count_at_least", "window"];

fn is_ranking(op: &str) -> bool {
    RANKING_OPS.contains(&op)
}

/// Commands on the ranking pool wait for their answer at least this long, or
/// `REDIS_TIMEOUT` if longer: a deep ranking's answer is large (110,000 members of up to
/// 2 KB at the bounds) and takes time to move, which says nothing about the node.
pub const RANKING_TIMEOUT_FLOOR: Duration = Duration::from_secs(10);

/// Pause between connection attempts: `attempt * CONNECT_BACKOFF`.
const CONNECT_BACKOFF: Duration = Duration::from_millis(50);

pub(crate) struct Node {
    name: String,
    /// The entry as in `REDIS_NODES`, password replaced by `***`, for messages that must
    /// tell two entries of one node apart.
    url: String,
    /// Batch writes, reads, resets, sweeps: [`RedisConfig::pool_size`] connections.
    pool: Pool,
    /// Sorted-set reads for rankings: [`RANKING_CONNECTIONS`].
    ranking_pool: Pool,
    /// Health pings and identification: [`PROBE_CONNECTIONS`].
    probe_pool: Pool,
    timeout: Duration,
    attempts: u32,
    /// A `std::sync::Mutex`: held only to read or flip the state, never across `.await`.
    state: Mutex<State>,
}

struct State {
    up: bool,
    since: SystemTime,
    /// Why the node was last marked down.
    reason: String,
    /// Set when the node turned out to be the same database as another entry: it stays
    /// down, unprobed, for the life of the store.
    disabled: bool,
}

/// What a health check found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Probe {
    /// The node did not answer, or is disabled; it is marked down.
    Down,
    /// The node answered; it is marked up.
    Up,
    /// The node answered for the first time, holds this id under [`NODE_ID_KEY`], and its
    /// ring record was checked (see [`crate::guard`]). It is not marked up yet: the store
    /// first checks that no other entry holds the same id, and what the ring check saw.
    FirstContact(String, Seen),
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("name", &self.name)
            .field("up", &self.state().up)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Builds the node's pool; connects lazily, so a node that is down does not fail this.
    pub(crate) fn new(url: &NodeUrl, config: &RedisConfig) -> Result<Self> {
        let name = url.name().to_owned();
        // `NodeUrl`'s `Display` is the crate's redaction of a parsed URL (`:***@`).
        let shown = url.to_string();
        let invalid = |e: redis::RedisError| Error::InvalidUrl {
            url: url.to_string(),
            reason: e.to_string(),
        };
        let info = url
            .connection_info(config.password.as_ref(), config.db)
            .map_err(invalid)?;
        // The client's own response timeout is off: each command is bounded by
        // `tokio::time::timeout` below, which reports a timeout as such.
        let connection = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(None);
        let pool_of = |size: usize| -> Result<Pool> {
            let manager =
                deadpool_redis::Manager::new_with_config(info.clone(), connection.clone())
                    .map_err(invalid)?;
            Pool::builder(manager)
                .max_size(size)
                .build()
                .map_err(|e| Error::Config {
                    field: "REDIS_POOL_SIZE",
                    problem: format!("cannot build the connection pool of {name}: {e}"),
                })
        };
        let pool = pool_of(config.pool_size)?;
        let ranking_pool = pool_of(RANKING_CONNECTIONS)?;
        let probe_pool = pool_of(PROBE_CONNECTIONS)?;
        metrics::gauge!("tally_redis_node_up", "node" => name.clone()).set(1.0);
        Ok(Self {
            name,
            url: shown,
            pool,
            ranking_pool,
            probe_pool,
            timeout: config.timeout,
            attempts: config.retry_attempts,
            state: Mutex::new(State {
                up: true,
                since: SystemTime::now(),
                reason: String::new(),
                disabled: false,
            }),
        })
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The node's entry in `REDIS_NODES`, password replaced by `***`.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    pub(crate) fn is_up(&self) -> bool {
        self.state().up
    }

    pub(crate) fn health(&self) -> ShardHealth {
        let state = self.state();
        ShardHealth {
            name: self.name.clone(),
            up: state.up,
            since: state.since,
        }
    }

    /// Marks the node up, unless it is disabled.
    pub(crate) fn mark_up(&self) {
        let mut state = self.state();
        if !state.up && !state.disabled {
            state.up = true;
            state.since = SystemTime::now();
            drop(state);
            metrics::gauge!("tally_redis_node_up", "node" => self.name.clone()).set(1.0);
            tracing::info!(node = %self.name, "redis node is up");
        }
    }

    /// Records the node down for `error` (in `state`, held by the caller); true when it
    /// was up until now.
    fn set_down(&self, state: &mut State, error: &Error) -> bool {
        state.reason = error.to_string();
        let was_up = state.up;
        if was_up {
            state.up = false;
            state.since = SystemTime::now();
        }
        metrics::gauge!("tally_redis_node_up", "node" => self.name.clone()).set(0.0);
        was_up
    }

    /// Marks the node down for `error`, logging it when it was up.
    pub(crate) fn mark_down(&self, error: &Error) {
        let mut state = self.state();
        if self.set_down(&mut state, error) {
            drop(state);
            tracing::warn!(
                node = %self.name,
                error.message = %error,
                error.cause_chain = ?error,
                "redis node marked down; its keys wait until it answers a health check"
            );
        }
    }

    /// Takes the node out of service for the life of the store: it is marked down with
    /// `error` as the reason, never probed again, and the error is logged once.
    pub(crate) fn disable(&self, error: &Error) {
        let mut state = self.state();
        if state.disabled {
            return;
        }
        state.disabled = true;
        self.set_down(&mut state, error);
        drop(state);
        tracing::error!(
            node = %self.name,
            error.message = %error,
            error.cause_chain = ?error,
            "redis node taken out of service: it stays down, and its keys wait, until the server restarts with a corrected REDIS_NODES"
        );
    }

    /// Sends `request` for `op` on a connection of the op's pool: the one-command case of
    /// [`Node::checkout`] followed by [`Node::send`].
    pub(crate) async fn run<T: FromRedisValue + Send>(
        &self,
        op: &'static str,
        request: &impl Request,
    ) -> Result<T> {
        let mut conn = self.checkout(op).await?;
        self.send(&mut conn, op, request).await
    }

    /// A connection for `op`, failing fast while the node is marked down: from the ranking
    /// pool for [`RANKING_OPS`], from the main pool otherwise.
    pub(crate) async fn checkout(&self, op: &'static str) -> Result<Connection> {
        {
            let state = self.state();
            if !state.up {
                let err = Error::NodeUnavailable {
                    node: self.name.clone(),
                    reason: state.reason.clone(),
                };
                drop(state);
                self.count_error(op, &err);
                return Err(err);
            }
        }
        let pool = if is_ranking(op) {
            &self.ranking_pool
        } else {
            &self.pool
        };
        let result = self.connect(pool).await;
        self.observe(op, result)
    }

    /// Sends `request` for `op` on `conn`, bounded by the timeout (for [`RANKING_OPS`], at
    /// least [`RANKING_TIMEOUT_FLOOR`]), and records the outcome.
    pub(crate) async fn send<T: FromRedisValue + Send>(
        &self,
        conn: &mut Connection,
        op: &'static str,
        request: &impl Request,
    ) -> Result<T> {
        let started = Instant::now();
        let timeout = if is_ranking(op) {
            self.timeout.max(RANKING_TIMEOUT_FLOOR)
        } else {
            self.timeout
        };
        let result = match tokio::time::timeout(timeout, request.send(conn)).await {
            Err(_) => Err(Error::Timeout {
                node: self.name.clone(),
                op,
                after: timeout,
            }),
            Ok(Err(source)) => Err(self.classify(op, source)),
            Ok(Ok(value)) => Ok(value),
        };
        metrics::counter!("tally_redis_commands_total", "node" => self.name.clone(), "op" => op)
            .increment(1);
        metrics::histogram!("tally_redis_command_seconds", "node" => self.name.clone(), "op" => op)
            .record(started.elapsed().as_secs_f64());
        self.observe(op, result)
    }

    /// Pings the node whatever its state (unless it is disabled) and records the outcome.
    ///
    /// With `identify`, a node that answers is also asked for its identity and checked
    /// against the store's ring (claiming the ring on a node that records none when its
    /// flag is set), and its eviction policy is checked: the answer is then
    /// [`Probe::FirstContact`] and marking it up is left to the caller.
    pub(crate) async fn probe(&self, identify: Option<(&RingCheck, bool)>) -> Probe {
        if self.state().disabled {
            return Probe::Down;
        }
        let result = match self.observe("ping", self.connect(&self.probe_pool).await) {
            Ok(mut conn) => {
                match self
                    .send::<String>(&mut conn, "ping", &redis::cmd("PING"))
                    .await
                {
                    Ok(_) => match identify {
                        Some((ring, claim)) => {
                            self.first_contact(&mut conn, ring, claim).await.map(Some)
                        }
                        None => Ok(None),
                    },
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(Some((id, seen))) => Probe::FirstContact(id, seen),
            Ok(None) => {
                self.mark_up();
                Probe::Up
            }
            Err(e) => {
                // Not a failure of the node by itself (an odd answer to PING, an error reply
                // to the identity), but the check did not pass either. Otherwise already
                // marked down by `observe`.
                if !e.marks_node_down() {
                    self.mark_down(&e);
                }
                Probe::Down
            }
        }
    }

    /// The node's id under [`NODE_ID_KEY`], set to a fresh random value if it has none;
    /// then the ring check and the eviction-policy check.
    async fn first_contact(
        &self,
        conn: &mut Connection,
        ring: &RingCheck,
        claim: bool,
    ) -> Result<(String, Seen)> {
        let candidate = format!("{:032x}", rand::random::<u128>());
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("SET")
            .arg(NODE_ID_KEY)
            .arg(&candidate)
            .arg("NX")
            .ignore()
            .cmd("GET")
            .arg(NODE_ID_KEY);
        let (id,): (Option<String>,) = self.send(conn, "identify", &pipe).await?;
        let id = id.ok_or_else(|| Error::Protocol {
            node: self.name.clone(),
            op: "identify",
            detail: format!("{NODE_ID_KEY} is missing right after SET NX"),
        })?;
        let seen = self.check_ring(conn, ring, claim).await?;
        self.check_eviction_policy(conn).await;
        Ok((id, seen))
    }

    /// Runs the ring check on `conn` (see [`crate::guard`]).
    async fn check_ring(
        &self,
        conn: &mut Connection,
        ring: &RingCheck,
        claim: bool,
    ) -> Result<Seen> {
        let reply: Vec<String> = self.send(conn, "ring-check", &ring.check(claim)).await?;
        Seen::from_reply(&reply).map_err(|detail| Error::Protocol {
            node: self.name.clone(),
            op: "ring-check",
            detail,
        })
    }

    /// Records the store's ring on the node if it has none, on a connection of the probe
    /// pool; what the check saw.
    pub(crate) async fn claim_ring(&self, ring: &RingCheck) -> Result<Seen> {
        let mut conn = self.observe("ring-check", self.connect(&self.probe_pool).await)?;
        self.check_ring(&mut conn, ring, true).await
    }

    /// Refreshes the store's lease on the node (probe pool). `Ok(Some(marker))` when a
    /// reshard has begun on it: the lease is dropped instead.
    pub(crate) async fn refresh_lease(&self, ring: &RingCheck) -> Result<Option<String>> {
        let mut conn = self.observe("lease", self.connect(&self.probe_pool).await)?;
        let marker: String = self.send(&mut conn, "lease", &ring.refresh()).await?;
        Ok((!marker.is_empty()).then_some(marker))
    }

    /// Deletes the store's lease on the node (probe pool).
    pub(crate) async fn release_lease(&self, ring: &RingCheck) -> Result<()> {
        let mut conn = self.observe("lease", self.connect(&self.probe_pool).await)?;
        self.send::<u64>(&mut conn, "lease", &ring.release())
            .await?;
        Ok(())
    }

    /// Warns when the node may evict any key under memory pressure, the high-water marks
    /// included. Best effort: `CONFIG` may be disabled, renamed or refused by an ACL.
    async fn check_eviction_policy(&self, conn: &mut Connection) {
        let mut cmd = redis::cmd("CONFIG");
        cmd.arg("GET").arg("maxmemory-policy");
        let answer = tokio::time::timeout(
            self.timeout,
            cmd.query_async::<HashMap<String, String>>(&mut **conn),
        )
        .await;
        let policy = match answer {
            Ok(Ok(mut reply)) => reply.remove("maxmemory-policy"),
            Ok(Err(e)) => {
                tracing::debug!(
                    node = %self.name,
                    error.message = %e,
                    "cannot read maxmemory-policy (CONFIG disabled, renamed or not allowed); make sure it is noeviction or volatile-*"
                );
                return;
            }
            Err(_) => {
                tracing::debug!(node = %self.name, after = ?self.timeout, "CONFIG GET maxmemory-policy timed out");
                return;
            }
        };
        match policy {
            Some(policy) if evicts_any_key(&policy) => tracing::warn!(
                node = %self.name,
                policy = %policy,
                "redis node {} runs with maxmemory-policy {policy}: at maxmemory it may evict the high-water marks ({COUNTER_MARKS_KEY}, {URLS_MARKS_KEY}), and a batch retried after that would be counted twice; set maxmemory-policy to noeviction or a volatile-* policy",
                self.name
            ),
            Some(policy) => {
                tracing::debug!(node = %self.name, policy = %policy, "maxmemory-policy keeps the marks");
            }
            None => {
                tracing::debug!(node = %self.name, "CONFIG GET maxmemory-policy answered no value")
            }
        }
    }

    /// Gets a connection of `pool`, trying to open one up to `attempts` times.
    async fn connect(&self, pool: &Pool) -> Result<Connection> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let source = match tokio::time::timeout(self.timeout, pool.get()).await {
                Ok(Ok(conn)) => return Ok(conn),
                Err(_) => {
                    return Err(Error::Timeout {
                        node: self.name.clone(),
                        op: "connect",
                        after: self.timeout,
                    });
                }
                Ok(Err(PoolError::Backend(source))) => source,
                Ok(Err(source)) => {
                    return Err(Error::Pool {
                        node: self.name.clone(),
                        source,
                    });
                }
            };
            if is_auth_error(&source) {
                return Err(Error::Auth {
                    node: self.name.clone(),
                    source,
                });
            }
            if attempt >= self.attempts {
                return Err(Error::Connect {
                    node: self.name.clone(),
                    attempts: attempt,
                    source,
                });
            }
            tokio::time::sleep(CONNECT_BACKOFF * attempt).await;
        }
    }

    fn classify(&self, op: &'static str, source: redis::RedisError) -> Error {
        let node = self.name.clone();
        if is_auth_error(&source) {
            Error::Auth { node, source }
        } else if source.is_io_error() || source.is_connection_dropped() || source.is_timeout() {
            Error::Connection { node, op, source }
        } else {
            Error::Redis { node, op, source }
        }
    }

    /// Metrics and health bookkeeping for a finished step.
    fn observe<T>(&self, op: &'static str, result: Result<T>) -> Result<T> {
        if let Err(e) = &result {
            self.count_error(op, e);
            let slow_ranking = is_ranking(op) && matches!(e, Error::Timeout { .. });
            if e.marks_node_down() && !slow_ranking {
                self.mark_down(e);
            }
        }
        result
    }

    fn count_error(&self, op: &'static str, error: &Error) {
        metrics::counter!(
            "tally_redis_errors_total",
            "node" => self.name.clone(),
            "op" => op,
            "kind" => error.kind_label()
        )
        .increment(1);
    }
}

/// Whether a `maxmemory-policy` may evict keys without a TTL, such as the high-water marks:
/// the `allkeys-*` policies.
pub(crate) fn evicts_any_key(policy: &str) -> bool {
    policy.trim().to_ascii_lowercase().starts_with("allkeys-")
}

/// What [`Node::send`] sends: a command, a pipeline (`MULTI` or not) or a script
/// invocation, each with its own client call.
pub(crate) trait Request: Sync {
    fn send<T: FromRedisValue + Send>(
        &self,
        conn: &mut Connection,
    ) -> impl Future<Output = RedisResult<T>> + Send;
}

impl Request for redis::Cmd {
    fn send<T: FromRedisValue + Send>(
        &self,
        conn: &mut Connection,
    ) -> impl Future<Output = RedisResult<T>> + Send {
        self.query_async(conn)
    }
}

impl Request for redis::Pipeline {
    fn send<T: FromRedisValue + Send>(
        &self,
        conn: &mut Connection,
    ) -> impl Future<Output = RedisResult<T>> + Send {
        self.query_async(conn)
    }
}

impl Request for redis::ScriptInvocation<'_> {
    fn send<T: FromRedisValue + Send>(
        &self,
        conn: &mut Connection,
    ) -> impl Future<Output = RedisResult<T>> + Send {
        self.invoke_async(conn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node over a real redis-server with a small command pool and a short timeout.
    fn node_with_pool(url: &str, pool_size: usize) -> Node {
        let mut config = RedisConfig::from_urls(url).expect("a test URL");
        config.pool_size = pool_size;
        config.timeout = Duration::from_millis(500);
        config.retry_attempts = 1;
        Node::new(&config.nodes[0], &config).expect("a node")
    }

    #[tokio::test]
    async fn health_pings_do_not_wait_for_busy_command_or_ranking_connections() {
        let redis = tally_testkit::RedisNode::start().expect("redis-server");
        let node = node_with_pool(&redis.url(), 2);
        // Every connection that commands and rankings may use, checked out and held, as
        // long batches and deep rankings hold them.
        let mut held = Vec::new();
        for _ in 0..2 {
            held.push(node.checkout("get").await.expect("a command connection"));
        }
        for _ in 0..RANKING_CONNECTIONS {
            held.push(node.checkout("top").await.expect("a ranking connection"));
        }
        // A further command waits for one of them, and gives up; a ping would too if it
        // had to wait for the same connections.
        assert!(
            matches!(node.checkout("get").await, Err(Error::Timeout { .. })),
            "the command pool is not exhausted"
        );
        node.mark_up();

        assert_eq!(node.probe(None).await, Probe::Up);
        assert!(node.is_up());
        drop(held);
    }

    #[tokio::test]
    async fn a_ranking_that_waits_past_the_timeout_does_not_mark_the_node_down() {
        let redis = tally_testkit::RedisNode::start().expect("redis-server");
        let node = node_with_pool(&redis.url(), 2);
        let mut held = Vec::new();
        for _ in 0..RANKING_CONNECTIONS {
            held.push(node.checkout("top").await.expect("a ranking connection"));
        }

        let waited = node.checkout("top").await;

        assert!(
            matches!(waited, Err(Error::Timeout { .. })),
            "{:?}",
            waited.err()
        );
        assert!(node.is_up(), "a busy ranking pool marked the node down");
        // A command timing out the same way does.
        let mut commands = Vec::new();
        for _ in 0..2 {
            commands.push(node.checkout("get").await.expect("a command connection"));
        }
        assert!(matches!(
            node.checkout("get").await,
            Err(Error::Timeout { .. })
        ));
        assert!(!node.is_up(), "a timed-out command left the node up");
    }

    #[test]
    fn only_allkeys_policies_may_evict_the_marks() {
        for policy in [
            "allkeys-lru",
            "allkeys-lfu",
            "allkeys-random",
            "ALLKEYS-LRU",
        ] {
            assert!(evicts_any_key(policy), "{policy}");
        }
        for policy in [
            "noeviction",
            "volatile-lru",
            "volatile-lfu",
            "volatile-random",
            "volatile-ttl",
            "",
        ] {
            assert!(!evicts_any_key(policy), "{policy}");
        }
    }
}
