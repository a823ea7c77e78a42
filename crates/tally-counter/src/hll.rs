//! HyperLogLog sketches of distinct members, for stores that keep them in process.
//!
//! (Placeholder: being written.)

/// Relative standard error of an estimate: 1.04 / sqrt(16,384).
pub const STANDARD_ERROR: f64 = 0.0081;
