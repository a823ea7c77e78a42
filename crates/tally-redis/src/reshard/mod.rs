//! Resharding: moving every count whose owner changes when the node list changes.
//!
//! A key's node is its owner on the ring, so adding a node to `REDIS_NODES` gives it about
//! a quarter of the keys (of four), which would then read 0 there while their counts stay
//! on the old nodes. [`plan`] reads the nodes of both lists and says what moves; [`apply`]
//! moves it: every visit counter (`tally:v:*`, [`Layout::Counters`]) and every
//! request-statistics entry (member of `tally:urls`, [`Layout::SortedSet`]) found on a
//! node that is not its owner in the new ring goes to that owner, added to whatever the
//! owner holds. Keys already on their owner are never touched; the high-water marks stay
//! on their nodes.
//!
//! Visitor sketches (`tally:u:*`, [`crate::sketch`]) move after the counts, merged into
//! their new owner's (`PFMERGE`, idempotent, so no marker is needed: see `sketches`).
//!
//! Nodes are named by `host:port` ([`crate::NodeUrl::name`]), what the ring hashes: a name
//! in both lists is the same node (its credentials may differ). The owner of a key is
//! [`tally_ring::Ring::lookup_index`] of the page id or URL on the new ring, built as
//! [`crate::RedisStore::connect`] builds it (the names, weight 1, `VIRTUAL_NODES`). Two
//! names that reach one Redis database (they hold the same [`crate::NODE_ID_KEY`]) refuse
//! the reshard ([`Error::ReshardAlias`]).
//!
//! # The protocol, and why it is exact when killed at any point
//!
//! Each node of both lists is a source: its keys are scanned (`SCAN MATCH tally:v:*`,
//! `ZSCAN tally:urls`), and the keys another node owns are moved to it in chunks of at most
//! 1,000 keys of one layout, one source and one destination. A chunk takes four steps:
//!
//! 1. **read** the keys' counts on the source (`MGET` or `ZMSCORE`);
//! 2. **receive**, one script on the destination: for each key, `HSETNX` the field
//!    `{source}\0{v|u}\0{key}` of the hash [`MARKERS_KEY`] to the count, and only when
//!    that set the field, add the count to the key;
//! 3. **release**, one script on the source: remove each key that still holds the count
//!    read (a key that grew keeps what it gained, which moves with the next pass, and the
//!    run ends with [`Error::WrittenDuringReshard`]: something is still writing);
//! 4. **forget**, `HDEL` the chunk's marker fields on the destination.
//!
//! Each script runs atomically, so a kill (of this process, or a failure of a node)
//! leaves the chunk between two steps, and a new run repairs every such state:
//!
//! - before step 2 ran: nothing changed;
//! - after step 2, before step 3: the source still holds the keys, so the next run reads
//!   them again, and their markers stop a second add; step 3 then removes them;
//! - after step 3, before step 4: the keys are gone from the source and are not read
//!   again; their markers are stale, and harmless;
//! - after step 4: the chunk is done.
//!
//! A count is therefore added to its destination at most once, and removed from its
//! source only once the destination has it. A source is scanned again until a pass finds
//! nothing to move (a full scan returns every key present throughout it; keys deleted or
//! added during it may or may not come); keys still found by a third scan were written
//! meanwhile, and the run stops ([`Error::ReshardUnsettled`]). Once every source is done,
//! no source holds a key
//! whose marker is still wanted, and the whole [`MARKERS_KEY`] hash is deleted on every
//! node. The guard ([`crate::guard`]) brackets the run: [`crate::guard::begin_reshard`]
//! before anything moves (no server may be writing, and servers refuse to start until
//! the reshard finishes) and [`crate::guard::finish_reshard`] once everything moved.
//!
//! Exactness assumes nothing else writes the keys meanwhile, which the guard's leases
//! ensure. A key found changed at step 3 is reported; a key that grew loses nothing
//! (what was read moved, the rest moves next), but a reset of a key during its move is
//! not undone on the destination.
//!
//! A node that is down, or fails, stops the run with its error (naming it by `host:port`,
//! never with a password); running the same reshard again resumes it.

mod chunk;
mod link;
mod plan;
mod scan;
mod sketches;

