//! The visit-counter API under `API_PREFIX`: record, read and reset a page's visits, and
//! the counter's own figures.

use std::future::{Ready, ready};

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest, HttpResponse, web};
use serde::Serialize;

use crate::daily;
use crate::error::{ApiError, ErrorBody};
use crate::page_id::PageId;
use crate::routes::openapi::{self, DaysParam, PageIdParam, VisitCountParam};
use crate::routes::{NodeStatus, ParamError, iso_time, node_status, visitors};
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

/// A visit, or `count` of them, counted.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct VisitRecorded {
    #[schema(schema_with = openapi::success)]
    status: &'static str,
    /// `Visit recorded for page {page_id}`, or `{count} visits recorded for page {page_id}`.
    message: String,
    /// The page id, percent-decoded.
    page_id: String,
    /// When the server counted it: ISO 8601 in UTC, with microseconds.
    #[schema(format = DateTime)]
    timestamp: String,
    /// Visits counted.
    #[schema(minimum = 1, maximum = 1000000)]
    count: u64,
}

/// `POST {prefix}/counter/visit/{page_id}[?count=N]`: counts one visit, or `N` (in
/// memory; written within `BATCH_INTERVAL_SECONDS`).
#[utoipa::path(
    post,
    path = "/counter/visit/{page_id}",
    tag = "visit-counter",
    summary = "Record a visit, or `count` visits",
    description = "Counts the visits in memory at once; they are written to the store within \
        `BATCH_INTERVAL_SECONDS`, and are counted even while the page's Redis node is down. \
        Other query parameters are ignored. `POST {API_PREFIX}/counter/visit/` (an empty \
        id) answers 400 `invalid_page_id`.",
    params(
        ("page_id" = inline(PageIdParam), Path, description = "The page."),
        ("count" = inline(Option<VisitCountParam>), Query, description = "Visits to count: 1 to 1,000,000, 1 when absent."),
        ("X-Visitor-Id" = Option<String>, Header, description = "The visitor, for the page's unique visitors: 1 to 128 bytes, opaque (compared byte for byte)."),
    ),
    responses(
        (status = 200, description = "Counted.", body = VisitRecorded),
        (status = 400, description = "`invalid_page_id` (the page id breaks a rule), `invalid_count` (`count` is not a whole number from 1 to 1,000,000, or is given twice), `invalid_visitor_id` (`X-Visitor-Id` is empty, over 128 bytes or given twice) or `bad_request` (the query string cannot be read). Nothing counted.", body = ErrorBody),
        (status = 500, description = "`corrupt_count`: the page's stored count is not a count; its visits are held until it is repaired or reset, this one not counted.", body = ErrorBody),
        (status = 503, description = "`overloaded`: too many pages wait to be written (`MAX_PENDING_KEYS`, or the page's node's share of it), too many visitor ids (`MAX_PENDING_VISITORS`), or (under `/api/`) too many paths for the request statistics; `shutting_down`: the server is stopping. Nothing counted.", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds until a retry has a chance."))),
    ),
)]
#[tracing::instrument(name = "record_visit", level = "debug", skip(state, req), fields(page_id = %page_id))]
pub(crate) async fn record_visit(
    state: web::Data<AppState>,
    page_id: PageId,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let count = count_param(req.query_string())?;
    let visitor = visitors::visitor_id(&req)?;
    let page = page_id.as_str();
    let day = (state.daily_retention_days > 0).then(|| daily::day_key(page, daily::today()));
    // The visitor first: a refused add then refuses the visit before it is counted, and a
    // client's retry adds the id again harmlessly.
    if let Some(visitor) = visitor {
        match &day {
            Some(day) => state
                .counter
                .add_to_sketches(&[(page, visitor), (day, visitor)]),
            None => state.counter.add_to_sketches(&[(page, visitor)]),
        }
        .map_err(|e| state.counter_error(e))?;
    }
    match &day {
        Some(day) => state.counter.increment_all(&[(page, count), (day, count)]),
        None => state.counter.increment(page, count),
    }
    .map_err(|e| state.counter_error(e))?;
    state.visits_counted(count);
    let message = if count == 1 {
        format!("Visit recorded for page {page_id}")
    } else {
        format!("{count} visits recorded for page {page_id}")
    };
    Ok(HttpResponse::Ok().json(VisitRecorded {
        status: "success",
        message,
        page_id: page_id.to_string(),
        timestamp: iso_time(std::time::SystemTime::now()),
        count,
    }))
}

