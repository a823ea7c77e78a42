//! Reads through the `redis` crate's cluster client: a bucket's values with its mark (the
//! batch script, reading), and the way of the ranking reads of the request statistics
//! (`crate::ranked`) to a bucket's primary.

use std::time::{Duration, Instant};

use redis::cluster_async::ClusterConnection;
use redis::{FromRedisValue, ServerErrorKind, Value};
use tally_counter::{InstanceId, ShardId, SketchAdd, StoredValues, Window, WindowRead};

use super::ClusterStore;
use super::buckets::Bucket;
use crate::error::{Error, Result, is_auth_error};
use crate::layout::{
    BATCH_SCRIPT, KeySpace as _, ScriptArgs as _, ScriptCall, TOP_SCRIPT, fill_script_args,
    stored_values,
};
use crate::node::RANKING_TIMEOUT_FLOOR;
use crate::ranked::{self, Pair, Request, SortedSet};
use crate::sketch;

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
            None,
        );
        let script = &self.shared.script;
        let reply: Value = self
            .read_script(bucket, "get", Via::Commands, &call, script, BATCH_SCRIPT)
            .await?;
        stored_values(reply, self.shared.primary_name(bucket), keys, |key| {
            bucket.stored_as(self.layout, key)
        })
    }

    /// [`tally_counter::Store::sketch`] with this crate's error type: one pipeline on the
    /// bucket's primary (see [`crate::sketch`]), through the cluster client, which follows
    /// `MOVED` and `ASK`.
    ///
    /// # Errors
    ///
    /// [`Error::WrongLayout`] unless the layout is [`crate::Layout::Counters`]; the errors
    /// of [`ClusterStore::get`].
    pub async fn sketch(
        &self,
        shard: ShardId,
        adds: &[SketchAdd<'_>],
        estimate: &[&str],
    ) -> Result<Vec<u64>> {
        self.layout.require(crate::Layout::Counters, "sketch")?;
        let bucket = self.bucket(shard)?;
        let ttl = self.shared.config.subkey_ttl;
        let pipe = sketch::pipeline(bucket, adds, estimate, ttl);
        let replies: Vec<Value> = self.read(bucket, "sketch", Via::Commands, &pipe).await?;
        let node = self.shared.primary_name(bucket);
        sketch::estimates(replies, node, bucket, adds, estimate, ttl)
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
        ranked::top(&mut self.sorted_set("top", shard)?, limit).await
    }

    /// For each of `thresholds`, how many members of `shard`'s sorted set count at least
    /// that much (`ZCOUNT`), in one `MULTI`.
    ///
    /// # Errors
    ///
    /// As [`ClusterStore::top`].
    pub async fn count_at_least(&self, shard: ShardId, thresholds: &[u64]) -> Result<Vec<u64>> {
        ranked::count_at_least(&mut self.sorted_set("count_at_least", shard)?, thresholds).await
    }

    /// The members of `shard` around one page of the ranking, in one `MULTI`, as
    /// [`crate::RedisStore::window`] reads them.
    ///
    /// # Errors
    ///
    /// As [`ClusterStore::top`].
    pub async fn window(&self, shard: ShardId, window: Window) -> Result<WindowRead> {
        ranked::window(&mut self.sorted_set("window", shard)?, window).await
    }

    /// Number of members in `shard`'s sorted set (`ZCARD tally:urls:{bNNNN}`).
    ///
    /// # Errors
    ///
    /// As [`ClusterStore::top`].
    pub async fn len(&self, shard: ShardId) -> Result<u64> {
        ranked::len(&mut self.sorted_set("len", shard)?).await
    }

    /// `shard`'s sorted set, for the ranked read `op`: [`Error::WrongLayout`] unless the
    /// layout is [`crate::Layout::SortedSet`].
    fn sorted_set(&self, op: &'static str, shard: ShardId) -> Result<BucketSet<'_>> {
        self.layout.require(crate::Layout::SortedSet, op)?;
        let bucket = self.bucket(shard)?;
        Ok(BucketSet {
            store: self,
            bucket,
            key: bucket.urls_key(),
        })
    }

    /// Runs `script` (whose source is `code`) with the keys and arguments of `call`:
    /// `EVALSHA`, then `EVAL` when the node does not have the script yet, each sent as
    /// [`ClusterStore::read`] sends a command.
    async fn read_script<T: FromRedisValue + Send>(
        &self,
        bucket: &Bucket,
        op: &'static str,
        via: Via,
        call: &ScriptCall,
        script: &redis::Script,
        code: &str,
    ) -> Result<T> {
        match self.read(bucket, op, via, &call.evalsha(script)).await {
            Err(Error::Redis { source, .. })
                if source.kind() == redis::ErrorKind::Server(ServerErrorKind::NoScript) =>
            {
                self.read(bucket, op, via, &call.eval(code)).await
            }
            other => other,
        }
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

/// A bucket's `tally:urls:{bNNNN}`, for the ranked reads of `crate::ranked`: read through
/// the rankings' cluster client.
struct BucketSet<'a> {
    store: &'a ClusterStore,
    bucket: &'a Bucket,
    key: String,
}

impl SortedSet for BucketSet<'_> {
    fn key(&self) -> &str {
        &self.key
    }

    fn node(&self) -> &str {
        self.store.shared.primary_name(self.bucket)
    }

    async fn send<T: FromRedisValue + Send>(
        &mut self,
        op: &'static str,
        request: Request<'_>,
    ) -> Result<T> {
        match request {
            Request::Command(cmd) => self.store.read(self.bucket, op, Via::Rankings, cmd).await,
            Request::Pipeline(pipe) => self.store.read(self.bucket, op, Via::Rankings, pipe).await,
        }
    }

    async fn run_top_script(&mut self, limit: usize) -> Result<Vec<Pair>> {
        let mut call = ScriptCall::default();
        call.key(self.key.clone());
        call.arg(limit);
        let script = &self.store.shared.top_script;
        self.store
            .read_script(self.bucket, "top", Via::Rankings, &call, script, TOP_SCRIPT)
            .await
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
