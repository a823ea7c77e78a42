//! Reads through the `redis` crate's cluster client: a bucket's values with its mark (the
//! batch script, reading), and the ranking reads of the request statistics.

use std::time::{Duration, Instant};

use redis::cluster_async::ClusterConnection;
use redis::{FromRedisValue, ServerErrorKind, Value};
use tally_counter::{InstanceId, ShardId, StoredValues, Window, WindowRead};

use super::ClusterStore;
use super::buckets::Bucket;
use crate::error::{Error, Result, is_auth_error};
use crate::layout::{
    BATCH_SCRIPT, KeySpace as _, ScriptCall, ScriptReply, TOP_SCRIPT, fill_script_args,
    parse_count_text,
};
use crate::node::RANKING_TIMEOUT_FLOOR;

/// A sorted-set member and its score, as Redis sends them.
type Pair = (String, String);

/// Optimistic two-step reads [`ClusterStore::top`] makes before the ranking script.
const TOP_ATTEMPTS: usize = 3;

/// Which of the store's cluster clients a read goes through.
#[derive(Clone, Copy)]
enum Via {
    /// Reads of counts.
    Commands,
    /// Ranking reads: answers may be large, so they wait at least
    /// [`RANKING_TIMEOUT_FLOOR`] and never delay a read of counts.
    Rankings,
}

impl ClusterStore {
    /// [`tally_counter::Store::get`] with this crate's error type: the batch script,
    /// reading, on the bucket's primary.
    ///
    /// # Errors
    ///
    /// [`Error::NoPrimary`] before the cluster answered; [`Error::Timeout`],
    /// [`Error::Connection`] and [`Error::Redis`] naming the bucket's primary (as the store
    /// last saw the cluster); [`Error::CorruptValue`] for a key holding something that is
    /// not a count.
    pub async fn get(
        &self,
        shard: ShardId,
        instance: InstanceId,
        keys: &[&str],
    ) -> Result<StoredValues> {
        let bucket = self.bucket(shard)?;
        let mut call = ScriptCall::default();
        // Sequence 0 is never above a mark: the script only reads.
        fill_script_args(
            &mut call,
            bucket,
            self.layout,
            instance,
            shard,
            0,
            keys.iter().copied(),
            std::iter::empty(),
        );
        let reply: Value = match self
            .read(
                bucket,
                "get",
                Via::Commands,
                &call.evalsha(&self.shared.script),
            )
            .await
        {
            Err(Error::Redis { source, .. })
                if source.kind() == redis::ErrorKind::Server(ServerErrorKind::NoScript) =>
            {
                self.read(bucket, "get", Via::Commands, &call.eval(BATCH_SCRIPT))
                    .await?
            }
            other => other?,
        };
        let node = self.shared.primary_name(bucket);
        let reply = ScriptReply::parse(reply).map_err(|detail| Error::Protocol {
            node: node.to_owned(),
            op: "get",
            detail,
        })?;
        if let Some((index, found)) = reply.rejected.into_iter().next() {
            return Err(Error::CorruptValue {
                node: node.to_owned(),
                stored_as: bucket
                    .stored_as(self.layout, keys.get(index).copied().unwrap_or_default()),
                found,
            });
        }
        if reply.values.len() != keys.len() {
            return Err(Error::Protocol {
                node: node.to_owned(),
                op: "get",
                detail: format!("{} values for {} keys", reply.values.len(), keys.len()),
            });
        }
        Ok(StoredValues {
            values: reply.values,
            applied_seq: reply.mark,
        })
    }

