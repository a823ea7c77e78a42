//! The crate's error type.

/// Errors from the request-statistics tracker.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `limit` is not a whole number in range.
    #[error("invalid limit {value:?}: expected a whole number from 1 to {max}")]
    InvalidLimit {
        /// The value as received.
        value: String,
        /// The largest accepted limit.
        max: usize,
    },
    /// `offset` is not a whole number in range.
    #[error("invalid offset {value:?}: expected a whole number from 0 to {max}")]
    InvalidOffset {
        /// The value as received.
        value: String,
        /// The largest accepted offset.
        max: usize,
    },
    /// The counter refused or failed: overload, or a store shard that did not answer.
    #[error(transparent)]
    Counter(#[from] tally_counter::Error),
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
