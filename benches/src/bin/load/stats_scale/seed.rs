//! The seed: which URLs, with which counts ([`url`], [`count`]), written to the Redis
//! nodes, an embedded store or the Redis Cluster through the store's own write path and
//! counted back, and the ranking the server must answer, computed from the seed alone
//! ([`Expected`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tally_counter::{Batch, BatchId, InstanceId, Store};
use tally_embedded::{EmbeddedConfig, EmbeddedStore};
use tally_redis::{ClusterConfig, ClusterStore, Layout, RedisConfig, RedisStore, URLS_KEY};
use tally_testkit::{Cluster, RedisCluster};

use super::report::{self, thousands};
use super::{PAGE, Plan, Ranked};
use crate::Setup;

/// Keys per seeding batch, per shard (node, or bucket on the cluster).
pub const SEED_BATCH: usize = 5_000;

/// The `i`-th seeded URL: an API path of 29 to 52 bytes.
fn url(i: usize) -> String {
    const RESOURCES: [&str; 5] = [
        "items",
        "users",
        "orders",
        "catalog/products",
        "accounts/settings",
    ];
    const VIEWS: [&str; 4] = ["details", "reviews", "history", "related-items"];
    format!(
        "/api/v1/shop/{}/{i}/{}/",
        RESOURCES[i % RESOURCES.len()],
        VIEWS[(i / RESOURCES.len()) % VIEWS.len()]
    )
}

/// The `i`-th seeded URL's count: `1,000,000 / (i + 1)`, at least 1.
fn count(i: usize) -> u64 {
    (1_000_000 / (i as u64 + 1)).max(1)
}

/// The first `n` seeded URLs.
pub fn urls(n: usize) -> Vec<Arc<str>> {
    (0..n).map(|i| url(i).into()).collect()
}

/// A store after seeding.
#[derive(Debug)]
pub struct Seeded {
    /// How long writing took (opening the store and its last commit included).
    pub seeding: Duration,
    /// URLs the store holds afterwards: per node `ZCARD tally:urls` on Redis, the ranked
    /// view's length on the embedded store, per primary the `ZCARD`s of its buckets' sets
    /// on the cluster.
    pub per_node: Vec<u64>,
    /// On the cluster: the replicas each seeding batch waited for (`WAIT`).
    pub wait_replicas: Option<usize>,
    /// Size of the embedded store's file after seeding.
    pub file_bytes: Option<u64>,
}

/// Writes `urls` with their counts on the (flushed) nodes, then checks that the nodes
/// hold them all. The store that wrote them comes back still connected.
pub fn write_redis(
    setup: &Setup<'_>,
    cluster: &RedisCluster,
    urls: &[Arc<str>],
) -> anyhow::Result<(RedisStore, Seeded)> {
    eprintln!(
        "load: /stats/ scale: seeding {} URLs into {} Redis nodes",
        thousands(urls.len() as u64),
        cluster.nodes().len()
    );
    let mut config = RedisConfig::from_urls(&setup.redis_urls.join(","))
        .context("the nodes' URLs as REDIS_NODES")?;
    config.layout = Layout::SortedSet;
    let started = Instant::now();
    let store = setup.client_rt.block_on(async {
        let store = RedisStore::connect(config)
            .await
            .context("cannot connect the seeding store")?;
        write_batches(&store, urls).await?;
        anyhow::Ok(store)
    })?;
    let seeding = started.elapsed();
    let mut per_node = Vec::with_capacity(cluster.nodes().len());
    for node in cluster.nodes() {
        let mut zcard = redis::cmd("ZCARD");
        zcard.arg(URLS_KEY);
        per_node.push(node.query::<u64>(&zcard).context("ZCARD after seeding")?);
    }
    let total: u64 = per_node.iter().sum();
    anyhow::ensure!(
        total == urls.len() as u64,
        "after seeding the nodes hold {total} URLs in {URLS_KEY}, not {}",
        urls.len()
    );
    eprintln!(
        "load: /stats/ scale: seeded in {:.1} s ({} per node)",
        seeding.as_secs_f64(),
        report::per_node(&per_node, |n| thousands(*n))
    );
    Ok((
        store,
        Seeded {
            seeding,
            per_node,
            file_bytes: None,
            wait_replicas: None,
        },
    ))
}

