//! The ring guard: every node records the ring it belongs to, servers refuse a ring other
//! than the recorded one, and running servers hold a lease that a reshard respects.
//!
//! A key's node is chosen by the ring, so a server started with another node list (or
//! another `VIRTUAL_NODES`) than the one that wrote the counts reads other nodes for a
//! quarter or more of its keys: counts read as 0, and `/stats/` lists a URL once per node
//! that holds it. The guard turns that into a refusal to start:
//!
//! - [`RING_KEY`] on each node holds the [`RingRecord`] (sorted node names and points per
//!   node) of the ring that writes to it. A store writes it on first contact with a node
//!   that holds none (a new deployment, or one from before the guard).
//! - A store that finds another record refuses: [`crate::RedisStore::connect`] fails with
//!   [`Error::RingMismatch`] (nodes added or removed, or other points per node, and the
//!   command that moves the counts), and a node that answers only later is taken out of
//!   service with that error. Nodes that disagree among themselves are named.
//! - [`RESHARD_KEY`] marks a reshard in progress ([`begin_reshard`] to
//!   [`finish_reshard`]): stores refuse to start on such nodes, naming the command that
//!   resumes it ([`Error::ReshardInProgress`]).
//! - Each store holds a lease on every node it writes to: a member of the sorted set
//!   [`LEASES_KEY`] naming the process, scored with its expiry (the node's clock plus
//!   [`LEASE_TTL`]), refreshed every [`LEASE_REFRESH`] and removed by
//!   [`crate::RedisStore::release_lease`] (tally-server does at the end of its shutdown).
//!   [`begin_reshard`] refuses while any node holds a lease that has not expired
//!   ([`Error::ServerRunning`]); one read per node, however many keys it holds.
//!
//! Why a reshard and a starting server cannot miss each other: each first contact runs one
//! script per node that reads the reshard marker and only then writes its lease, and
//! [`begin_reshard`] writes its marker on a node before it looks for leases there. Redis
//! runs the two one after the other, so either the store sees the marker or the reshard
//! sees the lease. A running store that finds the marker when refreshing its lease (its
//! lease had expired while it was stalled) takes that node out of service, so it writes
//! nothing during the move.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use crate::config::{NodeUrl, RedisConfig};
use crate::error::{Error, Result};
use crate::node::Node;

/// The key holding a node's [`RingRecord`].
pub const RING_KEY: &str = "tally:ring";
/// The key marking a reshard in progress on a node (its source and target rings).
pub const RESHARD_KEY: &str = "tally:reshard";
/// The sorted set of leases on a node: member `<process> (lease <id>)`, score its expiry
/// in milliseconds of the node's clock.
pub const LEASES_KEY: &str = "tally:leases";
/// How long a lease lasts without a refresh: a server killed without SIGTERM stops
/// blocking a reshard after this long.
pub const LEASE_TTL: Duration = Duration::from_secs(20);
/// How often a store refreshes its leases.
pub const LEASE_REFRESH: Duration = Duration::from_secs(5);

/// The record format's version, first field of every record.
const FORMAT: &str = "tally-ring/1";

/// The identity of a ring: the node names (`host:port`, sorted) and the points per node.
/// Two configurations with the same record place every key on the same node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingRecord {
    nodes: Vec<String>,
    vnodes: u32,
}

impl RingRecord {
    /// The record of the ring `config` builds.
    pub fn of(config: &RedisConfig) -> Self {
        let mut nodes: Vec<String> = config.nodes.iter().map(|n| n.name().to_owned()).collect();
        nodes.sort();
        Self {
            nodes,
            vnodes: config.vnodes,
        }
    }

    /// The node names, sorted.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// Points per node (`VIRTUAL_NODES`).
    pub fn vnodes(&self) -> u32 {
        self.vnodes
    }

    /// The text stored under [`RING_KEY`]: `tally-ring/1 vnodes=160 nodes=a:1,b:2`.
    pub fn encode(&self) -> String {
        format!(
            "{FORMAT} vnodes={} nodes={}",
            self.vnodes,
            self.nodes.join(",")
        )
    }

