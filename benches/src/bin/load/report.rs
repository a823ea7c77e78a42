//! The report of the load scenarios, in markdown: the header (when, where, how), then one
//! table each: the maximum rate, the paced phase (both on loopback), the latency mode's
//! round trips, the targets; and, with `--compare-clients`, the load client's cost. The `/stats/` scale scenario renders its
//! own section ([`crate::stats_scale::Report::render`]).

use std::fmt::Write as _;
use std::time::Duration;

use crate::delay::Rtt;
use crate::measure::{self, CommandCounts, CpuUse};
use crate::options::Options;
use crate::scenario::{self, ClientCost, Load, Measured, Row};
use crate::targets::Kind;

/// The report of the load scenarios: header, settings, then the tables: the loopback
/// scenarios' first, then the latency mode's, then the targets of both.
pub fn render(options: &Options, rows: &[Row], load_before: &str, elapsed: Duration) -> String {
    let mut out = render_header(load_before, elapsed, "");
    render_settings(&mut out, options);
    let loopback: Vec<Row> = rows.iter().filter(|r| r.rtt.is_none()).cloned().collect();
    render_max_rate(&mut out, &loopback);
    render_bulk(&mut out, &loopback);
    render_cache_reads(&mut out, &loopback);
    render_cluster_roles(&mut out, &loopback);
    render_paced(&mut out, options, &loopback);
    render_p99_vs_floor(&mut out, &loopback);
    render_round_trip(&mut out, rows);
    render_stops(&mut out, rows);
    render_targets(&mut out, &loopback, rows);
    for target in round_trip_targets(rows) {
        let (figure, value, shown, met) = target;
        render_target(&mut out, (&figure, value, shown, met));
    }
    render_latency_targets(&mut out, options, &loopback);
    out
}

/// The header alone, with the setting of the only scenario run, for `--only stats`;
/// `redis` when the nodes ran, `cluster` when the Redis Cluster did.
pub fn render_stats_only_header(
    load_before: &str,
    elapsed: Duration,
    redis: bool,
    cluster: bool,
) -> String {
    render_header(
        load_before,
        elapsed,
        &format!(
            "; {} build;{}{} server and client in this process, on their own tokio runtimes",
            build_profile(),
            if redis {
                " 3 local redis-server nodes (no persistence);"
            } else {
                ""
            },
            if cluster {
                " a local Redis Cluster of 6 redis-server nodes (3 primaries, a replica each, no persistence);"
            } else {
                ""
            }
        ),
    )
}

/// The report's first lines: when, where, how long; `extra` ends the line.
fn render_header(load_before: &str, elapsed: Duration, extra: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## tally load harness\n");
    let _ = writeln!(
        out,
        "- {} UTC on {} CPUs ({}); load average {load_before} before, {} after; {:.0} s in all{extra}",
        chrono::Utc::now().format("%Y-%m-%d %H:%M:%S"),
        cpu_count(),
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

/// CPUs this process may use (0 when unknown).
fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

/// How the run was arranged: phases, client, servers, Redis, what the CPU columns mean.
fn render_settings(out: &mut String, options: &Options) {
    let _ = writeln!(
        out,
        "- {} build; per scenario a fresh server, {} s warm-up, {} s closed loop, {} s paced at {:.0}% of the closed-loop rate (after {} s paced warm-up at that rate); {} keep-alive connections; client on {} tokio thread(s); servers on actix-web's default workers plus a {}-thread tokio runtime, in the same process",
        build_profile(),
        options.warmup.as_secs_f64(),
        options.duration.as_secs_f64(),
        options.paced.as_secs_f64(),
        options.paced_fraction * 100.0,
        scenario::PACED_WARMUP.as_secs_f64(),
        options.connections,
        options.client_threads,
        cpu_count(),
    );
    if options.rounds > 1 {
        let _ = writeln!(
            out,
            "- {} rounds, targets interleaved; each row is the round with the median closed-loop rate for that scenario",
            options.rounds
        );
    }
    let on_off = |on: bool| if on { "on" } else { "**off**" };
    let _ = writeln!(
        out,
        "- tally-server: default config on 127.0.0.1 (batch interval 5 s, cache TTL 5 s, cache capacity 100,000), its log subscriber at `info` writing to a file {}, Prometheus recorder {}; `tally-embedded` counts in its default store (one redb file, every batch a durable commit, in a fresh temporary `DATA_DIR` under {}), `tally-memory` in `MemoryStore` (`STORE=memory`), `tally-redis` on the three nodes, `tally-cluster` on a Redis Cluster of six more nodes (`REDIS_CLUSTER`: three primaries with a replica each, no persistence; `REDIS_WAIT_REPLICAS` at its default, 1: every batch waits for one replica)",
        on_off(options.server_logs),
        on_off(options.server_metrics),
        std::env::temp_dir().display(),
    );
    let _ = writeln!(
        out,
        "- Redis: 3 local redis-server nodes (no persistence); `naive` routes by xxh3(page id) % 3, tally by its ring; commands are INFO commandstats deltas over the phase, summed over the nodes of the target (INFO itself left out; for `tally-cluster` all six, so the replicas' copies of each write and the `WAIT`s count too). CPU: % of one core used during the phase by the client threads / the server threads / the redis-servers of the target (the other redis-servers of the run, idle, are left out of every column) / softirq (the kernel's loopback network work, charged to no process) / everything else on the machine (other processes: a busy neighbour makes that phase's figures suspect). Server CPU µs per request counts the server's threads only (not its share of softirq).\n"
    );
}

/// The closed-loop rate of `kind` on `load`, when it ran.
fn rate(rows: &[Row], kind: Kind, load: Load) -> Option<f64> {
    rows.iter()
        .find(|r| r.kind == kind && r.load == load)
        .map(|r| r.max.outcome.throughput())
}

/// Every closed-loop phase, with its rate against the floor's and the naive target's.
fn render_max_rate(out: &mut String, rows: &[Row]) {
    let floor_of = |load: Load| {
        let floor_load = match load {
            // The floor has no bulk route; the bulk is set against single visits below.
            Load::BulkHot => return None,
            load if load.is_visit() => Load::VisitHot,
            _ => Load::CountHot,
        };
        rate(rows, Kind::Floor, floor_load)
    };
    let naive = rate(rows, Kind::Naive, Load::VisitHot);

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
            errors(m),
            commands(m),
            m.cpu,
            m.cpu.server / 100.0 * 1e6 / rate.max(1.0),
            vs_floor,
            vs_naive,
        );
    }
}

