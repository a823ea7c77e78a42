//! [`AppStore`]: the store the server counts in, chosen at start-up, so the rest of the app
//! is not generic over it.

use tally_counter::{
    Applied, Batch, InstanceId, MemoryStore, RankedStore, ServedVia, ShardHealth, ShardId,
    SketchAdd, Store, StoreError, StoredValues, Window, WindowRead,
};
use tally_embedded::EmbeddedStore;
use tally_redis::{ClusterStore, RedisStore};

/// Name of the embedded store's one shard in responses (`"node"`) and logs.
pub(crate) const EMBEDDED: &str = "embedded";

/// The embedded store, the memory store, Redis nodes or a Redis Cluster, behind one type.
#[derive(Debug)]
pub(crate) enum AppStore {
    /// No `REDIS_NODES`, `STORE=embedded` (the default): one redb file in `DATA_DIR`.
    Embedded {
        /// The store (the visits' view or the statistics' `ranked()` view of the file).
        store: EmbeddedStore,
    },
    /// No `REDIS_NODES`, `STORE=memory`: counts live in this process only.
    Memory(MemoryStore),
    /// `REDIS_NODES`: one shard per node, in the order listed.
    Redis {
        /// The store.
        store: RedisStore,
        /// Port of each node, by shard id, for `served_via: "redis_{port}"`.
        ports: Vec<u16>,
    },
    /// `REDIS_CLUSTER`: one shard per bucket, on the primary serving the bucket's slot.
    Cluster {
        /// The store (the visits' view or the statistics' view of the cluster).
        store: ClusterStore,
    },
}

impl AppStore {
    /// Whether the counts are kept in this process (the embedded or the memory store), so
    /// there are no Redis nodes to report.
    pub(crate) fn is_embedded(&self) -> bool {
        !matches!(self, Self::Redis { .. } | Self::Cluster { .. })
    }

    /// What `/status` names the store: `embedded`, `memory`, `redis` or `redis-cluster`.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::Embedded { .. } => "embedded",
            Self::Memory(_) => "memory",
            Self::Redis { .. } => "redis",
            Self::Cluster { .. } => "redis-cluster",
        }
    }

    /// Removes the day counts (sub-keys, see [`tally_counter::routing_key`]) before
    /// `cutoff` (`YYYY-MM-DD`) from the embedded or memory store; on Redis, where each
    /// day's key expires by its own TTL, nothing. Returns how many were removed.
    pub(crate) async fn remove_subkeys_before(&self, cutoff: &str) -> anyhow::Result<u64> {
        match self {
            Self::Embedded { store } => Ok(store.remove_subkeys_before(cutoff).await?),
            Self::Memory(store) => Ok(store.remove_subkeys_before(cutoff)),
            Self::Redis { .. } | Self::Cluster { .. } => Ok(0),
        }
    }

    /// The Redis store, when counting in Redis (for releasing its lease at shutdown).
    pub(crate) fn redis(&self) -> Option<&RedisStore> {
        match self {
            Self::Redis { store, .. } => Some(store),
            _ => None,
        }
    }

    /// The Redis Cluster store, when counting on a cluster (for `/status`).
    pub(crate) fn cluster(&self) -> Option<&ClusterStore> {
        match self {
            Self::Cluster { store } => Some(store),
            _ => None,
        }
    }

    /// The embedded store's database file, for `/status`.
    pub(crate) fn path(&self) -> Option<&std::path::Path> {
        match self {
            Self::Embedded { store } => Some(store.path()),
            _ => None,
        }
    }

    /// The `served_via` value of a read: `in_memory` for a cache hit (and always on the
    /// embedded and memory stores, as the README documents), `redis_{port}` of the node
    /// that answered a miss (on a cluster, the primary of the key's bucket).
    pub(crate) fn served_via(&self, served: ServedVia) -> String {
        match (self, served) {
            (Self::Redis { ports, .. }, ServedVia::Store(shard)) => match ports.get(shard) {
                Some(port) => format!("redis_{port}"),
                None => "redis".to_owned(),
            },
            (Self::Cluster { store }, ServedVia::Store(shard)) => match store.primary_of(shard) {
                Some(name) => match name.rsplit_once(':') {
                    Some((_, port)) => format!("redis_{port}"),
                    None => "redis".to_owned(),
                },
                None => "redis".to_owned(),
            },
            _ => "in_memory".to_owned(),
        }
    }

    /// The credential-free name of the node that owns `key`.
    pub(crate) fn node_of(&self, key: &str) -> &str {
        self.shard_name(self.shard_of(key))
    }
}

impl Store for AppStore {
    fn shard_count(&self) -> usize {
        match self {
            Self::Embedded { store } => Store::shard_count(store),
            Self::Memory(store) => store.shard_count(),
            Self::Redis { store, .. } => store.shard_count(),
            Self::Cluster { store } => store.shard_count(),
        }
    }

    fn shard_of(&self, key: &str) -> ShardId {
        match self {
            Self::Embedded { store } => Store::shard_of(store, key),
            Self::Memory(store) => store.shard_of(key),
            Self::Redis { store, .. } => store.shard_of(key),
            Self::Cluster { store } => store.shard_of(key),
        }
    }

