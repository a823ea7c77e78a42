//! load: the HTTP load harness. Starts three redis-server nodes (and, for `tally-cluster`
//! or the `/stats/` scale scenario on the cluster, a Redis Cluster of six more) and each
//! server under test on 127.0.0.1, drives it with a lean keep-alive client, and prints
//! markdown tables: throughput, latency, Redis commands per 1,000 requests and CPU use per
//! party, with the ratios against the `floor`, `naive`, `tally-memory` and `tally-redis`
//! targets of the same run and the issue's targets.
//!
//! ```text
//! cargo run -p tally-benches --release --bin load                 # the full run
//! cargo run -p tally-benches --bin load -- --quick                # CI: a few s per target
//! cargo run -p tally-benches --release --bin load -- --targets floor,tally-redis \
//!     --duration 20 --connections 32 --markdown load.md
//! cargo run -p tally-benches --release --bin load -- --targets tally-memory,tally-embedded
//! cargo run -p tally-benches --release --bin load -- --targets floor,tally-redis,tally-cluster \
//!     --stats-stores none                                         # the cluster's cost
//! cargo run -p tally-benches --release --bin load -- --only stats   # /stats/ at 1M URLs
//! cargo run -p tally-benches --release --bin load -- --only stats --stats-stores cluster
//! ```
//!
//! Targets: `floor` (bare actix-web JSON handler), `naive` (one `INCR` per visit through
//! deadpool-redis), `naive-mux` (one `INCR` per visit on a shared multiplexed connection per
//! node), `tally-memory` (tally-server with `STORE=memory`: `MemoryStore`, counts in this
//! process only), `tally-embedded` (tally-server on its default store, the redb file of
//! tally-embedded, in a fresh temporary `DATA_DIR`), `tally-redis` (three nodes),
//! `tally-cluster` (`REDIS_CLUSTER` set to the seeds of a Redis Cluster of three primaries
//! with a replica each, started with tally-testkit's `Cluster` only when this target is
//! selected; `REDIS_WAIT_REPLICAS` at its default, 1, so every batch waits for a replica's
//! `WAIT`). Every server gets a fresh start per scenario. Every target runs by default and
//! with `--quick`: the cluster adds its start (a few seconds: six nodes, `redis-cli
//! --cluster create`, settling), three scenarios and the `/stats/` scale scenario on it,
//! about half a minute of the CI run, and needs `redis-cli` besides `redis-server`.
//!
//! Scenarios ([`scenario::Load`]): `floor` POST visit and GET count on the hot set (100
//! pages); `naive` and `naive-mux` POST visit, hot; `tally-memory` and `tally-embedded`
//! POST visit on the hot set and on the cold set (1,000,000 pages), and GET count on the
//! cold set (nearly every read a cache miss that reads the store), the same three each so
//! the embedded store is set against the memory store of the same run; `tally-redis` all
//! of those, GET count on the hot set (cache hits), `GET /api/x/y/` (a path counted by the
//! request statistics) and `GET /health` (counted by nothing); `tally-cluster` POST visit
//! hot and cold and GET count hot, set against `tally-redis` and the floor; and on
//! `tally-embedded`, `tally-redis` and `tally-cluster` the bulk (`POST
//! /api/v1/counter/visits`, every request the hot set's 100 pages with a visit each,
//! every 2xx checked to say `"recorded":100`), reported in visits a second against POST
//! visit hot of the same target (with `--quick` on the first of the three selected
//! only). For each
//! scenario: a warm-up, a closed-loop phase (every connection sends as soon as it has its
//! answer: the maximum rate), then a paced phase at a fraction (50%) of that rate (open
//! loop, latency timed from the schedule; after a short paced warm-up at that rate, so the
//! closed loop's queues are not in it) for the p99 target. After each tally scenario
//! but the bulk (with `--quick` only the first tally target's POST visit hot), a fresh
//! `floor` is sent the same requests paced at the same offered rate: the p99 target is
//! tally's p99 over the floor's at that rate, since on 2 shared cores no handler's tail is
//! far below a few ms. Around the GET count phases of tally, its own read-cache hits and
//! misses are read.
//!
//! With `--wrk`, after the rounds, the floor and tally (memory, embedded, Redis: those
//! selected) are driven closed-loop on POST visit and GET count, hot, by the harness's
//! client and then by Debian's `wrk` on the same server ([`wrk`]): the tally/floor ratios
//! of both clients, side by side.
//!
//! The latency mode (`--rtt`, by default 0.5 ms and 2 ms; 0.5 ms with `--quick`): every
//! figure above is on loopback, where a Redis round trip costs tens of microseconds, which
//! flatters the naive targets that wait for one per visit. After each of `naive`,
//! `naive-mux` and `tally-redis`'s loopback scenarios, its visits run again with the three
//! nodes behind a delay proxy ([`delay`]) holding every chunk for half the round trip each
//! way (pipelining kept); closed loop only. The proxy is a child process, its CPU a column
//! of its own, and how long it actually held the chunks is read from it per phase. The
//! report's Round trip table sets each against `naive` at the same round trip, the floor,
//! and the same target on loopback.
//!
//! Then the `/stats/` scale scenario ([`stats_scale`]) on each store of `--stats-stores`
//! (by default those of the targets: Redis for `tally-redis`, the embedded store for
//! `tally-embedded`, the Redis Cluster for `tally-cluster`, on the cluster that target
//! started): the store filled with `--stats-urls` distinct URLs (default 1,000,000;
//! 100,000 with `--quick`, on every store) through its own write path (on the cluster
//! `ClusterStore`'s, every batch waiting for a replica), then `GET /stats/` (top 100) and
//! `GET /stats/?offset=100000&limit=100` timed from one client and from 8 at once, every
//! answer checked against the ranking computed from the seed, `/health` and `/status`
//! polled throughout. The cluster adds a few seconds to `--quick` (100,000 URLs seeded in
//! under a second) and about half a minute to the full run. `--only stats` runs nothing
//! else, on all three stores (and starts the cluster for it); `--stats-stores cluster`
//! chooses one.
//!
//! Arrangement, the same for every target so ratios are fair: the servers run on their
//! own threads (actix-web's workers, default count, plus a multi-threaded tokio runtime as
//! tally-server's `main` builds), the client on another tokio runtime (`--client-threads`,
//! default 1), all in this process; redis-server nodes are child processes. The client is
//! the harness's own (see [`client`] for why not reqwest), and its CPU use is shown.
//!
//! Side measurements per phase: Redis commands from `INFO commandstats` before and after,
//! summed over the target's nodes (commands run inside tally's Lua script count, as Redis
//! counts them; on the cluster all six nodes, so a replica applying a batch's writes and
//! the `WAIT` confirming them count as well); CPU time of the client threads, the server
//! threads, the target's redis-servers (the three nodes, or the cluster's six), softirq
//! (loopback networking, charged to no process) and everything else on the machine (the
//! run's other redis-servers, idle, left out). A busy neighbour skews every figure on a
//! 2-core machine, so in a full run each scenario first waits (up to `--quiet-wait`) for
//! other processes to go quiet, is run again (up to `--retries`) when they used over a
//! quarter of a core during it, and the `other` CPU column shows how quiet the attempt
//! reported stayed.
//!
//! Everything is bounded: phases by time, the whole run by a watchdog; Ctrl-C, SIGTERM and
//! the watchdog kill the redis children (found by their parent, this process, so also the
//! nodes of a cluster whose start is under way) before exiting. Exit code 1 when a phase
//! got no 2xx answer at all, a 2xx answer did not say what was expected (a bulk's
//! `recorded`), tally-server could not write every visit it had acknowledged within its
//! shutdown deadline (reported with the tables; acknowledged visits lost), or
//! a `/stats/` answer, on any store, did not match the seeded ranking (the CI check);
//! targets missed are reported, not failed.
//!
//! # Layout
//!
//! - this file: `main` and [`run`], which builds the [`Setup`] and runs everything in order;
//! - [`options`]: the command line;
//! - [`scenario`]: what a load scenario sends, and running it (retries, rounds, phases);
//! - [`report`]: the markdown tables of the load scenarios;
//! - [`stats_scale`]: the `/stats/` scale scenario, with its own report section;
//! - [`delay`]: the latency mode's delay proxy, a child process (this binary again);
//! - [`targets`]: the servers under test;
//! - [`client`]: the load client;
//! - [`measure`]: Redis commands, CPU time and tally's cache reads around a phase;
//! - [`wrk`]: `--wrk`, the client cross-checked against Debian's `wrk`;
//! - [`nodes`]: the redis-server children (the standalone nodes, the cluster), and killing
//!   them on every way out.

