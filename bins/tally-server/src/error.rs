//! [`ApiError`]: every error the API answers, as the JSON body the README documents
//! (`{"status":"error","error":{"code","message"}}`).

use std::fmt;

use actix_web::http::{StatusCode, header};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::auth::Refusal;
use crate::page_id::PageIdError;

/// An error answered to an API client as
/// `{"status":"error","error":{"code":"...","message":"..."}}`.
///
/// 503s carry `Retry-After` (seconds), 405s carry `Allow`, 401s `WWW-Authenticate`. A 500
/// logs its cause chain and shows the client only `internal server error`. `Debug` prints
/// the whole cause chain.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// 400 `invalid_page_id`.
    #[error(transparent)]
    InvalidPageId(#[from] PageIdError),
    /// 400 `bad_request`: a path parameter, query string or body that actix could not
    /// extract (the message says what).
    #[error("{0}")]
    BadRequest(String),
    /// 404 `not_found`: no route has this path.
    #[error("no route for {method} {path}")]
    NotFound {
        /// The request method.
        method: String,
        /// The request path (shortened if long).
        path: String,
    },
    /// 405 `method_not_allowed`: the path exists, the method does not.
    #[error("method {method} is not allowed here; allowed: {allowed}")]
    MethodNotAllowed {
        /// The request method.
        method: String,
        /// The methods the route takes, as in `Allow`.
        allowed: &'static str,
    },
    /// 503 `overloaded`: too many distinct keys (pages, or paths for the request
    /// statistics) wait to be written; the request was not counted.
    #[error(
        "the counter is overloaded ({pending} keys are waiting to be written); the request was not counted, retry later"
    )]
    Overloaded {
        /// Pages waiting when the visit was refused.
        pending: usize,
        /// Seconds until a retry has a chance (`Retry-After`).
        retry_after: u64,
    },
    /// 503 `overloaded`: too many visitor ids wait to be added to the visitor sketches
    /// (`MAX_PENDING_VISITORS`); the visit was not counted.
    #[error(
        "the counter is overloaded ({pending} visitor ids are waiting to be written); the visit was not counted, retry later"
    )]
    OverloadedVisitors {
        /// Visitor ids waiting when the visit was refused.
        pending: usize,
        /// Seconds until a retry has a chance (`Retry-After`).
        retry_after: u64,
    },
    /// 503 `overloaded`: `/stats/` could not start a ranking within
    /// [`tally_stats::MERGE_WAIT`], as [`tally_stats::MAX_CONCURRENT_MERGES`] were running.
    #[error("too many /stats/ rankings are being computed ({merges} at most at once); retry later")]
    RankingBusy {
        /// [`tally_stats::MAX_CONCURRENT_MERGES`].
        merges: usize,
    },
    /// 503 `store_unavailable`: the Redis node owning the page did not answer.
    #[error("redis node {node} is unavailable; retry later")]
    StoreUnavailable {
        /// The node, `host:port`.
        node: String,
        /// Seconds until a retry has a chance (`Retry-After`).
        retry_after: u64,
        /// What went wrong (logged, not shown).
        #[source]
        source: anyhow::Error,
    },
    /// 400 `invalid_request_count`: `/test/{n}/` with `n` not a whole number in range.
    #[error("invalid request count {value:?}: expected a whole number from 1 to {max}")]
    InvalidRequestCount {
        /// `n` as received.
        value: String,
        /// `TEST_MAX_REQUESTS`.
        max: u64,
    },
    /// 400 `invalid_count`: a visit count (`?count=N`, or an entry of a bulk) that is not a
    /// whole number from 1 to 1,000,000.
    #[error(
        "invalid visit count {value:?}{}: expected a whole number from 1 to 1000000",
        page.as_ref().map(|page| format!(" for page {page:?}")).unwrap_or_default()
    )]
    InvalidCount {
        /// The count as received (cut to 64 characters), or what was wrong with it.
        value: String,
        /// The bulk entry's page, for a bulk.
        page: Option<String>,
    },
    /// 400 `invalid_days`: `?days=` of a daily read that is not a whole number from 1 to
    /// `max`.
    #[error("invalid days {value:?}: expected a whole number from 1 to {max}")]
    InvalidDays {
        /// The value as received (cut to 64 characters), or what was wrong with it.
        value: String,
        /// The most days one read answers.
        max: u32,
    },
    /// 400 `invalid_visitor_id`: an `X-Visitor-Id` header that is empty, longer than 128
    /// bytes, or given twice.
    #[error("invalid X-Visitor-Id header: {0}")]
    InvalidVisitorId(String),
    /// 500 `corrupt_sketch`: the store's visitor sketch of the page is not a HyperLogLog;
    /// the message names the store key, the node and what was found.
    #[error(
        "the stored visitor sketch is corrupt: {stored_as} on {node}: {found}; delete the key or reset the page with DELETE"
    )]
    CorruptSketch {
        /// Where the store keeps it (`tally:u:{page}`).
        stored_as: String,
        /// The node.
        node: String,
        /// What the store said of it.
        found: String,
    },
    /// 404 `daily_counts_off`: a daily read while `DAILY_RETENTION_DAYS=0`.
    #[error("daily counts are off on this server (DAILY_RETENTION_DAYS=0)")]
    DailyOff,
    /// 400 `invalid_body`: a request body that is JSON of the wrong shape, or a bulk whose
    /// entry breaks a rule (the message names the first such entry and the rule).
    #[error("{0}")]
    InvalidBody(String),
    /// 413 `payload_too_large`: a request body over the route's limit.
    #[error("the request body is over the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// 415 `unsupported_media_type`: a JSON route's body sent without
    /// `Content-Type: application/json`.
    #[error("the request body must be JSON, sent with Content-Type: application/json")]
    UnsupportedMediaType,
    /// 400 `invalid_query`: a bad `limit` or `offset` for `/stats/`.
    #[error(transparent)]
    InvalidQuery(tally_stats::Error),
    /// 401 `unauthorized`: an admin route (a reset, a `/test/{n}/` run) without the bearer
    /// token `ADMIN_TOKEN` sets, with `WWW-Authenticate: Bearer realm="tally"` (and
    /// `error="invalid_token"` when a token was presented but not accepted).
    #[error("{}", .0.message())]
    Unauthorized(Refusal),
    /// 429 `test_already_running`: one `/test/{n}/` run at a time.
    #[error("a test run is already going; one runs at a time, retry when it ends")]
    TestRunning,
    /// 503 `shutting_down`: the server is stopping and takes no more visits.
    #[error("the server is shutting down; retry on another instance")]
    ShuttingDown,
    /// 500 `corrupt_count`: the store's value for the page (or URL) is not a count; its
    /// visits are held until the value is repaired or the page is reset, and this one was
    /// not counted. The message names the store key, the node and what was found.
    #[error(
        "the stored count is corrupt: {stored_as} on {node} holds {found}; visits to it are held (this one was not counted) until the value is repaired or the page is reset with DELETE"
    )]
    CorruptCount {
        /// Where the store keeps it (`tally:v:{page}`, or `tally:urls` for a URL).
        stored_as: String,
        /// The node.
        node: String,
        /// What is there: its type, or its value cut to 64 bytes.
        found: String,
    },
    /// 500 `internal_error`: a bug or an unexpected failure; details are logged only.
    #[error("internal server error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    /// Every `code` an error body can carry, as the OpenAPI document lists them.
    pub(crate) const CODES: [&'static str; 21] = [
        "invalid_page_id",
        "bad_request",
        "not_found",
        "method_not_allowed",
        "overloaded",
        "store_unavailable",
        "invalid_request_count",
        "invalid_query",
        "invalid_count",
        "invalid_days",
        "invalid_visitor_id",
        "daily_counts_off",
        "invalid_body",
        "payload_too_large",
        "unsupported_media_type",
        "unauthorized",
        "test_already_running",
        "shutting_down",
        "corrupt_count",
        "corrupt_sketch",
        "internal_error",
    ];

    /// The stable `code` field of the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidPageId(_) => "invalid_page_id",
            Self::BadRequest(_) => "bad_request",
            Self::NotFound { .. } => "not_found",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::Overloaded { .. }
            | Self::OverloadedVisitors { .. }
            | Self::RankingBusy { .. } => "overloaded",
            Self::StoreUnavailable { .. } => "store_unavailable",
            Self::InvalidRequestCount { .. } => "invalid_request_count",
            Self::InvalidQuery(_) => "invalid_query",
            Self::InvalidCount { .. } => "invalid_count",
            Self::InvalidDays { .. } => "invalid_days",
            Self::InvalidVisitorId(_) => "invalid_visitor_id",
            Self::DailyOff => "daily_counts_off",
            Self::InvalidBody(_) => "invalid_body",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::Unauthorized(_) => "unauthorized",
            Self::TestRunning => "test_already_running",
            Self::ShuttingDown => "shutting_down",
            Self::CorruptCount { .. } => "corrupt_count",
            Self::CorruptSketch { .. } => "corrupt_sketch",
            Self::Internal(_) => "internal_error",
        }
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            Self::Overloaded { retry_after, .. }
            | Self::OverloadedVisitors { retry_after, .. }
            | Self::StoreUnavailable { retry_after, .. } => Some(*retry_after),
            Self::ShuttingDown | Self::TestRunning | Self::RankingBusy { .. } => Some(1),
            _ => None,
        }
    }
}

