//! Start-up and shutdown. [`run`] builds the app in named steps: the stores
//! ([`build_stores`]), the counters, the listening socket ([`bind`]), the loopback target
//! of `/test/{n}/` ([`test_target`]), the state every handler shares ([`build_state`]) and
//! the HTTP server on the socket ([`http_server`]). [`App::run_until_stopped`] serves until
//! told to stop, then drains the requests in flight and flushes both counters, logging
//! each flush with [`log_flush`].

use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use actix_web::dev::Server;
use actix_web::{HttpServer, middleware, web};
use anyhow::Context as _;
use metrics_exporter_prometheus::PrometheusHandle;
use tally_counter::{Counter, MemoryStore, ShutdownReport};
use tally_embedded::EmbeddedStore;
use tally_redis::{ClusterStore, Layout, RedisStore};
use tally_stats::{SingleRun, StatsTracker};
use tokio::task::JoinHandle;

use crate::auth::AdminToken;
use crate::config::{Config, ConfigError, StoreKind};
use crate::state::{AppState, Deadline, TestEndpoint};
use crate::store::AppStore;

/// A bound, ready server: connections are accepted as soon as it runs.
///
/// Made by [`run`]; consumed by [`App::run_until_stopped`].
pub struct App {
    server: Server,
    address: SocketAddr,
    counter: Counter<AppStore>,
    stats: StatsTracker<AppStore>,
    shutdown_timeout: Duration,
    drain_timeout: Duration,
    summary: JoinHandle<()>,
    /// Removes day counts past `DAILY_RETENTION_DAYS` (embedded and memory stores).
    daily_sweep: JoinHandle<()>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("address", &self.address)
            .field("counter", &self.counter)
            .finish_non_exhaustive()
    }
}

/// Builds the app from `config` and binds its socket; call [`App::run_until_stopped`] to
/// serve. Must be called inside a tokio runtime (the counter's flushers and the Redis
/// health check run on it).
///
/// Without `REDIS_NODES` it counts in the embedded store in `DATA_DIR` (or, with
/// `STORE=memory`, in memory, with a warning that counts are lost at exit). With `REDIS_NODES` it does not fail when nodes are down: they are reported by
/// `/status` and `/health`, and their pages answer 503 until they are back.
///
/// # Errors
///
/// An invalid config (built in code; [`Config::from_env`] already checks), a Redis node
/// list that cannot form a ring, a metrics recorder installed by someone else, or a socket
/// that cannot be bound. Configuration problems, including two `REDIS_NODES` entries that
/// reach the same Redis database (found only by asking the nodes) and a `DATA_DIR` the
/// embedded store cannot use (not writable, not a tally database, in use by another
/// process), are a [`ConfigError`]
/// inside the `anyhow::Error`, which the binary turns into exit code 2.
pub async fn run(config: Config) -> anyhow::Result<App> {
    config.validate()?;
    // Before the counters: their metric handles are registered when they are built.
    let metrics = config
        .enable_metrics
        .then(crate::telemetry::prometheus_handle)
        .transpose()?;
    let (visit_store, stats_store) = build_stores(&config).await?;
    let counter = Counter::new(visit_store, config.counter_config())
        .context("cannot start the visit counter")?;
    let (listener, address) = bind(&config)?;
    let stats = StatsTracker::new(
        stats_store,
        config.stats_counter_config(),
        config.store_deadline(),
    )
    .context("cannot start the request statistics")?;
    let state = build_state(&config, &counter, &stats, test_target(address), metrics)?;
    let drain_timeout = config.drain_timeout();
    let server = http_server(listener, state, &config.api_prefix, drain_timeout)?;

    let summary = tokio::spawn(log_summaries(counter.clone(), config.metrics_interval));
    let daily_sweep = tokio::spawn(crate::daily::sweep_old_days(
        counter.clone(),
        config.daily_retention_days,
    ));
    tracing::info!(
        project = %config.project_name,
        version = env!("CARGO_PKG_VERSION"),
        store = counter.store().kind(),
        "listening on {address}"
    );
    log_admin_access(&config, address);
    Ok(App {
        server,
        address,
        counter,
        stats,
        shutdown_timeout: config.shutdown_timeout,
        drain_timeout,
        summary,
        daily_sweep,
    })
}