/// The bulk scenario of each target in visits a second (100 a request), beside the
/// single POST visits of the same target and hot set in the same run, and their ratio.
fn render_bulk(out: &mut String, rows: &[Row]) {
    let bulks: Vec<&Row> = rows.iter().filter(|r| r.load == Load::BulkHot).collect();
    if bulks.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n### Bulk visits (closed loop)\n\n`POST /api/v1/counter/visits`, every request the hot set's {} pages with a visit each (every 2xx checked to say `\"recorded\":{}`), against `POST /api/v1/counter/visit/{{page_id}}` on the same pages (one visit a request), same target, same run:\n",
        scenario::BULK_PAGES,
        scenario::BULK_PAGES,
    );
    let _ = writeln!(
        out,
        "| target | bulk req/s | bulk visits/s | bulk p99 ms | single visits/s (POST visit, hot 100) | bulk / single visits/s | 2xx answers checked / not as expected |"
    );
    let _ = writeln!(out, "|---|--:|--:|--:|--:|--:|--:|");
    for row in bulks {
        let m = &row.max;
        let visits = bulk_visits(row);
        let single = rate(rows, row.kind, Load::VisitHot);
        let _ = writeln!(
            out,
            "| {} | {:.0} | {visits:.0} | {:.3} | {} | {} | {} / {} |",
            row.kind,
            m.outcome.throughput(),
            m.outcome.latency_ms(0.99),
            single.map_or("n/a".to_owned(), |s| format!("{s:.0}")),
            single.map_or("n/a".to_owned(), |s| ratio(visits, s)),
            m.outcome.ok + m.outcome.unexpected,
            m.outcome.unexpected,
        );
    }
}

/// Visits a second a bulk row counted: its closed-loop rate times the pages of a request.
fn bulk_visits(row: &Row) -> f64 {
    row.max.outcome.throughput() * row.load.visits_per_request() as f64
}

/// For the count scenarios of tally: how many of its reads the server itself counted as
/// cache hits and misses (a miss reads the store).
fn render_cache_reads(out: &mut String, rows: &[Row]) {
    let phases: Vec<String> = rows
        .iter()
        .filter_map(|row| {
            let max = row.max.cache?;
            let paced = row
                .paced
                .as_ref()
                .and_then(|m| m.cache)
                .map_or(String::new(), |paced| {
                    format!(
                        "; paced: {:.1}% of {}",
                        paced.miss_percent(),
                        paced.hits + paced.misses
                    )
                });
            Some(format!(
                "- {} {}: {:.1}% of {} reads missed the cache (closed loop){paced}",
                row.kind,
                row.load.name(),
                max.miss_percent(),
                max.hits + max.misses
            ))
        })
        .collect();
    if phases.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\nRead-cache misses, as tally-server counts them (`GET /api/v1/counter/metrics` before and after the phase; a miss reads the store):\n"
    );
    for phase in phases {
        let _ = writeln!(out, "{phase}");
    }
}

/// Commands named per role in [`render_cluster_roles`]: enough for a batch's script,
/// the commands run inside it and its `WAIT`.
const ROLE_COMMANDS: usize = 8;

/// For the phases on the Redis Cluster: its commands split between the primaries and the
/// replicas, which the tables sum.
fn render_cluster_roles(out: &mut String, rows: &[Row]) {
    let phases: Vec<String> = rows
        .iter()
        .filter_map(|row| {
            let m = &row.max;
            let on_replicas = m.on_replicas.as_ref()?;
            let on_primaries = measure::command_delta(on_replicas, &m.commands);
            Some(format!(
                "- {} {}: primaries {}; replicas {}",
                row.kind,
                row.load.name(),
                commands_of(m, &on_primaries, ROLE_COMMANDS),
                commands_of(m, on_replicas, ROLE_COMMANDS),
            ))
        })
        .collect();
    if phases.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\nRedis Cluster commands per 1,000 requests (closed loop) by role: on the primaries, and on the replicas (which run the writes of their primary's stream); the tables give their sum:\n"
    );
    for phase in phases {
        let _ = writeln!(out, "{phase}");
    }
}

/// The closed-loop rate of `kind` on `load` over `rtt` (`None`: loopback), when it ran.
fn rate_at(rows: &[Row], kind: Kind, load: Load, rtt: Option<Rtt>) -> Option<f64> {
    rows.iter()
        .find(|r| r.kind == kind && r.load == load && r.rtt == rtt)
        .map(|r| r.max.outcome.throughput())
}

