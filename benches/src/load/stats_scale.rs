//! The `/stats/` scale scenario: the nodes' sorted sets filled with N distinct URLs
//! (default 1,000,000) through tally-redis's own write path, then `GET /stats/` (the top
//! 100) and a deep page (`GET /stats/?offset=100000&limit=100`) timed over HTTP against
//! tally-server on 127.0.0.1, first from one client, then from [`CLIENTS`] at once.
//!
//! - Seeding: every URL is written by [`RedisStore::apply_batch`] in the sorted-set layout
//!   on the node the ring gives it, [`SEED_BATCH`] keys a batch, so the sets hold exactly
//!   what tally-server would have written, where it would have written it. The nodes are
//!   flushed first and the sum of `ZCARD tally:urls` must be N afterwards.
//! - Counts: URL `i` (0-based) gets `max(1, 1,000,000 / (i + 1))`, a long tail of ties (the
//!   deep page lands inside a run of about 11,000 URLs with the same count, the last half
//!   million all count 1), so the tie-break (url ascending) is exercised where it is
//!   expensive.
//! - Every answer is checked against the ranking computed here from the seed (count
//!   descending, then url ascending), never against another answer of the server: a wrong
//!   answer fails the run.
//! - In every phase `/health` and `/status` are polled every [`POLL_EVERY`]: answers that
//!   were not `healthy`, nodes seen down and nodes with failing batches are reported.
//! - A `503` (the server refusing a merge it has no room for) is a legitimate answer: it
//!   is counted apart from errors, and its client waits its `Retry-After` (at most
//!   [`RETRY_AFTER_CAP`]) before the next request. Latency percentiles are of `200`
//!   answers only.
//!
//! Bounded: traffic only to 127.0.0.1, a fixed number of requests per phase, each with a
//! [`REQUEST_TIMEOUT`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Deserialize;
use tally_counter::{Batch, BatchId, InstanceId, Store as _};
use tally_redis::{Layout, RedisConfig, RedisStore, URLS_KEY};
use tally_testkit::RedisCluster;
use tokio::sync::oneshot;

use crate::measure::{CommandCounts, CpuSnapshot, CpuUse};
use crate::targets::{self, Kind};

/// URLs seeded by default (the figure).
pub const DEFAULT_URLS: usize = 1_000_000;
/// URLs seeded with `--quick` (CI, debug build).
pub const QUICK_URLS: usize = 100_000;
/// Concurrent clients of the concurrent phases.
pub const CLIENTS: usize = 8;
/// Entries a page holds (`limit`; the server's default, so the top page is `GET /stats/`).
const PAGE: usize = 100;
/// Offset of the deep page (the server's largest), or the last full page when fewer URLs.
const DEEP_OFFSET: usize = 100_000;
/// Keys per seeding batch, per node.
const SEED_BATCH: usize = 5_000;
/// How often `/health` and `/status` are asked during a phase.
const POLL_EVERY: Duration = Duration::from_millis(100);
/// Longest a `/health` or `/status` answer may take before it counts as not healthy.
const POLL_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest a `/stats/` answer may take before it counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a client waits after a `503`, whatever its `Retry-After` says.
const RETRY_AFTER_CAP: Duration = Duration::from_secs(1);
/// The original Flask service's `GET /stats/` at 10,000 URLs, measured (issue 15): the
/// reference the figures are set beside.
const ORIGINAL_P50_MS: u64 = 662;
/// Targets of issue 15 (for 1,000,000 URLs): p50 in ms of the top page and the deep page.
const TOP_P50_TARGET_MS: f64 = 5.0;
const DEEP_P50_TARGET_MS: f64 = 50.0;

/// The `i`-th seeded URL: an API path of 29 to 52 bytes.
fn seed_url(i: usize) -> String {
    const RESOURCES: [&str; 5] = [
        "items",
        "users",
        "orders",
        "catalog/products",
        "accounts/settings",
    ];
    const VIEWS: [&str; 4] = ["details", "reviews", "history", "related-items"];
    format!(
        "/api/v1/shop/{}/{i}/{}/",
        RESOURCES[i % RESOURCES.len()],
        VIEWS[(i / RESOURCES.len()) % VIEWS.len()]
    )
}

/// The `i`-th seeded URL's count: `1,000,000 / (i + 1)`, at least 1.
fn seed_count(i: usize) -> u64 {
    (1_000_000 / (i as u64 + 1)).max(1)
}

/// How many URLs and requests the scenario uses.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Distinct URLs seeded.
    pub urls: usize,
    top_sequential: usize,
    deep_sequential: usize,
    top_per_client: usize,
    deep_per_client: usize,
    /// Repetitions of the deep page's breakdown measured from the harness.
    breakdown: usize,
}

