//! load: the HTTP load harness. Starts three redis-server nodes and each server under
//! test on 127.0.0.1, drives it with a lean keep-alive client, and prints markdown tables:
//! throughput, latency, Redis commands per 1,000 requests and CPU use per party, with the
//! ratios against the `floor` and `naive` targets of the same run and the issue's targets.
//!
//! ```text
//! cargo run -p tally-benches --release --bin load                 # the full run
//! cargo run -p tally-benches --bin load -- --quick                # CI: a few s per target
//! cargo run -p tally-benches --release --bin load -- --targets floor,tally-redis \
//!     --duration 20 --connections 32 --markdown load.md
//! cargo run -p tally-benches --release --bin load -- --only stats   # /stats/ at 1M URLs
//! ```
//!
//! Targets: `floor` (bare actix-web JSON handler), `naive` (one `INCR` per visit through
//! deadpool-redis), `naive-mux` (one `INCR` per visit on a shared multiplexed connection per
//! node), `tally-embedded`, `tally-redis` (three nodes). Every server gets a fresh start
//! per scenario. For each scenario: a warm-up, a closed-loop phase (every connection sends
//! as soon as it has its answer: the maximum rate), then a paced phase at a fraction (50%)
//! of that rate (open loop, latency timed from the schedule) for the p99 target.
//!
//! Then, when `tally-redis` is among the targets, the `/stats/` scale scenario
//! (`src/load/stats_scale.rs`): the three nodes flushed and filled with `--stats-urls`
//! distinct URLs (default 1,000,000; 100,000 with `--quick`) through tally-redis's write
//! path, then `GET /stats/` (top 100) and `GET /stats/?offset=100000&limit=100` timed from
//! one client and from 8 at once, every answer checked against the ranking computed from
//! the seed, `/health` and `/status` polled throughout. `--only stats` runs nothing else.
//!
//! Arrangement, the same for every target so ratios are fair: the servers run on their
//! own threads (actix-web's workers, default count, plus a multi-threaded tokio runtime as
//! tally-server's `main` builds), the client on another tokio runtime (`--client-threads`,
//! default 1), all in this process; redis-server nodes are child processes. The client is
//! the harness's own (see `src/load/client.rs` for why not reqwest), and its CPU use is shown.
//!
//! Side measurements per phase: Redis commands from `INFO commandstats` before and after,
//! summed over the nodes (commands run inside tally's Lua script count, as Redis counts
//! them); CPU time of the client threads, the server threads, the redis-servers, softirq
//! (loopback networking, charged to no process) and everything else on the machine. A
//! busy neighbour skews every figure on a 2-core machine, so in a full run each scenario
//! first waits (up to `--quiet-wait`) for other processes to go quiet, is run again (up
//! to `--retries`) when they used over a quarter of a core during it, and the `other` CPU
//! column shows how quiet the attempt reported stayed.
//!
//! Everything is bounded: phases by time, the whole run by a watchdog; Ctrl-C, SIGTERM and
//! the watchdog kill the redis-server children before exiting. Exit code 1 when a phase got
//! no 2xx answer at all or a `/stats/` answer did not match the seeded ranking (the CI
//! check); targets missed are reported, not failed.

#[path = "../load/client.rs"]
mod client;
#[path = "../load/measure.rs"]
mod measure;
#[path = "../load/stats_scale.rs"]
mod stats_scale;
#[path = "../load/targets.rs"]
mod targets;

use std::fmt::Write as _;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tally_testkit::RedisCluster;

use crate::client::{Conn, Outcome, Pace, Paths, Phase, Workload};
use crate::measure::{CommandCounts, CpuSnapshot, CpuUse};
use crate::targets::Kind;