/// The stores of the visit counter and of the request statistics. With `REDIS_CLUSTER`,
/// a Redis Cluster ([`connect_cluster`]). With `REDIS_NODES`, one
/// set of connections to the nodes that both share, the statistics on the sorted-set
/// layout and the visits on plain counters. Without it, as `STORE` says: the embedded
/// store in `DATA_DIR` ([`open_embedded`]), or two memory stores (and a warning).
async fn build_stores(config: &Config) -> anyhow::Result<(AppStore, AppStore)> {
    if let Some(cluster) = config.cluster_config() {
        return connect_cluster(cluster).await;
    }
    let Some(redis) = config.redis_config() else {
        return match config.store {
            StoreKind::Embedded => open_embedded(config).await,
            StoreKind::Memory => {
                tracing::warn!(
                    "STORE=memory: counting in the memory store; counts live in this process only and are lost when it exits"
                );
                Ok((
                    AppStore::Memory(MemoryStore::new()),
                    AppStore::Memory(MemoryStore::ranked(1)),
                ))
            }
        };
    };
    let ports: Vec<u16> = redis.nodes.iter().map(|node| node.port()).collect();
    let store = match RedisStore::connect(redis).await {
        Ok(store) => store,
        // Settings that cannot work, as `Config::from_env` reports them.
        Err(e) if e.is_config() => {
            let variable = match &e {
                tally_redis::Error::Config { field, .. } => field,
                _ => "REDIS_NODES",
            };
            return Err(ConfigError {
                variable: variable.to_owned(),
                value: None,
                problem: e.to_string(),
            }
            .into());
        }
        Err(e) => return Err(anyhow::Error::new(e).context("cannot set up the Redis store")),
    };
    let stats_store = store.with_layout(Layout::SortedSet);
    Ok((
        AppStore::Redis {
            store,
            ports: ports.clone(),
        },
        AppStore::Redis {
            store: stats_store,
            ports,
        },
    ))
}

/// The stores over a Redis Cluster (`REDIS_CLUSTER`): one set of connections, the
/// statistics on the sorted-set layout and the visits on plain counters. A cluster that
/// does not answer yet is no error (its buckets wait, and `/health` says so); settings
/// that cannot work are a [`ConfigError`].
async fn connect_cluster(
    cluster: tally_redis::ClusterConfig,
) -> anyhow::Result<(AppStore, AppStore)> {
    let store = match ClusterStore::connect(cluster).await {
        Ok(store) => store,
        Err(e) if e.is_config() => {
            let variable = match &e {
                tally_redis::Error::Config { field, .. } => field,
                _ => "REDIS_CLUSTER",
            };
            return Err(ConfigError {
                variable: variable.to_owned(),
                value: None,
                problem: e.to_string(),
            }
            .into());
        }
        Err(e) => {
            return Err(anyhow::Error::new(e).context("cannot set up the Redis Cluster store"));
        }
    };
    let stats = store.with_layout(Layout::SortedSet);
    Ok((
        AppStore::Cluster { store },
        AppStore::Cluster { store: stats },
    ))
}