mod client;
mod delay;
mod measure;
mod nodes;
mod options;
mod report;
mod scenario;
mod stats_scale;
mod targets;
mod wrk;

use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tally_testkit::{Cluster, RedisCluster};
use tokio::runtime::Runtime;

use crate::nodes::Servers;
use crate::options::{Options, USAGE};
use crate::targets::Kind;

/// What every scenario runs on, built once by [`run`].
#[derive(Debug)]
struct Setup<'a> {
    /// Runtime of the servers under test.
    server_rt: &'a Runtime,
    /// Runtime of the load client (and of the `/stats/` seeding stores).
    client_rt: &'a Runtime,
    /// The three standalone nodes, when a scenario needs them.
    nodes: Option<&'a RedisCluster>,
    /// Their URLs, as tally-server gets them in `REDIS_NODES`.
    redis_urls: &'a [String],
    /// Their pids, for the CPU figures.
    redis_pids: &'a [u32],
    /// The Redis Cluster, when `tally-cluster` or the `/stats/` scale scenario on the
    /// cluster runs.
    cluster: Option<&'a Cluster>,
    /// Its seeds (every node's URL), as tally-server gets them in `REDIS_CLUSTER`.
    cluster_urls: &'a [String],
    /// The pids of its six redis-servers, for the CPU figures.
    cluster_pids: &'a [u32],
    /// tally-server's `ENABLE_METRICS`.
    metrics: bool,
    /// Wait up to this long for other processes to go quiet before measuring.
    quiet_wait: Duration,
}

