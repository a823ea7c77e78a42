//! What the scenario measured ([`Report`]), whether it passed, and its markdown section:
//! the setup, the phases table of every store, the issues' targets, the deep page's
//! breakdown on Redis.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::time::Duration;

use tally_redis::{STATS_BUCKETS, URLS_KEY};

use super::breakdown::Breakdown;
use super::phases::{PhaseResult, RETRY_AFTER_CAP};
use super::poll::POLL_EVERY;
use super::seed::SEED_BATCH;
use super::{CLIENTS, DEFAULT_URLS, PAGE, Plan, StatsStore, StoreRun, Which};
use crate::measure::{self, NodeWork};

/// The original Flask service's `GET /stats/` at 10,000 URLs, measured (issue 15): the
/// reference the figures are set beside.
const ORIGINAL_P50_MS: u64 = 662;
/// Targets of issue 15 (for 1,000,000 URLs on Redis): p50 in ms of the top page and the
/// deep page.
const TOP_P50_TARGET_MS: f64 = 5.0;
const DEEP_P50_TARGET_MS: f64 = 50.0;
/// Target of issue 17 (for 1,000,000 URLs on the embedded store): p50 in ms of the top
/// page.
const EMBEDDED_TOP_P50_TARGET_MS: f64 = 20.0;
/// p50 in ms of the top page on the Redis Cluster, 1,000,000 URLs. No issue sets one: this
/// is the embedded store's bound, since issue 15's 5 ms was set for three standalone
/// nodes, where the cluster merges the heads of 16 buckets. Its deep page is held to issue
/// 15's [`DEEP_P50_TARGET_MS`], as on standalone Redis.
const CLUSTER_TOP_P50_TARGET_MS: f64 = 20.0;

/// What the scenario measured.
#[derive(Debug)]
pub struct Report {
    pub(super) plan: Plan,
    pub(super) ranking: Duration,
    /// Count at the deep page and how many URLs share it.
    pub(super) deep_ties: (u64, usize),
    /// Every store's run, in run order.
    pub(super) runs: Vec<StoreRun>,
}

impl Report {
    /// True when every answer matched the seeded ranking and every phase got `200`s, on
    /// every store.
    pub fn passed(&self) -> bool {
        self.runs
            .iter()
            .flat_map(|run| &run.phases)
            .all(|p| p.answers.wrong == 0 && p.answers.ok > 0)
    }

    /// The first wrong answer (or phase without a `200`), naming its store, for the error
    /// line.
    pub fn first_problem(&self) -> Option<String> {
        self.runs.iter().find_map(|run| {
            run.phases.iter().find_map(|p| {
                let problem = p.answers.first_wrong.clone().or_else(|| {
                    (p.answers.ok == 0).then(|| {
                        format!(
                            "{} from {} client(s): no 200 answer",
                            p.phase_name(self.plan.deep_offset()),
                            p.clients
                        )
                    })
                })?;
                Some(format!("{} store: {problem}", run.store))
            })
        })
    }

