//! tally-tests: end-to-end tests of the tally server against real `redis-server` processes.
//!
//! The tests themselves live in this crate's `tests/` folder; the reusable parts (Redis
//! nodes, the fault proxy) are in the `tally-testkit` crate.
#![deny(missing_docs)]
