//! What a reshard moves: the [`Plan`] read before anything moves, the [`Moved`] tally of a
//! run, the [`Progress`] reported in between, and the tables an operator reads.

use std::fmt;

use crate::config::RedisConfig;
use crate::layout::Layout;

/// Keys and the sum of their counts, per layout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Visit counters (`tally:v:*` keys).
    pub counters: u64,
    /// The sum of those counters: visits.
    pub visits: u64,
    /// Request-statistics entries (members of `tally:urls`).
    pub urls: u64,
    /// The sum of those entries' counts: requests.
    pub requests: u64,
}

impl Counts {
    /// Keys of both layouts.
    pub fn keys(&self) -> u64 {
        self.counters + self.urls
    }

    /// Counts one key of `layout` holding `count`.
    pub(super) fn add(&mut self, layout: Layout, count: u64) {
        match layout {
            Layout::SortedSet => {
                self.urls += 1;
                self.requests += count;
            }
            _ => {
                self.counters += 1;
                self.visits += count;
            }
        }
    }

    /// Adds `other` to these.
    pub(super) fn merge(&mut self, other: &Counts) {
        self.counters += other.counters;
        self.visits += other.visits;
        self.urls += other.urls;
        self.requests += other.requests;
    }
}

/// What moves (or moved) from one node to another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The node the keys leave, `host:port`.
    pub source: String,
    /// Their owner in the new ring, `host:port`.
    pub destination: String,
    /// The keys and their counts.
    pub counts: Counts,
}

/// One node of a reshard and the keys it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeKeys {
    /// `host:port`, the node's name on the rings.
    pub name: String,
    /// Whether it is in the current list (`REDIS_NODES`).
    pub in_from: bool,
    /// Whether it is in the new list (`--to`).
    pub in_to: bool,
    /// Visit counters it holds, those that stay and those that move.
    pub counters: u64,
    /// Request-statistics entries it holds, those that stay and those that move.
    pub urls: u64,
}

/// What a reshard from one node list to another moves, read from the nodes by
/// [`super::plan`] without changing anything; [`super::apply`] carries it out.
///
/// `Display` is the table the `tally-server reshard` command prints: each node with the
/// keys it holds, then each route (source, destination) with the keys and counts that
/// move, and the totals. Neither it nor `Debug` shows a password.
#[derive(Clone, Debug)]
pub struct Plan {
    pub(super) from: RedisConfig,
    pub(super) to: RedisConfig,
    pub(super) nodes: Vec<NodeKeys>,
    pub(super) routes: Vec<Route>,
}

impl Plan {
    /// The current node list.
    pub fn from(&self) -> &RedisConfig {
        &self.from
    }

    /// The new node list.
    pub fn to(&self) -> &RedisConfig {
        &self.to
    }

    /// Every node of both lists, current ones first, each with the keys it holds.
    pub fn nodes(&self) -> &[NodeKeys] {
        &self.nodes
    }

    /// What moves, per (source, destination), sorted by source then destination; a pair
    /// with nothing to move is not listed.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Everything that moves.
    pub fn total(&self) -> Counts {
        total(&self.routes)
    }

    /// Keys that move from the node named `source`.
    pub fn keys_from(&self, source: &str) -> u64 {
        self.routes
            .iter()
            .filter(|route| route.source == source)
            .map(|route| route.counts.keys())
            .sum()
    }
}

/// What one run of [`super::apply`] moved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Moved {
    pub(super) routes: Vec<Route>,
    pub(super) resumed: u64,
    pub(super) sketches: u64,
}

impl Moved {
    /// What moved, per (source, destination), sorted as [`Plan::routes`].
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Everything that moved.
    pub fn total(&self) -> Counts {
        total(&self.routes)
    }

    /// Keys of [`Moved::total`] that an earlier, interrupted run had already added to
    /// their destination (its marker was there): this run only removed them from their
    /// source.
    pub fn resumed(&self) -> u64 {
        self.resumed
    }

    /// Visitor sketches merged into their new owner's and removed from their source (not
    /// part of [`Moved::total`], and not planned: a sketch is no count).
    pub fn sketches(&self) -> u64 {
        self.sketches
    }
}

/// Where a run of [`super::apply`] is, reported after each chunk a source node moves and
/// when a source node has nothing left to move.
#[derive(Clone, Copy, Debug)]
pub struct Progress<'a> {
    /// The source node, `host:port`.
    pub node: &'a str,
    /// Keys this run moved from it so far.
    pub node_moved: u64,
    /// Keys the plan moves from it.
    pub node_planned: u64,
    /// Whether it has nothing left to move.
    pub node_done: bool,
    /// Keys this run moved so far, from every node.
    pub moved: u64,
    /// Keys the plan moves, from every node.
    pub planned: u64,
}

