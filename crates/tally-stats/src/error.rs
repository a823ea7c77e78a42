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
    /// The ranking could not start a merge within the wait: as many as the tracker allows
    /// were running.
    #[error(
        "too many rankings are being computed ({merges} at most at once) and none finished within {waited:?}; retry later"
    )]
    Busy {
        /// [`crate::MAX_CONCURRENT_MERGES`].
        merges: usize,
        /// [`crate::MERGE_WAIT`].
        waited: std::time::Duration,
    },
    /// A store shard did not answer the ranking's read.
    #[error("store shard {name} did not answer the ranking")]
    ShardUnavailable {
        /// The shard.
        shard: tally_counter::ShardId,
        /// Its credential-free name.
        name: String,
        /// What the store reported (shared by every call that waited on the merge).
        #[source]
        source: std::sync::Arc<dyn std::error::Error + Send + Sync>,
    },
    /// The merge task ended without an answer (it panicked, or its runtime is shutting
    /// down).
    #[error("the ranking stopped before it finished: {reason}")]
    MergeStopped {
        /// What the task reported.
        reason: String,
    },
    /// The counter refused or failed: overload, or a store shard that did not answer.
    #[error(transparent)]
    Counter(#[from] tally_counter::Error),
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