/// Opens a new embedded store in `dir` as tally-server would (its default
/// [`EmbeddedConfig`]), writes `urls` with their counts on the statistics' view
/// ([`EmbeddedStore::ranked`]), checks that it holds them all, and closes it, so that a
/// server can open the directory next.
pub fn write_embedded(setup: &Setup<'_>, dir: &Path, urls: &[Arc<str>]) -> anyhow::Result<Seeded> {
    eprintln!(
        "load: /stats/ scale: seeding {} URLs into the embedded store in {}",
        thousands(urls.len() as u64),
        dir.display()
    );
    let started = Instant::now();
    let visits = EmbeddedStore::open(dir, EmbeddedConfig::default())
        .with_context(|| format!("cannot open an embedded store in {}", dir.display()))?;
    // tally-server's request statistics: the `ranked()` view of the file it opens in
    // `DATA_DIR` (bins/tally-server/src/startup.rs, `open_embedded`), one shard.
    let stats = visits.ranked();
    drop(visits);
    let held = setup.client_rt.block_on(async {
        write_batches(&stats, urls).await?;
        stats.len().await.context("the ranked view's length")
    })?;
    let path = stats.path().to_owned();
    // The last handle: the file is closed (and its lock released) here.
    drop(stats);
    let seeding = started.elapsed();
    anyhow::ensure!(
        held == urls.len() as u64,
        "after seeding the embedded store holds {held} URLs, not {}",
        urls.len()
    );
    let file_bytes = std::fs::metadata(&path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    eprintln!(
        "load: /stats/ scale: seeded in {:.1} s ({} MB file)",
        seeding.as_secs_f64(),
        file_bytes / 1_000_000
    );
    Ok(Seeded {
        seeding,
        per_node: vec![held],
        file_bytes: Some(file_bytes),
        wait_replicas: None,
    })
}

/// Writes `urls` with their counts on the (flushed) Redis Cluster, each on its bucket as
/// tally-server's request statistics write them (a [`ClusterStore`] view in the sorted-set
/// layout, every batch confirmed by its replica), then checks that the buckets hold them
/// all. The store is dropped (its connections closed) before tally-server starts.
pub fn write_cluster(
    setup: &Setup<'_>,
    cluster: &Cluster,
    urls: &[Arc<str>],
) -> anyhow::Result<Seeded> {
    eprintln!(
        "load: /stats/ scale: seeding {} URLs into a Redis Cluster of {} nodes",
        thousands(urls.len() as u64),
        cluster.nodes().len()
    );
    let config = ClusterConfig::from_urls(&setup.cluster_urls.join(","))
        .context("the cluster's URLs as REDIS_CLUSTER")?;
    let started = Instant::now();
    let (seeding, per_primary, wait_replicas) = setup.client_rt.block_on(async {
        let stats = ClusterStore::connect(config)
            .await
            .context("cannot connect the seeding store")?
            .with_layout(Layout::SortedSet);
        write_batches(&stats, urls).await?;
        let seeding = started.elapsed();
        // Counted per primary, the buckets in the order of their primaries' addresses.
        let mut per_primary = BTreeMap::<String, u64>::new();
        for bucket in 0..stats.bucket_count() {
            let held = stats
                .len(bucket)
                .await
                .with_context(|| format!("ZCARD of bucket {bucket} after seeding"))?;
            let primary = stats
                .primary_of(bucket)
                .unwrap_or_else(|| "no primary".to_owned());
            *per_primary.entry(primary).or_default() += held;
        }
        anyhow::Ok((seeding, per_primary, stats.wait_replicas()))
    })?;
    let per_node: Vec<u64> = per_primary.into_values().collect();
    let total: u64 = per_node.iter().sum();
    anyhow::ensure!(
        total == urls.len() as u64,
        "after seeding the cluster's buckets hold {total} URLs, not {}",
        urls.len()
    );
    eprintln!(
        "load: /stats/ scale: seeded in {:.1} s ({} per primary)",
        seeding.as_secs_f64(),
        report::per_node(&per_node, |n| thousands(*n))
    );
    Ok(Seeded {
        seeding,
        per_node,
        file_bytes: None,
        wait_replicas,
    })
}

/// Writes every URL with its count on its shard, [`SEED_BATCH`] keys a batch, the shards
/// in parallel, through the store's own [`Store::apply`] (as a counter's flush would).
async fn write_batches<S: Store + Clone>(store: &S, urls: &[Arc<str>]) -> anyhow::Result<()> {
    let mut by_shard: Vec<Vec<(Arc<str>, u64)>> = vec![Vec::new(); store.shard_count()];
    for (i, url) in urls.iter().enumerate() {
        by_shard[store.shard_of(url)].push((Arc::clone(url), count(i)));
    }
    let instance = InstanceId::random();
    let tasks: Vec<_> = by_shard
        .into_iter()
        .enumerate()
        .map(|(shard, deltas)| {
            let store = store.clone();
            tokio::spawn(async move {
                for (n, chunk) in deltas.chunks(SEED_BATCH).enumerate() {
                    let batch = Batch {
                        id: BatchId {
                            instance,
                            seq: n as u64 + 1,
                        },
                        deltas: chunk.to_vec(),
                    };
                    Store::apply(&store, shard, &batch)
                        .await
                        .map_err(anyhow::Error::from_boxed)
                        .with_context(|| format!("seeding batch {} of shard {shard}", n + 1))?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for task in tasks {
        task.await.context("a seeding task panicked")??;
    }
    Ok(())
}

/// The pages the server must answer, from the seed alone: count descending, then url
/// ascending.
#[derive(Debug)]
pub struct Expected {
    /// The top page (`GET /stats/`).
    pub top: Arc<Vec<Ranked>>,
    /// The deep page, at [`Plan::deep_offset`].
    pub deep: Arc<Vec<Ranked>>,
    /// How long ranking the seed took.
    pub ranking: Duration,
    /// Count at the deep page and how many URLs share it.
    pub deep_ties: (u64, usize),
}

impl Expected {
    /// Ranks `urls` (the seed of `plan`) and cuts the two pages.
    pub fn rank(plan: &Plan, urls: &[Arc<str>]) -> Self {
        let started = Instant::now();
        let mut order: Vec<u32> = (0..urls.len() as u32).collect();
        order.sort_unstable_by(|&a, &b| {
            let (a, b) = (a as usize, b as usize);
            count(b).cmp(&count(a)).then_with(|| urls[a].cmp(&urls[b]))
        });
        let ranking = started.elapsed();
        let page_of = |offset: usize| -> Vec<Ranked> {
            order
                .iter()
                .skip(offset)
                .take(PAGE)
                .map(|&i| Ranked {
                    count: count(i as usize),
                    url: urls[i as usize].to_string(),
                })
                .collect()
        };
        let top = Arc::new(page_of(0));
        let deep = Arc::new(page_of(plan.deep_offset()));
        let deep_count = deep.first().map_or(0, |r| r.count);
        let deep_ties = (
            deep_count,
            (0..urls.len()).filter(|&i| count(i) == deep_count).count(),
        );
        Self {
            top,
            deep,
            ranking,
            deep_ties,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn seeded_urls_are_distinct_api_paths_of_29_to_52_bytes() {
        let urls: BTreeSet<String> = (0..100_000).map(url).collect();
        assert_eq!(urls.len(), 100_000);
        for path in [url(0), url(999_999), url(4)] {
            assert!(path.starts_with("/api/") && path.ends_with('/'), "{path}");
            assert!((29..=52).contains(&path.len()), "{path}: {}", path.len());
        }
    }

    #[test]
    fn counts_fall_and_tie_at_the_deep_page() {
        assert_eq!(count(0), 1_000_000);
        assert_eq!(count(999_999), 1);
        assert_eq!(count(100_000), count(100_099));
    }
}