const USAGE: &str = "\
usage: load [--quick] [--duration SECS] [--warmup SECS] [--connections N]
            [--client-threads N] [--targets LIST] [--markdown PATH] [--compare-clients]
            [--server-logs on|off] [--server-metrics on|off] [--quiet-wait SECS]
            [--retries N] [--rounds N] [--paced-fraction F] [--timeline]
            [--stats-urls N] [--only stats]

  --quick            1 s warm-up, 2 s closed loop, 1 s paced (CI: keeps the harness
                     working; the figures are printed, not checked)
  --duration SECS    length of each measured phase (default 10)
  --warmup SECS      warm-up before each scenario's first phase (default 2)
  --connections N    keep-alive connections (default 64)
  --client-threads N tokio worker threads of the load client (default 1)
  --targets LIST     comma-separated, of floor,naive,naive-mux,tally-embedded,tally-redis
                     (default: all; ratios need floor and naive)
  --markdown PATH    also write the tables to PATH
  --compare-clients  also drive the floor with reqwest, to show what the harness's own
                     client saves
  --server-logs on|off     tally-server's log subscriber (default on, level info, to a
                           file): off measures what its per-request span costs
  --server-metrics on|off  tally-server's Prometheus recorder (ENABLE_METRICS, default on)
  --quiet-wait SECS  before each scenario, wait up to SECS for other processes to use
                     under 10% of a core (default 30; 0 with --quick; 0 = do not wait)
  --retries N        run a scenario again, up to N times, when other processes used over
                     25% of a core during it; the quietest attempt is reported
                     (default 2; 0 with --quick)
  --rounds N         run every scenario N times, targets interleaved, and report per
                     scenario the round with the median closed-loop rate (default 1)
  --paced-fraction F the paced phase's rate as a fraction of the closed-loop rate
                     (default 0.5, the issue's p99 target)
  --timeline         print on stderr, per phase, the 100 ms windows whose slowest answer
                     took over 5 ms (where a latency tail comes from)
  --stats-urls N     URLs seeded for the /stats/ scale scenario, which runs after the
                     others when tally-redis is a target (default 1000000; 100000 with
                     --quick; 1000 to 10000000)
  --only stats       run only the /stats/ scale scenario (3 nodes, tally-redis)";

/// Pages of the hot set.
const HOT_PAGES: u64 = 100;
/// Pages of the cold set.
const COLD_PAGES: u64 = 1_000_000;
/// The paced phase offers this fraction of the closed-loop rate (issue 9: p99 at half of
/// the maximum rate), unless `--paced-fraction` says otherwise.
const PACED_FRACTION: f64 = 0.5;
/// A scenario during which other processes used more than this (% of one core) is run
/// again, up to `--retries` times; the quietest attempt is reported.
const NOISY: f64 = 25.0;
/// Time requests still in flight at a phase's end get to finish.
const GRACE: Duration = Duration::from_secs(5);

/// redis-server children, to kill on Ctrl-C, SIGTERM or the watchdog.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

#[derive(Clone, Debug)]
struct Options {
    quick: bool,
    duration: Duration,
    warmup: Duration,
    connections: usize,
    client_threads: usize,
    targets: Vec<Kind>,
    markdown: Option<std::path::PathBuf>,
    compare_clients: bool,
    server_logs: bool,
    server_metrics: bool,
    timeline: bool,
    quiet_wait: Duration,
    /// Length of the paced phase: `duration`, but 1 s with `--quick`.
    paced: Duration,
    retries: u32,
    paced_fraction: f64,
    rounds: usize,
    /// URLs of the `/stats/` scale scenario.
    stats_urls: usize,
    /// `--only stats`: the `/stats/` scale scenario and nothing else.
    only_stats: bool,
}

impl Options {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Self, String> {
        let (mut quick, mut duration, mut warmup, mut quiet_wait, mut retries) =
            (false, None, None, None, None);
        let mut stats_urls = None;
        let mut options = Options {
            quick: false,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(2),
            connections: 64,
            client_threads: 1,
            targets: Kind::ALL.to_vec(),
            markdown: None,
            compare_clients: false,
            server_logs: true,
            server_metrics: true,
            timeline: false,
            quiet_wait: Duration::from_secs(30),
            paced: Duration::ZERO,
            retries: 2,
            paced_fraction: PACED_FRACTION,
            rounds: 1,
            stats_urls: stats_scale::DEFAULT_URLS,
            only_stats: false,
        };
        while let Some(arg) = args.next() {
            let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
            match arg.as_str() {
                "--quick" => quick = true,
                "--duration" => duration = Some(seconds("--duration", &value("--duration")?)?),
                "--warmup" => warmup = Some(seconds("--warmup", &value("--warmup")?)?),
                "--connections" => {
                    options.connections = count("--connections", &value("--connections")?)?;
                }
                "--client-threads" => {
                    options.client_threads =
                        count("--client-threads", &value("--client-threads")?)?;
                }
                "--targets" => {
                    let list = value("--targets")?;
                    options.targets = list
                        .split(',')
                        .map(|name| {
                            Kind::ALL
                                .into_iter()
                                .find(|kind| kind.name() == name.trim())
                                .ok_or(format!("unknown target {name:?}"))
                        })
                        .collect::<Result<_, _>>()?;
                    options.targets.sort();
                    options.targets.dedup();
                }
                "--markdown" => options.markdown = Some(value("--markdown")?.into()),
                "--compare-clients" => options.compare_clients = true,
                "--timeline" => options.timeline = true,
                "--rounds" => options.rounds = count("--rounds", &value("--rounds")?)?,
                "--paced-fraction" => {
                    let f = value("--paced-fraction")?;
                    options.paced_fraction = f
                        .parse::<f64>()
                        .ok()
                        .filter(|f| *f > 0.0 && *f <= 1.0)
                        .ok_or(format!(
                            "--paced-fraction {f:?}: expected above 0, at most 1"
                        ))?;
                }
                "--retries" => {
                    let n = value("--retries")?;
                    retries = Some(
                        n.parse::<u32>()
                            .ok()
                            .filter(|n| *n <= 10)
                            .ok_or(format!("--retries {n:?}: expected 0 to 10"))?,
                    );
                }
                "--quiet-wait" => {
                    let secs = value("--quiet-wait")?;
                    quiet_wait = Some(if secs == "0" {
                        Duration::ZERO
                    } else {
                        seconds("--quiet-wait", &secs)?
                    });
                }
                "--server-logs" => {
                    options.server_logs = on_off("--server-logs", &value("--server-logs")?)?
                }
                "--server-metrics" => {
                    options.server_metrics =
                        on_off("--server-metrics", &value("--server-metrics")?)?;
                }
                "--stats-urls" => {
                    let n = value("--stats-urls")?;
                    stats_urls = Some(
                        n.replace('_', "")
                            .parse::<usize>()
                            .ok()
                            .filter(|n| (1_000..=10_000_000).contains(n))
                            .ok_or(format!(
                                "--stats-urls {n:?}: expected a number from 1000 to 10000000"
                            ))?,
                    );
                }
                "--only" => match value("--only")?.as_str() {
                    "stats" => options.only_stats = true,
                    other => return Err(format!("--only {other:?}: expected stats")),
                },
                "-h" | "--help" => return Err(String::new()),
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        options.quick = quick;
        if quick {
            options.duration = Duration::from_secs(2);
            options.warmup = Duration::from_secs(1);
            options.quiet_wait = Duration::ZERO;
            options.retries = 0;
            options.stats_urls = stats_scale::QUICK_URLS;
        }
        options.stats_urls = stats_urls.unwrap_or(options.stats_urls);
        options.retries = retries.unwrap_or(options.retries);
        options.quiet_wait = quiet_wait.unwrap_or(options.quiet_wait);
        options.paced = if quick && duration.is_none() {
            Duration::from_secs(1)
        } else {
            options.duration
        };
        options.duration = duration.unwrap_or(options.duration);
        options.warmup = warmup.unwrap_or(options.warmup);
        Ok(options)
    }

    /// The `/stats/` scale scenario's plan, when it runs: with `--only stats`, or after the
    /// others when tally-redis is a target.
    fn stats_plan(&self) -> Option<stats_scale::Plan> {
        (self.only_stats || self.targets.contains(&Kind::TallyRedis))
            .then(|| stats_scale::Plan::new(self.stats_urls, self.quick))
    }

    /// The load scenarios run (none with `--only stats`).
    fn plan(&self) -> Vec<(Kind, Load)> {
        if self.only_stats {
            Vec::new()
        } else {
            scenarios(&self.targets)
        }
    }

    /// Longest the whole run can rightly take; the watchdog stops it past twice this.
    fn budget(&self, scenarios: usize) -> Duration {
        let per_scenario = self.warmup
            + self.duration
            + self.paced
            + GRACE * 3
            + self.quiet_wait
            + Duration::from_secs(45);
        per_scenario * scenarios as u32 * (self.retries + 1) * self.rounds as u32
            + self
                .stats_plan()
                .map_or(Duration::ZERO, |p| p.budget() + self.quiet_wait)
            + Duration::from_secs(30)
    }
}

fn seconds(name: &str, value: &str) -> Result<Duration, String> {
    value
        .parse::<f64>()
        .ok()
        .filter(|s| *s > 0.0 && *s <= 3600.0)
        .map(Duration::from_secs_f64)
        .ok_or(format!(
            "{name} {value:?}: expected seconds above 0, at most 3600"
        ))
}

fn on_off(name: &str, value: &str) -> Result<bool, String> {
    match value {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("{name} {value:?}: expected on or off")),
    }
}

fn count(name: &str, value: &str) -> Result<usize, String> {
    value
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=10_000).contains(n))
        .ok_or(format!(
            "{name} {value:?}: expected a number from 1 to 10000"
        ))
}