/// The latency mode: each target and scenario run behind the delay proxies, at each round
/// trip and on loopback, with the floor for reference; set against `naive` at the same
/// round trip, the floor, and the same target on loopback. Nothing when the mode did not
/// run.
fn render_round_trip(out: &mut String, rows: &[Row]) {
    // Each (target, scenario) the mode ran, in run order.
    let mut pairs: Vec<(Kind, Load)> = Vec::new();
    for row in rows.iter().filter(|r| r.rtt.is_some()) {
        if !pairs.contains(&(row.kind, row.load)) {
            pairs.push((row.kind, row.load));
        }
    }
    if pairs.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n### Round trip (closed loop)\n\nThe visits of the Redis targets again, each of the three nodes behind a delay proxy that holds every chunk it reads for half the round trip before writing it on, each way, pipelining kept (one child process for the three, on one tokio thread and a clock thread: its CPU is the `proxy` column, which a real network would not take from these cores). On loopback a round trip is about 0.04 ms. `held`: how long the proxy actually held the chunks of the phase, read to written (half the round trip, plus its lateness on this busy machine). The floor has no Redis; its row is the loopback one.\n"
    );
    let _ = writeln!(
        out,
        "| target | scenario | round trip | req/s | p50 ms | p99 ms | non-2xx / errors | Redis cmds per 1k req | held ms, p50 / p99 | CPU % client / server / redis / proxy / softirq / other | server CPU µs per req | vs naive, same round trip | vs floor | vs itself on loopback |"
    );
    let _ = writeln!(
        out,
        "|---|---|--:|--:|--:|--:|--:|---|--:|---|--:|--:|--:|--:|"
    );
    let floor = rate_at(rows, Kind::Floor, Load::VisitHot, None);
    let floor_row = rows
        .iter()
        .find(|r| r.kind == Kind::Floor && r.load == Load::VisitHot && r.rtt.is_none());
    let mut shown: Vec<&Row> = floor_row.into_iter().collect();
    for &(kind, load) in &pairs {
        let mut of_pair: Vec<&Row> = rows
            .iter()
            .filter(|r| r.kind == kind && r.load == load)
            .collect();
        of_pair.sort_by_key(|r| r.rtt);
        shown.extend(of_pair);
    }
    for row in shown {
        let m = &row.max;
        let rate = m.outcome.throughput();
        let versus = |of: Option<f64>| of.map_or(String::new(), |of| ratio(rate, of));
        let vs_naive = if row.kind == Kind::Floor || row.kind == Kind::Naive {
            String::new()
        } else {
            versus(rate_at(rows, Kind::Naive, Load::VisitHot, row.rtt))
        };
        let vs_floor = if row.kind == Kind::Floor {
            String::new()
        } else {
            versus(floor)
        };
        let vs_loopback = if row.rtt.is_some() {
            versus(rate_at(rows, row.kind, row.load, None))
        } else {
            String::new()
        };
        let held = match m.held {
            None => String::new(),
            // tally's batches every 5 s can leave a short phase without any.
            Some(held) if held.chunks == 0 => "no chunks".to_owned(),
            Some(held) => format!(
                "{:.3} / {:.3}",
                held.p50.as_secs_f64() * 1e3,
                held.p99.as_secs_f64() * 1e3
            ),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.0} | {:.3} | {:.3} | {} / {} | {} | {held} | {} | {:.1} | {vs_naive} | {vs_floor} | {vs_loopback} |",
            row.kind,
            row.load.name(),
            row.rtt.map_or("loopback".to_owned(), |rtt| rtt.to_string()),
            rate,
            m.outcome.latency_ms(0.50),
            m.outcome.latency_ms(0.99),
            m.outcome.non_2xx,
            errors(m),
            commands(m),
            cpu_with_proxy(&m.cpu),
            m.cpu.server / 100.0 * 1e6 / rate.max(1.0),
        );
    }
}

/// `client / server / redis / proxy / softirq / other`, whole percents.
fn cpu_with_proxy(cpu: &CpuUse) -> String {
    format!(
        "{:.0} / {:.0} / {:.0} / {:.0} / {:.0} / {:.0}",
        cpu.client, cpu.server, cpu.redis, cpu.proxy, cpu.softirq, cpu.other
    )
}

/// The round trip the targets for the latency mode are set at; below it a Redis
/// round trip is too close to loopback's for the naive targets to fall behind as far.
const TARGET_RTT: Duration = Duration::from_micros(500);

/// The latency mode's targets, per round trip run: tally-redis's POST visit (hot) at least
/// 5 times naive's at the same round trip (from [`TARGET_RTT`] up; for reference below),
/// and within 5% of its own rate on loopback.
fn round_trip_targets(rows: &[Row]) -> Vec<OwnedTarget> {
    let mut rtts: Vec<Rtt> = rows
        .iter()
        .filter(|r| r.kind == Kind::TallyRedis && r.load == Load::VisitHot)
        .filter_map(|r| r.rtt)
        .collect();
    rtts.sort();
    rtts.dedup();
    let tally = |rtt| rate_at(rows, Kind::TallyRedis, Load::VisitHot, rtt);
    let div = |a: Option<f64>, b: Option<f64>| Some(a? / b?);
    let mut targets: Vec<OwnedTarget> = Vec::new();
    for rtt in rtts {
        let vs_naive = div(
            tally(Some(rtt)),
            rate_at(rows, Kind::Naive, Load::VisitHot, Some(rtt)),
        );
        let figure = format!("tally-redis POST visit (hot) / naive, both at a {rtt} round trip");
        if rtt.one_way() * 2 >= TARGET_RTT {
            targets.push((figure, vs_naive, ">= 5", |v| v >= 5.0));
        } else {
            targets.push((figure + " (for reference)", vs_naive, "(none)", |_| true));
        }
        targets.push((
            format!("tally-redis POST visit (hot) at a {rtt} round trip / on loopback"),
            div(tally(Some(rtt)), tally(None)),
            ">= 0.95",
            |v| v >= 0.95,
        ));
    }
    targets
}

