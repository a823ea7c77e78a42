//! Integration tests of tally-server: the real app, in process, on port 0, against the
//! embedded store or real `redis-server` processes (tally-testkit). Tests of the binary as
//! a process (signals, exit codes, what it prints) are in the end-to-end suite, `tests/e2e`.
//!
//! Set `TEST_LOG=1` to see the app's logs.

mod bad_input;
mod compose;
mod counter;
mod dashboard;
mod embedded;
mod load;
mod metrics;
mod stats;
mod status;
mod support;