/// The embedded store in `DATA_DIR` (made absolute, so logs and errors name the real
/// place), opened on the blocking pool since opening reads the file (and repairs it after a
/// crash): the visits on the store, the statistics on its `ranked()` view. A directory or
/// file the operator must fix first ([`tally_embedded::Error::is_config`]) is a
/// [`ConfigError`] naming `DATA_DIR`.
async fn open_embedded(config: &Config) -> anyhow::Result<(AppStore, AppStore)> {
    let dir = std::path::absolute(&config.data_dir).map_err(|e| ConfigError {
        variable: "DATA_DIR".to_owned(),
        value: Some(config.data_dir.display().to_string()),
        problem: format!("cannot make the path absolute: {e}"),
    })?;
    let embedded = config.embedded_config();
    let opened = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || EmbeddedStore::open(&dir, embedded))
            .await
            .context("the task opening the embedded store failed")?
    };
    let store = match opened {
        Ok(store) => store,
        Err(e) if e.is_config() => {
            return Err(ConfigError {
                variable: "DATA_DIR".to_owned(),
                value: Some(config.data_dir.display().to_string()),
                // The message and its causes on one line (`a: b`).
                problem: format!("{:#}", anyhow::Error::new(e)),
            }
            .into());
        }
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!(
                "cannot open the embedded store in {}",
                dir.display()
            )));
        }
    };
    tracing::info!(
        path = %store.path().display(),
        "embedded store at {}: counts persist across restarts (delete DATA_DIR to start over)",
        store.path().display()
    );
    if store.was_repaired() {
        tracing::warn!(
            path = %store.path().display(),
            "the embedded store was not closed cleanly (the process was killed or the machine lost power) and was repaired at start: it holds every batch committed before"
        );
    }
    // One process at a time holds the file, and a new process counts under new instance
    // ids: every high-water mark in it is an earlier process's, whose batches can never
    // be retried. Removing them here keeps the file from gaining marks at every start.
    match store.sweep_marks(Duration::ZERO).await {
        Ok(0) => {}
        Ok(removed) => tracing::debug!(removed, "removed the marks of earlier processes"),
        Err(e) => tracing::warn!(
            error.message = %e,
            "cannot remove the marks of earlier processes; they stay in the file, unused"
        ),
    }
    let stats = store.ranked();
    Ok((
        AppStore::Embedded { store },
        AppStore::Embedded { store: stats },
    ))
}

/// The listening socket on `HOST:PORT`, and the address it got (the real port when `PORT`
/// is 0).
fn bind(config: &Config) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind((config.host, config.port))
        .with_context(|| format!("cannot listen on {}:{}", config.host, config.port))?;
    let address = listener
        .local_addr()
        .context("cannot read the bound address")?;
    Ok((listener, address))
}

/// Says at start who may reset counts and start `/test/{n}/` runs: with `ADMIN_TOKEN`,
/// holders of the token (never logged); without it, anyone who can reach the server, which
/// is a warning when it listens beyond loopback (`HOST=0.0.0.0`, as in the container).
fn log_admin_access(config: &Config, address: SocketAddr) {
    let routes = if config.test_endpoint_enabled {
        "resets and /test/ runs"
    } else {
        "resets"
    };
    if config.admin_token.is_some() {
        tracing::info!("{routes} require the bearer token ADMIN_TOKEN sets");
    } else if !address.ip().to_canonical().is_loopback() {
        tracing::warn!(
            %address,
            "ADMIN_TOKEN is unset and the server listens on {}, not loopback: {routes} are open to anyone who can reach it; set ADMIN_TOKEN to require a bearer token",
            address.ip()
        );
    }
}

/// Where `/test/{n}/` runs send their requests: this server's own `address`, on loopback
/// when it listens on every interface (`0.0.0.0` or `::`), since a wildcard address is not
/// one to connect to.
fn test_target(address: SocketAddr) -> SocketAddr {
    match address.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => {
            SocketAddr::from((Ipv4Addr::LOCALHOST, address.port()))
        }
        ip if ip.is_unspecified() => SocketAddr::from((Ipv6Addr::LOCALHOST, address.port())),
        _ => address,
    }
}

/// How long a store read or reset may take: [`Config::store_deadline`].
fn store_deadline(config: &Config) -> Deadline {
    Deadline {
        after: config.store_deadline(),
        set_by: "twice REDIS_TIMEOUT",
    }
}

/// How long a `/stats/` query waits for its ranking before answering 503: a merge slot
/// (at most [`tally_stats::MERGE_WAIT`]), the flush of this instance's counts (at most the
/// store deadline), then three ranking timeouts (`REDIS_TIMEOUT`, at least
/// [`tally_redis::RANKING_TIMEOUT_FLOOR`]) for the reads. A read that gets no answer fails
/// within the first of them, naming its node; this deadline ends a ranking whose reads do
/// answer, but so slowly, round after round, that the client would wait minutes.
fn ranking_deadline(config: &Config) -> Deadline {
    let read = config.redis_timeout.max(tally_redis::RANKING_TIMEOUT_FLOOR);
    Deadline {
        after: tally_stats::MERGE_WAIT + config.store_deadline() + read * 3,
        set_by: "a merge slot, the flush and three ranking reads",
    }
}

