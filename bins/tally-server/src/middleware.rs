//! The one middleware every request goes through: a tracing span, the request count, the
//! HTTP metrics and the `X-Process-Time` header.

use std::time::Instant;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{ResponseError as _, web};
use tally_stats::UrlPath;
use tracing::Instrument as _;

use crate::state::AppState;

/// Route label of requests no route matched (404s): one label, whatever the path, so
/// scanners cannot grow the metrics without bound.
const UNMATCHED: &str = "unmatched";

/// Wraps the whole app (the 404 default service included).
pub(crate) async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let started = Instant::now();
    if let Some(state) = req.app_data::<web::Data<AppState>>() {
        state.count_request();
    }
    let method = method_label(req.method());
    let span = tracing::info_span!(
        "http_request",
        method = %req.method(),
        path = %req.path(),
        route = tracing::field::Empty,
        status = tracing::field::Empty,
        latency_ms = tracing::field::Empty,
    );
    let result = next.call(req).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let mut response = match result {
        Ok(response) => response.map_into_boxed_body(),
        Err(error) => {
            // Handlers' errors are responses by now; an `Err` here comes from actix itself,
            // which turns it into a response after us. Count it; there is no response
            // (nor request: it cannot be cloned before routing) to put a header on.
            let status = error.as_response_error().status_code().as_u16();
            record(
                UNMATCHED.to_owned(),
                method,
                status,
                elapsed.as_secs_f64(),
                &span,
            );
            return Err(error);
        }
    };
    let seconds = elapsed.as_secs_f64();
    if let Ok(value) = HeaderValue::from_str(&format!("{seconds:.6}")) {
        response
            .headers_mut()
            .insert(HeaderName::from_static("x-process-time"), value);
    }
    // The route pattern, never the raw path: page ids would make the label set unbounded.
    let route = response
        .request()
        .match_pattern()
        .unwrap_or_else(|| UNMATCHED.to_owned());
    record(route, method, response.status().as_u16(), seconds, &span);
    Ok(response)
}

/// Counts every request under `/api/` (any method, any outcome) in the request statistics,
/// before it is handled: an in-memory increment, no store round trip. When the statistics
/// cannot take the count (overload), the request is refused with 503 rather than served
/// uncounted, so every 2xx under `/api/` is counted.
pub(crate) async fn count_api_requests(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    if let (Some(path), Some(state)) = (
        UrlPath::parse(req.path()),
        req.app_data::<web::Data<AppState>>(),
    ) && let Err(error) = state.stats.record(&path)
    {
        let response = state.stats_error(error).error_response();
        return Ok(req.into_response(response));
    }
    Ok(next.call(req).await?.map_into_boxed_body())
}

/// Metrics and the closing log event of one request.
fn record(route: String, method: &'static str, status: u16, seconds: f64, span: &tracing::Span) {
    metrics::counter!(
        "tally_http_requests_total",
        "route" => route.clone(),
        "method" => method,
        "status" => status.to_string()
    )
    .increment(1);
    metrics::histogram!("tally_http_request_duration_seconds", "route" => route.clone(), "method" => method)
        .record(seconds);
    span.record("route", route.as_str());
    span.record("status", status);
    span.record("latency_ms", seconds * 1000.0);
    span.in_scope(|| match status {
        500.. => tracing::warn!("request failed"),
        400..500 => tracing::info!("request refused"),
        _ => tracing::debug!("request served"),
    });
}

/// The method as a metrics label: the standard methods by name, anything else `OTHER`
/// (methods are arbitrary tokens; a label per token would be unbounded).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_methods_share_one_label() {
        assert_eq!(method_label(&Method::POST), "POST");
        assert_eq!(method_label(&Method::from_bytes(b"BREW").unwrap()), "OTHER");
    }
}
