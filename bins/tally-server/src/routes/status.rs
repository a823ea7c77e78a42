//! `/status` and `/health`: what a person or a load balancer asks to know whether the
//! service works.

use std::collections::BTreeMap;

use actix_web::{HttpResponse, web};
use serde::Serialize;

use crate::routes::{NodeStatus, format_uptime, node_status};
use crate::state::AppState;

#[derive(Serialize)]
struct Status {
    status: &'static str,
    uptime: String,
    total_requests: u64,
    store: StoreStatus,
    redis_status: RedisStatus,
    counter_status: CounterStatus,
    stats_status: StatsStatus,
    version: &'static str,
    debug_mode: bool,
}

/// Which store the server counts in, and where the embedded store's file is.
#[derive(Serialize)]
struct StoreStatus {
    /// `embedded`, `memory` or `redis`.
    kind: &'static str,
    /// The embedded store's database file; absent for the others.
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<String>,
}

#[derive(Serialize)]
struct RedisStatus {
    nodes: usize,
    healthy_nodes: usize,
    node_status: BTreeMap<String, bool>,
}

#[derive(Serialize)]
struct CounterStatus {
    cache_size: u64,
    write_buffer_size: usize,
    /// What the waiting page ids cost, in bytes of `MAX_PENDING_BYTES`.
    write_buffer_bytes: usize,
    /// Pages whose visits are held because the stored value is not a count.
    quarantined_keys: usize,
    /// Nodes whose last visit batch failed: node → the error (retried with backoff).
    failing_nodes: BTreeMap<String, String>,
}

/// The request-statistics counter: paths waiting to be written and its batches.
#[derive(Serialize)]
struct StatsStatus {
    pending_urls: usize,
    /// What the waiting paths cost, in bytes of `MAX_PENDING_BYTES`.
    pending_bytes: usize,
    /// URLs whose counts are held because the stored value is not a count.
    quarantined_keys: usize,
    /// Nodes whose last statistics batch failed: node → the error (retried with backoff).
    failing_nodes: BTreeMap<String, String>,
    batches_ok: u64,
    batches_failed: u64,
    requests_written: u64,
}

/// `GET /status`: uptime, requests served, the store (and the embedded store's file), node
/// health, buffer sizes, version. Always 200;
/// `status` says `healthy`, `degraded` or `unhealthy`.
pub(crate) async fn status(state: web::Data<AppState>) -> HttpResponse {
    let NodeStatus {
        status,
        nodes,
        healthy,
    } = node_status(state.counter.store());
    let snapshot = state.counter.snapshot();
    let stats = state.stats.counter().snapshot();
    HttpResponse::Ok().json(Status {
        status,
        uptime: format_uptime(state.started.elapsed()),
        total_requests: state.total_requests(),
        store: StoreStatus {
            kind: state.counter.store().kind(),
            path: state
                .counter
                .store()
                .path()
                .map(|path| path.display().to_string()),
        },
        redis_status: RedisStatus {
            nodes: nodes.len(),
            healthy_nodes: healthy,
            node_status: nodes,
        },
        counter_status: CounterStatus {
            cache_size: snapshot.cache_size,
            write_buffer_size: snapshot.write_buffer_size,
            write_buffer_bytes: snapshot.write_buffer_bytes,
            quarantined_keys: snapshot.quarantined_keys,
            failing_nodes: snapshot.failing_shards.into_iter().collect(),
        },
        stats_status: StatsStatus {
            pending_urls: stats.write_buffer_size,
            pending_bytes: stats.write_buffer_bytes,
            quarantined_keys: stats.quarantined_keys,
            failing_nodes: stats.failing_shards.into_iter().collect(),
            batches_ok: stats.batches_ok,
            batches_failed: stats.batches_failed,
            requests_written: stats.increments_written,
        },
        version: env!("CARGO_PKG_VERSION"),
        debug_mode: state.debug,
    })
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
    redis: &'static str,
}

/// `GET /health`: 200 while at least one node answers (`redis: connected`; `status` is
/// `degraded` when some do not), 503 when none does (`redis: disconnected`). The embedded
/// and memory stores answer `redis: embedded` (`/status` tells them apart): 200, or 503
/// with `status: unhealthy` once a write to the embedded store's file failed (a full or
/// failing disk; the file takes writes again only after a restart).
pub(crate) async fn health(state: web::Data<AppState>) -> HttpResponse {
    let store = state.counter.store();
    let NodeStatus {
        status, healthy, ..
    } = node_status(store);
    let (mut response, redis) = if store.is_embedded() {
        if status == "healthy" {
            (HttpResponse::Ok(), "embedded")
        } else {
            (HttpResponse::ServiceUnavailable(), "embedded")
        }
    } else if healthy > 0 {
        (HttpResponse::Ok(), "connected")
    } else {
        (HttpResponse::ServiceUnavailable(), "disconnected")
    };
    response.json(Health { status, redis })
}
