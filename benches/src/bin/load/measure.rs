//! Side measurements around a phase: Redis commands (`INFO commandstats`, summed over the
//! nodes or per node with its main thread's CPU time), CPU time by party (client
//! threads, server threads, redis-server processes, delay proxies), read from `/proc`
//! before and after,
//! tally-server's own read-cache hits and misses, and what it has left to write at the
//! end; and waiting for the machine to go quiet before measuring.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Deserialize;
use tally_benches::redis_info::main_thread_cpu;
use tally_testkit::{ClusterNode, RedisNode};

use crate::nodes::{self, Servers};

/// Name prefix of the client runtime's threads (at most 15 bytes show in `/proc`).
pub const CLIENT_THREAD: &str = "load-client";

/// Clock ticks per second of `/proc/*/stat` times: `USER_HZ`, 100 on every Linux
/// architecture we run on (reading `sysconf` would need `unsafe`, forbidden here).
const TICKS_PER_SECOND: f64 = 100.0;

/// Calls per command name, summed over the nodes.
pub type CommandCounts = BTreeMap<String, u64>;

/// A standalone node's `INFO commandstats`, leaving out `info` (the harness's own reads).
pub fn node_commands(node: &RedisNode) -> anyhow::Result<CommandCounts> {
    let mut commands = node.info_commandstats().context("INFO commandstats")?;
    commands.remove("info");
    Ok(commands)
}

/// A cluster node's `INFO commandstats`, leaving out `info`. [`ClusterNode`] gives the
/// section's fields only (`cmdstat_evalsha` → `calls=3,usec=41,...`), not the counts
/// [`RedisNode::info_commandstats`] gives.
pub fn cluster_node_commands(node: &ClusterNode) -> anyhow::Result<CommandCounts> {
    let fields = node.info("commandstats").context("INFO commandstats")?;
    let mut commands = calls_by_command(&fields);
    commands.remove("info");
    Ok(commands)
}

/// Calls per command from the fields of `INFO commandstats`, keyed by lowercase name.
fn calls_by_command(fields: &[(String, String)]) -> CommandCounts {
    fields
        .iter()
        .filter_map(|(key, value)| tally_testkit::command_stat(key, value))
        .map(|stat| (stat.name, stat.calls))
        .collect()
}

/// Calls per command name, summed over `counts`.
pub fn sum_commands<'a>(counts: impl IntoIterator<Item = &'a CommandCounts>) -> CommandCounts {
    let mut total = CommandCounts::new();
    for counts in counts {
        for (name, calls) in counts {
            *total.entry(name.clone()).or_default() += calls;
        }
    }
    total
}

/// `commands` for a table cell: `per` of the total, then of the `top` most frequent
/// commands by name (`12.00 (evalsha 4.00, get 4.00, ping 4.00)` for 3).
pub fn top_commands(commands: &CommandCounts, top: usize, per: impl Fn(u64) -> String) -> String {
    let mut by_calls: Vec<_> = commands.iter().collect();
    by_calls.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let top: Vec<String> = by_calls
        .iter()
        .take(top)
        .map(|&(name, &calls)| format!("{name} {}", per(calls)))
        .collect();
    format!("{} ({})", per(commands.values().sum()), top.join(", "))
}

/// Commands in `after` not in `before`, by name (names with none left out).
pub fn command_delta(before: &CommandCounts, after: &CommandCounts) -> CommandCounts {
    after
        .iter()
        .filter_map(|(name, &calls)| {
            let delta = calls.saturating_sub(before.get(name).copied().unwrap_or(0));
            (delta > 0).then(|| (name.clone(), delta))
        })
        .collect()
}

/// CPU time (user + system, in ticks) by party at one instant.
#[derive(Clone, Copy, Debug)]
pub struct CpuSnapshot {
    at: Instant,
    client: u64,
    server: u64,
    redis: u64,
    /// The delay proxy of the latency mode ([`crate::delay`]), when the target's nodes are
    /// behind one.
    proxy: u64,
    /// The harness's other redis-servers, idle during the phase (the standalone nodes
    /// while tally-cluster runs, the cluster's while the others do): theirs, not another
    /// process's, so left out of `other`.
    idle_redis: u64,
    /// Every CPU's busy time outside softirq, whoever used it.
    machine: u64,
    /// Every CPU's softirq time.
    softirq: u64,
}

/// Share of one core each party used over an interval, in percent.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuUse {
    /// The load client's threads and the main thread.
    pub client: f64,
    /// Every other thread of this process: the server under test.
    pub server: f64,
    /// The redis-server processes.
    pub redis: f64,
    /// The delay proxy process, in the latency mode (0 otherwise; not in the `Display`
    /// of the loopback tables).
    pub proxy: f64,
    /// Softirq time of all CPUs: mostly the kernel's receive work for the loopback
    /// traffic of all three parties, which the kernel charges to no process.
    pub softirq: f64,
    /// Everything else on the machine (other processes, hypervisor steal): a busy
    /// neighbour shows here and makes the figures of that phase suspect.
    pub other: f64,
}

