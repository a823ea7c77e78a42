//! The load scenarios: what each sends ([`Load`]), which run for which target
//! ([`scenarios`]), and running them: a fresh server, a warm-up, the closed-loop phase,
//! then the paced phase at a fraction of its rate, with commands and CPU read around each
//! phase; again when the machine was busy, and over several rounds. In the latency mode
//! ([`Scenario::rtt`]) the target's nodes are reached through a delay proxy, and only the
//! closed loop runs.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::client::{self, Body, Conn, Expect, Outcome, Pace, Paths, Phase, Workload};
use crate::delay::{DelayProxy, Held, Rtt};
use crate::measure::{self, Backlog, CacheReads, CommandCounts, CpuSnapshot, CpuUse};
use crate::options::Options;
use crate::targets::{self, Kind, Stopped};
use crate::{Redis, Setup};

/// Pages of the hot set.
const HOT_PAGES: u64 = 100;
/// Pages of the cold set.
const COLD_PAGES: u64 = 1_000_000;
/// Pages of each bulk request ([`Load::BulkHot`]): the whole hot set, a visit each.
pub const BULK_PAGES: u64 = HOT_PAGES;
/// A scenario during which other processes used more than this (% of one core) is run
/// again, up to `--retries` times; the quietest attempt is reported.
const NOISY: f64 = 25.0;
/// Time requests still in flight at a phase's end get to finish.
pub const GRACE: Duration = Duration::from_secs(5);

/// What a scenario sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Load {
    /// `POST` visits spread over the hot set.
    VisitHot,
    /// `POST` visits spread over the cold set.
    VisitCold,
    /// `GET` counts of the hot set.
    CountHot,
    /// `GET` counts spread over the cold set: nearly every read misses the server's read
    /// cache and reads the store.
    ///
    /// No page was visited (every scenario gets a fresh server on an empty store: a new
    /// `DATA_DIR`, flushed nodes), so every count is 0, which changes nothing for the
    /// read: `get_visits` (bins/tally-server/src/routes/counter.rs) answers from
    /// `Counter::get_cached` only when the page's stored value is cached, and otherwise
    /// calls `Counter::get`, whose miss goes through `read_shared` to `read_through`
    /// (crates/tally-counter/src/counter/read.rs): one `Store::get` of the key, whatever
    /// the store holds for it (an absent key reads as 0, and that 0 is cached like any
    /// value). That is a read transaction on tokio's blocking pool on the embedded store,
    /// a round trip to the page's node on Redis, a map look-up on the memory store. The
    /// cache holds at most `CACHE_CAPACITY` (100,000) entries for `CACHE_TTL_SECONDS`
    /// (5 s), so at R reads a second over 1,000,000 pages about `min(5 R, 100,000) /
    /// 1,000,000` of the reads hit (5% at 10,000 a second); the server's own hit and miss
    /// counts are read around each phase and reported. Every path is under `/api/`, so
    /// each distinct page is also a new URL of the request statistics, written to the
    /// store in batches, as for the cold visits.
    CountCold,
    /// `GET /api/x/y/`: a path counted by the statistics.
    ApiPath,
    /// `GET /health`: counted by nothing.
    Health,
    /// `POST /api/v1/counter/visits`, every request a bulk of [`BULK_PAGES`] pages with
    /// one visit each: the hot set's 100 pages, all of them (a bulk lists a page once),
    /// so the same keys as [`Load::VisitHot`] get the same share of the visits, and the
    /// two are compared in visits a second. Every 2xx must say `"recorded":100`.
    BulkHot,
}

