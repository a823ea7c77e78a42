//! Side measurements around a phase: Redis commands (INFO commandstats, summed over the
//! nodes) and CPU time by party (client threads, server threads, redis-server processes),
//! read from `/proc` before and after.

use std::collections::BTreeMap;
use std::fs;
use std::time::Instant;

use tally_testkit::RedisCluster;

/// Name prefix of the client runtime's threads (at most 15 bytes show in `/proc`).
pub const CLIENT_THREAD: &str = "load-client";

/// Clock ticks per second of `/proc/*/stat` times: `USER_HZ`, 100 on every Linux
/// architecture we run on (reading `sysconf` would need `unsafe`, forbidden here).
const TICKS_PER_SECOND: f64 = 100.0;

/// Calls per command name, summed over the nodes.
pub type CommandCounts = BTreeMap<String, u64>;

/// Sums `INFO commandstats` over the nodes, leaving out `info` (the harness's own reads).
pub fn command_counts(cluster: &RedisCluster) -> anyhow::Result<CommandCounts> {
    let mut total = CommandCounts::new();
    for node in cluster.nodes() {
        for (name, calls) in node.info_commandstats()? {
            if name != "info" {
                *total.entry(name).or_default() += calls;
            }
        }
    }
    Ok(total)
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
    /// Softirq time of all CPUs: mostly the kernel's receive work for the loopback
    /// traffic of all three parties, which the kernel charges to no process.
    pub softirq: f64,
    /// Everything else on the machine (other processes, hypervisor steal): a busy
    /// neighbour shows here and makes the figures of that phase suspect.
    pub other: f64,
}

impl CpuSnapshot {
    /// Reads `/proc` now. Threads of this process whose name starts with
    /// [`CLIENT_THREAD`], and the main thread, are the client; the others the server.
    pub fn take(redis_pids: &[u32]) -> Self {
        let (mut client, mut server) = (0, 0);
        let main = std::process::id().to_string();
        if let Ok(tasks) = fs::read_dir("/proc/self/task") {
            for task in tasks.flatten() {
                let dir = task.path();
                let ticks = fs::read_to_string(dir.join("stat"))
                    .ok()
                    .and_then(|stat| ticks(&stat))
                    .unwrap_or(0);
                let name = fs::read_to_string(dir.join("comm")).unwrap_or_default();
                if name.starts_with(CLIENT_THREAD) || task.file_name() == main.as_str() {
                    client += ticks;
                } else {
                    server += ticks;
                }
            }
        }
        let machine = machine_busy().unwrap_or((0, 0));
        let redis = redis_pids
            .iter()
            .filter_map(|pid| fs::read_to_string(format!("/proc/{pid}/stat")).ok())
            .filter_map(|stat| ticks(&stat))
            .sum();
        Self {
            at: Instant::now(),
            client,
            server,
            redis,
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
        let machine = later.machine.saturating_sub(self.machine);
        CpuUse {
            client: percent(client),
            server: percent(server),
            redis: percent(redis),
            softirq: percent(later.softirq.saturating_sub(self.softirq)),
            other: percent(machine.saturating_sub(client + server + redis)),
        }
    }
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
pub fn wait_for_quiet(redis_pids: &[u32], limit: std::time::Duration) -> f64 {
    let deadline = Instant::now() + limit;
    loop {
        let before = CpuSnapshot::take(redis_pids);
        std::thread::sleep(std::time::Duration::from_secs(1));
        let other = before.until(&CpuSnapshot::take(redis_pids)).other;
        if other < 10.0 || Instant::now() >= deadline {
            return other;
        }
    }
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
    fn stat_times_are_read_after_the_name() {
        let stat = "1085 (a b) R 1052 1052 30790 0 -1 4194304 138 0 0 0 7 3 0 0 20 0 1 0";
        assert_eq!(ticks(stat), Some(10));
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
}
