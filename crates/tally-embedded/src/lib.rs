//! tally-embedded: the persistent embedded store behind tally's counters, for a server
//! without Redis that keeps its counts across restarts and crashes.
//!
//! [`EmbeddedStore`] implements [`tally_counter::Store`] and
//! [`tally_counter::RankedStore`] over one [redb](https://docs.rs/redb) file (ACID,
//! crash-safe, pure Rust, a stable file format) in a data directory. It keeps the
//! semantics of `tally-redis`: a batch is applied in one write transaction at most once,
//! by a high-water mark per counter instance; [`EmbeddedStore::apply`] returns only once
//! the transaction is durably committed; a key whose total would pass [`MAX_TOTAL`]
//! (2^53 - 1, tally-redis's bound) is left as it is and reported, and the rest of its
//! batch applied. The request statistics are a second view of the same file
//! ([`EmbeddedStore::ranked`]) whose tables include a ranking index, so the head of the
//! ranking and any deep page are read without scanning the URLs.
//!
//! The visit counters also keep sketches of their distinct visitors
//! ([`tally_counter::Store::sketch`]): a [`tally_counter::hll::HyperLogLog`] per key,
//! Redis-compatible, so this store and `tally-redis` estimate alike. A reset empties a
//! key's sketch with its count, and [`EmbeddedStore::remove_subkeys_before`] sweeps old
//! day sketches with old day counts.
//!
//! # Example
//!
//! The example of the crate's README, word for word (a test holds them together):
//!
//! ```
//! use std::time::Duration;
//! use tally_counter::{Counter, CounterConfig, RankedStore};
//! use tally_embedded::{EmbeddedConfig, EmbeddedStore};
//!
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let dir = tempfile::tempdir()?;
//!     let visits = EmbeddedStore::open(dir.path(), EmbeddedConfig::default())?;
//!     let stats = visits.ranked();
//!
//!     let counter = Counter::new(visits, CounterConfig::default())?;
//!     counter.increment("page1", 3)?;
//!     // Writes what is pending; the file closes with the last handle.
//!     counter.shutdown(Duration::from_secs(5)).await;
//!     drop(stats);
//!
//!     // A new process (here: a new store) finds the counts where it left them.
//!     let visits = EmbeddedStore::open(dir.path(), EmbeddedConfig::default())?;
//!     let counter = Counter::new(visits.clone(), CounterConfig::default())?;
//!     assert_eq!(counter.get("page1").await?.value, 3);
//!     assert_eq!(visits.ranked().top(0, 10).await?, vec![]);
//!     Ok(())
//! }
//! ```
//!
//! # Choice of engine
//!
//! redb was measured against fjall (an LSM tree) on this store's job over 100,000 keys,
//! both committing each write transaction durably (fdatasync), by `benches/engines.rs`
//! (`cargo bench -p tally-embedded --bench engines -- --warm-up-time 1
//! --measurement-time 3`), in one run on the project's 2-core machine (ext4, the bench
//! profile's fat LTO); ratios are of that run:
//!
//! | job | redb | fjall | fjall / redb |
//! |---|---|---|---|
//! | `apply_1000`: 1,000 increments with the ranking index kept, one durable commit | 16.56 ms | 10.23 ms | 0.62 |
//! | `get_100`: 100 point reads in one snapshot | 15.70 µs | 33.40 µs | 2.13 |
//! | `top_100`: the head of the ranking index | 6.09 µs | 14.70 µs | 2.41 |
//!
//! redb reads 2.1 to 2.4 times faster; fjall commits a batch in 0.62 of redb's time (an
//! LSM tree appends to its journal and sorts later, in background compactions a short run
//! does not charge for). Reads are what requests wait on (cache misses, `/stats/` pages),
//! while 16.6 ms per 1,000 keys is some 60,000 durable key updates a second, far more than
//! the counters send (each has one batch in flight, of the distinct keys of one batch
//! interval). redb is also one file, with no background threads, a stable format and
//! ACID transactions across tables; fjall is a directory of journals and segments kept by
//! compaction threads. So: redb.
//!
//! # Guarantees
//!
//! - **Exactly once, durably.** A batch's values and its instance's new mark are
//!   committed in one transaction, with `Durability::Immediate` (redb's default: the
//!   commit is on disk when it returns). A batch whose sequence is not above the mark
//!   applies nothing and answers the current totals. A crash loses no acknowledged batch
//!   and applies no batch in part: on the next open redb finds the last committed
//!   transaction (logging a warning that it repairs the file), and a retry of a batch
//!   that was committed but not acknowledged is answered as a replay.
//! - **Consistent reads.** [`tally_counter::Store::get`] reads the values and the mark in
//!   one read transaction (a snapshot), so the counter never adds a delta twice or misses
//!   one.
//! - **Ordered resets.** A reset is a write transaction, and redb runs them one at a time,
//!   so it is ordered with every batch.
//! - **Idempotent sketch adds.** [`EmbeddedStore::sketch`] adds members in one durable
//!   write transaction; a member already in its sketch changes nothing, so an add sent
//!   again (a retry after a lost reply) is harmless, and one that changes nothing writes
//!   nothing.
//! - **Bounded memory.** Resident memory is redb's page cache
//!   ([`EmbeddedConfig::cache_bytes`], default [`DEFAULT_CACHE_BYTES`]) plus the pages one
//!   write transaction dirties, whatever the number of keys in the file.
//! - **The runtime is never blocked.** redb is synchronous; every transaction runs on
//!   tokio's blocking pool (`spawn_blocking`). The store's futures therefore need a tokio
//!   runtime.
//!
//! # One shard
//!
//! The store reports one shard, [`SHARD_NAME`]. A redb file commits one write transaction
//! at a time, so several shards over one file would queue behind each other and gain
//! nothing, while several files would cost one fsync each per flush and give up the
//! single snapshot a ranking read needs. One shard also keeps one mark per counter.
//!
//! # Health
//!
//! The shard is up until a transaction fails in the engine or the disk
//! ([`Error::Engine`], [`Error::Io`], [`Error::Corrupt`]), and up again when one
//! succeeds. After an I/O error redb refuses every write until the file is opened again,
//! so such a store stays down until the process restarts; the counter keeps its batches
//! pending meanwhile.
//!
//! # Format
//!
//! The file is `tally.redb` in the data directory ([`FILE_NAME`]). Its `tally_meta`
//! table records [`FORMAT_VERSION`], written when the file is created and checked on
//! every open: a redb file without it is not tally's ([`Error::NotTally`]), and a newer
//! version is refused ([`Error::UnknownFormat`]). Each [`Layout`] variant names the
//! tables it writes. A second process opening the same directory gets [`Error::InUse`]
//! (redb locks the file).
//!
//! # Layout
//!
//! - `store`: [`EmbeddedStore`], opening the file, the blocking pool, the `Store`
//!   implementation and the shard's health.
//! - `txn`: each operation as one redb transaction, and the invariants they keep.
//! - `layout`: [`Layout`], the tables, the format version and [`MAX_TOTAL`].
//! - `runs`: the table of how many keys hold each count, behind
//!   [`tally_counter::RankedStore::count_at_least`].
//! - `config`: [`EmbeddedConfig`]; `error`: [`Error`].
#![deny(missing_docs)]

/// The README's example, run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExample;

mod config;
mod error;
mod layout;
mod runs;
mod store;
mod txn;

pub use config::{DEFAULT_CACHE_BYTES, EmbeddedConfig, FILE_NAME};
pub use error::{Error, Result};
pub use layout::{FORMAT_VERSION, Layout, MAX_TOTAL};
pub use store::{EmbeddedStore, SHARD_NAME};

#[cfg(test)]
mod tests {
    /// The first fenced block after `fence` in `text`.
    fn example<'a>(text: &'a str, fence: &str) -> Option<&'a str> {
        text.split_once(fence)?
            .1
            .split_once("```")
            .map(|(code, _)| code)
    }

    #[test]
    fn the_readme_example_is_the_crate_docs_example() {
        let docs = include_str!("lib.rs")
            .lines()
            .filter_map(|line| line.strip_prefix("//!"))
            .map(|line| line.strip_prefix(' ').unwrap_or(line))
            .collect::<Vec<_>>()
            .join("\n");
        let readme = include_str!("../README.md");
        assert!(example(&docs, "```\n").is_some());
        assert_eq!(example(&docs, "```\n"), example(readme, "```rust\n"));
    }
}
