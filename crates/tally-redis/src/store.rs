//! `RedisStore`: the ring over the nodes, the `Store` implementation, the way of the
//! sorted-set reads (`crate::ranked`) to a node, the nodes' identities, and the health task.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use redis::FromRedisValue;
use tally_counter::{
    Applied, Batch, InstanceId, RankedStore, RejectedKey, ShardHealth, ShardId, SketchAdd, Store,
    StoreError, StoredValues, Window, WindowRead,
};
use tally_ring::Ring;
use tokio::sync::watch;
use tracing::Instrument as _;

use crate::config::RedisConfig;
use crate::error::{Error, Result};
use crate::guard::{self, LEASE_REFRESH, RingCheck, Seen};
use crate::layout::{
    BATCH_SCRIPT, Layout, ScriptReply, Standalone, TOP_SCRIPT, URLS_KEY, fill_script_args,
    stored_values,
};
use crate::lock;
use crate::marks::{SWEEP_SCRIPT, Sweeper, sweep_node};
use crate::node::{Node, Probe};
use crate::ranked::{self, Pair, Request, SortedSet};
use crate::sketch;

/// Nodes marked down are pinged at least this often, whatever the health-check interval.
const DOWN_PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// A [`tally_counter::Store`] over N Redis nodes, each key owned by one node of a
/// consistent-hash ring.
///
/// - Shard id = the node's position in `REDIS_NODES`; [`Store::shard_of`] is the ring
///   owner of the key, placed by the node's `host:port` only.
/// - [`Store::apply`] runs one Lua script per batch on the owner (one round trip): it reads
///   the instance's high-water mark, and applies the batch only if its sequence is above it.
/// - Keys are never re-routed: while a node is down (a command to it failed, or the health
///   check got no answer) its operations fail at once with [`Error::NodeUnavailable`] and
///   the counter keeps its deltas pending until the health check sees it answer again.
///
/// Cheap to clone; clones and [`RedisStore::with_layout`] views share the pools and the
/// health task, which stops when the last of them is dropped.
#[derive(Clone)]
pub struct RedisStore {
    shared: Arc<Shared>,
    layout: Layout,
}

