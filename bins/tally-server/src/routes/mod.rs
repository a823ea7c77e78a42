//! Routing: which handler answers which method and path, plus the JSON answers for unknown
//! routes and wrong methods.

mod counter;
mod dashboard;
mod metrics;
pub(crate) mod openapi;
mod stats;
mod status;
pub(crate) mod visitors;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use actix_web::{HttpRequest, HttpResponse, Resource, web};
use chrono::{DateTime, SecondsFormat, Utc};
use tally_counter::Store as _;

use crate::error::ApiError;
use crate::figures::RouteClass;
use crate::middleware::RouteLabel;
use crate::store::AppStore;

/// Registers every route of [`table`]. `prefix` is `API_PREFIX` (no trailing slash, maybe
/// empty).
pub(crate) fn configure(
    cfg: &mut web::ServiceConfig,
    prefix: &str,
    enable_metrics: bool,
    enable_dashboard: bool,
) {
    json_extractor_errors(cfg);
    for route in table(prefix, enable_metrics, enable_dashboard) {
        cfg.service((route.handlers)(resource(
            &route.path,
            route.methods,
            route.class,
        )));
    }
}

/// One route: a path pattern, the methods it takes and the handlers of those methods. The
/// OpenAPI document ([`openapi`]) lists each route under its own path, except a spelling
/// of another one, which names that route in `alias_of`; its unit tests hold the two to
/// each other, so a route added here without documentation fails them.
pub(crate) struct Route {
    /// The actix pattern (`/api/v1/counter/visit/{page_id}`, `/api/{tail:.*}`).
    pub(crate) path: String,
    /// The methods, as its 405's `Allow` lists them (`GET, DELETE`).
    pub(crate) methods: &'static str,
    /// For another spelling of a documented route (`/stats` for `/stats/`, a page route
    /// with nothing after the slash), that route's pattern: documented there, not apart.
    #[cfg_attr(
        not(test),
        allow(dead_code, reason = "read by the OpenAPI document's tests")
    )]
    pub(crate) alias_of: Option<String>,
    /// What its requests are on the dashboard's chart.
    class: RouteClass,
    /// Adds the handlers of `methods` (and any data of their own) to the resource.
    handlers: fn(Resource) -> Resource,
}

impl Route {
    fn new(path: String, methods: &'static str, handlers: fn(Resource) -> Resource) -> Self {
        Self {
            path,
            methods,
            alias_of: None,
            class: RouteClass::Other,
            handlers,
        }
    }

    /// This route, its requests drawn as `class` on the dashboard's chart.
    fn drawn_as(mut self, class: RouteClass) -> Self {
        self.class = class;
        self
    }

    /// This route under another spelling, `path`, answered by the same handlers.
    fn alias(&self, path: String) -> Self {
        Self {
            path,
            methods: self.methods,
            alias_of: Some(self.path.clone()),
            class: self.class,
            handlers: self.handlers,
        }
    }
}

/// Why [`query_param`] could not read a parameter.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ParamError {
    /// The query string is not `name=value` pairs that decode (what actix's parser said).
    Unreadable(String),
    /// The parameter is there twice.
    Twice,
}

/// The value of the query parameter `name` in `query`, percent-decoded as actix decodes a
/// query (`+` a space); `None` when absent. Other parameters are ignored.
pub(crate) fn query_param(query: &str, name: &str) -> Result<Option<String>, ParamError> {
    if query.is_empty() {
        return Ok(None);
    }
    let pairs = web::Query::<Vec<(String, String)>>::from_query(query)
        .map_err(|e| ParamError::Unreadable(e.to_string()))?;
    let mut found = None;
    for (key, value) in pairs.into_inner() {
        if key == name {
            if found.is_some() {
                return Err(ParamError::Twice);
            }
            found = Some(value);
        }
    }
    Ok(found)
}

