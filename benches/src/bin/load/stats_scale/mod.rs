//! The `/stats/` scale scenario: the nodes' sorted sets filled with N distinct URLs
//! (default 1,000,000) through tally-redis's own write path, then `GET /stats/` (the top
//! 100) and a deep page (`GET /stats/?offset=100000&limit=100`) timed over HTTP against
//! tally-server on 127.0.0.1, first from one client, then from [`CLIENTS`] at once.
//!
//! - Seeding: every URL is written by [`RedisStore::apply`] in the sorted-set layout
//!   on the node the ring gives it, [`SEED_BATCH`] keys a batch, so the sets hold exactly
//!   what tally-server would have written, where it would have written it. The nodes are
//!   flushed first and the sum of `ZCARD tally:urls` must be N afterwards.
//! - Counts: URL `i` (0-based) gets `max(1, 1,000,000 / (i + 1))`, a long tail of ties (the
//!   deep page lands inside a run of about 11,000 URLs with the same count, the last half
//!   million all count 1), so the tie-break (url ascending) is exercised where it is
//!   expensive.
//! - Every answer is checked against the ranking computed here from the seed (count
//!   descending, then url ascending), never against another answer of the server: a wrong
//!   answer fails the run.
//! - In every phase `/health` and `/status` are polled every [`POLL_EVERY`]: answers that
//!   were not `healthy`, nodes seen down and nodes with failing batches are reported.
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
//! - this file: the [`Plan`], the pages measured, and [`run`], the scenario in order;
//! - [`seed`]: the seeded URLs and counts, writing them, and the expected ranking;
//! - [`phases`]: the `/stats/` clients of each phase and the checks of their answers;
//! - [`poll`]: `/health` and `/status` polled during a phase;
//! - [`breakdown`]: the deep page by the baseline method, timed part by part;
//! - [`report`]: what was measured, and its markdown section.
//!
//! [`RedisStore::apply`]: tally_redis::RedisStore::apply
//! [`SEED_BATCH`]: seed::SEED_BATCH
//! [`POLL_EVERY`]: poll::POLL_EVERY
//! [`RETRY_AFTER_CAP`]: phases::RETRY_AFTER_CAP
//! [`REQUEST_TIMEOUT`]: phases::REQUEST_TIMEOUT

mod breakdown;
mod phases;
mod poll;
mod report;
mod seed;

use std::time::Duration;

use anyhow::Context as _;
use serde::Deserialize;
use tally_testkit::RedisCluster;

use crate::Setup;
use crate::measure;
use crate::targets::{self, Kind};

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

/// How many URLs and requests the scenario uses.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Distinct URLs seeded.
    pub urls: usize,
    top_sequential: usize,
    deep_sequential: usize,
    top_per_client: usize,
    deep_per_client: usize,
    /// Repetitions of the deep page's breakdown measured from the harness.
    breakdown: usize,
}

impl Plan {
    /// The plan for `urls` URLs; `quick` sends fewer requests.
    pub fn new(urls: usize, quick: bool) -> Self {
        if quick {
            Self {
                urls,
                top_sequential: 30,
                deep_sequential: 10,
                top_per_client: 10,
                deep_per_client: 3,
                breakdown: 3,
            }
        } else {
            Self {
                urls,
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

    /// Longest the scenario can rightly take (debug build included): seeding and the
    /// expected ranking, then every request at a generous allowance (a deep page at 3 s,
    /// a concurrent round counted as one request's time per client).
    pub fn budget(&self) -> Duration {
        let seed = Duration::from_secs(60) + Duration::from_micros(100) * self.urls as u32;
        let top = (self.top_sequential + self.top_per_client) as u32;
        let deep = (self.deep_sequential + self.deep_per_client + self.breakdown) as u32;
        seed + Duration::from_millis(500) * top + Duration::from_secs(3) * deep
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

/// Runs the scenario: flush, seed, verify, then the four phases and the breakdown.
///
/// # Errors
///
/// Seeding or verifying failed, or the server could not be started or stopped. Wrong
/// answers are not errors: [`Report::passed`] tells them.
pub fn run(plan: &Plan, setup: &Setup<'_>, cluster: &RedisCluster) -> anyhow::Result<Report> {
    crate::nodes::flush(cluster).context("cannot flush a node before seeding")?;
    let urls = seed::urls(plan.urls);
    let seeded = seed::write(setup, cluster, &urls)?;
    let expected = seed::Expected::rank(plan, &urls);
    drop(urls);

    measure::settle(setup.redis_pids, setup.quiet_wait);
    let server = setup.server_rt.block_on(targets::start(
        Kind::TallyRedis,
        setup.redis_urls,
        setup.metrics,
    ))?;
    // The server is stopped whatever the phases gave.
    let measured =
        phases::measure(plan, setup, cluster, server.address, &expected).and_then(|phases| {
            let breakdown = breakdown::measure(plan, setup, cluster, &seeded.store, &expected)?;
            Ok((phases, breakdown))
        });
    setup.server_rt.block_on(server.stop())?;
    let seed::Seeded {
        store,
        seeding,
        per_node,
    } = seeded;
    drop(store);
    let (phases, breakdown) = measured?;
    Ok(Report {
        plan: *plan,
        seeding,
        per_node,
        ranking: expected.ranking,
        deep_ties: expected.deep_ties,
        phases,
        breakdown,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deep_page_is_the_last_full_page_of_small_sets() {
        assert_eq!(Plan::new(1_000_000, false).deep_offset(), 100_000);
        assert_eq!(Plan::new(100_000, true).deep_offset(), 99_900);
    }
}