struct Shared {
    ring: Ring<String>,
    /// Parallel to `ring.nodes()`: index = shard id.
    nodes: Vec<Node>,
    /// Parallel to `nodes`: each node's id under `NODE_ID_KEY`, once it answered.
    /// A `std::sync::Mutex`: held only to compare and record ids, never across `.await`;
    /// one lock for all, so two nodes first answering at once are still compared.
    identities: Mutex<Vec<Option<String>>>,
    script: redis::Script,
    top_script: redis::Script,
    sweep_script: redis::Script,
    marks_retention: Duration,
    /// [`RedisConfig::subkey_ttl`].
    subkey_ttl: Option<Duration>,
    /// The ring record, the lease and their scripts.
    ring_check: RingCheck,
    /// Never sent: dropping it (with the last store handle) tells the health task to stop.
    _stop: watch::Sender<()>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("nodes", &self.shared.ring.nodes())
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Builds the ring and one pool per node, checks every node once, and starts the health
    /// task on the current tokio runtime.
    ///
    /// Each node that answers is identified: it keeps a random id under
    /// [`crate::NODE_ID_KEY`] (set by the first store to reach it), and two entries holding
    /// the same id are the same Redis database listed twice, which fails this. Its
    /// `maxmemory-policy` is checked too: an `allkeys-*` policy is logged as a warning.
    ///
    /// A node that is down does not fail this: it is reported by [`Store::health`] and its
    /// operations fail until it answers a health check. It is identified then, and if it
    /// turns out to be another entry's database it is taken out of service (kept down,
    /// with an error logged and [`Error::DuplicateNode`] as its reason).
    ///
    /// # Errors
    ///
    /// [`Error::Config`], [`Error::InvalidUrl`] or [`Error::Ring`] for a config that cannot
    /// work (e.g. the same `host:port` twice); [`Error::DuplicateNode`] for two entries that
    /// reach the same Redis database. [`Error::is_config`] is true for all of these.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub async fn connect(config: RedisConfig) -> Result<Self> {
        config.validate()?;
        let ring = Ring::builder()
            .vnodes(config.vnodes)
            .nodes(config.nodes.iter().map(|n| (n.name().to_owned(), 1)))
            .build()?;
        let nodes = config
            .nodes
            .iter()
            .map(|url| Node::new(url, &config))
            .collect::<Result<Vec<_>>>()?;
        let (stop, stopped) = watch::channel(());
        let shared = Arc::new(Shared {
            ring,
            identities: Mutex::new(vec![None; nodes.len()]),
            nodes,
            script: redis::Script::new(BATCH_SCRIPT),
            top_script: redis::Script::new(TOP_SCRIPT),
            sweep_script: redis::Script::new(SWEEP_SCRIPT),
            marks_retention: config.marks_retention,
            subkey_ttl: config.subkey_ttl,
            ring_check: RingCheck::new(&config),
            _stop: stop,
        });
        describe_metrics();
        // A first check before returning, so `health()` means something from the start,
        // every node that answers is known to be a database of its own, and all of them
        // record this ring (those that record none are given it only once all agree).
        let contacts = shared.probe(|_| true, false).await;
        let refusal = contacts
            .duplicates
            .into_iter()
            .next()
            .map(|(_, e)| e)
            .or_else(|| {
                let seen: Vec<(&str, &Seen)> = contacts
                    .rings
                    .iter()
                    .map(|(shard, seen)| (shared.nodes[*shard].name(), seen))
                    .collect();
                guard::refusal(&shared.ring_check.record, &seen)
            });
        if let Some(refusal) = refusal {
            shared.release_leases().await;
            return Err(refusal);
        }
        for (shard, seen) in &contacts.rings {
            if *seen == Seen::Absent {
                shared.claim(*shard).await;
            }
        }
        tokio::spawn(supervise_health(
            Arc::downgrade(&shared),
            stopped,
            config.health_check_interval,
            shared.nodes.len(),
            config.marks_retention,
        ));
        tracing::info!(nodes = %config, layout = %config.layout, "redis store ready");
        Ok(Self {
            shared,
            layout: config.layout,
        })
    }

    /// A store over the same nodes, pools and health task with another key layout, e.g.
    /// the request-stats store beside the visit counters.
    pub fn with_layout(&self, layout: Layout) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            layout,
        }
    }

    /// The ring; `ring().nodes()[shard]` is the shard's `host:port`.
    pub fn ring(&self) -> &Ring<String> {
        &self.shared.ring
    }

    /// Deletes this store's lease on every node that is up, so a reshard can start at once
    /// (otherwise the lease expires [`guard::LEASE_TTL`] after the store is dropped).
    /// Call once nothing more will be written, e.g. after the counter's final flush.
    pub async fn release_lease(&self) {
        self.shared.release_leases().await;
    }

    /// Pings every node now (as the health task does) and updates their health; a node
    /// answering for the first time is identified as at start, and taken out of service if
    /// it is another entry's database.
    pub async fn check_health(&self) {
        self.shared.check(|_| true).await;
    }

    /// Removes now, on every node that is up, the high-water marks not written for longer
    /// than [`RedisConfig::marks_retention`], as the health task does every few minutes;
    /// returns how many were removed. Nodes that are down are skipped.
    ///
    /// # Errors
    ///
    /// The first node error met; the nodes after it are not swept.
    pub async fn sweep_marks(&self) -> Result<u64> {
        let mut removed = 0;
        for node in self.shared.nodes.iter().filter(|node| node.is_up()) {
            removed +=
                sweep_node(node, &self.shared.sweep_script, self.shared.marks_retention).await?;
        }
        Ok(removed)
    }

    /// The `limit` members with the highest counts on `shard`: count descending, then
    /// member ascending (byte order), exact at the cut-off — the
    /// [`tally_counter::RankedStore`] contract, so merging every node's answer gives the
    /// global ranking.
    ///
    /// Redis orders equal scores in reverse for `ZREVRANGE`, so the members tied at the
    /// cut-off must be chosen apart. With native commands only (a Lua script that holds a
    /// deep answer costs the node several times the time of the command that reads it, time
    /// in which the node answers nothing else: 0.79 s against 0.11 s for 110,000 members
    /// of 1 KB), in two round trips:
    /// 1. the score at the cut-off, `b` (`ZREVRANGE key limit-1 limit-1`);
    /// 2. atomically (`MULTI`): every member above `b`, and the `limit` smallest members at
    ///    `b` (`ZRANGEBYSCORE` orders equal scores ascending).
    ///
    /// The second read is one snapshot, exact on its own whenever it holds at least
    /// `limit` members; when writes in between left it short (members removed), it is
    /// tried again, and after three tries (`TOP_ATTEMPTS`) the ranking script, exact in one
    /// step, answers instead.
    ///
    /// # Errors
    ///
    /// [`Error::WrongLayout`] unless the layout is [`Layout::SortedSet`]; node errors as for
    /// any command.
    pub async fn top(&self, shard: ShardId, limit: usize) -> Result<Vec<(String, u64)>> {
        ranked::top(&mut self.sorted_set("top", shard)?, limit).await
    }

    /// [`RedisStore::top`] in one step, with the ranking script: exact and atomic, but a
    /// deep answer holds the node several times longer than the native reads `top` makes
    /// (see there), so `top` uses it only when those keep being disturbed by writes.
    ///
    /// # Errors
    ///
    /// As [`RedisStore::top`].
    pub async fn top_by_script_only(
        &self,
        shard: ShardId,
        limit: usize,
    ) -> Result<Vec<(String, u64)>> {
        ranked::top_by_script(&mut self.sorted_set("top", shard)?, limit).await
    }

    /// For each of `thresholds`, how many members of `shard`'s sorted set count at least
    /// that much (`ZCOUNT`), in one `MULTI`.
    ///
    /// # Errors
    ///
    /// As [`RedisStore::top`].
    pub async fn count_at_least(&self, shard: ShardId, thresholds: &[u64]) -> Result<Vec<u64>> {
        ranked::count_at_least(&mut self.sorted_set("count_at_least", shard)?, thresholds).await
    }

    /// The members of `shard` around one page of the ranking, in one `MULTI` (see
    /// [`tally_counter::Window`]): how many count more than `high` and less than `low`,
    /// every member strictly between, and the smallest members at `high` and at `low`.
    ///
    /// # Errors
    ///
    /// As [`RedisStore::top`].
    pub async fn window(&self, shard: ShardId, window: Window) -> Result<WindowRead> {
        ranked::window(&mut self.sorted_set("window", shard)?, window).await
    }

    /// Number of members in `shard`'s sorted set (`ZCARD tally:urls`).
    ///
    /// # Errors
    ///
    /// As [`RedisStore::top`].
    pub async fn len(&self, shard: ShardId) -> Result<u64> {
        ranked::len(&mut self.sorted_set("len", shard)?).await
    }

    /// [`Store::apply`] with this crate's error type.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidBatch`] when a key appears twice; [`Error::NodeUnavailable`],
    /// [`Error::Timeout`], [`Error::Connection`] and the other node errors; [`Error::Redis`]
    /// for an error reply, e.g. when the request statistics' sorted set holds another type
    /// (then nothing of the batch is applied); [`Error::CorruptValue`] naming a key that
    /// holds something that is not a count, or whose total would pass [`crate::MAX_TOTAL`]:
    /// such keys are left as they are and every other key is applied (see
    /// [`RedisStore::apply_checked`]).
    pub async fn apply(&self, shard: ShardId, batch: &Batch) -> Result<Vec<u64>> {
        let applied = self.apply_checked(shard, batch).await?;
        match applied.rejected.first() {
            None => Ok(applied.totals),
            Some(rejected) => Err(Error::CorruptValue {
                node: self.node(shard)?.name().to_owned(),
                stored_as: rejected.stored_as.clone(),
                found: rejected.found.clone(),
            }),
        }
    }

    /// [`Store::apply_checked`] with this crate's error type: keys holding something that is
    /// not a count are left as they are and reported, every other key is applied.
    ///
    /// # Errors
    ///
    /// As [`RedisStore::apply`], except for bad stored values.
    pub async fn apply_checked(&self, shard: ShardId, batch: &Batch) -> Result<Applied> {
        let node = self.node(shard)?;
        let span = tracing::debug_span!(
            "redis_apply",
            shard,
            node = %node.name(),
            layout = %self.layout,
            seq = batch.id.seq,
            batch_len = batch.deltas.len()
        );
        async {
            // The script writes computed totals, so a key listed twice would lose a delta.
            let mut seen = HashSet::with_capacity(batch.deltas.len());
            if let Some((key, _)) = batch.deltas.iter().find(|(key, _)| !seen.insert(&**key)) {
                return Err(Error::InvalidBatch {
                    detail: format!("key '{key}' appears twice; a batch names each key once"),
                });
            }
            let mut invocation = self.shared.script.prepare_invoke();
            fill_script_args(
                &mut invocation,
                &Standalone,
                self.layout,
                batch.id.instance,
                shard,
                batch.id.seq,
                batch.deltas.iter().map(|(key, _)| &**key),
                batch.deltas.iter().map(|(_, delta)| *delta),
                self.shared.subkey_ttl,
            );
            let reply = node.run("apply", &invocation).await?;
            let reply = ScriptReply::parse(reply).map_err(|d| protocol(node, "apply", d))?;
            if reply.values.len() != batch.deltas.len() {
                return Err(protocol(
                    node,
                    "apply",
                    format!(
                        "{} totals for {} keys",
                        reply.values.len(),
                        batch.deltas.len()
                    ),
                ));
            }
            if !reply.applied {
                metrics::counter!(
                    "tally_redis_batches_replayed_total",
                    "node" => node.name().to_owned(),
                    "layout" => self.layout.to_string()
                )
                .increment(1);
                tracing::debug!(
                    mark = reply.mark,
                    "batch already applied (a retry after a lost reply); answered current totals"
                );
            }
            let rejected = reply
                .rejected
                .into_iter()
                .filter_map(|(index, found)| {
                    let (key, _) = batch.deltas.get(index)?;
                    Some(RejectedKey {
                        index,
                        stored_as: self.layout.stored_as(key),
                        found,
                    })
                })
                .collect();
            Ok(Applied {
                totals: reply.values,
                rejected,
            })
        }
        .instrument(span)
        .await
    }

    /// [`Store::get`] with this crate's error type.
    ///
    /// # Errors
    ///
    /// As [`RedisStore::apply`].
    pub async fn get(
        &self,
        shard: ShardId,
        instance: InstanceId,
        keys: &[&str],
    ) -> Result<StoredValues> {
        let node = self.node(shard)?;
        let mut invocation = self.shared.script.prepare_invoke();
        // Sequence 0 is never above a mark: the script only reads.
        fill_script_args(
            &mut invocation,
            &Standalone,
            self.layout,
            instance,
            shard,
            0,
            keys.iter().copied(),
            std::iter::empty(),
            None,
        );
        let reply = node.run("get", &invocation).await?;
        stored_values(reply, node.name(), keys, |key| self.layout.stored_as(key))
    }

    /// [`Store::reset`] with this crate's error type: `DEL tally:v:{key} tally:u:{key}` (the
    /// count and the visitor sketch), or
    /// `ZREM tally:urls {key}`.
    ///
    /// # Errors
    ///
    /// As [`RedisStore::apply`].
    pub async fn reset(&self, shard: ShardId, key: &str) -> Result<()> {
        self.node(shard)?
            .run("reset", &self.layout.reset_cmd(key))
            .await
    }

    /// [`Store::sketch`] with this crate's error type: one pipeline on the node (see
    /// [`crate::sketch`]).
    ///
    /// # Errors
    ///
    /// [`Error::WrongLayout`] unless the layout is [`Layout::Counters`]; as
    /// [`RedisStore::apply`]; [`Error::CorruptSketch`] for an estimated key whose sketch is
    /// not a HyperLogLog.
    pub async fn sketch(
        &self,
        shard: ShardId,
        adds: &[SketchAdd<'_>],
        estimate: &[&str],
    ) -> Result<Vec<u64>> {
        self.layout.require(Layout::Counters, "sketch")?;
        let node = self.node(shard)?;
        let ttl = self.shared.subkey_ttl;
        let pipe = sketch::pipeline(&Standalone, adds, estimate, ttl);
        let replies = node.run("sketch", &pipe).await?;
        sketch::estimates(replies, node.name(), &Standalone, adds, estimate, ttl)
    }

    fn node(&self, shard: ShardId) -> Result<&Node> {
        self.shared.nodes.get(shard).ok_or(Error::NoSuchShard {
            shard,
            count: self.shared.nodes.len(),
        })
    }

    /// `shard`'s sorted set, for the ranked read `op`: [`Error::WrongLayout`] unless the
    /// layout is [`Layout::SortedSet`].
    fn sorted_set(&self, op: &'static str, shard: ShardId) -> Result<NodeSet<'_>> {
        self.layout.require(Layout::SortedSet, op)?;
        Ok(NodeSet {
            node: self.node(shard)?,
            top_script: &self.shared.top_script,
            conn: None,
        })
    }
}

impl Store for RedisStore {
    fn shard_count(&self) -> usize {
        self.shared.nodes.len()
    }

    fn shard_of(&self, key: &str) -> ShardId {
        self.shared
            .ring
            .lookup_index(tally_counter::routing_key(key).as_bytes())
    }

    fn shard_name(&self, shard: ShardId) -> &str {
        self.shared.nodes.get(shard).map_or("unknown", Node::name)
    }

    async fn apply(&self, shard: ShardId, batch: &Batch) -> Result<Vec<u64>, StoreError> {
        Ok(RedisStore::apply(self, shard, batch).await?)
    }

    async fn apply_checked(&self, shard: ShardId, batch: &Batch) -> Result<Applied, StoreError> {
        Ok(RedisStore::apply_checked(self, shard, batch).await?)
    }

    async fn get(
        &self,
        shard: ShardId,
        instance: InstanceId,
        keys: &[&str],
    ) -> Result<StoredValues, StoreError> {
        Ok(RedisStore::get(self, shard, instance, keys).await?)
    }

    async fn reset(&self, shard: ShardId, key: &str) -> Result<(), StoreError> {
        Ok(RedisStore::reset(self, shard, key).await?)
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
        Ok(RedisStore::sketch(self, shard, adds, estimate).await?)
    }

    fn health(&self) -> Vec<ShardHealth> {
        self.shared.nodes.iter().map(Node::health).collect()
    }

    fn shard_up(&self, shard: ShardId) -> bool {
        self.shared.nodes.get(shard).is_none_or(Node::is_up)
    }
}

impl RankedStore for RedisStore {
    async fn top(&self, shard: ShardId, limit: usize) -> Result<Vec<(String, u64)>, StoreError> {
        Ok(RedisStore::top(self, shard, limit).await?)
    }

    fn serves_windows(&self) -> bool {
        self.layout == Layout::SortedSet
    }

    async fn count_at_least(
        &self,
        shard: ShardId,
        thresholds: &[u64],
    ) -> Result<Vec<u64>, StoreError> {
        Ok(RedisStore::count_at_least(self, shard, thresholds).await?)
    }

    async fn window(&self, shard: ShardId, window: Window) -> Result<WindowRead, StoreError> {
        Ok(RedisStore::window(self, shard, window).await?)
    }
}

impl Shared {
    fn identities(&self) -> MutexGuard<'_, Vec<Option<String>>> {
        lock(&self.identities)
    }

    /// Probes the nodes `due` selects, identifying each that answers for the first time,
    /// and takes out of service every one found to be another entry's database or to
    /// record another ring.
    async fn check(&self, due: impl Fn(&Node) -> bool) {
        let contacts = self.probe(due, true).await;
        for (shard, duplicate) in contacts.duplicates {
            self.nodes[shard].disable(&duplicate);
        }
        for (shard, seen) in contacts.rings {
            let node = &self.nodes[shard];
            if let Some(refusal) = self.ring_check.refusal_of(node.name(), &seen) {
                node.disable(&refusal);
            }
        }
    }

    /// Probes the nodes `due` selects. A node answering for the first time is marked up
    /// only once its id is recorded and its ring agrees (with `claim`, a node recording no
    /// ring is given this one and agrees). One whose id another entry holds is returned in
    /// the duplicates, with the [`Error::DuplicateNode`] that says so; what the ring check
    /// of the others saw is returned in the rings. Refusing or disabling is the caller's.
    async fn probe(&self, due: impl Fn(&Node) -> bool, claim: bool) -> FirstContacts {
        let known: Vec<bool> = self.identities().iter().map(Option::is_some).collect();
        let ring = &self.ring_check;
        let probes = self
            .nodes
            .iter()
            .zip(known)
            .enumerate()
            .filter(|(_, (node, _))| due(node))
            .map(|(shard, (node, known))| async move {
                (shard, node.probe((!known).then_some((ring, claim))).await)
            });
        let outcomes = futures::future::join_all(probes).await;
        // In shard order: of two entries first answering together, the later is the alias.
        let mut contacts = FirstContacts::default();
        for (shard, outcome) in outcomes {
            if let Probe::FirstContact(id, seen) = outcome {
                match self.record_identity(shard, id) {
                    Ok(()) => {
                        if seen == Seen::Agrees {
                            self.nodes[shard].mark_up();
                        }
                        contacts.rings.push((shard, seen));
                    }
                    Err(duplicate) => contacts.duplicates.push((shard, duplicate)),
                }
            }
        }
        contacts
    }

    /// Records this store's ring on `shard`'s node, which recorded none at start, and
    /// marks it up; takes it out of service if it now records another ring.
    async fn claim(&self, shard: ShardId) {
        let node = &self.nodes[shard];
        match node.claim_ring(&self.ring_check).await {
            Ok(seen) => match self.ring_check.refusal_of(node.name(), &seen) {
                None => node.mark_up(),
                Some(refusal) => node.disable(&refusal),
            },
            // Down until its next first contact, which claims it.
            Err(e) => {
                self.identities()[shard] = None;
                node.mark_down(&e);
            }
        }
    }

    /// Refreshes the lease on every node that is up. A node where a reshard has begun is
    /// taken out of service: nothing is written to it until the server restarts.
    async fn refresh_leases(&self) {
        let refreshes = self
            .nodes
            .iter()
            .filter(|node| node.is_up())
            .map(|node| async move {
                if let Ok(Some(marker)) = node.refresh_lease(&self.ring_check).await {
                    let seen = Seen::Resharding(marker);
                    if let Some(refusal) = self.ring_check.refusal_of(node.name(), &seen) {
                        node.disable(&refusal);
                    }
                }
            });
        futures::future::join_all(refreshes).await;
    }

    /// Deletes the lease on every node that is up (best effort: a lease left behind
    /// expires).
    async fn release_leases(&self) {
        let releases = self
            .nodes
            .iter()
            .filter(|node| node.is_up())
            .map(|node| node.release_lease(&self.ring_check));
        futures::future::join_all(releases).await;
    }

    /// Records `id` as `shard`'s node id, unless another entry holds it already.
    fn record_identity(&self, shard: ShardId, id: String) -> Result<()> {
        let mut identities = self.identities();
        let holder = identities
            .iter()
            .enumerate()
            .find(|(other, known)| *other != shard && known.as_deref() == Some(id.as_str()));
        if let Some((other, _)) = holder {
            return Err(Error::DuplicateNode {
                first: self.nodes[other].url().to_owned(),
                second: self.nodes[shard].url().to_owned(),
                node_id: id,
            });
        }
        identities[shard].get_or_insert(id);
        Ok(())
    }
}

