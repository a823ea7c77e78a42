//! Logs and metrics set-up: the `tracing` subscriber (text or JSON lines) and the
//! process-wide Prometheus recorder.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::LogFormat;

/// Buckets of every histogram, in seconds: request latency, batch and Redis command
/// durations all fall between a tenth of a millisecond and several seconds.
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// How often the recorder's upkeep runs (it bounds the memory of idle histograms).
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Installs the global `tracing` subscriber writing to `writer`, filtered by `filter`
/// (`tracing` directives, as `RUST_LOG`). `log` records are forwarded too.
///
/// Colours are used only when `is_terminal` is true. Does nothing if a global subscriber is
/// already installed (tests install one per process).
pub fn init_tracing<W>(format: LogFormat, filter: &str, writer: W, is_terminal: bool)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::builder().parse_lossy(filter);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    // `try_init` fails only when a subscriber is already set, which is fine.
    let _ = match format {
        LogFormat::Text => builder.with_ansi(is_terminal).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}

/// The process-wide Prometheus handle, installing the recorder on first use.
///
/// `metrics` takes one global recorder per process and tests run many apps in one process,
/// so the recorder is installed once and every app shares its handle. A thread runs the
/// recorder's upkeep for as long as the process lives.
///
/// # Errors
///
/// When another recorder was installed first (not by this function).
pub fn prometheus_handle() -> anyhow::Result<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();
    let handle = HANDLE.get_or_init(|| {
        let handle = PrometheusBuilder::new()
            .set_buckets(BUCKETS)
            .and_then(PrometheusBuilder::install_recorder)
            .map_err(|e| e.to_string())?;
        describe_metrics();
        let upkeep = handle.clone();
        std::thread::Builder::new()
            .name("metrics-upkeep".to_owned())
            .spawn(move || {
                loop {
                    std::thread::sleep(UPKEEP_INTERVAL);
                    upkeep.run_upkeep();
                }
            })
            .map_err(|e| format!("cannot start the metrics upkeep thread: {e}"))?;
        Ok(handle)
    });
    handle
        .as_ref()
        .map_err(|e| anyhow::anyhow!("cannot install the Prometheus recorder: {e}"))
}

fn describe_metrics() {
    metrics::describe_counter!(
        "tally_http_requests_total",
        "HTTP requests answered, by route pattern, method and status."
    );
    metrics::describe_histogram!(
        "tally_http_request_duration_seconds",
        metrics::Unit::Seconds,
        "Time to answer an HTTP request, by route pattern and method."
    );
    metrics::describe_gauge!(
        "tally_counter_cache_entries",
        "Entries in the counter's read cache, as of the last scrape."
    );
}
