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

use crate::error::ApiError;
use crate::state::AppState;

/// Concurrent requests of one test run.
const TEST_CONCURRENCY: usize = 32;

#[derive(Serialize)]
struct Echo<'a> {
    path: &'a str,
}

/// `GET /api/{anything}`: the simulated API. Counted by the middleware like every `/api/`
/// request; answers the path it was asked for.
pub(crate) async fn api_echo(req: HttpRequest) -> HttpResponse {
    HttpResponse::Ok().json(Echo { path: req.path() })
}

#[derive(Serialize)]
struct Ranked {
    count: u64,
    url: String,
}

/// `GET /stats/`: this instance's pending counts are written, then every node's top
/// entries are merged: `[{"count", "url"}]`, count descending then url ascending. 503
/// `store_unavailable` when a node, or the whole ranking, does not answer in time.
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

#[derive(Serialize)]
struct TestRun {
    requested: u64,
    succeeded: u64,
    failed: u64,
    duration_ms: u64,
    pool: Vec<String>,
    distinct_urls: usize,
}

/// `POST /test/{n}/`: sends `n` real GET requests with random `/api/` paths to this server
/// and answers when they are done. One run at a time (429 otherwise); off (404) when
/// `TEST_ENDPOINT_ENABLED=false`.
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
