//! tally-stats: request statistics. Counts every request under `/api/` by its path and
//! ranks the paths, built for millions of distinct URLs.
//!
//! Counting goes through tally-counter's batching core (a second [`tally_counter::Counter`],
//! not a second buffer): recording a request is an in-memory increment, and batches land in
//! any [`tally_counter::RankedStore`]: one sorted set per Redis node with `tally-redis`, or
//! [`tally_counter::MemoryStore::ranked`] in process. The ranking merges every shard's top
//! entries, exact because each URL lives on one shard.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tally_counter::{CounterConfig, MemoryStore};
//! use tally_stats::{Page, StatsTracker, UrlCount, UrlPath};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tally_stats::Error> {
//! let stats = StatsTracker::new(MemoryStore::ranked(1), CounterConfig::default(), Duration::from_secs(5))?;
//! for target in ["/api/products/123/", "/api/users/456/", "/api/products/123/?ref=x", "/stats/"] {
//!     if let Some(path) = UrlPath::parse(target) {
//!         stats.record(&path)?;
//!     }
//! }
//! let ranking = stats.ranking(Page::default()).await?;
//! assert_eq!(ranking, vec![
//!     UrlCount { count: 2, url: "/api/products/123/".into() },
//!     UrlCount { count: 1, url: "/api/users/456/".into() },
//! ]);
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! - `path`: [`UrlPath`], which requests count and under which key (querystring dropped,
//!   over-long paths pooled under [`OVERFLOW_KEY`]).
//! - `tracker`: [`StatsTracker`], recording and the exact merged ranking ([`Page`]).
//! - `window`: deep pages read around their own counts ([`WINDOW_FROM_OFFSET`]).
//! - `traffic`: [`TrafficPlan`] and [`SingleRun`] for the `/test/{n}/` generator.
//! - `error`: [`Error`].
#![deny(missing_docs)]

/// The README's example, run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExample;

mod error;
mod path;
mod tracker;
mod traffic;
mod window;

pub use error::{Error, Result};
pub use path::{MAX_PATH_BYTES, OVERFLOW_KEY, PREFIX, UrlPath};
pub use tracker::{
    DEFAULT_LIMIT, MAX_CONCURRENT_MERGES, MAX_LIMIT, MAX_OFFSET, MERGE_WAIT, Page, StatsTracker,
    UrlCount,
};
pub use traffic::{MAX_SEGMENTS, POOL_SIZE, RunGuard, SEGMENT_LEN, SingleRun, TrafficPlan};
pub use window::WINDOW_FROM_OFFSET;