    /// The `limit` members with the highest counts in `shard`'s sorted set, count
    /// descending then member ascending, exact at the cut-off: as
    /// [`crate::RedisStore::top`], in the same steps (the score at the cut-off, then in one
    /// `MULTI` every member above it and the smallest members tied at it; the ranking
    /// script when writes keep disturbing those).
    ///
    /// # Errors
    ///
    /// [`Error::WrongLayout`] unless the layout is [`crate::Layout::SortedSet`]; the errors
    /// of [`ClusterStore::get`].
    pub async fn top(&self, shard: ShardId, limit: usize) -> Result<Vec<(String, u64)>> {
        self.require_sorted_set("top")?;
        let bucket = self.bucket(shard)?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let key = bucket.urls_key();
        for _ in 0..TOP_ATTEMPTS {
            let mut cut = redis::cmd("ZREVRANGE");
            cut.arg(&key)
                .arg(limit - 1)
                .arg(limit - 1)
                .arg("WITHSCORES");
            let cut: Vec<Pair> = self.read(bucket, "top", Via::Rankings, &cut).await?;
            let found = match cut.first() {
                // Fewer than `limit` members: all of them, unless the set grew since.
                None => {
                    let mut all = redis::cmd("ZREVRANGE");
                    all.arg(&key).arg(0).arg(limit - 1).arg("WITHSCORES");
                    let all: Vec<Pair> = self.read(bucket, "top", Via::Rankings, &all).await?;
                    (all.len() < limit).then_some(all)
                }
                Some((_, boundary)) => {
                    let mut pipe = redis::pipe();
                    pipe.atomic()
                        .cmd("ZREVRANGEBYSCORE")
                        .arg(&key)
                        .arg("+inf")
                        .arg(format!("({boundary}"))
                        .arg("WITHSCORES")
                        .cmd("ZRANGEBYSCORE")
                        .arg(&key)
                        .arg(boundary)
                        .arg(boundary)
                        .arg("WITHSCORES")
                        .arg("LIMIT")
                        .arg(0)
                        .arg(limit);
                    let (mut above, tied): (Vec<Pair>, Vec<Pair>) =
                        self.read(bucket, "top", Via::Rankings, &pipe).await?;
                    (above.len() + tied.len() >= limit).then(|| {
                        let wanted = limit.saturating_sub(above.len());
                        above.extend(tied.into_iter().take(wanted));
                        above
                    })
                }
            };
            if let Some(pairs) = found {
                return self.ranked(bucket, pairs, limit);
            }
        }
        let mut call = ScriptCall::default();
        crate::layout::ScriptArgs::key(&mut call, key);
        crate::layout::ScriptArgs::arg(&mut call, limit);
        let pairs: Vec<Pair> = match self
            .read(
                bucket,
                "top",
                Via::Rankings,
                &call.evalsha(&self.shared.top_script),
            )
            .await
        {
            Err(Error::Redis { source, .. })
                if source.kind() == redis::ErrorKind::Server(ServerErrorKind::NoScript) =>
            {
                self.read(bucket, "top", Via::Rankings, &call.eval(TOP_SCRIPT))
                    .await?
            }
            other => other?,
        };
        self.ranked(bucket, pairs, limit)
    }

    /// For each of `thresholds`, how many members of `shard`'s sorted set count at least
    /// that much (`ZCOUNT`), in one `MULTI`.
    ///
    /// # Errors
    ///
    /// As [`ClusterStore::top`].
    pub async fn count_at_least(&self, shard: ShardId, thresholds: &[u64]) -> Result<Vec<u64>> {
        self.require_sorted_set("count_at_least")?;
        let bucket = self.bucket(shard)?;
        if thresholds.is_empty() {
            return Ok(Vec::new());
        }
        let key = bucket.urls_key();
        let mut pipe = redis::pipe();
        pipe.atomic();
        for threshold in thresholds {
            pipe.cmd("ZCOUNT").arg(&key).arg(threshold).arg("+inf");
        }
        self.read(bucket, "count_at_least", Via::Rankings, &pipe)
            .await
    }

    /// The members of `shard` around one page of the ranking, in one `MULTI`, as
    /// [`crate::RedisStore::window`] reads them.
    ///
    /// # Errors
    ///
    /// As [`ClusterStore::top`].
    pub async fn window(&self, shard: ShardId, window: Window) -> Result<WindowRead> {
        self.require_sorted_set("window")?;
        let bucket = self.bucket(shard)?;
        let Window {
            high,
            low,
            high_run,
            low_run,
        } = window;
        let low = low.min(high);
        let key = bucket.urls_key();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("ZCOUNT")
            .arg(&key)
            .arg(format!("({high}"))
            .arg("+inf")
            .cmd("ZCOUNT")
            .arg(&key)
            .arg("-inf")
            .arg(format!("({low}"))
            .cmd("ZRANGEBYSCORE")
            .arg(&key)
            .arg(high)
            .arg(high)
            .arg("WITHSCORES")
            .arg("LIMIT")
            .arg(0)
            .arg(high_run)
            // Strictly between (empty when low == high).
            .cmd("ZRANGEBYSCORE")
            .arg(&key)
            .arg(format!("({low}"))
            .arg(format!("({high}"))
            .arg("WITHSCORES")
            .cmd("ZRANGEBYSCORE")
            .arg(&key)
            .arg(low)
            .arg(low)
            .arg("WITHSCORES")
            .arg("LIMIT")
            .arg(0)
            .arg(if low < high { low_run } else { 0 });
        let (above, below, at_high, between, at_low): (u64, u64, Vec<Pair>, Vec<Pair>, Vec<Pair>) =
            self.read(bucket, "window", Via::Rankings, &pipe).await?;
        let counts = |pairs| self.ranked(bucket, pairs, usize::MAX);
        Ok(WindowRead {
            above,
            below,
            at_high: counts(at_high)?,
            between: counts(between)?,
            at_low: counts(at_low)?,
        })
    }

