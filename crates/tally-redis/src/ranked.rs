//! The ranked reads of the request statistics' sorted set, for both stores: the members
//! with the highest counts, exact at the cut-off ([`top`]), how many count at least some
//! thresholds ([`count_at_least`]), the members around one page of the ranking
//! ([`window`]), the set's size ([`len`]), and the `member, score` replies turned into
//! ranked counts.
//!
//! What differs between [`crate::RedisStore`] (a node's `tally:urls`, on one connection of
//! the node's ranking pool) and [`crate::ClusterStore`] (a bucket's `tally:urls:{bNNNN}`,
//! through the cluster client) is a [`SortedSet`]: the key, the node named in errors, and
//! how a request and the ranking script reach the node.

use redis::FromRedisValue;
use tally_counter::{Window, WindowRead};

use crate::error::{Error, Result};
use crate::layout::parse_count_text;

/// A sorted-set member and its score, as Redis sends them.
pub(crate) type Pair = (String, String);

/// Optimistic two-step reads [`top`] makes before it falls back to the ranking script.
const TOP_ATTEMPTS: usize = 3;

/// What [`SortedSet::send`] sends: one command, or a pipeline (`MULTI` when atomic).
#[derive(Clone, Copy)]
pub(crate) enum Request<'a> {
    /// One command.
    Command(&'a redis::Cmd),
    /// A pipeline, whose replies come back together.
    Pipeline(&'a redis::Pipeline),
}

/// One sorted set of the request statistics and the way to the node that holds it.
pub(crate) trait SortedSet {
    /// The sorted set's key.
    fn key(&self) -> &str;

    /// The node named by a reply that does not parse.
    fn node(&self) -> &str;

    /// Sends `request` for `op` to the node, with the node's timeout, metrics and error
    /// classification.
    async fn send<T: FromRedisValue + Send>(
        &mut self,
        op: &'static str,
        request: Request<'_>,
    ) -> Result<T>;

    /// Runs the ranking script (`crate::layout::TOP_SCRIPT`) on the set with `limit`.
    async fn run_top_script(&mut self, limit: usize) -> Result<Vec<Pair>>;
}

/// The `limit` members of `set` with the highest counts: count descending, then member
/// ascending (byte order), exact at the cut-off. See [`crate::RedisStore::top`] for the
/// steps and why they are native commands, not the script.
pub(crate) async fn top(set: &mut impl SortedSet, limit: usize) -> Result<Vec<(String, u64)>> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    for _ in 0..TOP_ATTEMPTS {
        let mut cut = redis::cmd("ZREVRANGE");
        cut.arg(set.key())
            .arg(limit - 1)
            .arg(limit - 1)
            .arg("WITHSCORES");
        let cut: Vec<Pair> = set.send("top", Request::Command(&cut)).await?;
        let found = match cut.first() {
            // Fewer than `limit` members: all of them, unless the set grew since.
            None => {
                let mut all = redis::cmd("ZREVRANGE");
                all.arg(set.key()).arg(0).arg(limit - 1).arg("WITHSCORES");
                let all: Vec<Pair> = set.send("top", Request::Command(&all)).await?;
                (all.len() < limit).then_some(all)
            }
            Some((_, boundary)) => {
                let mut pipe = redis::pipe();
                pipe.atomic()
                    .cmd("ZREVRANGEBYSCORE")
                    .arg(set.key())
                    .arg("+inf")
                    .arg(format!("({boundary}"))
                    .arg("WITHSCORES")
                    .cmd("ZRANGEBYSCORE")
                    .arg(set.key())
                    .arg(boundary)
                    .arg(boundary)
                    .arg("WITHSCORES")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit);
                let (mut above, tied): (Vec<Pair>, Vec<Pair>) =
                    set.send("top", Request::Pipeline(&pipe)).await?;
                (above.len() + tied.len() >= limit).then(|| {
                    let wanted = limit.saturating_sub(above.len());
                    above.extend(tied.into_iter().take(wanted));
                    above
                })
            }
        };
        if let Some(pairs) = found {
            return ranked(set, pairs, limit);
        }
    }
    top_by_script(set, limit).await
}

/// [`top`] in one step, with the ranking script.
pub(crate) async fn top_by_script(
    set: &mut impl SortedSet,
    limit: usize,
) -> Result<Vec<(String, u64)>> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let pairs = set.run_top_script(limit).await?;
    ranked(set, pairs, limit)
}

/// For each of `thresholds`, how many members of `set` count at least that much
/// (`ZCOUNT`), in one `MULTI`.
pub(crate) async fn count_at_least(
    set: &mut impl SortedSet,
    thresholds: &[u64],
) -> Result<Vec<u64>> {
    if thresholds.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    pipe.atomic();
    for threshold in thresholds {
        pipe.cmd("ZCOUNT").arg(set.key()).arg(threshold).arg("+inf");
    }
    set.send("count_at_least", Request::Pipeline(&pipe)).await
}

