//! tally-server: the HTTP service that counts page visits exactly.
//!
//! An actix-web application over a [`tally_counter::Counter`]: a visit is counted in memory
//! and answered at once, batches go to Redis (several nodes on a consistent-hash ring, see
//! `tally-redis`) or, without `REDIS_NODES`, to the embedded store, one redb file in
//! `DATA_DIR` that keeps the counts across restarts (`tally-embedded`; `STORE=memory`
//! counts in memory instead). Reads add
//! this instance's unwritten visits to the stored count, so a client reads its own writes.
//! The repository's README is the HTTP API's reference (every endpoint, answer and error
//! code) and lists every configuration variable; `GET /openapi.json` serves the same API as
//! an OpenAPI 3.1 document, for programs.
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
//! - `HOST` defaults to `127.0.0.1`: without `ADMIN_TOKEN` (unset by default, as the
//!   original had no authentication) anyone who reaches the API can count, reset and start
//!   `/test/` runs, so a bare `cargo run` does not offer it to the network. The container
//!   image and the compose file set `HOST=0.0.0.0`, which a port mapping needs (the
//!   original's Docker service listened there); a server listening beyond loopback without
//!   `ADMIN_TOKEN` says so in a warning at start.
//! - `ADMIN_TOKEN` guards only resets and `/test/{n}/` runs (`Authorization: Bearer`,
//!   401 `unauthorized` otherwise, checked before anything else the handler does); visits,
//!   reads, `/stats/`, `/status`, `/health` and `/metrics` stay open, as the original's. A
//!   set but blank token, or one a header cannot carry unchanged, is a configuration error
//!   (exit 2), since unset means open.
//! - `/test/{n}/` stays on by default (the original's, and the walkthrough's), bounded: one
//!   run at a time, at most `TEST_MAX_REQUESTS` requests, cancelled when its client goes
//!   away, and at most 1,092 distinct URLs a run (three strings, one to six segments). It
//!   gives a caller nothing a plain `GET /api/...` loop does not, but 100,000 requests for
//!   one: turn it off (`TEST_ENDPOINT_ENABLED=false`) where the API is public.
//! - `/metrics` is public when on (`ENABLE_METRICS`, default true), as Prometheus scrapes
//!   expect: it shows request rates by route pattern and node `host:port`s, never a
//!   password or a page id. Restrict it at the proxy or the network where that matters,
//!   or turn it off.
//! - `/stats/` merges at most `tally_stats::MAX_CONCURRENT_MERGES` rankings at once; a
//!   query that finds them busy for `tally_stats::MERGE_WAIT` answers 503 `overloaded`
//!   with `Retry-After: 1`. Like every store call a ranking has a deadline (a merge slot,
//!   the flush, and three ranking reads of at least `tally_redis::RANKING_TIMEOUT_FLOOR`:
//!   41 s with the defaults), past which it answers 503 `store_unavailable`.
//! - On the embedded store (and with `STORE=memory`) `served_via` is always `in_memory`,
//!   `"node"` is `embedded`, `/health` answers 200 with `"redis":"embedded"` and `/status`
//!   reports no nodes; its `store` says which (`{"kind":"embedded","path":...}`).
//! - `STORE=memory` with `REDIS_NODES` set is a configuration error (exit 2): the two ask
//!   for different stores, and `REDIS_NODES` alone decides (`STORE=embedded`, the default,
//!   is ignored with it).
//! - A `DATA_DIR` the embedded store cannot use (not writable, in use by another process,
//!   not a tally database) exits 2 with one line naming it; other failures to open it are
//!   ordinary start-up failures (exit 1).
//! - `/health` reads node health as of the last check (every
//!   `HEALTH_CHECK_INTERVAL_SECONDS`, and after every failed command); it answers 200 while
//!   any node is up (`status` then says `healthy` or `degraded`) and 503 when none is.
//! - Requests are logged at `debug` when served, `info` when refused (4xx) and `warn` when
//!   failed (5xx): at the default `info` level a busy counter does not log every visit.
//!
//! # Layout
//!
//! - `config`: [`Config`] and its [`Setting`] declarations, [`ConfigError`], [`LogFormat`],
//!   [`StoreKind`].
//! - `page_id`: [`PageId`], the validated page id, and [`PageIdError`].
//! - `error`: [`ApiError`], every error answer as JSON.
//! - `auth`: the `ADMIN_TOKEN` check of the admin routes (resets, `/test/{n}/` runs), an
//!   extractor their handlers take, and [`Refusal`], why a request got 401.
//! - `startup`: [`run`], [`App`], [`shutdown_signal`].
//! - [`cli`]: [`cli::main`], the whole binary (config, logs, runtime, exit code), public so
//!   other binaries (the end-to-end tests') run the same code.
//! - `reshard`: the `tally-server reshard` subcommand, which moves the counts to a new node
//!   list (`tally_redis::reshard`).
//! - `routes`: the handlers and the route table, and (`routes::openapi`) the OpenAPI 3.1
//!   document `/openapi.json` serves, generated by utoipa from the handlers' types and built
//!   at start with the server's `API_PREFIX`; `middleware`: the span, metrics and
//!   `X-Process-Time` of every request, and the counting of `/api/` requests; `figures`: the
//!   dashboard's ring of per-second figures (`routes::dashboard` serves it); `state`: what
//!   handlers share, and the deadline on every store call; `store`: the embedded, memory
//!   or Redis store; `telemetry`: logs and the Prometheus recorder.
#![deny(missing_docs)]

mod auth;
pub mod cli;
mod config;
mod daily;
mod error;
mod figures;
mod middleware;
mod page_id;
mod reshard;
mod routes;
mod startup;
mod state;
mod store;
pub mod telemetry;

pub use auth::Refusal;
pub use config::{Config, ConfigError, KNOWN_VARIABLES, LogFormat, Setting, StoreKind};
pub use error::ApiError;
pub use page_id::{PageId, PageIdError};
pub use startup::{App, run, shutdown_signal};
pub use tally_counter::ShutdownReport;
