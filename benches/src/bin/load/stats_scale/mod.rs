//! The `/stats/` scale scenario: N distinct URLs (default 1,000,000) seeded into a store
//! through its own write path, then `GET /stats/` (the top 100) and a deep page
//! (`GET /stats/?offset=100000&limit=100`) timed over HTTP against tally-server on
//! 127.0.0.1, first from one client, then from [`CLIENTS`] at once; for each store of the
//! [`Plan`] in turn ([`StatsStore`]: the three Redis nodes, the embedded store, then the
//! Redis Cluster), the same seed, the same expected ranking, the same phases and checks.
//!
//! - Seeding, Redis: every URL is written by [`RedisStore::apply`] in the sorted-set
//!   layout on the node the ring gives it, [`SEED_BATCH`] keys a batch, so the sets hold
//!   exactly what tally-server would have written, where it would have written it. The
//!   nodes are flushed first and the sum of `ZCARD tally:urls` must be N afterwards.
//! - Seeding, embedded: [`EmbeddedStore::open`] in a fresh temporary directory with
//!   [`EmbeddedConfig::default`] (tally-server's defaults), and every URL written by
//!   [`EmbeddedStore::apply`] on its [`EmbeddedStore::ranked`] view, shard 0: the layout
//!   and the one shard tally-server's request statistics use on that store
//!   (`open_embedded` in bins/tally-server/src/startup.rs), [`SEED_BATCH`] keys a batch,
//!   each one durable write transaction. The view must hold N keys afterwards. The store
//!   is then dropped, which closes the file (one opener holds it, locked), and
//!   tally-server is started with that directory as its `DATA_DIR` and no `REDIS_NODES`.
//! - Seeding, Redis Cluster: the cluster of the `tally-cluster` target (`crate::nodes`,
//!   three primaries with a replica each), its primaries flushed, then every URL written
//!   by [`ClusterStore::apply`] on a [`ClusterStore::with_layout`]`(Layout::SortedSet)`
//!   view, on its bucket (one of [`STATS_BUCKETS`], each a shard, as tally-server's request
//!   statistics write them), [`SEED_BATCH`] keys a batch, each confirmed by `WAIT` on a
//!   replica as tally-server's are. The buckets' sets must hold N URLs afterwards, and
//!   tally-server is started with `REDIS_CLUSTER` set to the six nodes' URLs.
//! - Counts: URL `i` (0-based) gets `max(1, 1,000,000 / (i + 1))`, a long tail of ties (the
//!   deep page lands inside a run of about 11,000 URLs with the same count, the last half
//!   million all count 1), so the tie-break (url ascending) is exercised where it is
//!   expensive.
//! - Every answer is checked against the ranking computed here from the seed, once for
//!   every store (count descending, then url ascending), never against another answer of
//!   the server: a wrong answer fails the run.
//! - In every phase `/health` and `/status` are polled every [`POLL_EVERY`]: answers that
//!   were not `healthy`, nodes seen down and nodes with failing batches are reported. On
//!   the embedded store `/health` is always `healthy` and `/status` lists no nodes, so
//!   there only failing batches (`"embedded"`) and unanswered polls can show.
//! - Redis and the cluster: Redis CPU and commands per answer around each phase (on the
//!   cluster, of all six nodes); standalone Redis only: the deep page by the baseline
//!   method ([`breakdown`]); the embedded store has no separate process to measure (its
//!   work is the server's CPU column).
//! - A `503` (the server refusing a merge it has no room for) is a legitimate answer: it
//!   is counted apart from errors, and its client waits its `Retry-After` (at most
//!   [`RETRY_AFTER_CAP`]) before the next request. Latency percentiles are of `200`
//!   answers only.
//!
//! Bounded: traffic only to 127.0.0.1, a fixed number of requests per phase, each with a
//! [`REQUEST_TIMEOUT`].
//!
//! # Layout
//!
//! - this file: the [`Plan`], the stores, the pages measured, and [`run`], the scenario in
//!   order;
//! - [`seed`]: the seeded URLs and counts, writing them to each store, and the expected
//!   ranking;
//! - [`phases`]: the `/stats/` clients of each phase and the checks of their answers;
//! - [`poll`]: `/health` and `/status` polled during a phase;
//! - [`breakdown`]: the deep page by the baseline method, timed part by part (Redis);
//! - [`report`]: what was measured, and its markdown section.
//!
//! [`RedisStore::apply`]: tally_redis::RedisStore::apply
//! [`ClusterStore::apply`]: tally_redis::ClusterStore::apply
//! [`ClusterStore::with_layout`]: tally_redis::ClusterStore::with_layout
//! [`STATS_BUCKETS`]: tally_redis::STATS_BUCKETS
//! [`EmbeddedStore::open`]: tally_embedded::EmbeddedStore::open
//! [`EmbeddedStore::apply`]: tally_embedded::EmbeddedStore::apply
//! [`EmbeddedStore::ranked`]: tally_embedded::EmbeddedStore::ranked
//! [`EmbeddedConfig::default`]: tally_embedded::EmbeddedConfig
//! [`SEED_BATCH`]: seed::SEED_BATCH
//! [`POLL_EVERY`]: poll::POLL_EVERY
//! [`RETRY_AFTER_CAP`]: phases::RETRY_AFTER_CAP
//! [`REQUEST_TIMEOUT`]: phases::REQUEST_TIMEOUT

