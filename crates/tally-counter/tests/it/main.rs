//! Integration tests of tally-counter: exactness, faults, triggers, shutdown, cache, and
//! the HyperLogLog against a real Redis.

mod bulk;
mod cache;
mod exactness;
mod faults;
mod hll_compat;
mod lifecycle;
mod model;
mod quarantine;
mod sketch_buffer;
mod support;