use std::collections::HashSet;
use std::sync::Mutex;

use futures::future::try_join_all;
use tally_ring::Ring;

use crate::config::{NodeUrl, RedisConfig};
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::lock;
use crate::node::{NODE_ID_KEY, Node};

use chunk::{Chunk, Scripts, move_chunk};
use link::Link;
pub use plan::{Counts, Moved, NodeKeys, Plan, Progress, Route, thousands};
use scan::{Scanned, each_page};
use sketches::{CHUNK_SKETCHES, SketchScripts, move_sketches};

/// The hash on each destination node that marks the counts a reshard has added there and
/// not yet removed from their source: field `{source host:port}\0{v|u}\0{key}` (`v` for a
/// visit counter, `u` for a request-statistics entry), value the count. Deleted on every
/// node when a reshard completes.
pub const MARKERS_KEY: &str = "tally:reshard:in";

/// Most keys moved in one chunk.
const CHUNK_KEYS: usize = 1000;

/// Most scans of a source node. Without writers the second scan finds nothing to move
/// (the first returned every key present throughout it, and only keys it returned were
/// removed); keys found by a later one were written meanwhile, and keep coming while
/// something writes.
const MAX_SCANS: u32 = 3;

/// Both layouts, in the order they are moved.
const LAYOUTS: [Layout; 2] = [Layout::Counters, Layout::SortedSet];

/// Reads what a reshard from the node list `from` to `to` moves, changing nothing on any
/// node (not even a marker).
///
/// The new ring is built from `to` (its nodes and `vnodes`); each config's credentials,
/// database and timeouts reach its own nodes (the new list's for a node in both).
///
/// # Errors
///
/// [`Error::is_config`] errors for a list that makes no ring or two names reaching one
/// database; [`Error::CorruptValue`] for a key holding something that is not a count; a
/// node error for a node that is down or fails.
pub async fn plan(from: &RedisConfig, to: &RedisConfig) -> Result<Plan> {
    let nodes = Nodes::connect(from, to).await?;
    let surveys = try_join_all((0..nodes.nodes.len()).map(|s| nodes.survey(s))).await?;
    let mut node_keys = Vec::with_capacity(surveys.len());
    let mut routes = Vec::new();
    for (s, ((counters, urls), moves)) in surveys.into_iter().enumerate() {
        node_keys.push(NodeKeys {
            name: nodes.nodes[s].name().to_owned(),
            in_from: nodes.in_from[s],
            in_to: nodes.in_to[s],
            counters,
            urls,
        });
        routes.extend(nodes.routes_from(s, moves));
    }
    Ok(Plan {
        from: from.clone(),
        to: to.clone(),
        nodes: node_keys,
        routes,
    })
}

