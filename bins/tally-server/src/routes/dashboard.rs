//! The live dashboard: `GET /`, one HTML page with its script and styles inside (nothing
//! loads from another host), and `GET /dashboard/data.json`, the figures it polls every
//! 2 s. Both are registered only when `ENABLE_DASHBOARD` is on.
//!
//! The figures are read, not recomputed: the per-second ring of [`crate::figures`], the
//! counters' snapshots, the store's node health ([`super::node_status`]) and the request
//! statistics' own ranking for the top URLs.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use actix_web::http::header::{self, ContentType};
use actix_web::{HttpResponse, web};
use serde::Serialize;
use tally_counter::Store as _;
use tally_stats::Page;

use super::{iso_time, node_status, openapi};
use crate::figures::{Series, WINDOW};
use crate::state::{AppState, Deadline, within_deadline};

/// The page: markup, styles and script in one file, compiled into the binary.
const PAGE: &str = include_str!("dashboard.html");

/// URLs the top list shows.
const TOP_URLS: usize = 20;

/// Longest wait for the top URLs. Shorter than the page's poll: while a node does not
/// answer, the rest of the figures (the node down among them) still arrive on time, and
/// the list says why it is missing.
const TOP_URLS_WAIT: Duration = Duration::from_secs(1);

/// The figures of the dashboard.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct DashboardData {
    /// `healthy`, `degraded` or `unhealthy`, as `/status` says.
    #[schema(schema_with = openapi::health_state)]
    status: &'static str,
    /// When these figures were read.
    time: String,
    /// Seconds since the server started.
    uptime_seconds: u64,
    /// `embedded`, `memory`, `redis` or `redis-cluster`.
    store: &'static str,
    /// Seconds in each series (300), oldest first; the last is the last whole second.
    seconds: usize,
    /// Requests per second by route, and visits counted per second.
    series: SeriesData,
    /// 503 answers in the last 60 whole seconds.
    refused_last_minute: u64,
    /// Each node (or the embedded or memory store), by name.
    nodes: Vec<NodeData>,
    /// Keys of the visit counter waiting to be written, all nodes.
    pending_keys: usize,
    /// When the visit counter's last batch was acknowledged (by any node); null before
    /// the first.
    last_batch_at: Option<String>,
    /// Batches of the visit counter and of the request statistics.
    batches: Batches,
    /// The top URLs of the request statistics, count descending.
    top_urls: Vec<TopUrl>,
    /// Why `top_urls` is empty when the ranking could not be read in time; absent
    /// otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    top_urls_error: Option<String>,
}

/// One value per second, [`WINDOW`] of them, oldest first.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct SeriesData {
    /// Requests, all routes.
    total: Vec<u64>,
    /// `POST` of visits (one page or many).
    visit: Vec<u64>,
    /// `GET` of a page's count.
    count: Vec<u64>,
    /// The simulated API, `/api/{anything}`.
    api: Vec<u64>,
    /// Every other request.
    other: Vec<u64>,
    /// Visits counted (a bulk request counts each of its visits).
    visits: Vec<u64>,
    /// 503 answers.
    refused: Vec<u64>,
}

/// A node of the store.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct NodeData {
    /// `redis://host:port` (on a Redis Cluster, a primary), or `embedded` / `memory`.
    name: String,
    /// Up as of the last health check.
    up: bool,
    /// Keys of the visit counter waiting for this node.
    pending_keys: usize,
    /// When the node last acknowledged a batch of visits; null before the first.
    last_batch_at: Option<String>,
}

/// Batches acknowledged and failed, by counter.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Batches {
    visits: BatchCounts,
    stats: BatchCounts,
}

/// Batches of one counter since start.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct BatchCounts {
    ok: u64,
    failed: u64,
}

/// One URL of the ranking.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct TopUrl {
    count: u64,
    url: String,
}

/// `GET /`: the dashboard page.
#[utoipa::path(
    get,
    path = "/",
    tag = "service",
    summary = "Open the live dashboard",
    description = "An HTML page that polls `/dashboard/data.json` every 2 s and draws \
        request rates, nodes, batches and the top URLs. Served only when \
        `ENABLE_DASHBOARD` is on (the default); this document lists it only then.",
    responses((status = 200, description = "The page.", body = String, content_type = "text/html")),
)]
pub(crate) async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type(ContentType::html())
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(PAGE)
}

