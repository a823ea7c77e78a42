//! [`ClusterStore`]: tally-counter's `Store` (and `RankedStore`) over a Redis Cluster.
//!
//! # Buckets
//!
//! Keys are grouped into a fixed number of buckets ([`COUNTER_BUCKETS`] for visits,
//! [`STATS_BUCKETS`] for the request statistics; see `buckets`), every key of a bucket
//! tagged with it (`tally:v:{b0042}:page1`, `tally:urls:{b0007}`), so they share a hash
//! slot. A bucket is a shard of the counter: the batch script of the standalone store
//! (`crate::layout`) writes a bucket's batch and its high-water mark
//! (`tally:applied:{b0042}`, field `{instance}:{bucket}`) in one call, on the primary that
//! serves the bucket's slot. The mark lives in the same slot as the counts it guards, so
//! when a reshard moves the slot, the mark moves with them.
//!
//! # Replicas, and what a failover keeps
//!
//! Redis Cluster replicates asynchronously: a primary that acknowledged a write and then
//! died may be replaced by a replica that never received it. So a batch is reported
//! applied only once `REDIS_WAIT_REPLICAS` replicas have it: it is sent to the primary as
//! one pipeline, `[EVALSHA batch-script ..., WAIT n timeout]`, on one connection, and
//! `WAIT` answers how many replicas confirmed everything that connection wrote. Fewer
//! than `n` is an error ([`Error::NotReplicated`]): the counter keeps the batch in memory
//! and sends it again, unchanged. After a failover the promoted replica either has the
//! batch (its mark says so, and the retry is answered as a replay) or not (the retry
//! applies it): counted once either way.
//!
//! A retry that finds the batch applied rewrites the mark as it is, a write of its own,
//! so the `WAIT` after it covers the first application too, which another connection
//! made (a `WAIT` only counts what its own connection wrote).
//!
//! Unprotected: a primary and all its replicas lost at once (the batches their `WAIT`s
//! confirmed are gone with them), and keys a reshard migrated to a primary that dies
//! before its replicas received them (`MIGRATE` waits for no replica).
//!
//! # Connections
//!
//! `WAIT` blocks its connection until the replicas answer, so batches (and resets, which
//! wait for their replicas too) do not share connections: each primary has a pool of
//! `REDIS_POOL_SIZE` connections (`crate::node`), resolved from the slot map this store
//! keeps, one batch at a time on each (a batch waits for a free one, up to four
//! `REDIS_TIMEOUT`s, rather than mark a busy primary down). Such a write follows `MOVED`
//! (to the node named, and the slot map is read again) and `ASK` (`ASKING` then the
//! write, on the target) itself; a `TRYAGAIN` (a slot half-migrated) or `CLUSTERDOWN`
//! fails the attempt, and the counter retries it with backoff.
//!
//! # Group commit
//!
//! A hot set of pages keeps many buckets busy, each with its own batch per interval. The
//! batches of buckets one primary serves, sent within a few milliseconds of each other, go
//! to it together (`combine`): one pipeline holding one call of the combined batch script
//! (each batch with its own mark and its own reply) and one `WAIT`. When that call fails
//! as a whole (a slot that moved, a node before Redis 7.0), each batch goes again on its
//! own, as above, and the ones the call applied are answered by their marks.
//!
//! Reads, the ranking reads of `/stats/` and the sweeps of old marks go through the
//! `redis` crate's cluster client (slot routing, `MOVED`/`ASK`, `TRYAGAIN` and retries),
//! rankings on a client of their own so a large answer never delays a read.
//!
//! # Health
//!
//! A background task pings every node the cluster lists (primaries and replicas, each
//! through `crate::node`'s probe connections) every `HEALTH_CHECK_INTERVAL_SECONDS`, and
//! every second while one is down. With each of those rounds (and after a write met
//! `MOVED`) it asks every node that answers for `CLUSTER NODES` and keeps the answer with
//! the highest configuration epoch, the cluster's own rule for who serves a slot (a node
//! restarted with an old `nodes.conf` answers with an older one). So a promoted replica
//! takes over its slots' buckets within a round of the cluster electing it. A bucket is
//! up ([`Store::shard_up`]) while its slot's primary answers and, when batches wait for
//! replicas, enough of its replicas answer; a batch of a bucket that is not up fails at
//! once ([`Error::ReplicasMissing`], [`Error::NodeUnavailable`]) and waits in memory, and
//! the counter sends it again as soon as the bucket is up.
//!
//! # Layout
//!
//! - `buckets`: bucket counts, tags, key names and hash slots.
//! - `config`: [`ClusterConfig`].
//! - `topology`: `CLUSTER NODES`, parsed, and [`ClusterStatus`].
//! - `write`: batches and resets with their `WAIT`, on the primaries' pools.
//! - `combine`: group commit of the batches of one primary's buckets.
//! - `read`: reads and rankings through the cluster client.
//! - `health`: the health task: pings, the slot map, sweeps of old marks.