impl fmt::Debug for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")?;
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            write!(f, "\n  caused by: {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

/// Every error answer: `{"status":"error","error":{"code":"...","message":"..."}}`.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ErrorBody<'a> {
    /// Always `error`.
    #[schema(schema_with = crate::routes::openapi::error_status)]
    status: &'static str,
    error: ErrorDetail<'a>,
}

/// What went wrong.
#[derive(Serialize, utoipa::ToSchema)]
struct ErrorDetail<'a> {
    /// Stable, for programs: one of the codes each answer's description lists.
    #[schema(schema_with = crate::routes::openapi::error_code)]
    code: &'a str,
    /// For people: says what was wrong with the request, or what to do.
    message: &'a str,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::InvalidPageId(_)
            | Self::BadRequest(_)
            | Self::InvalidRequestCount { .. }
            | Self::InvalidQuery(_)
            | Self::InvalidCount { .. }
            | Self::InvalidDays { .. }
            | Self::InvalidVisitorId(_)
            | Self::InvalidBody(_) => StatusCode::BAD_REQUEST,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::TestRunning => StatusCode::TOO_MANY_REQUESTS,
            Self::NotFound { .. } | Self::DailyOff => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::Overloaded { .. }
            | Self::OverloadedVisitors { .. }
            | Self::RankingBusy { .. }
            | Self::StoreUnavailable { .. }
            | Self::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) | Self::CorruptCount { .. } | Self::CorruptSketch { .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            Self::Internal(_) => {
                tracing::error!(error.message = %self, error.cause_chain = ?self, "request failed");
            }
            Self::StoreUnavailable { .. } => {
                tracing::warn!(error.message = %self, error.cause_chain = ?self, "store unavailable");
            }
            _ => {}
        }
        let message = self.to_string();
        let mut response = HttpResponse::build(self.status_code());
        if let Some(seconds) = self.retry_after() {
            response.insert_header((header::RETRY_AFTER, seconds.to_string()));
        }
        if let Self::MethodNotAllowed { allowed, .. } = self {
            response.insert_header((header::ALLOW, *allowed));
        }
        if let Self::Unauthorized(refusal) = self {
            // RFC 6750: no error code for a request that presented no token.
            let challenge = match refusal {
                Refusal::Missing => "Bearer realm=\"tally\"",
                _ => "Bearer realm=\"tally\", error=\"invalid_token\"",
            };
            response.insert_header((header::WWW_AUTHENTICATE, challenge));
        }
        response.json(ErrorBody {
            status: "error",
            error: ErrorDetail {
                code: self.code(),
                message: &message,
            },
        })
    }
}

