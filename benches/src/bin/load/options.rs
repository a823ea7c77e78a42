//! The command line: [`USAGE`], and [`Options`] parsed from it with the defaults `--quick`
//! changes, and what follows from them: the scenarios run, the `/stats/` plan, the time
//! budget the watchdog allows.

use std::time::Duration;

use crate::delay::Rtt;
use crate::scenario::{self, GRACE, Scenario};
use crate::stats_scale::{self, StatsStore};
use crate::targets::Kind;

/// `load --help`.
pub const USAGE: &str = "\
usage: load [--quick] [--duration SECS] [--warmup SECS] [--connections N]
            [--client-threads N] [--targets LIST] [--markdown PATH] [--compare-clients]
            [--server-logs on|off] [--server-metrics on|off] [--quiet-wait SECS]
            [--retries N] [--rounds N] [--paced-fraction F] [--timeline]
            [--stats-urls N] [--stats-stores LIST] [--only stats] [--rtt LIST]
            [--wrk]

  --quick            1 s warm-up, 2 s closed loop, 1 s paced (CI: keeps the harness
                     working; the figures are printed, not checked); the bulk scenario
                     on the first of tally-embedded, tally-redis, tally-cluster only
  --duration SECS    length of each measured phase (default 10)
  --warmup SECS      warm-up before each scenario's first phase (default 2)
  --connections N    keep-alive connections (default 64)
  --client-threads N tokio worker threads of the load client (default 1)
  --targets LIST     comma-separated, of floor,naive,naive-mux,tally-memory,
                     tally-memory-no-dashboard,tally-embedded,tally-redis,tally-cluster
                     (default: all; ratios need floor and naive, tally-memory for the
                     embedded store's and the dashboard's, and tally-redis for the
                     cluster's; tally-cluster starts a six-node Redis Cluster, which
                     needs redis-cli)
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
                     others on the stores of --stats-stores (default 1000000; 100000
                     with --quick; 1000 to 10000000)
  --stats-stores LIST  comma-separated, of redis,embedded,cluster, or none: the stores
                     the /stats/ scale scenario seeds and asks tally-server on, in that
                     order (default: those of the targets, redis for tally-redis,
                     embedded for tally-embedded and cluster for tally-cluster; all
                     three with --only stats; cluster starts the six-node Redis
                     Cluster of tally-cluster, which needs redis-cli)
  --only stats       run only the /stats/ scale scenario
  --rtt LIST         round trips between the servers and the three Redis nodes for the
                     latency mode, comma-separated (e.g. 0.5ms,2ms or 500us), or none:
                     after their loopback scenarios, naive and naive-mux POST visit hot
                     and tally-redis POST visit hot and cold run again through a delay
                     proxy per node holding each chunk for half the round trip each way
                     (closed loop only); the floor has no Redis and is not repeated
                     (default 0.5ms,2ms; with --quick 0.5ms, POST visit hot on naive and
                     tally-redis only)
  --wrk              after the scenarios, cross-check the client: POST visit and GET
                     count on the hot set, on the floor and on those of tally-memory,
                     tally-embedded, tally-redis selected, each fresh and driven closed
                     loop by this harness's client, then by Debian's wrk (-t1, the same
                     connections) for as long; tally/floor ratios from both, side by
                     side (needs wrk on the PATH; not in --quick unless asked)";

/// The paced phase offers this fraction of the closed-loop rate (issue 9: p99 at half of
/// the maximum rate), unless `--paced-fraction` says otherwise.
const PACED_FRACTION: f64 = 0.5;