mod buckets;
mod combine;
mod config;
mod health;
mod read;
mod topology;
mod write;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, SystemTime};

use redis::cluster_async::ClusterConnection;
use tally_counter::{
    Applied, Batch, InstanceId, RankedStore, ShardHealth, ShardId, SketchAdd, Store, StoreError,
    StoredValues, Window, WindowRead,
};
use tokio::sync::watch;

pub use buckets::{
    CLUSTER_SLOTS, COUNTER_BUCKETS, STATS_BUCKETS, bucket_count, bucket_of, bucket_tag,
    cluster_slot,
};
pub use config::ClusterConfig;
pub use topology::{ClusterNodeStatus, ClusterShard, ClusterStatus};

use crate::error::{Error, Result};
use crate::layout::{BATCH_SCRIPT, COMBINED_BATCH_SCRIPT, Layout, TOP_SCRIPT};
use crate::lock;
use crate::marks::SWEEP_SCRIPT;
use crate::node::{Node, RANKING_TIMEOUT_FLOOR};
use buckets::Bucket;
use topology::{Listed, Topology};

/// Redirections (`MOVED`, `ASK`) and script reloads (`NOSCRIPT`) one write follows before
/// it fails (and the counter retries it later).
const MAX_REDIRECTS: usize = 4;

/// A [`tally_counter::Store`] over a Redis Cluster: one shard per bucket, batches applied
/// exactly once on the bucket's primary and reported applied only once
/// `REDIS_WAIT_REPLICAS` replicas have them. See the module docs for the design.
///
/// Cheap to clone; clones and [`ClusterStore::with_layout`] views share the connections
/// and the health task, which stops when the last of them is dropped.
#[derive(Clone)]
pub struct ClusterStore {
    shared: Arc<Shared>,
    layout: Layout,
}