/// What the first contacts of one probe round found.
#[derive(Default)]
struct FirstContacts {
    /// Nodes found to be another entry's database.
    duplicates: Vec<(ShardId, Error)>,
    /// The ring check of every other node contacted for the first time.
    rings: Vec<(ShardId, Seen)>,
}

/// `tally:urls` on one node, for the ranked reads of `crate::ranked`.
///
/// One checkout serves every request of a read, made by its first: each checkout costs a
/// round trip (the pool pings a connection before lending it), and a read of several steps
/// would otherwise wait again for one of the few ranking connections between two steps.
struct NodeSet<'a> {
    node: &'a Node,
    top_script: &'a redis::Script,
    conn: Option<deadpool_redis::Connection>,
}

impl NodeSet<'_> {
    async fn connection(&mut self, op: &'static str) -> Result<&mut deadpool_redis::Connection> {
        let conn = match self.conn.take() {
            Some(conn) => conn,
            None => self.node.checkout(op).await?,
        };
        Ok(self.conn.insert(conn))
    }
}

impl SortedSet for NodeSet<'_> {
    fn key(&self) -> &str {
        URLS_KEY
    }

    fn node(&self) -> &str {
        self.node.name()
    }

    async fn send<T: FromRedisValue + Send>(
        &mut self,
        op: &'static str,
        request: Request<'_>,
    ) -> Result<T> {
        let node = self.node;
        let conn = self.connection(op).await?;
        match request {
            Request::Command(cmd) => node.send(conn, op, cmd).await,
            Request::Pipeline(pipe) => node.send(conn, op, pipe).await,
        }
    }

    async fn run_top_script(&mut self, limit: usize) -> Result<Vec<Pair>> {
        let mut invocation = self.top_script.key(URLS_KEY);
        invocation.arg(limit);
        let node = self.node;
        let conn = self.connection("top").await?;
        node.send(conn, "top", &invocation).await
    }
}

