//! The `--wrk` cross-check: the same targets, started by the harness, driven closed-loop
//! by this harness's client and then by Debian's `wrk` (`apt-get install wrk`), so the
//! tally/floor ratios of the two clients can be set side by side. Once-off, not in
//! `--quick`: it checks the harness's client, not tally.
//!
//! `wrk` is the original (not wrk2): closed loop only, no fixed rate, so it can check the
//! closed-loop rates and latencies, not the paced p99. It runs as a child process with
//! `-t1` (one thread, like the harness client's one tokio thread) and `--connections`
//! connections (64 by default); POST and the spread over the hot set's 100 pages need a Lua
//! script, written to a temporary file. Its CPU is read from this process's reaped
//! children's times (`/proc/self/stat`'s `cutime` and `cstime`: the redis-servers are
//! reaped only at the end of the run, so between two reads only `wrk` adds to them).

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::Setup;
use crate::client::{self, Pace, Phase};
use crate::measure::{self, CpuSnapshot, CpuUse};
use crate::options::Options;
use crate::scenario::{self, GRACE, Load, Measured};
use crate::targets::{self, Kind};

/// wrk's threads: one, as the harness client's runtime by default.
pub const THREADS: usize = 1;

/// The scenarios cross-checked: POST visit and GET count on the hot set.
const LOADS: [Load; 2] = [Load::VisitHot, Load::CountHot];

/// The targets cross-checked, when selected (the floor always: the ratios need it).
const TALLY_TARGETS: [Kind; 3] = [Kind::TallyMemory, Kind::TallyEmbedded, Kind::TallyRedis];

/// What `wrk` measured in one run, from its script's `done` line.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct WrkRun {
    /// Requests completed.
    pub requests: u64,
    /// How long it ran.
    pub elapsed: Duration,
    /// Answers with a status of 400 or more.
    pub status_errors: u64,
    /// Connect, read, write errors and timeouts.
    pub errors: u64,
    /// Latency percentiles, in microseconds.
    pub p50_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
}

impl WrkRun {
    /// Requests a second.
    pub fn throughput(&self) -> f64 {
        let seconds = self.elapsed.as_secs_f64();
        if seconds > 0.0 {
            self.requests as f64 / seconds
        } else {
            0.0
        }
    }

    /// Reads the `tally-wrk` line the script's `done` writes.
    fn parse(output: &str) -> Option<Self> {
        let line = output.lines().find(|l| l.starts_with("tally-wrk "))?;
        let field = |name: &str| -> Option<f64> {
            line.split_ascii_whitespace()
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))?
                .parse()
                .ok()
        };
        Some(Self {
            requests: field("requests")? as u64,
            elapsed: Duration::from_micros(field("duration_us")? as u64),
            status_errors: field("status")? as u64,
            errors: field("errors")? as u64,
            p50_us: field("p50_us")?,
            p99_us: field("p99_us")?,
        })
    }
}

/// One target on one scenario, driven by both clients one after the other.
#[derive(Clone, Debug)]
pub struct Check {
    /// The round (from 0); in odd rounds wrk runs first.
    pub round: usize,
    /// The target.
    pub kind: Kind,
    /// The scenario.
    pub load: Load,
    /// The harness's client, closed loop.
    pub ours: Measured,
    /// wrk, closed loop, on the same server.
    pub wrk: WrkRun,
    /// CPU use during wrk's run (`client`: wrk's).
    pub wrk_cpu: CpuUse,
}

/// The Lua script for `load`: `wrk.format` of its method and a page of the hot set in
/// turn, and a `done` that writes the figures on one line.
fn script(load: Load) -> anyhow::Result<String> {
    let workload = load.workload();
    let client::Paths::Numbered { prefix, count } = workload.paths else {
        anyhow::bail!("wrk: {} has no numbered paths", load.name());
    };
    // wrk.format sets Content-Length from the body: "" gives a POST its `Content-Length:
    // 0`, as the harness sends it; nil leaves a GET without one.
    let body = if workload.method == "POST" {
        "\"\""
    } else {
        "nil"
    };
    Ok(format!(
        r#"local n = 0
local headers = {{}}
request = function()
  n = n + 1
  return wrk.format("{method}", "{prefix}" .. (n % {count}), headers, {body})
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("tally-wrk requests=%d duration_us=%d status=%d errors=%d p50_us=%d p99_us=%d\n",
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"#,
        method = workload.method,
    ))
}

/// Whether `wrk` runs here.
pub fn available() -> bool {
    Command::new("wrk")
        .arg("--version")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("wrk"))
}

