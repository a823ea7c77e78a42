//! `GET /metrics`: the Prometheus text exposition of everything recorded through the
//! `metrics` facade (HTTP, counter, Redis).

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};

use crate::error::ApiError;
use crate::state::AppState;

/// Prometheus text format 0.0.4.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `GET /metrics`, registered only when `ENABLE_METRICS` is on.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "service",
    summary = "Read the Prometheus metrics",
    description = "The Prometheus text exposition (format 0.0.4) of the server's metrics: \
        requests by route pattern, method and status, the counters' and the stores' figures. \
        Served only when `ENABLE_METRICS` is on (the default); this document lists it only then.",
    responses(
        (status = 200, description = "The metrics.", body = String, content_type = "text/plain"),
    ),
)]
pub(crate) async fn prometheus(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let Some(handle) = state.metrics else {
        return super::not_found(req).await;
    };
    // The cache size is not a running tally the counter can emit as it goes: read it now.
    let snapshot = state.counter.snapshot();
    metrics::gauge!("tally_counter_cache_entries", "counter" => state.counter.config().name.clone())
        .set(snapshot.cache_size as f64);
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, CONTENT_TYPE))
        .body(handle.render()))
}