mod breakdown;
mod phases;
mod poll;
mod report;
mod seed;

use std::fmt;
use std::time::Duration;

use anyhow::Context as _;
use serde::Deserialize;

use crate::Setup;
use crate::measure;
use crate::nodes::Servers;
use crate::targets::{self, Kind, Running};

pub use report::Report;

/// URLs seeded by default (the figure).
pub const DEFAULT_URLS: usize = 1_000_000;
/// URLs seeded with `--quick` (CI, debug build).
pub const QUICK_URLS: usize = 100_000;
/// Concurrent clients of the concurrent phases.
pub const CLIENTS: usize = 8;
/// Entries a page holds (`limit`; the server's default, so the top page is `GET /stats/`).
const PAGE: usize = 100;
/// Offset of the deep page (the server's largest), or the last full page when fewer URLs.
const DEEP_OFFSET: usize = 100_000;

/// A store the scenario seeds and asks tally-server on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum StatsStore {
    /// The three Redis nodes (tally-redis, the sorted-set layout).
    Redis,
    /// The embedded store (one redb file), tally-server's default without `REDIS_NODES`.
    Embedded,
    /// The Redis Cluster of six nodes (`REDIS_CLUSTER`; tally-redis's `ClusterStore`, the
    /// sorted-set layout in 16 buckets).
    Cluster,
}

impl StatsStore {
    /// Every store, in the order they run.
    pub const ALL: [StatsStore; 3] = [StatsStore::Redis, StatsStore::Embedded, StatsStore::Cluster];

    /// The name used on the command line (`--stats-stores`) and in the tables.
    pub fn name(self) -> &'static str {
        match self {
            StatsStore::Redis => "redis",
            StatsStore::Embedded => "embedded",
            StatsStore::Cluster => "cluster",
        }
    }

    /// The load target that serves from this store: the scenario runs after the others
    /// for each store whose target is among them.
    pub fn target(self) -> Kind {
        match self {
            StatsStore::Redis => Kind::TallyRedis,
            StatsStore::Embedded => Kind::TallyEmbedded,
            StatsStore::Cluster => Kind::TallyCluster,
        }
    }

    /// The redis-servers tally-server answers from on this store, whose work the phases
    /// read: none on the embedded store.
    fn servers<'a>(self, setup: &Setup<'a>) -> Option<Servers<'a>> {
        match self {
            StatsStore::Redis => setup.nodes.map(Servers::Standalone),
            StatsStore::Embedded => None,
            StatsStore::Cluster => setup.cluster.map(Servers::Cluster),
        }
    }

    /// Pids of the CPU figures' `redis` column: the cluster's six nodes on the cluster,
    /// otherwise the standalone nodes (idle on the embedded store).
    fn redis_pids<'a>(self, setup: &Setup<'a>) -> &'a [u32] {
        match self {
            StatsStore::Redis | StatsStore::Embedded => setup.redis_pids,
            StatsStore::Cluster => setup.cluster_pids,
        }
    }
}

impl fmt::Display for StatsStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How many URLs and requests the scenario uses, and on which stores.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Distinct URLs seeded.
    pub urls: usize,
    /// The stores, in run order (each seeded with the same URLs).
    pub stores: Vec<StatsStore>,
    top_sequential: usize,
    deep_sequential: usize,
    top_per_client: usize,
    deep_per_client: usize,
    /// Repetitions of the deep page's breakdown measured from the harness (Redis).
    breakdown: usize,
}

