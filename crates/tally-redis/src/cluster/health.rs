//! The health task of a [`super::ClusterStore`]: pings every node, reads the cluster's
//! nodes and slots again, and sweeps old high-water marks, a few buckets at a time.

use std::collections::BTreeMap;
use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::buckets::bucket_count;
use super::topology::Topology;
use super::{Shared, bucket_tag};
use crate::error::{Error, Result};
use crate::layout::{Layout, ScriptArgs as _, ScriptCall};
use crate::lock;
use crate::marks::{SWEEP_BATCH, sweep_interval};

/// Nodes that are down are pinged, and the cluster's nodes read, at least this often.
const DOWN_PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Sweep calls (each one `HSCAN` slice of one bucket's marks) per round of the task.
const SWEEP_CALLS_PER_ROUND: usize = 8;

/// The first round, before [`super::ClusterStore::connect`] returns: every seed pinged,
/// and the cluster's nodes read from those that answer.
///
/// # Errors
///
/// [`Error::Config`] when a seed answers but is no cluster node (cluster support
/// disabled: standalone nodes belong in `REDIS_NODES`) and none is.
pub(super) async fn first_round(shared: &Shared) -> Result<()> {
    let nodes: Vec<_> = lock(&shared.nodes).values().cloned().collect();
    futures::future::join_all(nodes.iter().map(|node| node.probe(None))).await;
    match refresh(shared).await {
        Some(standalone) if shared.view().source.is_none() => Err(Error::Config {
            field: "REDIS_CLUSTER",
            problem: format!(
                "redis node {standalone} is not a cluster node (cluster support is disabled); list a Redis Cluster's nodes in REDIS_CLUSTER, or standalone nodes in REDIS_NODES"
            ),
        }),
        _ => Ok(()),
    }
}

/// One round: pings the nodes (all of them when `full`, else those down), then reads the
/// cluster's nodes again when `full`, when a write saw the slot map change, or while
/// anything is down.
pub(super) async fn round(shared: &Shared, full: bool) {
    let nodes: Vec<_> = lock(&shared.nodes).values().cloned().collect();
    let probes = nodes
        .iter()
        .filter(|node| full || !node.is_up())
        .map(|node| node.probe(None));
    futures::future::join_all(probes).await;
    let stale = shared.stale.swap(false, Ordering::Relaxed);
    let unsettled = shared.status().status() != "healthy";
    if full || stale || unsettled {
        refresh(shared).await;
    }
}

/// Reads `CLUSTER NODES` from every node that answers and adopts the most recent answer
/// (the highest configuration epoch; the first of those, primaries asked first). Returns
/// a node that answered it has no cluster support, if one did.
async fn refresh(shared: &Shared) -> Option<String> {
    let view = shared.view();
    let mut names: Vec<String> = view.names().map(str::to_owned).collect();
    for seed in &shared.config.seeds {
        if !names.iter().any(|name| name == seed.name()) {
            names.push(seed.name().to_owned());
        }
    }
    let asks = names.into_iter().filter_map(|name| {
        let node = shared.known_node(&name).filter(|node| node.is_up())?;
        Some(async move {
            let mut cmd = redis::cmd("CLUSTER");
            cmd.arg("NODES");
            let answer = node.run::<String>("cluster-nodes", &cmd).await;
            (name, answer)
        })
    });
    let mut best: Option<Topology> = None;
    let mut standalone = None;
    for (name, answer) in futures::future::join_all(asks).await {
        let parsed = match answer {
            Ok(text) => Topology::parse(&text, &name),
            Err(Error::Redis { source, .. })
                if source.to_string().contains("cluster support disabled") =>
            {
                standalone = Some(name);
                continue;
            }
            // Marked down by the node's own bookkeeping when it did not answer.
            Err(_) => continue,
        };
        match parsed {
            Ok(topology) => {
                if best.as_ref().is_none_or(|b| topology.epoch() > b.epoch()) {
                    best = Some(topology);
                }
            }
            Err(detail) => tracing::warn!(
                node = %name,
                detail = %detail,
                "cannot read CLUSTER NODES; asking another node"
            ),
        }
    }
    if let Some(topology) = best {
        adopt(shared, topology);
    }
    standalone
}

/// Makes `topology` the store's slot map: a node for every address it lists, the nodes it
/// no longer lists (seeds excepted) forgotten, `REDIS_WAIT_REPLICAS` resolved the first
/// time, and a log line when the primaries changed.
fn adopt(shared: &Shared, topology: Topology) {
    for name in topology.names() {
        if let Err(e) = shared.node_for(name) {
            tracing::warn!(node = %name, error.message = %e, "cannot use a node the cluster lists");
        }
    }
    {
        let listed: Vec<&str> = topology.names().collect();
        let keep = |name: &String| {
            listed.contains(&name.as_str())
                || shared.config.seeds.iter().any(|seed| seed.name() == name)
        };
        lock(&shared.nodes).retain(|name, _| keep(name));
        lock(&shared.lanes).retain(|name, _| keep(name));
    }
    shared.wait_replicas.get_or_init(|| {
        let wait = match shared.config.wait_replicas {
            Some(wait) => wait as usize,
            None => usize::from(topology.has_replicas()),
        };
        tracing::info!(
            wait_replicas = wait,
            configured = ?shared.config.wait_replicas,
            "redis cluster: every batch waits for {wait} replica(s) (REDIS_WAIT_REPLICAS)"
        );
        wait
    });
    let primaries = |topology: &Topology| -> BTreeMap<String, Vec<(u16, u16)>> {
        topology
            .nodes
            .iter()
            .filter(|n| n.primary && !n.slots.is_empty())
            .map(|n| (n.name.clone(), n.slots.clone()))
            .collect()
    };
    let before = primaries(&shared.view());
    let after = primaries(&topology);
    let source = topology.source.clone().unwrap_or_default();
    shared.set_view(topology);
    if before != after {
        let shown: Vec<String> = after
            .iter()
            .map(|(name, slots)| format!("{name} {}", show_slots(slots)))
            .collect();
        tracing::info!(
            source = %source,
            "redis cluster primaries: {}",
            shown.join(", ")
        );
    }
}

fn show_slots(slots: &[(u16, u16)]) -> String {
    slots
        .iter()
        .map(|(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Runs the health task, and starts it again whenever it panics (logged and counted as
/// `tally_task_panics_total{task="health"}`).
pub(super) async fn supervise(shared: Weak<Shared>, stop: watch::Receiver<()>, interval: Duration) {
    tally_counter::restart_on_panic(
        || run(shared.clone(), stop.clone(), interval),
        |message| {
            metrics::counter!("tally_task_panics_total", "task" => "health").increment(1);
            tracing::error!(panic.message = %message, "the redis cluster health task panicked; restarted it");
        },
    )
    .await;
}

/// Rounds every `interval` (nodes down, or the slot map changed: every
/// `min(interval, 1 s)`), and a slice of the marks sweep after each, until the last store
/// handle is dropped. Holds the store only weakly, and only while a round runs.
async fn run(shared: Weak<Shared>, mut stop: watch::Receiver<()>, interval: Duration) {
    let tick = interval.min(DOWN_PROBE_INTERVAL);
    let mut last_full = Instant::now();
    let mut sweeper = None;
    loop {
        tokio::select! {
            // Nothing is ever sent: an error means the store was dropped.
            _ = stop.changed() => return,
            () = tokio::time::sleep(tick) => {}
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let full = last_full.elapsed() >= interval;
        if full {
            last_full = Instant::now();
        }
        round(&shared, full).await;
        sweeper
            .get_or_insert_with(|| MarkSweeper::new(shared.config.marks_retention))
            .run_due(&shared)
            .await;
    }
}

/// Where the sweep of old marks is: which marks hash (layout and bucket), from which
/// `HSCAN` cursor, and when the next complete sweep is due. Owned by the health task.
struct MarkSweeper {
    retention: Duration,
    due: Instant,
    /// Index into [`mark_hashes`].
    next: usize,
    cursor: String,
}

impl MarkSweeper {
    fn new(retention: Duration) -> Self {
        Self {
            retention,
            due: Instant::now(),
            next: 0,
            cursor: "0".to_owned(),
        }
    }

    /// A few sweep calls, when a sweep is due; a failed call moves on to the next hash.
    async fn run_due(&mut self, shared: &Shared) {
        if Instant::now() < self.due {
            return;
        }
        let hashes = mark_hashes();
        for _ in 0..SWEEP_CALLS_PER_ROUND {
            let (layout, bucket) = hashes[self.next];
            match sweep_call(shared, layout, bucket, &self.cursor, self.retention).await {
                Ok((cursor, _)) if cursor != "0" => {
                    self.cursor = cursor;
                    continue;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(
                    bucket = %bucket_tag(bucket),
                    layout = %layout,
                    error.message = %e,
                    error.cause_chain = ?e,
                    "cannot remove old high-water marks; trying again at the next sweep"
                ),
            }
            self.cursor = "0".to_owned();
            self.next += 1;
            if self.next == hashes.len() {
                self.next = 0;
                self.due = Instant::now() + sweep_interval(self.retention);
                return;
            }
        }
    }
}

/// Every marks hash of a cluster: each bucket of each layout.
fn mark_hashes() -> Vec<(Layout, usize)> {
    [Layout::Counters, Layout::SortedSet]
        .into_iter()
        .flat_map(|layout| (0..bucket_count(layout)).map(move |bucket| (layout, bucket)))
        .collect()
}

/// Every marks hash swept now, whole: the marks removed.
pub(super) async fn sweep_all(shared: &Shared) -> Result<u64> {
    let mut removed = 0;
    for (layout, bucket) in mark_hashes() {
        let mut cursor = "0".to_owned();
        loop {
            let (next, gone) = sweep_call(
                shared,
                layout,
                bucket,
                &cursor,
                shared.config.marks_retention,
            )
            .await?;
            removed += gone;
            if next == "0" {
                break;
            }
            cursor = next;
        }
    }
    Ok(removed)
}

/// One call of the sweep script (`crate::marks`) on one bucket's marks hash of `layout`
/// and its companion: the next cursor and the marks removed.
async fn sweep_call(
    shared: &Shared,
    layout: Layout,
    bucket: usize,
    cursor: &str,
    retention: Duration,
) -> Result<(String, u64)> {
    use crate::layout::KeySpace as _;
    let bucket = &shared.buckets[bucket];
    let marks = bucket.marks_key(layout);
    let mut call = ScriptCall::default();
    call.key(marks.clone());
    call.key(format!("{marks}:legacy-seen"));
    call.arg(cursor);
    call.arg(SWEEP_BATCH);
    call.arg(u64::try_from(retention.as_millis()).unwrap_or(u64::MAX));
    let node = shared.primary_name(bucket);
    let timeout = shared.config.timeout;
    let send = |cmd: redis::Cmd| {
        let mut conn = shared.commands.clone();
        async move { tokio::time::timeout(timeout, cmd.query_async::<(String, u64)>(&mut conn)).await }
    };
    let answer = match send(call.evalsha(&shared.sweep_script)).await {
        Ok(Err(e)) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            send(call.eval(crate::marks::SWEEP_SCRIPT)).await
        }
        other => other,
    };
    let (next, removed) = match answer {
        Ok(Ok(answer)) => answer,
        Ok(Err(source)) => {
            return Err(Error::Redis {
                node: node.to_owned(),
                op: "sweep",
                source,
            });
        }
        Err(_) => {
            return Err(Error::Timeout {
                node: node.to_owned(),
                op: "sweep",
                after: timeout,
            });
        }
    };
    if removed > 0 {
        metrics::counter!("tally_redis_marks_removed_total", "node" => node.to_owned())
            .increment(removed);
        tracing::info!(
            node = %node,
            hash = %marks,
            removed,
            retention = ?retention,
            "removed high-water marks not written for longer than the retention"
        );
    }
    Ok((next, removed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bucket_of_both_layouts_is_swept() {
        let hashes = mark_hashes();
        assert_eq!(
            hashes.len(),
            super::super::COUNTER_BUCKETS + super::super::STATS_BUCKETS
        );
        assert_eq!(hashes[0], (Layout::Counters, 0));
        assert_eq!(hashes.last(), Some(&(Layout::SortedSet, 15)));
    }

    #[test]
    fn slot_ranges_show_compactly() {
        assert_eq!(show_slots(&[(0, 5460), (7, 7)]), "0-5460,7");
    }
}
