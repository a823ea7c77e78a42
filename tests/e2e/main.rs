//! End-to-end suite: every test that runs the real server binary (`tally-e2e-server`, the
//! code of `tally-server`) as a process, over real `redis-server` nodes, under the faults
//! production brings. Most modules are one scenario of the README's "Guarantees and
//! failure modes", whose tests print their figures (acknowledged, counted, 503s, unknown)
//! at the end, visible with `--nocapture`; `bad_config` checks how the binary refuses a
//! configuration it cannot run with, `dashboard` drives the page at `/` in headless
//! chromium, and `embedded` runs it without Redis, on its
//! persistent embedded store in a temporary `DATA_DIR`. All of them start the server through
//! `support::Server`.
//!
//! Scenarios run one at a time (see `support::one_at_a_time`). Tests whose name starts
//! with `slow_` take the longest; `cargo xtask test` runs them all, and
//! `cargo test -p tally-tests -- --skip slow_` leaves them out while iterating. Set
//! `TEST_LOG=1` to see the servers' output.

mod admin_token;
mod backlog;
mod bad_config;
mod bad_input;
mod bulk_visits;
mod cardinality;
mod cluster;
mod concurrent;
mod daily;
mod dashboard;
mod deep_stats;
mod embedded;
mod full_disk;
mod kill;
mod lost_replies;
mod overload;
mod pause;
mod poison;
mod reshard;
mod ring_guard;
mod secrets;
mod sigterm;
mod support;
mod test_runs;
mod two_instances;
mod visitors;