/// The API error for a failure of the request-statistics tracker.
pub(crate) fn stats_error(error: tally_stats::Error, overload_retry_after: u64) -> ApiError {
    match error {
        tally_stats::Error::Counter(error) => counter_error(error, overload_retry_after),
        tally_stats::Error::Busy { merges, .. } => ApiError::RankingBusy { merges },
        tally_stats::Error::ShardUnavailable { ref name, .. } => ApiError::StoreUnavailable {
            node: name.clone(),
            // A node marked down is probed again within a second.
            retry_after: 1,
            source: error.into(),
        },
        error @ tally_stats::Error::MergeStopped { .. } => ApiError::Internal(error.into()),
        other => ApiError::InvalidQuery(other),
    }
}

/// The API error for a failure of the counter library.
pub(crate) fn counter_error(error: tally_counter::Error, overload_retry_after: u64) -> ApiError {
    match error {
        tally_counter::Error::Overloaded { pending, .. } => ApiError::Overloaded {
            pending,
            retry_after: overload_retry_after,
        },
        tally_counter::Error::OverloadedBytes { .. } => ApiError::Overloaded {
            pending: 0,
            retry_after: overload_retry_after,
        },
        tally_counter::Error::OverloadedMembers { pending, .. } => ApiError::OverloadedVisitors {
            pending,
            retry_after: overload_retry_after,
        },
        tally_counter::Error::ShutDown => ApiError::ShuttingDown,
        tally_counter::Error::Corrupt {
            name,
            stored_as,
            found,
            ..
        } => ApiError::CorruptCount {
            stored_as,
            node: name,
            found,
        },
        tally_counter::Error::Store {
            ref name,
            ref source,
            ..
        } => match corrupt_sketch(&**source) {
            Some(corrupt) => corrupt,
            None => {
                let node = name.clone();
                ApiError::StoreUnavailable {
                    node,
                    // A node marked down is probed again within a second.
                    retry_after: 1,
                    source: error.into(),
                }
            }
        },
        other => ApiError::Internal(other.into()),
    }
}