/// A stop of tally-server is slow when a backlog of pending counts is left to flush: the
/// table lists stops over this long, and any that left visits unwritten.
const SLOW_STOP: Duration = Duration::from_secs(2);

/// The stops of tally-server that took over [`SLOW_STOP`] or left visits unwritten: how
/// much its store was behind the load when it ended.
fn render_stops(out: &mut String, rows: &[Row]) {
    let slow: Vec<&Row> = rows
        .iter()
        .filter(|row| {
            row.stopped.flush.is_some()
                && (row.stopped.took > SLOW_STOP || row.stopped.pages_unwritten() > 0)
        })
        .collect();
    if slow.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n### Stops over {} s or with visits unwritten\n\ntally-server stops after the paced phase: it drains, then writes what is pending within `SHUTDOWN_TIMEOUT_SECONDS` (25 s), its visits and its request statistics at once (what the statistics' flush wrote is in its log only); what it cannot write by then is lost. Pending when the load ended: its `/status` just before the stop.\n",
        SLOW_STOP.as_secs()
    );
    let _ = writeln!(
        out,
        "| target | scenario | pending when the load ended: pages / statistics URLs | stop s | pages written by the flush | pages / visits left unwritten |"
    );
    let _ = writeln!(out, "|---|---|--:|--:|--:|--:|");
    for row in slow {
        let stopped = &row.stopped;
        let _ = writeln!(
            out,
            "| {} | {}{} | {} | {:.1} | {} | {} / {} |",
            row.kind,
            row.load.name(),
            row.rtt
                .map_or(String::new(), |rtt| format!(", {rtt} round trip")),
            row.backlog
                .map_or("n/a".to_owned(), |b| format!("{} / {}", b.pages, b.urls)),
            stopped.took.as_secs_f64(),
            stopped.flush.as_ref().map_or(0, |f| f.keys_written),
            stopped.pages_unwritten(),
            stopped.visits_unwritten(),
        );
    }
}

/// Every paced phase: the rate offered and achieved, and the latency at that rate.
fn render_paced(out: &mut String, options: &Options, rows: &[Row]) {
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
            errors(m),
            commands(m),
            m.cpu,
        );
    }
}

/// Every paced phase of tally set against the floor paced at the same offered rate right
/// after it ([`Row::floor_paced`]): their latencies, the ratio of their p99s in the round
/// shown and in every round.
fn render_p99_vs_floor(out: &mut String, rows: &[Row]) {
    let compared: Vec<&Row> = rows.iter().filter(|r| r.floor_paced.is_some()).collect();
    if compared.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n### p99 against the floor at the same rate (open loop)\n\nAfter each paced phase of tally above, its server stopped, a fresh `floor` is sent the same requests at the same offered rate for the same time (each paced phase, tally's and the floor's, after a {} s paced warm-up at its rate): what any handler's tail is at that rate on this machine. `by round`: the ratio in every round, in round order (the targets table takes their median).\n",
        scenario::PACED_WARMUP.as_secs_f64(),
    );
    let _ = writeln!(
        out,
        "| target | scenario | offered req/s | p50 ms | p99 ms | floor p50 ms | floor p99 ms | p99 / floor's | by round | CPU other %, target / floor |"
    );
    let _ = writeln!(out, "|---|---|--:|--:|--:|--:|--:|--:|---|---|");
    for row in compared {
        let (Some(paced), Some(floor)) = (&row.paced, &row.floor_paced) else {
            continue;
        };
        let by_round: Vec<String> = row
            .p99_vs_floor_by_round
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect();
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {} | {:.0} / {:.0} |",
            row.kind,
            row.load.name(),
            paced.offered.unwrap_or(0.0),
            paced.outcome.latency_ms(0.50),
            paced.outcome.latency_ms(0.99),
            floor.outcome.latency_ms(0.50),
            floor.outcome.latency_ms(0.99),
            row.p99_vs_floor()
                .map_or("n/a".to_owned(), |r| format!("{r:.2}")),
            by_round.join(", "),
            paced.cpu.other,
            floor.cpu.other,
        );
    }
}

/// A target: the figure's name, its value when measured, the target as printed (in
/// parentheses for a figure given for reference) and the test it must pass.
type Target<'a> = (&'a str, Option<f64>, &'a str, fn(f64) -> bool);