/// What a scenario sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Load {
    VisitHot,
    VisitCold,
    CountHot,
    ApiPath,
    Health,
}

impl Load {
    fn name(self) -> &'static str {
        match self {
            Load::VisitHot => "POST visit, hot 100",
            Load::VisitCold => "POST visit, cold 1M",
            Load::CountHot => "GET count, hot 100",
            Load::ApiPath => "GET /api/x/y/ (stats on)",
            Load::Health => "GET /health (not counted)",
        }
    }

    fn workload(self) -> Workload {
        let (method, paths) = match self {
            Load::VisitHot => (
                "POST",
                Paths::Numbered {
                    prefix: "/api/v1/counter/visit/page",
                    count: HOT_PAGES,
                },
            ),
            Load::VisitCold => (
                "POST",
                Paths::Numbered {
                    prefix: "/api/v1/counter/visit/page",
                    count: COLD_PAGES,
                },
            ),
            Load::CountHot => (
                "GET",
                Paths::Numbered {
                    prefix: "/api/v1/counter/visits/page",
                    count: HOT_PAGES,
                },
            ),
            Load::ApiPath => ("GET", Paths::Fixed("/api/x/y/")),
            Load::Health => ("GET", Paths::Fixed("/health")),
        };
        Workload { method, paths }
    }

    fn is_visit(self) -> bool {
        matches!(self, Load::VisitHot | Load::VisitCold)
    }
}

/// The scenarios of each target, in run order.
fn scenarios(targets: &[Kind]) -> Vec<(Kind, Load)> {
    targets
        .iter()
        .flat_map(|&kind| {
            let loads: &[Load] = match kind {
                Kind::Floor => &[Load::VisitHot, Load::CountHot],
                Kind::Naive | Kind::NaiveMux | Kind::TallyEmbedded => &[Load::VisitHot],
                Kind::TallyRedis => &[
                    Load::VisitHot,
                    Load::VisitCold,
                    Load::CountHot,
                    Load::ApiPath,
                    Load::Health,
                ],
            };
            loads.iter().map(move |&load| (kind, load))
        })
        .collect()
}