fn total(routes: &[Route]) -> Counts {
    let mut total = Counts::default();
    for route in routes {
        total.merge(&route.counts);
    }
    total
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// The routes as a table: one line per route, then the totals.
fn routes_table(f: &mut fmt::Formatter<'_>, routes: &[Route]) -> fmt::Result {
    let width = routes
        .iter()
        .flat_map(|r| [r.source.len(), r.destination.len()])
        .max()
        .unwrap_or(0)
        .max(5);
    writeln!(
        f,
        "  {:<width$}  {:<width$}  {:>10}  {:>14}  {:>10}  {:>14}",
        "from", "to", "counters", "visits", "urls", "requests"
    )?;
    let row = |f: &mut fmt::Formatter<'_>, from: &str, to: &str, c: &Counts| {
        writeln!(
            f,
            "  {from:<width$}  {to:<width$}  {:>10}  {:>14}  {:>10}  {:>14}",
            thousands(c.counters),
            thousands(c.visits),
            thousands(c.urls),
            thousands(c.requests)
        )
    };
    for route in routes {
        row(f, &route.source, &route.destination, &route.counts)?;
    }
    row(f, "total", "", &total(routes))
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "reshard from {} node(s) (VIRTUAL_NODES={}) to {} node(s) (VIRTUAL_NODES={})",
            self.from.nodes.len(),
            self.from.vnodes,
            self.to.nodes.len(),
            self.to.vnodes
        )?;
        let width = self.nodes.iter().map(|n| n.name.len()).max().unwrap_or(0);
        for node in &self.nodes {
            let role = match (node.in_from, node.in_to) {
                (true, true) => "stays",
                (false, true) => "added",
                (true, false) => "removed",
                (false, false) => "",
            };
            writeln!(
                f,
                "  {:<width$}  {:<7}  holds {} counters, {} urls",
                node.name,
                role,
                thousands(node.counters),
                thousands(node.urls)
            )?;
        }
        if self.routes.is_empty() {
            return writeln!(
                f,
                "nothing moves: every key is on its owner in the new ring"
            );
        }
        writeln!(
            f,
            "moves (keys whose owner changes; no other key is touched):"
        )?;
        routes_table(f, &self.routes)
    }
}

impl fmt::Display for Moved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = self.total();
        writeln!(
            f,
            "moved {} counters ({} visits) and {} urls ({} requests){}",
            thousands(total.counters),
            thousands(total.visits),
            thousands(total.urls),
            thousands(total.requests),
            if self.resumed > 0 {
                format!(
                    ", {} of them already added by an interrupted run",
                    thousands(self.resumed)
                )
            } else {
                String::new()
            }
        )?;
        if self.sketches > 0 {
            writeln!(
                f,
                "merged {} visitor sketches into their new nodes'",
                thousands(self.sketches)
            )?;
        }
        if self.routes.is_empty() {
            return Ok(());
        }
        routes_table(f, &self.routes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_separated_by_commas() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn the_plan_table_names_nodes_routes_and_totals_without_passwords() {
        let from = RedisConfig::from_urls("redis://:hunter2@a:1,redis://:hunter2@b:2").unwrap();
        let to = RedisConfig::from_urls("redis://:hunter2@a:1,redis://:hunter2@c:3").unwrap();
        let counts = |counters, visits, urls, requests| Counts {
            counters,
            visits,
            urls,
            requests,
        };
        let plan = Plan {
            from,
            to,
            nodes: vec![NodeKeys {
                name: "b:2".into(),
                in_from: true,
                in_to: false,
                counters: 3,
                urls: 1,
            }],
            routes: vec![
                Route {
                    source: "b:2".into(),
                    destination: "a:1".into(),
                    counts: counts(1, 1_000, 0, 0),
                },
                Route {
                    source: "b:2".into(),
                    destination: "c:3".into(),
                    counts: counts(2, 29, 1, 5),
                },
            ],
        };

        let shown = format!("{plan}\n{plan:?}");

        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("b:2  removed  holds 3 counters"), "{shown}");
        assert!(
            shown.contains(
                "  total                  3           1,029           1               5\n"
            ),
            "{shown}"
        );
        assert_eq!(plan.total().keys(), 4);
        assert_eq!(plan.keys_from("b:2"), 4);
        assert_eq!(plan.keys_from("a:1"), 0);
    }
}
