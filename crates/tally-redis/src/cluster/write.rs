//! Writes: a bucket's batch (or a reset) and its `WAIT`, as one pipeline on one
//! connection of the bucket's primary, following `MOVED` and `ASK` (see the module docs of
//! `crate::cluster`).

use std::collections::HashSet;
use std::sync::Arc;

use redis::{ServerErrorKind, Value};
use tally_counter::{Applied, Batch, RejectedKey, ShardId};
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument as _;

use super::buckets::Bucket;
use super::combine::{self, Outcome};
use super::{ClusterStore, MAX_REDIRECTS, Shared};
use crate::error::{Error, Result};
use crate::layout::{
    BATCH_SCRIPT, KeySpace as _, Layout, ScriptCall, ScriptReply, fill_script_args,
};
use crate::node::Node;
use deadpool_redis::Connection;

/// How many `REDIS_TIMEOUT`s a write waits for a free connection of its primary before it
/// fails (and is retried): each connection ahead of it holds a write for at most one.
const QUEUE_TIMEOUTS: u32 = 4;

/// What one write sends before its `WAIT`.
enum Command<'a> {
    /// A call of the batch script.
    Script(&'a ScriptCall),
    /// A plain command (a reset).
    Plain(redis::Cmd),
}

impl ClusterStore {
    /// [`tally_counter::Store::apply`] with this crate's error type.
    ///
    /// # Errors
    ///
    /// As [`ClusterStore::apply_checked`]; also [`Error::CorruptValue`] for a key holding
    /// something that is not a count (every other key is applied).
    pub async fn apply(&self, shard: ShardId, batch: &Batch) -> Result<Vec<u64>> {
        let applied = self.apply_checked(shard, batch).await?;
        match applied.rejected.first() {
            None => Ok(applied.totals),
            Some(rejected) => Err(Error::CorruptValue {
                node: tally_counter::Store::shard_name(self, shard).to_owned(),
                stored_as: rejected.stored_as.clone(),
                found: rejected.found.clone(),
            }),
        }
    }

    /// [`tally_counter::Store::apply_checked`] with this crate's error type: the batch
    /// script on the bucket's primary, then `WAIT` for the replicas, on one connection.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidBatch`] when a key appears twice; [`Error::NoPrimary`] while no
    /// reachable primary serves the bucket; [`Error::ReplicasMissing`] (nothing sent) while
    /// fewer of its replicas than `REDIS_WAIT_REPLICAS` answer; [`Error::NotReplicated`]
    /// when the batch was applied but its `WAIT` fell short (the batch is retried, and its
    /// high-water mark makes the retry count once); [`Error::Redis`] for an error reply
    /// (`TRYAGAIN` while the slot migrates, `CLUSTERDOWN`, a sorted set of another type);
    /// the connection errors of any node.
    pub async fn apply_checked(&self, shard: ShardId, batch: &Batch) -> Result<Applied> {
        let bucket = self.bucket(shard)?;
        let span = tracing::debug_span!(
            "redis_cluster_apply",
            shard,
            bucket = %bucket.tag,
            layout = %self.layout,
            seq = batch.id.seq,
            batch_len = batch.deltas.len()
        );
        async {
            // The script writes computed totals, so a key listed twice would lose a delta.
            let mut seen = HashSet::with_capacity(batch.deltas.len());
            if let Some((key, _)) = batch.deltas.iter().find(|(key, _)| !seen.insert(&**key)) {
                return Err(Error::InvalidBatch {
                    detail: format!("key '{key}' appears twice; a batch names each key once"),
                });
            }
            let mut call = ScriptCall::default();
            fill_script_args(
                &mut call,
                bucket,
                self.layout,
                batch.id.instance,
                shard,
                batch.id.seq,
                batch.deltas.iter().map(|(key, _)| &**key),
                batch.deltas.iter().map(|(_, delta)| *delta),
                self.shared.config.subkey_ttl,
            );
            let (node, reply) = self.send_batch(bucket, call).await?;
            let reply = ScriptReply::parse(reply).map_err(|detail| Error::Protocol {
                node: node.to_owned(),
                op: "apply",
                detail,
            })?;
            if reply.values.len() != batch.deltas.len() {
                return Err(Error::Protocol {
                    node: node.to_owned(),
                    op: "apply",
                    detail: format!(
                        "{} totals for {} keys",
                        reply.values.len(),
                        batch.deltas.len()
                    ),
                });
            }
            if !reply.applied {
                metrics::counter!(
                    "tally_redis_batches_replayed_total",
                    "node" => node.to_owned(),
                    "layout" => self.layout.to_string()
                )
                .increment(1);
                tracing::debug!(
                    mark = reply.mark,
                    "batch already applied (a retry after a lost reply or a short WAIT); answered current totals"
                );
            }
            let rejected = reply
                .rejected
                .into_iter()
                .filter_map(|(index, found)| {
                    let (key, _) = batch.deltas.get(index)?;
                    Some(RejectedKey {
                        index,
                        stored_as: bucket.stored_as(self.layout, key),
                        found,
                    })
                })
                .collect();
            Ok(Applied {
                totals: reply.values,
                rejected,
            })
        }
        .instrument(span)
        .await
    }