/// The 500 `corrupt_sketch` answer for a store error saying a visitor sketch is not a
/// HyperLogLog.
fn corrupt_sketch(source: &(dyn std::error::Error + Send + Sync + 'static)) -> Option<ApiError> {
    match source.downcast_ref::<tally_redis::Error>()? {
        tally_redis::Error::CorruptSketch {
            node,
            stored_as,
            found,
        } => Some(ApiError::CorruptSketch {
            stored_as: stored_as.clone(),
            node: node.clone(),
            found: found.clone(),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use actix_web::body::to_bytes;

    use super::*;

    async fn body_of(error: ApiError) -> (StatusCode, serde_json::Value) {
        let response = error.error_response();
        let status = response.status();
        let bytes = to_bytes(response.into_body()).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[actix_web::test]
    async fn internal_errors_show_nothing_internal() {
        let error = ApiError::Internal(anyhow::anyhow!("connection string redis://:pw@x leaked"));
        let (status, body) = body_of(error).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            body,
            serde_json::json!({"status": "error", "error": {"code": "internal_error", "message": "internal server error"}})
        );
    }

    #[actix_web::test]
    async fn store_errors_name_the_node_and_set_retry_after() {
        let error = ApiError::StoreUnavailable {
            node: "redis1:6379".into(),
            retry_after: 1,
            source: anyhow::anyhow!("timeout"),
        };
        let response = error.error_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers().get(header::RETRY_AFTER).unwrap(), "1");
        let bytes = to_bytes(response.into_body()).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body["error"]["code"], "store_unavailable");
        assert_eq!(
            body["error"]["message"],
            "redis node redis1:6379 is unavailable; retry later"
        );
    }

    #[test]
    fn debug_prints_the_cause_chain() {
        let error = ApiError::Internal(anyhow::anyhow!("inner").context("outer"));
        assert_eq!(
            format!("{error:?}"),
            "internal server error\n  caused by: outer\n  caused by: inner"
        );
    }
}
