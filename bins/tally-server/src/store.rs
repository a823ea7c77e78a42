//! [`AppStore`]: the store the server counts in, chosen at start-up, so the rest of the app
//! is not generic over it.

use tally_counter::{
    Applied, Batch, InstanceId, MemoryStore, RankedStore, ServedVia, ShardHealth, ShardId, Store,
    StoreError, StoredValues, Window, WindowRead,
};
use tally_redis::RedisStore;

/// Name of the embedded store's one shard in responses (`"node"`) and logs.
pub(crate) const EMBEDDED: &str = "embedded";

/// The embedded in-process store or Redis, behind one type.
#[derive(Debug)]
pub(crate) enum AppStore {
    /// No `REDIS_NODES`: counts live in this process only.
    Memory(MemoryStore),
    /// `REDIS_NODES`: one shard per node, in the order listed.
    Redis {
        /// The store.
        store: RedisStore,
        /// Port of each node, by shard id, for `served_via: "redis_{port}"`.
        ports: Vec<u16>,
    },
}

impl AppStore {
    /// Whether this is the embedded store.
    pub(crate) fn is_embedded(&self) -> bool {
        matches!(self, Self::Memory(_))
    }

    /// The `served_via` value of a read: `in_memory` for a cache hit (and always on the
    /// embedded store), `redis_{port}` of the node that answered a miss.
    pub(crate) fn served_via(&self, served: ServedVia) -> String {
        match (self, served) {
            (Self::Redis { ports, .. }, ServedVia::Store(shard)) => match ports.get(shard) {
                Some(port) => format!("redis_{port}"),
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
            Self::Memory(store) => store.shard_count(),
            Self::Redis { store, .. } => store.shard_count(),
        }
    }

    fn shard_of(&self, key: &str) -> ShardId {
        match self {
            Self::Memory(store) => store.shard_of(key),
            Self::Redis { store, .. } => store.shard_of(key),
        }
    }

    fn shard_name(&self, shard: ShardId) -> &str {
        match self {
            Self::Memory(_) => EMBEDDED,
            Self::Redis { store, .. } => store.shard_name(shard),
        }
    }

    async fn apply(&self, shard: ShardId, batch: &Batch) -> Result<Vec<u64>, StoreError> {
        match self {
            Self::Memory(store) => store.apply(shard, batch).await,
            Self::Redis { store, .. } => Store::apply(store, shard, batch).await,
        }
    }

    async fn apply_checked(&self, shard: ShardId, batch: &Batch) -> Result<Applied, StoreError> {
        match self {
            Self::Memory(store) => store.apply_checked(shard, batch).await,
            Self::Redis { store, .. } => Store::apply_checked(store, shard, batch).await,
        }
    }

    async fn get(
        &self,
        shard: ShardId,
        instance: InstanceId,
        keys: &[&str],
    ) -> Result<StoredValues, StoreError> {
        match self {
            Self::Memory(store) => store.get(shard, instance, keys).await,
            Self::Redis { store, .. } => Store::get(store, shard, instance, keys).await,
        }
    }

    async fn reset(&self, shard: ShardId, key: &str) -> Result<(), StoreError> {
        match self {
            Self::Memory(store) => store.reset(shard, key).await,
            Self::Redis { store, .. } => Store::reset(store, shard, key).await,
        }
    }

    fn health(&self) -> Vec<ShardHealth> {
        match self {
            Self::Memory(store) => store.health(),
            Self::Redis { store, .. } => store.health(),
        }
    }

    fn shard_up(&self, shard: ShardId) -> bool {
        match self {
            Self::Memory(store) => store.shard_up(shard),
            Self::Redis { store, .. } => store.shard_up(shard),
        }
    }
}

impl RankedStore for AppStore {
    async fn top(&self, shard: ShardId, limit: usize) -> Result<Vec<(String, u64)>, StoreError> {
        match self {
            Self::Memory(store) => store.top(shard, limit).await,
            Self::Redis { store, .. } => RankedStore::top(store, shard, limit).await,
        }
    }

    fn serves_windows(&self) -> bool {
        match self {
            Self::Memory(store) => store.serves_windows(),
            Self::Redis { store, .. } => store.serves_windows(),
        }
    }

    async fn count_at_least(
        &self,
        shard: ShardId,
        thresholds: &[u64],
    ) -> Result<Vec<u64>, StoreError> {
        match self {
            Self::Memory(store) => store.count_at_least(shard, thresholds).await,
            Self::Redis { store, .. } => {
                RankedStore::count_at_least(store, shard, thresholds).await
            }
        }
    }

    async fn window(&self, shard: ShardId, window: Window) -> Result<WindowRead, StoreError> {
        match self {
            Self::Memory(store) => store.window(shard, window).await,
            Self::Redis { store, .. } => RankedStore::window(store, shard, window).await,
        }
    }
}