/// The table cell: `client / server / redis / softirq / other`, whole percents.
impl fmt::Display for CpuUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:.0} / {:.0} / {:.0} / {:.0} / {:.0}",
            self.client, self.server, self.redis, self.softirq, self.other
        )
    }
}

impl CpuSnapshot {
    /// Reads `/proc` now. Threads of this process whose name starts with
    /// [`CLIENT_THREAD`], and the main thread, are the client; the rest of the process's
    /// CPU time, ended threads' included, the server;
    /// `redis_pids` are the redis-servers of the target measured, and the harness's other
    /// redis children count as idle; `proxy_pids` the delay proxies in front of them.
    pub fn take(redis_pids: &[u32], proxy_pids: &[u32]) -> Self {
        let mut client = 0;
        let main = std::process::id().to_string();
        if let Ok(tasks) = fs::read_dir("/proc/self/task") {
            for task in tasks.flatten() {
                let dir = task.path();
                let name = fs::read_to_string(dir.join("comm")).unwrap_or_default();
                if name.starts_with(CLIENT_THREAD) || task.file_name() == main.as_str() {
                    client += fs::read_to_string(dir.join("stat"))
                        .ok()
                        .and_then(|stat| ticks(&stat))
                        .unwrap_or(0);
                }
            }
        }
        // The server is the rest of the process, taken from the process's own total, which
        // keeps the time of threads that have ended: summing the live server threads lost
        // the ticks of any that ended during a phase (the blocking pool's threads, idle for
        // 10 s, do), and a phase in which one ended showed the server at 0% and its time
        // as "other".
        let server = fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|stat| ticks(&stat))
            .unwrap_or(0)
            .saturating_sub(client);
        let machine = machine_busy().unwrap_or((0, 0));
        let redis = process_ticks(redis_pids);
        let proxy = process_ticks(proxy_pids);
        let idle_redis = process_ticks(
            nodes::children()
                .iter()
                .filter(|pid| !redis_pids.contains(pid)),
        );
        Self {
            at: Instant::now(),
            client,
            server,
            redis,
            proxy,
            idle_redis,
            machine: machine.0,
            softirq: machine.1,
        }
    }

    /// What each party used between `self` and `later`.
    pub fn until(&self, later: &CpuSnapshot) -> CpuUse {
        let seconds = (later.at - self.at).as_secs_f64().max(1e-9);
        let percent = |ticks: u64| ticks as f64 / TICKS_PER_SECOND / seconds * 100.0;
        let client = later.client.saturating_sub(self.client);
        let server = later.server.saturating_sub(self.server);
        let redis = later.redis.saturating_sub(self.redis);
        let proxy = later.proxy.saturating_sub(self.proxy);
        let machine = later.machine.saturating_sub(self.machine);
        let idle_redis = later.idle_redis.saturating_sub(self.idle_redis);
        CpuUse {
            client: percent(client),
            server: percent(server),
            redis: percent(redis),
            proxy: percent(proxy),
            softirq: percent(later.softirq.saturating_sub(self.softirq)),
            other: percent(machine.saturating_sub(client + server + redis + proxy + idle_redis)),
        }
    }
}

/// CPU time (user + system, in ticks) of this process's children that have ended and been
/// waited for (`cutime` + `cstime` of `/proc/self/stat`): a child run to its end between
/// two reads (`wrk`) is their difference.
pub fn reaped_children_ticks() -> u64 {
    fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            let rest = &stat[stat.rfind(')')? + 1..];
            let mut fields = rest.split_ascii_whitespace().skip(13);
            let user: u64 = fields.next()?.parse().ok()?;
            let system: u64 = fields.next()?.parse().ok()?;
            Some(user + system)
        })
        .unwrap_or(0)
}

/// `ticks` of CPU time over `elapsed`, in % of one core.
pub fn ticks_percent(ticks: u64, elapsed: Duration) -> f64 {
    ticks as f64 / TICKS_PER_SECOND / elapsed.as_secs_f64().max(1e-9) * 100.0
}

/// utime + stime of the processes `pids`, summed (those gone count 0).
fn process_ticks<'a>(pids: impl IntoIterator<Item = &'a u32>) -> u64 {
    pids.into_iter()
        .filter_map(|pid| fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| ticks(&stat))
        .sum()
}

/// utime + stime from a `/proc/.../stat` line (fields 14 and 15, counted after the
/// parenthesised command name, which may itself hold spaces).
fn ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
}

