//! The crate's error type, and how a chain of causes is written on one line.

use crate::store::{ShardId, StoreError};

/// Errors from [`crate::Counter`] and [`crate::CounterConfig`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Too many distinct keys are waiting to be written: `max_pending_keys` in all, or the
    /// key's store shard holds its share of them (`max_pending_keys` divided by the number of
    /// shards, rounded up). The increment was refused and not counted. Callers should shed
    /// load (HTTP 503 + Retry-After).
    #[error(
        "counter overloaded: {pending} keys are waiting to be written (limit {limit}); the increment was not counted"
    )]
    Overloaded {
        /// Keys pending or in flight when the increment was refused (in all, or in the
        /// shard, whichever bound refused it).
        pending: usize,
        /// That bound: `max_pending_keys`, or the shard's share of it.
        limit: usize,
    },
    /// The keys waiting to be written (in this counter and those sharing its
    /// [`crate::PendingBytes`]) hold `max_pending_bytes` already: the increment of a new
    /// key was refused and not counted. Callers should shed load (HTTP 503 + Retry-After).
    #[error(
        "counter overloaded: {pending_bytes} bytes of keys are waiting to be written (limit {limit}); the increment was not counted"
    )]
    OverloadedBytes {
        /// Bytes held when the increment was refused.
        pending_bytes: usize,
        /// `max_pending_bytes`.
        limit: usize,
    },
    /// Too many sketch members are waiting to be added to the store's sketches
    /// (`max_pending_members`): the members were refused, none added. Callers should shed
    /// load (HTTP 503 + Retry-After), and count nothing else of the request.
    #[error(
        "counter overloaded: {pending} sketch members are waiting to be written (limit {limit}); none of these was added"
    )]
    OverloadedMembers {
        /// Members pending when the add was refused.
        pending: usize,
        /// `max_pending_members`.
        limit: usize,
    },
    /// The counter's store keeps no sketches ([`crate::Store::keeps_sketches`]).
    #[error("this counter's store keeps no sketches of distinct members")]
    NoSketches,
    /// The store failed to answer a read or reset for a shard.
    #[error("store shard {shard} ({name}) is unavailable")]
    Store {
        /// The shard that failed.
        shard: ShardId,
        /// Its credential-free name.
        name: String,
        /// What the store reported.
        #[source]
        source: StoreError,
    },
    /// The store holds a value for the key that is not a count (another type, text, a
    /// negative or too large number): the key's increments are held in memory, outside the
    /// shard's batches, until the value is repaired (checked again every
    /// `quarantine_recheck`) or the key is reset. Increments and reads of the key are
    /// refused meanwhile; a refused increment is not counted.
    #[error(
        "the stored count of '{key}' is corrupt: {stored_as} on {name} holds {found}; its visits are held until the value is repaired or the key is reset"
    )]
    Corrupt {
        /// The key.
        key: String,
        /// Its shard.
        shard: ShardId,
        /// The shard's credential-free name.
        name: String,
        /// Where the store keeps the key.
        stored_as: String,
        /// What the store found there (type, or value cut to 64 bytes).
        found: String,
    },
    /// The counter is shutting down and takes no more work.
    #[error("counter is shut down")]
    ShutDown,
    /// Bytes given to [`crate::hll::HyperLogLog::from_bytes`] are not a sketch it wrote
    /// (another version, a wrong length, a register out of range): a stored sketch was
    /// damaged or written by something else.
    #[error("invalid sketch bytes: {problem}")]
    SketchFormat {
        /// What is wrong with them.
        problem: String,
    },
    /// A [`crate::CounterConfig`] value is out of range.
    #[error("invalid counter config: {field} {problem}")]
    Config {
        /// The field at fault.
        field: &'static str,
        /// What is wrong with it.
        problem: &'static str,
    },
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What caused `error`, its chain of sources on one line (the error itself when it has
/// none): the store error that waiters of a failed shared read report as theirs.
pub(crate) fn cause_text(error: &Error) -> String {
    let causes: Vec<String> = chain(std::error::Error::source(error))
        .map(ToString::to_string)
        .collect();
    if causes.is_empty() {
        error.to_string()
    } else {
        causes.join(": ")
    }
}

/// `error` and each of its sources, joined with `: `: what a store said, whole (its
/// outer message alone may only say which operation failed).
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    for cause in chain(error.source()) {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
    }
    text
}

/// `first` and each of its sources in turn.
fn chain<'a>(
    first: Option<&'a (dyn std::error::Error + 'static)>,
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(first, |error| error.source())
}