struct Shared {
    config: ClusterConfig,
    /// Bucket `i` at index `i`, as many as the layout with the most ([`COUNTER_BUCKETS`]).
    buckets: Vec<Bucket>,
    /// Reads of counts, and the sweeps of old marks.
    commands: ClusterConnection,
    /// Ranking reads, whose answers can be large, apart from reads.
    rankings: ClusterConnection,
    script: redis::Script,
    /// Several buckets' batches in one call (`combine`).
    combined_script: redis::Script,
    /// Set once a node could not run the combined script: every batch goes alone.
    combine_unsupported: AtomicBool,
    /// Per primary, the batches waiting for its next combined write (`combine`). A
    /// `std::sync::Mutex`, held to queue or take them, never across an `.await`.
    combining: Mutex<HashMap<&'static str, combine::Queue>>,
    top_script: redis::Script,
    sweep_script: redis::Script,
    /// The last `CLUSTER NODES` that parsed. A `std::sync::RwLock`: held to swap or clone
    /// the `Arc`, never across an `.await`.
    view: RwLock<Arc<Topology>>,
    /// Every node the cluster listed (and every seed), by `host:port`: its pools (the
    /// batches of a primary) and its health. A `std::sync::Mutex`, held to look up or add
    /// a node, never across an `.await`.
    nodes: Mutex<HashMap<String, Arc<Node>>>,
    /// Per node, one permit per connection of its pool (`REDIS_POOL_SIZE`): a write takes
    /// one before it asks the pool for a connection, so writes queue here while every
    /// connection holds a batch waiting for its replicas, rather than time out at the
    /// pool and mark a busy node down. A `std::sync::Mutex` held to look one up.
    lanes: Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
    /// `REDIS_WAIT_REPLICAS`, or what it resolved to when the cluster's nodes were first
    /// read.
    wait_replicas: OnceLock<usize>,
    /// Node names handed out as `&'static str` by [`Store::shard_name`], which cannot
    /// borrow a slot map that changes. One leaked string per address ever seen: a few
    /// bytes per node over the process's life.
    names: Mutex<HashSet<&'static str>>,
    /// Set when a write met `MOVED` (or a primary failed): the health task reads the
    /// cluster's nodes again on its next round.
    stale: AtomicBool,
    started: SystemTime,
    /// Never sent: dropping it (with the last handle) stops the health task.
    _stop: watch::Sender<()>,
}

impl fmt::Debug for ClusterStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterStore")
            .field("seeds", &self.shared.config.seeds)
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

impl ClusterStore {
    /// Builds the cluster clients and connects to the seeds in the background, reads the
    /// cluster's nodes from the first seed that answers, and starts the health task on the
    /// current tokio runtime.
    ///
    /// A cluster that does not answer yet does not fail this: every bucket is down
    /// ([`Store::shard_up`]), batches wait in memory, and reads fail with
    /// [`Error::NoPrimary`] until the health task reaches a node.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] or [`Error::InvalidUrl`] for settings that cannot work
    /// ([`Error::is_config`]), among them seeds that answer but are no cluster nodes.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub async fn connect(config: ClusterConfig) -> Result<Self> {
        config.validate()?;
        let commands = cluster_client(&config, config.timeout)?;
        let rankings = cluster_client(&config, config.timeout.max(RANKING_TIMEOUT_FLOOR))?;
        let client_config = redis::cluster::ClusterConfig::new();
        let (stop, stopped) = watch::channel(());
        let shared = Arc::new(Shared {
            buckets: (0..COUNTER_BUCKETS.max(STATS_BUCKETS))
                .map(Bucket::new)
                .collect(),
            commands: commands.get_pending_async_connection_with_config(client_config.clone()),
            rankings: rankings.get_pending_async_connection_with_config(client_config),
            script: redis::Script::new(BATCH_SCRIPT),
            combined_script: redis::Script::new(COMBINED_BATCH_SCRIPT),
            combine_unsupported: AtomicBool::new(false),
            combining: Mutex::new(HashMap::new()),
            top_script: redis::Script::new(TOP_SCRIPT),
            sweep_script: redis::Script::new(SWEEP_SCRIPT),
            view: RwLock::new(Arc::new(Topology::default())),
            nodes: Mutex::new(HashMap::new()),
            lanes: Mutex::new(HashMap::new()),
            wait_replicas: OnceLock::new(),
            names: Mutex::new(HashSet::new()),
            stale: AtomicBool::new(false),
            started: SystemTime::now(),
            _stop: stop,
            config,
        });
        for seed in &shared.config.seeds {
            shared.node_for(seed.name())?;
        }
        health::first_round(&shared).await?;
        tokio::spawn(health::supervise(
            Arc::downgrade(&shared),
            stopped,
            shared.config.health_check_interval,
        ));
        let store = Self {
            layout: shared.config.layout,
            shared,
        };
        tracing::info!(
            seeds = %store.shared.config,
            layout = %store.layout,
            buckets = store.bucket_count(),
            wait_replicas = ?store.wait_replicas(),
            "redis cluster store ready"
        );
        Ok(store)
    }

    /// A store over the same cluster, connections and health task with another key layout,
    /// e.g. the request statistics beside the visits.
    pub fn with_layout(&self, layout: Layout) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            layout,
        }
    }

    /// The key layout of this view.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Buckets (shards) of this view's layout.
    pub fn bucket_count(&self) -> usize {
        bucket_count(self.layout)
    }

    /// The replicas every batch waits for: `REDIS_WAIT_REPLICAS`, or (unset) 1 when the
    /// cluster had replicas when its nodes were first read, else 0. `None` until then.
    pub fn wait_replicas(&self) -> Option<usize> {
        self.shared.wait_replicas.get().copied()
    }

    /// Where `key` is stored, for an operator: `tally:v:{b0042}:page1`, or
    /// `tally:urls:{b0007} member /api/x/`.
    pub fn stored_as(&self, key: &str) -> String {
        self.shared.buckets[bucket_of(self.layout, key)].stored_as(self.layout, key)
    }

    /// The `host:port` of the primary that serves `bucket`'s slot, as the store last saw
    /// the cluster; `None` when none does (or the bucket does not exist).
    pub fn primary_of(&self, bucket: ShardId) -> Option<String> {
        let bucket = self.bucket(bucket).ok()?;
        let view = self.shared.view();
        view.primary_of(bucket.slot).map(|p| p.name.clone())
    }

    /// The cluster as the store last saw it: every primary with its slots and replicas,
    /// each node's health, the slots without a reachable primary.
    pub fn status(&self) -> ClusterStatus {
        self.shared.status()
    }

    /// Pings every node now and reads the cluster's nodes again, as the health task does
    /// every round.
    pub async fn check_health(&self) {
        health::round(&self.shared, true).await;
    }

    /// Removes now the high-water marks of every bucket (both layouts) not written for
    /// longer than [`ClusterConfig::marks_retention`], as the health task does over a few
    /// minutes; returns how many were removed.
    ///
    /// # Errors
    ///
    /// The first failed sweep; the buckets after it are not swept.
    pub async fn sweep_marks(&self) -> Result<u64> {
        health::sweep_all(&self.shared).await
    }

    fn bucket(&self, shard: ShardId) -> Result<&Bucket> {
        if shard < self.bucket_count() {
            Ok(&self.shared.buckets[shard])
        } else {
            Err(Error::NoSuchShard {
                shard,
                count: self.bucket_count(),
            })
        }
    }
}

