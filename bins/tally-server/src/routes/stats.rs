//! The request-statistics API: the simulated `/api/*`, the ranking and the traffic
//! generator.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use actix_web::{HttpRequest, HttpResponse, web};
use futures::StreamExt as _;
use serde::Serialize;
use tally_stats::{Page, TrafficPlan};
use tokio_util::task::AbortOnDropHandle;

use crate::error::{ApiError, ErrorBody};
use crate::routes::openapi::{LimitParam, OffsetParam, RequestCountParam};
use crate::state::AppState;

/// Concurrent requests of one test run.
const TEST_CONCURRENCY: usize = 32;

/// The simulated API's answer.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Echo<'a> {
    /// The request's path, as received (percent-encoding kept).
    #[schema(pattern = "^/api/")]
    path: &'a str,
}

/// `GET /api/{anything}`: the simulated API. Counted by the middleware like every `/api/`
/// request; answers the path it was asked for.
#[utoipa::path(
    get,
    path = "/api/{tail}",
    tag = "request-statistics",
    summary = "Call the simulated API",
    description = "Any path under `/api/` that no visit-counter route takes: counted under \
        its path (query string dropped, trailing slash and percent-encoding kept) and \
        answered with that path. `tail` may hold `/` and may be empty.",
    params(("tail" = String, Path, description = "Anything, slashes included.")),
    responses(
        (status = 200, description = "Counted; the path.", body = Echo),
        (status = 500, description = "`corrupt_count`: the path's stored count is not a count; this request was not counted.", body = ErrorBody),
        (status = 503, description = "`overloaded`: the request statistics have no room for a new path (`MAX_PENDING_KEYS`, `MAX_PENDING_BYTES`); `shutting_down`. Not counted.", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds until a retry has a chance."))),
    ),
)]
pub(crate) async fn api_echo(req: HttpRequest) -> HttpResponse {
    HttpResponse::Ok().json(Echo { path: req.path() })
}

/// One path of the ranking.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Ranked {
    /// Requests counted under it.
    #[schema(minimum = 1)]
    count: u64,
    /// The path as received (no query string), or `(paths over 2048 bytes)`.
    url: String,
}

/// `GET /stats/`: this instance's pending counts are written, then every node's top
/// entries are merged: `[{"count", "url"}]`, count descending then url ascending. 503
/// `store_unavailable` when a node, or the whole ranking, does not answer in time.
#[utoipa::path(
    get,
    path = "/stats/",
    tag = "request-statistics",
    summary = "Rank the paths requested under /api/",
    description = "This server's pending counts are written first, then every node's top \
        entries are merged, exactly: count descending, then url ascending. Other servers' \
        counts show once they have written them. Also served at `/stats`. Other query \
        parameters are ignored.",
    params(
        ("limit" = inline(Option<LimitParam>), Query, description = "Entries to answer: 1 to 10,000, 100 when absent."),
        ("offset" = inline(Option<OffsetParam>), Query, description = "Entries to skip: 0 to 100,000, 0 when absent."),
    ),
    responses(
        (status = 200, description = "The page of the ranking.", body = [Ranked]),
        (status = 400, description = "`invalid_query` (`limit` or `offset` out of range or not a whole number) or `bad_request` (the query string cannot be read).", body = ErrorBody),
        (status = 503, description = "`overloaded`: the rankings a server merges at once were busy for 1 s; `store_unavailable`: a node, or the whole ranking, did not answer in time; `shutting_down`.", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds until a retry has a chance."))),
    ),
)]
pub(crate) async fn stats(
    state: web::Data<AppState>,
    query: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    let page = Page::parse(
        query.get("limit").map(String::as_str),
        query.get("offset").map(String::as_str),
    )
    .map_err(ApiError::InvalidQuery)?;
    // Shared with identical concurrent queries, run on the app runtime where the store's
    // connections live, cancelled when every client waiting on it has gone, and bounded
    // by the ranking deadline (see `AppState::ranking`).
    let ranking = state.ranking(page).await?;
    let body: Vec<Ranked> = ranking
        .into_iter()
        .map(|entry| Ranked {
            count: entry.count,
            url: entry.url,
        })
        .collect();
    if body.len() <= INLINE_ENTRIES {
        return Ok(HttpResponse::Ok().json(body));
    }
    // A long page (up to 10,000 URLs of up to 2 KB: tens of MB of JSON) is written on a
    // blocking thread, so this worker keeps answering its other connections (health
    // checks, visits) meanwhile.
    let json = web::block(move || serde_json::to_vec(&body))
        .await
        .map_err(|e| ApiError::Internal(e.into()))?
        .map_err(|e| ApiError::Internal(e.into()))?;
    Ok(HttpResponse::Ok()
        .content_type(actix_web::http::header::ContentType::json())
        .body(json))
}