/// What every handler shares: the counters, the `/test/{n}/` endpoint (its settings, its
/// run slot, and its HTTP client, aimed at `test_target`), the runtime that owns the
/// store's connections, and the deadlines of store calls.
fn build_state(
    config: &Config,
    counter: &Counter<AppStore>,
    stats: &StatsTracker<AppStore>,
    test_target: SocketAddr,
    metrics: Option<&'static PrometheusHandle>,
) -> anyhow::Result<web::Data<AppState>> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(30))
        .build()
        .context("cannot build the HTTP client of /test/{n}/")?;
    Ok(web::Data::new(AppState {
        counter: counter.clone(),
        stats: stats.clone(),
        test: TestEndpoint {
            enabled: config.test_endpoint_enabled,
            max_requests: config.test_max_requests,
            target: test_target,
            runs: SingleRun::default(),
            client,
        },
        runtime: tokio::runtime::Handle::current(),
        started: Instant::now(),
        requests: AtomicU64::new(0),
        debug: config.debug,
        metrics,
        store_deadline: store_deadline(config),
        ranking_deadline: ranking_deadline(config),
        overload_retry_after: config.batch_interval.as_secs_f64().ceil().max(1.0) as u64,
        admin_token: config.admin_token.clone().map(AdminToken::new),
        daily_retention_days: config.daily_retention_days,
        openapi: crate::routes::openapi::json(config)?,
        figures: config
            .enable_dashboard
            .then(|| crate::figures::Figures::new(Instant::now())),
    }))
}

/// The HTTP server on `listener`: the routes under `prefix`, the JSON 404, and the two
/// middlewares. It handles no signals (`run_until_stopped` drains, then flushes) and gives
/// requests in flight `drain_timeout` once stopped.
fn http_server(
    listener: TcpListener,
    state: web::Data<AppState>,
    prefix: &str,
    drain_timeout: Duration,
) -> anyhow::Result<Server> {
    let metrics_on = state.metrics.is_some();
    let dashboard_on = state.figures.is_some();
    let prefix = prefix.to_owned();
    Ok(HttpServer::new(move || {
        let prefix = prefix.clone();
        actix_web::App::new()
            .app_data(state.clone())
            .configure(move |cfg| {
                crate::routes::configure(cfg, &prefix, metrics_on, dashboard_on);
            })
            .default_service(web::to(crate::routes::not_found))
            // Inner to outer: statistics counting, then observation of the whole request.
            .wrap(middleware::from_fn(crate::middleware::count_api_requests))
            .wrap(middleware::from_fn(crate::middleware::observe))
    })
    .disable_signals()
    .shutdown_timeout(drain_timeout.as_secs())
    .listen(listener)
    .context("cannot start the HTTP server")?
    .run())
}

impl App {
    /// The address the server listens on (with the real port when `PORT` was 0).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.address.port()
    }

    /// Serves until `shutdown` completes (or the server fails), then shuts down in order:
    /// stop accepting, let in-flight requests finish, flush every pending visit, all within
    /// `SHUTDOWN_TIMEOUT_SECONDS`. Logs and returns what was written and what was not.
    ///
    /// # Errors
    ///
    /// When the HTTP server itself fails; pending visits are still flushed first.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<ShutdownReport> {
        let App {
            server,
            counter,
            stats,
            shutdown_timeout,
            drain_timeout,
            summary,
            daily_sweep,
            ..
        } = self;
        let handle = server.handle();
        let mut server = tokio::spawn(server);
        let mut failure = None;
        tokio::select! {
            result = &mut server => {
                failure = Some(match result {
                    Ok(Ok(())) => anyhow::anyhow!("the HTTP server stopped unexpectedly"),
                    Ok(Err(e)) => anyhow::Error::from(e).context("the HTTP server failed"),
                    Err(e) => anyhow::Error::from(e).context("the HTTP server task failed"),
                });
            }
            () = shutdown => {}
        }
        let deadline = Instant::now() + shutdown_timeout;
        if failure.is_none() {
            tracing::info!(
                ?drain_timeout,
                "shutting down: no new connections; finishing requests in flight"
            );
            handle.stop(true).await;
            let _ = server.await;
        }
        // Its counter handle is one of the store's: the embedded store's file closes
        // cleanly only once every handle is gone (else it is repaired at the next start).
        // The shutdowns below consume the counters, and the HTTP workers' state went with
        // the server.
        summary.abort();
        let _ = summary.await;
        daily_sweep.abort();
        let _ = daily_sweep.await;
        let remaining = deadline.saturating_duration_since(Instant::now());
        tracing::info!(?remaining, "flushing pending visits");
        // The Redis nodes' lease (which keeps a reshard from running) is released once
        // this instance writes nothing more.
        let redis = counter.store().redis().cloned();
        let (report, stats_report) =
            tokio::join!(counter.shutdown(remaining), stats.shutdown(remaining));
        log_flush(&stats_report, &STATS_FLUSH);
        log_flush(&report, &VISITS_FLUSH);
        if let Some(redis) = redis {
            redis.release_lease().await;
        }
        match failure {
            Some(error) => Err(error),
            None => Ok(report),
        }
    }
}

