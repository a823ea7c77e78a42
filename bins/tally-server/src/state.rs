//! [`AppState`]: what every handler shares, and the one way handlers call the store: each
//! call is bounded by [`within_deadline`], which answers 503 `store_unavailable` when the
//! store has not answered in time ([`AppState::store_call`] for the visit counter,
//! [`AppState::ranking`] for `/stats/`).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::PrometheusHandle;
use tally_counter::{Counter, Store as _};
use tally_stats::{Page, SingleRun, StatsTracker, UrlCount};

use crate::auth::AdminToken;
use crate::error::ApiError;
use crate::figures::Figures;
use crate::store::AppStore;

/// Shared by all workers behind one `web::Data` (an `Arc`): no locks, only atomics and
/// handles that are themselves shared.
#[derive(Debug)]
pub(crate) struct AppState {
    /// The visit counter.
    pub(crate) counter: Counter<AppStore>,
    /// The request-statistics tracker (a second counter, on the sorted-set layout).
    pub(crate) stats: StatsTracker<AppStore>,
    /// `POST /test/{n}/`: settings and the one-run-at-a-time slot.
    pub(crate) test: TestEndpoint,
    /// The runtime `run` was called on, where the counter's flushers and the Redis pools
    /// live. Store calls go there rather than running on an actix worker's own
    /// single-threaded runtime, so every Redis connection belongs to one runtime, which
    /// outlives the workers during shutdown.
    pub(crate) runtime: tokio::runtime::Handle,
    /// When the app started, for `/status`'s uptime.
    pub(crate) started: Instant,
    /// Requests received, all routes.
    pub(crate) requests: AtomicU64,
    /// `DEBUG`.
    pub(crate) debug: bool,
    /// The Prometheus handle when `ENABLE_METRICS` is on.
    pub(crate) metrics: Option<&'static PrometheusHandle>,
    /// Longest wait for one store read or reset before answering 503.
    pub(crate) store_deadline: Deadline,
    /// Longest wait for a `/stats/` ranking before answering 503.
    pub(crate) ranking_deadline: Deadline,
    /// `Retry-After` for an overloaded counter: one batch interval, rounded up.
    pub(crate) overload_retry_after: u64,
    /// `ADMIN_TOKEN`, which resets and `/test/{n}/` runs require when set (see
    /// [`crate::auth::Admin`]).
    pub(crate) admin_token: Option<AdminToken>,
    /// `DAILY_RETENTION_DAYS`: how far back a reset looks for a page's day counts.
    pub(crate) daily_retention_days: u32,
    /// The OpenAPI document `GET /openapi.json` serves, as JSON (built at start).
    pub(crate) openapi: actix_web::web::Bytes,
    /// The dashboard's per-second figures when `ENABLE_DASHBOARD` is on; nothing is
    /// counted for it otherwise.
    pub(crate) figures: Option<Figures>,
}

/// How long a store call may take before the answer is 503, and what sets that bound (for
/// the log line of a missed deadline).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Deadline {
    /// The bound.
    pub(crate) after: Duration,
    /// What sets it, such as `twice REDIS_TIMEOUT`.
    pub(crate) set_by: &'static str,
}

/// Settings of the `/test/{n}/` traffic generator.
#[derive(Debug)]
pub(crate) struct TestEndpoint {
    /// `TEST_ENDPOINT_ENABLED`.
    pub(crate) enabled: bool,
    /// `TEST_MAX_REQUESTS`.
    pub(crate) max_requests: u64,
    /// Where runs send their requests: this server's own listening address (loopback when
    /// it listens on every interface). Never anywhere else.
    pub(crate) target: std::net::SocketAddr,
    /// Admits one run at a time.
    pub(crate) runs: SingleRun,
    /// Keep-alive client for the runs (used on the app runtime only).
    pub(crate) client: reqwest::Client,
}

impl AppState {
    /// Counts one request.
    pub(crate) fn count_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `visits` visits for the dashboard, when it is on.
    pub(crate) fn visits_counted(&self, visits: u64) {
        if let Some(figures) = &self.figures {
            figures.record_visits(Instant::now(), visits);
        }
    }

    /// Requests received so far.
    pub(crate) fn total_requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// The API error for a request-statistics failure.
    pub(crate) fn stats_error(&self, error: tally_stats::Error) -> ApiError {
        crate::error::stats_error(error, self.overload_retry_after)
    }

