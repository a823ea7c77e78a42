//! The bound on concurrent merges, shared merges, and cancellation, on the embedded
//! ranked store wrapped so that each shard read waits until the test lets it go.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tally_counter::{
    Applied, Batch, CounterConfig, InstanceId, MemoryStore, RankedStore, ShardHealth, ShardId,
    Store, StoreError, StoredValues,
};
use tally_stats::{Error, MAX_CONCURRENT_MERGES, MERGE_WAIT, Page, StatsTracker, UrlPath};
use tokio::sync::Semaphore;

/// One shard: each merge makes exactly one `top` call.
const SHARDS: usize = 1;

/// What the held store saw.
#[derive(Debug, Default)]
struct Seen {
    /// `top` calls started.
    started: AtomicUsize,
    /// `top` calls that returned.
    finished: AtomicUsize,
    /// `top` calls dropped before they returned (their merge was cancelled).
    dropped: AtomicUsize,
}

/// [`MemoryStore::ranked`], except that `top` waits for a permit of `release`.
#[derive(Debug)]
struct HeldStore {
    inner: MemoryStore,
    release: Arc<Semaphore>,
    seen: Arc<Seen>,
}

impl HeldStore {
    fn new() -> Self {
        Self {
            inner: MemoryStore::ranked(SHARDS),
            release: Arc::new(Semaphore::new(0)),
            seen: Arc::default(),
        }
    }
}

/// Counts a `top` call as dropped unless it was disarmed by finishing.
struct DropWatch(Option<Arc<Seen>>);

impl Drop for DropWatch {
    fn drop(&mut self) {
        if let Some(seen) = self.0.take() {
            seen.dropped.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Store for HeldStore {
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
        self.inner.apply(shard, batch).await
    }
    async fn apply_checked(&self, shard: ShardId, batch: &Batch) -> Result<Applied, StoreError> {
        self.inner.apply_checked(shard, batch).await
    }
    async fn get(
        &self,
        shard: ShardId,
        instance: InstanceId,
        keys: &[&str],
    ) -> Result<StoredValues, StoreError> {
        self.inner.get(shard, instance, keys).await
    }
    async fn reset(&self, shard: ShardId, key: &str) -> Result<(), StoreError> {
        self.inner.reset(shard, key).await
    }
    fn health(&self) -> Vec<ShardHealth> {
        self.inner.health()
    }
}

impl RankedStore for HeldStore {
    async fn top(&self, shard: ShardId, limit: usize) -> Result<Vec<(String, u64)>, StoreError> {
        self.seen.started.fetch_add(1, Ordering::SeqCst);
        let mut watch = DropWatch(Some(Arc::clone(&self.seen)));
        self.release.acquire().await?.forget();
        let top = self.inner.top(shard, limit).await;
        watch.0 = None;
        self.seen.finished.fetch_add(1, Ordering::SeqCst);
        top
    }
}

fn tracker(store: HeldStore) -> StatsTracker<HeldStore> {
    let config = CounterConfig {
        name: "stats".into(),
        batch_interval: Duration::from_secs(3600),
        cache_capacity: 16,
        ..CounterConfig::default()
    };
    StatsTracker::new(store, config, Duration::from_secs(5)).unwrap()
}

/// `stats.ranking(page)` on a task of its own.
fn spawn_ranking(
    stats: &StatsTracker<HeldStore>,
    page: Page,
) -> tokio::task::JoinHandle<tally_stats::Result<Vec<tally_stats::UrlCount>>> {
    let stats = stats.clone();
    tokio::spawn(async move { stats.ranking(page).await })
}

fn page(offset: usize) -> Page {
    Page { limit: 10, offset }
}

/// `future`'s output, or a panic if it has not come within a minute (of paused time: it
/// passes at once when everything else is idle), so that a broken bound fails rather than
/// hangs.
async fn bounded<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), future)
        .await
        .unwrap_or_else(|_| panic!("hung: {what}"))
}