/// The `count` of a visit's query string: 1 when absent. Other parameters are ignored.
fn count_param(query: &str) -> Result<u64, ApiError> {
    match crate::routes::query_param(query, "count") {
        Ok(None) => Ok(1),
        Ok(Some(value)) => visit_count(&value, None),
        Err(ParamError::Unreadable(why)) => {
            Err(ApiError::BadRequest(format!("query string: {why}")))
        }
        Err(ParamError::Twice) => Err(ApiError::InvalidCount {
            value: "count given twice".to_owned(),
            page: None,
        }),
    }
}

/// `text` as a visit count: a whole number from 1 to [`MAX_VISIT_COUNT`], in decimal
/// digits only; `page` names the bulk entry it belongs to.
fn visit_count(text: &str, page: Option<&str>) -> Result<u64, ApiError> {
    let invalid = || ApiError::InvalidCount {
        value: shorten(text),
        page: page.map(shorten),
    };
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    match text.parse::<u64>() {
        Ok(n) if (1..=MAX_VISIT_COUNT).contains(&n) => Ok(n),
        _ => Err(invalid()),
    }
}

/// A bulk entry's count: a JSON number whose value is a whole number from 1 to
/// [`MAX_VISIT_COUNT`]. JSON does not tell integers from other numbers, so `3.0` and `3e0`
/// are the count 3, as for any JSON reader (and as JSON Schema's `integer` says);
/// `2.5`, `"3"` and `null` are not counts.
fn bulk_count(count: &serde_json::Value, page: &str) -> Result<u64, ApiError> {
    let whole = match count {
        serde_json::Value::Number(number) => number.as_u64().or_else(|| {
            number
                .as_f64()
                .filter(|n| n.fract() == 0.0 && (1.0..=MAX_VISIT_COUNT as f64).contains(n))
                .map(|n| n as u64)
        }),
        _ => None,
    };
    match whole {
        Some(n) => visit_count(&n.to_string(), Some(page)),
        None => Err(ApiError::InvalidCount {
            value: shorten(&count.to_string()),
            page: Some(shorten(page)),
        }),
    }
}

/// `text` cut to 64 characters for an error message.
fn shorten(text: &str) -> String {
    match text.char_indices().nth(64) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_owned(),
    }
}

/// Most visits one request counts for a page (`?count=`, or an entry of a bulk).
pub(crate) const MAX_VISIT_COUNT: u64 = 1_000_000;
/// Most pages in one bulk request.
pub(crate) const MAX_BULK_PAGES: usize = 1_000;
/// Largest bulk request body, in bytes.
pub(crate) const MAX_BULK_BYTES: usize = 1 << 20;

/// The body of `POST {prefix}/counter/visits`: `{"visits": {"page1": 3, ...}}`, its
/// entries in the order sent (so an error names the first bad one), duplicates kept for
/// the check.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(description = "`{\"visits\": {\"page1\": 3, \"page2\": 1}}`: the visits of each page.")]
pub(crate) struct BulkVisits {
    #[schema(schema_with = openapi::bulk_visits_schema)]
    visits: Entries,
}

/// A JSON object's members in order, values unparsed.
struct Entries(Vec<(String, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for Entries {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> serde::de::Visitor<'de> for Members {
            type Value = Entries;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object of page ids to visit counts")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Entries, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, serde_json::Value>()? {
                    if entries.len() > MAX_BULK_PAGES {
                        return Err(serde::de::Error::custom(format!(
                            "more than {MAX_BULK_PAGES} pages; send at most {MAX_BULK_PAGES} per request"
                        )));
                    }
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }
        deserializer.deserialize_map(Members)
    }
}

/// A bulk of visits, counted.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct BulkRecorded {
    #[schema(schema_with = openapi::success)]
    status: &'static str,
    /// The sum of the counts.
    #[schema(minimum = 1)]
    recorded: u64,
    /// Pages counted.
    #[schema(minimum = 1, maximum = 1000)]
    pages: usize,
}

