//! Removal of old high-water marks: the sweep script, one bounded pass of it, and the
//! per-node schedule the health task follows.
//!
//! Every batch rewrites its mark as `{seq}:{unix ms}` with the node's time (see
//! `BATCH_SCRIPT`), so a mark's age is the time since its instance last wrote to that node
//! in that layout. A sweep walks a marks hash with `HSCAN`, a slice per call, and deletes
//! the marks older than the retention. Marks written before marks carried a time (a bare
//! `{seq}`, possibly by an older tally still running) are never rewritten, since the older
//! script reads them as plain numbers: the sweep notes when it first saw each value in a
//! companion hash and counts the age from there, restarting whenever the value changes.

use std::time::Duration;

use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::layout::{COUNTER_MARKS_KEY, URLS_MARKS_KEY};
use crate::node::Node;

/// Longest time between two complete sweeps of a node (shorter when the retention is
/// short: a quarter of it).
pub(crate) const SWEEP_INTERVAL: Duration = Duration::from_secs(300);

/// Fields one sweep call scans (`HSCAN ... COUNT`), bounding the work a node does per call.
/// Small hashes (up to `hash-max-listpack-entries`, 128 by default) come whole.
pub(crate) const SWEEP_BATCH: u32 = 1000;

/// Both marks hashes, each with its companion of first-seen times of marks without a time.
pub(crate) const MARK_HASHES: [(&str, &str); 2] = [
    (COUNTER_MARKS_KEY, "tally:applied:legacy-seen"),
    (URLS_MARKS_KEY, "tally:applied:urls:legacy-seen"),
];

