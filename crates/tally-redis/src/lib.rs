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
//! [`ClusterStore`] is the same store over a Redis Cluster (`REDIS_CLUSTER`): keys grouped
//! into a fixed number of buckets ([`COUNTER_BUCKETS`], [`STATS_BUCKETS`]) whose keys share
//! a hash slot, one counter shard per bucket, and every batch confirmed by
//! `REDIS_WAIT_REPLICAS` replicas (`WAIT`) before it counts as applied, so a failover
//! loses no acknowledged batch. See [`cluster`].
//!
//! Requires Redis 6.2 or later (the script uses `ZMSCORE`). Totals are exact up to
//! [`MAX_TOTAL`] (2^53 - 1); a key whose total would pass it is left as it is and
//! reported, as is a key holding something that is not a count, and the rest of its batch
//! is applied.
//!
//! # High-water marks
//!
//! A batch is applied at most once because each node remembers, per counter instance and
//! shard, the highest batch sequence it applied: the hash [`COUNTER_MARKS_KEY`] (visits) or
//! [`URLS_MARKS_KEY`] (request statistics), field [`mark_field`] = `{instance}:{shard}`,
//! value `{seq}:{unix ms}`, the node's time of the last batch written. A retry of a batch
//! whose reply was lost carries a sequence that is not above the mark, and is answered
//! with the current totals instead of being applied again. The shard is part of the field
//! so that two entries reaching one database (which start-up refuses, but a DNS change can
//! bring about later) still keep separate sequences.
//!
//! Every server start adds one field per node and layout, so marks are removed once their
//! instance has not written to the node for [`RedisConfig::marks_retention`]
//! (`MARKS_RETENTION_HOURS`, default [`DEFAULT_MARKS_RETENTION`], 30 days): the health task
//! sweeps each node every five minutes (a quarter of the retention if shorter), at most
//! 1,000 fields per hash per round. A mark only matters while a batch of its instance may
//! still be retried, and a batch waits, retried until acknowledged, as long as its node
//! cannot be reached from that instance; a live instance rewrites its mark with every
//! batch. The retention must therefore outlast the longest outage a running instance rides
//! out: a batch whose mark was removed before its retry got through is counted twice.
//! Marks written as a bare `{seq}` (before marks carried a time) keep working; their age
//! counts from the first sweep that sees them.
//!
//! For the same reason a mark must never be deleted by anything else: run the nodes with
//! `maxmemory-policy noeviction` (or a `volatile-*` policy, which only evicts keys with a
//! TTL; marks have none). The store logs a warning for a node running an `allkeys-*`
//! policy, and a debug line when `CONFIG GET` is not allowed.
//!
//! # Node identity
//!
//! Each node that answers is asked for its id, a random value kept under [`NODE_ID_KEY`]
//! and set by the first store that reaches it (`SET NX`). Two entries of `REDIS_NODES`
//! holding the same id (`localhost:6379` beside `127.0.0.1:6379`, a DNS alias, a proxy)
//! make [`RedisStore::connect`] fail with [`Error::DuplicateNode`]; an entry that answers
//! only later and turns out to be an alias is kept down, with that error logged.
//!
//! # The ring guard
//!
//! Each node records the ring it belongs to (its node names and `VIRTUAL_NODES`) under
//! [`guard::RING_KEY`], and a store configured with another ring refuses to start
//! ([`Error::RingMismatch`], naming the change and the `tally-server reshard` command
//! that moves the counts). Each store holds a short lease on its nodes, so a reshard
//! refuses to run while a server writes. See [`guard`].
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
//! - `node`: one node's pools, health state, the timeout/error/metrics wrapper of every
//!   command, and the first contact (identity, eviction policy). Each node has three pools:
//!   `REDIS_POOL_SIZE` connections for batches, reads and resets;
//!   [`RANKING_CONNECTIONS`] for sorted-set reads ([`RedisStore::top`], which a deep
//!   ranking makes large), so rankings never take the connections writes need; and two for
//!   health pings, which never wait behind busy commands. A ranking read waits at least
//!   [`RANKING_TIMEOUT_FLOOR`] for its answer, and one that times out does not mark its
//!   node down (it is slow because it is large); the health check decides.
//! - `marks`: removal of old high-water marks (the sweep script and its schedule).
//! - `ranked`: the ranked reads of the request statistics (`top`, `count_at_least`,
//!   `window`, `len`), for [`RedisStore`] and [`ClusterStore`] alike.
//! - `store`: [`RedisStore`], routing, the `Store` implementation, node identities and the
//!   health task.
//! - `error`: [`Error`].
//! - [`cluster`]: [`ClusterStore`], the same `Store` over a Redis Cluster: keys grouped in
//!   buckets that share a hash slot, batches confirmed by replicas (`WAIT`) before they
//!   count as applied, [`ClusterConfig`], [`ClusterStatus`].
//! - [`sketch`]: visitor sketches ([`tally_counter::Store::sketch`]): one pipeline of
//!   `PFADD`s and `PFCOUNT`s on the key's node or bucket, for both stores.
//! - [`reshard`]: moving every count whose owner changes to its new owner when the node
//!   list changes ([`reshard::plan`], [`reshard::apply`]; `tally-server reshard`).
//!
//! # Metrics
//!
//! Through the `metrics` facade: `tally_redis_commands_total{node,op}`,
//! `tally_redis_errors_total{node,op,kind}`, `tally_redis_node_up{node}`,
//! `tally_redis_command_seconds{node,op}`, `tally_redis_batches_replayed_total{node,layout}`
//! and `tally_redis_marks_removed_total{node}`; on a Redis Cluster also
//! `tally_redis_cluster_redirects_total{node,kind}`, the `MOVED` and `ASK` answers a batch
//! (or reset) followed, by the node that sent it elsewhere.
#![deny(missing_docs)]

/// The README's example, run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExample;

pub mod cluster;
mod config;
mod error;
pub mod guard;
mod layout;
mod marks;
mod node;
mod ranked;
pub mod reshard;
pub mod sketch;
mod store;

pub use cluster::{
    CLUSTER_SLOTS, COUNTER_BUCKETS, ClusterConfig, ClusterNodeStatus, ClusterShard, ClusterStatus,
    ClusterStore, STATS_BUCKETS, bucket_count, bucket_of, bucket_tag, cluster_slot,
};
pub use config::{
    DEFAULT_HEALTH_CHECK_INTERVAL, DEFAULT_MARKS_RETENTION, DEFAULT_POOL_SIZE,
    DEFAULT_RETRY_ATTEMPTS, DEFAULT_TIMEOUT, DEFAULT_VNODES, NodeUrl, RedisConfig, Secret, redact,
};
pub use error::{Error, Result};
pub use guard::{RingRecord, begin_reshard, finish_reshard};
pub use layout::{
    COUNTER_KEY_PREFIX, COUNTER_MARKS_KEY, Layout, MAX_TOTAL, SKETCH_KEY_PREFIX, URLS_KEY,
    URLS_MARKS_KEY, mark_field,
};
pub use node::{NODE_ID_KEY, RANKING_CONNECTIONS, RANKING_TIMEOUT_FLOOR};
pub use store::RedisStore;

/// Locks `mutex` even when a thread panicked while holding it. The crate's mutexes guard
/// plain data that each write leaves whole (a node's state, the node ids), so a panic
/// elsewhere cannot leave it half-updated, and refusing the lock would only spread the panic.
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