/// Carries out `plan`: moves every key found on a node that does not own it in the new
/// ring to its owner, exactly (see the module docs), calling `progress` after each chunk
/// and when a source node is done.
///
/// Moves what the nodes hold when it runs, not only what `plan` listed: the plan gives
/// the nodes, the rings and the totals that `progress` reports against. Calls
/// [`crate::guard::begin_reshard`] before moving anything and
/// [`crate::guard::finish_reshard`] once everything moved. A run that fails, or is killed,
/// is resumed by running the same reshard again.
///
/// # Errors
///
/// As [`plan`]; the guard's refusals ([`Error::ServerRunning`],
/// [`Error::ReshardInProgress`], [`Error::RingMismatch`]); [`Error::WrittenDuringReshard`]
/// when a key changed while it moved, [`Error::ReshardUnsettled`] when keys to move keep
/// appearing (both: something still writes).
pub async fn apply<F>(plan: &Plan, progress: F) -> Result<Moved>
where
    F: FnMut(&Progress<'_>) + Send,
{
    let nodes = Nodes::connect(&plan.from, &plan.to).await?;
    crate::guard::begin_reshard(&plan.from, &plan.to).await?;
    let reporter = Reporter::new(plan, &nodes, progress);
    let drained = try_join_all((0..nodes.nodes.len()).map(|s| nodes.drain(s, &reporter))).await?;
    let sketches = try_join_all((0..nodes.nodes.len()).map(|s| nodes.drain_sketches(s))).await?;
    // Every source has nothing left to move, so no marker is wanted any more.
    try_join_all(nodes.nodes.iter().map(|node| async move {
        let mut del = redis::cmd("DEL");
        del.arg(MARKERS_KEY);
        node.run::<u64>("reshard clear", &del).await
    }))
    .await?;
    crate::guard::finish_reshard(&plan.from, &plan.to).await?;
    let mut moved = Moved {
        sketches: sketches.iter().sum(),
        ..Moved::default()
    };
    for (s, (moves, resumed)) in drained.into_iter().enumerate() {
        moved.routes.extend(nodes.routes_from(s, moves));
        moved.resumed += resumed;
    }
    tracing::info!(
        from = %plan.from,
        to = %plan.to,
        keys = moved.total().keys(),
        resumed = moved.resumed,
        sketches = moved.sketches,
        "reshard complete"
    );
    Ok(moved)
}

/// The ring `config` makes, exactly as [`crate::RedisStore::connect`] builds it.
fn ring_of(config: &RedisConfig) -> Result<Ring<String>> {
    Ok(Ring::builder()
        .vnodes(config.vnodes)
        .nodes(config.nodes.iter().map(|n| (n.name().to_owned(), 1)))
        .build()?)
}

/// The nodes of both lists and the new ring.
struct Nodes {
    /// Each node once: the current list's, then the new ones.
    nodes: Vec<Node>,
    in_from: Vec<bool>,
    in_to: Vec<bool>,
    /// The new ring.
    ring: Ring<String>,
    /// Position on `ring` → index in `nodes`.
    owners: Vec<usize>,
    scripts: Scripts,
    sketch_scripts: SketchScripts,
}

/// Per destination (index in [`Nodes::nodes`]): what moves or moved there from one source.
type Moves = Vec<Counts>;

impl Nodes {
    /// Pools for every node of both lists (the new list's config for a node in both), and
    /// a check that they answer and that no two of them are one database.
    async fn connect(from: &RedisConfig, to: &RedisConfig) -> Result<Self> {
        from.validate()?;
        to.validate()?;
        // The current list must make a ring as a server would, though only the new one
        // places keys.
        ring_of(from)?;
        let ring = ring_of(to)?;
        let mut urls: Vec<(&NodeUrl, &RedisConfig, bool, bool)> = Vec::new();
        for url in &from.nodes {
            urls.push((url, from, true, false));
        }
        for url in &to.nodes {
            match urls.iter_mut().find(|(u, ..)| u.name() == url.name()) {
                Some(entry) => *entry = (url, to, true, true),
                None => urls.push((url, to, false, true)),
            }
        }
        let nodes = urls
            .iter()
            .map(|(url, config, ..)| Node::new(url, config))
            .collect::<Result<Vec<_>>>()?;
        let owners = ring
            .nodes()
            .iter()
            .map(|name| {
                nodes
                    .iter()
                    .position(|node| node.name() == name)
                    .expect("every node of the new ring is among the nodes")
            })
            .collect();
        let nodes = Self {
            in_from: urls.iter().map(|(_, _, f, _)| *f).collect(),
            in_to: urls.iter().map(|(_, _, _, t)| *t).collect(),
            nodes,
            ring,
            owners,
            scripts: Scripts::new(to.subkey_ttl),
            sketch_scripts: SketchScripts::new(),
        };
        nodes.check_identities().await?;
        Ok(nodes)
    }

    /// Index in `nodes` of `key`'s owner in the new ring: the owner of its routing key (a
    /// page's day counts go where the page goes; see [`tally_counter::routing_key`]).
    fn owner(&self, key: &[u8]) -> usize {
        self.owners[self
            .ring
            .lookup_index(tally_counter::routing_key_bytes(key))]
    }

    /// Asks every node for its id ([`NODE_ID_KEY`], read only): two names holding one id
    /// are one database. A node that never met a server has no id and is not compared.
    async fn check_identities(&self) -> Result<()> {
        let ids = try_join_all(self.nodes.iter().map(|node| async move {
            let mut get = redis::cmd("GET");
            get.arg(NODE_ID_KEY);
            node.run::<Option<String>>("reshard identify", &get).await
        }))
        .await?;
        for (i, id) in ids.iter().enumerate() {
            let Some(id) = id else { continue };
            if let Some(first) = ids[..i].iter().position(|other| other.as_ref() == Some(id)) {
                return Err(Error::ReshardAlias {
                    first: self.nodes[first].name().to_owned(),
                    second: self.nodes[i].name().to_owned(),
                    node_id: id.clone(),
                });
            }
        }
        Ok(())
    }

    /// How many counters and URLs node `s` holds, and what of them moves where: one full
    /// scan, reading the counts of the keys that move (the others' counts are no part of
    /// the plan). Nothing is written.
    async fn survey(&self, s: usize) -> Result<((u64, u64), Moves)> {
        let source = &self.nodes[s];
        let mut holds = Counts::default();
        let mut moves = vec![Counts::default(); self.nodes.len()];
        for layout in LAYOUTS {
            // A scan can return a key twice: the keys that move are counted once (the
            // others only in `holds`, which is for information).
            let mut seen = HashSet::new();
            let mut reads = Link::open(source).await?;
            each_page(source, layout, async |keys| {
                let mut moving = Vec::new();
                for key in keys {
                    if self.owner(&key) == s {
                        holds.add(layout, 0);
                    } else if seen.insert(key.clone()) {
                        moving.push(key);
                    }
                }
                for entry in chunk::read(&mut reads, layout, &moving).await? {
                    holds.add(layout, entry.count);
                    moves[self.owner(&entry.key)].add(layout, entry.count);
                }
                Ok(())
            })
            .await?;
        }
        Ok(((holds.counters, holds.urls), moves))
    }

    /// Moves every key node `s` holds and does not own to its owner, pass after pass until
    /// a pass finds none: what moved where, and how many keys an earlier run had added.
    async fn drain<F>(&self, s: usize, reporter: &Reporter<'_, F>) -> Result<(Moves, u64)>
    where
        F: FnMut(&Progress<'_>) + Send,
    {
        let source = &self.nodes[s];
        let mut from = Link::open(source).await?;
        let mut to: Vec<Option<Link<'_>>> = self.nodes.iter().map(|_| None).collect();
        let mut moves = vec![Counts::default(); self.nodes.len()];
        let mut resumed = 0;
        let mut moved = |dest: usize, chunk: Chunk| {
            moves[dest].merge(&chunk.counts);
            resumed += chunk.resumed;
            reporter.report(s, chunk.counts.keys(), false);
        };
        for scans in 1.. {
            let mut found = 0;
            for layout in LAYOUTS {
                let mut pending: Vec<Vec<Vec<u8>>> = vec![Vec::new(); self.nodes.len()];
                each_page(source, layout, async |keys| {
                    for key in keys {
                        let dest = self.owner(&key);
                        if dest == s {
                            continue;
                        }
                        found += 1;
                        pending[dest].push(key);
                        if pending[dest].len() >= CHUNK_KEYS {
                            let keys = std::mem::take(&mut pending[dest]);
                            let chunk =
                                self.move_to(&mut from, &mut to, dest, layout, keys).await?;
                            moved(dest, chunk);
                        }
                    }
                    Ok(())
                })
                .await?;
                for (dest, keys) in pending.into_iter().enumerate() {
                    if !keys.is_empty() {
                        let chunk = self.move_to(&mut from, &mut to, dest, layout, keys).await?;
                        moved(dest, chunk);
                    }
                }
            }
            if found == 0 {
                break;
            }
            if scans == MAX_SCANS {
                return Err(Error::ReshardUnsettled {
                    node: source.name().to_owned(),
                    scans,
                    found,
                });
            }
        }
        reporter.report(s, 0, true);
        Ok((moves, resumed))
    }

    /// Merges every visitor sketch node `s` holds and does not own into its owner's (see
    /// `sketches`), pass after pass until a pass finds none: how many moved.
    async fn drain_sketches(&self, s: usize) -> Result<u64> {
        let source = &self.nodes[s];
        let mut from = Link::open(source).await?;
        let mut to: Vec<Option<Link<'_>>> = self.nodes.iter().map(|_| None).collect();
        let mut moved = 0;
        for scans in 1.. {
            let mut found = 0;
            let mut pending: Vec<Vec<Vec<u8>>> = vec![Vec::new(); self.nodes.len()];
            let mut send = async |dest: usize, keys: Vec<Vec<u8>>| -> Result<u64> {
                let target = match &mut to[dest] {
                    Some(link) => link,
                    empty => empty.insert(Link::open(&self.nodes[dest]).await?),
                };
                move_sketches(&self.sketch_scripts, &mut from, target, &keys).await
            };
            each_page(source, Scanned::Sketches, async |keys| {
                for key in keys {
                    let dest = self.owner(&key);
                    if dest == s {
                        continue;
                    }
                    found += 1;
                    pending[dest].push(key);
                    if pending[dest].len() >= CHUNK_SKETCHES {
                        moved += send(dest, std::mem::take(&mut pending[dest])).await?;
                    }
                }
                Ok(())
            })
            .await?;
            for (dest, keys) in pending.into_iter().enumerate() {
                if !keys.is_empty() {
                    moved += send(dest, keys).await?;
                }
            }
            if found == 0 {
                break;
            }
            if scans == MAX_SCANS {
                return Err(Error::ReshardUnsettled {
                    node: source.name().to_owned(),
                    scans,
                    found,
                });
            }
        }
        Ok(moved)
    }

    /// Moves `keys` of `layout` from the source `from` links to node `dest`, over its
    /// link in `to` (opened on first use).
    async fn move_to<'a>(
        &'a self,
        from: &mut Link<'a>,
        to: &mut [Option<Link<'a>>],
        dest: usize,
        layout: Layout,
        keys: Vec<Vec<u8>>,
    ) -> Result<Chunk> {
        let target = match &mut to[dest] {
            Some(link) => link,
            empty => empty.insert(Link::open(&self.nodes[dest]).await?),
        };
        let chunk = move_chunk(&self.scripts, from, target, layout, keys).await?;
        let (source, target) = (from.name(), target.name());
        tracing::debug!(
            source = %source,
            destination = %target,
            layout = %layout,
            keys = chunk.counts.keys(),
            resumed = chunk.resumed,
            "reshard chunk moved"
        );
        Ok(chunk)
    }

    /// `moves` of source `s` as routes, the empty ones left out.
    fn routes_from(&self, s: usize, moves: Moves) -> impl Iterator<Item = Route> + '_ {
        moves
            .into_iter()
            .enumerate()
            .filter(|(_, counts)| counts.keys() > 0)
            .map(move |(dest, counts)| Route {
                source: self.nodes[s].name().to_owned(),
                destination: self.nodes[dest].name().to_owned(),
                counts,
            })
    }
}

/// Hands [`Progress`] to the caller's callback from every source's task.
struct Reporter<'a, F> {
    /// Parallel to [`Nodes::nodes`].
    names: Vec<&'a str>,
    planned: Vec<u64>,
    /// A `std::sync::Mutex`: held only to count and call the callback, never across an
    /// `.await`.
    state: Mutex<ReporterState<F>>,
}

struct ReporterState<F> {
    callback: F,
    moved: Vec<u64>,
}

impl<'a, F: FnMut(&Progress<'_>)> Reporter<'a, F> {
    fn new(plan: &Plan, nodes: &'a Nodes, callback: F) -> Self {
        let names: Vec<&str> = nodes.nodes.iter().map(Node::name).collect();
        Self {
            planned: names.iter().map(|name| plan.keys_from(name)).collect(),
            state: Mutex::new(ReporterState {
                callback,
                moved: vec![0; names.len()],
            }),
            names,
        }
    }

    /// `keys` more moved from source `s`, which is `done` or not.
    fn report(&self, s: usize, keys: u64, done: bool) {
        let mut state = lock(&self.state);
        state.moved[s] += keys;
        let progress = Progress {
            node: self.names[s],
            node_moved: state.moved[s],
            node_planned: self.planned[s],
            node_done: done,
            moved: state.moved.iter().sum(),
            planned: self.planned.iter().sum(),
        };
        (state.callback)(&progress);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use tally_testkit::RedisNode;

    use super::*;

    /// Two nodes, every key moving from the first to the second: `from` lists the first,
    /// `to` the second.
    struct Pair {
        nodes: [RedisNode; 2],
        from: RedisConfig,
        to: RedisConfig,
    }

    impl Pair {
        fn start() -> Self {
            let nodes = [
                RedisNode::start().expect("redis-server"),
                RedisNode::start().expect("redis-server"),
            ];
            let from = RedisConfig::from_urls(&nodes[0].url()).expect("a URL");
            let to = RedisConfig::from_urls(&nodes[1].url()).expect("a URL");
            Self { nodes, from, to }
        }

        /// `count` counters `page-{i}` = i + 1 and as many URLs `/u/{i}/` = 2i + 1, on the
        /// source.
        fn seed(&self, count: usize) {
            let mut pipe = redis::pipe();
            for i in 0..count {
                pipe.cmd("SET")
                    .arg(format!("tally:v:page-{i}"))
                    .arg(i + 1)
                    .ignore();
                pipe.cmd("ZADD")
                    .arg("tally:urls")
                    .arg(2 * i + 1)
                    .arg(format!("/u/{i}/"))
                    .ignore();
            }
            let mut conn = self.nodes[0].client().unwrap().get_connection().unwrap();
            pipe.query::<()>(&mut conn).unwrap();
        }

        /// Every count on both nodes, by key, summed over the nodes, less the counts the
        /// markers say were added but are still on the source: what the counts are once
        /// the reshard completes.
        fn effective(&self) -> BTreeMap<String, u64> {
            let mut all = BTreeMap::new();
            for node in &self.nodes {
                for key in node.keys("tally:v:*").unwrap() {
                    let value = node.get_u64(&key).unwrap().unwrap();
                    *all.entry(key).or_insert(0) += value;
                }
                let members: Vec<(String, u64)> = node.zrange_counts("tally:urls").unwrap();
                for (member, score) in members {
                    *all.entry(format!("url {member}")).or_insert(0) += score;
                }
            }
            let markers: BTreeMap<Vec<u8>, u64> = self.nodes[1]
                .query(redis::cmd("HGETALL").arg(MARKERS_KEY))
                .unwrap();
            for (field, count) in markers {
                let parts: Vec<&[u8]> = field.splitn(3, |b| *b == 0).collect();
                let key = String::from_utf8(parts[2].to_vec()).unwrap();
                let on_source = if parts[1] == b"v" {
                    self.nodes[0]
                        .get(&format!("tally:v:{key}"))
                        .unwrap()
                        .is_some()
                } else {
                    self.nodes[0].zscore("tally:urls", &key).unwrap().is_some()
                };
                if on_source {
                    let name = if parts[1] == b"v" {
                        format!("tally:v:{key}")
                    } else {
                        format!("url {key}")
                    };
                    *all.get_mut(&name).unwrap() -= count;
                }
            }
            all
        }

        fn expected(count: usize) -> BTreeMap<String, u64> {
            (0..count)
                .flat_map(|i| {
                    [
                        (format!("tally:v:page-{i}"), i as u64 + 1),
                        (format!("url /u/{i}/"), 2 * i as u64 + 1),
                    ]
                })
                .collect()
        }

        /// Asserts that everything is on the destination, exact, and no marker is left.
        fn assert_all_moved(&self, count: usize) {
            assert_eq!(self.nodes[0].keys("tally:*").unwrap(), Vec::<String>::new());
            assert_eq!(self.effective(), Self::expected(count));
            assert_eq!(
                self.nodes[1].keys(MARKERS_KEY).unwrap(),
                Vec::<String>::new()
            );
        }
    }

    /// Where a simulated crash stops a chunk: after how many of its four steps.
    const STEPS: [&str; 4] = ["read", "receive", "release", "forget"];

    /// Drives the steps of one chunk of each layout by hand, stopping after `steps` of
    /// them, as a kill would.
    async fn interrupted_chunk(pair: &Pair, steps: usize) {
        let nodes = Nodes::connect(&pair.from, &pair.to).await.unwrap();
        let source_node = &nodes.nodes[0];
        let mut source = Link::open(source_node).await.unwrap();
        let mut dest = Link::open(&nodes.nodes[1]).await.unwrap();
        let (source, dest) = (&mut source, &mut dest);
        for layout in LAYOUTS {
            let mut keys = Vec::new();
            each_page(source_node, layout, async |page| {
                keys.extend(page);
                Ok(())
            })
            .await
            .unwrap();
            keys.truncate(CHUNK_KEYS / 2);
            let entries = chunk::read(source, layout, &keys).await.unwrap();
            assert_eq!(entries.len(), keys.len());
            if steps >= 2 {
                let added = chunk::receive(&nodes.scripts, dest, source.name(), layout, &entries)
                    .await
                    .unwrap();
                assert_eq!(added, entries.len() as u64);
            }
            if steps >= 3 {
                let changed = chunk::release(&nodes.scripts, source, layout, &entries)
                    .await
                    .unwrap();
                assert!(changed.is_empty(), "{changed:?}");
            }
            if steps >= 4 {
                chunk::forget(dest, source.name(), layout, &entries)
                    .await
                    .unwrap();
            }
        }
    }

    #[tokio::test]
    async fn a_run_killed_after_any_step_of_a_chunk_is_finished_exactly_by_the_next() {
        for steps in 1..=STEPS.len() {
            let pair = Pair::start();
            pair.seed(1_200);
            interrupted_chunk(&pair, steps).await;
            // The state a kill leaves: counts may be on both nodes, never lost or doubled
            // once the markers are taken into account.
            assert_eq!(
                pair.effective(),
                Pair::expected(1_200),
                "after {}",
                STEPS[steps - 1]
            );

            let plan = plan(&pair.from, &pair.to).await.unwrap();
            let moved = apply(&plan, |_| {}).await.unwrap();

            pair.assert_all_moved(1_200);
            let (expected_resumed, expected_left) = match steps {
                // Added and not removed: read again, not added again.
                2 => (1_000, 2_400),
                // Removed: gone from the source.
                3 | 4 => (0, 1_400),
                _ => (0, 2_400),
            };
            assert_eq!(
                moved.resumed(),
                expected_resumed,
                "after {}",
                STEPS[steps - 1]
            );
            assert_eq!(
                moved.total().keys(),
                expected_left,
                "after {}",
                STEPS[steps - 1]
            );
            assert_eq!(plan.total().keys(), expected_left);
        }
    }

    #[tokio::test]
    async fn a_key_counted_during_its_move_keeps_every_count_and_is_reported() {
        let pair = Pair::start();
        pair.seed(10);
        let nodes = Nodes::connect(&pair.from, &pair.to).await.unwrap();
        let mut source = Link::open(&nodes.nodes[0]).await.unwrap();
        let mut dest = Link::open(&nodes.nodes[1]).await.unwrap();
        let (source, dest) = (&mut source, &mut dest);
        let keys: Vec<Vec<u8>> = (0..10).map(|i| format!("page-{i}").into_bytes()).collect();
        let entries = chunk::read(source, Layout::Counters, &keys).await.unwrap();
        chunk::receive(
            &nodes.scripts,
            dest,
            source.name(),
            Layout::Counters,
            &entries,
        )
        .await
        .unwrap();
        // A server still running adds 5 visits to page-3 (count 4) between the steps.
        pair.nodes[0]
            .query::<u64>(redis::cmd("INCRBY").arg("tally:v:page-3").arg(5))
            .unwrap();
        let changed = chunk::release(&nodes.scripts, source, Layout::Counters, &entries)
            .await
            .unwrap();
        chunk::forget(dest, source.name(), Layout::Counters, &entries)
            .await
            .unwrap();
        assert_eq!(changed, vec![(3, "9".to_owned())]);
        assert_eq!(pair.nodes[0].get_u64("tally:v:page-3").unwrap(), Some(5));

        let plan = plan(&pair.from, &pair.to).await.unwrap();
        apply(&plan, |_| {}).await.unwrap();

        let mut expected = Pair::expected(10);
        *expected.get_mut("tally:v:page-3").unwrap() += 5;
        assert_eq!(pair.effective(), expected);
        assert_eq!(pair.nodes[0].keys("tally:*").unwrap(), Vec::<String>::new());
    }
}