/// A cluster client over the seeds: commands bounded by `timeout`, and only the retries
/// that follow the cluster (redirects, a slot map read again); the counter retries failed
/// batches itself.
fn cluster_client(
    config: &ClusterConfig,
    timeout: Duration,
) -> Result<redis::cluster::ClusterClient> {
    let (username, password) = config.credentials();
    let seeds = config
        .seeds
        .iter()
        .map(|seed| seed.connection_info(password.as_ref(), None))
        .collect::<redis::RedisResult<Vec<_>>>()
        .map_err(|e| Error::Config {
            field: "REDIS_CLUSTER",
            problem: format!("{}: {e}", config),
        })?;
    let mut builder = redis::cluster::ClusterClientBuilder::new(seeds)
        .connection_timeout(config.timeout)
        .response_timeout(timeout)
        .retries(MAX_REDIRECTS as u32)
        .min_retry_wait(10)
        .max_retry_wait(200);
    if let Some(username) = username {
        builder = builder.username(username);
    }
    if let Some(password) = password {
        builder = builder.password(password.expose());
    }
    builder.build().map_err(|e| Error::Config {
        field: "REDIS_CLUSTER",
        problem: format!("cannot build a cluster client for {config}: {e}"),
    })
}

impl Shared {
    fn view(&self) -> Arc<Topology> {
        Arc::clone(
            &self
                .view
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    fn set_view(&self, topology: Topology) {
        *self
            .view
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(topology);
    }

    /// The node named `name` (`host:port`), made (its pools connect lazily) the first time
    /// it is asked for.
    fn node_for(&self, name: &str) -> Result<Arc<Node>> {
        if let Some(node) = lock(&self.nodes).get(name) {
            return Ok(Arc::clone(node));
        }
        let (url, config) = self.config.node(name)?;
        let node = Arc::new(Node::new(&url, &config)?);
        Ok(Arc::clone(
            lock(&self.nodes).entry(name.to_owned()).or_insert(node),
        ))
    }

    /// The write permits of the node named `name` (see `lanes`).
    fn lanes(&self, name: &str) -> Arc<tokio::sync::Semaphore> {
        Arc::clone(
            lock(&self.lanes)
                .entry(name.to_owned())
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(self.config.pool_size))),
        )
    }

