//! Integration tests of tally-embedded on real database files in temporary directories.
//! Some tests start this binary again as a child process (`support::spawn_child`): a
//! second opener, or a writer killed mid-flood.

mod batches;
mod crash;
mod errors;
mod persistence;
mod ranking;
mod scale;
mod sketches;
mod support;