/// `POST {prefix}/counter/visits`: counts the visits of up to [`MAX_BULK_PAGES`] pages,
/// all or none.
#[utoipa::path(
    post,
    path = "/counter/visits",
    tag = "visit-counter",
    summary = "Record visits of many pages, all or none",
    description = "Counts the visits of 1 to 1,000 pages at once: every page is counted, or \
        none is. The body (at most 1 MiB, `Content-Type: application/json`) is checked whole \
        first; an error names its first bad entry.",
    request_body(content = BulkVisits, content_type = "application/json"),
    responses(
        (status = 200, description = "Every page counted.", body = BulkRecorded),
        (status = 400, description = "`bad_request` (the body is not JSON), `invalid_body` (JSON of another shape, 0 or over 1,000 pages, a bad page id, a page listed twice) or `invalid_count` (a count not from 1 to 1,000,000). Nothing counted.", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: the body is over 1 MiB. Nothing counted.", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: the body was not sent as `application/json`. Nothing counted.", body = ErrorBody),
        (status = 500, description = "`corrupt_count`: a page's stored count is not a count. Nothing counted.", body = ErrorBody),
        (status = 503, description = "`overloaded`: the pending bounds refuse a page not already waiting (or, under `/api/`, the request statistics have no room); `shutting_down`: the server is stopping. Nothing counted.", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds until a retry has a chance."))),
    ),
)]
#[tracing::instrument(name = "record_visits", level = "debug", skip_all)]
pub(crate) async fn record_visits(
    state: web::Data<AppState>,
    body: web::Json<BulkVisits>,
) -> Result<HttpResponse, ApiError> {
    let increments = bulk_increments(&body.visits.0)?;
    let today = daily::today();
    let days: Vec<String> = increments
        .iter()
        .filter(|_| state.daily_retention_days > 0)
        .map(|(page, _)| daily::day_key(page, today))
        .collect();
    let mut all = increments.clone();
    all.extend(
        days.iter()
            .zip(&increments)
            .map(|(day, (_, n))| (day.as_str(), *n)),
    );
    state
        .counter
        .increment_all(&all)
        .map_err(|e| state.counter_error(e))?;
    let recorded = increments.iter().map(|(_, n)| n).sum();
    state.visits_counted(recorded);
    Ok(HttpResponse::Ok().json(BulkRecorded {
        status: "success",
        recorded,
        pages: increments.len(),
    }))
}

/// The increments of a bulk's entries, or the error of the first bad one.
fn bulk_increments(entries: &[(String, serde_json::Value)]) -> Result<Vec<(&str, u64)>, ApiError> {
    if entries.is_empty() || entries.len() > MAX_BULK_PAGES {
        return Err(ApiError::InvalidBody(format!(
            "\"visits\" has {} pages; send 1 to {MAX_BULK_PAGES}",
            entries.len()
        )));
    }
    let mut seen = std::collections::HashSet::with_capacity(entries.len());
    let mut increments = Vec::with_capacity(entries.len());
    for (index, (page, count)) in entries.iter().enumerate() {
        PageId::parse(page.as_str()).map_err(|error| {
            ApiError::InvalidBody(format!(
                "\"visits\" entry {} ({:?}): {error}",
                index + 1,
                shorten(page)
            ))
        })?;
        if !seen.insert(page.as_str()) {
            return Err(ApiError::InvalidBody(format!(
                "\"visits\" entry {} ({:?}): the page is listed twice",
                index + 1,
                shorten(page)
            )));
        }
        increments.push((page.as_str(), bulk_count(count, page)?));
    }
    Ok(increments)
}

/// A page's count.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Visits {
    /// The stored count plus this server's visits not written yet.
    #[schema(minimum = 0)]
    visits: u64,
    /// `in_memory` when the stored part came from the read cache (always, on the embedded
    /// and memory stores), `redis_{port}` when it was read from the page's node.
    #[schema(pattern = "^(in_memory|redis|redis_[0-9]+)$")]
    served_via: String,
    /// The page's node, `host:port` (`embedded` or `memory` for those stores).
    node: String,
}

/// `GET {prefix}/counter/visits/{page_id}`: the page's count, including this instance's
/// visits not written yet.
#[utoipa::path(
    get,
    path = "/counter/visits/{page_id}",
    tag = "visit-counter",
    summary = "Read a page's count",
    description = "The stored count plus this server's visits not written yet, so a client \
        reads its own visits. `GET {API_PREFIX}/counter/visits/` (an empty id) answers 400 \
        `invalid_page_id`.",
    params(("page_id" = inline(PageIdParam), Path, description = "The page.")),
    responses(
        (status = 200, description = "The count.", body = Visits),
        (status = 400, description = "`invalid_page_id`: the page id breaks a rule.", body = ErrorBody),
        (status = 500, description = "`corrupt_count`: the page's stored count is not a count.", body = ErrorBody),
        (status = 503, description = "`store_unavailable`: the page is not cached and its node did not answer in time; `shutting_down`; `overloaded` (under `/api/`: the request statistics have no room).", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds until a retry has a chance."))),
    ),
)]
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

