//! tally-server: the HTTP service that counts page visits exactly.
//!
//! An actix-web application over a [`tally_counter::Counter`]: a visit is counted in memory
//! and answered at once, batches go to Redis (several nodes on a consistent-hash ring, see
//! `tally-redis`) or, without `REDIS_NODES`, to an embedded in-process store. Reads add
//! this instance's unwritten visits to the stored count, so a client reads its own writes.
//! The HTTP API is the one of DESIGN.md ("tally-server HTTP API"); the README has the
//! endpoint reference and every configuration variable.
//!
//! The library is what the binary runs and what the tests start: [`Config`] (from the
//! environment and `.env`), [`run`] (binds the socket, port 0 for tests) and
//! [`App::run_until_stopped`] (serves until a shutdown future completes, then drains the
//! requests in flight and flushes every pending visit).
//!
//! # Example
//!
//! ```no_run
//! use tally_server::{Config, run, shutdown_signal};
//!
//! # async fn demo() -> anyhow::Result<()> {
//! let config = Config { port: 0, ..Config::from_env()? };
//! let app = run(config).await?;
//! println!("listening on {}", app.address());
//! let report = app.run_until_stopped(shutdown_signal()).await?;
//! assert_eq!(report.keys_unwritten, 0);
//! # Ok(())
//! # }
//! ```
//!
//! # Decisions
//!
//! - `HOST` defaults to `0.0.0.0`, as the original Docker service: the server is meant to
//!   run in a container behind a port mapping. Set `HOST=127.0.0.1` on a shared machine.
//! - On the embedded store `served_via` is always `in_memory`, `"node"` is `embedded`,
//!   `/health` answers 200 with `"redis":"embedded"` and `/status` reports no nodes.
//! - `/health` reads node health as of the last check (every
//!   `HEALTH_CHECK_INTERVAL_SECONDS`, and after every failed command); it answers 200 while
//!   any node is up (`status` then says `healthy` or `degraded`) and 503 when none is.
//! - Requests are logged at `debug` when served, `info` when refused (4xx) and `warn` when
//!   failed (5xx): at the default `info` level a busy counter does not log every visit.
//!
//! # Layout
//!
//! - `config`: [`Config`], [`ConfigError`], [`LogFormat`].
//! - `page_id`: [`PageId`], the validated page id, and [`PageIdError`].
//! - `error`: [`ApiError`], every error answer as JSON.
//! - `startup`: [`run`], [`App`], [`shutdown_signal`].
//! - [`cli`]: [`cli::main`], the whole binary (config, logs, runtime, exit code), public so
//!   other binaries (the end-to-end tests') run the same code.
//! - `routes`: the handlers and the route table; `middleware`: the span, metrics and
//!   `X-Process-Time` of every request; `state`: what handlers share; `store`: the
//!   embedded-or-Redis store; `telemetry`: logs and the Prometheus recorder.
#![deny(missing_docs)]

pub mod cli;
mod config;
mod error;
mod middleware;
mod page_id;
mod routes;
mod startup;
mod state;
mod store;
pub mod telemetry;

pub use config::{Config, ConfigError, KNOWN_VARIABLES, LogFormat};
pub use error::ApiError;
pub use page_id::{PageId, PageIdError};
pub use startup::{App, run, shutdown_signal};
pub use tally_counter::ShutdownReport;