impl Plan {
    /// The plan for `urls` URLs; `quick` sends fewer requests.
    pub fn new(urls: usize, quick: bool) -> Self {
        if quick {
            Self {
                urls,
                top_sequential: 30,
                deep_sequential: 10,
                top_per_client: 10,
                deep_per_client: 3,
                breakdown: 3,
            }
        } else {
            Self {
                urls,
                top_sequential: 200,
                deep_sequential: 100,
                top_per_client: 100,
                deep_per_client: 25,
                breakdown: 20,
            }
        }
    }

    /// Offset of the deep page: 100,000, or the last full page when there are fewer URLs.
    pub fn deep_offset(&self) -> usize {
        DEEP_OFFSET.min(self.urls.saturating_sub(PAGE))
    }

    /// Longest the scenario can rightly take (debug build included): seeding and the
    /// expected ranking, then every request at a generous allowance (a deep page at 3 s,
    /// a concurrent round counted as one request's time per client).
    pub fn budget(&self) -> Duration {
        let seed = Duration::from_secs(60) + Duration::from_micros(100) * self.urls as u32;
        let top = (self.top_sequential + self.top_per_client) as u32;
        let deep = (self.deep_sequential + self.deep_per_client + self.breakdown) as u32;
        seed + Duration::from_millis(500) * top + Duration::from_secs(3) * deep
    }
}

/// What the scenario needs from the harness.
pub struct Setup<'a> {
    /// Runtime of the server under test.
    pub server_rt: &'a tokio::runtime::Runtime,
    /// Runtime of the load client (and of the seeding store).
    pub client_rt: &'a tokio::runtime::Runtime,
    /// The three nodes.
    pub cluster: &'a RedisCluster,
    /// Their URLs, as tally-server gets them in `REDIS_NODES`.
    pub redis_urls: &'a [String],
    /// Their pids, for the CPU figures.
    pub redis_pids: &'a [u32],
    /// tally-server's `ENABLE_METRICS`.
    pub metrics: bool,
    /// Wait up to this long for other processes to go quiet before measuring.
    pub quiet_wait: Duration,
}

/// The two pages measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Which {
    Top,
    Deep,
}

/// One entry of a `/stats/` answer.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
struct Ranked {
    count: u64,
    url: String,
}

/// What the scenario measured.
#[derive(Debug)]
pub struct Report {
    plan: Plan,
    seeding: Duration,
    /// `ZCARD tally:urls` per node after seeding.
    per_node: Vec<u64>,
    ranking: Duration,
    /// Count at the deep page and how many URLs share it.
    deep_ties: (u64, usize),
    phases: Vec<PhaseResult>,
    breakdown: Breakdown,
}

/// One phase: a page, one or [`CLIENTS`] clients, a fixed number of requests each.
#[derive(Debug)]
struct PhaseResult {
    which: Which,
    clients: usize,
    answers: Answers,
    polls: Polls,
    cpu: CpuUse,
    /// Per node: what it did during the phase.
    redis: Vec<NodeWork>,
}

/// What one Redis node did, or has done since start: CPU time of its main thread (where
/// commands run; `INFO cpu`) and commands by name (`INFO commandstats`, which counts the
/// commands run inside a script or a `MULTI` as well).
#[derive(Clone, Debug, Default)]
struct NodeWork {
    cpu: Duration,
    commands: CommandCounts,
}

impl NodeWork {
    fn until(&self, later: &NodeWork) -> NodeWork {
        NodeWork {
            cpu: later.cpu.saturating_sub(self.cpu),
            commands: crate::measure::command_delta(&self.commands, &later.commands),
        }
    }

    /// CPU ms per `n` (`NaN` when `n` is 0).
    fn cpu_ms_per(&self, n: u64) -> f64 {
        if n == 0 {
            f64::NAN
        } else {
            self.cpu.as_secs_f64() * 1e3 / n as f64
        }
    }
}

/// What the `/stats/` clients of a phase got.
#[derive(Debug, Default)]
struct Answers {
    latencies: Vec<Duration>,
    ok: u64,
    overloaded: u64,
    other_non_2xx: u64,
    errors: u64,
    wrong: u64,
    first_wrong: Option<String>,
}

impl Answers {
    fn merge(&mut self, other: Answers) {
        self.latencies.extend(other.latencies);
        self.ok += other.ok;
        self.overloaded += other.overloaded;
        self.other_non_2xx += other.other_non_2xx;
        self.errors += other.errors;
        self.wrong += other.wrong;
        if self.first_wrong.is_none() {
            self.first_wrong = other.first_wrong;
        }
    }

    fn requests(&self) -> u64 {
        self.ok + self.overloaded + self.other_non_2xx + self.errors
    }

    /// Nearest-rank percentile of the `200` answers, in ms (`NaN` when none).
    fn ms(&self, q: f64) -> f64 {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        if sorted.is_empty() {
            return f64::NAN;
        }
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1].as_secs_f64() * 1e3
    }
}