/// What the command line asked for.
#[derive(Clone, Debug)]
pub struct Options {
    /// `--quick`: short phases, fewer `/stats/` URLs, no waiting for quiet.
    pub quick: bool,
    /// Length of the closed-loop phase.
    pub duration: Duration,
    /// Warm-up before each scenario's first phase.
    pub warmup: Duration,
    /// Keep-alive connections of the load client.
    pub connections: usize,
    /// Worker threads of the client runtime.
    pub client_threads: usize,
    /// The targets, in run order.
    pub targets: Vec<Kind>,
    /// Where to write the report as well.
    pub markdown: Option<std::path::PathBuf>,
    /// `--compare-clients`: also drive the floor with reqwest.
    pub compare_clients: bool,
    /// tally-server's log subscriber.
    pub server_logs: bool,
    /// tally-server's `ENABLE_METRICS`.
    pub server_metrics: bool,
    /// `--timeline`: print each phase's slow windows on stderr.
    pub timeline: bool,
    /// Longest wait for other processes to go quiet before a scenario.
    pub quiet_wait: Duration,
    /// Length of the paced phase: `duration`, but 1 s with `--quick`.
    pub paced: Duration,
    /// Runs again of a scenario during which other processes were busy.
    pub retries: u32,
    /// The paced phase's rate as a fraction of the closed-loop rate.
    pub paced_fraction: f64,
    /// Times every scenario runs; the median round is reported.
    pub rounds: usize,
    /// URLs of the `/stats/` scale scenario.
    pub stats_urls: usize,
    /// `--stats-stores`: the stores of the `/stats/` scale scenario, when given.
    pub stats_stores: Option<Vec<StatsStore>>,
    /// `--only stats`: the `/stats/` scale scenario and nothing else.
    pub only_stats: bool,
    /// `--rtt`: the round trips of the latency mode, in run order (none: loopback only).
    pub rtts: Vec<Rtt>,
    /// `--wrk`: the cross-check of the client against Debian's `wrk`.
    pub wrk: bool,
}

impl Options {
    /// Parses the arguments after the program name; `Err` holds the problem, empty for
    /// `--help`.
    pub fn parse(mut args: impl Iterator<Item = String>) -> Result<Self, String> {
        let (mut quick, mut duration, mut warmup, mut quiet_wait, mut retries) =
            (false, None, None, None, None);
        let mut stats_urls = None;
        let mut rtts = None;
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
            stats_stores: None,
            only_stats: false,
            rtts: Vec::new(),
            wrk: false,
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
                "--wrk" => options.wrk = true,
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
                "--stats-stores" => {
                    options.stats_stores = Some(stores(&value("--stats-stores")?)?);
                }
                "--only" => match value("--only")?.as_str() {
                    "stats" => options.only_stats = true,
                    other => return Err(format!("--only {other:?}: expected stats")),
                },
                "--rtt" => rtts = Some(round_trips(&value("--rtt")?)?),
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
        options.rtts = rtts.unwrap_or_else(|| {
            let defaults: &[&str] = if quick { &["0.5ms"] } else { &["0.5ms", "2ms"] };
            defaults
                .iter()
                .map(|rtt| Rtt::parse(rtt).expect("the default round trips are valid"))
                .collect()
        });
        options.retries = retries.unwrap_or(options.retries);
        options.quiet_wait = quiet_wait.unwrap_or(options.quiet_wait);
        options.duration = duration.unwrap_or(options.duration);
        options.paced = if quick && duration.is_none() {
            Duration::from_secs(1)
        } else {
            options.duration
        };
        options.warmup = warmup.unwrap_or(options.warmup);
        Ok(options)
    }

    /// The `/stats/` scale scenario's plan, when it runs on any store: those of
    /// `--stats-stores`; otherwise all three with `--only stats`, and after the others
    /// those whose target is among them (tally-redis, tally-embedded, tally-cluster).
    pub fn stats_plan(&self) -> Option<stats_scale::Plan> {
        let stores = match &self.stats_stores {
            Some(stores) => stores.clone(),
            None if self.only_stats => StatsStore::ALL.to_vec(),
            None => StatsStore::ALL
                .into_iter()
                .filter(|store| self.targets.contains(&store.target()))
                .collect(),
        };
        (!stores.is_empty()).then(|| stats_scale::Plan::new(self.stats_urls, self.quick, stores))
    }

    /// The load scenarios run (none with `--only stats`).
    pub fn plan(&self) -> Vec<Scenario> {
        if self.only_stats {
            Vec::new()
        } else {
            scenario::scenarios(&self.targets, self.quick, &self.rtts)
        }
    }