    /// Parses [`RingRecord::encode`]'s text; `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        let mut fields = text.split(' ');
        if fields.next()? != FORMAT {
            return None;
        }
        let vnodes = fields.next()?.strip_prefix("vnodes=")?.parse().ok()?;
        let nodes = fields.next()?.strip_prefix("nodes=")?;
        if fields.next().is_some() || nodes.is_empty() {
            return None;
        }
        Some(Self {
            nodes: nodes.split(',').map(str::to_owned).collect(),
            vnodes,
        })
    }

    /// The nodes as a `REDIS_NODES` value without credentials: `redis://a:1,redis://b:2`.
    pub fn node_list(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("redis://{n}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// What differs from `recorded` to this ring, for a person: `adds a:1; removes b:2;
    /// VIRTUAL_NODES 160 instead of 100`.
    pub fn changes_from(&self, recorded: &RingRecord) -> String {
        let mine: BTreeSet<&String> = self.nodes.iter().collect();
        let theirs: BTreeSet<&String> = recorded.nodes.iter().collect();
        let join = |set: Vec<&&String>| {
            set.into_iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut changes = Vec::new();
        let added: Vec<_> = mine.difference(&theirs).collect();
        if !added.is_empty() {
            changes.push(format!("adds {}", join(added)));
        }
        let removed: Vec<_> = theirs.difference(&mine).collect();
        if !removed.is_empty() {
            changes.push(format!("removes {}", join(removed)));
        }
        if self.vnodes != recorded.vnodes {
            changes.push(format!(
                "sets VIRTUAL_NODES={} where the nodes were written with {}",
                self.vnodes, recorded.vnodes
            ));
        }
        changes.join("; ")
    }
}

impl fmt::Display for RingRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} with VIRTUAL_NODES={}",
            self.nodes.join(","),
            self.vnodes
        )
    }
}

/// The command that moves counts from ring `from` to ring `to`, for a message.
fn reshard_command(from: &RingRecord, to: &RingRecord) -> String {
    let vnodes = if from.vnodes == to.vnodes {
        String::new()
    } else {
        format!(" --virtual-nodes {}", to.vnodes)
    };
    format!(
        "stop every server, then run `REDIS_NODES={} VIRTUAL_NODES={} tally-server reshard --to {}{vnodes} --apply` (with the nodes' credentials in the URLs or REDIS_PASSWORD)",
        from.node_list(),
        from.vnodes,
        to.node_list()
    )
}

/// A reshard marker: the source and target records, one per line.
fn marker(from: &RingRecord, to: &RingRecord) -> String {
    format!("{}\n{}", from.encode(), to.encode())
}

/// Parses [`marker`]'s text.
fn parse_marker(text: &str) -> Option<(RingRecord, RingRecord)> {
    let (from, to) = text.split_once('\n')?;
    Some((RingRecord::parse(from)?, RingRecord::parse(to)?))
}

/// The message of a reshard in progress, from its marker's text.
fn reshard_in_progress(node: &str, text: &str) -> Error {
    let detail = match parse_marker(text) {
        Some((from, to)) => format!(
            "a reshard from {from} to {to} was started and has not finished; resume it: {}",
            reshard_command(&from, &to)
        ),
        None => format!("node {node} holds an unreadable {RESHARD_KEY}: {text:?}"),
    };
    Error::ReshardInProgress {
        node: node.to_owned(),
        detail,
    }
}

/// The first-contact script: refuses a node that is being resharded or records another
/// ring; otherwise takes the lease, and records the ring when the node has none and the
/// caller claims it.
///
/// KEYS: ring, reshard marker, leases. ARGV: record, lease member, lease ttl (ms), claim
/// (`1` or `0`). Reply: `{'agrees', ''}`, `{'absent', ''}` (no record, not claimed),
/// `{'resharding', marker}` or `{'other', record}`.
const CHECK_SCRIPT: &str = r"
local marker = redis.call('GET', KEYS[2])
if marker then return {'resharding', marker} end
local ring = redis.call('GET', KEYS[1])
if ring and ring ~= ARGV[1] then return {'other', ring} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[3]), ARGV[2])
if ring then return {'agrees', ''} end
if ARGV[4] ~= '1' then return {'absent', ''} end
redis.call('SET', KEYS[1], ARGV[1])
return {'agrees', ''}
";