    /// The API error for a counter failure.
    pub(crate) fn counter_error(&self, error: tally_counter::Error) -> ApiError {
        crate::error::counter_error(error, self.overload_retry_after)
    }

    /// Runs a store operation for `key` on the app's runtime, [within](within_deadline)
    /// the store deadline. Past the deadline the operation is cancelled and the answer is
    /// 503 naming the key's node (a reset may wait behind a batch to a node that is down).
    /// A client that goes away earlier does not cancel it: a reset it started still ends.
    pub(crate) async fn store_call<T, F, Fut>(&self, key: &str, op: F) -> Result<T, ApiError>
    where
        F: FnOnce(Counter<AppStore>, String) -> Fut,
        Fut: Future<Output = tally_counter::Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        let mut task = self.runtime.spawn(op(self.counter.clone(), key.to_owned()));
        let node = || self.counter.store().node_of(key).to_owned();
        match within_deadline(self.store_deadline, &mut task, node).await {
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err(error))) => Err(self.counter_error(error)),
            Ok(Err(join_error)) => Err(ApiError::Internal(join_error.into())),
            Err(missed) => {
                task.abort();
                Err(missed)
            }
        }
    }

    /// The `/stats/` ranking page `page`, [within](within_deadline) the ranking deadline.
    ///
    /// The tracker runs the merge on the app's runtime itself, bounds it and shares it with
    /// identical queries (see [`StatsTracker::ranking`]). Past the deadline this query
    /// leaves it, as a client that went away would, which cancels the merge once no other
    /// query waits on it, and the answer is 503 naming the nodes the ranking reads.
    pub(crate) async fn ranking(&self, page: Page) -> Result<Vec<UrlCount>, ApiError> {
        let nodes = || {
            let store = self.stats.counter().store();
            (0..store.shard_count())
                .map(|shard| store.shard_name(shard))
                .collect::<Vec<_>>()
                .join(" or ")
        };
        within_deadline(self.ranking_deadline, self.stats.ranking(page), nodes)
            .await?
            .map_err(|e| self.stats_error(e))
    }
}

/// Awaits `operation` for at most `deadline`. Past it, `operation` is dropped and the
/// answer is 503 `store_unavailable` naming `node()` (the node, or nodes, it was waiting
/// for) with `Retry-After: 1`, as for a node that did not answer.
pub(crate) async fn within_deadline<F: Future>(
    deadline: Deadline,
    operation: F,
    node: impl FnOnce() -> String,
) -> Result<F::Output, ApiError> {
    tokio::time::timeout(deadline.after, operation)
        .await
        .map_err(|_| ApiError::StoreUnavailable {
            node: node(),
            retry_after: 1,
            source: anyhow::anyhow!(
                "no answer within {:?} ({})",
                deadline.after,
                deadline.set_by
            ),
        })
}

#[cfg(test)]
mod tests {
    use actix_web::ResponseError as _;

    use super::*;

    // Real time, not `start_paused`: tally-server's tokio has no `test-util`. The deadlines
    // are short, and nothing here depends on how long a step takes past them.

    #[tokio::test]
    async fn an_operation_past_its_deadline_is_dropped_and_answers_503_naming_its_node() {
        let deadline = Deadline {
            after: Duration::from_millis(20),
            set_by: "twice REDIS_TIMEOUT",
        };
        let started = Instant::now();
        let error = within_deadline(deadline, std::future::pending::<()>(), || {
            "127.0.0.1:7070".to_owned()
        })
        .await
        .unwrap_err();

        assert!(started.elapsed() >= deadline.after);
        let response = error.error_response();
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers().get("retry-after").unwrap(), "1");
        assert_eq!(error.code(), "store_unavailable");
        assert_eq!(
            error.to_string(),
            "redis node 127.0.0.1:7070 is unavailable; retry later"
        );
        assert!(
            format!("{error:?}").contains("no answer within 20ms (twice REDIS_TIMEOUT)"),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn an_operation_within_its_deadline_passes_its_output_through() {
        let deadline = Deadline {
            after: Duration::from_secs(60),
            set_by: "a minute",
        };
        let answer = within_deadline(deadline, async { 7 }, || {
            unreachable!("no node is named for an answer in time")
        })
        .await;

        assert_eq!(answer.unwrap(), 7);
    }
}