impl<'a> Setup<'a> {
    /// The redis-servers `kind` counts on: the cluster for `tally-cluster`, otherwise the
    /// standalone nodes (the floor's figures read them too, idle as they are).
    fn redis_of(&self, kind: Kind) -> Option<Redis<'a>> {
        if kind.uses_cluster() {
            self.cluster.map(|cluster| Redis {
                servers: Servers::Cluster(cluster),
                urls: self.cluster_urls,
                pids: self.cluster_pids,
            })
        } else {
            self.nodes.map(|nodes| Redis {
                servers: Servers::Standalone(nodes),
                urls: self.redis_urls,
                pids: self.redis_pids,
            })
        }
    }
}

/// The redis-servers of one target, as a scenario uses them.
#[derive(Clone, Copy, Debug)]
struct Redis<'a> {
    /// The nodes: flushed before the scenario, their commands read around each phase.
    servers: Servers<'a>,
    /// What the target is given: `REDIS_NODES`, or the seeds of `REDIS_CLUSTER`.
    urls: &'a [String],
    /// Their pids: the CPU figures' `redis` column.
    pids: &'a [u32],
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().is_some_and(|arg| arg == delay::SUBCOMMAND) {
        return delay::main(args.skip(1));
    }
    let options = match Options::parse(args) {
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
            nodes::kill_children();
            ExitCode::FAILURE
        }
    }
}

