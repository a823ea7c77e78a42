//! [`AppState`]: what every handler shares, and the one way handlers call the store.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::PrometheusHandle;
use tally_counter::Counter;
use tally_stats::{SingleRun, StatsTracker};

use crate::error::ApiError;
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
    pub(crate) store_deadline: Duration,
    /// `Retry-After` for an overloaded counter: one batch interval, rounded up.
    pub(crate) overload_retry_after: u64,
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

    /// Runs a store operation for `key` on the app's runtime, bounded by the store
    /// deadline. Past the deadline the operation is cancelled and the answer is 503 naming
    /// the key's node (a reset may wait behind a batch to a node that is down).
    pub(crate) async fn store_call<T, F, Fut>(&self, key: &str, op: F) -> Result<T, ApiError>
    where
        F: FnOnce(Counter<AppStore>, String) -> Fut,
        Fut: Future<Output = tally_counter::Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        let mut task = self.runtime.spawn(op(self.counter.clone(), key.to_owned()));
        match tokio::time::timeout(self.store_deadline, &mut task).await {
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err(error))) => Err(self.counter_error(error)),
            Ok(Err(join_error)) => Err(ApiError::Internal(join_error.into())),
            Err(_) => {
                task.abort();
                Err(ApiError::StoreUnavailable {
                    node: self.counter.store().node_of(key).to_owned(),
                    retry_after: 1,
                    source: anyhow::anyhow!(
                        "no answer within {:?} (twice REDIS_TIMEOUT)",
                        self.store_deadline
                    ),
                })
            }
        }
    }
}