/// A page's count reset.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct CounterReset {
    #[schema(schema_with = openapi::success)]
    status: &'static str,
    /// `Counter reset for page {page_id}`.
    message: String,
    /// The page id, percent-decoded.
    page_id: String,
}

/// `DELETE {prefix}/counter/visits/{page_id}`: sets the page's count, and its daily
/// counts, to zero on its node.
#[utoipa::path(
    delete,
    path = "/counter/visits/{page_id}",
    tag = "visit-counter",
    summary = "Reset a page's count and its daily counts",
    description = "Sets the page's count and its daily counts to zero, ordered with the \
        page's batches, and drops this server's unwritten visits of the page. When the \
        server's `ADMIN_TOKEN` is set it needs `Authorization: Bearer <ADMIN_TOKEN>`, checked \
        before anything else (without `ADMIN_TOKEN` it is open). `DELETE \
        {API_PREFIX}/counter/visits/` (an empty id) answers 400 `invalid_page_id`.",
    params(("page_id" = inline(PageIdParam), Path, description = "The page.")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Reset.", body = CounterReset),
        (status = 400, description = "`invalid_page_id`: the page id breaks a rule.", body = ErrorBody),
        (status = 401, description = "`unauthorized`: `ADMIN_TOKEN` is set and the request did not carry it as a bearer token. Nothing reset.", body = ErrorBody,
            headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"tally\"`, with `error=\"invalid_token\"` when a token was presented but not accepted."))),
        (status = 503, description = "`store_unavailable`: the page's node did not answer in time; `shutting_down`; `overloaded` (under `/api/`: the request statistics have no room).", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds until a retry has a chance."))),
    ),
)]
#[tracing::instrument(name = "reset_visits", level = "debug", skip(state), fields(page_id = %page_id))]
pub(crate) async fn reset_visits(
    _admin: crate::auth::Admin,
    state: web::Data<AppState>,
    page_id: PageId,
) -> Result<HttpResponse, ApiError> {
    let retention = state.daily_retention_days;
    state
        .store_call(page_id.as_str(), move |counter, key| async move {
            counter.reset(&key).await?;
            if retention == 0 {
                return Ok(());
            }
            // Its days too: those of the retention that count anything (read in one call
            // on the page's node), reset one by one.
            let days = daily::day_keys(
                &key,
                &daily::days_ending(daily::today(), retention.saturating_add(1)),
            );
            let refs: Vec<&str> = days.iter().map(String::as_str).collect();
            let counts = counter.get_many(&refs).await?;
            for (day, count) in refs.into_iter().zip(counts) {
                if count > 0 {
                    counter.reset(day).await?;
                }
            }
            Ok(())
        })
        .await?;
    Ok(HttpResponse::Ok().json(CounterReset {
        status: "success",
        message: format!("Counter reset for page {page_id}"),
        page_id: page_id.to_string(),
    }))
}

/// A page's visits per UTC day.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct DailyVisits {
    /// The page id, percent-decoded.
    page_id: String,
    /// The days asked for, oldest first, today last; days without visits count 0.
    #[schema(min_items = 1, max_items = 366)]
    days: Vec<DayVisits>,
}

/// One UTC day's visits of a page.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct DayVisits {
    /// The day, `YYYY-MM-DD` in UTC.
    #[schema(format = Date)]
    date: String,
    /// Visits received that day (today's include this server's unwritten visits).
    #[schema(minimum = 0)]
    visits: u64,
}