/// What `/health` and `/status` said during a phase.
#[derive(Debug, Default)]
struct Polls {
    health: u64,
    not_healthy: u64,
    /// `/status` asks that got no readable answer.
    status_failed: u64,
    /// Most nodes `/status` showed down at once.
    max_down: usize,
    down: BTreeSet<String>,
    /// Nodes whose last batch (visits or statistics) had failed.
    failing: BTreeSet<String>,
}

/// The baseline of the deep page: merging every node's head (`top(offset + limit)`), the
/// way the server read every page before it read deep ones around their counts, timed
/// part by part from the harness.
#[derive(Debug, Default)]
struct Breakdown {
    /// Every node's `top(offset + limit)` at once.
    fetch: Vec<Duration>,
    /// Each node's `top(offset + limit)` alone, per node.
    alone: Vec<Vec<Duration>>,
    /// What each node did during those calls alone (`reps` calls each).
    alone_redis: Vec<NodeWork>,
    /// Sorting the merged answers and cutting the page.
    merge: Vec<Duration>,
    entries: usize,
    url_bytes: usize,
}

/// Runs the scenario: flush, seed, verify, then the four phases and the breakdown.
///
/// # Errors
///
/// Seeding or verifying failed, or the server could not be started or stopped. Wrong
/// answers are not errors: [`Report::passed`] tells them.
pub fn run(plan: &Plan, setup: &Setup<'_>) -> anyhow::Result<Report> {
    for node in setup.cluster.nodes() {
        node.query::<()>(&redis::cmd("FLUSHALL"))
            .context("cannot flush a node before seeding")?;
    }
    let urls: Vec<Arc<str>> = (0..plan.urls).map(|i| seed_url(i).into()).collect();

    eprintln!(
        "load: /stats/ scale: seeding {} URLs into {} nodes",
        thousands(plan.urls as u64),
        setup.cluster.nodes().len()
    );
    let mut config = RedisConfig::from_urls(&setup.redis_urls.join(","))
        .context("the nodes' URLs as REDIS_NODES")?;
    config.layout = Layout::SortedSet;
    let started = Instant::now();
    let store = setup.client_rt.block_on(async {
        let store = RedisStore::connect(config)
            .await
            .context("cannot connect the seeding store")?;
        seed(&store, &urls).await?;
        anyhow::Ok(store)
    })?;
    let seeding = started.elapsed();
    let mut per_node = Vec::with_capacity(setup.cluster.nodes().len());
    for node in setup.cluster.nodes() {
        let mut zcard = redis::cmd("ZCARD");
        zcard.arg(URLS_KEY);
        per_node.push(node.query::<u64>(&zcard).context("ZCARD after seeding")?);
    }
    let total: u64 = per_node.iter().sum();
    anyhow::ensure!(
        total == plan.urls as u64,
        "after seeding the nodes hold {total} URLs in {URLS_KEY}, not {}",
        plan.urls
    );
    eprintln!(
        "load: /stats/ scale: seeded in {:.1} s ({} per node)",
        seeding.as_secs_f64(),
        per_node
            .iter()
            .map(|n| thousands(*n))
            .collect::<Vec<_>>()
            .join(" / ")
    );

    // The expected ranking, from the seed alone.
    let started = Instant::now();
    let mut order: Vec<u32> = (0..plan.urls as u32).collect();
    order.sort_unstable_by(|&a, &b| {
        let (a, b) = (a as usize, b as usize);
        seed_count(b)
            .cmp(&seed_count(a))
            .then_with(|| urls[a].cmp(&urls[b]))
    });
    let ranking = started.elapsed();
    let page_of = |offset: usize| -> Vec<Ranked> {
        order
            .iter()
            .skip(offset)
            .take(PAGE)
            .map(|&i| Ranked {
                count: seed_count(i as usize),
                url: urls[i as usize].to_string(),
            })
            .collect()
    };
    let offset = plan.deep_offset();
    let expected_top = Arc::new(page_of(0));
    let expected_deep = Arc::new(page_of(offset));
    let deep_count = expected_deep.first().map_or(0, |r| r.count);
    let deep_ties = (
        deep_count,
        (0..plan.urls)
            .filter(|&i| seed_count(i) == deep_count)
            .count(),
    );
    drop(order);
    drop(urls);

    if !setup.quiet_wait.is_zero() {
        let other = crate::measure::wait_for_quiet(setup.redis_pids, setup.quiet_wait);
        if other >= 10.0 {
            eprintln!(
                "load: other processes still use {other:.0}% of a core after {:?}; measuring anyway",
                setup.quiet_wait
            );
        }
    }
    let server = setup.server_rt.block_on(targets::start(
        Kind::TallyRedis,
        setup.redis_urls,
        setup.metrics,
    ))?;
    let measured = measure_phases(
        plan,
        setup,
        server.address,
        &store,
        &expected_top,
        &expected_deep,
    );
    setup.server_rt.block_on(server.stop())?;
    drop(store);
    let (phases, breakdown) = measured?;
    Ok(Report {
        plan: *plan,
        seeding,
        per_node,
        ranking,
        deep_ties,
        phases,
        breakdown,
    })
}