    /// The scenario's markdown section: setup, the table, the targets, the breakdown.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.render_setup(&mut out);
        self.render_phases(&mut out);
        self.render_targets(&mut out);
        self.render_breakdown(&mut out);
        out
    }

    /// The heading, then how each store was seeded and the server asked.
    fn render_setup(&self, out: &mut String) {
        let urls = thousands(self.plan.urls as u64);
        let stores: Vec<&str> = self.runs.iter().map(|run| store_title(run.store)).collect();
        let _ = writeln!(
            out,
            "\n### `/stats/` at scale ({urls} URLs; {})\n",
            stores.join(", then ")
        );
        let _ = writeln!(
            out,
            "- seed: {urls} distinct URLs (`/api/v1/shop/items/0/details/` ..., 29 to 52 bytes; URL i counts max(1, 1,000,000 / (i + 1))), the same on every store; expected ranking computed from the seed in {:.2} s",
            self.ranking.as_secs_f64()
        );
        for run in &self.runs {
            let seeded = &run.seeded;
            let per_second =
                thousands((self.plan.urls as f64 / seeded.seeding.as_secs_f64().max(1e-9)) as u64);
            match run.store {
                StatsStore::Redis => {
                    let _ = writeln!(
                        out,
                        "- Redis: seeded with `RedisStore::apply` in the sorted-set layout, {} keys a batch, each on its ring node, in {:.1} s ({} URLs/s); `ZCARD {URLS_KEY}` per node {} (sum checked)",
                        thousands(SEED_BATCH as u64),
                        seeded.seeding.as_secs_f64(),
                        per_second,
                        per_node(&seeded.per_node, |n| thousands(*n)),
                    );
                }
                StatsStore::Embedded => {
                    let _ = writeln!(
                        out,
                        "- embedded: seeded with `EmbeddedStore::apply` on the `ranked()` view (the request statistics' tables of tally-server's file, its one shard) of a store opened with tally-server's defaults in a fresh temporary directory, {} keys a batch, each one durable write transaction, in {:.1} s ({} URLs/s, the open and the check included); the view holds {} URLs (checked); file {:.0} MB; the store then closed and tally-server started with that directory as `DATA_DIR` (no `REDIS_NODES`)",
                        thousands(SEED_BATCH as u64),
                        seeded.seeding.as_secs_f64(),
                        per_second,
                        per_node(&seeded.per_node, |n| thousands(*n)),
                        seeded.file_bytes.unwrap_or(0) as f64 / 1e6,
                    );
                }
                StatsStore::Cluster => {
                    let _ = writeln!(
                        out,
                        "- Redis Cluster (3 primaries, a replica each): seeded with `ClusterStore::apply` on a `with_layout(Layout::SortedSet)` view, each URL on its bucket (`tally:urls:{{bNNNN}}`, {STATS_BUCKETS} buckets, as tally-server's request statistics), {} keys a batch, each confirmed by `WAIT` on {} replica(s), in {:.1} s ({} URLs/s); URLs per primary {} (the buckets' `ZCARD`s, sum checked); tally-server started with `REDIS_CLUSTER` set to the six nodes' URLs",
                        thousands(SEED_BATCH as u64),
                        seeded
                            .wait_replicas
                            .map_or_else(|| "?".to_owned(), |n| n.to_string()),
                        seeded.seeding.as_secs_f64(),
                        per_second,
                        per_node(&seeded.per_node, |n| thousands(*n)),
                    );
                }
            }
        }
        let _ = writeln!(
            out,
            "- deep page: offset {}, limit {PAGE}: count {} there, shared by {} URLs (ties broken by url)",
            thousands(self.plan.deep_offset() as u64),
            self.deep_ties.0,
            thousands(self.deep_ties.1 as u64)
        );
        let _ = writeln!(
            out,
            "- tally-server: default config, fresh start after seeding; client: reqwest, one keep-alive connection per client, requests back to back, timed until the whole body is in; every 200 answer checked entry by entry against the seed's ranking; a 503 waits its `Retry-After` (at most {} s); percentiles are of 200 answers; `/health` and `/status` polled every {} ms in every phase (on the embedded store `/health` is always healthy and `/status` lists no nodes: only failing batches and unanswered polls can show there); Redis CPU and commands are of the nodes (on the cluster all six, primaries and replicas), so `-` on the embedded store, whose work is in the server column of CPU\n",
            RETRY_AFTER_CAP.as_secs(),
            POLL_EVERY.as_millis()
        );
    }

    /// A row per store and phase, then the original service's figure beside them.
    fn render_phases(&self, out: &mut String) {
        let urls = thousands(self.plan.urls as u64);
        let offset = self.plan.deep_offset();
        let _ = writeln!(
            out,
            "| store | URLs | phase | clients | requests | p50 ms | p90 ms | p99 ms | max ms | 503s | other non-2xx / errors | wrong answers | /health not healthy | nodes down | CPU % client / server / redis / softirq / other | Redis CPU ms per answer, per node | Redis commands per answer, all nodes |"
        );
        let _ = writeln!(
            out,
            "|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|---|---|---|"
        );
        for run in &self.runs {
            for p in &run.phases {
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
                let (redis_cpu, redis_commands) = if p.redis.is_empty() {
                    ("-".to_owned(), "-".to_owned())
                } else {
                    (
                        per_node(&p.redis, |w| format!("{:.1}", w.cpu_ms_per(a.ok))),
                        commands_per(&p.redis, a.ok),
                    )
                };
                let _ = writeln!(
                    out,
                    "| {} | {urls} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} / {} | {} | {} of {}{} | {down} | {} | {redis_cpu} | {redis_commands} |",
                    run.store,
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
                    p.cpu,
                );
            }
        }
        let _ = writeln!(
            out,
            "\noriginal (Flask, 10,000 URLs, measured): p50 {ORIGINAL_P50_MS} ms"
        );
    }

    /// The run on `store`, when it ran.
    fn run(&self, store: StatsStore) -> Option<&StoreRun> {
        self.runs.iter().find(|run| run.store == store)
    }

    /// The targets: per store the p50 of each page from one client (a target where an
    /// issue set one, for reference otherwise), and no store seen down under concurrent
    /// deep pages.
    fn render_targets(&self, out: &mut String) {
        let _ = writeln!(out, "\n#### Targets\n");
        if self.plan.urls != DEFAULT_URLS {
            let _ = writeln!(
                out,
                "(the targets are set for {} URLs; this run has {})\n",
                thousands(DEFAULT_URLS as u64),
                thousands(self.plan.urls as u64)
            );
        }
        let _ = writeln!(out, "| figure | value | target | met |");
        let _ = writeln!(out, "|---|--:|--:|:-:|");
        let verdict = |met: bool| if met { "yes" } else { "**no**" };
        for run in &self.runs {
            let name = store_name(run.store);
            for (which, page, target) in p50_targets(run.store) {
                let Some(p) = phase(run, which, 1) else {
                    continue;
                };
                let v = p.answers.ms(0.50);
                let (target, met) = match target {
                    Some(target) => (format!("<= {target}"), verdict(v <= target)),
                    None => ("(reference)".to_owned(), ""),
                };
                let _ = writeln!(
                    out,
                    "| {name}, {page}, p50 ms (1 client) | {v:.2} | {target} | {met} |"
                );
            }
            if let Some(p) = phase(run, Which::Deep, CLIENTS) {
                let bad = p.polls.max_down + p.polls.failing.len() + p.polls.not_healthy as usize;
                let _ = writeln!(
                    out,
                    "| {name}, {CLIENTS} concurrent deep clients: nodes seen down / failing, /health not healthy | {} / {}, {} | 0 | {} |",
                    p.polls.max_down,
                    p.polls.failing.len(),
                    p.polls.not_healthy,
                    verdict(bad == 0)
                );
            }
        }
    }

    /// The deep page over HTTP beside the baseline's parts, when the breakdown ran (on
    /// Redis).
    fn render_breakdown(&self, out: &mut String) {
        let Some(run) = self.run(StatsStore::Redis) else {
            return;
        };
        let Some(b) = run.breakdown.as_ref().filter(|b| !b.fetch.is_empty()) else {
            return;
        };
        render_breakdown(out, &self.plan, run, b);
    }
}