/// `GET {prefix}/counter/visits/{page_id}/daily[?days=N]`: the page's visits per UTC day,
/// the last `N` days (default 30, at most 366) oldest first, today's including this
/// instance's visits not written yet; days without visits count 0.
#[utoipa::path(
    get,
    path = "/counter/visits/{page_id}/daily",
    tag = "visit-counter",
    summary = "Read a page's visits per UTC day",
    description = "The last `days` days, oldest first, today last; days without visits are \
        there with 0, and today's count includes this server's unwritten visits. Days are \
        kept for `DAILY_RETENTION_DAYS` (400 by default; 0 turns daily counts off).",
    params(
        ("page_id" = inline(PageIdParam), Path, description = "The page."),
        ("days" = inline(Option<DaysParam>), Query, description = "Days to answer: 1 to 366, 30 when absent."),
    ),
    responses(
        (status = 200, description = "The days.", body = DailyVisits),
        (status = 400, description = "`invalid_page_id` (the page id breaks a rule) or `invalid_days` (`days` is not a whole number from 1 to 366, or is given twice).", body = ErrorBody),
        (status = 404, description = "`daily_counts_off`: the server runs with `DAILY_RETENTION_DAYS=0`.", body = ErrorBody),
        (status = 500, description = "`corrupt_count`: a day's stored count is not a count.", body = ErrorBody),
        (status = 503, description = "`store_unavailable`: the page's node did not answer in time; `shutting_down`; `overloaded` (under `/api/`: the request statistics have no room).", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds until a retry has a chance."))),
    ),
)]
#[tracing::instrument(name = "get_daily", level = "debug", skip_all)]
pub(crate) async fn get_daily(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    // The page id is the segment before `/daily`, decoded as the other routes decode it.
    let path = req.uri().path();
    let segment = path
        .strip_suffix("/daily")
        .and_then(|rest| rest.rsplit('/').next())
        .unwrap_or_default();
    let page_id = PageId::from_path_segment(segment)?;
    if state.daily_retention_days == 0 {
        return Err(ApiError::DailyOff);
    }
    let days = daily::days_param(req.query_string()).map_err(|value| ApiError::InvalidDays {
        value,
        max: daily::MAX_DAYS,
    })?;
    let dates = daily::days_ending(daily::today(), days);
    let keys = daily::day_keys(page_id.as_str(), &dates);
    let counts = state
        .store_call(page_id.as_str(), move |counter, _| async move {
            let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
            counter.get_many(&refs).await
        })
        .await?;
    Ok(HttpResponse::Ok().json(DailyVisits {
        page_id: page_id.to_string(),
        days: dates
            .iter()
            .zip(counts)
            .map(|(day, visits)| DayVisits {
                date: day.format("%Y-%m-%d").to_string(),
                visits,
            })
            .collect(),
    }))
}

/// The counter's figures.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct CounterMetrics {
    /// As `/status` says it.
    #[schema(schema_with = openapi::health_state)]
    status: &'static str,
    metrics: CacheFigures,
    /// `redis://host:port` of each node → whether it is up; empty on the embedded and
    /// memory stores.
    redis_nodes: std::collections::BTreeMap<String, bool>,
    /// When the last batch was written (ISO 8601, UTC); null until the first.
    #[schema(format = DateTime)]
    last_batch_write: Option<String>,
}

/// The read cache and the write buffer.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct CacheFigures {
    cache_hits: u64,
    cache_misses: u64,
    /// Pages in the read cache.
    cache_size: u64,
    /// Keys with visits not written yet: pages, and their days while daily counts are on.
    write_buffer_size: usize,
}

/// `GET {prefix}/counter/metrics`: cache and buffer figures, node health, last write.
#[utoipa::path(
    get,
    path = "/counter/metrics",
    tag = "visit-counter",
    summary = "Read the counter's figures",
    description = "Read-cache and write-buffer figures, node health as of the last check, \
        and the time of the last batch written.",
    responses(
        (status = 200, description = "The figures.", body = CounterMetrics),
        (status = 503, description = "Under `/api/` only: `overloaded` (the request statistics have no room) or `shutting_down`.", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds until a retry has a chance."))),
    ),
)]
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_bulk_count_is_any_json_number_of_whole_value_in_range() {
        for (count, expected) in [(json!(3), 3), (json!(3.0), 3), (json!(1e6), 1_000_000)] {
            assert_eq!(bulk_count(&count, "p").ok(), Some(expected), "{count}");
        }
        for count in [
            json!(0),
            json!(0.0),
            json!(-1),
            json!(2.5),
            json!(1000001),
            json!(1e300),
            json!("3"),
            json!(null),
            json!([1]),
        ] {
            let error = bulk_count(&count, "p").expect_err("not a count");
            assert_eq!(error.code(), "invalid_count", "{count}");
        }
    }
}