/// The lease refresh: refreshes unless a reshard has begun on the node.
///
/// KEYS: reshard marker, leases. ARGV: lease member, lease ttl (ms). Reply: `''`, or the
/// marker.
const REFRESH_SCRIPT: &str = r"
local marker = redis.call('GET', KEYS[1])
if marker then redis.call('ZREM', KEYS[2], ARGV[1]); return marker end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[1])
return ''
";

/// The leases that have not expired on a node, oldest first (expired ones are removed).
///
/// KEYS: leases. Reply: the members.
const LEASES_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZRANGE', KEYS[1], 0, -1)
";

/// What a node's first contact found about its ring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    /// It records this store's ring (or recorded it now): usable.
    Agrees,
    /// It records no ring, and the check did not claim it.
    Absent,
    /// It records another ring (the encoded record).
    Other(String),
    /// A reshard is in progress on it (the marker's text).
    Resharding(String),
}

impl Seen {
    /// Reads [`CHECK_SCRIPT`]'s reply.
    pub(crate) fn from_reply(reply: &[String]) -> std::result::Result<Self, String> {
        match reply {
            [kind, _] if kind == "agrees" => Ok(Self::Agrees),
            [kind, _] if kind == "absent" => Ok(Self::Absent),
            [kind, marker] if kind == "resharding" => Ok(Self::Resharding(marker.clone())),
            [kind, record] if kind == "other" => Ok(Self::Other(record.clone())),
            other => Err(format!("unexpected ring check reply {other:?}")),
        }
    }
}

/// A store's side of the guard: its ring record, its lease and the two scripts.
pub(crate) struct RingCheck {
    /// The store's ring.
    pub(crate) record: RingRecord,
    encoded: String,
    lease: Lease,
    check: redis::Script,
    refresh: redis::Script,
}

impl fmt::Debug for RingCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RingCheck")
            .field("record", &self.encoded)
            .field("lease", &self.lease.member)
            .finish_non_exhaustive()
    }
}

impl RingCheck {
    /// The check of the ring `config` builds, with a fresh lease.
    pub(crate) fn new(config: &RedisConfig) -> Self {
        let record = RingRecord::of(config);
        Self {
            encoded: record.encode(),
            record,
            lease: Lease::new(),
            check: redis::Script::new(CHECK_SCRIPT),
            refresh: redis::Script::new(REFRESH_SCRIPT),
        }
    }

    /// The first-contact check; `claim` records the ring on a node that has none.
    pub(crate) fn check(&self, claim: bool) -> redis::ScriptInvocation<'_> {
        let mut invocation = self.check.key(RING_KEY);
        invocation
            .key(RESHARD_KEY)
            .key(LEASES_KEY)
            .arg(&self.encoded)
            .arg(&self.lease.member)
            .arg(LEASE_TTL.as_millis() as u64)
            .arg(if claim { "1" } else { "0" });
        invocation
    }

    /// The lease refresh; answers `''`, or the marker of a reshard that has begun.
    pub(crate) fn refresh(&self) -> redis::ScriptInvocation<'_> {
        let mut invocation = self.refresh.key(RESHARD_KEY);
        invocation
            .key(LEASES_KEY)
            .arg(&self.lease.member)
            .arg(LEASE_TTL.as_millis() as u64);
        invocation
    }

    /// The lease's release.
    pub(crate) fn release(&self) -> redis::Cmd {
        let mut zrem = redis::cmd("ZREM");
        zrem.arg(LEASES_KEY).arg(&self.lease.member);
        zrem
    }

    /// The error that takes a node out of service for what it `seen`, if any.
    pub(crate) fn refusal_of(&self, node: &str, seen: &Seen) -> Option<Error> {
        refusal(&self.record, &[(node, seen)])
    }
}

