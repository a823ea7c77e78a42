//! `/status` and `/health`: what a person or a load balancer asks to know whether the
//! service works.

use std::collections::BTreeMap;

use actix_web::{HttpResponse, web};
use serde::Serialize;

use crate::routes::openapi;
use crate::routes::{NodeStatus, format_uptime, node_status};
use crate::state::AppState;

/// The service's state.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Status {
    /// `healthy` (every node up), `degraded` (some down) or `unhealthy` (none up; on the
    /// embedded store, a write to its file failed).
    #[schema(schema_with = openapi::health_state)]
    status: &'static str,
    /// Time since start, `H:MM:SS.ffffff`.
    #[schema(pattern = "^[0-9]+:[0-5][0-9]:[0-5][0-9]\\.[0-9]{6}$")]
    uptime: String,
    /// Requests received since start, this one included.
    total_requests: u64,
    store: StoreStatus,
    redis_status: RedisStatus,
    /// On a Redis Cluster: its primaries, replicas and slots.
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<ClusterStatus>,
    counter_status: CounterStatus,
    stats_status: StatsStatus,
    /// The server's version.
    version: &'static str,
    /// `DEBUG`.
    debug_mode: bool,
}

/// Which store the server counts in, and where the embedded store's file is.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct StoreStatus {
    /// `embedded`, `memory`, `redis` or `redis-cluster`.
    #[schema(schema_with = store_kind)]
    kind: &'static str,
    /// The embedded store's database file; absent for the others.
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<String>,
}

/// The kinds of store `StoreStatus::kind` names.
fn store_kind() -> utoipa::openapi::schema::Object {
    openapi::one_of(&["embedded", "memory", "redis", "redis-cluster"])
}

/// A Redis Cluster as the store last saw it (`tally_redis::ClusterStatus`).
#[derive(Serialize, utoipa::ToSchema)]
#[schema(description = "A Redis Cluster as the server last saw it.")]
pub(crate) struct ClusterStatus {
    /// `healthy`, `degraded` (a slot without a reachable primary, a node down, or a
    /// primary short of the replicas its batches wait for) or `unhealthy`.
    #[schema(schema_with = openapi::health_state)]
    state: &'static str,
    /// Hash slots no reachable primary serves: their buckets' visits wait in memory.
    slots_without_primary: u32,
    /// Replicas every batch waits for (`REDIS_WAIT_REPLICAS`); null until known.
    wait_replicas: Option<usize>,
    /// Buckets (shards) of the visits and of the request statistics.
    buckets: BucketCounts,
    /// The node whose `CLUSTER NODES` this is.
    source: Option<String>,
    /// Each primary with its slot ranges and replicas.
    shards: Vec<ShardStatus>,
}

/// Buckets (shards) of a Redis Cluster.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct BucketCounts {
    visits: usize,
    stats: usize,
}

/// A primary of a Redis Cluster, its slots and its replicas.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ShardStatus {
    primary: ClusterNode,
    /// Inclusive ranges, `"0-5460"`.
    slots: Vec<String>,
    replicas: Vec<ClusterNode>,
}

/// A node of a Redis Cluster.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ClusterNode {
    /// `host:port`.
    node: String,
    id: String,
    /// Answered the last ping.
    up: bool,
    /// Flagged failed by the cluster.
    failed: bool,
}

impl ClusterStatus {
    fn of(store: &tally_redis::ClusterStore) -> Self {
        let status = store.status();
        let node = |n: &tally_redis::ClusterNodeStatus| ClusterNode {
            node: n.name.clone(),
            id: n.id.clone(),
            up: n.up,
            failed: n.failed,
        };
        Self {
            state: status.status(),
            slots_without_primary: status.slots_without_primary,
            wait_replicas: status.wait_replicas,
            buckets: BucketCounts {
                visits: tally_redis::COUNTER_BUCKETS,
                stats: tally_redis::STATS_BUCKETS,
            },
            source: status.source.clone(),
            shards: status
                .shards
                .iter()
                .map(|shard| ShardStatus {
                    primary: node(&shard.primary),
                    slots: shard
                        .slots
                        .iter()
                        .map(|(a, b)| {
                            if a == b {
                                a.to_string()
                            } else {
                                format!("{a}-{b}")
                            }
                        })
                        .collect(),
                    replicas: shard.replicas.iter().map(node).collect(),
                })
                .collect(),
        }
    }
}