/// The targets of the cross-check: the floor, then those of [`TALLY_TARGETS`] selected.
fn kinds(options: &Options) -> Vec<Kind> {
    std::iter::once(Kind::Floor)
        .chain(
            TALLY_TARGETS
                .into_iter()
                .filter(|kind| options.targets.contains(kind)),
        )
        .collect()
}

/// Runs the cross-check `--rounds` times: per round, per scenario, per target, a fresh
/// server, the harness's warm-up, then the harness's closed loop and wrk's for as long,
/// in turn (wrk first in odd rounds, so neither always meets the fresher server).
pub fn run(options: &Options, setup: &Setup<'_>) -> anyhow::Result<Vec<Check>> {
    anyhow::ensure!(
        available(),
        "--wrk needs wrk on the PATH (Debian: apt-get install wrk)"
    );
    let mut scripts = Vec::new();
    for load in LOADS {
        let file = tempfile::Builder::new()
            .prefix("tally-load-wrk-")
            .suffix(".lua")
            .tempfile()
            .context("cannot create wrk's script")?;
        file.as_file()
            .write_all(script(load)?.as_bytes())
            .context("cannot write wrk's script")?;
        scripts.push((load, file));
    }
    let mut checks = Vec::new();
    for round in 0..options.rounds {
        eprintln!(
            "load: wrk cross-check, round {} of {}",
            round + 1,
            options.rounds
        );
        for (load, file) in &scripts {
            for kind in kinds(options) {
                checks.push(
                    check(options, setup, round, kind, *load, file.path())
                        .with_context(|| format!("wrk cross-check: {kind} / {}", load.name()))?,
                );
            }
        }
    }
    Ok(checks)
}

/// One target on one scenario: the harness's closed loop and wrk's, in turn.
fn check(
    options: &Options,
    setup: &Setup<'_>,
    round: usize,
    kind: Kind,
    load: Load,
    script: &std::path::Path,
) -> anyhow::Result<Check> {
    // The nodes tally-redis counts on; none for the others.
    let redis = setup.redis_of(kind).filter(|_| kind.uses_redis());
    if let Some(redis) = redis {
        redis.servers.flush()?;
    }
    let redis_pids = redis.map_or(&[][..], |r| r.pids);
    measure::settle(redis_pids, setup.quiet_wait);
    let urls = redis.map_or(&[][..], |r| r.urls).to_vec();
    let server = setup
        .server_rt
        .block_on(targets::start(kind, &urls, setup.metrics))?;
    let client_rt = setup.client_rt;
    let conns = client_rt
        .block_on(client::connect_all(server.address, options.connections))
        .context("cannot connect to the server")?;
    let closed = |duration| Phase {
        workload: load.workload(),
        pace: Pace::Max,
        duration,
        grace: GRACE,
    };
    let (conns, _) = client_rt.block_on(client::drive(conns, &closed(options.warmup)));
    drop(conns);
    // Its own connections, opened just before its phase (idle ones would meet the
    // server's keep-alive timeout during wrk's run).
    let ours = || -> anyhow::Result<Measured> {
        let conns = client_rt
            .block_on(client::connect_all(server.address, options.connections))
            .context("cannot connect to the server")?;
        let (conns, ours) = scenario::measured_phase(
            client_rt,
            conns,
            &closed(options.duration),
            redis,
            None,
            None,
        )?;
        drop(conns);
        Ok(ours)
    };
    let wrk_first = round % 2 == 1;
    let (ours, (wrk, wrk_cpu)) = if wrk_first {
        let wrk = run_wrk(options, redis_pids, script, server.address)?;
        (ours()?, wrk)
    } else {
        (
            ours()?,
            run_wrk(options, redis_pids, script, server.address)?,
        )
    };
    setup.server_rt.block_on(server.stop())?;
    eprintln!(
        "load: {kind:<14} {:<26} harness {:>9.0} req/s p99 {:.2} ms; wrk {:>9.0} req/s p99 {:.2} ms{}",
        load.name(),
        ours.outcome.throughput(),
        ours.outcome.latency_ms(0.99),
        wrk.throughput(),
        wrk.p99_us / 1e3,
        if wrk_first { " (wrk first)" } else { "" },
    );
    Ok(Check {
        round,
        kind,
        load,
        ours,
        wrk,
        wrk_cpu,
    })
}