/// One slice of a sweep of a marks hash.
pub(crate) const SWEEP_SCRIPT: &str = r"
-- KEYS[1] a hash of high-water marks, KEYS[2] its companion: field -> '{value}:{unix ms}',
--         when a sweep first saw a mark without a time holding that value
-- ARGV[1] HSCAN cursor ('0' to start), ARGV[2] fields per call, ARGV[3] retention in ms
-- Returns {next cursor ('0' once the whole hash was scanned), marks removed}.
local now = redis.call('TIME')
local stamp = now[1] .. string.format('%03d', math.floor(now[2] / 1000))
local cutoff = tonumber(stamp) - tonumber(ARGV[3])
local page = redis.call('HSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])
local fields = page[2]
local removed = 0
for i = 1, #fields, 2 do
  local field, value = fields[i], fields[i + 1]
  local written = string.match(value, '^%d+:(%d+)$')
  local bare = not written and string.match(value, '^%d+$')
  if bare then
    local seen_value, seen_at = string.match(redis.call('HGET', KEYS[2], field) or '', '^(%d+):(%d+)$')
    if seen_value == value then
      written = seen_at
    else
      redis.call('HSET', KEYS[2], field, value .. ':' .. stamp)
    end
  end
  if written and tonumber(written) < cutoff then
    redis.call('HDEL', KEYS[1], field)
    if bare then redis.call('HDEL', KEYS[2], field) end
    removed = removed + 1
  end
end
return {page[1], removed}
";

/// Runs one call of the sweep script on `node` over `hashes` from `cursor`: the next
/// cursor (`"0"` when the scan is complete) and the number of marks removed.
pub(crate) async fn sweep_pass(
    node: &Node,
    script: &redis::Script,
    hashes: (&'static str, &'static str),
    cursor: &str,
    retention: Duration,
) -> Result<(String, u64)> {
    let retention_ms = u64::try_from(retention.as_millis()).unwrap_or(u64::MAX);
    let mut invocation = script.key(hashes.0);
    invocation
        .key(hashes.1)
        .arg(cursor)
        .arg(SWEEP_BATCH)
        .arg(retention_ms);
    let (next, removed): (String, u64) = node.run("sweep", &invocation).await?;
    if removed > 0 {
        metrics::counter!("tally_redis_marks_removed_total", "node" => node.name().to_owned())
            .increment(removed);
        tracing::info!(
            node = %node.name(),
            hash = hashes.0,
            removed,
            retention = ?retention,
            "removed high-water marks not written for longer than the retention"
        );
    }
    Ok((next, removed))
}

/// Every pass of a complete sweep of both marks hashes on `node`: the marks removed.
pub(crate) async fn sweep_node(
    node: &Node,
    script: &redis::Script,
    retention: Duration,
) -> Result<u64> {
    let mut removed = 0;
    for hashes in MARK_HASHES {
        let mut cursor = "0".to_owned();
        loop {
            let (next, gone) = sweep_pass(node, script, hashes, &cursor, retention).await?;
            removed += gone;
            if next == "0" {
                break;
            }
            cursor = next;
        }
    }
    Ok(removed)
}

/// The health task's sweep schedule: one pass per marks hash per due node per round, so a
/// round's work stays bounded however large the hashes; a node's next sweep starts
/// [`sweep_interval`] after its last one completed.
///
/// Owned by the health task alone, so it needs no lock.
pub(crate) struct Sweeper {
    retention: Duration,
    interval: Duration,
    nodes: Vec<NodeSweep>,
}

struct NodeSweep {
    /// When the next sweep may start.
    due: Instant,
    /// Per marks hash: `Some(cursor)` while its scan is under way (or about to start at
    /// `"0"`), `None` once it finished (or failed) in this sweep.
    cursors: [Option<String>; 2],
}

impl NodeSweep {
    fn new(due: Instant) -> Self {
        Self {
            due,
            cursors: [Some("0".to_owned()), Some("0".to_owned())],
        }
    }
}

/// How often a node is swept: [`SWEEP_INTERVAL`], or a quarter of the retention when that is
/// shorter, so a mark outlives its retention by at most a quarter of it.
pub(crate) fn sweep_interval(retention: Duration) -> Duration {
    SWEEP_INTERVAL.min(retention / 4)
}

impl Sweeper {
    /// A schedule for `nodes` nodes, each due at once.
    pub(crate) fn new(nodes: usize, retention: Duration) -> Self {
        let now = Instant::now();
        Self {
            retention,
            interval: sweep_interval(retention),
            nodes: (0..nodes).map(|_| NodeSweep::new(now)).collect(),
        }
    }

    /// One pass on every node that is up and due. A failed pass ends that node's sweep; the
    /// next starts over after the interval.
    pub(crate) async fn run_due(&mut self, nodes: &[Node], script: &redis::Script) {
        let now = Instant::now();
        let (retention, interval) = (self.retention, self.interval);
        let passes = self
            .nodes
            .iter_mut()
            .zip(nodes)
            .filter(|(sweep, node)| sweep.due <= now && node.is_up())
            .map(|(sweep, node)| async move {
                for (hashes, slot) in MARK_HASHES.into_iter().zip(&mut sweep.cursors) {
                    let Some(cursor) = slot.take() else { continue };
                    match sweep_pass(node, script, hashes, &cursor, retention).await {
                        Ok((next, _)) if next != "0" => *slot = Some(next),
                        Ok(_) => {}
                        Err(e) => log_failure(node, &e),
                    }
                }
                if sweep.cursors.iter().all(Option::is_none) {
                    *sweep = NodeSweep::new(Instant::now() + interval);
                }
            });
        futures::future::join_all(passes).await;
    }
}

fn log_failure(node: &Node, error: &Error) {
    tracing::warn!(
        node = %node.name(),
        error.message = %error,
        error.cause_chain = ?error,
        "cannot remove old high-water marks; trying again at the next sweep"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_are_swept_every_five_minutes_or_a_quarter_of_a_short_retention() {
        assert_eq!(
            sweep_interval(crate::DEFAULT_MARKS_RETENTION),
            Duration::from_secs(300)
        );
        assert_eq!(
            sweep_interval(Duration::from_secs(4)),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn the_sweep_only_touches_the_marks_hashes() {
        for (marks, seen) in MARK_HASHES {
            assert!(seen.starts_with(marks) && seen.ends_with(":legacy-seen"));
        }
    }
}
