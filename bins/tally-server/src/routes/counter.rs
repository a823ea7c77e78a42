//! The visit-counter API under `API_PREFIX`: record, read and reset a page's visits, and
//! the counter's own figures.

use std::future::{Ready, ready};

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest, HttpResponse, web};
use serde::Serialize;

use crate::error::ApiError;
use crate::page_id::PageId;
use crate::routes::{NodeStatus, iso_time, node_status};
use crate::state::AppState;

impl FromRequest for PageId {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    /// The id is the last segment of the raw request path, decoded strictly by
    /// [`PageId::from_path_segment`]. The raw path, not actix's decoded match, because
    /// actix replaces bytes that are not UTF-8 instead of refusing them.
    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let segment = req.uri().path().rsplit('/').next().unwrap_or_default();
        ready(PageId::from_path_segment(segment).map_err(ApiError::from))
    }
}

#[derive(Serialize)]
struct VisitRecorded {
    status: &'static str,
    message: String,
    page_id: String,
    timestamp: String,
}

/// `POST {prefix}/counter/visit/{page_id}`: counts one visit (in memory; written within
/// `BATCH_INTERVAL_SECONDS`).
#[tracing::instrument(name = "record_visit", level = "debug", skip(state), fields(page_id = %page_id))]
pub(crate) async fn record_visit(
    state: web::Data<AppState>,
    page_id: PageId,
) -> Result<HttpResponse, ApiError> {
    state
        .counter
        .increment(page_id.as_str(), 1)
        .map_err(|e| state.counter_error(e))?;
    Ok(HttpResponse::Ok().json(VisitRecorded {
        status: "success",
        message: format!("Visit recorded for page {page_id}"),
        page_id: page_id.to_string(),
        timestamp: iso_time(std::time::SystemTime::now()),
    }))
}

#[derive(Serialize)]
struct Visits {
    visits: u64,
    served_via: String,
    node: String,
}

/// `GET {prefix}/counter/visits/{page_id}`: the page's count, including this instance's
/// visits not written yet.
#[tracing::instrument(name = "get_visits", level = "debug", skip(state), fields(page_id = %page_id))]
pub(crate) async fn get_visits(
    state: web::Data<AppState>,
    page_id: PageId,
) -> Result<HttpResponse, ApiError> {
    // A cache hit is answered here on the worker; only a miss goes to the app runtime,
    // where the store's connections live (see `AppState::store_call`).
    let count = match state.counter.get_cached(page_id.as_str()) {
        Some(count) => count,
        None => {
            state
                .store_call(page_id.as_str(), |counter, key| async move {
                    counter.get(&key).await
                })
                .await?
        }
    };
    let store = state.counter.store();
    Ok(HttpResponse::Ok().json(Visits {
        visits: count.value,
        served_via: store.served_via(count.served_via),
        node: store.node_of(page_id.as_str()).to_owned(),
    }))
}

#[derive(Serialize)]
struct CounterReset {
    status: &'static str,
    message: String,
    page_id: String,
}

/// `DELETE {prefix}/counter/visits/{page_id}`: sets the page's count to zero on its node.
#[tracing::instrument(name = "reset_visits", level = "debug", skip(state), fields(page_id = %page_id))]
pub(crate) async fn reset_visits(
    state: web::Data<AppState>,
    page_id: PageId,
) -> Result<HttpResponse, ApiError> {
    state
        .store_call(page_id.as_str(), |counter, key| async move {
            counter.reset(&key).await
        })
        .await?;
    Ok(HttpResponse::Ok().json(CounterReset {
        status: "success",
        message: format!("Counter reset for page {page_id}"),
        page_id: page_id.to_string(),
    }))
}

#[derive(Serialize)]
struct CounterMetrics {
    status: &'static str,
    metrics: CacheFigures,
    redis_nodes: std::collections::BTreeMap<String, bool>,
    last_batch_write: Option<String>,
}

#[derive(Serialize)]
struct CacheFigures {
    cache_hits: u64,
    cache_misses: u64,
    cache_size: u64,
    write_buffer_size: usize,
}

/// `GET {prefix}/counter/metrics`: cache and buffer figures, node health, last write.
pub(crate) async fn counter_metrics(state: web::Data<AppState>) -> HttpResponse {
    let snapshot = state.counter.snapshot();
    let NodeStatus { status, nodes, .. } = node_status(state.counter.store());
    HttpResponse::Ok().json(CounterMetrics {
        status,
        metrics: CacheFigures {
            cache_hits: snapshot.cache_hits,
            cache_misses: snapshot.cache_misses,
            cache_size: snapshot.cache_size,
            write_buffer_size: snapshot.write_buffer_size,
        },
        redis_nodes: nodes,
        last_batch_write: snapshot.last_batch_at.map(iso_time),
    })
}