    /// Whether the run needs the Redis Cluster: for the `tally-cluster` target, or the
    /// `/stats/` scale scenario on the cluster.
    pub fn uses_cluster(&self) -> bool {
        self.plan().iter().any(|s| s.kind.uses_cluster())
            || self
                .stats_plan()
                .as_ref()
                .is_some_and(stats_scale::Plan::uses_cluster)
    }

    /// Longest the whole run can rightly take; the watchdog stops it past twice this.
    pub fn budget(&self, scenarios: usize) -> Duration {
        // Six nodes started one by one (10 s each at most), the cluster created and
        // settled (60 s at most).
        let cluster_start = if self.uses_cluster() {
            Duration::from_secs(120)
        } else {
            Duration::ZERO
        };
        // The paced floor after a tally scenario: its warm-up and phase, and their grace.
        let paced_floor = scenario::PACED_WARMUP + self.paced + GRACE * 2;
        let per_scenario = self.warmup
            + self.duration
            + scenario::PACED_WARMUP
            + self.paced
            + paced_floor
            + GRACE * 4
            + self.quiet_wait
            + Duration::from_secs(45);
        per_scenario * scenarios as u32 * (self.retries + 1) * self.rounds as u32
            + self.stats_plan().map_or(Duration::ZERO, |p| {
                p.budget() + self.quiet_wait * p.stores.len() as u32
            })
            + cluster_start
            + self.wrk_budget()
            + Duration::from_secs(30)
    }
}