/// Every route, in the order actix tries them.
///
/// Routes are full-path resources rather than a scope on the prefix, so a path under the
/// prefix that no resource takes falls through to later routes. The request-statistics
/// routes (`GET /api/{anything}`, `GET /stats/`, `POST /test/{n}/`) go after these: actix
/// tries resources in registration order, so the counter API keeps its paths even though
/// `/api/v1/...` also matches `/api/{anything}`.
pub(crate) fn table(prefix: &str, enable_metrics: bool, enable_dashboard: bool) -> Vec<Route> {
    let mut routes = Vec::new();
    // Each page route is registered twice: with `{page_id}`, and with nothing after the
    // slash so an empty id gets 400 `invalid_page_id` rather than 404.
    let visit = Route::new(format!("{prefix}/counter/visit/{{page_id}}"), "POST", |r| {
        r.route(web::post().to(counter::record_visit))
    })
    .drawn_as(RouteClass::Visit);
    let empty_id = visit.alias(format!("{prefix}/counter/visit/"));
    routes.extend([visit, empty_id]);
    let daily = Route::new(
        format!("{prefix}/counter/visits/{{page_id}}/daily"),
        "GET",
        |r| r.route(web::get().to(counter::get_daily)),
    );
    let empty_id = daily.alias(format!("{prefix}/counter/visits//daily"));
    routes.extend([daily, empty_id]);
    let visits = Route::new(
        format!("{prefix}/counter/visits/{{page_id}}"),
        "GET, DELETE",
        |r| {
            r.route(web::get().to(counter::get_visits))
                .route(web::delete().to(counter::reset_visits))
        },
    )
    .drawn_as(RouteClass::Count);
    let empty_id = visits.alias(format!("{prefix}/counter/visits/"));
    routes.extend([visits, empty_id]);
    let visitors = Route::new(
        format!("{prefix}/counter/visitors/{{page_id}}"),
        "GET",
        |r| r.route(web::get().to(visitors::get_visitors)),
    );
    let empty_id = visitors.alias(format!("{prefix}/counter/visitors/"));
    routes.extend([visitors, empty_id]);
    routes.push(
        Route::new(format!("{prefix}/counter/visits"), "POST", |r| {
            r.app_data(bulk_json())
                .route(web::post().to(counter::record_visits))
        })
        .drawn_as(RouteClass::Visit),
    );
    routes.push(Route::new(
        format!("{prefix}/counter/metrics"),
        "GET",
        |r| r.route(web::get().to(counter::counter_metrics)),
    ));
    routes.push(Route::new("/status".into(), "GET", |r| {
        r.route(web::get().to(status::status))
    }));
    routes.push(Route::new("/health".into(), "GET", |r| {
        r.route(web::get().to(status::health))
    }));
    if enable_metrics {
        routes.push(Route::new("/metrics".into(), "GET", |r| {
            r.route(web::get().to(metrics::prometheus))
        }));
    }
    routes.push(Route::new("/openapi.json".into(), "GET", |r| {
        r.route(web::get().to(openapi::serve))
    }));
    if enable_dashboard {
        routes.push(Route::new("/".into(), "GET", |r| {
            r.route(web::get().to(dashboard::page))
        }));
        routes.push(Route::new("/dashboard/data.json".into(), "GET", |r| {
            r.route(web::get().to(dashboard::data))
        }));
    }
    // Request statistics, after the counter API: `/api/{tail}` also matches its paths.
    let stats = Route::new("/stats/".into(), "GET", |r| {
        r.route(web::get().to(stats::stats))
    });
    let test_run = Route::new("/test/{n}/".into(), "POST", |r| {
        r.route(web::post().to(stats::test_run))
    });
    let (stats_alias, test_run_alias) = (
        stats.alias("/stats".into()),
        test_run.alias("/test/{n}".into()),
    );
    routes.extend([stats, stats_alias, test_run, test_run_alias]);
    routes.push(
        Route::new("/api/{tail:.*}".into(), "GET", |r| {
            r.route(web::get().to(stats::api_echo))
        })
        .drawn_as(RouteClass::Api),
    );
    routes
}

/// Makes actix's own extractors (path parameters, query strings, JSON bodies) answer with
/// the API's JSON 400 instead of a plain-text one. The counter routes parse their page id
/// themselves; this is for every other route, now and later.
fn json_extractor_errors(cfg: &mut web::ServiceConfig) {
    fn bad_request(error: impl std::fmt::Display) -> actix_web::Error {
        ApiError::BadRequest(error.to_string()).into()
    }
    cfg.app_data(web::PathConfig::default().error_handler(|e, _| bad_request(e)))
        .app_data(web::QueryConfig::default().error_handler(|e, _| bad_request(e)))
        .app_data(web::JsonConfig::default().error_handler(|e, _| bad_request(e)));
}

/// The JSON extractor of the bulk route: at most [`counter::MAX_BULK_BYTES`], and the
/// API's 413, 415 and 400 for a body too large, not sent as JSON, or not parsing.
fn bulk_json() -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(counter::MAX_BULK_BYTES)
        .error_handler(|error, _| {
            use actix_web::error::JsonPayloadError;
            match error {
                JsonPayloadError::OverflowKnownLength { .. }
                | JsonPayloadError::Overflow { .. } => ApiError::PayloadTooLarge {
                    limit: counter::MAX_BULK_BYTES,
                },
                JsonPayloadError::ContentType => ApiError::UnsupportedMediaType,
                JsonPayloadError::Deserialize(error) if error.is_data() => {
                    ApiError::InvalidBody(format!("request body: {error}"))
                }
                other => ApiError::BadRequest(format!("request body is not valid JSON: {other}")),
            }
            .into()
        })
}

/// A resource whose other methods answer 405 with `Allow: {allowed}` and a JSON body,
/// labelled with its pattern for the HTTP metrics and its class for the dashboard.
fn resource(path: &str, allowed: &'static str, class: RouteClass) -> Resource {
    web::resource(path)
        .app_data(RouteLabel(path.into(), class))
        .default_service(web::to(move |req: HttpRequest| async move {
            Err::<HttpResponse, _>(ApiError::MethodNotAllowed {
                method: req.method().to_string(),
                allowed,
            })
        }))
}