/// The members of `set` around one page of the ranking, in one `MULTI` (see
/// [`tally_counter::Window`]).
pub(crate) async fn window(set: &mut impl SortedSet, window: Window) -> Result<WindowRead> {
    let Window {
        high,
        low,
        high_run,
        low_run,
    } = window;
    let low = low.min(high);
    let key = set.key();
    let mut pipe = redis::pipe();
    pipe.atomic()
        .cmd("ZCOUNT")
        .arg(key)
        .arg(format!("({high}"))
        .arg("+inf")
        .cmd("ZCOUNT")
        .arg(key)
        .arg("-inf")
        .arg(format!("({low}"))
        .cmd("ZRANGEBYSCORE")
        .arg(key)
        .arg(high)
        .arg(high)
        .arg("WITHSCORES")
        .arg("LIMIT")
        .arg(0)
        .arg(high_run)
        // Strictly between (empty when low == high).
        .cmd("ZRANGEBYSCORE")
        .arg(key)
        .arg(format!("({low}"))
        .arg(format!("({high}"))
        .arg("WITHSCORES")
        .cmd("ZRANGEBYSCORE")
        .arg(key)
        .arg(low)
        .arg(low)
        .arg("WITHSCORES")
        .arg("LIMIT")
        .arg(0)
        .arg(if low < high { low_run } else { 0 });
    let (above, below, at_high, between, at_low): (u64, u64, Vec<Pair>, Vec<Pair>, Vec<Pair>) =
        set.send("window", Request::Pipeline(&pipe)).await?;
    let counts = |pairs| ranked(set, pairs, usize::MAX);
    Ok(WindowRead {
        above,
        below,
        at_high: counts(at_high)?,
        between: counts(between)?,
        at_low: counts(at_low)?,
    })
}

/// Number of members in `set` (`ZCARD`).
pub(crate) async fn len(set: &mut impl SortedSet) -> Result<u64> {
    let mut cmd = redis::cmd("ZCARD");
    cmd.arg(set.key());
    set.send("len", Request::Command(&cmd)).await
}

/// `member, score` pairs of `set` as counts in ranking order (count descending, then
/// member ascending), cut to `limit`.
fn ranked(set: &impl SortedSet, pairs: Vec<Pair>, limit: usize) -> Result<Vec<(String, u64)>> {
    let mut entries = pairs
        .into_iter()
        .map(|(member, score)| {
            parse_count_text(&score)
                .map(|count| (member, count))
                .map_err(|detail| Error::Protocol {
                    node: set.node().to_owned(),
                    op: "top",
                    detail,
                })
        })
        .collect::<Result<Vec<_>>>()?;
    entries.sort_unstable_by(tally_counter::rank_order);
    entries.truncate(limit);
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use redis::Value;

    use super::*;

    /// A sorted set whose node answers each request with the next of `replies`, and the
    /// ranking script with `script`.
    struct Scripted {
        replies: VecDeque<Value>,
        script: Vec<(&'static str, &'static str)>,
        script_runs: usize,
    }

    impl Scripted {
        fn new(replies: impl IntoIterator<Item = Value>) -> Self {
            Self {
                replies: replies.into_iter().collect(),
                script: Vec::new(),
                script_runs: 0,
            }
        }
    }

    impl SortedSet for Scripted {
        fn key(&self) -> &str {
            "tally:urls"
        }

        fn node(&self) -> &str {
            "127.0.0.1:6379"
        }

        async fn send<T: FromRedisValue + Send>(
            &mut self,
            _op: &'static str,
            _request: Request<'_>,
        ) -> Result<T> {
            let reply = self.replies.pop_front().expect("a reply for every request");
            Ok(redis::from_redis_value(reply).expect("a reply of the asked shape"))
        }

        async fn run_top_script(&mut self, _limit: usize) -> Result<Vec<Pair>> {
            self.script_runs += 1;
            Ok(owned(&self.script))
        }
    }

    /// `member, score` pairs as a flat `WITHSCORES` reply.
    fn flat(pairs: &[(&str, &str)]) -> Value {
        Value::Array(
            pairs
                .iter()
                .flat_map(|(member, score)| [*member, *score])
                .map(|text| Value::BulkString(text.as_bytes().to_vec()))
                .collect(),
        )
    }

    fn owned(pairs: &[(&str, &str)]) -> Vec<Pair> {
        pairs
            .iter()
            .map(|(member, score)| ((*member).to_owned(), (*score).to_owned()))
            .collect()
    }

    #[tokio::test]
    async fn top_takes_the_members_above_the_cut_and_the_smallest_tied_at_it() {
        let mut set = Scripted::new([
            flat(&[("c", "3")]),
            Value::Array(vec![flat(&[("a", "5")]), flat(&[("b", "3"), ("c", "3")])]),
        ]);

        let top = top(&mut set, 2).await.unwrap();

        assert_eq!(top, [("a".to_owned(), 5), ("b".to_owned(), 3)]);
        assert_eq!(set.script_runs, 0);
    }

    #[tokio::test]
    async fn top_asks_the_script_once_writes_keep_shortening_the_snapshot() {
        let short_round = [
            flat(&[("b", "3")]),
            Value::Array(vec![flat(&[]), flat(&[("b", "3")])]),
        ];
        let mut set = Scripted::new(short_round.iter().cloned().cycle().take(6));
        set.script = vec![("y", "1"), ("x", "9")];

        let top = top(&mut set, 2).await.unwrap();

        assert_eq!(top, [("x".to_owned(), 9), ("y".to_owned(), 1)]);
        assert_eq!(set.script_runs, 1);
        assert!(
            set.replies.is_empty(),
            "{TOP_ATTEMPTS} rounds before the script"
        );
    }

    #[tokio::test]
    async fn a_ranking_of_nothing_asks_the_node_nothing() {
        let mut set = Scripted::new([]);

        assert!(top(&mut set, 0).await.unwrap().is_empty());
        assert!(top_by_script(&mut set, 0).await.unwrap().is_empty());
        assert!(count_at_least(&mut set, &[]).await.unwrap().is_empty());
        assert_eq!(set.script_runs, 0);
    }

    #[test]
    fn a_score_that_is_not_a_count_is_a_protocol_error_naming_the_node() {
        let set = Scripted::new([]);

        let err = ranked(&set, owned(&[("a", "1.5")]), 10).unwrap_err();

        assert!(
            matches!(&err, Error::Protocol { node, op: "top", .. } if node == "127.0.0.1:6379"),
            "{err:?}"
        );
    }
}