impl Plan {
    /// The plan for `urls` URLs on `stores`; `quick` sends fewer requests.
    pub fn new(urls: usize, quick: bool, mut stores: Vec<StatsStore>) -> Self {
        stores.sort();
        stores.dedup();
        if quick {
            Self {
                urls,
                stores,
                top_sequential: 30,
                deep_sequential: 10,
                top_per_client: 10,
                deep_per_client: 3,
                breakdown: 3,
            }
        } else {
            Self {
                urls,
                stores,
                top_sequential: 200,
                deep_sequential: 100,
                top_per_client: 100,
                deep_per_client: 25,
                breakdown: 20,
            }
        }
    }

    /// Offset of the deep page: 100,000, or the last full page when there are fewer URLs.
    pub fn deep_offset(&self) -> usize {
        DEEP_OFFSET.min(self.urls.saturating_sub(PAGE))
    }

    /// Whether the scenario runs on Redis (and so needs the three standalone nodes).
    pub fn uses_redis(&self) -> bool {
        self.stores.contains(&StatsStore::Redis)
    }

    /// Whether the scenario runs on the Redis Cluster (and so needs it started).
    pub fn uses_cluster(&self) -> bool {
        self.stores.contains(&StatsStore::Cluster)
    }

    /// Longest the scenario can rightly take (debug build included): the expected
    /// ranking, then per store the seeding and every request at a generous allowance (a
    /// deep page at 3 s, a concurrent round counted as one request's time per client).
    pub fn budget(&self) -> Duration {
        let per_url = Duration::from_micros(100) * self.urls as u32;
        let top = (self.top_sequential + self.top_per_client) as u32;
        let deep = (self.deep_sequential + self.deep_per_client + self.breakdown) as u32;
        let per_store = Duration::from_secs(60)
            + per_url * 2
            + Duration::from_millis(500) * top
            + Duration::from_secs(3) * deep;
        Duration::from_secs(30) + per_url + per_store * self.stores.len() as u32
    }
}

/// The two pages measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Which {
    Top,
    Deep,
}

/// One entry of a `/stats/` answer.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
struct Ranked {
    count: u64,
    url: String,
}

/// What the scenario measured on one store.
#[derive(Debug)]
pub struct StoreRun {
    /// The store.
    store: StatsStore,
    /// How the store was seeded.
    seeded: seed::Seeded,
    /// The four phases.
    phases: Vec<phases::PhaseResult>,
    /// The deep page by the baseline method (Redis only).
    breakdown: Option<breakdown::Breakdown>,
}

/// Runs the scenario: the seed and its ranking, then for each store of the plan: seed,
/// start tally-server, the four phases (and on Redis the breakdown), stop.
///
/// # Errors
///
/// Seeding or verifying failed, or the server could not be started or stopped. Wrong
/// answers are not errors: [`Report::passed`] tells them.
pub fn run(plan: &Plan, setup: &Setup<'_>) -> anyhow::Result<Report> {
    let urls = seed::urls(plan.urls);
    let expected = seed::Expected::rank(plan, &urls);
    let mut runs = Vec::with_capacity(plan.stores.len());
    for &store in &plan.stores {
        let run = match store {
            StatsStore::Redis => run_redis(plan, setup, &urls, &expected),
            StatsStore::Embedded => run_embedded(plan, setup, &urls, &expected),
            StatsStore::Cluster => run_cluster(plan, setup, &urls, &expected),
        };
        runs.push(run.with_context(|| format!("on the {store} store"))?);
    }
    Ok(Report {
        plan: plan.clone(),
        ranking: expected.ranking,
        deep_ties: expected.deep_ties,
        runs,
    })
}

/// The three nodes flushed and seeded, tally-server on them, the phases and the
/// breakdown.
fn run_redis(
    plan: &Plan,
    setup: &Setup<'_>,
    urls: &[std::sync::Arc<str>],
    expected: &seed::Expected,
) -> anyhow::Result<StoreRun> {
    let cluster = setup.nodes.context("the Redis nodes were not started")?;
    Servers::Standalone(cluster)
        .flush()
        .context("cannot flush a node before seeding")?;
    let (store, seeded) = seed::write_redis(setup, cluster, urls)?;

    measure::settle(StatsStore::Redis.redis_pids(setup), setup.quiet_wait);
    let server = setup.server_rt.block_on(targets::start(
        Kind::TallyRedis,
        setup.redis_urls,
        setup.metrics,
    ))?;
    let (phases, breakdown) =
        measure_and_stop(plan, setup, StatsStore::Redis, server, expected, || {
            breakdown::measure(plan, setup, cluster, &store, expected)
        })?;
    drop(store);
    Ok(StoreRun {
        store: StatsStore::Redis,
        seeded,
        phases,
        breakdown: Some(breakdown),
    })
}

