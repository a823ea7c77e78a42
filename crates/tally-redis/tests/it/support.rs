//! Shared set-up: fast configs, batch builders, polling, error inspection.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use tally_counter::{Batch, BatchId, CounterConfig, InstanceId, StoreError};
use tally_redis::{RedisConfig, RedisStore};
use tally_testkit::RedisNode;

/// Test result: `?` on any error fails the test with its message.
pub type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// A store config with short timeouts and a fast health check, so fault tests take
/// fractions of a second.
pub fn fast_config(urls: &str) -> RedisConfig {
    let mut config = RedisConfig::from_urls(urls).expect("test URLs parse");
    config.timeout = Duration::from_millis(500);
    config.retry_attempts = 1;
    config.health_check_interval = Duration::from_millis(100);
    config.pool_size = 4;
    config
}

pub async fn connect(urls: &str) -> RedisStore {
    RedisStore::connect(fast_config(urls))
        .await
        .expect("store connects")
}

/// A counter config that writes every 20 ms and retries quickly.
pub fn fast_counter() -> CounterConfig {
    CounterConfig {
        name: "test".into(),
        batch_interval: Duration::from_millis(20),
        retry_backoff_min: Duration::from_millis(10),
        retry_backoff_max: Duration::from_millis(100),
        ..CounterConfig::default()
    }
}

pub fn batch(instance: u64, seq: u64, deltas: &[(&str, u64)]) -> Batch {
    Batch {
        id: BatchId {
            instance: InstanceId::from_u64(instance),
            seq,
        },
        deltas: deltas
            .iter()
            .map(|(k, d)| (std::sync::Arc::from(*k), *d))
            .collect(),
    }
}

/// Polls `check` every 20 ms until it returns true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The crate error inside a boxed store error. Tests that call the `Store` trait by path
/// (`Store::apply(&store, ..)`, as the counter calls it; a method call would reach the
/// inherent method of the same name) check with it that the trait hands on this error.
pub fn redis_error(err: &StoreError) -> &tally_redis::Error {
    err.downcast_ref::<tally_redis::Error>()
        .unwrap_or_else(|| panic!("not a tally_redis::Error: {err:?}"))
}

/// `Display` of an error and all its causes, plus its `Debug`: everything a log could show.
pub fn everything_shown(err: &(dyn std::error::Error + 'static)) -> String {
    let mut shown = format!("{err} | {err:?}");
    let mut source = err.source();
    while let Some(cause) = source {
        shown.push_str(&format!(" | {cause} | {cause:?}"));
        source = cause.source();
    }
    shown
}

/// A key owned by `shard` under `store`'s ring, with the given prefix.
pub fn key_on(store: &RedisStore, shard: usize, prefix: &str) -> String {
    use tally_counter::Store as _;
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|k| store.shard_of(k) == shard)
        .expect("some key lands on every shard")
}

/// Every `tally:v:*` counter on a node with its value, in one connection.
pub fn counters_on(
    node: &RedisNode,
) -> Result<BTreeMap<String, u64>, Box<dyn std::error::Error + Send + Sync>> {
    let mut conn = node.client()?.get_connection()?;
    let keys: Vec<String> = redis::cmd("KEYS").arg("tally:v:*").query(&mut conn)?;
    if keys.is_empty() {
        return Ok(BTreeMap::new());
    }
    let values: Vec<u64> = redis::cmd("MGET").arg(&keys).query(&mut conn)?;
    Ok(keys.into_iter().zip(values).collect())
}

/// Log lines (debug and above, no colours) written while it lives, by code running on this
/// thread: use it in a current-thread test (`#[tokio::test]`), so the store's tasks log
/// here too.
pub struct Logs {
    buffer: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    _guard: tracing::subscriber::DefaultGuard,
}

impl Logs {
    /// Starts capturing on this thread.
    pub fn capture() -> Self {
        let buffer = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let writer = SharedBuffer(std::sync::Arc::clone(&buffer));
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        Self {
            buffer,
            _guard: tracing::subscriber::set_default(subscriber),
        }
    }

    /// Everything captured so far.
    pub fn text(&self) -> String {
        let bytes = self.buffer.lock().expect("log buffer").clone();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

#[derive(Clone)]
struct SharedBuffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for SharedBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
