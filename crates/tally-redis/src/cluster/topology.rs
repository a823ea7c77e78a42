//! The cluster's nodes and slots as one node lists them (`CLUSTER NODES`), and the status
//! report built from them.

use std::time::SystemTime;

use super::buckets::CLUSTER_SLOTS;

/// One node as `CLUSTER NODES` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Listed {
    /// The node's id in the cluster.
    pub(crate) id: String,
    /// `host:port` clients connect to (IPv6 hosts in brackets); empty for a node the
    /// cluster knows no address of.
    pub(crate) name: String,
    /// Whether it is a primary.
    pub(crate) primary: bool,
    /// Its primary's id, for a replica.
    pub(crate) primary_id: Option<String>,
    /// Flagged `fail` (or `fail?`) by the node asked.
    pub(crate) failed: bool,
    /// Its configuration epoch: of two primaries claiming a slot, the cluster gives it to
    /// the one with the higher epoch.
    pub(crate) epoch: u64,
    /// The slot ranges it serves (inclusive), for a primary.
    pub(crate) slots: Vec<(u16, u16)>,
}

/// The cluster as one node saw it: its nodes, and which primary serves each slot.
#[derive(Clone, Debug, Default)]
pub(crate) struct Topology {
    pub(crate) nodes: Vec<Listed>,
    /// Per slot, the index in `nodes` of the primary serving it.
    owners: Vec<Option<usize>>,
    /// The node whose answer this is (`host:port`); `None` before any answered.
    pub(crate) source: Option<String>,
}

impl Topology {
    /// Parses a `CLUSTER NODES` answer given by `source` (`host:port`). Lines look like
    /// `<id> <ip:port@cport[,hostname]> <flags> <primary id or -> <ping> <pong> <epoch>
    /// <link> <slot ranges...>`; slots being moved (`[slot->-id]`) are skipped, and a node
    /// listing itself without an address (before it learnt its own) gets `source`'s host.
    pub(crate) fn parse(text: &str, source: &str) -> Result<Self, String> {
        let source_host = source.rsplit_once(':').map_or("", |(host, _)| host);
        let mut nodes = Vec::new();
        for line in text.lines().filter(|line| !line.trim().is_empty()) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 {
                return Err(format!(
                    "a CLUSTER NODES line has {} fields: {line}",
                    fields.len()
                ));
            }
            let flags: Vec<&str> = fields[2].split(',').collect();
            let address = fields[1].split([',', '@']).next().unwrap_or_default();
            let (host, port) = address
                .rsplit_once(':')
                .ok_or_else(|| format!("no host:port in {line}"))?;
            let port: u16 = port.parse().map_err(|_| format!("bad port in {line}"))?;
            let host = if host.is_empty() && flags.contains(&"myself") {
                source_host.trim_start_matches('[').trim_end_matches(']')
            } else {
                host
            };
            let name = match (host.is_empty() || port == 0, host.contains(':')) {
                (true, _) => String::new(),
                (false, true) => format!("[{host}]:{port}"),
                (false, false) => format!("{host}:{port}"),
            };
            let mut slots = Vec::new();
            for range in fields[8..].iter().filter(|s| !s.starts_with('[')) {
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                let (Ok(a), Ok(b)) = (a.parse::<u16>(), b.parse::<u16>()) else {
                    return Err(format!("bad slot range {range} in {line}"));
                };
                if a > b || b >= CLUSTER_SLOTS {
                    return Err(format!("bad slot range {range} in {line}"));
                }
                slots.push((a, b));
            }
            nodes.push(Listed {
                id: fields[0].to_owned(),
                name,
                primary: flags.contains(&"master"),
                primary_id: (fields[3] != "-").then(|| fields[3].to_owned()),
                failed: flags.iter().any(|f| *f == "fail" || *f == "fail?"),
                epoch: fields[6].parse().unwrap_or(0),
                slots,
            });
        }
        if nodes.is_empty() {
            return Err("CLUSTER NODES listed no node".to_owned());
        }
        let mut owners = vec![None; usize::from(CLUSTER_SLOTS)];
        for (index, node) in nodes.iter().enumerate().filter(|(_, n)| n.primary) {
            for (a, b) in &node.slots {
                for slot in *a..=*b {
                    owners[usize::from(slot)] = Some(index);
                }
            }
        }
        Ok(Self {
            nodes,
            owners,
            source: Some(source.to_owned()),
        })
    }

    /// The primary serving `slot`, if any.
    pub(crate) fn primary_of(&self, slot: u16) -> Option<&Listed> {
        let index = (*self.owners.get(usize::from(slot))?)?;
        self.nodes.get(index)
    }

    /// The replicas of the primary with id `primary`.
    pub(crate) fn replicas_of<'a>(&'a self, primary: &'a str) -> impl Iterator<Item = &'a Listed> {
        self.nodes
            .iter()
            .filter(move |n| n.primary_id.as_deref() == Some(primary))
    }

    /// Whether some primary has a replica.
    pub(crate) fn has_replicas(&self) -> bool {
        self.nodes.iter().any(|n| n.primary_id.is_some())
    }

    /// The highest configuration epoch of a primary: of two answers, the one with the
    /// higher is the more recent (a node restarted with an old `nodes.conf` answers with
    /// an older one until the cluster updates it).
    pub(crate) fn epoch(&self) -> u64 {
        self.nodes
            .iter()
            .filter(|n| n.primary)
            .map(|n| n.epoch)
            .max()
            .unwrap_or(0)
    }

    /// Every address listed, primaries first.
    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        let primaries = self.nodes.iter().filter(|n| n.primary);
        let replicas = self.nodes.iter().filter(|n| !n.primary);
        primaries
            .chain(replicas)
            .map(|n| n.name.as_str())
            .filter(|name| !name.is_empty())
    }
}