/// The phase of `which` page from `clients` clients of one store's run.
fn phase(run: &StoreRun, which: Which, clients: usize) -> Option<&PhaseResult> {
    run.phases
        .iter()
        .find(|p| p.which == which && p.clients == clients)
}

/// The store as the heading names it.
fn store_title(store: StatsStore) -> &'static str {
    match store {
        StatsStore::Redis => "3 Redis nodes",
        StatsStore::Embedded => "the embedded store",
        StatsStore::Cluster => "a Redis Cluster of 6 nodes",
    }
}

/// The store as the targets table names it.
fn store_name(store: StatsStore) -> &'static str {
    match store {
        StatsStore::Redis => "Redis",
        StatsStore::Embedded => "embedded",
        StatsStore::Cluster => "Redis Cluster",
    }
}

/// The pages whose p50 (1 client) is reported in the targets table, with the target in
/// ms where an issue set one for `store`.
fn p50_targets(store: StatsStore) -> [(Which, &'static str, Option<f64>); 2] {
    match store {
        StatsStore::Redis => [
            (Which::Top, "top 100", Some(TOP_P50_TARGET_MS)),
            (Which::Deep, "deep page", Some(DEEP_P50_TARGET_MS)),
        ],
        StatsStore::Embedded => [
            (Which::Top, "top 100", Some(EMBEDDED_TOP_P50_TARGET_MS)),
            (Which::Deep, "deep page", None),
        ],
        StatsStore::Cluster => [
            (Which::Top, "top 100", Some(CLUSTER_TOP_P50_TARGET_MS)),
            (Which::Deep, "deep page", Some(DEEP_P50_TARGET_MS)),
        ],
    }
}

/// The Redis deep page over HTTP beside the baseline's parts.
fn render_breakdown(out: &mut String, plan: &Plan, run: &StoreRun, b: &Breakdown) {
    let offset = plan.deep_offset();
    let _ = writeln!(
        out,
        "\n#### Deep page against the baseline (Redis): every node's head merged, the method before the read around the page's counts (p50 of {} runs from the harness, the server idle)\n",
        b.fetch.len()
    );
    let _ = writeln!(out, "| part | p50 ms |");
    let _ = writeln!(out, "|---|--:|");
    if let Some(p) = phase(run, Which::Deep, 1) {
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
                .map_or(f64::NAN, |w| w.cpu_ms_per(times.len() as u64)),
            b.alone_redis.get(shard).map_or(String::new(), |w| {
                commands_per(std::slice::from_ref(w), times.len() as u64)
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

/// One figure per node, `a / b / c`.
pub(super) fn per_node<T>(nodes: &[T], figure: impl Fn(&T) -> String) -> String {
    nodes.iter().map(figure).collect::<Vec<_>>().join(" / ")
}

/// Commands per answer summed over `nodes`: the total, then the three most frequent.
fn commands_per(nodes: &[NodeWork], answers: u64) -> String {
    let total = measure::sum_commands(nodes.iter().map(|node| &node.commands));
    measure::top_commands(&total, 3, |calls| {
        format!("{:.2}", calls as f64 / answers.max(1) as f64)
    })
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
pub(super) fn thousands(n: u64) -> String {
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
    use super::super::phases::Answers;
    use super::super::poll::Polls;
    use super::super::seed::Seeded;
    use super::*;
    use crate::measure::CpuUse;

    /// A phase whose `200` answers all took `p50_ms`; `wrong` of them were wrong.
    fn phase(which: Which, clients: usize, p50_ms: u64, wrong: u64) -> PhaseResult {
        PhaseResult {
            which,
            clients,
            answers: Answers {
                latencies: vec![Duration::from_millis(p50_ms); 10],
                ok: 10,
                wrong,
                first_wrong: (wrong > 0).then(|| "/stats/: entry 3 differs".to_owned()),
                ..Answers::default()
            },
            polls: Polls::default(),
            cpu: CpuUse::default(),
            redis: Vec::new(),
        }
    }

    /// A run on `store` whose top page took `top_p50_ms`.
    fn run(store: StatsStore, top_p50_ms: u64, wrong: u64) -> StoreRun {
        StoreRun {
            store,
            seeded: Seeded {
                seeding: Duration::from_secs(1),
                per_node: vec![1_000_000],
                file_bytes: None,
                wait_replicas: None,
            },
            phases: vec![
                phase(Which::Top, 1, top_p50_ms, 0),
                phase(Which::Deep, 1, 3, wrong),
                phase(Which::Top, CLIENTS, top_p50_ms, 0),
                phase(Which::Deep, CLIENTS, 3, 0),
            ],
            breakdown: None,
        }
    }

    fn report(runs: Vec<StoreRun>) -> Report {
        Report {
            plan: Plan::new(DEFAULT_URLS, false, runs.iter().map(|r| r.store).collect()),
            ranking: Duration::ZERO,
            deep_ties: (9, 11_111),
            runs,
        }
    }

    #[test]
    fn a_wrong_answer_on_the_embedded_store_fails_the_run_and_names_the_store() {
        let good = report(vec![
            run(StatsStore::Redis, 1, 0),
            run(StatsStore::Embedded, 1, 0),
        ]);
        assert!(good.passed());
        assert_eq!(good.first_problem(), None);

        let bad = report(vec![
            run(StatsStore::Redis, 1, 0),
            run(StatsStore::Embedded, 1, 2),
        ]);
        assert!(!bad.passed());
        assert_eq!(
            bad.first_problem().as_deref(),
            Some("embedded store: /stats/: entry 3 differs")
        );
    }

    #[test]
    fn the_embedded_top_page_is_held_to_20_ms_and_redis_to_5_ms() {
        let mut out = String::new();
        report(vec![
            run(StatsStore::Redis, 7, 0),
            run(StatsStore::Embedded, 7, 0),
        ])
        .render_targets(&mut out);
        assert!(
            out.contains("| Redis, top 100, p50 ms (1 client) | 7.00 | <= 5 | **no** |"),
            "{out}"
        );
        assert!(
            out.contains("| embedded, top 100, p50 ms (1 client) | 7.00 | <= 20 | yes |"),
            "{out}"
        );
        assert!(
            out.contains("| embedded, deep page, p50 ms (1 client) | 3.00 | (reference) |  |"),
            "{out}"
        );

        let mut out = String::new();
        report(vec![run(StatsStore::Embedded, 21, 0)]).render_targets(&mut out);
        assert!(
            out.contains("| embedded, top 100, p50 ms (1 client) | 21.00 | <= 20 | **no** |"),
            "{out}"
        );
        assert!(!out.contains("Redis"), "{out}");
    }

    #[test]
    fn the_cluster_gets_the_rows_of_redis_with_its_own_top_page_target() {
        let cluster = report(vec![
            run(StatsStore::Redis, 7, 0),
            run(StatsStore::Cluster, 7, 0),
        ]);
        let mut out = String::new();
        cluster.render_targets(&mut out);
        assert!(
            out.contains("| Redis Cluster, top 100, p50 ms (1 client) | 7.00 | <= 20 | yes |"),
            "{out}"
        );
        assert!(
            out.contains("| Redis Cluster, deep page, p50 ms (1 client) | 3.00 | <= 50 | yes |"),
            "{out}"
        );
        assert!(
            out.contains("| Redis Cluster, 8 concurrent deep clients: nodes seen down"),
            "{out}"
        );
        let mut out = String::new();
        cluster.render_phases(&mut out);
        assert_eq!(
            out.matches("\n| cluster | 1,000,000 | ").count(),
            4,
            "{out}"
        );

        let bad = report(vec![run(StatsStore::Cluster, 1, 1)]);
        assert!(!bad.passed());
        assert_eq!(
            bad.first_problem().as_deref(),
            Some("cluster store: /stats/: entry 3 differs")
        );
    }

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000_000), "1,000,000");
    }
}