/// Yields to the runtime until `done` holds (time is paused in these tests: waiting costs
/// nothing, and the merge wait only runs out when every task is idle).
async fn until(what: &str, done: impl Fn() -> bool) {
    for _ in 0..10_000 {
        if done() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("never happened: {what}");
}

#[tokio::test(start_paused = true)]
async fn merges_past_the_bound_wait_then_fail_busy_and_a_freed_slot_admits_the_next() {
    let store = HeldStore::new();
    let seen = Arc::clone(&store.seen);
    let release = Arc::clone(&store.release);
    let stats = tracker(store);
    let path = UrlPath::parse("/api/a/").unwrap();
    stats.record(&path).unwrap();

    // Distinct pages: no sharing, each call a merge of its own.
    let running: Vec<_> = (0..MAX_CONCURRENT_MERGES)
        .map(|i| spawn_ranking(&stats, page(i)))
        .collect();
    until("the allowed merges reading the store", || {
        seen.started.load(Ordering::SeqCst) == MAX_CONCURRENT_MERGES
    })
    .await;

    // One more: it waits the merge wait (no store read), then is refused.
    let before = tokio::time::Instant::now();
    let refused = bounded("the call past the bound", stats.ranking(page(99)))
        .await
        .unwrap_err();
    assert!(
        matches!(refused, Error::Busy { merges, waited } if merges == MAX_CONCURRENT_MERGES && waited == MERGE_WAIT),
        "{refused:?}"
    );
    assert!(before.elapsed() >= MERGE_WAIT, "gave up before the wait");
    assert_eq!(
        seen.started.load(Ordering::SeqCst),
        MAX_CONCURRENT_MERGES,
        "a merge past the bound read the store"
    );

    // Let one finish: its slot admits the next call.
    release.add_permits(1);
    until("one merge finished", || {
        seen.finished.load(Ordering::SeqCst) == 1
    })
    .await;
    let next = spawn_ranking(&stats, Page::default());
    release.add_permits(MAX_CONCURRENT_MERGES);
    let ranking = bounded("the next call", next).await.unwrap().unwrap();
    assert_eq!(ranking.len(), 1);
    for merge in running {
        bounded("a merge", merge).await.unwrap().unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn identical_queries_share_one_merge_started_after_each_arrived() {
    let store = HeldStore::new();
    let seen = Arc::clone(&store.seen);
    let release = Arc::clone(&store.release);
    let stats = tracker(store);
    stats
        .record(&UrlPath::parse("/api/early/").unwrap())
        .unwrap();

    // Fill every slot, so the identical queries below queue.
    let blockers: Vec<_> = (0..MAX_CONCURRENT_MERGES)
        .map(|i| spawn_ranking(&stats, page(100 + i)))
        .collect();
    until("the slots taken", || {
        seen.started.load(Ordering::SeqCst) == MAX_CONCURRENT_MERGES
    })
    .await;
    let queued: Vec<_> = (0..5)
        .map(|_| spawn_ranking(&stats, Page::default()))
        .collect();
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    // Free one slot: the five share the merge that takes it.
    release.add_permits(1);
    until("the shared merge reading", || {
        seen.started.load(Ordering::SeqCst) == MAX_CONCURRENT_MERGES + 1
    })
    .await;
    // A query arriving now, while that merge runs, must not join it: it would get an
    // answer older than itself. It gets a merge of its own, after this count is recorded.
    stats
        .record(&UrlPath::parse("/api/late/").unwrap())
        .unwrap();
    let late = spawn_ranking(&stats, Page::default());
    release.add_permits(10);
    let answers: Vec<_> = bounded("the queued calls", futures::future::join_all(queued)).await;
    for answer in &answers {
        let urls: Vec<&str> = answer
            .as_ref()
            .unwrap()
            .as_ref()
            .unwrap()
            .iter()
            .map(|u| u.url.as_str())
            .collect();
        assert!(urls.contains(&"/api/early/"), "{urls:?}");
    }
    let late = bounded("the late call", late).await.unwrap().unwrap();
    assert!(
        late.iter().any(|u| u.url == "/api/late/"),
        "the late query joined a merge started before it: {late:?}"
    );
    for merge in blockers {
        bounded("a merge", merge).await.unwrap().unwrap();
    }
    assert_eq!(
        seen.started.load(Ordering::SeqCst),
        MAX_CONCURRENT_MERGES + 2,
        "five identical queued queries made more than one merge (or the late one none)"
    );
}

#[tokio::test(start_paused = true)]
async fn a_merge_nobody_waits_for_any_more_is_cancelled_and_frees_its_slot() {
    let store = HeldStore::new();
    let seen = Arc::clone(&store.seen);
    let release = Arc::clone(&store.release);
    let stats = tracker(store);

    // Two callers of one merge, both reading the store; the first goes away, then the second.
    let callers: Vec<_> = (0..2)
        .map(|_| spawn_ranking(&stats, Page::default()))
        .collect();
    until("the merge reading", || {
        seen.started.load(Ordering::SeqCst) == 1
    })
    .await;
    callers[0].abort();
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        seen.dropped.load(Ordering::SeqCst),
        0,
        "the merge was cancelled while a caller still waited for it"
    );
    callers[1].abort();
    until("the merge cancelled", || {
        seen.dropped.load(Ordering::SeqCst) == 1
    })
    .await;

    // Every slot is free again: as many merges as allowed start at once.
    let next: Vec<_> = (0..MAX_CONCURRENT_MERGES)
        .map(|i| spawn_ranking(&stats, page(i)))
        .collect();
    until("the allowed merges reading", || {
        seen.started.load(Ordering::SeqCst) == 1 + MAX_CONCURRENT_MERGES
    })
    .await;
    release.add_permits(MAX_CONCURRENT_MERGES);
    for merge in next {
        bounded("a merge", merge).await.unwrap().unwrap();
    }
    assert_eq!(seen.finished.load(Ordering::SeqCst), MAX_CONCURRENT_MERGES);
}