/// One measured phase.
#[derive(Clone, Debug)]
struct Measured {
    outcome: Outcome,
    commands: CommandCounts,
    cpu: CpuUse,
    /// Paced phases: the rate offered.
    offered: Option<f64>,
}

impl Measured {
    fn commands_per_1k(&self) -> f64 {
        let total: u64 = self.commands.values().sum();
        total as f64 * 1000.0 / self.outcome.answered().max(1) as f64
    }
}

#[derive(Clone, Debug)]
struct Row {
    kind: Kind,
    load: Load,
    max: Measured,
    paced: Option<Measured>,
}

impl Row {
    /// CPU other processes used during the scenario's phases (% of a core, the worse).
    fn noise(&self) -> f64 {
        let paced = self.paced.as_ref().map_or(0.0, |m| m.cpu.other);
        self.max.cpu.other.max(paced)
    }
}

fn main() -> ExitCode {
    let options = match Options::parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(problem) => {
            if problem.is_empty() {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            eprintln!("load: {problem}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&options) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("load: {e:#}");
            kill_children();
            ExitCode::FAILURE
        }
    }
}

/// Runs every scenario and prints the report; `Ok(false)` when a phase got no 2xx at all
/// or a `/stats/` answer was wrong.
fn run(options: &Options) -> anyhow::Result<bool> {
    let plan = options.plan();
    let stats_plan = options.stats_plan();
    let started = Instant::now();
    start_watchdog(options.budget(plan.len()) * 2);
    let log_path = std::env::temp_dir().join(format!("tally-load-{}.log", std::process::id()));
    if options.server_logs {
        init_server_logs(&log_path)?;
    }

    // As tally-server's `main`: a multi-threaded runtime with the default worker count.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("server-rt")
        .build()
        .context("cannot build the server runtime")?;
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(options.client_threads)
        .enable_all()
        .thread_name(measure::CLIENT_THREAD)
        .build()
        .context("cannot build the client runtime")?;
    server_rt.spawn(stop_on_signal());

    let needs_redis = plan.iter().any(|(kind, _)| kind.uses_redis()) || stats_plan.is_some();
    let cluster = if needs_redis {
        let cluster = RedisCluster::start(3).context("cannot start 3 redis-server nodes")?;
        let mut children = CHILDREN.lock().unwrap_or_else(|e| e.into_inner());
        children.extend(cluster.nodes().iter().filter_map(|n| n.pid()));
        Some(cluster)
    } else {
        None
    };
    let redis_urls: Vec<String> = cluster
        .iter()
        .flat_map(|c| c.nodes().iter().map(|n| n.url()))
        .collect();
    let redis_pids: Vec<u32> = cluster
        .iter()
        .flat_map(|c| c.nodes().iter().filter_map(|n| n.pid()))
        .collect();

    let load_before = measure::load_average();
    eprintln!(
        "load: {} scenarios, ~{} s{}; server logs in {}",
        plan.len(),
        (options.warmup + options.duration + options.paced)
            .as_secs_f64()
            .ceil() as u64
            * plan.len() as u64
            * options.rounds as u64,
        stats_plan.map_or(String::new(), |p| format!(
            ", then /stats/ at {} URLs",
            p.urls
        )),
        log_path.display()
    );
    // Round r holds every scenario's r-th measurement; rounds interleave the targets so a
    // slow minute of the machine does not land on one target only.
    let mut rounds: Vec<Vec<Row>> = Vec::with_capacity(options.rounds);
    let mut all_answered = true;
    for round in 0..options.rounds {
        if options.rounds > 1 {
            eprintln!("load: round {} of {}", round + 1, options.rounds);
        }
        let mut rows = Vec::with_capacity(plan.len());
        for &(kind, load) in &plan {
            let mut best: Option<Row> = None;
            for attempt in 0..=options.retries {
                let row = run_scenario(
                    options,
                    kind,
                    load,
                    &server_rt,
                    &client_rt,
                    cluster.as_ref(),
                    &redis_urls,
                    &redis_pids,
                )
                .with_context(|| format!("{kind} / {}", load.name()))?;
                let noise = row.noise();
                if best.as_ref().is_none_or(|b| noise < b.noise()) {
                    best = Some(row);
                }
                if noise <= NOISY {
                    break;
                }
                if attempt < options.retries {
                    eprintln!(
                        "load: other processes used {noise:.0}% of a core during that scenario; running it again"
                    );
                }
            }
            let row = best.expect("at least one attempt");
            all_answered &= row.max.outcome.ok > 0;
            rows.push(row);
        }
        rounds.push(rows);
    }
    // Per scenario, the round with the median closed-loop rate (the whole row of that
    // round, so its figures stay consistent with each other).
    let rows: Vec<Row> = (0..plan.len())
        .map(|i| {
            let mut runs: Vec<&Row> = rounds.iter().map(|round| &round[i]).collect();
            runs.sort_by(|a, b| {
                a.max
                    .outcome
                    .throughput()
                    .total_cmp(&b.max.outcome.throughput())
            });
            runs[runs.len() / 2].clone()
        })
        .collect();
    let comparison = if options.compare_clients {
        Some(compare_clients(options, &server_rt, &client_rt)?)
    } else {
        None
    };
    let stats = match (stats_plan, &cluster) {
        (Some(plan), Some(cluster)) => {
            let setup = stats_scale::Setup {
                server_rt: &server_rt,
                client_rt: &client_rt,
                cluster,
                redis_urls: &redis_urls,
                redis_pids: &redis_pids,
                metrics: options.server_metrics,
                quiet_wait: options.quiet_wait,
            };
            Some(stats_scale::run(&plan, &setup).context("/stats/ at scale")?)
        }
        _ => None,
    };
    let mut report = if plan.is_empty() {
        render_header(
            &load_before,
            started.elapsed(),
            &format!(
                "; {} build; 3 local redis-server nodes (no persistence); server and client in this process, on their own tokio runtimes",
                build_profile()
            ),
        )
    } else {
        render(options, &rows, &load_before, started.elapsed())
    };
    report.extend(comparison);
    report.extend(stats.as_ref().map(stats_scale::Report::render));
    print!("{report}");
    if let Some(path) = &options.markdown {
        std::fs::write(path, &report)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    client_rt.shutdown_timeout(Duration::from_secs(1));
    server_rt.shutdown_timeout(Duration::from_secs(1));
    drop(cluster);
    if !all_answered {
        eprintln!("load: a target answered no request with 2xx");
    }
    let stats_passed = stats.as_ref().is_none_or(stats_scale::Report::passed);
    if let Some(problem) = stats.as_ref().and_then(stats_scale::Report::first_problem) {
        eprintln!("load: /stats/ at scale: {problem}");
    }
    Ok(all_answered && stats_passed)
}

#[allow(clippy::too_many_arguments)]
fn run_scenario(
    options: &Options,
    kind: Kind,
    load: Load,
    server_rt: &tokio::runtime::Runtime,
    client_rt: &tokio::runtime::Runtime,
    cluster: Option<&RedisCluster>,
    redis_urls: &[String],
    redis_pids: &[u32],
) -> anyhow::Result<Row> {
    if let Some(cluster) = cluster {
        for node in cluster.nodes() {
            node.query::<()>(&redis::cmd("FLUSHALL"))?;
        }
    }
    if !options.quiet_wait.is_zero() {
        let other = measure::wait_for_quiet(redis_pids, options.quiet_wait);
        if other >= 10.0 {
            eprintln!(
                "load: other processes still use {other:.0}% of a core after {:?}; measuring anyway",
                options.quiet_wait
            );
        }
    }
    let server = server_rt.block_on(targets::start(kind, redis_urls, options.server_metrics))?;
    let conns = client_rt
        .block_on(client::connect_all(server.address, options.connections))
        .context("cannot connect to the server")?;
    let workload = load.workload();
    let closed = |duration| Phase {
        workload: workload.clone(),
        pace: Pace::Max,
        duration,
        grace: GRACE,
    };

    let (conns, _) = client_rt.block_on(client::drive(conns, &closed(options.warmup)));
    let (conns, max) = measured_phase(
        client_rt,
        conns,
        &closed(options.duration),
        cluster,
        redis_pids,
    )?;
    report_phase(options, kind, load, &max.outcome, "");
    let mut paced = None;
    if max.outcome.ok > 0 {
        let rate = max.outcome.throughput() * options.paced_fraction;
        let phase = Phase {
            workload: workload.clone(),
            pace: Pace::Rate(rate),
            duration: options.paced,
            grace: GRACE,
        };
        let (_, mut measured) = measured_phase(client_rt, conns, &phase, cluster, redis_pids)?;
        measured.offered = Some(rate);
        report_phase(options, kind, load, &measured.outcome, " (paced)");
        paced = Some(measured);
    } else {
        drop(conns);
    }
    server_rt.block_on(server.stop())?;
    Ok(Row {
        kind,
        load,
        max,
        paced,
    })
}

/// Drives the floor (POST visit, hot set) with this harness's client, then with reqwest,
/// and renders what each cost the client.
fn compare_clients(
    options: &Options,
    server_rt: &tokio::runtime::Runtime,
    client_rt: &tokio::runtime::Runtime,
) -> anyhow::Result<String> {
    if !options.quiet_wait.is_zero() {
        measure::wait_for_quiet(&[], options.quiet_wait);
    }
    let server = server_rt.block_on(targets::start(Kind::Floor, &[], options.server_metrics))?;
    let workload = Load::VisitHot.workload();
    let phase = |duration| Phase {
        workload: workload.clone(),
        pace: Pace::Max,
        duration,
        grace: GRACE,
    };
    let conns = client_rt.block_on(client::connect_all(server.address, options.connections))?;
    let (conns, _) = client_rt.block_on(client::drive(conns, &phase(options.warmup)));
    let (conns, ours) = measured_phase(client_rt, conns, &phase(options.duration), None, &[])?;
    drop(conns);
    let reqwest =
        |duration| client::drive_reqwest(server.address, options.connections, &workload, duration);
    client_rt.block_on(reqwest(options.warmup));
    let before = CpuSnapshot::take(&[]);
    let outcome = client_rt.block_on(reqwest(options.duration));
    let theirs = Measured {
        outcome,
        commands: CommandCounts::new(),
        cpu: before.until(&CpuSnapshot::take(&[])),
        offered: None,
    };
    server_rt.block_on(server.stop())?;

    let mut out = String::new();
    let _ = writeln!(out, "\n### Load client cost (floor, POST visit, hot 100)\n");
    let _ = writeln!(
        out,
        "| client | req/s | p99 ms | CPU % client / server / redis / softirq / other | client CPU µs per request |"
    );
    let _ = writeln!(out, "|---|--:|--:|---|--:|");
    for (name, m) in [("harness (raw HTTP/1.1)", &ours), ("reqwest 0.12", &theirs)] {
        let rate = m.outcome.throughput();
        let _ = writeln!(
            out,
            "| {name} | {rate:.0} | {:.3} | {} | {:.1} |",
            m.outcome.latency_ms(0.99),
            cpu(&m.cpu),
            m.cpu.client / 100.0 * 1e6 / rate.max(1.0),
        );
    }
    Ok(out)
}

/// A phase's progress line on stderr (`suffix` tells the paced phase), then its slow
/// windows with `--timeline`.
fn report_phase(options: &Options, kind: Kind, load: Load, outcome: &Outcome, suffix: &str) {
    eprintln!(
        "load: {kind:<14} {:<26} {:>9.0} req/s  p99 {:.2} ms{suffix}",
        load.name(),
        outcome.throughput(),
        outcome.latency_ms(0.99)
    );
    if options.timeline {
        print_timeline(outcome);
    }
}

/// The 100 ms windows of a phase whose slowest answer took over 5 ms, on stderr.
fn print_timeline(outcome: &Outcome) {
    let slow: Vec<String> = outcome
        .timeline
        .iter()
        .enumerate()
        .filter(|&(_, &max)| max > 5_000_000)
        .map(|(i, &max)| {
            let at = client::TIMELINE_BUCKET.as_secs_f64() * i as f64;
            format!("{at:.1}s:{:.0}ms", max as f64 / 1e6)
        })
        .collect();
    eprintln!("load:   windows over 5 ms: [{}]", slow.join(" "));
}

/// Runs `phase` with commands and CPU read before and after.
fn measured_phase(
    client_rt: &tokio::runtime::Runtime,
    conns: Vec<Conn>,
    phase: &Phase,
    cluster: Option<&RedisCluster>,
    redis_pids: &[u32],
) -> anyhow::Result<(Vec<Conn>, Measured)> {
    let commands_before = match cluster {
        Some(cluster) => measure::command_counts(cluster)?,
        None => CommandCounts::new(),
    };
    let cpu_before = CpuSnapshot::take(redis_pids);
    let (conns, outcome) = client_rt.block_on(client::drive(conns, phase));
    let cpu = cpu_before.until(&CpuSnapshot::take(redis_pids));
    let commands = match cluster {
        Some(cluster) => {
            measure::command_delta(&commands_before, &measure::command_counts(cluster)?)
        }
        None => CommandCounts::new(),
    };
    Ok((
        conns,
        Measured {
            outcome,
            commands,
            cpu,
            offered: None,
        },
    ))
}

/// Server logs (tally-server's own subscriber, at its default `info`) go to a file: the
/// server pays for its spans as in production, and the tables stay readable.
fn init_server_logs(path: &std::path::Path) -> anyhow::Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    tally_server::telemetry::init_tracing(
        tally_server::LogFormat::Text,
        "info",
        Mutex::new(file),
        false,
    );
    Ok(())
}

fn kill_children() {
    let children = CHILDREN.lock().unwrap_or_else(|e| e.into_inner());
    for pid in children.iter() {
        // `unsafe_code` is forbidden (no libc::kill); the `kill` command does the job.
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
}

/// Kills the children and exits on Ctrl-C or SIGTERM (destructors do not run on exit).
async fn stop_on_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    eprintln!("load: interrupted; stopping the redis-server nodes");
    kill_children();
    std::process::exit(130);
}

fn start_watchdog(limit: Duration) {
    std::thread::Builder::new()
        .name("load-watchdog".to_owned())
        .spawn(move || {
            std::thread::sleep(limit);
            eprintln!("load: still running after {limit:?}; giving up");
            kill_children();
            std::process::exit(3);
        })
        .expect("cannot start the watchdog thread");
}

// ---- report ----

/// The report's first lines: when, where, how long; `extra` ends the line.
fn render_header(load_before: &str, elapsed: Duration, extra: &str) -> String {
    let mut out = String::new();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let _ = writeln!(out, "## tally load harness\n");
    let _ = writeln!(
        out,
        "- {} UTC on {cpus} CPUs ({}); load average {load_before} before, {} after; {:.0} s in all{extra}",
        chrono::Utc::now().format("%Y-%m-%d %H:%M:%S"),
        measure::cpu_model(),
        measure::load_average(),
        elapsed.as_secs_f64()
    );
    out
}

/// `debug` or `release`: how the harness (and so the servers) was built.
fn build_profile() -> &'static str {
    if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    }
}

