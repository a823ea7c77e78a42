//! What every scenario needs: the real server binary over real Redis nodes ([`Server`],
//! in `server`), the ring that says which node owns a page, the counts as Redis holds
//! them, and the figures printed at the end of each test.

mod memory;
mod server;

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;
use tally_ring::Ring;
use tally_testkit::{
    FaultProxy, HttpResponse, NodeBuilder, RedisCluster, RedisNode, Score, Scoreboard, miscounted,
    ring,
};

pub use memory::{Samples, sample};
pub use server::Server;

/// Scenarios run one at a time: each drives the two cores of a CI machine flat out, and a
/// neighbour's load would only slow it down (no scenario depends on a machine's speed, but
/// each is sized for the cores it has).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Held for the whole of a scenario.
pub async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// What a scenario run saw, for callers that repeat it with other settings (the secrets
/// scenario) and check more of it.
pub struct Outcome {
    /// The visit load's score.
    pub board: Scoreboard,
    /// Everything the server printed, up to its exit.
    pub output: String,
    /// Bodies (and headers, where the scenario kept them) of the responses the scenario
    /// read itself: counts, metrics, status.
    pub bodies: Vec<String>,
}

/// The body of `response` as JSON (panics, showing it, when it is not).
pub fn json(response: &HttpResponse) -> Value {
    serde_json::from_slice(&response.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", response.text()))
}

/// Redis nodes, the ring over them, and the password they want (if any): what a scenario
/// starts servers against.
pub struct Rig {
    /// The nodes, in `REDIS_NODES` order.
    pub cluster: RedisCluster,
    /// The server's ring over them.
    pub ring: Ring<String>,
    /// `requirepass` of every node, passed to servers as `REDIS_PASSWORD`.
    pub password: Option<String>,
    /// The servers' `REDIS_NODES`: the nodes' URLs, or a proxy's in place of one.
    redis_nodes: String,
}

impl Rig {
    /// `n` nodes with default options.
    pub fn start(n: usize) -> Self {
        Self::start_with(n, &RedisNode::builder(), None)
    }

    /// `n` nodes with `options`; `password` must be the one given to `options`, if any.
    pub fn start_with(n: usize, options: &NodeBuilder, password: Option<&str>) -> Self {
        let cluster = RedisCluster::start_with(n, options).unwrap_or_else(|e| panic!("{e}"));
        Self {
            ring: cluster.ring(),
            redis_nodes: cluster.urls(),
            cluster,
            password: password.map(str::to_owned),
        }
    }

    /// `n` nodes with `options`, node `proxied` known to servers only through a
    /// [`FaultProxy`] in front of it: its name on the ring (and so its keys) is the
    /// proxy's address. Helpers that read the nodes read them directly.
    pub async fn start_behind_proxy(
        n: usize,
        options: &NodeBuilder,
        proxied: usize,
    ) -> (Self, FaultProxy) {
        let cluster = RedisCluster::start_with(n, options).unwrap_or_else(|e| panic!("{e}"));
        let proxy = FaultProxy::start(cluster.node(proxied).addr())
            .await
            .expect("proxy");
        let (mut names, mut urls): (Vec<String>, Vec<String>) = cluster
            .nodes()
            .iter()
            .map(|node| (node.addr().to_string(), node.url()))
            .unzip();
        names[proxied] = format!("127.0.0.1:{}", proxy.port());
        urls[proxied] = proxy.url();
        let rig = Self {
            ring: ring(&names),
            redis_nodes: urls.join(","),
            cluster,
            password: None,
        };
        (rig, proxy)
    }

    /// The nodes, for the helpers that read them.
    pub fn nodes(&self) -> Vec<&RedisNode> {
        self.cluster.nodes().iter().collect()
    }

    /// Index of the node owning `page`.
    pub fn owner(&self, page: &str) -> usize {
        self.ring.lookup_index(page.as_bytes())
    }

    /// A server over every node, with `extra` settings (and `REDIS_PASSWORD` when set).
    pub fn server(&self, extra: &[(&str, &str)]) -> Server {
        let mut env = extra.to_vec();
        if let Some(password) = &self.password {
            env.push(("REDIS_PASSWORD", password));
        }
        Server::start(&self.redis_nodes, &env)
    }

    /// [`visits_counted`] on these nodes.
    pub fn visits_counted(&self, board: &Scoreboard) -> Counted {
        visits_counted(&self.nodes(), &self.ring, board)
    }
}

/// The stored visit count of every page in `pages`, read with one `MGET` per node from
/// the node the ring says owns it (`tally:v:{page}`; 0 when absent).
pub fn stored_visits(
    nodes: &[&RedisNode],
    ring: &Ring<String>,
    pages: &[String],
) -> HashMap<String, u64> {
    let mut by_node: Vec<Vec<&String>> = vec![Vec::new(); nodes.len()];
    for page in pages {
        by_node[ring.lookup_index(page.as_bytes())].push(page);
    }
    let mut counts = HashMap::with_capacity(pages.len());
    for (node, pages) in nodes.iter().zip(by_node) {
        for chunk in pages.chunks(10_000) {
            let mut mget = redis::cmd("MGET");
            for page in chunk {
                mget.arg(format!("tally:v:{page}"));
            }
            let values: Vec<Option<u64>> = node.query(&mget).expect("MGET answers");
            counts.extend(
                chunk
                    .iter()
                    .zip(values)
                    .map(|(page, v)| ((*page).clone(), v.unwrap_or(0))),
            );
        }
    }
    counts
}

/// Every page total on every node: `(page, node index, count)`, day counts
/// (`tally:v:{page}\u{1f}{day}`) left out ([`all_day_keys`] has them). Used to prove
/// nothing was counted under a key no test sent, or on a node that does not own it.
pub fn all_visit_keys(nodes: &[&RedisNode]) -> Vec<(String, usize, u64)> {
    every_visit_key(nodes)
        .into_iter()
        .filter(|(key, _, _)| !key.contains(DAY_SEPARATOR))
        .collect()
}

/// Separates a page from its day in a day count's key.
pub const DAY_SEPARATOR: char = '\u{1f}';

/// Every day count on every node: `(page, day, node index, count)`.
pub fn all_day_keys(nodes: &[&RedisNode]) -> Vec<(String, String, usize, u64)> {
    every_visit_key(nodes)
        .into_iter()
        .filter_map(|(key, node, count)| {
            let (page, day) = key.split_once(DAY_SEPARATOR)?;
            Some((page.to_owned(), day.to_owned(), node, count))
        })
        .collect()
}

/// What is wrong with the day counts beside page totals `counts` (of the pages a score
/// names): a day count on a node the ring does not give its page, of a page no request
/// named, or days that do not add up to their page's total (every visit of a run counts
/// on its day too). Each a description, for [`Counted::stray`].
pub fn day_count_problems(
    days: &[(String, String, usize, u64)],
    counts: &HashMap<String, u64>,
    owner: impl Fn(&str) -> usize,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut sums: HashMap<&str, u64> = HashMap::new();
    for (page, day, node, count) in days {
        if !counts.contains_key(page) {
            problems.push(format!(
                "day {day} of {page} = {count}: no request named the page"
            ));
        } else if owner(page) != *node {
            problems.push(format!(
                "day {day} of {page} = {count} on node {node}, which does not own the page"
            ));
        }
        *sums.entry(page.as_str()).or_default() += count;
    }
    for (page, total) in counts {
        let days = sums.get(page.as_str()).copied().unwrap_or(0);
        if days != *total {
            problems.push(format!(
                "the days of {page} add up to {days}, its total is {total}"
            ));
        }
    }
    problems
}

/// Every key under `tally:v:` on every node, prefix removed: `(key, node index, count)`.
fn every_visit_key(nodes: &[&RedisNode]) -> Vec<(String, usize, u64)> {
    let mut all = Vec::new();
    for (index, node) in nodes.iter().enumerate() {
        let keys = node.keys("tally:v:*").expect("KEYS answers");
        for chunk in keys.chunks(10_000) {
            let mut mget = redis::cmd("MGET");
            for key in chunk {
                mget.arg(key);
            }
            let values: Vec<Option<u64>> = node.query(&mget).expect("MGET answers");
            all.extend(chunk.iter().zip(values).map(|(key, v)| {
                (
                    key.trim_start_matches("tally:v:").to_owned(),
                    index,
                    v.unwrap_or(0),
                )
            }));
        }
    }
    all
}

/// The request statistics as Redis holds them: every member of `tally:urls` on every node,
/// with its count. Panics if a URL is on a node the ring does not give it to, or on two.
pub fn urls_counted(nodes: &[&RedisNode], ring: &Ring<String>) -> HashMap<String, u64> {
    let mut urls = HashMap::new();
    for (index, node) in nodes.iter().enumerate() {
        for (url, count) in url_members(node) {
            assert_eq!(
                ring.lookup_index(url.as_bytes()),
                index,
                "{url} counted on node {index}, which does not own it"
            );
            assert!(
                urls.insert(url.clone(), count).is_none(),
                "{url} on two nodes"
            );
        }
    }
    urls
}

/// Every member of `tally:urls` on `node`, with its count.
pub fn url_members(node: &RedisNode) -> Vec<(String, u64)> {
    node.query(
        redis::cmd("ZRANGE")
            .arg("tally:urls")
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES"),
    )
    .expect("ZRANGE answers")
}

/// Checks the request statistics of a load against its score: the URL of each key
/// (`path(key)`) must be counted within `bounds(score)` (inclusive). Returns every breach.
pub fn check_urls(
    board: &Scoreboard,
    path: fn(&str) -> String,
    urls: &HashMap<String, u64>,
    bounds: impl Fn(&Score) -> (u64, u64),
) -> Result<(), String> {
    let mut wrong = Vec::new();
    for (key, score) in &board.keys {
        let url = path(key);
        let got = urls.get(&url).copied().unwrap_or(0);
        let (low, high) = bounds(score);
        if !(low..=high).contains(&got) {
            wrong.push(format!(
                "{url}: counted {got}, expected {low}..={high} ({score:?})"
            ));
        }
    }
    miscounted("URLs", wrong)
}

/// Bytes that only a visit batch's script call carries (its high-water-mark hash as the
/// first key), for a [`FaultProxy`] to pick it out. A visit read carries them too: use it
/// where nothing reads counts meanwhile.
pub const VISIT_BATCH: &[u8] = b"\r\ntally:applied\r\n";
/// Likewise for a batch of the request statistics.
pub const STATS_BATCH: &[u8] = b"\r\ntally:applied:urls\r\n";

/// Waits until the server's first sweep of old high-water marks has run on the node of
/// `node_label` (`node="host:port"`, as the server names it): both passes, one per marks
/// hash, counted in `tally_redis_commands_total{op="sweep"}`. The sweep's script names the
/// marks hashes as a batch does, so a proxy told to lose the reply of a batch by
/// [`VISIT_BATCH`] or [`STATS_BATCH`] must be armed after it: armed during it, it loses the
/// sweep's reply instead, and no batch is retried (seen in `kill.rs` once the server's
/// first batches came as fast as its first sweep). The next sweep is five minutes later.
pub async fn wait_for_first_sweep(server: &Server, node_label: &str) {
    server
        .wait_for_metric(
            "tally_redis_commands_total",
            &[node_label, "op=\"sweep\""],
            2.0,
            Duration::from_secs(30),
            "the first sweep of old high-water marks",
        )
        .await;
}

/// The high-water marks a node holds in `hash` (`tally:applied`, `tally:applied:urls`):
/// field (`{instance}:{shard}`) → value (`{seq}:{unix ms}`).
pub fn marks(node: &RedisNode, hash: &str) -> HashMap<String, String> {
    node.query(redis::cmd("HGETALL").arg(hash))
        .expect("HGETALL answers")
}

/// Asserts that every request of a run without HTTP faults was answered (none unknown, none
/// unsent) and the slowest within `bound`: a server that held requests back while a node
/// was away would show here, not hide in the unknown window.
pub fn assert_answered_promptly(board: &Scoreboard, bound: Duration) {
    let totals = board.totals();
    assert_eq!(
        (totals.unknown, totals.unsent),
        (0, 0),
        "every request answered: {board:?}"
    );
    let slowest = Duration::from_micros(board.latency_us.max());
    assert!(
        slowest < bound,
        "the slowest answer took {slowest:?} (bound {bound:?}): {}",
        board.summary()
    );
}

/// Checks that the request statistics hold no URL but those of the load (`path(key)` for
/// each key of `board`) and `also` (URLs the test requested itself). Returns every stray.
pub fn check_no_stray_urls(
    board: &Scoreboard,
    path: fn(&str) -> String,
    urls: &HashMap<String, u64>,
    also: &[&str],
) -> Result<(), String> {
    let expected: std::collections::HashSet<String> = board
        .keys
        .keys()
        .map(|key| path(key))
        .chain(also.iter().map(|url| (*url).to_owned()))
        .collect();
    let stray = urls
        .iter()
        .filter(|(url, _)| !expected.contains(*url))
        .map(|(url, count)| format!("{url}: counted {count}, never requested"))
        .collect();
    miscounted("URLs", stray)
}

/// The sum of every visit counter on `node`.
pub fn visits_on(node: &RedisNode) -> u64 {
    all_visit_keys(&[node])
        .iter()
        .map(|(_, _, count)| count)
        .sum()
}

/// What Redis holds for a run, compared with its score.
pub struct Counted {
    /// Stored count per key of the score.
    pub counts: HashMap<String, u64>,
    /// Their sum.
    pub total: u64,
    /// Acknowledged requests not counted (sum over keys of acked - counted, where positive).
    pub lost: u64,
    /// Counts beyond acknowledged + unknown (sum over keys, where positive).
    pub doubled: u64,
    /// Keys found in Redis that the score does not name, or on a node that does not own
    /// them: each a description.
    pub stray: Vec<String>,
}

impl Counted {
    /// Compares `counts` (per key of `board`) with the score; `stray` as found.
    pub fn new(board: &Scoreboard, counts: HashMap<String, u64>, stray: Vec<String>) -> Self {
        let (mut lost, mut doubled) = (0, 0);
        for (key, score) in &board.keys {
            let got = counts.get(key).copied().unwrap_or(0);
            lost += score.acked.saturating_sub(got);
            doubled += got.saturating_sub(score.acked + score.unknown);
        }
        Self {
            total: counts.values().sum(),
            counts,
            lost,
            doubled,
            stray,
        }
    }

    /// Panics unless every key is within [acked, acked + unknown] and nothing stray exists.
    pub fn assert_exact(&self, board: &Scoreboard) {
        if let Err(wrong) = board.check_counts(|key| self.counts.get(key).copied().unwrap_or(0)) {
            panic!("{wrong}");
        }
        assert!(
            self.stray.is_empty(),
            "stray counts:\n{}",
            self.stray.join("\n")
        );
    }
}

/// Reads the visit counts of every page of `board` from its owner node, and every other
/// visit key on any node (stray: a page no request named, or a page on a node that does
/// not own it).
pub fn visits_counted(nodes: &[&RedisNode], ring: &Ring<String>, board: &Scoreboard) -> Counted {
    let pages: Vec<String> = board.keys.keys().cloned().collect();
    let counts = stored_visits(nodes, ring, &pages);
    let stray = all_visit_keys(nodes)
        .into_iter()
        .filter_map(|(page, node, count)| {
            if !board.keys.contains_key(&page) {
                Some(format!(
                    "tally:v:{page} = {count} on node {node}: no request named it"
                ))
            } else if ring.lookup_index(page.as_bytes()) != node {
                Some(format!(
                    "tally:v:{page} = {count} on node {node}, which does not own it"
                ))
            } else {
                None
            }
        })
        .collect::<Vec<_>>();
    let mut stray = stray;
    stray.extend(day_count_problems(&all_day_keys(nodes), &counts, |page| {
        ring.lookup_index(page.as_bytes())
    }));
    Counted::new(board, counts, stray)
}

/// Prints the figures of a scenario: what was acknowledged, counted, refused, unknown,
/// and what was lost or doubled (both must be 0).
pub fn report(scenario: &str, board: &Scoreboard, counted: &Counted, wall: Duration) {
    let t = board.totals();
    println!(
        "[{scenario}] acknowledged {} | counted {} | lost {} | doubled {} | 503 {} | other {} | unknown {} | unsent {} | keys {} | wall {:.1?}",
        t.acked,
        counted.total,
        counted.lost,
        counted.doubled,
        t.rejected,
        t.other,
        t.unknown,
        t.unsent,
        board.keys.len(),
        wall,
    );
    println!("[{scenario}] load: {}", board.summary());
}