    /// Number of members in `shard`'s sorted set (`ZCARD tally:urls:{bNNNN}`).
    ///
    /// # Errors
    ///
    /// As [`ClusterStore::top`].
    pub async fn len(&self, shard: ShardId) -> Result<u64> {
        self.require_sorted_set("len")?;
        let bucket = self.bucket(shard)?;
        let mut cmd = redis::cmd("ZCARD");
        cmd.arg(bucket.urls_key());
        self.read(bucket, "len", Via::Rankings, &cmd).await
    }

    /// `member, score` pairs as counts in ranking order, cut to `limit`.
    fn ranked(
        &self,
        bucket: &Bucket,
        pairs: Vec<Pair>,
        limit: usize,
    ) -> Result<Vec<(String, u64)>> {
        let mut entries = pairs
            .into_iter()
            .map(|(member, score)| {
                parse_count_text(&score)
                    .map(|count| (member, count))
                    .map_err(|detail| Error::Protocol {
                        node: self.shared.primary_name(bucket).to_owned(),
                        op: "top",
                        detail,
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        entries.sort_unstable_by(tally_counter::rank_order);
        entries.truncate(limit);
        Ok(entries)
    }

    /// Sends `request` for `bucket` through the cluster client `via`, bounded by the
    /// timeout, counting it (and its failure) in the metrics under the bucket's primary.
    async fn read<T: FromRedisValue + Send>(
        &self,
        bucket: &Bucket,
        op: &'static str,
        via: Via,
        request: &impl ClusterRequest,
    ) -> Result<T> {
        let shared = &self.shared;
        let (mut conn, timeout) = match via {
            Via::Commands => (shared.commands.clone(), shared.config.timeout),
            Via::Rankings => (
                shared.rankings.clone(),
                shared.config.timeout.max(RANKING_TIMEOUT_FLOOR),
            ),
        };
        if shared.view().source.is_none() {
            return Err(Error::NoPrimary {
                bucket: bucket.tag.clone(),
                slot: bucket.slot,
                reason: "no node of the cluster has answered yet".to_owned(),
            });
        }
        let node = shared.primary_name(bucket);
        let started = Instant::now();
        let result = match tokio::time::timeout(timeout, request.send(&mut conn)).await {
            Err(_) => Err(Error::Timeout {
                node: node.to_owned(),
                op,
                after: timeout,
            }),
            Ok(Err(source)) => Err(classify(node, op, source)),
            Ok(Ok(value)) => Ok(value),
        };
        record(node, op, started.elapsed(), result.as_ref().err());
        result
    }
}

/// Metrics of one read, as `crate::node` records a node's commands.
fn record(node: &str, op: &'static str, took: Duration, error: Option<&Error>) {
    metrics::counter!("tally_redis_commands_total", "node" => node.to_owned(), "op" => op)
        .increment(1);
    metrics::histogram!("tally_redis_command_seconds", "node" => node.to_owned(), "op" => op)
        .record(took.as_secs_f64());
    if let Some(error) = error {
        metrics::counter!(
            "tally_redis_errors_total",
            "node" => node.to_owned(),
            "op" => op,
            "kind" => error.kind_label()
        )
        .increment(1);
    }
}

/// A client error as this crate's error, naming `node`.
fn classify(node: &str, op: &'static str, source: redis::RedisError) -> Error {
    let node = node.to_owned();
    if is_auth_error(&source) {
        Error::Auth { node, source }
    } else if source.is_io_error() || source.is_connection_dropped() || source.is_timeout() {
        Error::Connection { node, op, source }
    } else {
        Error::Redis { node, op, source }
    }
}

/// What [`ClusterStore::read`] sends: a command or a pipeline.
trait ClusterRequest: Sync {
    fn send<T: FromRedisValue + Send>(
        &self,
        conn: &mut ClusterConnection,
    ) -> impl Future<Output = redis::RedisResult<T>> + Send;
}

impl ClusterRequest for redis::Cmd {
    fn send<T: FromRedisValue + Send>(
        &self,
        conn: &mut ClusterConnection,
    ) -> impl Future<Output = redis::RedisResult<T>> + Send {
        self.query_async(conn)
    }
}

impl ClusterRequest for redis::Pipeline {
    fn send<T: FromRedisValue + Send>(
        &self,
        conn: &mut ClusterConnection,
    ) -> impl Future<Output = redis::RedisResult<T>> + Send {
        self.query_async(conn)
    }
}
