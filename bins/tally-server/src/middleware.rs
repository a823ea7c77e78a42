//! The two middlewares around the routes. [`observe`], the outer one, wraps every request:
//! the request count, the HTTP metrics, the `X-Process-Time` header, and a log event for
//! every refused or failed request. [`count_api_requests`], inside it, counts each request
//! under `/api/` in the request statistics before a handler sees it.
//!
//! `observe` runs on every request, so it is kept cheap (the load harness measures it: `GET
//! /health` against the floor handler): the route label is the resource's own
//! [`RouteLabel`] rather than a pattern rebuilt per request, metric handles are looked up
//! once per worker thread and label set, the per-request span is at `debug` (created only
//! when debug logging is on), and the header is written without float formatting.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::{Method, Uri};
use actix_web::middleware::Next;
use actix_web::{ResponseError as _, web};
use tally_stats::UrlPath;
use tracing::Instrument as _;

use crate::figures::RouteClass;
use crate::state::AppState;

/// Route label of requests no route matched (404s): one label, whatever the path, so
/// scanners cannot grow the metrics without bound.
const UNMATCHED: &str = "unmatched";

/// The metrics label of a route: its pattern as registered (`/api/v1/counter/visit/{page_id}`),
/// never the raw path, since page ids would make the label set unbounded, and its class
/// for the dashboard's chart. Set as the resource's app data by [`crate::routes`], so the
/// middleware reads both after routing at the cost of a pointer look-up.
#[derive(Clone, Debug)]
pub(crate) struct RouteLabel(pub(crate) Arc<str>, pub(crate) RouteClass);

/// Wraps the whole app (the 404 default service included).
pub(crate) async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let started = Instant::now();
    let metrics_on = match req.app_data::<web::Data<AppState>>() {
        Some(state) => {
            state.count_request();
            state.metrics.is_some()
        }
        None => false,
    };
    let method = method_label(req.method());
    // Cheap clones (shared bytes), for the log event after the request is gone.
    let uri = req.uri().clone();
    let span = tracing::debug_span!("http_request", method = %req.method(), path = %req.path());
    let result = next.call(req).instrument(span).await;
    let elapsed = started.elapsed();
    let mut response = match result {
        Ok(response) => response.map_into_boxed_body(),
        Err(error) => {
            // Handlers' errors are responses by now; an `Err` here comes from actix itself,
            // which turns it into a response after us. Count it; there is no response
            // (nor request: it cannot be cloned before routing) to put a header on.
            Outcome {
                route: UNMATCHED,
                method,
                status: error.as_response_error().status_code().as_u16(),
                elapsed,
            }
            .report(&uri, metrics_on);
            return Err(error);
        }
    };
    if let Some(value) = process_time(elapsed) {
        response
            .headers_mut()
            .insert(HeaderName::from_static("x-process-time"), value);
    }
    let label = response.request().app_data::<RouteLabel>();
    let status = response.status().as_u16();
    if let Some(figures) = response
        .request()
        .app_data::<web::Data<AppState>>()
        .and_then(|state| state.figures.as_ref())
    {
        let class = match label.map_or(RouteClass::Other, |label| label.1) {
            RouteClass::Count if method != "GET" => RouteClass::Other,
            class => class,
        };
        figures.record_request(started, class, status);
    }
    Outcome {
        route: label.map_or(UNMATCHED, |label| &*label.0),
        method,
        status,
        elapsed,
    }
    .report(&uri, metrics_on);
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

/// `X-Process-Time`: seconds with microseconds (`0.000412`), formatted without floats or
/// a heap allocation.
fn process_time(elapsed: Duration) -> Option<HeaderValue> {
    let micros = elapsed.as_micros();
    let mut buffer = [0u8; 48];
    let mut cursor = std::io::Cursor::new(&mut buffer[..]);
    write!(cursor, "{}.{:06}", micros / 1_000_000, micros % 1_000_000).ok()?;
    let written = usize::try_from(cursor.position()).ok()?;
    HeaderValue::from_bytes(&buffer[..written]).ok()
}

/// How one request ended, for its metrics and log event.
struct Outcome<'a> {
    route: &'a str,
    method: &'static str,
    status: u16,
    elapsed: Duration,
}