/// A [`Target`] whose figure names a value of the run (a round trip).
type OwnedTarget = (String, Option<f64>, &'static str, fn(f64) -> bool);

/// The head of the targets table and its loopback rows: the rate ratios and commands per
/// visit of the `loopback` rows, and tally's visits left unwritten in any of `rows`.
fn render_targets(out: &mut String, loopback: &[Row], rows: &[Row]) {
    let _ = writeln!(out, "\n### Targets\n");
    let _ = writeln!(out, "| figure | value | target | met |");
    let _ = writeln!(out, "|---|--:|--:|:-:|");
    for target in rate_targets(loopback) {
        render_target(out, target);
    }
    if rows.iter().any(|row| row.stopped.flush.is_some()) {
        let unwritten: u64 = rows.iter().map(|row| row.stopped.visits_unwritten()).sum();
        let _ = writeln!(
            out,
            "| tally-server: visits acknowledged but left unwritten at its stop, the scenarios above | {unwritten} | 0 | {} |",
            if unwritten == 0 { "yes" } else { "**no**" }
        );
    }
}

/// The most tally's p99 at the paced rate may be of the floor's at the same rate.
const P99_VS_FLOOR: f64 = 1.3;

/// The last rows of the targets table: for every paced phase of tally with a floor
/// reference, its p99 over the floor's at the same offered rate (the median over the
/// rounds); the p99 in ms of the other paced phases of tally and of the floor, for
/// reference (on 2 shared cores the floor's own p99 is a few ms).
fn render_latency_targets(out: &mut String, options: &Options, rows: &[Row]) {
    let percent = options.paced_fraction * 100.0;
    for row in rows {
        if !row.kind.is_tally() && row.kind != Kind::Floor {
            continue;
        }
        if row.floor_paced.is_some() {
            let figure = format!(
                "{} {}: p99 at {percent:.0}% of its max / the floor's p99 at the same rate{}",
                row.kind,
                row.load.name(),
                if row.p99_vs_floor_by_round.len() > 1 {
                    " (median of the rounds)"
                } else {
                    ""
                }
            );
            let value = scenario::median(&row.p99_vs_floor_by_round).or_else(|| row.p99_vs_floor());
            render_target(out, (&figure, value, "<= 1.3", |v| v <= P99_VS_FLOOR));
            continue;
        }
        let figure = format!(
            "{} {}: p99 ms at {percent:.0}% of its max (for reference)",
            row.kind,
            row.load.name()
        );
        let p99 = row.paced.as_ref().map(|m| m.outcome.latency_ms(0.99));
        render_target(out, (&figure, p99, "(none)", |_| true));
    }
}

/// The targets set on closed-loop rates (ratios of two rows of the run) and on Redis
/// commands per visit, `n/a` where a row did not run.
fn rate_targets(rows: &[Row]) -> Vec<Target<'static>> {
    let rate = |kind: Kind, load: Load| rate(rows, kind, load);
    let div = |a: Option<f64>, b: Option<f64>| Some(a? / b?);
    // The embedded store against the memory store, on the same scenario.
    let vs_memory = |load: Load| {
        div(
            rate(Kind::TallyEmbedded, load),
            rate(Kind::TallyMemory, load),
        )
    };
    let floor_visit = rate(Kind::Floor, Load::VisitHot);
    let redis_hot = rate(Kind::TallyRedis, Load::VisitHot);
    let commands_per_1k = |kind: Kind| {
        rows.iter()
            .find(|r| r.kind == kind && r.load == Load::VisitHot)
            .map(|r| r.max.commands_per_1k())
    };
    let cluster_hot = rate(Kind::TallyCluster, Load::VisitHot);
    // Bulk visits a second over single visits a second, same target and hot set.
    let bulk_vs_single = |kind: Kind| {
        let bulk = rows
            .iter()
            .find(|r| r.kind == kind && r.load == Load::BulkHot)
            .map(bulk_visits);
        div(bulk, rate(kind, Load::VisitHot))
    };
    vec![
        (
            "tally-redis POST visit (hot) / floor",
            div(redis_hot, floor_visit),
            ">= 0.85",
            |v| v >= 0.85,
        ),
        (
            "tally-redis POST visit (cold 1M) / floor",
            div(rate(Kind::TallyRedis, Load::VisitCold), floor_visit),
            // Issue 22's target for the cold set (every visit new keys in Redis).
            ">= 0.70",
            |v| v >= 0.70,
        ),
        (
            "tally-redis POST visit (hot) / naive",
            div(redis_hot, rate(Kind::Naive, Load::VisitHot)),
            ">= 5",
            |v| v >= 5.0,
        ),
        (
            "tally-redis POST visit (hot) / naive-mux (for reference)",
            div(redis_hot, rate(Kind::NaiveMux, Load::VisitHot)),
            "(none)",
            |_| true,
        ),
        (
            "tally-embedded POST visit (hot) / tally-memory",
            vs_memory(Load::VisitHot),
            ">= 0.95",
            |v| v >= 0.95,
        ),
        (
            "tally-embedded POST visit (cold 1M) / tally-memory",
            vs_memory(Load::VisitCold),
            ">= 0.95",
            |v| v >= 0.95,
        ),
        (
            "tally-embedded GET count (cold 1M, cache misses) / tally-memory (for reference)",
            vs_memory(Load::CountCold),
            "(none)",
            |_| true,
        ),
        (
            "tally-redis GET count (cold 1M, cache misses) / tally-memory (for reference)",
            div(
                rate(Kind::TallyRedis, Load::CountCold),
                rate(Kind::TallyMemory, Load::CountCold),
            ),
            "(none)",
            |_| true,
        ),
        (
            "tally-embedded POST visit (hot) / floor (for reference)",
            div(rate(Kind::TallyEmbedded, Load::VisitHot), floor_visit),
            "(none)",
            |_| true,
        ),
        (
            "tally-redis GET count (cache hits) / floor",
            div(
                rate(Kind::TallyRedis, Load::CountHot),
                rate(Kind::Floor, Load::CountHot),
            ),
            ">= 0.90",
            |v| v >= 0.90,
        ),
        (
            "tally-redis GET /api/x/y/ / GET /health",
            div(
                rate(Kind::TallyRedis, Load::ApiPath),
                rate(Kind::TallyRedis, Load::Health),
            ),
            ">= 0.90",
            |v| v >= 0.90,
        ),
        (
            "tally-redis Redis commands per 1,000 visits (hot)",
            commands_per_1k(Kind::TallyRedis),
            "<= 2",
            |v| v <= 2.0,
        ),
        (
            "tally-cluster POST visit (hot) / tally-redis (for reference)",
            div(cluster_hot, redis_hot),
            "(none)",
            |_| true,
        ),
        (
            "tally-cluster POST visit (cold 1M) / tally-redis (for reference)",
            div(
                rate(Kind::TallyCluster, Load::VisitCold),
                rate(Kind::TallyRedis, Load::VisitCold),
            ),
            "(none)",
            |_| true,
        ),
        (
            "tally-cluster POST visit (hot) / floor (for reference)",
            div(cluster_hot, floor_visit),
            "(none)",
            |_| true,
        ),
        (
            "tally-cluster Redis commands per 1,000 visits (hot, all six nodes)",
            commands_per_1k(Kind::TallyCluster),
            "<= 2",
            |v| v <= 2.0,
        ),
        (
            "tally-embedded bulk visits/s (100 pages a request) / POST visit (hot) visits/s (for reference)",
            bulk_vs_single(Kind::TallyEmbedded),
            "(none)",
            |_| true,
        ),
        (
            "tally-redis bulk visits/s (100 pages a request) / POST visit (hot) visits/s (for reference)",
            bulk_vs_single(Kind::TallyRedis),
            "(none)",
            |_| true,
        ),
        (
            "tally-cluster bulk visits/s (100 pages a request) / POST visit (hot) visits/s (for reference)",
            bulk_vs_single(Kind::TallyCluster),
            "(none)",
            |_| true,
        ),
    ]
}

