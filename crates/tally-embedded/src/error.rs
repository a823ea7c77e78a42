//! The crate's error type.
//!
//! Every message names the file or directory it is about, so an operator reading one line
//! of a log knows which `DATA_DIR` to look at.

use std::path::PathBuf;

/// Errors from opening an [`crate::EmbeddedStore`] and from its transactions.
///
/// The first group ([`Error::is_config`]) are found by [`crate::EmbeddedStore::open`] and
/// need the operator to change something (the directory, the file, the other process)
/// before a store can open; the rest are failures of a store that is open.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The data directory does not exist and cannot be created (a path under a file, a
    /// read-only file system, no permission).
    #[error("cannot create the data directory {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// What the file system said.
        #[source]
        source: std::io::Error,
    },
    /// The database file cannot be created, opened or read: the directory is not
    /// writable, or the file is not readable.
    #[error("cannot open or create the database file {path}")]
    Io {
        /// The database file.
        path: PathBuf,
        /// What the file system said.
        #[source]
        source: std::io::Error,
    },
    /// Another process has the database open: redb locks the file for as long as it is
    /// open, and two writers would corrupt it.
    #[error(
        "the data directory {path} is in use by another tally process (its database file is locked); stop that process or choose another data directory"
    )]
    InUse {
        /// The data directory.
        path: PathBuf,
    },
    /// The file is not a tally database: not a redb file at all, or a redb file without
    /// tally's metadata table (another program's database).
    #[error("{path} is not a tally database: {reason}")]
    NotTally {
        /// The database file.
        path: PathBuf,
        /// What was found instead.
        reason: String,
    },
    /// The file is a tally database of a format version this build does not read (written
    /// by a newer tally).
    #[error(
        "{path} is a tally database of format version {found}, but this build reads version {supported}; run the tally that wrote it, or move the file away to start afresh"
    )]
    UnknownFormat {
        /// The database file.
        path: PathBuf,
        /// The version the file records.
        found: u64,
        /// The version this build reads ([`crate::FORMAT_VERSION`]).
        supported: u64,
    },
    /// The file was written in a redb file format this build of redb cannot read.
    #[error(
        "{path} was written in redb file format {version}, which this build cannot read; run the tally that wrote it"
    )]
    EngineFormat {
        /// The database file.
        path: PathBuf,
        /// The redb file format the file declares.
        version: u8,
    },
    /// The file's content is damaged: redb found an inconsistency it cannot repair, or
    /// tally's tables contradict each other.
    #[error("the database file {path} is corrupt: {detail}")]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What was found.
        detail: String,
    },
    /// A transaction failed in the engine (an I/O error, an error from an earlier I/O
    /// error that redb keeps refusing writes after, a full disk, ...). A failed write
    /// transaction applied nothing.
    #[error("the embedded database {path} failed during {op}")]
    Engine {
        /// The database file.
        path: PathBuf,
        /// What was asked (`open`, `apply`, `get`, `reset`, `top`, ...).
        op: &'static str,
        /// redb's error.
        #[source]
        source: Box<redb::Error>,
    },
    /// The blocking task running a transaction was cancelled because the tokio runtime
    /// is shutting down. A write may or may not have been committed (a batch sent again
    /// is applied at most once).
    #[error("the {op} on {path} was cancelled: the runtime is shutting down")]
    Cancelled {
        /// The database file.
        path: PathBuf,
        /// What was asked.
        op: &'static str,
    },
    /// A batch breaks the [`tally_counter::Batch`] contract (a key listed twice); nothing
    /// of it was applied.
    #[error("invalid batch: {detail}")]
    InvalidBatch {
        /// What is wrong with it.
        detail: String,
    },
    /// A key's total would pass [`crate::MAX_TOTAL`], so it was not applied (the rest of
    /// its batch was). Returned by [`crate::EmbeddedStore::apply`]; `apply_checked`
    /// reports such keys as [`tally_counter::RejectedKey`]s instead.
    #[error("{stored_as} holds {found}, not a count it can add to")]
    TotalTooLarge {
        /// Where the key is stored (table and key).
        stored_as: String,
        /// Its value and the delta that would take it past the bound.
        found: String,
    },
    /// A shard id outside `0..shard_count()` (the store has one shard, 0).
    #[error("embedded shard {shard} does not exist; the store has one shard, 0")]
    NoSuchShard {
        /// The id asked for.
        shard: usize,
    },
    /// The operation exists only for another key layout.
    #[error("{op} needs the {needed} layout, but this store uses the {actual} layout")]
    WrongLayout {
        /// The operation.
        op: &'static str,
        /// The layout it needs.
        needed: crate::Layout,
        /// The store's layout.
        actual: crate::Layout,
    },
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether the operator must change something before a store can open here: the
    /// directory cannot be created or written ([`Error::CreateDir`], [`Error::Io`]),
    /// another process holds it ([`Error::InUse`]), or the file is not a database this
    /// build reads ([`Error::NotTally`], [`Error::UnknownFormat`],
    /// [`Error::EngineFormat`]). A server exits with its configuration error code on these.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            Self::CreateDir { .. }
                | Self::Io { .. }
                | Self::InUse { .. }
                | Self::NotTally { .. }
                | Self::UnknownFormat { .. }
                | Self::EngineFormat { .. }
        )
    }

    /// Whether the failure says the file or the disk under it is failing, so the store
    /// reports its shard down until a transaction succeeds again.
    pub(crate) fn is_storage(&self) -> bool {
        matches!(
            self,
            Self::Engine { .. } | Self::Io { .. } | Self::Corrupt { .. }
        )
    }
}
