//! [`EmbeddedConfig`] and the defaults it takes.

/// Name of the database file inside the data directory.
pub const FILE_NAME: &str = "tally.redb";

/// Default size of redb's page cache: 64 MiB.
///
/// Large enough to hold the upper levels of every table's B-tree and the recently counted
/// keys of a server with a million distinct URLs, so a batch or a ranking read touches
/// the disk only for cold leaves; small enough not to matter beside the counters' own
/// bounded buffers. redb's own default (1 GiB) is meant for a database that is the
/// process's main job.
pub const DEFAULT_CACHE_BYTES: usize = 64 * 1024 * 1024;

/// How an [`crate::EmbeddedStore`] opens its database.
///
/// This crate reads no environment: the server fills this from its own settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmbeddedConfig {
    /// Bytes of redb's page cache, shared by the visit and statistics tables of the file
    /// (default [`DEFAULT_CACHE_BYTES`]). The store's resident memory is bounded by this
    /// plus the pages a write transaction dirties (one batch's keys), not by the number
    /// of keys in the file.
    pub cache_bytes: usize,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        Self {
            cache_bytes: DEFAULT_CACHE_BYTES,
        }
    }
}