fn render(options: &Options, rows: &[Row], load_before: &str, elapsed: Duration) -> String {
    let mut out = render_header(load_before, elapsed, "");
    let profile = build_profile();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let _ = writeln!(
        out,
        "- {profile} build; per scenario a fresh server, {} s warm-up, {} s closed loop, {} s paced at {:.0}% of the closed-loop rate; {} keep-alive connections; client on {} tokio thread(s); servers on actix-web's default workers plus a {cpus}-thread tokio runtime, in the same process",
        options.warmup.as_secs_f64(),
        options.duration.as_secs_f64(),
        options.paced.as_secs_f64(),
        options.paced_fraction * 100.0,
        options.connections,
        options.client_threads,
    );
    if options.rounds > 1 {
        let _ = writeln!(
            out,
            "- {} rounds, targets interleaved; each row is the round with the median closed-loop rate for that scenario",
            options.rounds
        );
    }
    let _ = writeln!(
        out,
        "- tally-server: default config on 127.0.0.1 (batch interval 5 s, cache TTL 5 s), its log subscriber at `info` writing to a file {}, Prometheus recorder {}",
        if options.server_logs { "on" } else { "**off**" },
        if options.server_metrics {
            "on"
        } else {
            "**off**"
        },
    );
    let _ = writeln!(
        out,
        "- Redis: 3 local redis-server nodes (no persistence); `naive` routes by xxh3(page id) % 3, tally by its ring; commands are INFO commandstats deltas over the phase, summed over nodes (INFO itself left out). CPU: % of one core used during the phase by the client threads / the server threads / the redis-servers / softirq (the kernel's loopback network work, charged to no process) / everything else on the machine (other processes: a busy neighbour makes that phase's figures suspect). Server CPU µs per request counts the server's threads only (not its share of softirq).\n"
    );

    let find = |kind: Kind, load: Load| rows.iter().find(|r| r.kind == kind && r.load == load);
    let floor_of = |load: Load| {
        let floor_load = if load.is_visit() {
            Load::VisitHot
        } else {
            Load::CountHot
        };
        find(Kind::Floor, floor_load).map(|r| r.max.outcome.throughput())
    };
    let naive = find(Kind::Naive, Load::VisitHot).map(|r| r.max.outcome.throughput());

    let _ = writeln!(out, "### Maximum rate (closed loop)\n");
    let _ = writeln!(
        out,
        "| target | scenario | req/s | p50 ms | p99 ms | p99.9 ms | non-2xx / errors | Redis cmds per 1k req | CPU % client / server / redis / softirq / other | server CPU µs per req | vs floor | vs naive |"
    );
    let _ = writeln!(out, "|---|---|--:|--:|--:|--:|--:|---|---|--:|--:|--:|");
    for row in rows {
        let m = &row.max;
        let rate = m.outcome.throughput();
        let vs_floor = floor_of(row.load)
            .filter(|_| row.kind != Kind::Floor)
            .map_or("".to_owned(), |f| ratio(rate, f));
        let vs_naive = naive
            .filter(|_| row.load.is_visit() && row.kind != Kind::Naive && row.kind != Kind::Floor)
            .map_or("".to_owned(), |n| ratio(rate, n));
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {:.3} | {:.3} | {:.3} | {} / {} | {} | {} | {:.1} | {} | {} |",
            row.kind,
            row.load.name(),
            rate,
            m.outcome.latency_ms(0.50),
            m.outcome.latency_ms(0.99),
            m.outcome.latency_ms(0.999),
            m.outcome.non_2xx,
            m.outcome.errors + m.outcome.unfinished,
            commands(m),
            cpu(&m.cpu),
            m.cpu.server / 100.0 * 1e6 / rate.max(1.0),
            vs_floor,
            vs_naive,
        );
    }

    let _ = writeln!(
        out,
        "\n### Paced at {:.0}% of the maximum (open loop)\n",
        options.paced_fraction * 100.0
    );
    let _ = writeln!(
        out,
        "| target | scenario | offered req/s | achieved req/s | p50 ms | p99 ms | p99.9 ms | non-2xx / errors | Redis cmds per 1k req | CPU % client / server / redis / softirq / other |"
    );
    let _ = writeln!(out, "|---|---|--:|--:|--:|--:|--:|--:|---|---|");
    for row in rows {
        let Some(m) = &row.paced else { continue };
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {:.0} | {:.3} | {:.3} | {:.3} | {} / {} | {} | {} |",
            row.kind,
            row.load.name(),
            m.offered.unwrap_or(0.0),
            m.outcome.throughput(),
            m.outcome.latency_ms(0.50),
            m.outcome.latency_ms(0.99),
            m.outcome.latency_ms(0.999),
            m.outcome.non_2xx,
            m.outcome.errors + m.outcome.unfinished,
            commands(m),
            cpu(&m.cpu),
        );
    }

    let _ = writeln!(out, "\n### Targets\n");
    let _ = writeln!(out, "| figure | value | target | met |");
    let _ = writeln!(out, "|---|--:|--:|:-:|");
    let mut check = |figure: String, value: Option<f64>, target: &str, met: fn(f64) -> bool| {
        // Figures given for reference have no target to meet.
        let reference = target.starts_with('(');
        let (value, verdict) = match value {
            Some(v) if v.is_finite() => (
                format!("{v:.2}"),
                match (reference, met(v)) {
                    (true, _) => "",
                    (false, true) => "yes",
                    (false, false) => "**no**",
                },
            ),
            _ => ("n/a".to_owned(), "n/a"),
        };
        let _ = writeln!(out, "| {figure} | {value} | {target} | {verdict} |");
    };
    let rate = |kind: Kind, load: Load| find(kind, load).map(|r| r.max.outcome.throughput());
    let div = |a: Option<f64>, b: Option<f64>| Some(a? / b?);
    let floor_visit = rate(Kind::Floor, Load::VisitHot);
    let floor_get = rate(Kind::Floor, Load::CountHot);
    let redis_hot = rate(Kind::TallyRedis, Load::VisitHot);
    check(
        "tally-redis POST visit (hot) / floor".into(),
        div(redis_hot, floor_visit),
        ">= 0.85",
        |v| v >= 0.85,
    );
    check(
        "tally-redis POST visit (cold 1M) / floor".into(),
        div(rate(Kind::TallyRedis, Load::VisitCold), floor_visit),
        ">= 0.85",
        |v| v >= 0.85,
    );
    check(
        "tally-redis POST visit (hot) / naive".into(),
        div(redis_hot, naive),
        ">= 5",
        |v| v >= 5.0,
    );
    check(
        "tally-redis POST visit (hot) / naive-mux (for reference)".into(),
        div(redis_hot, rate(Kind::NaiveMux, Load::VisitHot)),
        "(none)",
        |_| true,
    );
    check(
        "tally-embedded POST visit / floor (for reference)".into(),
        div(rate(Kind::TallyEmbedded, Load::VisitHot), floor_visit),
        "(none)",
        |_| true,
    );
    check(
        "tally-redis GET count (cache hits) / floor".into(),
        div(rate(Kind::TallyRedis, Load::CountHot), floor_get),
        ">= 0.90",
        |v| v >= 0.90,
    );
    check(
        "tally-redis GET /api/x/y/ / GET /health".into(),
        div(
            rate(Kind::TallyRedis, Load::ApiPath),
            rate(Kind::TallyRedis, Load::Health),
        ),
        ">= 0.90",
        |v| v >= 0.90,
    );
    check(
        "tally-redis Redis commands per 1,000 visits (hot)".into(),
        find(Kind::TallyRedis, Load::VisitHot).map(|r| r.max.commands_per_1k()),
        "<= 2",
        |v| v <= 2.0,
    );
    let percent = options.paced_fraction * 100.0;
    for row in rows {
        let (target, met): (&str, fn(f64) -> bool) = match row.kind {
            Kind::TallyEmbedded | Kind::TallyRedis => ("<= 2", |v| v <= 2.0),
            // The same figure for the floor: what the machine allows any handler.
            Kind::Floor => ("(reference)", |_| true),
            _ => continue,
        };
        check(
            format!(
                "{} {}: p99 ms at {percent:.0}% of its max",
                row.kind,
                row.load.name()
            ),
            row.paced.as_ref().map(|m| m.outcome.latency_ms(0.99)),
            target,
            met,
        );
    }
    out
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "n/a".to_owned()
    }
}