/// Busy ticks of all CPUs together since boot, outside and inside softirq: the first line
/// of `/proc/stat` without idle and iowait, then its softirq field.
fn machine_busy() -> Option<(u64, u64)> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_ascii_whitespace()
        .take(8) // user nice system idle iowait irq softirq steal (guest is inside user)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let total: u64 = fields.iter().sum();
    let softirq = *fields.get(6)?;
    Some((total - fields.get(3)? - fields.get(4)? - softirq, softirq))
}

/// Waits, at most `limit`, for a second in which other processes used under 10% of a
/// core; returns what they used in the last second measured.
pub fn wait_for_quiet(redis_pids: &[u32], limit: Duration) -> f64 {
    let deadline = Instant::now() + limit;
    loop {
        let before = CpuSnapshot::take(redis_pids, &[]);
        std::thread::sleep(Duration::from_secs(1));
        let other = before.until(&CpuSnapshot::take(redis_pids, &[])).other;
        if other < 10.0 || Instant::now() >= deadline {
            return other;
        }
    }
}

/// Before a scenario: [`wait_for_quiet`] (unless `limit` is zero), saying on stderr when
/// other processes stayed busy.
pub fn settle(redis_pids: &[u32], limit: Duration) {
    if limit.is_zero() {
        return;
    }
    let other = wait_for_quiet(redis_pids, limit);
    if other >= 10.0 {
        eprintln!(
            "load: other processes still use {other:.0}% of a core after {limit:?}; measuring anyway"
        );
    }
}

/// What one Redis node did, or has done since start: CPU time of its main thread (where
/// commands run; `INFO cpu`) and commands by name (`INFO commandstats`, which counts the
/// commands run inside a script or a `MULTI` as well).
#[derive(Clone, Debug, Default)]
pub struct NodeWork {
    /// Main-thread CPU time.
    pub cpu: Duration,
    /// Calls per command name, `info` left out.
    pub commands: CommandCounts,
}

impl NodeWork {
    /// What each node of `servers` (on the cluster, primaries and replicas) has done since
    /// it started, in [`Servers::command_counts`]'s order.
    pub fn read(servers: Servers<'_>) -> anyhow::Result<Vec<NodeWork>> {
        let cpu = servers.info_cpu()?;
        let commands = servers.command_counts()?;
        Ok(cpu
            .iter()
            .zip(commands)
            .map(|(info, commands)| NodeWork {
                cpu: main_thread_cpu(info),
                commands,
            })
            .collect())
    }

    /// What each node of `servers` did since `before` was read.
    pub fn since(before: &[NodeWork], servers: Servers<'_>) -> anyhow::Result<Vec<NodeWork>> {
        Ok(before
            .iter()
            .zip(&NodeWork::read(servers)?)
            .map(|(before, after)| before.until(after))
            .collect())
    }

    fn until(&self, later: &NodeWork) -> NodeWork {
        NodeWork {
            cpu: later.cpu.saturating_sub(self.cpu),
            commands: command_delta(&self.commands, &later.commands),
        }
    }

    /// CPU ms per `n` (`NaN` when `n` is 0).
    pub fn cpu_ms_per(&self, n: u64) -> f64 {
        if n == 0 {
            f64::NAN
        } else {
            self.cpu.as_secs_f64() * 1e3 / n as f64
        }
    }
}

/// tally-server's read-cache hits and misses (of visit counts), as its
/// `GET /api/v1/counter/metrics` reports them since it started, or their change over a
/// phase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheReads {
    /// Reads answered from the cache.
    pub hits: u64,
    /// Reads that went to the store.
    pub misses: u64,
}

impl CacheReads {
    /// Asks the server at `address` (one request; under `/api/`, so it counts one URL in
    /// the request statistics, which nothing here reads).
    pub async fn read(address: SocketAddr) -> anyhow::Result<Self> {
        #[derive(Deserialize)]
        struct Answer {
            metrics: Figures,
        }
        #[derive(Deserialize)]
        struct Figures {
            cache_hits: u64,
            cache_misses: u64,
        }
        let answer: Answer = get_json(&format!("http://{address}/api/v1/counter/metrics")).await?;
        Ok(Self {
            hits: answer.metrics.cache_hits,
            misses: answer.metrics.cache_misses,
        })
    }

    /// What changed from `self` to `later`.
    pub fn until(self, later: Self) -> Self {
        Self {
            hits: later.hits.saturating_sub(self.hits),
            misses: later.misses.saturating_sub(self.misses),
        }
    }

    /// Share of the reads that missed, in percent (`NaN` when none).
    pub fn miss_percent(self) -> f64 {
        let reads = self.hits + self.misses;
        if reads == 0 {
            f64::NAN
        } else {
            self.misses as f64 * 100.0 / reads as f64
        }
    }
}

/// What tally-server still had to write when the load ended, from its `/status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Pages with visits pending or in flight (`counter_status.write_buffer_size`).
    pub pages: usize,
    /// URLs of the request statistics pending or in flight (`stats_status.pending_urls`).
    pub urls: usize,
}