    fn shard_name(&self, shard: ShardId) -> &str {
        match self {
            Self::Embedded { .. } => EMBEDDED,
            Self::Memory(_) => EMBEDDED,
            Self::Redis { store, .. } => store.shard_name(shard),
            Self::Cluster { store } => store.shard_name(shard),
        }
    }

    async fn apply(&self, shard: ShardId, batch: &Batch) -> Result<Vec<u64>, StoreError> {
        match self {
            Self::Embedded { store } => Store::apply(store, shard, batch).await,
            Self::Memory(store) => store.apply(shard, batch).await,
            Self::Redis { store, .. } => Store::apply(store, shard, batch).await,
            Self::Cluster { store } => Store::apply(store, shard, batch).await,
        }
    }

    async fn apply_checked(&self, shard: ShardId, batch: &Batch) -> Result<Applied, StoreError> {
        match self {
            Self::Embedded { store } => Store::apply_checked(store, shard, batch).await,
            Self::Memory(store) => store.apply_checked(shard, batch).await,
            Self::Redis { store, .. } => Store::apply_checked(store, shard, batch).await,
            Self::Cluster { store } => Store::apply_checked(store, shard, batch).await,
        }
    }

    async fn get(
        &self,
        shard: ShardId,
        instance: InstanceId,
        keys: &[&str],
    ) -> Result<StoredValues, StoreError> {
        match self {
            Self::Embedded { store } => Store::get(store, shard, instance, keys).await,
            Self::Memory(store) => store.get(shard, instance, keys).await,
            Self::Redis { store, .. } => Store::get(store, shard, instance, keys).await,
            Self::Cluster { store } => Store::get(store, shard, instance, keys).await,
        }
    }

    async fn reset(&self, shard: ShardId, key: &str) -> Result<(), StoreError> {
        match self {
            Self::Embedded { store } => Store::reset(store, shard, key).await,
            Self::Memory(store) => store.reset(shard, key).await,
            Self::Redis { store, .. } => Store::reset(store, shard, key).await,
            Self::Cluster { store } => Store::reset(store, shard, key).await,
        }
    }

    fn keeps_sketches(&self) -> bool {
        match self {
            Self::Embedded { store } => Store::keeps_sketches(store),
            Self::Memory(store) => store.keeps_sketches(),
            Self::Redis { store, .. } => Store::keeps_sketches(store),
            Self::Cluster { store } => Store::keeps_sketches(store),
        }
    }

    async fn sketch(
        &self,
        shard: ShardId,
        adds: &[SketchAdd<'_>],
        estimate: &[&str],
    ) -> Result<Vec<u64>, StoreError> {
        match self {
            Self::Embedded { store } => Store::sketch(store, shard, adds, estimate).await,
            Self::Memory(store) => store.sketch(shard, adds, estimate).await,
            Self::Redis { store, .. } => Store::sketch(store, shard, adds, estimate).await,
            Self::Cluster { store } => Store::sketch(store, shard, adds, estimate).await,
        }
    }

    fn health(&self) -> Vec<ShardHealth> {
        match self {
            Self::Embedded { store } => Store::health(store),
            Self::Memory(store) => store.health(),
            Self::Redis { store, .. } => store.health(),
            Self::Cluster { store } => store.health(),
        }
    }

    fn shard_up(&self, shard: ShardId) -> bool {
        match self {
            Self::Embedded { store } => Store::shard_up(store, shard),
            Self::Memory(store) => store.shard_up(shard),
            Self::Redis { store, .. } => store.shard_up(shard),
            Self::Cluster { store } => store.shard_up(shard),
        }
    }
}

impl RankedStore for AppStore {
    async fn top(&self, shard: ShardId, limit: usize) -> Result<Vec<(String, u64)>, StoreError> {
        match self {
            Self::Embedded { store } => RankedStore::top(store, shard, limit).await,
            Self::Memory(store) => store.top(shard, limit).await,
            Self::Redis { store, .. } => RankedStore::top(store, shard, limit).await,
            Self::Cluster { store } => RankedStore::top(store, shard, limit).await,
        }
    }

    fn serves_windows(&self) -> bool {
        match self {
            Self::Embedded { store } => RankedStore::serves_windows(store),
            Self::Memory(store) => store.serves_windows(),
            Self::Redis { store, .. } => store.serves_windows(),
            Self::Cluster { store } => store.serves_windows(),
        }
    }

    async fn count_at_least(
        &self,
        shard: ShardId,
        thresholds: &[u64],
    ) -> Result<Vec<u64>, StoreError> {
        match self {
            Self::Embedded { store } => RankedStore::count_at_least(store, shard, thresholds).await,
            Self::Memory(store) => store.count_at_least(shard, thresholds).await,
            Self::Redis { store, .. } => {
                RankedStore::count_at_least(store, shard, thresholds).await
            }
            Self::Cluster { store } => RankedStore::count_at_least(store, shard, thresholds).await,
        }
    }

    async fn window(&self, shard: ShardId, window: Window) -> Result<WindowRead, StoreError> {
        match self {
            Self::Embedded { store } => RankedStore::window(store, shard, window).await,
            Self::Memory(store) => store.window(shard, window).await,
            Self::Redis { store, .. } => RankedStore::window(store, shard, window).await,
            Self::Cluster { store } => RankedStore::window(store, shard, window).await,
        }
    }
}