impl Load {
    /// The scenario's name in the tables.
    pub fn name(self) -> &'static str {
        match self {
            Load::VisitHot => "POST visit, hot 100",
            Load::VisitCold => "POST visit, cold 1M",
            Load::CountHot => "GET count, hot 100",
            Load::CountCold => "GET count, cold 1M (cache misses)",
            Load::ApiPath => "GET /api/x/y/ (stats on)",
            Load::Health => "GET /health (not counted)",
            Load::BulkHot => "POST bulk, hot 100 (100 pages a request)",
        }
    }

    /// The requests the scenario sends.
    pub fn workload(self) -> Workload {
        if self == Load::BulkHot {
            return Workload {
                method: "POST",
                paths: Paths::Fixed("/api/v1/counter/visits"),
                body: Some(Body {
                    content_type: "application/json",
                    bytes: bulk_body(BULK_PAGES).into_bytes().into(),
                }),
                expect: Some(Expect {
                    field: "recorded",
                    value: BULK_PAGES,
                }),
            };
        }
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
            Load::CountCold => (
                "GET",
                Paths::Numbered {
                    prefix: "/api/v1/counter/visits/page",
                    count: COLD_PAGES,
                },
            ),
            Load::ApiPath => ("GET", Paths::Fixed("/api/x/y/")),
            Load::Health => ("GET", Paths::Fixed("/health")),
            Load::BulkHot => unreachable!("answered above"),
        };
        Workload {
            method,
            paths,
            body: None,
            expect: None,
        }
    }

    /// Visits each answer counts: 1, or [`BULK_PAGES`] for a bulk; 0 for the reads.
    pub fn visits_per_request(self) -> u64 {
        match self {
            Load::VisitHot | Load::VisitCold => 1,
            Load::BulkHot => BULK_PAGES,
            Load::CountHot | Load::CountCold | Load::ApiPath | Load::Health => 0,
        }
    }

    /// Whether the scenario counts visits (and so compares with the naive targets).
    pub fn is_visit(self) -> bool {
        matches!(self, Load::VisitHot | Load::VisitCold)
    }

    /// Whether the scenario reads counts (and so tally-server's cache hits and misses are
    /// read around its phases).
    pub fn is_count(self) -> bool {
        matches!(self, Load::CountHot | Load::CountCold)
    }
}

/// `{"visits":{"page0":1,...}}`: pages `page0` to `page{pages - 1}` (the names of
/// [`Load::VisitHot`]'s paths), a visit each.
fn bulk_body(pages: u64) -> String {
    let mut body = String::from(r#"{"visits":{"#);
    for n in 0..pages {
        let comma = if n == 0 { "" } else { "," };
        let _ = write!(body, r#"{comma}"page{n}":1"#);
    }
    body + "}}"
}

/// The targets with a bulk scenario: tally on every store with a page of its own in
/// the README's choice of mode (the memory store keeps nothing).
const BULK_TARGETS: [Kind; 3] = [Kind::TallyEmbedded, Kind::TallyRedis, Kind::TallyCluster];

/// One scenario of the plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scenario {
    /// The target.
    pub kind: Kind,
    /// What it is sent.
    pub load: Load,
    /// The latency mode: the round trip the delay proxies add between the target and its
    /// Redis nodes; `None` on loopback, with no proxy.
    pub rtt: Option<Rtt>,
    /// Whether the floor is paced after it at the same offered rate as its paced phase
    /// ([`Row::floor_paced`]), the reference of tally's p99.
    pub paced_floor: bool,
}

/// What each target runs again in the latency mode: the visits, where the naive targets
/// wait for Redis and tally does not. The floor has no Redis; the in-process stores no
/// network; the Redis Cluster's nodes tell clients their own addresses (`MOVED`, `CLUSTER
/// SLOTS`), which a proxy in front of them would have to rewrite.
fn delayed_loads(kind: Kind, quick: bool) -> &'static [Load] {
    match kind {
        Kind::Naive | Kind::TallyRedis if quick => &[Load::VisitHot],
        _ if quick => &[],
        Kind::Naive | Kind::NaiveMux => &[Load::VisitHot],
        Kind::TallyRedis => &[Load::VisitHot, Load::VisitCold],
        _ => &[],
    }
}