/// One run of wrk for `--duration` (whole seconds) against `address`, with the CPU each
/// party used during it (`client`: wrk's).
fn run_wrk(
    options: &Options,
    redis_pids: &[u32],
    script: &std::path::Path,
    address: std::net::SocketAddr,
) -> anyhow::Result<(WrkRun, CpuUse)> {
    let seconds = options.duration.as_secs().max(1);
    let cpu_before = CpuSnapshot::take(redis_pids, &[]);
    let reaped_before = measure::reaped_children_ticks();
    let started = Instant::now();
    let output = Command::new("wrk")
        .arg(format!("-t{THREADS}"))
        .arg(format!("-c{}", options.connections))
        .arg(format!("-d{seconds}s"))
        .arg("--timeout")
        .arg("5s")
        .arg("-s")
        .arg(script)
        .arg(format!("http://{address}"))
        .output()
        .context("cannot run wrk")?;
    let mut wrk_cpu = cpu_before.until(&CpuSnapshot::take(redis_pids, &[]));
    let wrk_ticks = measure::reaped_children_ticks().saturating_sub(reaped_before);
    let wrk_percent = measure::ticks_percent(wrk_ticks, started.elapsed());
    wrk_cpu.client = wrk_percent;
    wrk_cpu.other = (wrk_cpu.other - wrk_percent).max(0.0);
    let stdout = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "wrk failed ({}): {}{}",
        output.status,
        stdout,
        String::from_utf8_lossy(&output.stderr)
    );
    let wrk = WrkRun::parse(&stdout).with_context(|| format!("wrk said: {stdout}"))?;
    Ok((wrk, wrk_cpu))
}

