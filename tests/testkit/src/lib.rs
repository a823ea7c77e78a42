//! tally-testkit: real `redis-server` processes and a fault-injecting TCP proxy for tests.
//!
//! Integration tests of tally run against real Redis, not mocks: a [`RedisNode`] is a
//! `redis-server` child process on a free `127.0.0.1` port with its own temporary directory,
//! killed when the value is dropped (also when the test panics). Tests pause it (SIGSTOP),
//! kill it, restart it with its append-only file, and read its keys directly to check what
//! the code under test wrote. A [`FaultProxy`] sits between a client and a node and can hold
//! all traffic ([`Mode::BlackHole`]), refuse it ([`Mode::Refuse`]) or lose the reply of a
//! request the node executed ([`Mode::DropReplies`]), the case exactly-once counting has
//! to survive.
//!
//! [`run_load`] is the load client that keeps score: keep-alive HTTP to a loopback server,
//! bounded in requests and time, recording per key what was acknowledged (2xx), refused
//! (503) or left with an unknown outcome, so a test can check counts exactly. It speaks
//! HTTP through [`HttpConnection`], a bare keep-alive HTTP/1.1 client that also sends the
//! raw requests no ordinary client will (control bytes, invalid UTF-8, unknown methods).
//!
//! [`ring`](fn@ring) is the ring a tally server builds over its nodes, so a test reads a
//! count on the node that owns it and picks keys that land on a given node
//! ([`keys_on`], [`RedisCluster::owner`]). [`send_signal`] and [`resident_memory`] act on
//! any child process, such as the server binary the end-to-end tests run.
//!
//! `redis-server` must be installed (`apt-get install redis-server`; `cargo xtask test`
//! checks for it), or named by the `TALLY_REDIS_SERVER` environment variable.
//!
//! # Example
//!
//! ```no_run
//! use tally_testkit::{FaultProxy, Mode, RedisCluster, RedisNode};
//!
//! # async fn demo() -> tally_testkit::Result<()> {
//! let mut node = RedisNode::builder().aof(true).start()?;
//! node.query::<()>(redis::cmd("SET").arg("k").arg(7))?;
//! node.kill()?;
//! node.restart()?;
//! assert_eq!(node.get_u64("k")?, Some(7));
//!
//! let proxy = FaultProxy::start(node.addr()).await?;
//! proxy.set_mode(Mode::DropRepliesMatching(1, b"EVALSHA".to_vec()));
//! // ... point the code under test at proxy.url() ...
//!
//! let cluster = RedisCluster::start(3)?;
//! println!("REDIS_NODES={}", cluster.urls());
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! - `node`: [`RedisNode`], [`RedisCluster`], [`NodeBuilder`]: `redis-server` processes.
//! - `cluster`: [`Cluster`], [`ClusterNode`], [`ClusterBuilder`]: a real Redis Cluster
//!   (nodes are [`RedisNode`]s started with `cluster-enabled yes` through
//!   [`NodeBuilder::config`], joined by `redis-cli --cluster create`, which must be
//!   installed too), not to be confused with [`RedisCluster`], a set of independent nodes.
//! - `proxy`: [`FaultProxy`] and its [`Mode`]s.
//! - `http`: [`HttpConnection`], the bare keep-alive HTTP/1.1 client.
//! - `load`: [`run_load`] and its [`Scoreboard`].
//! - `overlap`: [`second_while_first_runs`], a request made while another is proven to
//!   be under way.
//! - `ring`: [`ring`](fn@ring) and [`keys_on`]: which node owns a key.
//! - `secrets`: [`AWKWARD_PASSWORDS`] and [`assert_password_hidden`], for redaction tests.
//! - `process`: [`send_signal`] and [`resident_memory`], for child processes; `error`:
//!   [`Error`].
#![deny(missing_docs)]

mod cluster;
mod commandstats;
mod error;
mod http;
mod load;
mod node;
mod overlap;
mod process;
mod proxy;
mod ring;
mod secrets;

pub use cluster::{
    Cluster, ClusterBuilder, ClusterNode, MAX_CLUSTER_PORT, NodeView, REDIS_CLI_ENV, SLOTS,
    parse_cluster_nodes,
};
pub use commandstats::{CommandStat, command_stat, commandstats};
pub use error::{Error, Result};
pub use http::{HttpConnection, HttpError, HttpResponse, send_once};
pub use load::{LoadSpec, Score, Scoreboard, miscounted, run_load};
pub use node::{NodeBuilder, REDIS_SERVER_ENV, RedisCluster, RedisNode, free_port};
pub use overlap::{Overlap, second_while_first_runs};
pub use process::{resident_memory, send_signal};
pub use proxy::{FaultProxy, Mode};
pub use ring::{keys_on, ring};
pub use secrets::{AWKWARD_PASSWORDS, assert_password_hidden};