/// The Redis nodes (none on the embedded and memory stores).
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct RedisStatus {
    nodes: usize,
    healthy_nodes: usize,
    /// `redis://host:port` → up, as of the last check.
    node_status: BTreeMap<String, bool>,
}

/// The visit counter: its read cache and the pages waiting to be written.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct CounterStatus {
    /// Pages in the read cache.
    cache_size: u64,
    /// Keys with visits not written yet: pages, and their days while daily counts are on.
    write_buffer_size: usize,
    /// What the waiting page ids cost, in bytes of `MAX_PENDING_BYTES`.
    write_buffer_bytes: usize,
    /// Pages whose visits are held because the stored value is not a count.
    quarantined_keys: usize,
    /// Nodes whose last visit batch failed: node → the error (retried with backoff).
    failing_nodes: BTreeMap<String, String>,
}

/// The request-statistics counter: paths waiting to be written and its batches.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct StatsStatus {
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
#[utoipa::path(
    get,
    path = "/status",
    tag = "service",
    summary = "Read the service's status",
    description = "Uptime, requests served, the store, node health as of the last check, \
        buffer sizes and version. Always 200: `status` says `healthy`, `degraded` or \
        `unhealthy`.",
    responses((status = 200, description = "The status.", body = Status)),
)]
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
        cluster: state.counter.store().cluster().map(ClusterStatus::of),
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

/// Whether the service can count.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Health {
    /// `healthy`, `degraded` (some nodes down) or `unhealthy`.
    #[schema(schema_with = openapi::health_state)]
    status: &'static str,
    /// `connected` or `disconnected` on Redis, `embedded` on the embedded and memory
    /// stores.
    #[schema(schema_with = redis_state)]
    redis: &'static str,
}

/// The values of `Health::redis`.
fn redis_state() -> utoipa::openapi::schema::Object {
    openapi::one_of(&["connected", "disconnected", "embedded"])
}

/// `GET /health`: 200 while at least one node answers (`redis: connected`; `status` is
/// `degraded` when some do not), 503 when none does (`redis: disconnected`). On a Redis
/// Cluster, 200 while some slot has a reachable primary (`degraded` while any slot has
/// none, a node is down or a primary lacks its replicas), 503 otherwise. The embedded
/// and memory stores answer `redis: embedded` (`/status` tells them apart): 200, or 503
/// with `status: unhealthy` once a write to the embedded store's file failed (a full or
/// failing disk; the file takes writes again only after a restart).
#[utoipa::path(
    get,
    path = "/health",
    tag = "service",
    summary = "Check the service's health",
    description = "For load balancers: 200 while the store can take writes (at least one \
        Redis node answers; on a Redis Cluster, some slot has a reachable primary; the \
        embedded store's last write succeeded), 503 otherwise. Node health is as of the \
        last check.",
    responses(
        (status = 200, description = "`healthy` or `degraded`.", body = Health),
        (status = 503, description = "`unhealthy`: no node answers (`disconnected`), or a write to the embedded store's file failed (`embedded`).", body = Health),
    ),
)]
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
    } else if store.cluster().is_some() {
        // On a cluster, `degraded` covers slots without a reachable primary; only a
        // cluster with no slot served is down.
        if status == "unhealthy" {
            (HttpResponse::ServiceUnavailable(), "disconnected")
        } else {
            (HttpResponse::Ok(), "connected")
        }
    } else if healthy > 0 {
        (HttpResponse::Ok(), "connected")
    } else {
        (HttpResponse::ServiceUnavailable(), "disconnected")
    };
    response.json(Health { status, redis })
}
