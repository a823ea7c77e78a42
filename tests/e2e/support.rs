//! What every scenario needs: the real server binary over real Redis nodes, the ring that
//! says which node owns a page, the counts as Redis holds them, and the figures printed at
//! the end of each test.

use std::collections::HashMap;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use serde_json::Value;
use tally_ring::Ring;
use tally_testkit::{
    FaultProxy, HttpConnection, HttpResponse, NodeBuilder, RedisCluster, RedisNode, Score,
    Scoreboard, ServerProcess, miscounted,
};

/// The server under test: `tally_server::cli::main`, the code of the shipped binary.
pub const SERVER: &str = env!("CARGO_BIN_EXE_tally-e2e-server");

/// Virtual nodes per node of the server's ring (its `VIRTUAL_NODES` default).
const VNODES: u32 = 160;

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

/// Settings every scenario starts from: loopback, quick failure detection, frequent
/// batches so batches are written while load runs. A scenario's own `extra` wins.
const BASE_ENV: &[(&str, &str)] = &[
    ("REDIS_TIMEOUT", "0.5"),
    ("HEALTH_CHECK_INTERVAL_SECONDS", "0.2"),
    ("BATCH_INTERVAL_SECONDS", "0.2"),
    ("SHUTDOWN_TIMEOUT_SECONDS", "10"),
    ("LOG_LEVEL", "info"),
];

/// The real server over `nodes` (a `REDIS_NODES` value), killed when dropped.
pub struct Server {
    process: ServerProcess,
}

impl Server {
    /// Starts the binary with [`BASE_ENV`], `REDIS_NODES=nodes` and `extra` (which wins).
    pub fn start(nodes: &str, extra: &[(&str, &str)]) -> Self {
        let mut env: Vec<(&str, &str)> = BASE_ENV
            .iter()
            .filter(|(name, _)| !extra.iter().any(|(n, _)| n == name))
            .copied()
            .collect();
        env.push(("REDIS_NODES", nodes));
        env.extend_from_slice(extra);
        let process = ServerProcess::start(SERVER, &env).unwrap_or_else(|e| panic!("{e}"));
        Self { process }
    }

    /// `http://127.0.0.1:{port}`.
    pub fn base_url(&self) -> String {
        self.process.base_url()
    }

    /// `127.0.0.1:{port}`.
    pub fn addr(&self) -> String {
        self.process.addr()
    }

    /// The process, for signals and memory.
    pub fn process(&self) -> &ServerProcess {
        &self.process
    }

    /// Everything the server printed so far.
    pub fn output(&self) -> String {
        self.process.output()
    }

    /// One request on a fresh connection, panicking on a transport error.
    pub async fn request(&self, method: &str, target: &str) -> HttpResponse {
        let mut conn = HttpConnection::connect(&self.addr())
            .await
            .unwrap_or_else(|e| panic!("{method} {target}: {e}"));
        tokio::time::timeout(Duration::from_secs(30), conn.send(method, target))
            .await
            .unwrap_or_else(|_| panic!("{method} {target}: no answer within 30 s"))
            .unwrap_or_else(|e| panic!("{method} {target}: {e}"))
    }

    /// `GET {target}`, asserting 200 and a JSON body.
    pub async fn get_json(&self, target: &str) -> Value {
        let response = self.request("GET", target).await;
        assert_eq!(response.status, 200, "GET {target}: {}", response.text());
        json(&response)
    }

    /// `GET /api/v1/counter/visits/{page}` → `(visits, served_via)`, asserting 200.
    pub async fn count(&self, page: &str) -> (u64, String) {
        let body = self
            .get_json(&format!("/api/v1/counter/visits/{page}"))
            .await;
        (
            body["visits"].as_u64().expect("visits"),
            body["served_via"].as_str().expect("served_via").to_owned(),
        )
    }

    /// Waits until the server has no visit left to write (`write_buffer_size` 0 in
    /// `/api/v1/counter/metrics`), panicking after `timeout`.
    pub async fn wait_flushed(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            // The route is under /api/ itself: while the request statistics have no room
            // for its URL (its node was just down) it answers 503; ask again.
            let response = self.request("GET", "/api/v1/counter/metrics").await;
            let metrics = match response.status {
                200 => json(&response),
                503 => Value::Null,
                status => panic!("counter metrics: {status} {}", response.text()),
            };
            if metrics["metrics"]["write_buffer_size"] == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "visits still unwritten after {timeout:?}: {metrics}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The value of one Prometheus sample: the sum over every series of `name` whose
    /// labels contain all of `labels` (`key="value"` strings).
    pub async fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        let response = self.request("GET", "/metrics").await;
        assert_eq!(response.status, 200);
        prometheus_sum(&response.text(), name, labels)
    }