/// The app's default service: 404 with a JSON body.
pub(crate) async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    // Echo the path for the client's benefit, but not an unbounded amount of it.
    let mut path = req.path().to_owned();
    if path.len() > 200 {
        let mut end = 200;
        while !path.is_char_boundary(end) {
            end -= 1;
        }
        path.truncate(end);
        path.push('…');
    }
    Err(ApiError::NotFound {
        method: req.method().to_string(),
        path,
    })
}

/// ISO 8601 in UTC with microseconds: `2025-02-23T15:30:45.123456Z`.
pub(crate) fn iso_time(time: SystemTime) -> String {
    DateTime::<Utc>::from(time).to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// `H:MM:SS.ffffff`, hours unbounded (the original service printed Python's `timedelta`).
pub(crate) fn format_uptime(uptime: Duration) -> String {
    let secs = uptime.as_secs();
    format!(
        "{}:{:02}:{:02}.{:06}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        uptime.subsec_micros()
    )
}

/// Health of the store's nodes as the status endpoints report it.
pub(crate) struct NodeStatus {
    /// `healthy` (all up), `degraded` (some down) or `unhealthy` (none up; for the
    /// embedded store, its last write failed on the disk). On a Redis Cluster, as
    /// `tally_redis::ClusterStatus::status` says: `degraded` while a slot has no reachable
    /// primary, a node is down or a primary lacks the replicas its batches wait for, and
    /// `unhealthy` while no slot has a primary.
    pub(crate) status: &'static str,
    /// `redis://host:port` → up, credential-free; empty for the embedded store.
    pub(crate) nodes: BTreeMap<String, bool>,
    /// Nodes up.
    pub(crate) healthy: usize,
}

/// Reads the store's health as of its last check (every `HEALTH_CHECK_INTERVAL_SECONDS`,
/// and after every failed command).
pub(crate) fn node_status(store: &AppStore) -> NodeStatus {
    if let Some(cluster) = store.cluster() {
        // Every node of the cluster, primaries and replicas; its shards are buckets.
        let cluster = cluster.status();
        let nodes: BTreeMap<String, bool> = cluster
            .nodes()
            .map(|node| (format!("redis://{}", node.name), node.up))
            .collect();
        return NodeStatus {
            status: cluster.status(),
            healthy: nodes.values().filter(|up| **up).count(),
            nodes,
        };
    }
    let health = store.health();
    let healthy = health.iter().filter(|node| node.up).count();
    if store.is_embedded() {
        // One shard, in this process: up unless its last write failed on the disk.
        return NodeStatus {
            status: if healthy == health.len() {
                "healthy"
            } else {
                "unhealthy"
            },
            nodes: BTreeMap::new(),
            healthy: 0,
        };
    }
    let status = match healthy {
        n if n == health.len() => "healthy",
        0 => "unhealthy",
        _ => "degraded",
    };
    let nodes = health
        .into_iter()
        .map(|node| (format!("redis://{}", node.name), node.up))
        .collect();
    NodeStatus {
        status,
        nodes,
        healthy,
    }
}

#[cfg(test)]
mod tests {
    use actix_web::App;
    use actix_web::test as actix_test;

    use super::*;

    #[actix_web::test]
    async fn extractor_errors_are_json_400s() {
        async fn echo(
            n: web::Path<u32>,
            q: web::Query<std::collections::HashMap<String, u32>>,
        ) -> String {
            format!("{n} {}", q.len())
        }
        let app = actix_test::init_service(
            App::new()
                .configure(json_extractor_errors)
                .route("/n/{n}", web::get().to(echo)),
        )
        .await;
        for uri in ["/n/abc", "/n/1?limit=many"] {
            let response = actix_test::call_service(
                &app,
                actix_test::TestRequest::get().uri(uri).to_request(),
            )
            .await;
            assert_eq!(response.status(), 400, "{uri}");
            let body: serde_json::Value = actix_test::read_body_json(response).await;
            assert_eq!(body["status"], "error", "{uri}");
            assert_eq!(body["error"]["code"], "bad_request", "{uri}");
            assert!(!body["error"]["message"].as_str().unwrap().is_empty());
        }
    }

    #[test]
    fn uptime_looks_like_a_python_timedelta() {
        assert_eq!(
            format_uptime(Duration::from_micros(5_025_678_901)),
            "1:23:45.678901"
        );
        assert_eq!(format_uptime(Duration::ZERO), "0:00:00.000000");
        assert_eq!(
            format_uptime(Duration::from_secs(90_061)),
            "25:01:01.000000"
        );
    }

    #[test]
    fn times_are_utc_with_microseconds() {
        let time = SystemTime::UNIX_EPOCH + Duration::from_micros(1_740_324_645_123_456);
        assert_eq!(iso_time(time), "2025-02-23T15:30:45.123456Z");
    }
}