/// Pages of at most this many entries are written to JSON on the worker itself.
const INLINE_ENTRIES: usize = 1_000;

/// A run of synthetic traffic, done.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct TestRun {
    /// `n`.
    requested: u64,
    /// Requests answered 2xx.
    succeeded: u64,
    /// The others.
    failed: u64,
    /// How long the run took.
    duration_ms: u64,
    /// The three random 6-letter strings the run's paths are made of.
    #[schema(min_items = 3, max_items = 3)]
    pool: Vec<String>,
    /// Distinct paths the run requested.
    distinct_urls: usize,
}

/// `POST /test/{n}/`: sends `n` real GET requests with random `/api/` paths to this server
/// and answers when they are done. One run at a time (429 otherwise); off (404) when
/// `TEST_ENDPOINT_ENABLED=false`.
#[utoipa::path(
    post,
    path = "/test/{n}/",
    tag = "request-statistics",
    summary = "Send synthetic traffic to this server",
    description = "Sends `n` real GET requests, 32 at a time, to this server's own address, \
        on paths `/api/` plus 1 to 6 segments drawn from three random strings, and answers \
        when they are done. One run at a time; a client that goes away cancels its run. Also \
        served at `/test/{n}`. When the server's `ADMIN_TOKEN` is set it needs \
        `Authorization: Bearer <ADMIN_TOKEN>`, checked before anything else (without \
        `ADMIN_TOKEN` it is open).",
    params(("n" = inline(RequestCountParam), Path, description = "Requests to send: 1 to the server's `TEST_MAX_REQUESTS` (100,000 by default).")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The run is done.", body = TestRun),
        (status = 400, description = "`invalid_request_count`: `n` is not a whole number from 1 to `TEST_MAX_REQUESTS`.", body = ErrorBody),
        (status = 401, description = "`unauthorized`: `ADMIN_TOKEN` is set and the request did not carry it as a bearer token. Nothing sent.", body = ErrorBody,
            headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"tally\"`, with `error=\"invalid_token\"` when a token was presented but not accepted."))),
        (status = 404, description = "`not_found`: the server runs with `TEST_ENDPOINT_ENABLED=false`.", body = ErrorBody),
        (status = 429, description = "`test_already_running`: a run is going; one runs at a time.", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds until a retry has a chance."))),
    ),
)]
pub(crate) async fn test_run(
    _admin: crate::auth::Admin,
    req: HttpRequest,
    state: web::Data<AppState>,
    n: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    if !state.test.enabled {
        return crate::routes::not_found(req).await;
    }
    let max = state.test.max_requests;
    let requested = n
        .parse::<u64>()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| ApiError::InvalidRequestCount {
            value: n.into_inner(),
            max,
        })?;
    let Some(slot) = state.test.runs.try_start() else {
        return Err(ApiError::TestRunning);
    };
    let (plan, urls, distinct_urls) = {
        let mut rng = rand::rng();
        let plan = TrafficPlan::random(&mut rng);
        let (urls, distinct) = plan.urls(requested as usize, &mut rng);
        (plan, urls, distinct)
    };
    let started = Instant::now();
    let client = state.test.client.clone();
    let base = format!("http://{}", state.test.target);
    let urls = Arc::new(urls);
    // The requests run on the app runtime, where the client's connections live, and the
    // run owns the slot until it ends. This handler only waits: if the client goes away,
    // actix drops it, which aborts the run (no new request is sent; those answered stay
    // counted) and so frees the slot once the run has stopped.
    let run = AbortOnDropHandle::new(state.runtime.spawn(async move {
        let _slot = slot;
        futures::stream::iter(0..urls.len())
            .map(|i| {
                let request = client.get(format!("{base}{}", urls[i])).send();
                async move {
                    match request.await {
                        Ok(response) => {
                            let ok = response.status().is_success();
                            ok && response.bytes().await.is_ok()
                        }
                        Err(_) => false,
                    }
                }
            })
            .buffer_unordered(TEST_CONCURRENCY)
            .filter(|ok| std::future::ready(*ok))
            .count()
            .await as u64
    }));
    let succeeded = run.await.map_err(|e| ApiError::Internal(e.into()))?;
    Ok(HttpResponse::Ok().json(TestRun {
        requested,
        succeeded,
        failed: requested - succeeded,
        duration_ms: started.elapsed().as_millis() as u64,
        pool: plan.pool().to_vec(),
        distinct_urls,
    }))
}
