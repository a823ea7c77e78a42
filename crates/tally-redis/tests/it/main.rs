//! Integration tests of tally-redis against real redis-server processes (see tally-testkit).

mod cluster;
mod cluster_combined;
mod counter;
mod errors;
mod faults;
mod guard;
mod health;
mod identity;
mod marks;
mod reshard;
mod sketches;
mod sorted_set;
mod store;
mod subkeys;
mod support;
