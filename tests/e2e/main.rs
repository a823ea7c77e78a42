//! End-to-end fault suite: the real server binary (`tally-e2e-server`, the code of
//! `tally-server`) over real `redis-server` nodes, under the faults production brings.
//! Each module is one scenario of the README's "Guarantees and failure modes"; each test prints its figures
//! (acknowledged, counted, 503s, unknown) at the end, visible with `--nocapture`.
//!
//! Scenarios run one at a time (see `support::one_at_a_time`). Tests whose name starts
//! with `slow_` take the longest; `cargo xtask test` runs them all, and
//! `cargo test -p tally-tests -- --skip slow_` leaves them out while iterating. Set
//! `TEST_LOG=1` to see the servers' output.

mod backlog;
mod bad_input;
mod cardinality;
mod concurrent;
mod deep_stats;
mod kill;
mod lost_replies;
mod overload;
mod pause;
mod poison;
mod secrets;
mod sigterm;
mod support;
mod test_runs;
mod two_instances;
