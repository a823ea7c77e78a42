//! tally-ring: the consistent-hash ring that decides which node stores a key.
//!
//! A [`Ring`] is built once from weighted nodes, each known by a credential-free name such
//! as `redis1:6379` (anything implementing [`Node`]), and then maps any key to one of them
//! with [`Ring::lookup`]: one hash and one table read (plus, for about a third of keys, a
//! scan of one or two points), no allocation, no I/O.
//! Adding or removing a node moves only the keys of that node; [`Ring::moves_to`] lists the
//! hash ranges that change owner, and [`Ring::shares`] each node's part of the hash space.
//!
//! # Example
//!
//! ```
//! use tally_ring::Ring;
//!
//! let ring = Ring::builder()
//!     .vnodes(160)
//!     .node("redis1:6379", 1)
//!     .node("redis2:6379", 1)
//!     .node("redis3:6379", 2)
//!     .build()?;
//!
//! // The mapping is fixed by the node names and weights alone (see below).
//! assert_eq!(*ring.lookup_str("page1"), "redis1:6379");
//! // Shard ids are positions in `nodes()`, which keeps insertion order.
//! let shard = ring.lookup_index(b"page1");
//! assert_eq!(ring.nodes()[shard], "redis1:6379");
//!
//! // Growing the ring moves keys only to the new node.
//! let grown = Ring::builder()
//!     .node("redis1:6379", 1)
//!     .node("redis2:6379", 1)
//!     .node("redis3:6379", 2)
//!     .node("redis4:6379", 1)
//!     .build()?;
//! assert!(ring.moves_to(&grown).iter().all(|m| m.to == "redis4:6379"));
//! # Ok::<(), tally_ring::Error>(())
//! ```
//!
//! # The mapping is a data-layout contract
//!
//! Keys stored under one mapping are only found again under the same mapping, so it is
//! frozen and any change to it is a breaking change of the data layout:
//!
//! - a key's hash is `xxh3_64(key bytes)` with seed 0 ([`key_hash`]);
//! - a node of weight `w` has `vnodes * w` points (default [`DEFAULT_VNODES`] = 160), point
//!   `i` at `xxh3_64(format!("{name}-{i}"))` for `i` in `0..vnodes * w`;
//! - a key belongs to the node owning the first point `>=` its hash, wrapping around to the
//!   lowest point; when two nodes place a point on the same hash, the node whose name sorts
//!   first (bytewise) owns it.
//!
//! So the mapping depends on names, weights and `vnodes` only, never on the order nodes were
//! added or on anything secret. `tests/vectors.txt` freezes 1,000 (key, node) pairs for a
//! fixed five-node ring, checked against both this implementation and a naive one written in
//! the test; a change that breaks it needs a data migration, not a test update.
//!
//! # Shard ids and balance
//!
//! [`Ring::lookup_index`] returns the owner's position in [`Ring::nodes`], which is the
//! order nodes were added: callers keep per-node state (pools, health) in a `Vec` in the
//! same order. Only these positions depend on insertion order; the owners do not.
//!
//! With `v` points per unit of weight a node's share of the hash space strays from its fair
//! share by about `1/sqrt(v)`: 8 % at 160. The largest of many nodes strays furthest, so at
//! 100 equal nodes the busiest holds about 1.2 to 1.25 times the mean (1.24 for
//! `redis1:6379` to `redis100:6379`); more `vnodes` narrow this at the cost of memory.
//!
//! # Layout
//!
//! - `node`: the [`Node`] trait, how the ring names its members.
//! - `builder`: [`RingBuilder`], validation and point placement.
//! - `ring`: [`Ring`], its lookup table, lookups and [`Ring::shares`].
//! - `moves`: [`Ring::moves_to`] and [`Move`], for resharding.
//! - `error`: [`Error`].
#![deny(missing_docs)]

/// The README's example, run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExample;

mod builder;
mod error;
mod moves;
mod node;
mod ring;

pub use builder::{DEFAULT_VNODES, RingBuilder};
pub use error::{Error, Result};
pub use moves::Move;
pub use node::Node;
pub use ring::{Ring, key_hash};