/// A store's lease on the nodes: its member of [`LEASES_KEY`].
#[derive(Clone, Debug)]
struct Lease {
    member: String,
}

impl Lease {
    /// A fresh lease naming this process.
    fn new() -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "an unknown host".to_owned());
        Self {
            member: format!(
                "tally process {} on {host} (lease {:016x})",
                std::process::id(),
                rand::random::<u64>()
            ),
        }
    }
}

/// The error for what the nodes that answered found, when one is not usable: a reshard in
/// progress first, then records that disagree among themselves, then a changed ring.
/// `None` when all agree with `configured` or record nothing.
pub(crate) fn refusal(configured: &RingRecord, seen: &[(&str, &Seen)]) -> Option<Error> {
    if let Some((node, Seen::Resharding(text))) = seen
        .iter()
        .find(|(_, seen)| matches!(seen, Seen::Resharding(_)))
    {
        return Some(reshard_in_progress(node, text));
    }
    // Record text -> the nodes holding it; this store's own record among them.
    let mut records: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for (node, seen) in seen {
        let record = match seen {
            Seen::Agrees => configured.encode(),
            Seen::Other(record) => record.clone(),
            Seen::Absent | Seen::Resharding(_) => continue,
        };
        records.entry(record).or_default().push(node);
    }
    let others: Vec<(&String, &Vec<&str>)> = records
        .iter()
        .filter(|(record, _)| **record != configured.encode())
        .collect();
    match others.as_slice() {
        [] => None,
        [(record, nodes)] if records.len() == 1 => Some(changed(configured, record, nodes)),
        _ => {
            let described: Vec<String> = records
                .iter()
                .map(|(record, nodes)| {
                    let shown = RingRecord::parse(record)
                        .map_or_else(|| format!("{record:?}"), |r| r.to_string());
                    format!("{} record {shown}", nodes.join(", "))
                })
                .collect();
            let mut detail = format!(
                "the Redis nodes disagree about their ring: {}",
                described.join("; ")
            );
            let parsed: Vec<RingRecord> = records
                .keys()
                .filter_map(|record| RingRecord::parse(record))
                .collect();
            if let [a, b] = parsed.as_slice() {
                detail.push_str(&format!(
                    "; if a reshard between these rings was interrupted, finish it: {}; or, if it went the other way, {}",
                    reshard_command(a, b),
                    reshard_command(b, a)
                ));
            }
            Some(Error::RingMismatch { detail })
        }
    }
}

/// The error for nodes that all record `record` where this store has `configured`.
fn changed(configured: &RingRecord, record: &str, nodes: &[&str]) -> Error {
    let detail = match RingRecord::parse(record) {
        Some(recorded) => format!(
            "this ring {} compared with the ring the Redis nodes {} record ({recorded}), so counts are not where it would look for them; to change the node set, {}; to keep it, start with REDIS_NODES={} VIRTUAL_NODES={}",
            configured.changes_from(&recorded),
            nodes.join(", "),
            reshard_command(&recorded, configured),
            recorded.node_list(),
            recorded.vnodes
        ),
        None => format!(
            "the Redis nodes {} hold an unreadable {RING_KEY} ({record:?}); it is not a tally ring record",
            nodes.join(", ")
        ),
    };
    Error::RingMismatch { detail }
}

/// The nodes of both rings, each once, with the config that reaches it (the target's for a
/// node in both).
fn union_nodes(from: &RedisConfig, to: &RedisConfig) -> Result<Vec<(Node, bool, bool)>> {
    let mut seen: BTreeMap<String, (NodeUrl, &RedisConfig, bool, bool)> = BTreeMap::new();
    for url in &from.nodes {
        seen.insert(url.name().to_owned(), (url.clone(), from, true, false));
    }
    for url in &to.nodes {
        let in_from = seen.get(url.name()).is_some_and(|(_, _, f, _)| *f);
        seen.insert(url.name().to_owned(), (url.clone(), to, in_from, true));
    }
    seen.into_values()
        .map(|(url, config, in_from, in_to)| Ok((Node::new(&url, config)?, in_from, in_to)))
        .collect()
}