/// The scenarios of each target, in run order: its loopback scenarios, then per round trip
/// of `rtts` its [`delayed_loads`] (with `quick` POST visit hot on naive and tally-redis
/// only: two short scenarios per round trip). [`Load::BulkHot`] runs on every target of
/// [`BULK_TARGETS`] selected, or with `quick` on the first of them only (it costs the
/// CI run one scenario: a few seconds). Every loopback scenario of tally but the bulk
/// (the floor has no bulk route) paces the floor at its own paced rate afterwards; with
/// `quick` only POST visit hot of the first tally target does (one short phase).
pub fn scenarios(targets: &[Kind], quick: bool, rtts: &[Rtt]) -> Vec<Scenario> {
    let first_bulk = targets.iter().copied().find(|k| BULK_TARGETS.contains(k));
    let first_tally = targets.iter().copied().find(|k| k.is_tally());
    let paced_floor = move |kind: Kind, load: Load| {
        kind.is_tally()
            && load != Load::BulkHot
            && (!quick || (Some(kind) == first_tally && load == Load::VisitHot))
    };
    let bulk = move |kind: Kind| {
        (BULK_TARGETS.contains(&kind) && (!quick || Some(kind) == first_bulk))
            .then_some((kind, Load::BulkHot))
    };
    targets
        .iter()
        .flat_map(|&kind| {
            let loads: &[Load] = match kind {
                Kind::Floor => &[Load::VisitHot, Load::CountHot],
                Kind::Naive | Kind::NaiveMux => &[Load::VisitHot],
                // Against tally-memory's: what the dashboard's figures cost a visit.
                Kind::TallyMemoryNoDashboard => &[Load::VisitHot],
                // The in-process stores, the same scenarios each, so the embedded store is
                // measured against the memory store in the same run.
                Kind::TallyMemory | Kind::TallyEmbedded => {
                    &[Load::VisitHot, Load::VisitCold, Load::CountCold]
                }
                Kind::TallyRedis => &[
                    Load::VisitHot,
                    Load::VisitCold,
                    Load::CountHot,
                    Load::CountCold,
                    Load::ApiPath,
                    Load::Health,
                ],
                // What the cluster changes: where batches go (and their `WAIT`), and where
                // a cache miss reads; the request path is tally-redis's.
                Kind::TallyCluster => &[Load::VisitHot, Load::VisitCold, Load::CountHot],
            };
            let delayed = rtts.iter().flat_map(move |&rtt| {
                delayed_loads(kind, quick)
                    .iter()
                    .map(move |&load| Scenario {
                        kind,
                        load,
                        rtt: Some(rtt),
                        paced_floor: false,
                    })
            });
            loads
                .iter()
                .map(move |&load| (kind, load))
                .chain(bulk(kind))
                .map(move |(kind, load)| Scenario {
                    kind,
                    load,
                    rtt: None,
                    paced_floor: paced_floor(kind, load),
                })
                .chain(delayed)
        })
        .collect()
}

/// One measured phase.
#[derive(Clone, Debug)]
pub struct Measured {
    /// What the client saw.
    pub outcome: Outcome,
    /// Redis commands during the phase, summed over the target's nodes.
    pub commands: CommandCounts,
    /// On the Redis Cluster, the part of `commands` its replicas ran (`None` elsewhere).
    pub on_replicas: Option<CommandCounts>,
    /// CPU use by party during the phase.
    pub cpu: CpuUse,
    /// Paced phases: the rate offered.
    pub offered: Option<f64>,
    /// tally-server's read-cache hits and misses during the phase, for the count
    /// scenarios.
    pub cache: Option<CacheReads>,
    /// In the latency mode, how long the delay proxy held each chunk during the phase.
    pub held: Option<Held>,
}

impl Measured {
    /// Redis commands per 1,000 answers.
    pub fn commands_per_1k(&self) -> f64 {
        let total: u64 = self.commands.values().sum();
        total as f64 * 1000.0 / self.outcome.answered().max(1) as f64
    }
}

