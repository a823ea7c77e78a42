//! Unique visitors: the `X-Visitor-Id` of a visit, and `GET {prefix}/counter/visitors/{page_id}`.
//!
//! A visit that carries a visitor id adds it to the page's sketch and to the sketch of the
//! page's UTC day (while daily counts are on): HyperLogLogs kept by the store on the page's
//! node (Redis `PFADD`/`PFCOUNT`; the embedded and memory stores keep the same sketch in
//! process, see `tally_counter::hll`). The ids wait in memory like visits and go to the
//! store with the page's next batch round, one `PFADD` per page (and day) with all its new
//! ids. Adding an id twice changes no sketch, so a round sent again after a lost reply
//! changes no estimate.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Serialize;

use crate::daily;
use crate::error::{ApiError, ErrorBody};
use crate::page_id::PageId;
use crate::routes::openapi::{self, DaysParam, PageIdParam};
use crate::state::AppState;

/// The header naming a visit's visitor.
pub(crate) const VISITOR_HEADER: &str = "x-visitor-id";
/// Longest visitor id, in bytes.
pub(crate) const MAX_VISITOR_ID_BYTES: usize = 128;
/// What `method` says of an estimate.
pub(crate) const METHOD: &str = "hyperloglog";

/// The visit's visitor id: the `X-Visitor-Id` header's bytes (opaque), `None` without it.
///
/// # Errors
/// 400 `invalid_visitor_id` for an empty or longer than [`MAX_VISITOR_ID_BYTES`] value,
/// or the header given twice.
pub(crate) fn visitor_id(req: &HttpRequest) -> Result<Option<&[u8]>, ApiError> {
    let mut values = req.headers().get_all(VISITOR_HEADER);
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::InvalidVisitorId(
            "given more than once".to_owned(),
        ));
    }
    let id = value.as_bytes();
    if id.is_empty() {
        return Err(ApiError::InvalidVisitorId(
            "empty; expected 1 to 128 bytes".to_owned(),
        ));
    }
    if id.len() > MAX_VISITOR_ID_BYTES {
        return Err(ApiError::InvalidVisitorId(format!(
            "{} bytes; expected 1 to {MAX_VISITOR_ID_BYTES}",
            id.len()
        )));
    }
    Ok(Some(id))
}

/// A page's unique visitors, estimated.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct UniqueVisitors {
    /// The page id, percent-decoded.
    page_id: String,
    /// Distinct visitor ids the page's visits carried, estimated (this server's ids not
    /// written yet included).
    #[schema(minimum = 0)]
    unique_visitors: u64,
    /// How it is estimated: `hyperloglog`.
    #[schema(schema_with = openapi::estimate_method)]
    method: &'static str,
    /// The estimate's relative standard error: 0.0081 (about 68% of estimates are within
    /// 0.81% of the truth, 99.7% within 2.4%).
    #[schema(schema_with = openapi::standard_error)]
    standard_error: f64,
}

/// A page's unique visitors per UTC day, estimated.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct DailyUniqueVisitors {
    /// The page id, percent-decoded.
    page_id: String,
    /// The days asked for, oldest first, today last; days without visitors count 0.
    #[schema(min_items = 1, max_items = 366)]
    days: Vec<DayVisitors>,
    /// How it is estimated: `hyperloglog`.
    #[schema(schema_with = openapi::estimate_method)]
    method: &'static str,
    /// Each estimate's relative standard error: 0.0081.
    #[schema(schema_with = openapi::standard_error)]
    standard_error: f64,
}

/// One UTC day's unique visitors of a page.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct DayVisitors {
    /// The day, `YYYY-MM-DD` in UTC.
    #[schema(format = Date)]
    date: String,
    /// Distinct visitor ids of that day's visits, estimated.
    #[schema(minimum = 0)]
    unique_visitors: u64,
}

/// `GET {prefix}/counter/visitors/{page_id}[?days=N]`: the page's unique visitors, in all
/// or (with `days`) per UTC day.
#[utoipa::path(
    get,
    path = "/counter/visitors/{page_id}",
    tag = "visit-counter",
    summary = "Read a page's unique visitors",
    description = "Distinct `X-Visitor-Id` values of the page's visits, estimated with \
        HyperLogLog (relative standard error 0.81%); this server's ids not written yet are \
        written first, so they are included. Without `days`, in all; with `days`, per UTC \
        day for the last `days` days, oldest first, like the daily counts (kept as long as \
        they are, `DAILY_RETENTION_DAYS`). A visit without `X-Visitor-Id` counts as a visit \
        and adds no visitor.",
    params(
        ("page_id" = inline(PageIdParam), Path, description = "The page."),
        ("days" = inline(Option<DaysParam>), Query, description = "Per UTC day, the last `days` days: 1 to 366; in all when absent."),
    ),
    responses(
        (status = 200, description = "The estimate (without `days`: `UniqueVisitors`; with it: `DailyUniqueVisitors`).", body = VisitorsAnswer),
        (status = 400, description = "`invalid_page_id` (the page id breaks a rule) or `invalid_days` (`days` is not a whole number from 1 to 366, or is given twice).", body = ErrorBody),
        (status = 404, description = "`daily_counts_off`: `days` was given and the server runs with `DAILY_RETENTION_DAYS=0`.", body = ErrorBody),
        (status = 500, description = "`corrupt_sketch`: the page's stored sketch is not a HyperLogLog.", body = ErrorBody),
        (status = 503, description = "`store_unavailable`: the page's node did not answer in time; `shutting_down`; `overloaded` (under `/api/`: the request statistics have no room).", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds until a retry has a chance."))),
    ),
)]
#[tracing::instrument(name = "get_visitors", level = "debug", skip(state, req), fields(page_id = %page_id))]
pub(crate) async fn get_visitors(
    state: web::Data<AppState>,
    page_id: PageId,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let days = daily::days_given(req.query_string()).map_err(|value| ApiError::InvalidDays {
        value,
        max: daily::MAX_DAYS,
    })?;
    let Some(days) = days else {
        let estimates = state
            .store_call(page_id.as_str(), |counter, key| async move {
                counter.estimate_many(&[key.as_str()]).await
            })
            .await?;
        return Ok(
            HttpResponse::Ok().json(VisitorsAnswer::Total(UniqueVisitors {
                page_id: page_id.to_string(),
                unique_visitors: estimates.first().copied().unwrap_or(0),
                method: METHOD,
                standard_error: tally_counter::hll::STANDARD_ERROR,
            })),
        );
    };
    if state.daily_retention_days == 0 {
        return Err(ApiError::DailyOff);
    }
    let dates = daily::days_ending(daily::today(), days);
    let keys = daily::day_keys(page_id.as_str(), &dates);
    let estimates = state
        .store_call(page_id.as_str(), move |counter, _| async move {
            let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
            counter.estimate_many(&refs).await
        })
        .await?;
    Ok(
        HttpResponse::Ok().json(VisitorsAnswer::Daily(DailyUniqueVisitors {
            page_id: page_id.to_string(),
            days: dates
                .iter()
                .zip(estimates)
                .map(|(day, unique_visitors)| DayVisitors {
                    date: day.format("%Y-%m-%d").to_string(),
                    unique_visitors,
                })
                .collect(),
            method: METHOD,
            standard_error: tally_counter::hll::STANDARD_ERROR,
        })),
    )
}

/// The two answers of [`get_visitors`].
#[derive(Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub(crate) enum VisitorsAnswer {
    /// Without `days`.
    Total(UniqueVisitors),
    /// With `days`.
    Daily(DailyUniqueVisitors),
}