/// The reshard-start script on one node: refuses another reshard in progress or a record
/// of a third ring, else writes the marker.
///
/// KEYS: marker, ring. ARGV: marker, from record, to record. Reply: `{'begun'|'resumed',
/// ''}`, `{'other', marker}` or `{'ring', record}`.
const BEGIN_SCRIPT: &str = r"
local marker = redis.call('GET', KEYS[1])
if marker and marker ~= ARGV[1] then return {'other', marker} end
local ring = redis.call('GET', KEYS[2])
if ring and ring ~= ARGV[2] and ring ~= ARGV[3] then return {'ring', ring} end
redis.call('SET', KEYS[1], ARGV[1])
if marker then return {'resumed', ''} end
return {'begun', ''}
";

/// Starts (or resumes) a reshard from `from` to `to`: marks every node of both rings, then
/// checks that no store holds a lease on any of them.
///
/// Call before moving anything; the marker stops servers from starting on these nodes
/// until [`finish_reshard`].
///
/// # Errors
///
/// - [`Error::ReshardInProgress`]: another reshard (other rings) is in progress;
/// - [`Error::RingMismatch`]: a node records a ring that is neither `from` nor `to`
///   (e.g. `REDIS_NODES` is not the list the counts were written with);
/// - [`Error::ServerRunning`]: a server holds a lease (markers this call wrote are removed
///   again, so the server keeps working);
/// - a node error (down, refused): nothing moved, a new run starts again.
pub async fn begin_reshard(from: &RedisConfig, to: &RedisConfig) -> Result<()> {
    let (from_record, to_record) = (RingRecord::of(from), RingRecord::of(to));
    let text = marker(&from_record, &to_record);
    let nodes = union_nodes(from, to)?;
    let script = redis::Script::new(BEGIN_SCRIPT);
    let mut begun = Vec::new();
    let mut refusal = None;
    for (node, _, _) in &nodes {
        let mut invocation = script.key(RESHARD_KEY);
        invocation
            .key(RING_KEY)
            .arg(&text)
            .arg(from_record.encode())
            .arg(to_record.encode());
        let reply: Vec<String> = node.run("reshard-begin", &invocation).await?;
        match reply.as_slice() {
            [kind, _] if kind == "begun" => begun.push(node),
            [kind, _] if kind == "resumed" => {}
            [kind, other] if kind == "other" => {
                refusal = Some(reshard_in_progress(node.name(), other));
                break;
            }
            [kind, record] if kind == "ring" => {
                refusal = Some(changed(&from_record, record, &[node.name()]));
                break;
            }
            other => {
                return Err(Error::Protocol {
                    node: node.name().to_owned(),
                    op: "reshard-begin",
                    detail: format!("unexpected reply {other:?}"),
                });
            }
        }
    }
    if refusal.is_none() {
        let leases = redis::Script::new(LEASES_SCRIPT);
        for (node, _, _) in &nodes {
            let held: Vec<String> = node.run("reshard-begin", &leases.key(LEASES_KEY)).await?;
            if let Some(holder) = held.into_iter().next() {
                refusal = Some(Error::ServerRunning {
                    node: node.name().to_owned(),
                    holder,
                });
                break;
            }
        }
    }
    match refusal {
        None => Ok(()),
        Some(refusal) => {
            // Only the markers of a reshard that had not started: a resumed one stays
            // marked, its counts are half moved.
            if begun.len() == nodes.len() {
                for node in begun {
                    let mut del = redis::cmd("DEL");
                    del.arg(RESHARD_KEY);
                    node.run::<u64>("reshard-begin", &del).await?;
                }
            }
            Err(refusal)
        }
    }
}

