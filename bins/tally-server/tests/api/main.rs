//! Integration tests of tally-server: the real app on port 0 against real `redis-server`
//! processes (tally-testkit), and the real binary for signals and configuration.
//!
//! Set `TEST_LOG=1` to see the app's logs.

mod bad_input;
mod compose;
mod counter;
mod embedded;
mod helpers;
mod load;
mod metrics;
mod process;
mod stats;
mod status;