/// Writes every URL with its count on its node, [`SEED_BATCH`] keys a batch, the nodes in
/// parallel.
async fn seed(store: &RedisStore, urls: &[Arc<str>]) -> anyhow::Result<()> {
    let mut by_shard: Vec<Vec<(Arc<str>, u64)>> = vec![Vec::new(); store.shard_count()];
    for (i, url) in urls.iter().enumerate() {
        by_shard[store.shard_of(url)].push((Arc::clone(url), seed_count(i)));
    }
    let instance = InstanceId::random();
    let tasks: Vec<_> = by_shard
        .into_iter()
        .enumerate()
        .map(|(shard, deltas)| {
            let store = store.clone();
            tokio::spawn(async move {
                for (n, chunk) in deltas.chunks(SEED_BATCH).enumerate() {
                    let batch = Batch {
                        id: BatchId {
                            instance,
                            seq: n as u64 + 1,
                        },
                        deltas: chunk.to_vec(),
                    };
                    store
                        .apply_batch(shard, &batch)
                        .await
                        .with_context(|| format!("seeding batch {} of shard {shard}", n + 1))?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for task in tasks {
        task.await.context("a seeding task panicked")??;
    }
    Ok(())
}

/// Warm-up, the four phases, then the deep page's breakdown.
fn measure_phases(
    plan: &Plan,
    setup: &Setup<'_>,
    address: SocketAddr,
    store: &RedisStore,
    expected_top: &Arc<Vec<Ranked>>,
    expected_deep: &Arc<Vec<Ranked>>,
) -> anyhow::Result<(Vec<PhaseResult>, Breakdown)> {
    let offset = plan.deep_offset();
    let path = |which| match which {
        Which::Top => "/stats/".to_owned(),
        Which::Deep => format!("/stats/?offset={offset}&limit={PAGE}"),
    };
    let expected = |which| match which {
        Which::Top => Arc::clone(expected_top),
        Which::Deep => Arc::clone(expected_deep),
    };
    // Connections opened and first reads made on every node: not measured, still checked.
    for which in [Which::Top, Which::Deep] {
        let warm =
            setup
                .client_rt
                .block_on(drive(address, &path(which), &expected(which), 1, 2))?;
        if let Some(wrong) = &warm.first_wrong {
            eprintln!("load: /stats/ scale: warm-up answer wrong: {wrong}");
        }
    }

    let phases = [
        (Which::Top, 1, plan.top_sequential),
        (Which::Deep, 1, plan.deep_sequential),
        (Which::Top, CLIENTS, plan.top_per_client),
        (Which::Deep, CLIENTS, plan.deep_per_client),
    ];
    let mut results = Vec::with_capacity(phases.len());
    for (which, clients, per_client) in phases {
        let redis_before = node_work(setup.cluster)?;
        let cpu_before = CpuSnapshot::take(setup.redis_pids);
        let (answers, polls) = setup.client_rt.block_on(async {
            let (stop, stopped) = oneshot::channel();
            let poller = tokio::spawn(poll(address, stopped));
            let answers = drive(address, &path(which), &expected(which), clients, per_client).await;
            let _ = stop.send(());
            let polls = poller.await.context("the /health poller panicked")?;
            anyhow::Ok((answers?, polls))
        })?;
        let cpu = cpu_before.until(&CpuSnapshot::take(setup.redis_pids));
        let redis = redis_before
            .iter()
            .zip(&node_work(setup.cluster)?)
            .map(|(before, after)| before.until(after))
            .collect();
        let result = PhaseResult {
            which,
            clients,
            answers,
            polls,
            cpu,
            redis,
        };
        eprintln!(
            "load: /stats/ scale: {:<34} {} client(s)  p50 {:.2} ms  p99 {:.2} ms",
            result.phase_name(offset),
            clients,
            result.answers.ms(0.50),
            result.answers.ms(0.99)
        );
        results.push(result);
    }

    let breakdown = breakdown(
        setup,
        store,
        offset + PAGE,
        offset,
        plan.breakdown,
        expected_deep,
    )?;
    Ok((results, breakdown))
}

/// `clients` clients, each with its own connection, sending `per_client` requests for
/// `path` back to back and checking every `200` answer against `expected`.
async fn drive(
    address: SocketAddr,
    path: &str,
    expected: &Arc<Vec<Ranked>>,
    clients: usize,
    per_client: usize,
) -> anyhow::Result<Answers> {
    let url = format!("http://{address}{path}");
    let mut tasks = Vec::with_capacity(clients);
    for _ in 0..clients {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .context("cannot build a reqwest client")?;
        let (url, expected) = (url.clone(), Arc::clone(expected));
        tasks.push(tokio::spawn(async move {
            let mut answers = Answers::default();
            for _ in 0..per_client {
                request(&client, &url, &expected, &mut answers).await;
            }
            answers
        }));
    }
    let mut all = Answers::default();
    for task in tasks {
        all.merge(task.await.context("a /stats/ client panicked")?);
    }
    Ok(all)
}

/// One `/stats/` request: timed until its whole body is in, then checked.
async fn request(client: &reqwest::Client, url: &str, expected: &[Ranked], answers: &mut Answers) {
    let sent = Instant::now();
    let response = match client.get(url).send().await {
        Ok(response) => response,
        Err(_) => {
            answers.errors += 1;
            return;
        }
    };
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let Ok(body) = response.bytes().await else {
        answers.errors += 1;
        return;
    };
    let took = sent.elapsed();
    if status == reqwest::StatusCode::SERVICE_UNAVAILABLE {
        answers.overloaded += 1;
        let wait = retry_after.map_or(RETRY_AFTER_CAP, Duration::from_secs);
        tokio::time::sleep(wait.min(RETRY_AFTER_CAP)).await;
        return;
    }
    if !status.is_success() {
        answers.other_non_2xx += 1;
        return;
    }
    answers.ok += 1;
    answers.latencies.push(took);
    let problem = match serde_json::from_slice::<Vec<Ranked>>(&body) {
        Err(e) => Some(format!("{url}: not a ranking ({e})")),
        Ok(got) if got == expected => None,
        Ok(got) => Some(first_difference(url, &got, expected)),
    };
    if let Some(problem) = problem {
        answers.wrong += 1;
        answers.first_wrong.get_or_insert(problem);
    }
}

/// The first position where `got` and `expected` differ, for the report.
fn first_difference(url: &str, got: &[Ranked], expected: &[Ranked]) -> String {
    let at = got
        .iter()
        .zip(expected)
        .position(|(g, e)| g != e)
        .unwrap_or(got.len().min(expected.len()));
    format!(
        "{url}: {} entries (expected {}); entry {at} is {:?}, expected {:?}",
        got.len(),
        expected.len(),
        got.get(at),
        expected.get(at)
    )
}

/// `/health` and `/status` every [`POLL_EVERY`] until `stop`.
async fn poll(address: SocketAddr, mut stop: oneshot::Receiver<()>) -> Polls {
    #[derive(Deserialize)]
    struct Health {
        status: String,
    }
    #[derive(Deserialize)]
    struct Status {
        redis_status: RedisStatus,
        counter_status: Failing,
        stats_status: Failing,
    }
    #[derive(Deserialize)]
    struct RedisStatus {
        node_status: BTreeMap<String, bool>,
    }
    #[derive(Deserialize)]
    struct Failing {
        #[serde(default)]
        failing_nodes: BTreeMap<String, String>,
    }

    let mut polls = Polls::default();
    let Ok(client) = reqwest::Client::builder()
        .no_proxy()
        .timeout(POLL_TIMEOUT)
        .build()
    else {
        polls.status_failed += 1;
        return polls;
    };
    let (health_url, status_url) = (
        format!("http://{address}/health"),
        format!("http://{address}/status"),
    );
    let mut tick = tokio::time::interval(POLL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => {}
        }
        polls.health += 1;
        let healthy = match client.get(&health_url).send().await {
            Ok(response) if response.status().is_success() => response
                .json::<Health>()
                .await
                .is_ok_and(|h| h.status == "healthy"),
            _ => false,
        };
        if !healthy {
            polls.not_healthy += 1;
        }
        let status = match client.get(&status_url).send().await {
            Ok(response) => response.json::<Status>().await.ok(),
            Err(_) => None,
        };
        let Some(status) = status else {
            polls.status_failed += 1;
            continue;
        };
        let down: Vec<&String> = status
            .redis_status
            .node_status
            .iter()
            .filter(|&(_, &up)| !up)
            .map(|(node, _)| node)
            .collect();
        polls.max_down = polls.max_down.max(down.len());
        polls.down.extend(down.into_iter().cloned());
        polls.failing.extend(
            status
                .counter_status
                .failing_nodes
                .into_keys()
                .chain(status.stats_status.failing_nodes.into_keys()),
        );
    }
    polls
}

/// What each node has done since it started.
fn node_work(cluster: &RedisCluster) -> anyhow::Result<Vec<NodeWork>> {
    cluster
        .nodes()
        .iter()
        .map(|node| {
            let info: String = node
                .query(redis::cmd("INFO").arg("cpu"))
                .context("INFO cpu")?;
            let mut commands = node.info_commandstats().context("INFO commandstats")?;
            commands.remove("info");
            Ok(NodeWork {
                cpu: main_thread_cpu(&info),
                commands,
            })
        })
        .collect()
}

/// CPU time of a node's main thread from `INFO cpu` (`used_cpu_user_main_thread` plus
/// `used_cpu_sys_main_thread`, in seconds; the whole process's before Redis 6.2).
fn main_thread_cpu(info: &str) -> Duration {
    let field = |name: &str| {
        info.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|value| value.trim().parse::<f64>().ok())
    };
    let seconds = match (
        field("used_cpu_user_main_thread"),
        field("used_cpu_sys_main_thread"),
    ) {
        (Some(user), Some(sys)) => user + sys,
        _ => field("used_cpu_user").unwrap_or(0.0) + field("used_cpu_sys").unwrap_or(0.0),
    };
    Duration::from_secs_f64(seconds.max(0.0))
}

/// The deep page by the baseline method (every node's head, merged), timed part by part
/// from the harness (the
/// server idle): each node's `top(wanted)` alone (with the node's own CPU time), then
/// every node's at once, and the merge.
fn breakdown(
    setup: &Setup<'_>,
    store: &RedisStore,
    wanted: usize,
    offset: usize,
    reps: usize,
    expected: &[Ranked],
) -> anyhow::Result<Breakdown> {
    let shards = store.shard_count();
    let mut out = Breakdown {
        alone: vec![Vec::new(); shards],
        ..Breakdown::default()
    };
    let before = node_work(setup.cluster)?;
    setup.client_rt.block_on(async {
        for _ in 0..reps {
            for (shard, times) in out.alone.iter_mut().enumerate() {
                let started = Instant::now();
                store.top(shard, wanted).await.context("top, one node")?;
                times.push(started.elapsed());
            }
        }
        anyhow::Ok(())
    })?;
    out.alone_redis = before
        .iter()
        .zip(&node_work(setup.cluster)?)
        .map(|(before, after)| before.until(after))
        .collect();
    setup.client_rt.block_on(fetch_and_merge(
        store, wanted, offset, reps, expected, &mut out,
    ))?;
    Ok(out)
}

/// Every node's `top(wanted)` at once, then the merge, `reps` times, into `out`.
async fn fetch_and_merge(
    store: &RedisStore,
    wanted: usize,
    offset: usize,
    reps: usize,
    expected: &[Ranked],
    out: &mut Breakdown,
) -> anyhow::Result<()> {
    let shards = store.shard_count();
    for _ in 0..reps {
        let started = Instant::now();
        let tasks: Vec<_> = (0..shards)
            .map(|shard| {
                let store = store.clone();
                tokio::spawn(async move { store.top(shard, wanted).await })
            })
            .collect();
        let mut merged = Vec::new();
        for task in tasks {
            merged.extend(task.await.context("a top task panicked")??);
        }
        out.fetch.push(started.elapsed());
        out.entries = merged.len();
        out.url_bytes = merged.iter().map(|(url, _)| url.len()).sum();
        let started = Instant::now();
        merged.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let page: Vec<Ranked> = merged
            .into_iter()
            .skip(offset)
            .take(PAGE)
            .map(|(url, count)| Ranked { count, url })
            .collect();
        out.merge.push(started.elapsed());
        anyhow::ensure!(
            page == expected,
            "the store's own deep page differs from the seed: {}",
            first_difference("RedisStore::top", &page, expected)
        );
    }
    Ok(())
}

impl PhaseResult {
    fn phase_name(&self, offset: usize) -> String {
        match self.which {
            Which::Top => "top 100 (`GET /stats/`)".to_owned(),
            Which::Deep => format!("deep page (`?offset={offset}&limit={PAGE}`)"),
        }
    }
}

impl Report {
    /// True when every answer matched the seeded ranking and every phase got `200`s.
    pub fn passed(&self) -> bool {
        self.phases
            .iter()
            .all(|p| p.answers.wrong == 0 && p.answers.ok > 0)
    }

    /// The first wrong answer, for the error line.
    pub fn first_problem(&self) -> Option<String> {
        self.phases.iter().find_map(|p| {
            p.answers.first_wrong.clone().or_else(|| {
                (p.answers.ok == 0).then(|| {
                    format!(
                        "{} from {} client(s): no 200 answer",
                        p.phase_name(self.plan.deep_offset()),
                        p.clients
                    )
                })
            })
        })
    }

    /// The scenario's markdown section: setup, the table, the targets, the breakdown.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let offset = self.plan.deep_offset();
        let urls = thousands(self.plan.urls as u64);
        let _ = writeln!(out, "\n### `/stats/` at scale ({urls} URLs on 3 nodes)\n");
        let _ = writeln!(
            out,
            "- seeded {urls} distinct URLs (`/api/v1/shop/items/0/details/` ..., 29 to 52 bytes; URL i counts max(1, 1,000,000 / (i + 1))) with `RedisStore::apply_batch` in the sorted-set layout, {} keys a batch, each on its ring node, in {:.1} s; `ZCARD {URLS_KEY}` per node {} (sum checked); expected ranking computed from the seed in {:.2} s",
            thousands(SEED_BATCH as u64),
            self.seeding.as_secs_f64(),
            self.per_node
                .iter()
                .map(|n| thousands(*n))
                .collect::<Vec<_>>()
                .join(" / "),
            self.ranking.as_secs_f64()
        );
        let _ = writeln!(
            out,
            "- deep page: offset {}, limit {PAGE}: count {} there, shared by {} URLs (ties broken by url)",
            thousands(offset as u64),
            self.deep_ties.0,
            thousands(self.deep_ties.1 as u64)
        );
        let _ = writeln!(
            out,
            "- tally-server: default config, fresh start after seeding; client: reqwest, one keep-alive connection per client, requests back to back, timed until the whole body is in; every 200 answer checked entry by entry against the seed's ranking; a 503 waits its `Retry-After` (at most {} s); percentiles are of 200 answers; `/health` and `/status` polled every {} ms in every phase\n",
            RETRY_AFTER_CAP.as_secs(),
            POLL_EVERY.as_millis()
        );
        let _ = writeln!(
            out,
            "| URLs | phase | clients | requests | p50 ms | p90 ms | p99 ms | max ms | 503s | other non-2xx / errors | wrong answers | /health not healthy | nodes down | CPU % client / server / redis / softirq / other | Redis CPU ms per answer, per node | Redis commands per answer, all nodes |"
        );
        let _ = writeln!(
            out,
            "|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|---|---|---|"
        );
        for p in &self.phases {
            let a = &p.answers;
            let down = if p.polls.down.is_empty() && p.polls.failing.is_empty() {
                "0".to_owned()
            } else {
                let mut names: BTreeSet<&String> = p.polls.down.iter().collect();
                names.extend(&p.polls.failing);
                format!(
                    "{} ({})",
                    p.polls.max_down,
                    names.into_iter().cloned().collect::<Vec<_>>().join(", ")
                )
            };
            let _ = writeln!(
                out,
                "| {urls} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} / {} | {} | {} of {}{} | {down} | {:.0} / {:.0} / {:.0} / {:.0} / {:.0} | {} | {} |",
                p.phase_name(offset),
                p.clients,
                a.requests(),
                a.ms(0.50),
                a.ms(0.90),
                a.ms(0.99),
                a.ms(1.0),
                a.overloaded,
                a.other_non_2xx,
                a.errors,
                a.wrong,
                p.polls.not_healthy,
                p.polls.health,
                if p.polls.status_failed > 0 {
                    format!(" ({} /status unanswered)", p.polls.status_failed)
                } else {
                    String::new()
                },
                p.cpu.client,
                p.cpu.server,
                p.cpu.redis,
                p.cpu.softirq,
                p.cpu.other,
                per_node(&p.redis, |w| format!("{:.1}", w.cpu_ms_per(a.ok))),
                commands_per(&p.redis, a.ok),
            );
        }
        let _ = writeln!(
            out,
            "\noriginal (Flask, 10,000 URLs, measured): p50 {ORIGINAL_P50_MS} ms"
        );

        let find = |which, clients| {
            self.phases
                .iter()
                .find(|p| p.which == which && p.clients == clients)
        };
        let _ = writeln!(out, "\n#### Targets\n");
        if self.plan.urls != DEFAULT_URLS {
            let _ = writeln!(
                out,
                "(the targets are set for {} URLs; this run has {urls})\n",
                thousands(DEFAULT_URLS as u64)
            );
        }
        let _ = writeln!(out, "| figure | value | target | met |");
        let _ = writeln!(out, "|---|--:|--:|:-:|");
        let verdict = |met: bool| if met { "yes" } else { "**no**" };
        if let Some(p) = find(Which::Top, 1) {
            let v = p.answers.ms(0.50);
            let _ = writeln!(
                out,
                "| top 100, p50 ms (1 client) | {v:.2} | <= {TOP_P50_TARGET_MS} | {} |",
                verdict(v <= TOP_P50_TARGET_MS)
            );
        }
        if let Some(p) = find(Which::Deep, 1) {
            let v = p.answers.ms(0.50);
            let _ = writeln!(
                out,
                "| deep page, p50 ms (1 client) | {v:.2} | <= {DEEP_P50_TARGET_MS} | {} |",
                verdict(v <= DEEP_P50_TARGET_MS)
            );
        }
        if let Some(p) = find(Which::Deep, CLIENTS) {
            let bad = p.polls.max_down + p.polls.failing.len() + p.polls.not_healthy as usize;
            let _ = writeln!(
                out,
                "| {CLIENTS} concurrent deep clients: nodes seen down / failing, /health not healthy | {} / {}, {} | 0 | {} |",
                p.polls.max_down,
                p.polls.failing.len(),
                p.polls.not_healthy,
                verdict(bad == 0)
            );
        }

        let b = &self.breakdown;
        if !b.fetch.is_empty() {
            let _ = writeln!(
                out,
                "\n#### Deep page against the baseline: every node's head merged, the method before the read around the page's counts (p50 of {} runs from the harness, the server idle)\n",
                b.fetch.len()
            );
            let _ = writeln!(out, "| part | p50 ms |");
            let _ = writeln!(out, "|---|--:|");
            if let Some(p) = find(Which::Deep, 1) {
                let _ = writeln!(
                    out,
                    "| tally-server: `GET /stats/?offset={offset}&limit={PAGE}` over HTTP (table above) | {:.2} |",
                    p.answers.ms(0.50)
                );
                let _ = writeln!(
                    out,
                    "| Redis CPU per answer during those requests, per node (`INFO cpu`, main thread; the nodes work at once) | {} |",
                    per_node(&p.redis, |w| format!("{:.1}", w.cpu_ms_per(p.answers.ok)))
                );
            }
            let _ = writeln!(
                out,
                "| `RedisStore::top(shard, {})` on every node at once: Redis, transfer, parsing, per-node sort ({} entries, {:.1} MB of urls) | {:.2} |",
                thousands((offset + PAGE) as u64),
                thousands(b.entries as u64),
                b.url_bytes as f64 / 1e6,
                median_ms(&b.fetch)
            );
            for (shard, times) in b.alone.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "| the same on node {shard} alone (of which Redis CPU: {:.1} ms, the mean; commands: {}) | {:.2} |",
                    b.alone_redis
                        .get(shard)
                        .map_or(f64::NAN, |w| w.cpu_ms_per(b.alone[shard].len() as u64)),
                    b.alone_redis.get(shard).map_or(String::new(), |w| {
                        commands_per(std::slice::from_ref(w), b.alone[shard].len() as u64)
                    }),
                    median_ms(times)
                );
            }
            let _ = writeln!(
                out,
                "| merge: sort the {} entries, cut the page | {:.2} |",
                thousands(b.entries as u64),
                median_ms(&b.merge)
            );
        }
        out
    }
}