/// A Redis Cluster as a [`crate::ClusterStore`] last saw it (see
/// [`crate::ClusterStore::status`]), for status pages.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClusterStatus {
    /// Every primary with its slots and replicas, by first slot (primaries without slots
    /// last).
    pub shards: Vec<ClusterShard>,
    /// Slots no reachable primary serves: their buckets' batches and reads wait.
    pub slots_without_primary: u32,
    /// Replicas each batch waits for (`REDIS_WAIT_REPLICAS`, or what it was resolved to);
    /// `None` until the store first read the cluster's nodes.
    pub wait_replicas: Option<usize>,
    /// The node whose `CLUSTER NODES` this is; `None` while no node answered.
    pub source: Option<String>,
}

impl ClusterStatus {
    /// `healthy` (every slot served by a reachable primary, every node up, every primary
    /// with its `REDIS_WAIT_REPLICAS` replicas up), `unhealthy` (no slot served, or the
    /// cluster's nodes unknown) or `degraded` (anything between).
    pub fn status(&self) -> &'static str {
        let every_slot = u32::from(CLUSTER_SLOTS);
        if self.source.is_none() || self.slots_without_primary >= every_slot {
            return "unhealthy";
        }
        let wait = self.wait_replicas.unwrap_or(0);
        let all_up = self.shards.iter().all(|shard| {
            shard.primary.up
                && shard.replicas.iter().all(|r| r.up)
                && shard.replicas.iter().filter(|r| r.up).count() >= wait
        });
        if self.slots_without_primary == 0 && all_up {
            "healthy"
        } else {
            "degraded"
        }
    }

    /// Every node, primaries and replicas.
    pub fn nodes(&self) -> impl Iterator<Item = &ClusterNodeStatus> {
        self.shards
            .iter()
            .flat_map(|shard| std::iter::once(&shard.primary).chain(&shard.replicas))
    }
}

/// A primary of a [`ClusterStatus`]: its slots and its replicas.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClusterShard {
    /// The primary.
    pub primary: ClusterNodeStatus,
    /// The slot ranges it serves, inclusive.
    pub slots: Vec<(u16, u16)>,
    /// Its replicas.
    pub replicas: Vec<ClusterNodeStatus>,
}

/// A node of a [`ClusterStatus`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClusterNodeStatus {
    /// `host:port`, no credentials (empty when the cluster knows no address of it).
    pub name: String,
    /// Its id in the cluster.
    pub id: String,
    /// Whether it answered the store's last ping.
    pub up: bool,
    /// Whether the cluster flags it failed (`fail` or `fail?`, as the node asked sees it).
    pub failed: bool,
    /// When `up` last changed (or when the store first saw it).
    pub since: SystemTime,
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODES: &str = "\
07c37dfe 127.0.0.1:30004@40004 slave e7d1eecc 0 1426238317239 4 connected
67ed2db8 127.0.0.1:30002@40002,redis2 master - 0 1426238316232 2 connected 5461-10922
292f8b36 127.0.0.1:30003@40003 master,fail - 0 1426238318243 3 disconnected 10923-16383 [77->-e7d1eecc]
e7d1eecc :30001@40001 myself,master - 0 0 1 connected 0-5460
6ec23923 :0@0 slave,noaddr 292f8b36 0 1426238316232 6 disconnected
";

    #[test]
    fn slots_map_to_their_primaries_and_replicas_to_theirs() {
        let topology = Topology::parse(NODES, "127.0.0.1:30001").unwrap();

        assert_eq!(topology.primary_of(0).unwrap().name, "127.0.0.1:30001");
        assert_eq!(topology.primary_of(5461).unwrap().id, "67ed2db8");
        let failed = topology.primary_of(16383).unwrap();
        assert!(failed.failed);
        let replicas: Vec<&str> = topology
            .replicas_of("e7d1eecc")
            .map(|r| r.name.as_str())
            .collect();
        assert_eq!(replicas, ["127.0.0.1:30004"]);
        assert!(topology.has_replicas());
        let names: Vec<&str> = topology.names().collect();
        assert_eq!(
            names,
            [
                "127.0.0.1:30002",
                "127.0.0.1:30003",
                "127.0.0.1:30001",
                "127.0.0.1:30004"
            ]
        );
    }

    #[test]
    fn an_unassigned_slot_has_no_primary() {
        let topology = Topology::parse(
            "e7d1eecc 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-99",
            "127.0.0.1:30001",
        )
        .unwrap();
        assert!(topology.primary_of(99).is_some());
        assert!(topology.primary_of(100).is_none());
        assert!(!topology.has_replicas());
    }

    #[test]
    fn garbage_is_refused() {
        assert!(Topology::parse("", "h:1").is_err());
        assert!(Topology::parse("a b c", "h:1").is_err());
        assert!(Topology::parse("a 1.2.3.4:5@6 master - 0 0 1 connected 9-3", "h:1").is_err());
    }

    #[test]
    fn ipv6_hosts_get_brackets() {
        let topology = Topology::parse(
            "a ::1:7000@17000 myself,master - 0 0 1 connected 0-16383",
            "x",
        )
        .unwrap();
        assert_eq!(topology.nodes[0].name, "[::1]:7000");
    }
}