/// Per worker thread: the metric handles of each (route, method, status) seen so far.
/// Registering a handle hashes and compares its labels in the recorder's registry (and
/// allocates them); a handle is a shared atomic, so it is looked up once per label set
/// and thread. Bounded: routes are patterns, methods and statuses few.
type HandleCache =
    HashMap<Box<str>, HashMap<(&'static str, u16), (metrics::Counter, metrics::Histogram)>>;

thread_local! {
    static HANDLES: RefCell<HandleCache> = RefCell::new(HashMap::new());
}

impl Outcome<'_> {
    /// The log event, and the metrics when the server records them.
    fn report(&self, uri: &Uri, metrics_on: bool) {
        self.log(uri);
        if metrics_on {
            self.record_metrics();
        }
    }

    /// `tally_http_requests_total` and `tally_http_request_duration_seconds`.
    fn record_metrics(&self) {
        let seconds = self.elapsed.as_secs_f64();
        HANDLES.with_borrow_mut(|cache| {
            let by_route = match cache.get_mut(self.route) {
                Some(by_route) => by_route,
                None => cache.entry(self.route.into()).or_default(),
            };
            let (requests, duration) =
                by_route
                    .entry((self.method, self.status))
                    .or_insert_with(|| {
                        (
                            metrics::counter!(
                                "tally_http_requests_total",
                                "route" => self.route.to_owned(),
                                "method" => self.method,
                                "status" => self.status.to_string()
                            ),
                            metrics::histogram!(
                                "tally_http_request_duration_seconds",
                                "route" => self.route.to_owned(),
                                "method" => self.method
                            ),
                        )
                    });
            requests.increment(1);
            duration.record(seconds);
        });
    }

    /// The closing log event: `warn` for a 5xx, `info` for a 4xx, `debug` otherwise, each
    /// with the request's method, path, route, status and latency.
    fn log(&self, uri: &Uri) {
        let (method, path, route, status) = (self.method, uri.path(), self.route, self.status);
        let latency_ms = self.elapsed.as_secs_f64() * 1000.0;
        match status {
            500.. => {
                tracing::warn!(method, path, route, status, latency_ms, "request failed");
            }
            400..500 => {
                tracing::info!(method, path, route, status, latency_ms, "request refused");
            }
            _ => tracing::debug!(method, path, route, status, latency_ms, "request served"),
        }
    }
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
    use std::sync::{Arc, Mutex};

    use actix_web::{App, HttpResponse, middleware::from_fn, test as actix_test};

    use super::*;

    /// Log lines written by the `fmt` subscriber, kept for the test to read.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[actix_web::test]
    async fn refused_requests_are_logged_at_info_with_their_outcome_and_served_ones_are_not() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let app = actix_test::init_service(
            App::new()
                .service(
                    web::resource("/ok/{id}")
                        .app_data(RouteLabel("/ok/{id}".into(), RouteClass::Other))
                        .route(web::get().to(HttpResponse::Ok)),
                )
                .wrap(from_fn(observe)),
        )
        .await;

        for uri in ["/ok/1", "/missing?q=1"] {
            let response = actix_test::call_service(
                &app,
                actix_test::TestRequest::get().uri(uri).to_request(),
            )
            .await;
            assert!(response.headers().contains_key("x-process-time"), "{uri}");
        }

        let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = logs.lines().collect();
        assert_eq!(lines.len(), 1, "one line, for the 404 only: {logs}");
        for part in [
            "INFO",
            "request refused",
            "method=\"GET\"",
            "path=\"/missing\"",
            "route=\"unmatched\"",
            "status=404",
            "latency_ms=",
        ] {
            assert!(lines[0].contains(part), "no {part} in {logs}");
        }
    }

    #[test]
    fn process_time_is_seconds_with_six_decimals() {
        let value = |micros| process_time(Duration::from_micros(micros)).unwrap();
        assert_eq!(value(0), "0.000000");
        assert_eq!(value(412), "0.000412");
        assert_eq!(value(12_345_678), "12.345678");
    }

    #[test]
    fn unknown_methods_share_one_label() {
        assert_eq!(method_label(&Method::POST), "POST");
        assert_eq!(method_label(&Method::from_bytes(b"BREW").unwrap()), "OTHER");
    }
}
