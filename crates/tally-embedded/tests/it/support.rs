//! Shared set-up: stores in temporary directories, batch builders, and the child processes
//! some tests run (the test binary itself, re-invoked with an environment variable).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tally_counter::{
    Applied, Batch, BatchId, CounterConfig, InstanceId, RankedStore, ShardHealth, ShardId, Store,
    StoreError, StoredValues, Window, WindowRead,
};
use tally_embedded::{EmbeddedConfig, EmbeddedStore};

/// Test result: `?` on any error fails the test with its message.
pub type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// A store in `dir` with a small cache, as the server would open it.
pub fn open(dir: &Path) -> EmbeddedStore {
    EmbeddedStore::open(dir, small_cache()).expect("the store opens")
}

pub fn small_cache() -> EmbeddedConfig {
    EmbeddedConfig {
        cache_bytes: 4 * 1024 * 1024,
    }
}

pub fn batch(instance: u64, seq: u64, deltas: &[(&str, u64)]) -> Batch {
    Batch {
        id: BatchId {
            instance: InstanceId::from_u64(instance),
            seq,
        },
        deltas: deltas.iter().map(|(k, d)| (Arc::from(*k), *d)).collect(),
    }
}

/// The stored values of `keys` and the mark of `instance`.
pub async fn read(store: &EmbeddedStore, instance: u64, keys: &[&str]) -> (Vec<u64>, u64) {
    let read = store
        .get(0, InstanceId::from_u64(instance), keys)
        .await
        .expect("read");
    (read.values, read.applied_seq)
}

/// A counter config that writes every 20 ms and retries quickly.
pub fn fast_counter() -> CounterConfig {
    CounterConfig {
        name: "test".into(),
        batch_interval: Duration::from_millis(20),
        retry_backoff_min: Duration::from_millis(5),
        retry_backoff_max: Duration::from_millis(20),
        ..CounterConfig::default()
    }
}

/// Environment variable that turns a run of the test binary into a child process: its
/// value names the role, and the test of that name runs it instead of its parent's part.
pub const CHILD_ROLE: &str = "TALLY_EMBEDDED_CHILD_ROLE";
/// The data directory a child works in.
pub const CHILD_DIR: &str = "TALLY_EMBEDDED_CHILD_DIR";

/// The role this process plays, when it is a child started by [`spawn_child`].
pub fn child_role() -> Option<String> {
    std::env::var(CHILD_ROLE).ok()
}

/// Starts this test binary again, running only `test` (its full path, e.g.
/// `crash::a_killed_writer_loses_no_acknowledged_batch`) in the role `role` on `dir`,
/// with its standard output piped to the parent.
pub fn spawn_child(test: &str, role: &str, dir: &Path) -> Child {
    Command::new(std::env::current_exe().expect("the test binary's path"))
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ROLE, role)
        .env(CHILD_DIR, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the test binary starts again as a child")
}

/// A line of a child's output without libtest's `test {name} ... ` in front, which the
/// child's first line shares.
pub fn child_line(line: &str) -> &str {
    line.rsplit(" ... ").next().unwrap_or(line)
}

/// An [`EmbeddedStore`] seen through a spy: it counts the windows read through it and,
/// when asked to, loses every other answer to a batch after the batch was applied, as a
/// connection dropped after the commit would.
#[derive(Debug, Clone)]
pub struct Spy {
    pub inner: EmbeddedStore,
    pub lose_replies: bool,
    /// Batches sent through the spy.
    pub batches: Arc<AtomicU64>,
    /// Windows read through the spy.
    pub windows: Arc<AtomicU64>,
}

impl Spy {
    pub fn new(inner: EmbeddedStore) -> Self {
        Self {
            inner,
            lose_replies: false,
            batches: Arc::default(),
            windows: Arc::default(),
        }
    }
}

impl Store for Spy {
    fn shard_count(&self) -> usize {
        self.inner.shard_count()
    }

    fn shard_of(&self, key: &str) -> ShardId {
        self.inner.shard_of(key)
    }

    fn shard_name(&self, shard: ShardId) -> &str {
        self.inner.shard_name(shard)
    }

    async fn apply(&self, shard: ShardId, batch: &Batch) -> Result<Vec<u64>, StoreError> {
        Ok(self.apply_checked(shard, batch).await?.totals)
    }

    async fn apply_checked(&self, shard: ShardId, batch: &Batch) -> Result<Applied, StoreError> {
        let applied = Store::apply_checked(&self.inner, shard, batch).await?;
        let sent = self.batches.fetch_add(1, Ordering::Relaxed);
        if self.lose_replies && sent.is_multiple_of(2) {
            return Err("the reply was lost".into());
        }
        Ok(applied)
    }

    async fn get(
        &self,
        shard: ShardId,
        instance: InstanceId,
        keys: &[&str],
    ) -> Result<StoredValues, StoreError> {
        Store::get(&self.inner, shard, instance, keys).await
    }

    async fn reset(&self, shard: ShardId, key: &str) -> Result<(), StoreError> {
        Store::reset(&self.inner, shard, key).await
    }

    fn health(&self) -> Vec<ShardHealth> {
        self.inner.health()
    }
}

impl RankedStore for Spy {
    async fn top(&self, shard: ShardId, limit: usize) -> Result<Vec<(String, u64)>, StoreError> {
        RankedStore::top(&self.inner, shard, limit).await
    }

    fn serves_windows(&self) -> bool {
        self.inner.serves_windows()
    }

    async fn count_at_least(
        &self,
        shard: ShardId,
        thresholds: &[u64],
    ) -> Result<Vec<u64>, StoreError> {
        RankedStore::count_at_least(&self.inner, shard, thresholds).await
    }

    async fn window(&self, shard: ShardId, window: Window) -> Result<WindowRead, StoreError> {
        self.windows.fetch_add(1, Ordering::Relaxed);
        RankedStore::window(&self.inner, shard, window).await
    }
}