    /// [`tally_counter::Store::reset`] with this crate's error type: `DEL
    /// tally:v:{bNNNN}:{key} tally:u:{bNNNN}:{key}` (the count and the visitor sketch) or `ZREM tally:urls:{bNNNN} {key}` on the bucket's primary,
    /// and `WAIT` for its replicas, so a failover cannot bring the count back.
    ///
    /// # Errors
    ///
    /// As [`ClusterStore::apply_checked`].
    pub async fn reset(&self, shard: ShardId, key: &str) -> Result<()> {
        let bucket = self.bucket(shard)?;
        let mut cmd = match self.layout {
            Layout::Counters => redis::cmd("DEL"),
            Layout::SortedSet => redis::cmd("ZREM"),
        };
        match self.layout {
            Layout::Counters => cmd.arg(bucket.counter_key(key)).arg(bucket.sketch_key(key)),
            Layout::SortedSet => cmd.arg(bucket.urls_key()).arg(key),
        };
        self.write(bucket, "reset", Command::Plain(cmd)).await?;
        Ok(())
    }

    /// Sends a batch's script call to `bucket`'s primary: together with the other buckets'
    /// batches for that primary (`combine`), or alone when that cannot be done.
    async fn send_batch(&self, bucket: &Bucket, call: ScriptCall) -> Result<(&'static str, Value)> {
        let call = Arc::new(call);
        match combine::submit(&self.shared, bucket, Arc::clone(&call)).await {
            Outcome::Reply(node, Value::ServerError(error)) => Err(Error::Redis {
                node: node.to_owned(),
                op: "apply",
                source: error.into(),
            }),
            Outcome::Reply(node, reply) => Ok((node, reply)),
            Outcome::NotReplicated {
                node,
                acked,
                wanted,
            } => Err(Error::NotReplicated {
                node: node.to_owned(),
                bucket: bucket.tag.clone(),
                acked,
                wanted: wanted as u64,
                after: self.shared.config.wait_timeout(),
            }),
            Outcome::Busy(node) => Err(Error::Busy {
                node: node.to_owned(),
                after: self.shared.config.timeout * QUEUE_TIMEOUTS,
            }),
            Outcome::Alone => self.write(bucket, "apply", Command::Script(&call)).await,
        }
    }

