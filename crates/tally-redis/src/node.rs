//! One Redis node: its connection pool, its health state, and the wrapper every command
//! goes through (timeouts, error classification, metrics, marking the node down).

use std::future::Future;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use deadpool_redis::{Connection, Pool, PoolError};
use tally_counter::ShardHealth;

use crate::config::{NodeUrl, RedisConfig};
use crate::error::{Error, Result, is_auth_error};

/// Pause between connection attempts: `attempt * CONNECT_BACKOFF`.
const CONNECT_BACKOFF: Duration = Duration::from_millis(50);

pub(crate) struct Node {
    name: String,
    pool: Pool,
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
        let manager =
            deadpool_redis::Manager::new_with_config(info, connection).map_err(invalid)?;
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .build()
            .map_err(|e| Error::Config {
                field: "REDIS_POOL_SIZE",
                problem: format!("cannot build the connection pool of {name}: {e}"),
            })?;
        metrics::gauge!("tally_redis_node_up", "node" => name.clone()).set(1.0);
        Ok(Self {
            name,
            pool,
            timeout: config.timeout,
            attempts: config.retry_attempts,
            state: Mutex::new(State {
                up: true,
                since: SystemTime::now(),
                reason: String::new(),
            }),
        })
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Plain data: a panic elsewhere cannot leave it inconsistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
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

    fn mark_up(&self) {
        let mut state = self.state();
        if !state.up {
            state.up = true;
            state.since = SystemTime::now();
            drop(state);
            metrics::gauge!("tally_redis_node_up", "node" => self.name.clone()).set(1.0);
            tracing::info!(node = %self.name, "redis node is up");
        }
    }

    fn mark_down(&self, error: &Error) {
        let mut state = self.state();
        state.reason = error.to_string();
        if state.up {
            state.up = false;
            state.since = SystemTime::now();
            drop(state);
            metrics::gauge!("tally_redis_node_up", "node" => self.name.clone()).set(0.0);
            tracing::warn!(
                node = %self.name,
                error.message = %error,
                error.cause_chain = ?error,
                "redis node marked down; its keys wait until it answers a health check"
            );
        }
    }

    /// A pooled connection for `op`, failing fast while the node is marked down.
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
        let result = self.connect().await;
        self.observe(op, result)
    }

    /// Runs `command` on a connection from [`Node::checkout`], bounded by the timeout.
    pub(crate) async fn finish<T>(
        &self,
        op: &'static str,
        command: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T> {
        let started = Instant::now();
        let result = match tokio::time::timeout(self.timeout, command).await {
            Err(_) => Err(Error::Timeout {
                node: self.name.clone(),
                op,
                after: self.timeout,
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

    /// Pings the node whatever its state and records the outcome.
    pub(crate) async fn probe(&self) {
        let result = match self.observe("ping", self.connect().await) {
            Ok(mut conn) => {
                self.finish("ping", redis::cmd("PING").query_async::<String>(&mut *conn))
                    .await
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(_) => self.mark_up(),
            // Not a failure of the node by itself (an odd answer to PING), but the check did
            // not pass either.
            Err(e) if !e.marks_node_down() => self.mark_down(&e),
            // Already marked down by `observe`.
            Err(_) => {}
        }
    }

    /// Gets a pooled connection, trying to open one up to `attempts` times.
    async fn connect(&self) -> Result<Connection> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let source = match tokio::time::timeout(self.timeout, self.pool.get()).await {
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
            if e.marks_node_down() {
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