    /// The node named `name`, if the store has made it.
    fn known_node(&self, name: &str) -> Option<Arc<Node>> {
        lock(&self.nodes).get(name).cloned()
    }

    /// Whether the node named `name` answered its last ping (unknown nodes do not).
    fn is_up(&self, name: &str) -> bool {
        self.known_node(name).is_some_and(|node| node.is_up())
    }

    /// `name` as a `&'static str` (see `names`).
    fn intern(&self, name: &str) -> &'static str {
        let mut names = lock(&self.names);
        if let Some(interned) = names.get(name) {
            return interned;
        }
        let interned: &'static str = Box::leak(name.to_owned().into_boxed_str());
        names.insert(interned);
        interned
    }

    /// The replicas a write waits for, or why none can be sent yet.
    fn wait_replicas(&self, bucket: &Bucket) -> Result<usize> {
        self.wait_replicas
            .get()
            .copied()
            .ok_or_else(|| Error::NoPrimary {
                bucket: bucket.tag.clone(),
                slot: bucket.slot,
                reason: "no node of the cluster has answered yet".to_owned(),
            })
    }

    /// The primary serving `bucket`'s slot, with its replicas that answer, or why there is
    /// none to write to.
    fn primary(&self, bucket: &Bucket) -> Result<(Listed, usize)> {
        let view = self.view();
        let Some(primary) = view.primary_of(bucket.slot) else {
            let reason = match &view.source {
                None => "no node of the cluster has answered yet".to_owned(),
                Some(source) => {
                    format!("no primary serves the slot, as {source} lists the cluster")
                }
            };
            return Err(Error::NoPrimary {
                bucket: bucket.tag.clone(),
                slot: bucket.slot,
                reason,
            });
        };
        let replicas = view
            .replicas_of(&primary.id)
            .filter(|r| !r.failed && self.is_up(&r.name))
            .count();
        Ok((primary.clone(), replicas))
    }

    /// Whether a batch of `bucket` can be sent: its primary answers, and enough of its
    /// replicas to satisfy the `WAIT`.
    fn bucket_up(&self, bucket: &Bucket) -> bool {
        let Some(wait) = self.wait_replicas.get().copied() else {
            return false;
        };
        self.primary(bucket).is_ok_and(|(primary, replicas)| {
            !primary.failed && self.is_up(&primary.name) && replicas >= wait
        })
    }

    /// The name of `bucket`'s primary for messages, metrics and `served_via`.
    fn primary_name(&self, bucket: &Bucket) -> &'static str {
        let view = self.view();
        match view.primary_of(bucket.slot) {
            Some(primary) if !primary.name.is_empty() => self.intern(&primary.name),
            _ => "unknown",
        }
    }

    fn status(&self) -> ClusterStatus {
        let view = self.view();
        let node_status = |listed: &Listed| {
            let health = self.known_node(&listed.name).map(|node| node.health());
            ClusterNodeStatus {
                name: listed.name.clone(),
                id: listed.id.clone(),
                up: health.as_ref().is_some_and(|h| h.up),
                failed: listed.failed,
                since: health.map_or(self.started, |h| h.since),
            }
        };
        let mut shards: Vec<ClusterShard> = view
            .nodes
            .iter()
            .filter(|n| n.primary)
            .map(|primary| ClusterShard {
                primary: node_status(primary),
                slots: primary.slots.clone(),
                replicas: view.replicas_of(&primary.id).map(node_status).collect(),
            })
            .collect();
        shards.sort_by_key(|shard| shard.slots.first().map_or(u16::MAX, |(a, _)| *a));
        let served: u32 = shards
            .iter()
            .filter(|shard| shard.primary.up && !shard.primary.failed)
            .flat_map(|shard| &shard.slots)
            .map(|(a, b)| u32::from(*b) - u32::from(*a) + 1)
            .sum();
        ClusterStatus {
            shards,
            slots_without_primary: u32::from(CLUSTER_SLOTS).saturating_sub(served),
            wait_replicas: self.wait_replicas.get().copied(),
            source: view.source.clone(),
        }
    }

    fn mark_stale(&self) {
        self.stale.store(true, Ordering::Relaxed);
    }
}