/// One scenario of one target: its two measured phases.
#[derive(Clone, Debug)]
pub struct Row {
    /// The target.
    pub kind: Kind,
    /// The scenario.
    pub load: Load,
    /// The round trip to the Redis nodes in the latency mode; `None` on loopback.
    pub rtt: Option<Rtt>,
    /// The closed-loop phase.
    pub max: Measured,
    /// The paced phase (none when the closed loop got no 2xx).
    pub paced: Option<Measured>,
    /// For tally ([`Scenario::paced_floor`]): the floor, fresh, paced right after the
    /// target's stop at the rate `paced` offered, with the same requests. On 2 shared
    /// cores no handler's p99 is far below a few ms; the ratio of the two p99s is what
    /// tally adds to that tail.
    pub floor_paced: Option<Measured>,
    /// `paced`'s p99 over `floor_paced`'s in every round, in round order (filled by
    /// [`median_rows`]; empty without a floor reference).
    pub p99_vs_floor_by_round: Vec<f64>,
    /// tally-server's counts still to be written when the load ended.
    pub backlog: Option<Backlog>,
    /// How the server stopped after the phases: for tally, the flush of what was still
    /// pending, and what it could not write.
    pub stopped: Stopped,
}

impl Row {
    /// CPU other processes used during the scenario's phases (% of a core, the worse).
    fn noise(&self) -> f64 {
        [self.paced.as_ref(), self.floor_paced.as_ref()]
            .into_iter()
            .flatten()
            .map(|m| m.cpu.other)
            .fold(self.max.cpu.other, f64::max)
    }

    /// The paced phase's p99 over the floor's at the same offered rate, when both ran.
    pub fn p99_vs_floor(&self) -> Option<f64> {
        let p99 = |m: &Measured| m.outcome.latency_ms(0.99);
        let floor = p99(self.floor_paced.as_ref()?);
        let paced = p99(self.paced.as_ref()?);
        (floor > 0.0).then(|| paced / floor)
    }
}

/// Runs the plan `options.rounds` times; round r holds every scenario's r-th measurement.
/// Rounds interleave the targets so a slow minute of the machine does not land on one
/// target only.
pub fn run_rounds(
    options: &Options,
    setup: &Setup<'_>,
    plan: &[Scenario],
) -> anyhow::Result<Vec<Vec<Row>>> {
    let mut rounds = Vec::with_capacity(options.rounds);
    for round in 0..options.rounds {
        if options.rounds > 1 {
            eprintln!("load: round {} of {}", round + 1, options.rounds);
        }
        let mut rows = Vec::with_capacity(plan.len());
        for &scenario in plan {
            rows.push(run_quietest(options, setup, scenario)?);
        }
        rounds.push(rows);
    }
    Ok(rounds)
}