    /// Waits until [`Server::metric`] of `name` and `labels` reaches `at_least`, panicking
    /// with `what` after `timeout`; returns the value reached.
    pub async fn wait_for_metric(
        &self,
        name: &str,
        labels: &[&str],
        at_least: f64,
        timeout: Duration,
        what: &str,
    ) -> f64 {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.metric(name, labels).await;
            if value >= at_least {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {name}{labels:?} is {value} after {timeout:?}, expected at least {at_least}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `/status` reports the node at `url` (`redis://host:port`) up or down, as
    /// `up` says: the server has seen the fault (or the recovery). Panics after 30 s.
    pub async fn wait_for_node(&self, url: &str, up: bool) {
        let what = format!("the server to see {url} {}", if up { "up" } else { "down" });
        self.wait_for_status(&what, |status| {
            status["redis_status"]["node_status"][url] == up
        })
        .await;
    }

    /// Polls `/status` every 20 ms until `done` says yes of it, and returns it; panics
    /// after 30 s, naming `what` and showing the last answer.
    pub async fn wait_for_status(&self, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = self.get_json("/status").await;
            if done(&status) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "waited 30 s for {what}: {status}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, then waits up to `deadline` for the exit; returns the status and the
    /// time the shutdown took.
    pub fn terminate(&mut self, deadline: Duration) -> (ExitStatus, Duration) {
        let started = Instant::now();
        self.process.terminate().expect("SIGTERM delivered");
        let status = self
            .process
            .wait(deadline)
            .unwrap_or_else(|e| panic!("{e}"));
        (status, started.elapsed())
    }

    /// SIGTERM and a clean exit (0, with every pending visit written) within 15 s.
    pub fn stop(mut self) -> String {
        let (status, _) = self.terminate(Duration::from_secs(15));
        let output = self.output();
        assert_eq!(status.code(), Some(0), "output:\n{output}");
        assert!(
            output.contains("shutdown complete: every pending visit was written"),
            "output:\n{output}"
        );
        output
    }
}

/// The body of `response` as JSON (panics, showing it, when it is not).
pub fn json(response: &HttpResponse) -> Value {
    serde_json::from_slice(&response.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", response.text()))
}

/// Sums the samples of `name` whose label set contains every one of `labels`.
fn prometheus_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            (metric == name && labels.iter().all(|l| rest.contains(l)))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
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
        let names: Vec<String> = cluster.nodes().iter().map(name_of).collect();
        Self {
            ring: ring(&names),
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
            .map(|node| (name_of(node), node.url()))
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

/// `host:port` of a node: its name on the server's ring.
pub fn name_of(node: &RedisNode) -> String {
    format!("127.0.0.1:{}", node.port())
}

/// The ring the server builds over node names (`127.0.0.1:port`, in `REDIS_NODES` order).
pub fn ring(names: &[String]) -> Ring<String> {
    Ring::builder()
        .vnodes(VNODES)
        .nodes(names.iter().map(|name| (name.clone(), 1)))
        .build()
        .expect("a ring")
}

/// `n` page ids `{prefix}{i}` owned by node `index` of `ring`.
pub fn pages_on(ring: &Ring<String>, index: usize, prefix: &str, n: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .filter(|page| ring.lookup_index(page.as_bytes()) == index)
        .take(n)
        .collect()
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

/// Every visit counter on every node: `(page, node index, count)`. Used to prove nothing
/// was counted under a key no test sent, or on a node that does not own it.
pub fn all_visit_keys(nodes: &[&RedisNode]) -> Vec<(String, usize, u64)> {
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
        .collect();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_samples_are_summed_by_name_and_labels() {
        let text = "# HELP x y\nx_total{node=\"a\",op=\"apply\"} 2\nx_total{node=\"b\",op=\"apply\"} 3\nx_total{node=\"b\",op=\"get\"} 5\nx_totally 7\n";
        assert_eq!(prometheus_sum(text, "x_total", &[]), 10.0);
        assert_eq!(prometheus_sum(text, "x_total", &["op=\"apply\""]), 5.0);
        assert_eq!(
            prometheus_sum(text, "x_total", &["node=\"b\"", "op=\"get\""]),
            5.0
        );
    }
}
