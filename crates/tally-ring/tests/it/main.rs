//! Integration tests for tally-ring, one binary: the frozen mapping, properties, balance.

mod balance;
mod properties;
mod reference;
mod vectors;