/// Runs the scenario, again (up to `--retries` times) while other processes used over
/// [`NOISY`] during it, and keeps the quietest attempt.
fn run_quietest(options: &Options, setup: &Setup<'_>, scenario: Scenario) -> anyhow::Result<Row> {
    let mut best: Option<Row> = None;
    for attempt in 0..=options.retries {
        let row = run_scenario(options, setup, scenario).with_context(|| {
            format!(
                "{} / {}{}",
                scenario.kind,
                scenario.load.name(),
                scenario
                    .rtt
                    .map_or(String::new(), |rtt| format!(" / RTT {rtt}"))
            )
        })?;
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
    Ok(best.expect("at least one attempt"))
}

/// Per scenario, the round with the median closed-loop rate (the whole row of that round,
/// so its figures stay consistent with each other), with the p99 ratio against the floor
/// of every round ([`Row::p99_vs_floor_by_round`]).
pub fn median_rows(rounds: &[Vec<Row>], scenarios: usize) -> Vec<Row> {
    (0..scenarios)
        .map(|i| {
            let mut runs: Vec<&Row> = rounds.iter().map(|round| &round[i]).collect();
            let by_round: Vec<f64> = runs.iter().filter_map(|r| r.p99_vs_floor()).collect();
            runs.sort_by(|a, b| {
                a.max
                    .outcome
                    .throughput()
                    .total_cmp(&b.max.outcome.throughput())
            });
            Row {
                p99_vs_floor_by_round: by_round,
                ..runs[runs.len() / 2].clone()
            }
        })
        .collect()
}

/// The median of `values` (the mean of the middle two for an even count; `None` when
/// empty).
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// One attempt: flushed nodes, in the latency mode a delay proxy in front of them, a
/// fresh server, the warm-up, the closed loop, then (on loopback) the paced phase when
/// the closed loop got any 2xx, and after the server's stop, for
/// [`Scenario::paced_floor`], the floor paced at the same rate.
fn run_scenario(options: &Options, setup: &Setup<'_>, scenario: Scenario) -> anyhow::Result<Row> {
    let Scenario {
        kind,
        load,
        rtt,
        paced_floor,
    } = scenario;
    let redis = setup.redis_of(kind);
    if let Some(redis) = redis {
        redis.servers.flush()?;
    }
    measure::settle(redis.map_or(&[], |r| r.pids), setup.quiet_wait);
    let mut proxy = match (rtt, redis) {
        (None, _) => None,
        (Some(rtt), Some(redis)) => Some(DelayProxy::spawn(rtt, redis.urls)?),
        (Some(_), None) => anyhow::bail!("{kind} has no Redis nodes to put a delay in front of"),
    };
    let urls = proxy
        .as_ref()
        .map_or(redis.map_or(&[][..], |r| r.urls), DelayProxy::urls)
        .to_vec();
    let server = setup
        .server_rt
        .block_on(targets::start(kind, &urls, setup.metrics))?;
    let server_started = Instant::now();
    let client_rt = setup.client_rt;
    let conns = client_rt
        .block_on(client::connect_all(server.address, options.connections))
        .context("cannot connect to the server")?;
    let workload = load.workload();
    let cache_of = (kind.is_tally() && load.is_count()).then_some(server.address);

    let (conns, _) = client_rt.block_on(client::drive(conns, &closed(&workload, options.warmup)));
    let max_began = server_started.elapsed();
    let (conns, max) = measured_phase(
        client_rt,
        conns,
        &closed(&workload, options.duration),
        redis,
        cache_of,
        proxy.as_mut(),
    )?;
    let rtt_suffix = rtt.map_or(String::new(), |rtt| format!(" (RTT {rtt})"));
    report_phase(options, kind, load, &max, &rtt_suffix, max_began);
    let mut paced = None;
    // The latency mode compares maximum rates; a paced phase would double its time.
    if max.outcome.ok > 0 && rtt.is_none() {
        let rate = max.outcome.throughput() * options.paced_fraction;
        let paced_phase = |duration| Phase {
            workload: workload.clone(),
            pace: Pace::Rate(rate),
            duration,
            grace: GRACE,
        };
        // The same paced warm-up as the floor's reference gets: the closed loop's queues
        // drain before the paced measurement starts, on both sides of the p99 ratio.
        let (conns, _) = client_rt.block_on(client::drive(conns, &paced_phase(PACED_WARMUP)));
        let began = server_started.elapsed();
        let (_, mut measured) = measured_phase(
            client_rt,
            conns,
            &paced_phase(options.paced),
            redis,
            cache_of,
            None,
        )?;
        measured.offered = Some(rate);
        report_phase(options, kind, load, &measured, " (paced)", began);
        paced = Some(measured);
    } else {
        drop(conns);
    }
    // What the store is behind by when the load ends: what the stop has to flush.
    let backlog = if kind.is_tally() {
        Some(client_rt.block_on(Backlog::read(server.address))?)
    } else {
        None
    };
    let stopped = setup.server_rt.block_on(server.stop())?;
    // After the server's stop, whose flush still goes through it.
    drop(proxy);
    let floor_paced = match (&paced, paced_floor) {
        (Some(paced), true) => Some(floor_at_rate(
            options,
            setup,
            load,
            paced.offered.unwrap_or(0.0),
        )?),
        _ => None,
    };
    if stopped.pages_unwritten() > 0 {
        eprintln!(
            "load: {kind} / {}: tally-server could not write {} visits to {} pages within its shutdown deadline ({:.1} s to stop)",
            load.name(),
            stopped.visits_unwritten(),
            stopped.pages_unwritten(),
            stopped.took.as_secs_f64()
        );
    }
    Ok(Row {
        kind,
        load,
        rtt,
        max,
        paced,
        floor_paced,
        p99_vs_floor_by_round: Vec::new(),
        backlog,
        stopped,
    })
}

/// Paced warm-up before every paced phase, at that phase's rate: after a tally closed loop
/// its queues drain; before the floor's reference its connections are opened and its
/// workers busy.
pub const PACED_WARMUP: Duration = Duration::from_secs(1);

/// The floor, fresh, sent `load`'s requests at `rate` for the paced phase's length after a
/// short paced warm-up: the reference of a tally paced phase at the same rate.
fn floor_at_rate(
    options: &Options,
    setup: &Setup<'_>,
    load: Load,
    rate: f64,
) -> anyhow::Result<Measured> {
    let workload = load.workload();
    let server = setup
        .server_rt
        .block_on(targets::start(Kind::Floor, &[], setup.metrics))?;
    let server_started = Instant::now();
    let client_rt = setup.client_rt;
    let conns = client_rt
        .block_on(client::connect_all(server.address, options.connections))
        .context("cannot connect to the floor")?;
    let paced = |duration| Phase {
        workload: workload.clone(),
        pace: Pace::Rate(rate),
        duration,
        grace: GRACE,
    };
    let (conns, _) = client_rt.block_on(client::drive(conns, &paced(PACED_WARMUP)));
    let began = server_started.elapsed();
    let (conns, mut measured) =
        measured_phase(client_rt, conns, &paced(options.paced), None, None, None)?;
    drop(conns);
    measured.offered = Some(rate);
    setup.server_rt.block_on(server.stop())?;
    let outcome = &measured.outcome;
    eprintln!(
        "load: {:<14} {:<26} {:>9.0} req/s  p99 {:.2} ms (paced, the floor at the same rate)",
        Kind::Floor,
        load.name(),
        outcome.throughput(),
        outcome.latency_ms(0.99)
    );
    if options.timeline {
        print_timeline(outcome, began);
    }
    Ok(measured)
}

/// A closed-loop phase of `workload` lasting `duration`.
fn closed(workload: &Workload, duration: Duration) -> Phase {
    Phase {
        workload: workload.clone(),
        pace: Pace::Max,
        duration,
        grace: GRACE,
    }
}

/// What the load client costs: the floor (POST visit, hot set) driven by this harness's
/// client, then by reqwest.
#[derive(Debug)]
pub struct ClientCost {
    /// The harness's own client.
    pub ours: Measured,
    /// reqwest, the same closed loop.
    pub reqwest: Measured,
}

/// Drives the floor with both clients, for `--compare-clients`.
pub fn compare_clients(options: &Options, setup: &Setup<'_>) -> anyhow::Result<ClientCost> {
    let (server_rt, client_rt) = (setup.server_rt, setup.client_rt);
    if !setup.quiet_wait.is_zero() {
        measure::wait_for_quiet(&[], setup.quiet_wait);
    }
    let server = server_rt.block_on(targets::start(Kind::Floor, &[], setup.metrics))?;
    let workload = Load::VisitHot.workload();
    let conns = client_rt.block_on(client::connect_all(server.address, options.connections))?;
    let (conns, _) = client_rt.block_on(client::drive(conns, &closed(&workload, options.warmup)));
    let (conns, ours) = measured_phase(
        client_rt,
        conns,
        &closed(&workload, options.duration),
        None,
        None,
        None,
    )?;
    drop(conns);
    let reqwest =
        |duration| client::drive_reqwest(server.address, options.connections, &workload, duration);
    client_rt.block_on(reqwest(options.warmup));
    let before = CpuSnapshot::take(&[], &[]);
    let outcome = client_rt.block_on(reqwest(options.duration));
    let reqwest = Measured {
        outcome,
        commands: CommandCounts::new(),
        on_replicas: None,
        cpu: before.until(&CpuSnapshot::take(&[], &[])),
        offered: None,
        cache: None,
        held: None,
    };
    server_rt.block_on(server.stop())?.all_written()?;
    Ok(ClientCost { ours, reqwest })
}

/// A phase's progress line on stderr (`suffix` tells the paced phase), then its slow
/// windows with `--timeline`.
/// `began`: how long after the server's start the phase began, to set its slow windows
/// against the server's timers (batches and cache entries every 5 s from its start).
fn report_phase(
    options: &Options,
    kind: Kind,
    load: Load,
    measured: &Measured,
    suffix: &str,
    began: Duration,
) {
    let outcome = &measured.outcome;
    let misses = measured.cache.map_or(String::new(), |cache| {
        format!("  cache misses {:.1}%", cache.miss_percent())
    });
    let visits = if load == Load::BulkHot {
        format!(
            "  {:.0} visits/s",
            outcome.throughput() * load.visits_per_request() as f64
        )
    } else {
        String::new()
    };
    let unexpected = if outcome.unexpected > 0 {
        format!("  {} 2xx answers not as expected", outcome.unexpected)
    } else {
        String::new()
    };
    let held = measured.held.map_or(String::new(), |held| {
        format!(
            "  proxy held {} chunks, p50 {:.3} ms, p99 {:.3} ms",
            held.chunks,
            held.p50.as_secs_f64() * 1e3,
            held.p99.as_secs_f64() * 1e3
        )
    });
    eprintln!(
        "load: {kind:<14} {:<26} {:>9.0} req/s  p99 {:.2} ms{visits}{misses}{unexpected}{held}{suffix}",
        load.name(),
        outcome.throughput(),
        outcome.latency_ms(0.99)
    );
    if options.timeline {
        print_timeline(outcome, began);
    }
}

/// The 100 ms windows of a phase whose slowest answer took over 5 ms, on stderr, the
/// phase having begun `began` after the server's start.
fn print_timeline(outcome: &Outcome, began: Duration) {
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
    eprintln!(
        "load:   windows over 5 ms (phase began {:.2} s after the server's start): [{}]",
        began.as_secs_f64(),
        slow.join(" ")
    );
}

/// Runs `phase` with the commands and CPU of `redis` (the target's redis-servers) read
/// before and after, with `cache_of` the read-cache figures of the tally-server there,
/// and with `proxy` the delay proxy's CPU and how long it held its chunks.
pub fn measured_phase(
    client_rt: &tokio::runtime::Runtime,
    conns: Vec<Conn>,
    phase: &Phase,
    redis: Option<Redis<'_>>,
    cache_of: Option<SocketAddr>,
    mut proxy: Option<&mut DelayProxy>,
) -> anyhow::Result<(Vec<Conn>, Measured)> {
    let redis_pids = redis.map_or(&[][..], |r| r.pids);
    let proxy_pids: Vec<u32> = proxy.iter().map(|p| p.pid()).collect();
    let commands_before = redis.map(|r| r.servers.command_counts()).transpose()?;
    let cache_before = cache_of
        .map(|address| client_rt.block_on(CacheReads::read(address)))
        .transpose()?;
    // What it held before the phase (the warm-up) is left out.
    proxy.as_mut().map(|p| p.held()).transpose()?;
    let cpu_before = CpuSnapshot::take(redis_pids, &proxy_pids);
    let (conns, outcome) = client_rt.block_on(client::drive(conns, phase));
    let cpu = cpu_before.until(&CpuSnapshot::take(redis_pids, &proxy_pids));
    let held = proxy.map(DelayProxy::held).transpose()?;
    let cache = match (cache_of, cache_before) {
        (Some(address), Some(before)) => {
            Some(before.until(client_rt.block_on(CacheReads::read(address))?))
        }
        _ => None,
    };
    let (commands, on_replicas) = match (redis, commands_before) {
        (Some(redis), Some(before)) => {
            let per_node: Vec<CommandCounts> = before
                .iter()
                .zip(redis.servers.command_counts()?)
                .map(|(before, after)| measure::command_delta(before, &after))
                .collect();
            let replicas = redis.servers.replicas()?;
            (
                measure::sum_commands(&per_node),
                replicas
                    .map(|replicas| measure::sum_commands(replicas.iter().map(|&i| &per_node[i]))),
            )
        }
        _ => (CommandCounts::new(), None),
    };
    Ok((
        conns,
        Measured {
            outcome,
            commands,
            on_replicas,
            cpu,
            offered: None,
            cache,
            held,
        },
    ))
}
