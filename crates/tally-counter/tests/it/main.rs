//! Integration tests of tally-counter: exactness, faults, triggers, shutdown, cache.

mod bulk;
mod cache;
mod exactness;
mod faults;
mod lifecycle;
mod model;
mod quarantine;
mod support;
