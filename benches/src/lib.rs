//! tally-benches: criterion benchmarks and the HTTP load harness for tally.
//!
//! Run `cargo xtask bench` (all criterion benches) or `cargo bench -p tally-benches --bench
//! ring`. Report binaries live in `src/bin`.
#![deny(missing_docs)]