/// Commands per 1,000 requests: the total, then the three most frequent by name.
fn commands(m: &Measured) -> String {
    if m.commands.is_empty() {
        return "0".to_owned();
    }
    let per_1k = |calls: u64| calls as f64 * 1000.0 / m.outcome.answered().max(1) as f64;
    let mut by_calls: Vec<_> = m.commands.iter().collect();
    by_calls.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let top: Vec<String> = by_calls
        .iter()
        .take(3)
        .map(|&(name, &calls)| format!("{name} {}", short(per_1k(calls))))
        .collect();
    format!("{} ({})", short(m.commands_per_1k()), top.join(", "))
}

/// A figure with about three significant digits.
fn short(v: f64) -> String {
    match v {
        v if v >= 100.0 => format!("{v:.0}"),
        v if v >= 1.0 => format!("{v:.2}"),
        v => format!("{v:.3}"),
    }
}

fn cpu(c: &CpuUse) -> String {
    format!(
        "{:.0} / {:.0} / {:.0} / {:.0} / {:.0}",
        c.client, c.server, c.redis, c.softirq, c.other
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Options, String> {
        Options::parse(args.iter().map(|a| (*a).to_owned()))
    }

    #[test]
    fn stats_scale_runs_after_the_others_only_with_tally_redis() {
        let all = parse(&[]).unwrap();
        assert!(!all.plan().is_empty());
        assert_eq!(all.stats_plan().map(|p| p.urls), Some(1_000_000));
        assert!(
            parse(&["--targets", "floor"])
                .unwrap()
                .stats_plan()
                .is_none()
        );
    }

    #[test]
    fn only_stats_runs_nothing_else_and_quick_seeds_fewer_urls() {
        let only = parse(&["--only", "stats", "--quick"]).unwrap();
        assert!(only.plan().is_empty());
        assert_eq!(only.stats_plan().map(|p| p.urls), Some(100_000));
        let chosen = parse(&["--quick", "--stats-urls", "250_000"]).unwrap();
        assert_eq!(chosen.stats_urls, 250_000);
        assert!(parse(&["--only", "floor"]).is_err());
        assert!(parse(&["--stats-urls", "10"]).is_err());
    }
}