/// One figure per node, `a / b / c`.
fn per_node(nodes: &[NodeWork], figure: impl Fn(&NodeWork) -> String) -> String {
    nodes.iter().map(figure).collect::<Vec<_>>().join(" / ")
}

/// Commands per answer summed over `nodes`: the total, then the three most frequent.
fn commands_per(nodes: &[NodeWork], answers: u64) -> String {
    let mut total = CommandCounts::new();
    for node in nodes {
        for (name, calls) in &node.commands {
            *total.entry(name.clone()).or_default() += calls;
        }
    }
    let per = |calls: u64| calls as f64 / answers.max(1) as f64;
    let mut by_calls: Vec<_> = total.iter().collect();
    by_calls.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let top: Vec<String> = by_calls
        .iter()
        .take(3)
        .map(|&(name, &calls)| format!("{name} {:.2}", per(calls)))
        .collect();
    format!("{:.2} ({})", per(total.values().sum()), top.join(", "))
}

/// Median of `times`, in ms.
fn median_ms(times: &[Duration]) -> f64 {
    let mut sorted = times.to_vec();
    sorted.sort_unstable();
    sorted
        .get(sorted.len() / 2)
        .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
}

/// `n` with a comma every three digits.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_urls_are_distinct_api_paths_of_29_to_52_bytes() {
        let urls: BTreeSet<String> = (0..100_000).map(seed_url).collect();
        assert_eq!(urls.len(), 100_000);
        for url in [seed_url(0), seed_url(999_999), seed_url(4)] {
            assert!(url.starts_with("/api/") && url.ends_with('/'), "{url}");
            assert!((29..=52).contains(&url.len()), "{url}: {}", url.len());
        }
    }

    #[test]
    fn counts_fall_and_tie_at_the_deep_page() {
        assert_eq!(seed_count(0), 1_000_000);
        assert_eq!(seed_count(999_999), 1);
        assert_eq!(seed_count(100_000), seed_count(100_099));
    }

    #[test]
    fn the_deep_page_is_the_last_full_page_of_small_sets() {
        assert_eq!(Plan::new(1_000_000, false).deep_offset(), 100_000);
        assert_eq!(Plan::new(100_000, true).deep_offset(), 99_900);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let answers = Answers {
            latencies: (1..=100).map(Duration::from_millis).collect(),
            ..Answers::default()
        };
        assert_eq!(answers.ms(0.50), 50.0);
        assert_eq!(answers.ms(0.99), 99.0);
        assert_eq!(answers.ms(1.0), 100.0);
    }

    #[test]
    fn main_thread_cpu_is_read_from_info_cpu() {
        let info = "# CPU\r\nused_cpu_sys:1.5\r\nused_cpu_user:2.0\r\nused_cpu_sys_main_thread:0.25\r\nused_cpu_user_main_thread:1.00\r\n";
        assert_eq!(main_thread_cpu(info), Duration::from_millis(1250));
        let old = "used_cpu_sys:1.5\r\nused_cpu_user:2.0\r\n";
        assert_eq!(main_thread_cpu(old), Duration::from_millis(3500));
    }

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000_000), "1,000,000");
    }
}