impl Store for ClusterStore {
    fn shard_count(&self) -> usize {
        self.bucket_count()
    }

    fn shard_of(&self, key: &str) -> ShardId {
        bucket_of(self.layout, key)
    }

    fn shard_name(&self, shard: ShardId) -> &str {
        match self.bucket(shard) {
            Ok(bucket) => self.shared.primary_name(bucket),
            Err(_) => "unknown",
        }
    }

    async fn apply(&self, shard: ShardId, batch: &Batch) -> Result<Vec<u64>, StoreError> {
        Ok(ClusterStore::apply(self, shard, batch).await?)
    }

    async fn apply_checked(&self, shard: ShardId, batch: &Batch) -> Result<Applied, StoreError> {
        Ok(ClusterStore::apply_checked(self, shard, batch).await?)
    }

    async fn get(
        &self,
        shard: ShardId,
        instance: InstanceId,
        keys: &[&str],
    ) -> Result<StoredValues, StoreError> {
        Ok(ClusterStore::get(self, shard, instance, keys).await?)
    }

    async fn reset(&self, shard: ShardId, key: &str) -> Result<(), StoreError> {
        Ok(ClusterStore::reset(self, shard, key).await?)
    }

    fn keeps_sketches(&self) -> bool {
        self.layout == Layout::Counters
    }

    async fn sketch(
        &self,
        shard: ShardId,
        adds: &[SketchAdd<'_>],
        estimate: &[&str],
    ) -> Result<Vec<u64>, StoreError> {
        Ok(ClusterStore::sketch(self, shard, adds, estimate).await?)
    }

    fn health(&self) -> Vec<ShardHealth> {
        (0..self.bucket_count())
            .map(|shard| {
                let bucket = &self.shared.buckets[shard];
                let name = self.shared.primary_name(bucket);
                ShardHealth {
                    name: name.to_owned(),
                    up: self.shared.bucket_up(bucket),
                    since: self
                        .shared
                        .known_node(name)
                        .map_or(self.shared.started, |node| node.health().since),
                }
            })
            .collect()
    }

    fn shard_up(&self, shard: ShardId) -> bool {
        self.bucket(shard)
            .is_ok_and(|bucket| self.shared.bucket_up(bucket))
    }
}

impl RankedStore for ClusterStore {
    async fn top(&self, shard: ShardId, limit: usize) -> Result<Vec<(String, u64)>, StoreError> {
        Ok(ClusterStore::top(self, shard, limit).await?)
    }

    fn serves_windows(&self) -> bool {
        self.layout == Layout::SortedSet
    }

    async fn count_at_least(
        &self,
        shard: ShardId,
        thresholds: &[u64],
    ) -> Result<Vec<u64>, StoreError> {
        Ok(ClusterStore::count_at_least(self, shard, thresholds).await?)
    }

    async fn window(&self, shard: ShardId, window: Window) -> Result<WindowRead, StoreError> {
        Ok(ClusterStore::window(self, shard, window).await?)
    }
}