impl Options {
    /// Longest the `--wrk` cross-check can rightly take: two scenarios on up to four
    /// targets, each a warm-up and two runs of `duration`.
    fn wrk_budget(&self) -> Duration {
        if !self.wrk {
            return Duration::ZERO;
        }
        (self.warmup + self.duration * 2 + GRACE * 2 + self.quiet_wait + Duration::from_secs(30))
            * 8
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

/// `--rtt`: `none`, or round trips, comma-separated, each once, in the order given.
fn round_trips(list: &str) -> Result<Vec<Rtt>, String> {
    if list.trim() == "none" {
        return Ok(Vec::new());
    }
    let mut rtts: Vec<Rtt> = Vec::new();
    for rtt in list.split(',') {
        let rtt = Rtt::parse(rtt).map_err(|e| format!("--rtt: {e}"))?;
        if !rtts.contains(&rtt) {
            rtts.push(rtt);
        }
    }
    Ok(rtts)
}

/// `--stats-stores`: `none`, or stores by name, comma-separated.
fn stores(list: &str) -> Result<Vec<StatsStore>, String> {
    if list.trim() == "none" {
        return Ok(Vec::new());
    }
    list.split(',')
        .map(|name| {
            StatsStore::ALL
                .into_iter()
                .find(|store| store.name() == name.trim())
                .ok_or(format!(
                    "--stats-stores: unknown store {name:?} (expected redis, embedded, cluster or none)"
                ))
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Load;

    fn parse(args: &[&str]) -> Result<Options, String> {
        Options::parse(args.iter().map(|a| (*a).to_owned()))
    }

    fn stats_stores(args: &[&str]) -> Option<Vec<StatsStore>> {
        parse(args).unwrap().stats_plan().map(|p| p.stores)
    }

    #[test]
    fn stats_scale_runs_after_the_others_on_the_stores_of_the_targets() {
        let all = parse(&[]).unwrap();
        assert!(!all.plan().is_empty());
        assert_eq!(all.stats_plan().map(|p| p.urls), Some(1_000_000));
        assert_eq!(stats_stores(&[]), Some(StatsStore::ALL.to_vec()));
        assert_eq!(stats_stores(&["--targets", "floor"]), None);
        assert_eq!(
            stats_stores(&["--targets", "tally-memory,tally-embedded"]),
            Some(vec![StatsStore::Embedded])
        );
        assert_eq!(
            stats_stores(&["--targets", "tally-redis"]),
            Some(vec![StatsStore::Redis])
        );
        assert_eq!(
            stats_stores(&["--quick", "--targets", "tally-cluster"]),
            Some(vec![StatsStore::Cluster])
        );
    }

    #[test]
    fn stats_stores_are_chosen_by_name_or_none() {
        assert_eq!(
            stats_stores(&["--only", "stats"]),
            Some(StatsStore::ALL.to_vec())
        );
        assert_eq!(
            stats_stores(&["--only", "stats", "--stats-stores", "embedded"]),
            Some(vec![StatsStore::Embedded])
        );
        assert_eq!(
            stats_stores(&["--stats-stores", "cluster, embedded, redis"]),
            Some(StatsStore::ALL.to_vec())
        );
        assert_eq!(
            stats_stores(&["--stats-stores", "embedded,redis"]),
            Some(vec![StatsStore::Redis, StatsStore::Embedded])
        );
        assert_eq!(stats_stores(&["--stats-stores", "none"]), None);
        assert!(parse(&["--stats-stores", "memory"]).is_err());
    }

    #[test]
    fn the_cluster_store_alone_starts_the_cluster_but_not_the_nodes() {
        let options = parse(&["--only", "stats", "--quick", "--stats-stores", "cluster"]).unwrap();
        let stats = options.stats_plan().unwrap();
        assert_eq!(stats.stores, [StatsStore::Cluster]);
        assert_eq!(stats.urls, 100_000);
        assert!(options.uses_cluster());
        assert!(!stats.uses_redis());
        // The cluster's start is in the watchdog's budget.
        let embedded =
            parse(&["--only", "stats", "--quick", "--stats-stores", "embedded"]).unwrap();
        assert!(!embedded.uses_cluster());
        assert!(options.budget(0) >= embedded.budget(0) + Duration::from_secs(120));
    }

    /// What `kind` is sent on loopback, in run order.
    fn loads_of(plan: &[Scenario], kind: Kind) -> Vec<Load> {
        plan.iter()
            .filter(|s| s.kind == kind && s.rtt.is_none())
            .map(|s| s.load)
            .collect()
    }

    #[test]
    fn tally_memory_is_a_target_and_runs_before_the_embedded_store() {
        let options = parse(&["--targets", "tally-embedded,tally-memory"]).unwrap();
        assert_eq!(options.targets, [Kind::TallyMemory, Kind::TallyEmbedded]);
        let plan = options.plan();
        assert!(plan.iter().all(|s| !s.kind.uses_redis() && s.rtt.is_none()));
        let shared = [Load::VisitHot, Load::VisitCold, Load::CountCold];
        assert_eq!(loads_of(&plan, Kind::TallyMemory), shared);
        assert_eq!(loads_of(&plan, Kind::TallyEmbedded)[..3], shared);
    }

    #[test]
    fn the_bulk_runs_on_every_stored_target_but_on_one_with_quick() {
        let targets = [
            "--targets",
            "floor,tally-memory,tally-embedded,tally-redis",
            "--rtt",
            "none",
        ];
        let full = parse(&targets).unwrap().plan();
        let bulk_on = |plan: &[Scenario]| -> Vec<Kind> {
            plan.iter()
                .filter(|s| s.load == Load::BulkHot)
                .map(|s| s.kind)
                .collect()
        };
        assert_eq!(bulk_on(&full), [Kind::TallyEmbedded, Kind::TallyRedis]);
        // After the single visits of the same target, which it is set against.
        assert_eq!(
            loads_of(&full, Kind::TallyEmbedded),
            [
                Load::VisitHot,
                Load::VisitCold,
                Load::CountCold,
                Load::BulkHot
            ]
        );

        let quick = parse(&[&["--quick"][..], &targets].concat())
            .unwrap()
            .plan();
        assert_eq!(bulk_on(&quick), [Kind::TallyEmbedded]);
        assert_eq!(quick.len() + 1, full.len());
        let redis_only = parse(&["--quick", "--targets", "tally-redis,tally-cluster"]).unwrap();
        assert_eq!(bulk_on(&redis_only.plan()), [Kind::TallyRedis]);
    }

    #[test]
    fn tally_cluster_runs_by_default_on_its_own_nodes_then_stats_on_the_cluster() {
        assert!(
            parse(&["--quick"])
                .unwrap()
                .targets
                .contains(&Kind::TallyCluster)
        );
        let options = parse(&["--targets", "tally-cluster,floor"]).unwrap();
        assert_eq!(options.targets, [Kind::Floor, Kind::TallyCluster]);

        let plan = options.plan();
        let loads = loads_of(&plan, Kind::TallyCluster);
        assert_eq!(
            loads,
            [
                Load::VisitHot,
                Load::VisitCold,
                Load::CountHot,
                Load::BulkHot
            ]
        );
        // The standalone nodes are not started for it, and it has no latency mode (the
        // cluster's nodes tell their clients their own addresses); /stats/ at scale runs
        // on the cluster.
        assert!(plan.iter().all(|s| !s.kind.uses_redis() && s.rtt.is_none()));
        let stats = options.stats_plan().unwrap();
        assert_eq!(stats.stores, [StatsStore::Cluster]);
        assert!(!stats.uses_redis());
        // The cluster's start is in the watchdog's budget.
        let without = parse(&["--targets", "floor"]).unwrap();
        assert!(
            options.budget(plan.len())
                >= without.budget(without.plan().len()) + Duration::from_secs(120)
        );
    }

    #[test]
    fn the_latency_mode_repeats_the_redis_visits_after_their_loopback_scenarios() {
        let rtt = |text| Some(Rtt::parse(text).unwrap());
        let options = parse(&["--targets", "floor,naive,tally-redis"]).unwrap();
        assert_eq!(options.rtts, [rtt("0.5ms").unwrap(), rtt("2ms").unwrap()]);
        let plan = options.plan();
        let delayed: Vec<(Kind, Load, Option<Rtt>)> = plan
            .iter()
            .filter(|s| s.rtt.is_some())
            .map(|s| (s.kind, s.load, s.rtt))
            .collect();
        assert_eq!(
            delayed,
            [
                (Kind::Naive, Load::VisitHot, rtt("0.5ms")),
                (Kind::Naive, Load::VisitHot, rtt("2ms")),
                (Kind::TallyRedis, Load::VisitHot, rtt("0.5ms")),
                (Kind::TallyRedis, Load::VisitCold, rtt("0.5ms")),
                (Kind::TallyRedis, Load::VisitHot, rtt("2ms")),
                (Kind::TallyRedis, Load::VisitCold, rtt("2ms")),
            ]
        );
        // Right after the loopback scenarios of the same target, which they are set against.
        let naive_at = plan.iter().position(|s| s.kind == Kind::Naive).unwrap();
        assert_eq!(plan[naive_at + 1].rtt, rtt("0.5ms"));

        let quick = parse(&["--quick", "--targets", "floor,naive,naive-mux,tally-redis"]).unwrap();
        let delayed: Vec<(Kind, Load, Option<Rtt>)> = quick
            .plan()
            .iter()
            .filter(|s| s.rtt.is_some())
            .map(|s| (s.kind, s.load, s.rtt))
            .collect();
        assert_eq!(
            delayed,
            [
                (Kind::Naive, Load::VisitHot, rtt("0.5ms")),
                (Kind::TallyRedis, Load::VisitHot, rtt("0.5ms")),
            ]
        );

        let none = parse(&["--rtt", "none"]).unwrap();
        assert!(none.plan().iter().all(|s| s.rtt.is_none()));
        let chosen = parse(&["--rtt", "2ms, 500us,2ms"]).unwrap();
        assert_eq!(chosen.rtts, [rtt("2ms").unwrap(), rtt("0.5ms").unwrap()]);
        assert!(parse(&["--rtt", "2"]).is_err());
    }

    #[test]
    fn the_paced_phase_lasts_as_long_as_the_closed_loop_but_one_second_with_quick() {
        assert_eq!(parse(&[]).unwrap().paced, Duration::from_secs(10));
        assert_eq!(
            parse(&["--duration", "3"]).unwrap().paced,
            Duration::from_secs(3)
        );
        assert_eq!(parse(&["--quick"]).unwrap().paced, Duration::from_secs(1));
        assert_eq!(
            parse(&["--quick", "--duration", "4"]).unwrap().paced,
            Duration::from_secs(4)
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
