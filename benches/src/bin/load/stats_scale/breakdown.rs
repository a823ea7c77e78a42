//! The deep page by the baseline method, merging every node's head (`top(offset +
//! limit)`), the way the server read every page before it read deep ones around their
//! counts: timed part by part from the harness while the server is idle, each part's
//! answer checked against the [`Expected`] deep page.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use tally_counter::Store as _;
use tally_redis::RedisStore;
use tally_testkit::RedisCluster;

use super::phases::first_difference;
use super::seed::Expected;
use super::{PAGE, Plan, Ranked};
use crate::Setup;
use crate::measure::NodeWork;
use crate::nodes::Servers;

/// The baseline's parts, each timed `reps` times.
#[derive(Debug, Default)]
pub struct Breakdown {
    /// Every node's `top(offset + limit)` at once.
    pub fetch: Vec<Duration>,
    /// Each node's `top(offset + limit)` alone, per node.
    pub alone: Vec<Vec<Duration>>,
    /// What each node did during those calls alone (`reps` calls each).
    pub alone_redis: Vec<NodeWork>,
    /// Sorting the merged answers and cutting the page.
    pub merge: Vec<Duration>,
    /// Entries the nodes' heads held together.
    pub entries: usize,
    /// Bytes of their urls.
    pub url_bytes: usize,
}

/// Each node's `top(offset + limit)` alone (with the node's own CPU time), then every
/// node's at once, and the merge, [`Plan`]'s `breakdown` times each.
pub fn measure(
    plan: &Plan,
    setup: &Setup<'_>,
    cluster: &RedisCluster,
    store: &RedisStore,
    expected: &Expected,
) -> anyhow::Result<Breakdown> {
    let (offset, reps) = (plan.deep_offset(), plan.breakdown);
    let wanted = offset + PAGE;
    let shards = store.shard_count();
    let mut out = Breakdown {
        alone: vec![Vec::new(); shards],
        ..Breakdown::default()
    };
    let before = NodeWork::read(Servers::Standalone(cluster))?;
    setup.client_rt.block_on(async {
        for _ in 0..reps {
            for (shard, times) in out.alone.iter_mut().enumerate() {
                let started = Instant::now();
                store.top(shard, wanted).await.context("top, one node")?;
                times.push(started.elapsed());
            }
        }
        anyhow::Ok(())
    })?;
    out.alone_redis = NodeWork::since(&before, Servers::Standalone(cluster))?;
    setup.client_rt.block_on(fetch_and_merge(
        store,
        wanted,
        offset,
        reps,
        &expected.deep,
        &mut out,
    ))?;
    Ok(out)
}

/// Every node's `top(wanted)` at once, then the merge, `reps` times, into `out`.
async fn fetch_and_merge(
    store: &RedisStore,
    wanted: usize,
    offset: usize,
    reps: usize,
    expected: &[Ranked],
    out: &mut Breakdown,
) -> anyhow::Result<()> {
    let shards = store.shard_count();
    for _ in 0..reps {
        let started = Instant::now();
        let tasks: Vec<_> = (0..shards)
            .map(|shard| {
                let store = store.clone();
                tokio::spawn(async move { store.top(shard, wanted).await })
            })
            .collect();
        let mut merged = Vec::new();
        for task in tasks {
            merged.extend(task.await.context("a top task panicked")??);
        }
        out.fetch.push(started.elapsed());
        out.entries = merged.len();
        out.url_bytes = merged.iter().map(|(url, _)| url.len()).sum();
        let started = Instant::now();
        merged.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let page: Vec<Ranked> = merged
            .into_iter()
            .skip(offset)
            .take(PAGE)
            .map(|(url, count)| Ranked { count, url })
            .collect();
        out.merge.push(started.elapsed());
        anyhow::ensure!(
            page == expected,
            "the store's own deep page differs from the seed: {}",
            first_difference("RedisStore::top", &page, expected)
        );
    }
    Ok(())
}
