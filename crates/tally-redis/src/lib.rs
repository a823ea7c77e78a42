//! tally-redis: the Redis shard pool behind tally's counters.
//!
//! [`RedisStore`] implements [`tally_counter::Store`] over N Redis nodes: one
//! deadpool-redis pool per node, each key owned by one node of a [`tally_ring::Ring`] built
//! on the nodes' `host:port` names, and batches applied exactly once through a Lua script
//! that keeps a high-water mark per counter instance on each node. The same store serves
//! plain counters (`INCRBY tally:v:{key}`) and the request-stats sorted set
//! (`ZINCRBY tally:urls`), chosen by [`Layout`]; [`RedisStore::with_layout`] gives a second
//! view over the same connections.
//!
//! A background task pings every node; a failed command marks its node down at once. A
//! down node's keys are never re-routed: its batches fail (the counter keeps them pending)
//! and its reads fail with [`Error::NodeUnavailable`], until it answers a ping again.
//! Passwords never appear in `Display` or `Debug` output of anything here ([`redact`]).
//!
//! Requires Redis 6.2 or later (the script uses `ZMSCORE`). Totals are exact up to
//! [`MAX_TOTAL`] (2^53 - 1); a batch that would pass it is refused whole.
//!
//! # Example
//!
//! ```no_run
//! use tally_counter::{Counter, CounterConfig};
//! use tally_redis::{Layout, RedisConfig, RedisStore};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let config = RedisConfig::from_urls("redis://:secret@redis1:6379,redis://:secret@redis2:6379")?;
//! let visits = RedisStore::connect(config).await?;
//! let stats = visits.with_layout(Layout::SortedSet);
//!
//! let counter = Counter::new(visits, CounterConfig::default())?;
//! counter.increment("page1", 1)?;
//! counter.flush().await;
//! assert_eq!(counter.get("page1").await?.value, 1);
//!
//! let busiest = stats.top(0, 10).await?;
//! # drop(busiest);
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! - `config`: [`RedisConfig`], [`NodeUrl`], [`Secret`] and [`redact`].
//! - `layout`: [`Layout`], the key names and the batch script both layouts share.
//! - `node`: one node's pool, health state, and the timeout/error/metrics wrapper of every
//!   command.
//! - `store`: [`RedisStore`], routing, the `Store` implementation and the health task.
//! - `error`: [`Error`].
//!
//! # Metrics
//!
//! Through the `metrics` facade: `tally_redis_commands_total{node,op}`,
//! `tally_redis_errors_total{node,op,kind}`, `tally_redis_node_up{node}`,
//! `tally_redis_command_seconds{node,op}` and `tally_redis_batches_replayed_total{node,layout}`.
#![deny(missing_docs)]

mod config;
mod error;
mod layout;
mod node;
mod store;

pub use config::{
    DEFAULT_HEALTH_CHECK_INTERVAL, DEFAULT_POOL_SIZE, DEFAULT_RETRY_ATTEMPTS, DEFAULT_TIMEOUT,
    DEFAULT_VNODES, NodeUrl, RedisConfig, Secret, redact,
};
pub use error::{Error, Result};
pub use layout::{
    COUNTER_KEY_PREFIX, COUNTER_MARKS_KEY, Layout, MAX_TOTAL, URLS_KEY, URLS_MARKS_KEY,
};
pub use store::RedisStore;