/// A fresh embedded store seeded and closed, tally-server on its directory, the phases.
fn run_embedded(
    plan: &Plan,
    setup: &Setup<'_>,
    urls: &[std::sync::Arc<str>],
    expected: &seed::Expected,
) -> anyhow::Result<StoreRun> {
    let data = tempfile::tempdir().context("a temporary DATA_DIR")?;
    let seeded = seed::write_embedded(setup, data.path(), urls)?;

    measure::settle(StatsStore::Embedded.redis_pids(setup), setup.quiet_wait);
    // The directory goes with the server, and is removed once it has stopped.
    let server = setup
        .server_rt
        .block_on(targets::start_tally_embedded(data, setup.metrics))?;
    let (phases, ()) =
        measure_and_stop(plan, setup, StatsStore::Embedded, server, expected, || {
            Ok(())
        })?;
    Ok(StoreRun {
        store: StatsStore::Embedded,
        seeded,
        phases,
        breakdown: None,
    })
}

/// The Redis Cluster's primaries flushed and its buckets seeded, tally-server on it
/// (`REDIS_CLUSTER`), the phases.
fn run_cluster(
    plan: &Plan,
    setup: &Setup<'_>,
    urls: &[std::sync::Arc<str>],
    expected: &seed::Expected,
) -> anyhow::Result<StoreRun> {
    let cluster = setup.cluster.context("the Redis Cluster was not started")?;
    Servers::Cluster(cluster)
        .flush()
        .context("cannot flush a primary before seeding")?;
    let seeded = seed::write_cluster(setup, cluster, urls)?;

    measure::settle(StatsStore::Cluster.redis_pids(setup), setup.quiet_wait);
    let server = setup.server_rt.block_on(targets::start(
        Kind::TallyCluster,
        setup.cluster_urls,
        setup.metrics,
    ))?;
    let (phases, ()) = measure_and_stop(
        plan,
        setup,
        StatsStore::Cluster,
        server,
        expected,
        || Ok(()),
    )?;
    Ok(StoreRun {
        store: StatsStore::Cluster,
        seeded,
        phases,
        breakdown: None,
    })
}

/// The four phases against `server` on `store`, then `also` while the server is still up,
/// then the server stopped whatever they gave.
///
/// # Errors
///
/// A phase or `also` failed, or the server could not stop or left visits unwritten:
/// nothing counts visits here, so any left is a fault.
fn measure_and_stop<T>(
    plan: &Plan,
    setup: &Setup<'_>,
    store: StatsStore,
    server: Running,
    expected: &seed::Expected,
    also: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<(Vec<phases::PhaseResult>, T)> {
    let measured = phases::measure(plan, setup, store, server.address, expected)
        .and_then(|phases| Ok((phases, also()?)));
    setup.server_rt.block_on(server.stop())?.all_written()?;
    measured
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deep_page_is_the_last_full_page_of_small_sets() {
        assert_eq!(Plan::new(1_000_000, false, vec![]).deep_offset(), 100_000);
        assert_eq!(Plan::new(100_000, true, vec![]).deep_offset(), 99_900);
    }

    #[test]
    fn each_store_runs_once_in_order_and_adds_to_the_budget() {
        let all = Plan::new(
            100_000,
            true,
            vec![
                StatsStore::Cluster,
                StatsStore::Embedded,
                StatsStore::Redis,
                StatsStore::Embedded,
            ],
        );
        assert_eq!(all.stores, StatsStore::ALL);
        assert!(all.uses_redis() && all.uses_cluster());
        let embedded = Plan::new(100_000, true, vec![StatsStore::Embedded]);
        assert!(!embedded.uses_redis() && !embedded.uses_cluster());
        let two = Plan::new(100_000, true, vec![StatsStore::Redis, StatsStore::Embedded]);
        assert!(embedded.budget() < two.budget() && two.budget() < all.budget());
    }
}