/// Ends a reshard from `from` to `to` once every count has moved: records `to` on its
/// nodes, removes the record from the nodes that left, then removes the markers.
///
/// # Errors
///
/// A node error; the reshard stays marked, and running it again finishes it.
pub async fn finish_reshard(from: &RedisConfig, to: &RedisConfig) -> Result<()> {
    let to_record = RingRecord::of(to);
    let text = marker(&RingRecord::of(from), &to_record);
    let nodes = union_nodes(from, to)?;
    for (node, _, in_to) in &nodes {
        let cmd = if *in_to {
            let mut set = redis::cmd("SET");
            set.arg(RING_KEY).arg(to_record.encode());
            set
        } else {
            let mut del = redis::cmd("DEL");
            del.arg(RING_KEY);
            del
        };
        node.run::<redis::Value>("reshard-finish", &cmd).await?;
    }
    let script = redis::Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
    );
    for (node, _, _) in &nodes {
        let mut invocation = script.key(RESHARD_KEY);
        invocation.arg(&text);
        node.run::<u64>("reshard-finish", &invocation).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(nodes: &[&str], vnodes: u32) -> RingRecord {
        let mut config = RedisConfig::from_urls(
            &nodes
                .iter()
                .map(|n| format!("redis://:secret@{n}"))
                .collect::<Vec<_>>()
                .join(","),
        )
        .unwrap();
        config.vnodes = vnodes;
        RingRecord::of(&config)
    }

    #[test]
    fn a_record_is_the_sorted_names_and_points_and_reads_back() {
        let a = record(&["b:2", "a:1"], 160);
        assert_eq!(a.encode(), "tally-ring/1 vnodes=160 nodes=a:1,b:2");
        assert_eq!(RingRecord::parse(&a.encode()), Some(a.clone()));
        assert_eq!(a, record(&["a:1", "b:2"], 160));
        assert_ne!(a, record(&["a:1", "b:2"], 100));
        assert_eq!(RingRecord::parse("tally-ring/2 vnodes=1 nodes=a:1"), None);
        assert_eq!(RingRecord::parse("something else"), None);
        assert!(!a.node_list().contains("secret"));
    }

    #[test]
    fn the_change_names_added_and_removed_nodes_and_points() {
        let recorded = record(&["a:1", "b:2", "c:3"], 160);
        assert_eq!(
            record(&["a:1", "b:2", "c:3", "d:4"], 160).changes_from(&recorded),
            "adds d:4"
        );
        assert_eq!(
            record(&["a:1", "c:3"], 100).changes_from(&recorded),
            "removes b:2; sets VIRTUAL_NODES=100 where the nodes were written with 160"
        );
    }

    #[test]
    fn refusals_name_the_reshard_the_disagreement_or_the_change() {
        let mine = record(&["a:1", "b:2", "d:4"], 160);
        let old = record(&["a:1", "b:2"], 160);
        let other = Seen::Other(old.encode());
        assert!(refusal(&mine, &[("a:1", &Seen::Agrees), ("d:4", &Seen::Agrees)]).is_none());

        let all_old = refusal(&mine, &[("a:1", &other), ("b:2", &other)]).unwrap();
        let text = all_old.to_string();
        assert!(text.contains("adds d:4"), "{text}");
        assert!(
            text.contains("reshard --to redis://a:1,redis://b:2,redis://d:4"),
            "{text}"
        );
        assert!(all_old.is_config());

        let split = refusal(&mine, &[("a:1", &other), ("d:4", &Seen::Agrees)]).unwrap();
        let text = split.to_string();
        assert!(text.contains("disagree"), "{text}");
        assert!(text.contains("a:1 record a:1,b:2"), "{text}");

        let resharding = Seen::Resharding(marker(&old, &mine));
        let text = refusal(&mine, &[("a:1", &other), ("b:2", &resharding)])
            .unwrap()
            .to_string();
        assert!(text.contains("has not finished; resume it"), "{text}");
    }
}
