//! A store wrapper whose `apply` can be made to fail, lose its reply, or hold open, and
//! whose reads can be held open or made to fail; and helpers the tests share.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tally_counter::{
    Batch, BatchId, Counter, CounterConfig, InstanceId, MemoryStore, ShardHealth, ShardId, Store,
    StoreError, StoredValues,
};
use tokio::sync::{Notify, Semaphore};

/// What the next `apply` calls do, consumed one call at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Fail without applying.
    Fail,
    /// Apply, then report an error (the reply was lost).
    LoseReply,
    /// Never answer.
    Hang,
    /// Panic without applying (a store with a bug).
    Panic,
}

/// [`MemoryStore`] with scripted faults on `apply`, optionally only on one shard.
#[derive(Debug)]
pub struct ScriptedStore {
    /// The store underneath, read directly by assertions.
    pub inner: MemoryStore,
    /// Faults still to come, the next one last.
    faults: Mutex<Vec<Fault>>,
    /// Shard the faults apply to (`None`: any).
    fault_shard: Option<ShardId>,
    /// When set, every apply waits for a permit before touching the store.
    gate: Option<Arc<Semaphore>>,
    /// Notified when an apply has started (before the gate).
    pub entered: Arc<Notify>,
    /// Applies started, whatever their outcome.
    pub applies: AtomicUsize,
    /// The id of every apply started, in order.
    sent: Mutex<Vec<BatchId>>,
    /// When set, every read's answer (read from the store already) waits for a permit.
    read_gate: Option<Arc<Semaphore>>,
    /// Reads fail while this is set.
    pub fail_reads: AtomicBool,
    /// Reads started (counted before the gate).
    pub gets: AtomicUsize,
    /// The health this store reports: every shard down while set.
    pub down: AtomicBool,
}

impl ScriptedStore {
    /// A store of `shards` shards with no faults, gates or failures.
    pub fn new(shards: usize) -> Self {
        Self {
            inner: MemoryStore::with_shards(shards),
            faults: Mutex::new(Vec::new()),
            fault_shard: None,
            gate: None,
            entered: Arc::new(Notify::new()),
            applies: AtomicUsize::new(0),
            sent: Mutex::new(Vec::new()),
            read_gate: None,
            fail_reads: AtomicBool::new(false),
            gets: AtomicUsize::new(0),
            down: AtomicBool::new(false),
        }
    }

    /// Every read, once done, waits on this semaphore for a permit (consumed) before it
    /// answers.
    pub fn reads_gated(mut self, gate: Arc<Semaphore>) -> Self {
        self.read_gate = Some(gate);
        self
    }

    /// Queue faults for the next apply calls, in order.
    pub fn with_faults(self, faults: &[Fault]) -> Self {
        *self.faults.lock().unwrap() = faults.iter().rev().copied().collect();
        self
    }

    /// Queues `fault` after those already queued, while the store is in use.
    pub fn queue_fault(&self, fault: Fault) {
        self.faults.lock().unwrap().insert(0, fault);
    }

    /// Faults queued and not yet met by an apply.
    pub fn faults_left(&self) -> usize {
        self.faults.lock().unwrap().len()
    }

    /// The batch id of every apply started so far, in order (a retry repeats its id).
    pub fn sent(&self) -> Vec<BatchId> {
        self.sent.lock().unwrap().clone()
    }

    /// Queued faults hit only this shard.
    pub fn on_shard(mut self, shard: ShardId) -> Self {
        self.fault_shard = Some(shard);
        self
    }

    /// Every apply waits on this semaphore for a permit (consumed).
    pub fn gated(mut self, gate: Arc<Semaphore>) -> Self {
        self.gate = Some(gate);
        self
    }

    /// The fault the next apply on `shard` meets, taken off the queue.
    fn next_fault(&self, shard: ShardId) -> Option<Fault> {
        if self.fault_shard.is_some_and(|s| s != shard) {
            return None;
        }
        self.faults.lock().unwrap().pop()
    }
}