/// One row of the targets table.
fn render_target(out: &mut String, (figure, value, target, met): Target<'_>) {
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
}

/// The `--compare-clients` table: what each client cost to drive the floor.
pub fn render_client_cost(cost: &ClientCost) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\n### Load client cost (floor, POST visit, hot 100)\n");
    let _ = writeln!(
        out,
        "| client | req/s | p99 ms | CPU % client / server / redis / softirq / other | client CPU µs per request |"
    );
    let _ = writeln!(out, "|---|--:|--:|---|--:|");
    for (name, m) in [
        ("harness (raw HTTP/1.1)", &cost.ours),
        ("reqwest 0.12", &cost.reqwest),
    ] {
        let rate = m.outcome.throughput();
        let _ = writeln!(
            out,
            "| {name} | {rate:.0} | {:.3} | {} | {:.1} |",
            m.outcome.latency_ms(0.99),
            m.cpu,
            m.cpu.client / 100.0 * 1e6 / rate.max(1.0),
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

/// The `errors` of the `non-2xx / errors` columns: failed or unfinished requests, and 2xx
/// answers not saying what was expected (a bulk's `recorded`).
fn errors(m: &Measured) -> u64 {
    m.outcome.errors + m.outcome.unfinished + m.outcome.unexpected
}

/// Commands per 1,000 requests: the total, then the three most frequent by name.
fn commands(m: &Measured) -> String {
    commands_of(m, &m.commands, 3)
}

/// `counts` (of the phase `m`) per 1,000 of its requests: the total, then the `top` most
/// frequent by name.
fn commands_of(m: &Measured, counts: &CommandCounts, top: usize) -> String {
    if counts.is_empty() {
        return "0".to_owned();
    }
    let per_1k = |calls: u64| calls as f64 * 1000.0 / m.outcome.answered().max(1) as f64;
    measure::top_commands(counts, top, |calls| short(per_1k(calls)))
}

/// A figure with about three significant digits.
fn short(v: f64) -> String {
    match v {
        v if v >= 100.0 => format!("{v:.0}"),
        v if v >= 1.0 => format!("{v:.2}"),
        v => format!("{v:.3}"),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use hdrhistogram::Histogram;

    use super::*;
    use crate::client::Outcome;
    use crate::targets::Stopped;

    /// A row whose closed loop answered `per_second` requests a second, for 1 s.
    fn row(kind: Kind, load: Load, per_second: u64) -> Row {
        let outcome = Outcome {
            latency: Histogram::new(3).unwrap(),
            ok: per_second,
            non_2xx: 0,
            unexpected: 0,
            errors: 0,
            unfinished: 0,
            elapsed: Duration::from_secs(1),
            timeline: Vec::new(),
        };
        Row {
            kind,
            load,
            rtt: None,
            max: Measured {
                outcome,
                commands: CommandCounts::new(),
                on_replicas: None,
                cpu: CpuUse::default(),
                offered: None,
                cache: None,
                held: None,
            },
            paced: None,
            floor_paced: None,
            p99_vs_floor_by_round: Vec::new(),
            backlog: None,
            stopped: Stopped::default(),
        }
    }

    fn target<'a>(targets: &'a [Target<'static>], figure: &str) -> &'a Target<'static> {
        targets
            .iter()
            .find(|t| t.0 == figure)
            .unwrap_or_else(|| panic!("no target {figure:?}"))
    }

    #[test]
    fn the_embedded_store_is_measured_against_the_memory_store_of_the_same_run() {
        let rows = [
            row(Kind::TallyMemory, Load::VisitHot, 40_000),
            row(Kind::TallyMemory, Load::VisitCold, 20_000),
            row(Kind::TallyEmbedded, Load::VisitHot, 38_400),
            row(Kind::TallyEmbedded, Load::VisitCold, 18_000),
        ];
        let targets = rate_targets(&rows);

        let (_, hot, shown, met) =
            target(&targets, "tally-embedded POST visit (hot) / tally-memory");
        assert_eq!(*shown, ">= 0.95");
        assert_eq!(*hot, Some(0.96));
        assert!(met(hot.unwrap()));
        let (_, cold, _, met) = target(
            &targets,
            "tally-embedded POST visit (cold 1M) / tally-memory",
        );
        assert_eq!(*cold, Some(0.9));
        assert!(!met(cold.unwrap()));
    }

    #[test]
    fn the_cluster_is_set_against_the_standalone_nodes_and_the_floor_of_the_same_run() {
        let mut cluster_hot = row(Kind::TallyCluster, Load::VisitHot, 30_000);
        // 3 batches' scripts and their WAITs, and a replica applying them: 90 commands
        // over 30,000 visits.
        cluster_hot.max.commands = CommandCounts::from([
            ("evalsha".into(), 30),
            ("wait".into(), 30),
            ("exec".into(), 30),
        ]);
        let rows = [
            row(Kind::Floor, Load::VisitHot, 50_000),
            row(Kind::TallyRedis, Load::VisitHot, 40_000),
            row(Kind::TallyRedis, Load::VisitCold, 20_000),
            cluster_hot,
            row(Kind::TallyCluster, Load::VisitCold, 15_000),
        ];
        let targets = rate_targets(&rows);

        let value = |figure| target(&targets, figure).1;
        assert_eq!(
            value("tally-cluster POST visit (hot) / tally-redis (for reference)"),
            Some(0.75)
        );
        assert_eq!(
            value("tally-cluster POST visit (cold 1M) / tally-redis (for reference)"),
            Some(0.75)
        );
        assert_eq!(
            value("tally-cluster POST visit (hot) / floor (for reference)"),
            Some(0.6)
        );
        let (_, commands, shown, met) = target(
            &targets,
            "tally-cluster Redis commands per 1,000 visits (hot, all six nodes)",
        );
        assert_eq!((*commands, *shown), (Some(3.0), "<= 2"));
        assert!(!met(commands.unwrap()));
    }

    #[test]
    fn cluster_commands_are_split_between_primaries_and_replicas() {
        let mut cluster_hot = row(Kind::TallyCluster, Load::VisitHot, 30_000);
        cluster_hot.max.commands = CommandCounts::from([
            ("evalsha".into(), 30),
            ("wait".into(), 30),
            ("exec".into(), 30),
            ("multi".into(), 30),
        ]);
        cluster_hot.max.on_replicas = Some(CommandCounts::from([
            ("exec".into(), 30),
            ("multi".into(), 30),
        ]));
        let rows = [row(Kind::TallyRedis, Load::VisitHot, 40_000), cluster_hot];

        let mut out = String::new();
        render_cluster_roles(&mut out, &rows);

        assert!(
            out.ends_with(
                "- tally-cluster POST visit, hot 100: primaries 2.00 (evalsha 1.00, wait 1.00); replicas 2.00 (exec 1.00, multi 1.00)\n"
            ),
            "{out}"
        );
        assert!(!out.contains("tally-redis"), "{out}");
    }

    #[test]
    fn bulk_visits_are_set_against_single_visits_of_the_same_target() {
        // 600 bulk requests a second of 100 pages: 60,000 visits a second.
        let rows = [
            row(Kind::TallyEmbedded, Load::VisitHot, 40_000),
            row(Kind::TallyEmbedded, Load::BulkHot, 600),
            row(Kind::TallyRedis, Load::BulkHot, 500),
        ];
        let targets = rate_targets(&rows);
        let value = |figure| target(&targets, figure).1;
        assert_eq!(
            value(
                "tally-embedded bulk visits/s (100 pages a request) / POST visit (hot) visits/s (for reference)"
            ),
            Some(1.5)
        );
        assert_eq!(
            value(
                "tally-redis bulk visits/s (100 pages a request) / POST visit (hot) visits/s (for reference)"
            ),
            None
        );

        let mut out = String::new();
        render_bulk(&mut out, &rows);
        assert!(
            out.contains("| tally-embedded | 600 | 60000 | 0.000 | 40000 | 1.50 | 600 / 0 |\n"),
            "{out}"
        );
        assert!(
            out.contains("| tally-redis | 500 | 50000 | 0.000 | n/a | n/a | 500 / 0 |\n"),
            "{out}"
        );
    }

    /// A paced phase whose every answer took `ms`.
    fn paced_at(ms: u64) -> Measured {
        let mut measured = row(Kind::Floor, Load::VisitHot, 1).max;
        measured.outcome.latency.record(ms * 1_000_000).unwrap();
        measured.offered = Some(1_000.0);
        measured
    }

    #[test]
    fn tally_p99_is_set_against_the_floor_paced_at_the_same_rate() {
        let tally = Row {
            paced: Some(paced_at(5)),
            floor_paced: Some(paced_at(4)),
            p99_vs_floor_by_round: vec![2.0, 1.25, 1.1],
            ..row(Kind::TallyRedis, Load::VisitHot, 40_000)
        };
        let floor = Row {
            paced: Some(paced_at(4)),
            ..row(Kind::Floor, Load::VisitHot, 50_000)
        };

        let mut out = String::new();
        render_latency_targets(
            &mut out,
            &Options::parse(std::iter::empty()).unwrap(),
            &[floor, tally.clone()],
        );

        assert!(
            out.contains("| floor POST visit, hot 100: p99 ms at 50% of its max (for reference) | 4.00 | (none) |  |\n"),
            "{out}"
        );
        assert!(
            out.contains("| tally-redis POST visit, hot 100: p99 at 50% of its max / the floor's p99 at the same rate (median of the rounds) | 1.25 | <= 1.3 | yes |\n"),
            "{out}"
        );
        assert!((tally.p99_vs_floor().unwrap() - 1.25).abs() < 0.01);
        assert_eq!(scenario::median(&[1.0, 2.0]), Some(1.5));
        assert_eq!(scenario::median(&[]), None);
    }

    /// `row`, at a round trip of `rtt` (e.g. `0.5ms`).
    fn delayed(kind: Kind, load: Load, per_second: u64, rtt: &str) -> Row {
        Row {
            rtt: Some(Rtt::parse(rtt).unwrap()),
            ..row(kind, load, per_second)
        }
    }

    #[test]
    fn a_round_trip_is_set_against_naive_at_the_same_round_trip_and_its_own_loopback() {
        let rows = [
            row(Kind::Floor, Load::VisitHot, 50_000),
            row(Kind::Naive, Load::VisitHot, 12_000),
            delayed(Kind::Naive, Load::VisitHot, 8_000, "0.5ms"),
            delayed(Kind::Naive, Load::VisitHot, 4_000, "2ms"),
            row(Kind::TallyRedis, Load::VisitHot, 40_000),
            delayed(Kind::TallyRedis, Load::VisitHot, 39_000, "0.5ms"),
            delayed(Kind::TallyRedis, Load::VisitHot, 36_000, "2ms"),
        ];

        let targets = round_trip_targets(&rows);
        let value = |figure: &str| {
            let target = targets.iter().find(|t| t.0 == figure).unwrap();
            (target.1, target.2, (target.3)(target.1.unwrap()))
        };
        assert_eq!(
            value("tally-redis POST visit (hot) / naive, both at a 0.5 ms round trip"),
            (Some(4.875), ">= 5", false)
        );
        assert_eq!(
            value("tally-redis POST visit (hot) / naive, both at a 2 ms round trip"),
            (Some(9.0), ">= 5", true)
        );
        assert_eq!(
            value("tally-redis POST visit (hot) at a 0.5 ms round trip / on loopback"),
            (Some(0.975), ">= 0.95", true)
        );
        assert_eq!(
            value("tally-redis POST visit (hot) at a 2 ms round trip / on loopback"),
            (Some(0.9), ">= 0.95", false)
        );

        let mut out = String::new();
        render_round_trip(&mut out, &rows);
        let table: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with("| "))
            .skip(1)
            .collect();
        let cells =
            |line: &str| -> Vec<String> { line.split('|').map(|c| c.trim().to_owned()).collect() };
        // The floor, then each target on loopback and at each round trip.
        let order: Vec<(String, String)> = table
            .iter()
            .map(|l| (cells(l)[1].clone(), cells(l)[3].clone()))
            .collect();
        let expected = [
            ("floor", "loopback"),
            ("naive", "loopback"),
            ("naive", "0.5 ms"),
            ("naive", "2 ms"),
            ("tally-redis", "loopback"),
            ("tally-redis", "0.5 ms"),
            ("tally-redis", "2 ms"),
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned()));
        assert_eq!(order, expected);
        // tally at 2 ms: vs naive at 2 ms, vs the floor, vs itself on loopback.
        let last = cells(table[6]);
        assert_eq!(&last[12..15], ["9.00", "0.72", "0.90"]);
        // The loopback tables leave the delayed rows out.
        let report = render(
            &Options::parse(std::iter::empty()).unwrap(),
            &rows,
            "0 0 0",
            Duration::ZERO,
        );
        let max_rate =
            &report[report.find("### Maximum rate").unwrap()..report.find("### Paced").unwrap()];
        assert_eq!(max_rate.matches("| tally-redis |").count(), 1, "{max_rate}");
    }

    #[test]
    fn nothing_is_said_of_round_trips_when_the_latency_mode_did_not_run() {
        let rows = [row(Kind::TallyRedis, Load::VisitHot, 40_000)];
        let mut out = String::new();
        render_round_trip(&mut out, &rows);
        assert_eq!(out, "");
        assert!(round_trip_targets(&rows).is_empty());
    }

    #[test]
    fn a_ratio_is_not_available_when_either_row_did_not_run() {
        let rows = [row(Kind::TallyEmbedded, Load::VisitHot, 38_000)];
        let targets = rate_targets(&rows);
        let (_, value, ..) = target(&targets, "tally-embedded POST visit (hot) / tally-memory");
        assert_eq!(*value, None);
        let mut out = String::new();
        render_target(
            &mut out,
            *target(&targets, "tally-embedded POST visit (hot) / tally-memory"),
        );
        assert_eq!(
            out,
            "| tally-embedded POST visit (hot) / tally-memory | n/a | >= 0.95 | n/a |\n"
        );
    }
}