/// Runs every scenario and prints the report; `Ok(false)` when a phase got no 2xx at all,
/// a 2xx answer did not say what was expected, tally-server left acknowledged visits
/// unwritten when it stopped, or a `/stats/` answer was wrong.
fn run(options: &Options) -> anyhow::Result<bool> {
    let plan = options.plan();
    let stats_plan = options.stats_plan();
    let started = Instant::now();
    nodes::start_watchdog(options.budget(plan.len()) * 2);
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
    server_rt.spawn(nodes::stop_on_signal());

    let needs_redis = plan.iter().any(|s| s.kind.uses_redis())
        || stats_plan
            .as_ref()
            .is_some_and(stats_scale::Plan::uses_redis);
    let standalone = if needs_redis {
        Some(nodes::start()?)
    } else {
        None
    };
    let redis_urls: Vec<String> = standalone
        .iter()
        .flat_map(|c| c.nodes().iter().map(|n| n.url()))
        .collect();
    let redis_pids: Vec<u32> = standalone
        .iter()
        .flat_map(|c| c.nodes().iter().filter_map(|n| n.pid()))
        .collect();
    let cluster = if options.uses_cluster() {
        let starting = Instant::now();
        let cluster = nodes::start_cluster()?;
        eprintln!(
            "load: Redis Cluster of {} nodes started in {:.1} s",
            cluster.nodes().len(),
            starting.elapsed().as_secs_f64()
        );
        Some(cluster)
    } else {
        None
    };
    let cluster_urls: Vec<String> = cluster
        .iter()
        .flat_map(|c| c.nodes().iter().map(|n| n.url()))
        .collect();
    let cluster_pids: Vec<u32> = cluster
        .iter()
        .flat_map(|c| c.nodes().iter().filter_map(|n| n.pid()))
        .collect();
    let setup = Setup {
        server_rt: &server_rt,
        client_rt: &client_rt,
        nodes: standalone.as_ref(),
        redis_urls: &redis_urls,
        redis_pids: &redis_pids,
        cluster: cluster.as_ref(),
        cluster_urls: &cluster_urls,
        cluster_pids: &cluster_pids,
        metrics: options.server_metrics,
        quiet_wait: options.quiet_wait,
    };

    let load_before = measure::load_average();
    eprintln!(
        "load: {} scenarios, ~{} s{}; server logs in {}",
        plan.len(),
        (options.warmup + options.duration + options.paced)
            .as_secs_f64()
            .ceil() as u64
            * plan.len() as u64
            * options.rounds as u64,
        stats_plan.as_ref().map_or(String::new(), |p| format!(
            ", then /stats/ at {} URLs on {}",
            p.urls,
            p.stores
                .iter()
                .map(|store| store.name())
                .collect::<Vec<_>>()
                .join(", ")
        )),
        log_path.display()
    );
    let rounds = scenario::run_rounds(options, &setup, &plan)?;
    let all_answered = rounds.iter().flatten().all(|row| row.max.outcome.ok > 0);
    let unexpected: u64 = rounds
        .iter()
        .flatten()
        .flat_map(|row| [Some(&row.max), row.paced.as_ref()])
        .flatten()
        .map(|m| m.outcome.unexpected)
        .sum();
    let unwritten: u64 = rounds
        .iter()
        .flatten()
        .map(|row| row.stopped.visits_unwritten())
        .sum();
    let rows = scenario::median_rows(&rounds, plan.len());
    let comparison = if options.compare_clients {
        Some(scenario::compare_clients(options, &setup)?)
    } else {
        None
    };
    let wrk_checks = if options.wrk {
        Some(wrk::run(options, &setup)?)
    } else {
        None
    };
    let stats = stats_plan
        .as_ref()
        .map(|plan| stats_scale::run(plan, &setup).context("/stats/ at scale"))
        .transpose()?;
    let mut report = if plan.is_empty() {
        report::render_stats_only_header(
            &load_before,
            started.elapsed(),
            needs_redis,
            cluster.is_some(),
        )
    } else {
        report::render(options, &rows, &load_before, started.elapsed())
    };
    report.extend(comparison.as_ref().map(report::render_client_cost));
    report.extend(
        wrk_checks
            .as_ref()
            .map(|checks| wrk::render(checks, options.connections)),
    );
    report.extend(stats.as_ref().map(stats_scale::Report::render));
    print!("{report}");
    if let Some(path) = &options.markdown {
        std::fs::write(path, &report)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    client_rt.shutdown_timeout(Duration::from_secs(1));
    server_rt.shutdown_timeout(Duration::from_secs(1));
    drop(cluster);
    drop(standalone);
    if !all_answered {
        eprintln!("load: a target answered no request with 2xx");
    }
    if unexpected > 0 {
        eprintln!("load: {unexpected} 2xx answers did not say what was expected (see the report)");
    }
    if unwritten > 0 {
        eprintln!(
            "load: tally-server left {unwritten} acknowledged visits unwritten at its stops (see the report)"
        );
    }
    let stats_passed = stats.as_ref().is_none_or(stats_scale::Report::passed);
    if let Some(problem) = stats.as_ref().and_then(stats_scale::Report::first_problem) {
        eprintln!("load: /stats/ at scale: {problem}");
    }
    Ok(all_answered && unexpected == 0 && unwritten == 0 && stats_passed)
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
