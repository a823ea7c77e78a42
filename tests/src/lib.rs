//! tally-tests: end-to-end tests of the tally server against real `redis-server` processes.
//!
//! The suite is the test target `e2e` (`tests/e2e/`, one module per scenario): it runs the
//! binary `tally-e2e-server` of this crate, which is `tally_server::cli::main`, the same code
//! as the shipped `tally-server`, over real Redis nodes from `tally-testkit`, and injects
//! the faults production brings: a node paused (SIGSTOP), killed (SIGKILL) and restarted
//! from its append-only file, replies lost by a proxy, SIGTERM to the server, two servers
//! on the same nodes, overload, bad input, a flood of distinct URLs, and passwords. It also
//! holds the binary's start-up checks: a configuration it cannot run with exits 2 with one
//! line. Every test that runs the server as a process lives here; in-process API tests live
//! in `tally-server`'s own `tests/api`.
//!
//! The README's "Guarantees and failure modes" says what tally promises, which test proves
//! each promise, and what it does not promise.
//!
//! ```text
//! cargo test -p tally-tests -- --nocapture          # every scenario, with its figures
//! cargo test -p tally-tests -- --skip slow_         # without the slowest ones
//! TEST_LOG=1 cargo test -p tally-tests -- pause     # one scenario, with the server's logs
//! ```
#![deny(missing_docs)]