/// The report's section: each target with both clients, then tally's ratios to the floor
/// by each client.
pub fn render(checks: &[Check], connections: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n### Cross-check with wrk (closed loop)\n\nEach target fresh, the harness's client (warm-up, then the closed loop), then Debian's `wrk -t{THREADS} -c{connections}` for as long on the same server (a Lua script spreading the requests over the hot set's pages in turn; POSTs with `Content-Length: 0`, as the harness sends them). `wrk` is closed-loop only (not wrk2), so it checks the rates and closed-loop latencies, not the paced p99. CPU: client (the harness's threads, or wrk's process) / server / redis / softirq / other.\n"
    );
    let _ = writeln!(
        out,
        "| round | target | scenario | harness req/s | wrk req/s | harness p99 ms | wrk p99 ms | non-2xx / errors, harness; wrk | CPU %, harness | CPU %, wrk |"
    );
    let _ = writeln!(out, "|--:|---|---|--:|--:|--:|--:|--:|---|---|");
    for c in checks {
        let o = &c.ours.outcome;
        let _ = writeln!(
            out,
            "| {}{} | {} | {} | {:.0} | {:.0} | {:.3} | {:.3} | {} / {}; {} / {} | {} | {} |",
            c.round + 1,
            if c.round % 2 == 1 { " (wrk first)" } else { "" },
            c.kind,
            c.load.name(),
            o.throughput(),
            c.wrk.throughput(),
            o.latency_ms(0.99),
            c.wrk.p99_us / 1e3,
            o.non_2xx,
            o.errors + o.unfinished,
            c.wrk.status_errors,
            c.wrk.errors,
            c.ours.cpu,
            c.wrk_cpu,
        );
    }
    let _ = writeln!(
        out,
        "\nTarget over floor, each client against the floor it measured in the same round; the median of the rounds, then every round in order:\n"
    );
    let _ = writeln!(
        out,
        "| target / floor | scenario | req/s, harness | req/s, wrk | wrk's / harness's | p99, harness | p99, wrk | req/s by round, harness; wrk |"
    );
    let _ = writeln!(out, "|---|---|--:|--:|--:|--:|--:|---|");
    let mut pairs: Vec<(Kind, Load)> = Vec::new();
    for c in checks.iter().filter(|c| c.kind != Kind::Floor) {
        if !pairs.contains(&(c.kind, c.load)) {
            pairs.push((c.kind, c.load));
        }
    }
    for (kind, load) in pairs {
        let ratios: Vec<Ratios> = checks
            .iter()
            .filter(|c| c.kind == kind && c.load == load)
            .filter_map(|c| {
                let floor = checks
                    .iter()
                    .find(|f| f.kind == Kind::Floor && f.load == load && f.round == c.round)?;
                Some(Ratios::of(c, floor))
            })
            .collect();
        let median_of = |f: fn(&Ratios) -> f64| {
            scenario::median(&ratios.iter().map(f).collect::<Vec<_>>()).unwrap_or(f64::NAN)
        };
        let (ours, theirs) = (median_of(|r| r.ours), median_of(|r| r.wrk));
        let listed = |f: fn(&Ratios) -> f64| {
            ratios
                .iter()
                .map(|r| format!("{:.2}", f(r)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            out,
            "| {kind} | {} | {ours:.2} | {theirs:.2} | {:.2} | {:.2} | {:.2} | {}; {} |",
            load.name(),
            theirs / ours,
            median_of(|r| r.ours_p99),
            median_of(|r| r.wrk_p99),
            listed(|r| r.ours),
            listed(|r| r.wrk),
        );
    }
    out
}

/// A target's figures over the floor's of the same round, by each client.
struct Ratios {
    ours: f64,
    wrk: f64,
    ours_p99: f64,
    wrk_p99: f64,
}

impl Ratios {
    fn of(target: &Check, floor: &Check) -> Self {
        Self {
            ours: target.ours.outcome.throughput() / floor.ours.outcome.throughput(),
            wrk: target.wrk.throughput() / floor.wrk.throughput(),
            ours_p99: target.ours.outcome.latency_ms(0.99) / floor.ours.outcome.latency_ms(0.99),
            wrk_p99: target.wrk.p99_us / floor.wrk.p99_us,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_done_line_of_the_script_is_read() {
        let output = "Running 10s test @ http://127.0.0.1:1\n  1 threads and 64 connections\ntally-wrk requests=500000 duration_us=10000000 status=3 errors=1 p50_us=640 p99_us=2100\n";
        let run = WrkRun::parse(output).unwrap();
        assert_eq!(run.requests, 500_000);
        assert_eq!(run.throughput(), 50_000.0);
        assert_eq!((run.status_errors, run.errors), (3, 1));
        assert_eq!((run.p50_us, run.p99_us), (640.0, 2100.0));
        assert_eq!(WrkRun::parse("no figures"), None);
    }

    #[test]
    fn a_post_is_sent_with_an_empty_body_and_a_get_without() {
        let post = script(Load::VisitHot).unwrap();
        assert!(
            post.contains(
                r#"wrk.format("POST", "/api/v1/counter/visit/page" .. (n % 100), headers, "")"#
            ),
            "{post}"
        );
        let get = script(Load::CountHot).unwrap();
        assert!(
            get.contains(
                r#"wrk.format("GET", "/api/v1/counter/visits/page" .. (n % 100), headers, nil)"#
            ),
            "{get}"
        );
        assert!(script(Load::Health).is_err());
    }
}