/// `GET /dashboard/data.json`: the figures the page draws.
#[utoipa::path(
    get,
    path = "/dashboard/data.json",
    tag = "service",
    summary = "Read the dashboard's figures",
    description = "Requests per second over the last 300 s by route, visits per second, \
        503 answers, the nodes with their pending keys, batches, and the top 20 URLs of \
        the request statistics (empty, with `top_urls_error`, when the ranking does not \
        answer within 1 s). Always 200. Served only when `ENABLE_DASHBOARD` is on.",
    responses((status = 200, description = "The figures.", body = DashboardData)),
)]
pub(crate) async fn data(state: web::Data<AppState>) -> HttpResponse {
    let now = Instant::now();
    let series = state
        .figures
        .as_ref()
        .map_or_else(Series::default, |figures| figures.series(now));
    let (top_urls, top_urls_error) = top_urls(&state).await;
    let store = state.counter.store();
    let visits = state.counter.snapshot();
    let stats = state.stats.counter().snapshot();
    let refused_last_minute = series.refused.iter().rev().take(60).sum();
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(DashboardData {
            status: node_status(store).status,
            time: iso_time(SystemTime::now()),
            uptime_seconds: state.started.elapsed().as_secs(),
            store: store.kind(),
            seconds: WINDOW,
            series: series_data(series),
            refused_last_minute,
            nodes: nodes(&state),
            pending_keys: visits.write_buffer_size,
            last_batch_at: visits.last_batch_at.map(iso_time),
            batches: Batches {
                visits: BatchCounts {
                    ok: visits.batches_ok,
                    failed: visits.batches_failed,
                },
                stats: BatchCounts {
                    ok: stats.batches_ok,
                    failed: stats.batches_failed,
                },
            },
            top_urls,
            top_urls_error,
        })
}

/// The series as the JSON carries them, with their total.
fn series_data(series: Series) -> SeriesData {
    let total = (0..series.visit.len())
        .map(|i| series.visit[i] + series.count[i] + series.api[i] + series.other[i])
        .collect();
    SeriesData {
        total,
        visit: series.visit,
        count: series.count,
        api: series.api,
        other: series.other,
        visits: series.visits,
        refused: series.refused,
    }
}

/// The visit counter's shards grouped by the node that holds them (a Redis node, a
/// cluster primary, or the one embedded or memory store), in the order of their first
/// shard (`REDIS_NODES` order), each with its waiting keys; a node is up when every shard
/// on it is.
fn nodes(state: &AppState) -> Vec<NodeData> {
    let store = state.counter.store();
    let waiting = state.counter.waiting_keys_by_shard();
    let written = state.counter.last_batch_by_shard();
    let on_redis = store.redis().is_some() || store.cluster().is_some();
    let mut nodes: Vec<(NodeData, Option<SystemTime>)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for (shard, health) in store.health().into_iter().enumerate() {
        let name = if on_redis {
            format!("redis://{}", health.name)
        } else {
            store.kind().to_owned()
        };
        let at = *index.entry(name.clone()).or_insert_with(|| {
            let node = NodeData {
                name,
                up: true,
                pending_keys: 0,
                last_batch_at: None,
            };
            nodes.push((node, None));
            nodes.len() - 1
        });
        let (node, last) = &mut nodes[at];
        node.up &= health.up;
        node.pending_keys += waiting.get(shard).copied().unwrap_or(0);
        *last = (*last).max(written.get(shard).copied().flatten());
    }
    nodes
        .into_iter()
        .map(|(node, last)| NodeData {
            last_batch_at: last.map(iso_time),
            ..node
        })
        .collect()
}

/// The top [`TOP_URLS`] of the ranking, or none and why, within [`TOP_URLS_WAIT`].
async fn top_urls(state: &AppState) -> (Vec<TopUrl>, Option<String>) {
    let page = Page {
        limit: TOP_URLS,
        offset: 0,
    };
    let deadline = Deadline {
        after: TOP_URLS_WAIT.min(state.ranking_deadline.after),
        set_by: "the dashboard's wait for its top URLs",
    };
    let nodes = || "the request statistics' nodes".to_owned();
    match within_deadline(deadline, state.stats.ranking(page), nodes).await {
        Ok(Ok(ranking)) => (
            ranking
                .into_iter()
                .map(|entry| TopUrl {
                    count: entry.count,
                    url: entry.url,
                })
                .collect(),
            None,
        ),
        Ok(Err(error)) => (Vec::new(), Some(error.to_string())),
        Err(_) => (
            Vec::new(),
            Some(format!(
                "the ranking did not answer within {} s",
                TOP_URLS_WAIT.as_secs()
            )),
        ),
    }
}