    /// Sends `command` and its `WAIT` to `bucket`'s primary, following redirections:
    /// the node that answered and the command's reply.
    async fn write(
        &self,
        bucket: &Bucket,
        op: &'static str,
        command: Command<'_>,
    ) -> Result<(&'static str, Value)> {
        let shared = &self.shared;
        let wait = shared.wait_replicas(bucket)?;
        let (primary, replicas) = shared.primary(bucket)?;
        if replicas < wait {
            return Err(Error::ReplicasMissing {
                node: primary.name,
                bucket: bucket.tag.clone(),
                online: replicas,
                wanted: wait,
            });
        }
        let wait_timeout = shared.config.wait_timeout();
        let wait_ms = u64::try_from(wait_timeout.as_millis()).unwrap_or(u64::MAX);
        let mut target = primary.name;
        let mut asking = false;
        let mut eval = false;
        for _ in 0..MAX_REDIRECTS {
            let name = shared.intern(&target);
            let (_lane, node, mut conn) = shared.write_connection(name, op).await?;
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            if asking {
                pipe.cmd("ASKING");
            }
            match &command {
                Command::Script(call) if eval => pipe.add_command(call.eval(BATCH_SCRIPT)),
                Command::Script(call) => pipe.add_command(call.evalsha(&shared.script)),
                Command::Plain(cmd) => pipe.add_command(cmd.clone()),
            };
            if wait > 0 {
                pipe.cmd("WAIT").arg(wait).arg(wait_ms);
            }
            let replies: Vec<Value> = node.send(&mut conn, op, &pipe).await?;
            let mut replies = replies.into_iter().skip(usize::from(asking));
            let reply = replies.next().ok_or_else(|| Error::Protocol {
                node: name.to_owned(),
                op,
                detail: "no reply to the command".to_owned(),
            })?;
            if let Value::ServerError(error) = &reply {
                match error.kind() {
                    Some(ServerErrorKind::NoScript) if !eval => {
                        eval = true;
                        continue;
                    }
                    Some(kind @ (ServerErrorKind::Moved | ServerErrorKind::Ask)) => {
                        if let Some(to) = redirect_target(error.details()) {
                            asking = kind == ServerErrorKind::Ask;
                            metrics::counter!(
                                "tally_redis_cluster_redirects_total",
                                "node" => name,
                                "kind" => if asking { "ask" } else { "moved" }
                            )
                            .increment(1);
                            if !asking {
                                shared.mark_stale();
                            }
                            target = to;
                            continue;
                        }
                    }
                    Some(ServerErrorKind::ReadOnly | ServerErrorKind::ClusterDown) => {
                        shared.mark_stale();
                    }
                    _ => {}
                }
                return Err(Error::Redis {
                    node: name.to_owned(),
                    op,
                    source: error.clone().into(),
                });
            }
            if wait > 0 {
                let acked = match replies.next() {
                    Some(Value::Int(n)) => u64::try_from(n).unwrap_or(0),
                    other => {
                        return Err(Error::Protocol {
                            node: name.to_owned(),
                            op,
                            detail: format!("WAIT answered {other:?}"),
                        });
                    }
                };
                if acked < wait as u64 {
                    return Err(Error::NotReplicated {
                        node: name.to_owned(),
                        bucket: bucket.tag.clone(),
                        acked,
                        wanted: wait as u64,
                        after: wait_timeout,
                    });
                }
            }
            return Ok((name, reply));
        }
        Err(Error::Protocol {
            node: shared.intern(&target).to_owned(),
            op,
            detail: format!(
                "still redirected after {MAX_REDIRECTS} attempts (the slot of {} is moving); retried later",
                bucket.tag
            ),
        })
    }
}

impl Shared {
    /// A connection of the node named `name` for one write (a batch, a reset, a combined
    /// write), with the lane permit that holds it (see `Shared::lanes`).
    ///
    /// # Errors
    ///
    /// [`Error::Busy`] when no lane frees within `QUEUE_TIMEOUTS` timeouts; the errors of
    /// making the node and of its pool.
    pub(super) async fn write_connection(
        &self,
        name: &'static str,
        op: &'static str,
    ) -> Result<(OwnedSemaphorePermit, Arc<Node>, Connection)> {
        let node = self.node_for(name)?;
        let queue = self.config.timeout * QUEUE_TIMEOUTS;
        let busy = || Error::Busy {
            node: name.to_owned(),
            after: queue,
        };
        // The semaphore is never closed.
        let lane = tokio::time::timeout(queue, self.lanes(name).acquire_owned())
            .await
            .map_err(|_| busy())?
            .map_err(|_| busy())?;
        let conn = node.checkout(op).await?;
        Ok((lane, node, conn))
    }
}

/// The `host:port` of a `MOVED`/`ASK` answer's details (`3999 127.0.0.1:6381`), with
/// brackets around an IPv6 host.
fn redirect_target(details: Option<&str>) -> Option<String> {
    let address = details?.split_whitespace().nth(1)?;
    let (host, port) = address.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    if host.is_empty() {
        return None;
    }
    Some(if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirections_name_the_target() {
        assert_eq!(
            redirect_target(Some("3999 127.0.0.1:6381")).as_deref(),
            Some("127.0.0.1:6381")
        );
        assert_eq!(
            redirect_target(Some("3999 ::1:6381")).as_deref(),
            Some("[::1]:6381")
        );
        assert_eq!(redirect_target(Some("3999 :6381")), None);
        assert_eq!(redirect_target(Some("3999")), None);
        assert_eq!(redirect_target(None), None);
    }
}
