//! `/health` and `/status`, polled through every phase of the scenario: how often the
//! server was not `healthy`, which nodes it saw down and which had failing batches.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::oneshot;

/// How often `/health` and `/status` are asked during a phase.
pub const POLL_EVERY: Duration = Duration::from_millis(100);
/// Longest a `/health` or `/status` answer may take before it counts as not healthy.
const POLL_TIMEOUT: Duration = Duration::from_secs(2);

/// What `/health` and `/status` said during a phase.
#[derive(Debug, Default)]
pub struct Polls {
    /// `/health` asks.
    pub health: u64,
    /// `/health` answers that were not `healthy`, or did not come.
    pub not_healthy: u64,
    /// `/status` asks that got no readable answer.
    pub status_failed: u64,
    /// Most nodes `/status` showed down at once.
    pub max_down: usize,
    /// Every node `/status` showed down.
    pub down: BTreeSet<String>,
    /// Nodes whose last batch (visits or statistics) had failed.
    pub failing: BTreeSet<String>,
}

/// `/health` and `/status` every [`POLL_EVERY`] until `stop`.
pub async fn run(address: SocketAddr, mut stop: oneshot::Receiver<()>) -> Polls {
    #[derive(Deserialize)]
    struct Health {
        status: String,
    }
    #[derive(Deserialize)]
    struct Status {
        redis_status: RedisStatus,
        counter_status: Failing,
        stats_status: Failing,
    }
    #[derive(Deserialize)]
    struct RedisStatus {
        node_status: BTreeMap<String, bool>,
    }
    #[derive(Deserialize)]
    struct Failing {
        #[serde(default)]
        failing_nodes: BTreeMap<String, String>,
    }

    let mut polls = Polls::default();
    let Ok(client) = reqwest::Client::builder()
        .no_proxy()
        .timeout(POLL_TIMEOUT)
        .build()
    else {
        polls.status_failed += 1;
        return polls;
    };
    let (health_url, status_url) = (
        format!("http://{address}/health"),
        format!("http://{address}/status"),
    );
    let mut tick = tokio::time::interval(POLL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => {}
        }
        polls.health += 1;
        let healthy = match client.get(&health_url).send().await {
            Ok(response) if response.status().is_success() => response
                .json::<Health>()
                .await
                .is_ok_and(|h| h.status == "healthy"),
            _ => false,
        };
        if !healthy {
            polls.not_healthy += 1;
        }
        let status = match client.get(&status_url).send().await {
            Ok(response) => response.json::<Status>().await.ok(),
            Err(_) => None,
        };
        let Some(status) = status else {
            polls.status_failed += 1;
            continue;
        };
        let down: Vec<&String> = status
            .redis_status
            .node_status
            .iter()
            .filter(|&(_, &up)| !up)
            .map(|(node, _)| node)
            .collect();
        polls.max_down = polls.max_down.max(down.len());
        polls.down.extend(down.into_iter().cloned());
        polls.failing.extend(
            status
                .counter_status
                .failing_nodes
                .into_keys()
                .chain(status.stats_status.failing_nodes.into_keys()),
        );
    }
    polls
}