impl Backlog {
    /// Asks the server at `address`.
    pub async fn read(address: SocketAddr) -> anyhow::Result<Self> {
        #[derive(Deserialize)]
        struct Status {
            counter_status: Counter,
            stats_status: Stats,
        }
        #[derive(Deserialize)]
        struct Counter {
            write_buffer_size: usize,
        }
        #[derive(Deserialize)]
        struct Stats {
            pending_urls: usize,
        }
        let status: Status = get_json(&format!("http://{address}/status")).await?;
        Ok(Self {
            pages: status.counter_status.write_buffer_size,
            urls: status.stats_status.pending_urls,
        })
    }
}

/// One `GET` of `url` (on loopback, within 5 s), its JSON answer read as `T`.
async fn get_json<T: serde::de::DeserializeOwned>(url: &str) -> anyhow::Result<T> {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .context("cannot build a reqwest client")?
        .get(url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .with_context(|| format!("GET {url}"))?
        .json()
        .await
        .with_context(|| format!("GET {url}: not the JSON expected"))
}

/// The 1, 5 and 15 minute load averages, as `/proc/loadavg` shows them.
pub fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// The CPU model, from `/proc/cpuinfo`.
pub fn cpu_model() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_thread_that_ended_during_a_phase_keeps_its_cpu_time() {
        let before = CpuSnapshot::take(&[], &[]);
        // A thread named neither as the client nor the main thread: the server's. It
        // spins until it has used 20 ticks (0.2 s) of CPU by its own count, then ends.
        std::thread::Builder::new()
            .name("server-like".into())
            .spawn(|| {
                let mut spins = 0u64;
                while fs::read_to_string("/proc/thread-self/stat")
                    .ok()
                    .and_then(|stat| ticks(&stat))
                    .unwrap_or(0)
                    < 20
                {
                    for _ in 0..100_000 {
                        spins = std::hint::black_box(spins.wrapping_add(1));
                    }
                }
            })
            .expect("spawn")
            .join()
            .expect("the spinning thread");
        let after = CpuSnapshot::take(&[], &[]);
        let used = after.server.saturating_sub(before.server);
        assert!(used >= 20, "server ticks over the phase: {used}");
    }

    #[test]
    fn stat_times_are_read_after_the_name() {
        let stat = "1085 (a b) R 1052 1052 30790 0 -1 4194304 138 0 0 0 7 3 0 0 20 0 1 0";
        assert_eq!(ticks(stat), Some(10));
    }

    #[test]
    fn commandstats_fields_are_read_as_calls_per_command() {
        let fields = [
            (
                "cmdstat_evalsha",
                "calls=3,usec=41,usec_per_call=13.67,rejected_calls=0",
            ),
            ("cmdstat_WAIT", "calls=7,usec=9"),
            ("cmdstat_client|setname", "calls=2,usec=1"),
            ("cmdstat_broken", "usec=1"),
            ("redis_version", "7.0.15"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));

        let calls = calls_by_command(&fields);

        assert_eq!(
            calls,
            CommandCounts::from([
                ("evalsha".into(), 3),
                ("wait".into(), 7),
                ("client|setname".into(), 2)
            ])
        );
    }

    #[test]
    fn deltas_keep_only_what_changed() {
        let before = CommandCounts::from([("evalsha".into(), 3), ("ping".into(), 1)]);
        let after =
            CommandCounts::from([("evalsha".into(), 5), ("ping".into(), 1), ("get".into(), 2)]);
        let delta = command_delta(&before, &after);
        assert_eq!(
            delta,
            CommandCounts::from([("evalsha".into(), 2), ("get".into(), 2)])
        );
    }

    #[test]
    fn cache_misses_are_a_share_of_the_reads_of_the_phase() {
        let before = CacheReads {
            hits: 10,
            misses: 5,
        };
        let phase = before.until(CacheReads {
            hits: 20,
            misses: 95,
        });
        assert_eq!(
            phase,
            CacheReads {
                hits: 10,
                misses: 90
            }
        );
        assert_eq!(phase.miss_percent(), 90.0);
        assert!(CacheReads::default().miss_percent().is_nan());
    }

    #[test]
    fn main_thread_cpu_is_read_from_info_cpu() {
        let info = "# CPU\r\nused_cpu_sys:1.5\r\nused_cpu_user:2.0\r\nused_cpu_sys_main_thread:0.25\r\nused_cpu_user_main_thread:1.00\r\n";
        assert_eq!(main_thread_cpu(info), Duration::from_millis(1250));
        let old = "used_cpu_sys:1.5\r\nused_cpu_user:2.0\r\n";
        assert_eq!(main_thread_cpu(old), Duration::from_millis(3500));
    }
}
