//! The measured phases: a warm-up, then each page from one client and from [`CLIENTS`]
//! at once, a fixed number of requests each, every `200` answer checked against the
//! [`Expected`] ranking; `/health` and `/status` polled meanwhile, CPU (and on Redis and
//! the cluster, the nodes' work) read around each phase.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::oneshot;

use super::poll::{self, Polls};
use super::seed::Expected;
use super::{CLIENTS, PAGE, Plan, Ranked, StatsStore, Which};
use crate::Setup;
use crate::measure::{CpuSnapshot, CpuUse, NodeWork};

/// Longest a `/stats/` answer may take before it counts as an error.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a client waits after a `503`, whatever its `Retry-After` says.
pub const RETRY_AFTER_CAP: Duration = Duration::from_secs(1);

/// One phase: a page, one or [`CLIENTS`] clients, a fixed number of requests each.
#[derive(Debug)]
pub struct PhaseResult {
    /// The page asked for.
    pub which: Which,
    /// Clients at once.
    pub clients: usize,
    /// What they got.
    pub answers: Answers,
    /// What `/health` and `/status` said meanwhile.
    pub polls: Polls,
    /// CPU use by party during the phase.
    pub cpu: CpuUse,
    /// Per node: what it did during the phase (empty on the embedded store).
    pub redis: Vec<NodeWork>,
}

impl PhaseResult {
    /// The phase's page, as the tables name it.
    pub fn phase_name(&self, offset: usize) -> String {
        match self.which {
            Which::Top => "top 100 (`GET /stats/`)".to_owned(),
            Which::Deep => format!("deep page (`?offset={offset}&limit={PAGE}`)"),
        }
    }
}

/// What the `/stats/` clients of a phase got.
#[derive(Debug, Default)]
pub struct Answers {
    /// Latency of every `200` answer.
    pub latencies: Vec<Duration>,
    /// `200` answers.
    pub ok: u64,
    /// `503` answers.
    pub overloaded: u64,
    /// Other answers that were not `200`.
    pub other_non_2xx: u64,
    /// Requests that got no answer.
    pub errors: u64,
    /// `200` answers that differed from the expected ranking.
    pub wrong: u64,
    /// The first of those, described.
    pub first_wrong: Option<String>,
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

    /// Requests sent, whatever came of them.
    pub fn requests(&self) -> u64 {
        self.ok + self.overloaded + self.other_non_2xx + self.errors
    }

    /// Nearest-rank percentile of the `200` answers, in ms (`NaN` when none).
    pub fn ms(&self, q: f64) -> f64 {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        if sorted.is_empty() {
            return f64::NAN;
        }
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1].as_secs_f64() * 1e3
    }
}

/// Warm-up, then the four phases against the server at `address`, which answers from
/// `store`; on Redis and the cluster the nodes' work is read around each phase.
pub fn measure(
    plan: &Plan,
    setup: &Setup<'_>,
    store: StatsStore,
    address: SocketAddr,
    expected: &Expected,
) -> anyhow::Result<Vec<PhaseResult>> {
    let (servers, pids) = (store.servers(setup), store.redis_pids(setup));
    let offset = plan.deep_offset();
    let path = |which| match which {
        Which::Top => "/stats/".to_owned(),
        Which::Deep => format!("/stats/?offset={offset}&limit={PAGE}"),
    };
    let expected = |which| match which {
        Which::Top => Arc::clone(&expected.top),
        Which::Deep => Arc::clone(&expected.deep),
    };
    // Connections opened and first reads made on every node: not measured, still checked.
    for which in [Which::Top, Which::Deep] {
        let warm =
            setup
                .client_rt
                .block_on(drive(address, &path(which), &expected(which), 1, 2))?;
        if let Some(wrong) = &warm.first_wrong {
            eprintln!("load: /stats/ scale, {store}: warm-up answer wrong: {wrong}");
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
        let redis_before = servers.map(NodeWork::read).transpose()?;
        let cpu_before = CpuSnapshot::take(pids, &[]);
        let (answers, polls) = setup.client_rt.block_on(async {
            let (stop, stopped) = oneshot::channel();
            let poller = tokio::spawn(poll::run(address, stopped));
            let answers = drive(address, &path(which), &expected(which), clients, per_client).await;
            let _ = stop.send(());
            let polls = poller.await.context("the /health poller panicked")?;
            anyhow::Ok((answers?, polls))
        })?;
        let cpu = cpu_before.until(&CpuSnapshot::take(pids, &[]));
        let redis = match (servers, redis_before) {
            (Some(servers), Some(before)) => NodeWork::since(&before, servers)?,
            _ => Vec::new(),
        };
        let result = PhaseResult {
            which,
            clients,
            answers,
            polls,
            cpu,
            redis,
        };
        eprintln!(
            "load: /stats/ scale, {store:<8} {:<34} {} client(s)  p50 {:.2} ms  p99 {:.2} ms",
            result.phase_name(offset),
            clients,
            result.answers.ms(0.50),
            result.answers.ms(0.99)
        );
        results.push(result);
    }
    Ok(results)
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
pub fn first_difference(url: &str, got: &[Ranked], expected: &[Ranked]) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
