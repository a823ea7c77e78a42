//! A connection to one node, held for a run of commands.
//!
//! A command through the node's pool ([`Node::run`]) checks a connection out each time,
//! and the pool pings a connection before lending it: two round trips a command. A
//! reshard sends thousands of commands to the same nodes one after the other, so each
//! stream of them (a scan, a source's reads and removals, its writes to one destination)
//! keeps one connection.

use deadpool_redis::Connection;
use redis::FromRedisValue;

use crate::error::Result;
use crate::node::{Node, Request};

/// A node and a connection of its pool.
pub(super) struct Link<'a> {
    node: &'a Node,
    conn: Connection,
}

impl<'a> Link<'a> {
    /// A connection to `node`.
    ///
    /// # Errors
    ///
    /// As [`Node::checkout`]: the node is down, or no connection can be made.
    pub(super) async fn open(node: &'a Node) -> Result<Self> {
        Ok(Self {
            node,
            conn: node.checkout("reshard").await?,
        })
    }

    /// The node's `host:port`.
    pub(super) fn name(&self) -> &'a str {
        self.node.name()
    }

    /// Sends `request` for `op`, as [`Node::send`].
    pub(super) async fn run<T: FromRedisValue + Send>(
        &mut self,
        op: &'static str,
        request: &impl Request,
    ) -> Result<T> {
        self.node.send(&mut self.conn, op, request).await
    }
}