impl Store for ScriptedStore {
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
        self.applies.fetch_add(1, Ordering::SeqCst);
        self.sent.lock().unwrap().push(batch.id);
        self.entered.notify_one();
        if let Some(gate) = &self.gate {
            gate.acquire().await.expect("gate open").forget();
        }
        match self.next_fault(shard) {
            None => self.inner.apply(shard, batch).await,
            Some(Fault::Fail) => Err("scripted failure".into()),
            Some(Fault::LoseReply) => {
                self.inner.apply(shard, batch).await?;
                Err("scripted lost reply".into())
            }
            Some(Fault::Hang) => std::future::pending().await,
            Some(Fault::Panic) => panic!("scripted panic in apply"),
        }
    }

    async fn get(
        &self,
        shard: ShardId,
        instance: InstanceId,
        keys: &[&str],
    ) -> Result<StoredValues, StoreError> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        let read = self.inner.get(shard, instance, keys).await;
        if let Some(gate) = &self.read_gate {
            gate.acquire().await.expect("gate open").forget();
        }
        if self.fail_reads.load(Ordering::SeqCst) {
            return Err("scripted read failure".into());
        }
        read
    }

    async fn reset(&self, shard: ShardId, key: &str) -> Result<(), StoreError> {
        self.inner.reset(shard, key).await
    }

    fn health(&self) -> Vec<ShardHealth> {
        let up = !self.down.load(Ordering::SeqCst);
        let mut health = self.inner.health();
        health.iter_mut().for_each(|shard| shard.up = up);
        health
    }
}

/// A config with short waits, so retries and triggers happen fast in tests.
///
/// Cache entries live for an hour: the cache keeps time on the real clock (not tokio's),
/// and a test that expects a hit must not depend on how fast the machine reaches its read.
/// The test of expiry sets its own short TTL.
pub fn fast_config() -> CounterConfig {
    CounterConfig {
        name: "test".to_owned(),
        batch_interval: Duration::from_millis(20),
        retry_backoff_min: Duration::from_millis(1),
        retry_backoff_max: Duration::from_millis(10),
        cache_ttl: Duration::from_secs(3600),
        ..CounterConfig::default()
    }
}

/// A config whose flusher never fires on its own during a test: batches go out only on
/// `flush`, `reset` or `shutdown`.
pub fn manual_config() -> CounterConfig {
    CounterConfig {
        batch_interval: Duration::from_secs(3600),
        ..fast_config()
    }
}

/// A counter with `config` over one shard whose applies each wait for a permit of the
/// returned gate (none yet): a batch sent stays on the wire until the test lets it go.
pub fn gated_applies(config: CounterConfig) -> (Counter<ScriptedStore>, Arc<Semaphore>) {
    let gate = Arc::new(Semaphore::new(0));
    let store = ScriptedStore::new(1).gated(Arc::clone(&gate));
    (Counter::new(store, config).unwrap(), gate)
}

/// `counter.flush()` on a task of its own, for tests that act while it runs.
pub fn spawn_flush<S: Store>(counter: &Counter<S>) -> tokio::task::JoinHandle<()> {
    let counter = counter.clone();
    tokio::spawn(async move { counter.flush().await })
}

/// How long [`eventually`] waits for its condition: far more than any condition here needs
/// on a loaded machine. On a paused clock the wait costs no real time.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Runs `check` every millisecond of tokio time until it answers `Some`, and returns that
/// answer. Panics, naming `what`, once [`PATIENCE`] has passed (virtual time on a paused
/// clock, where the wait costs nothing).
pub async fn eventually<T, F>(what: &str, mut check: impl FnMut() -> F) -> T
where
    F: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(answer) = check().await {
            return answer;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// [`eventually`] for a condition that needs no `.await`.
pub async fn wait_until(what: &str, done: impl Fn() -> bool) {
    eventually(what, || std::future::ready(done().then_some(()))).await;
}