fn protocol(node: &Node, op: &'static str, detail: String) -> Error {
    Error::Protocol {
        node: node.name().to_owned(),
        op,
        detail,
    }
}

/// Runs the health task, and starts it again whenever it panics: logged with its message
/// and counted (`tally_task_panics_total{task="health"}`), so node checks and mark
/// sweeps never stop silently. Node state lives in the store, not the task.
async fn supervise_health(
    shared: Weak<Shared>,
    stop: watch::Receiver<()>,
    interval: Duration,
    nodes: usize,
    marks_retention: Duration,
) {
    tally_counter::restart_on_panic(
        || run_health(shared.clone(), stop.clone(), interval, nodes, marks_retention),
        |message| {
            metrics::counter!("tally_task_panics_total", "task" => "health").increment(1);
            tracing::error!(panic.message = %message, "the redis health task panicked; restarted it");
        },
    )
    .await;
}

/// The health task: pings every node each `interval`, and the nodes marked down every
/// `min(interval, DOWN_PROBE_INTERVAL)`, until the last store handle is dropped. After the
/// pings of a round, sweeps a slice of the old high-water marks of each node due for it
/// (see `marks::Sweeper`).
///
/// Holds the store only weakly, and only while a round runs.
async fn run_health(
    shared: Weak<Shared>,
    mut stop: watch::Receiver<()>,
    interval: Duration,
    nodes: usize,
    marks_retention: Duration,
) {
    let tick = interval.min(DOWN_PROBE_INTERVAL);
    let mut sweeper = Sweeper::new(nodes, marks_retention);
    let mut last_full = tokio::time::Instant::now();
    let mut last_lease = tokio::time::Instant::now();
    loop {
        tokio::select! {
            // Nothing is ever sent: an error means the store (the sender) was dropped.
            _ = stop.changed() => return,
            () = tokio::time::sleep(tick) => {}
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let full = last_full.elapsed() >= interval;
        if full {
            last_full = tokio::time::Instant::now();
        }
        shared.check(|node| full || !node.is_up()).await;
        if last_lease.elapsed() >= LEASE_REFRESH {
            last_lease = tokio::time::Instant::now();
            shared.refresh_leases().await;
        }
        sweeper.run_due(&shared.nodes, &shared.sweep_script).await;
    }
}

fn describe_metrics() {
    metrics::describe_counter!(
        "tally_redis_commands_total",
        "Commands sent to Redis nodes, by node and operation."
    );
    metrics::describe_counter!(
        "tally_redis_errors_total",
        "Failed Redis operations, by node, operation and kind."
    );
    metrics::describe_gauge!(
        "tally_redis_node_up",
        "1 while a Redis node answers, 0 while it is marked down."
    );
    metrics::describe_histogram!(
        "tally_redis_command_seconds",
        metrics::Unit::Seconds,
        "Time for one Redis command, by node and operation."
    );
    metrics::describe_counter!(
        "tally_redis_marks_removed_total",
        "High-water marks removed by the sweep (not written for longer than MARKS_RETENTION_HOURS), by node."
    );
    metrics::describe_counter!(
        "tally_redis_batches_replayed_total",
        "Batches a node had already applied (retries after lost replies), answered without applying, by node and key layout (counters: visits; sorted-set: request statistics)."
    );
}