/// The log lines of one counter's flush at shutdown.
struct FlushLines {
    /// The `info` line when every pending key was written.
    all_written: &'static str,
    /// The start of the `error` line when some were not, and what its numbers count:
    /// `{start} {n} {increments} to {k} {keys} could not be written`.
    start: &'static str,
    increments: &'static str,
    keys: &'static str,
}

/// The visit counter's: the last lines of a shutdown.
const VISITS_FLUSH: FlushLines = FlushLines {
    all_written: "shutdown complete: every pending visit was written",
    start: "shutdown complete, but",
    increments: "visits",
    keys: "pages",
};

/// The request statistics'.
const STATS_FLUSH: FlushLines = FlushLines {
    all_written: "request statistics: every pending count was written",
    start: "request statistics:",
    increments: "requests",
    keys: "paths",
};

/// Logs what a counter's flush at shutdown wrote: `info` when it wrote everything,
/// `error` with what it could not write otherwise.
fn log_flush(report: &ShutdownReport, lines: &FlushLines) {
    if report.keys_unwritten == 0 && report.subkeys_unwritten == 0 {
        tracing::info!(keys_written = report.keys_written, "{}", lines.all_written);
    } else {
        // A visit's day count waits beside its total: the line counts visits, and names
        // the days apart.
        let days = match report.subkeys_unwritten {
            0 => String::new(),
            n => format!(
                " (their day counts too: {} on {n} page days)",
                report.subkey_increments_unwritten
            ),
        };
        tracing::error!(
            keys_written = report.keys_written,
            keys_unwritten = report.keys_unwritten,
            increments_unwritten = report.increments_unwritten,
            subkeys_unwritten = report.subkeys_unwritten,
            "{} {} {} to {} {} could not be written{days}",
            lines.start,
            report.increments_unwritten,
            lines.increments,
            report.keys_unwritten,
            lines.keys
        );
    }
}

/// Logs the counter's figures every `METRICS_INTERVAL_SECONDS`.
async fn log_summaries(counter: Counter<AppStore>, interval: Duration) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    loop {
        ticks.tick().await;
        let s = counter.snapshot();
        tracing::info!(
            cache_hits = s.cache_hits,
            cache_misses = s.cache_misses,
            cache_size = s.cache_size,
            write_buffer_size = s.write_buffer_size,
            batches_ok = s.batches_ok,
            batches_failed = s.batches_failed,
            increments_written = s.increments_written,
            "counter summary"
        );
    }
}

/// Completes on SIGTERM or SIGINT (Ctrl-C), logging which.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
                }
                return;
            }
            Err(e) => {
                tracing::warn!(error.message = %e, "cannot listen for SIGTERM; only SIGINT stops the server")
            }
        }
    }
    match tokio::signal::ctrl_c().await {
        Ok(()) => tracing::info!("SIGINT received"),
        Err(e) => {
            tracing::error!(error.message = %e, "cannot listen for SIGINT; the server runs until killed");
            std::future::pending::<()>().await;
        }
    }
}
