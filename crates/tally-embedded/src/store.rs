//! `EmbeddedStore`: opening the file, running each transaction on the blocking pool, the
//! `Store` and `RankedStore` implementations, and the shard's health.

use std::any::Any;
use std::fmt;
use std::io::Read as _;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use tally_counter::{
    Applied, Batch, InstanceId, RankedStore, ShardHealth, ShardId, SketchAdd, Store, StoreError,
    StoredValues, Window, WindowRead,
};
use tracing::Instrument as _;

use crate::config::{EmbeddedConfig, FILE_NAME};
use crate::error::{Error, Result};
use crate::layout::{self, Layout};
use crate::txn::{self, TxError};

/// Name of the store's one shard, in health reports and logs.
pub const SHARD_NAME: &str = "embedded";

/// The first bytes of every redb file (redb's `MAGICNUMBER`, checked by a test), so a
/// file that is something else is refused before redb opens it.
const REDB_SIGNATURE: [u8; 9] = [b'r', b'e', b'd', b'b', 0x1A, 0x0A, 0xA9, 0x0D, 0x0A];

/// A [`tally_counter::Store`] and [`tally_counter::RankedStore`] in one redb file, kept
/// across restarts and crashes.
///
/// - One shard ([`SHARD_NAME`]): redb commits one write transaction at a time, so more
///   shards over one file would only queue behind each other, and one shard keeps one
///   mark per counter instance.
/// - [`Store::apply`] is one write transaction: the instance's high-water mark is read,
///   and the batch is applied, with the new mark, only if its sequence is above it. It
///   returns once the commit is durable (`Durability::Immediate`: the file is synced).
/// - Transactions run on tokio's blocking pool (`spawn_blocking`), never on the caller's
///   worker thread; reads run beside a write (redb's MVCC snapshots).
///
/// Cheap to clone; clones and [`EmbeddedStore::with_layout`] views share the database,
/// which closes when the last of them is dropped. Another process opening the same
/// directory meanwhile gets [`Error::InUse`].
#[derive(Clone)]
pub struct EmbeddedStore {
    shared: Arc<Shared>,
    layout: Layout,
}

struct Shared {
    db: redb::Database,
    /// The database file.
    path: PathBuf,
    /// Whether the open found the file not closed cleanly and repaired it.
    repaired: bool,
    /// A `std::sync::Mutex`: held to read or flip two fields, never across `.await`.
    health: Mutex<Health>,
}

#[derive(Debug)]
struct Health {
    up: bool,
    since: SystemTime,
}

impl fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.shared.path)
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// Opens the tally database in `dir` (the file [`FILE_NAME`] inside it), creating the
    /// directory and the file when missing, with the [`Layout::Counters`] layout
    /// ([`EmbeddedStore::ranked`] gives the statistics' view of the same file).
    ///
    /// A file that was not closed cleanly (the process was killed, the machine lost power)
    /// is repaired first, logged as a warning: every transaction committed before the
    /// crash is there, and nothing of one that was not. This reads the whole file, so it
    /// can take seconds for a large one. The call blocks: run it before the runtime starts
    /// or on the blocking pool.
    ///
    /// # Errors
    ///
    /// [`Error::CreateDir`] or [`Error::Io`] when the directory or the file cannot be
    /// created or opened; [`Error::InUse`] when another process has it open;
    /// [`Error::NotTally`], [`Error::UnknownFormat`] or [`Error::EngineFormat`] for a
    /// file this build does not read (all [`Error::is_config`]); [`Error::Corrupt`] or
    /// [`Error::Engine`] when redb fails to open it.
    pub fn open(dir: &Path, config: EmbeddedConfig) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|source| Error::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join(FILE_NAME);
        check_signature(&path)?;
        let repairing = Arc::new(AtomicBool::new(false));
        let mut builder = redb::Database::builder();
        builder.set_cache_size(config.cache_bytes);
        {
            let (path, repairing) = (path.clone(), Arc::clone(&repairing));
            builder.set_repair_callback(move |session| {
                if !repairing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        path = %path.display(),
                        "the database was not closed cleanly (the process was killed or the machine lost power); repairing it before opening"
                    );
                }
                tracing::debug!(progress = session.progress(), "repairing the database");
            });
        }
        // redb trusts a file it closed cleanly and may panic on one damaged since (its
        // docs say so): that is a corrupt file, not a bug of ours, so it becomes an error
        // naming the file rather than a crash at start-up.
        let db = match std::panic::catch_unwind(AssertUnwindSafe(|| builder.create(&path))) {
            Ok(Ok(db)) => db,
            Ok(Err(e)) => return Err(open_error(dir, &path, e)),
            Err(panic) => {
                return Err(Error::Corrupt {
                    detail: format!("redb panicked opening it: {}", panic_message(&*panic)),
                    path,
                });
            }
        };
        let repaired = repairing.load(Ordering::Relaxed);
        if repaired {
            tracing::warn!(
                path = %path.display(),
                "repaired the database: it holds every transaction committed before the crash"
            );
        }
        layout::init_or_check(&db, &path)?;
        tracing::info!(path = %path.display(), cache_bytes = config.cache_bytes, "embedded store ready");
        Ok(Self {
            shared: Arc::new(Shared {
                db,
                path,
                repaired,
                health: Mutex::new(Health {
                    up: true,
                    since: SystemTime::now(),
                }),
            }),
            layout: Layout::Counters,
        })
    }

    /// A store over the same database with another layout, e.g. the request statistics
    /// beside the visit counters.
    pub fn with_layout(&self, layout: Layout) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            layout,
        }
    }

    /// The request statistics' view of the same database: `with_layout(Layout::Ranked)`.
    pub fn ranked(&self) -> Self {
        self.with_layout(Layout::Ranked)
    }

    /// This handle's layout.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The database file (`{dir}/tally.redb`).
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Whether [`EmbeddedStore::open`] found the file not closed cleanly and repaired it.
    pub fn was_repaired(&self) -> bool {
        self.shared.repaired
    }

    /// [`Store::apply`] with this crate's error type.
    ///
    /// # Errors
    ///
    /// [`Error::TotalTooLarge`] naming the first key whose total would pass
    /// [`crate::MAX_TOTAL`]: such keys are left as they are and every other key is
    /// applied (see [`EmbeddedStore::apply_checked`]). Otherwise as `apply_checked`.
    pub async fn apply(&self, shard: ShardId, batch: &Batch) -> Result<Vec<u64>> {
        let applied = self.apply_checked(shard, batch).await?;
        match applied.rejected.into_iter().next() {
            None => Ok(applied.totals),
            Some(rejected) => Err(Error::TotalTooLarge {
                stored_as: rejected.stored_as,
                found: rejected.found,
            }),
        }
    }

    /// [`Store::apply_checked`] with this crate's error type: in one write transaction, a
    /// batch whose sequence is above its instance's mark is applied and the mark moved;
    /// any other answers the current totals and writes nothing. Returns once the commit
    /// is durable.
    ///
    /// Values are typed `u64` in the file, so a stored value is always a count; the one
    /// key rejected is one whose total would pass [`crate::MAX_TOTAL`] (or `u64`): it is
    /// left as it is and reported (its total 0), as tally-redis reports it, and the rest
    /// of the batch is applied.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidBatch`] when a key appears twice; [`Error::NoSuchShard`];
    /// [`Error::Engine`] when the transaction fails (nothing is applied);
    /// [`Error::Corrupt`] when the ranking tables contradict the values.
    pub async fn apply_checked(&self, shard: ShardId, batch: &Batch) -> Result<Applied> {
        self.check_shard(shard)?;
        let span = tracing::debug_span!(
            "embedded_apply",
            layout = %self.layout,
            seq = batch.id.seq,
            batch_len = batch.deltas.len()
        );
        let layout = self.layout;
        let batch = batch.clone();
        let outcome = self
            .blocking("apply", move |shared| {
                txn::apply(&shared.db, layout, shard, &batch, &shared.path)
            })
            .instrument(span)
            .await?;
        if outcome.replayed {
            tracing::debug!(
                layout = %self.layout,
                mark = outcome.mark,
                "batch already applied (a retry after a lost reply); answered current totals"
            );
        }
        Ok(outcome.applied)
    }

    /// [`Store::get`] with this crate's error type: the values and the mark in one read
    /// transaction.
    ///
    /// # Errors
    ///
    /// [`Error::NoSuchShard`]; [`Error::Engine`].
    pub async fn get(
        &self,
        shard: ShardId,
        instance: InstanceId,
        keys: &[&str],
    ) -> Result<StoredValues> {
        self.check_shard(shard)?;
        let layout = self.layout;
        let keys: Vec<String> = keys.iter().map(|key| (*key).to_owned()).collect();
        self.blocking("get", move |shared| {
            txn::read(&shared.db, layout, shard, instance, &keys)
        })
        .await
    }

    /// [`Store::reset`] with this crate's error type: removes `key`, and in the
    /// [`Layout::Counters`] layout its sketch, in one write transaction (so ordered with
    /// batches and sketch adds).
    ///
    /// # Errors
    ///
    /// As [`EmbeddedStore::get`], and [`Error::Corrupt`] as for `apply_checked`.
    pub async fn reset(&self, shard: ShardId, key: &str) -> Result<()> {
        self.check_shard(shard)?;
        let layout = self.layout;
        let key = key.to_owned();
        self.blocking("reset", move |shared| txn::reset(&shared.db, layout, &key))
            .await
    }

    /// Removes the sub-keys (`{key}\u{1f}{sub}`, see [`tally_counter::routing_key`]) of the
    /// counters whose sub part sorts before `cutoff` in byte order: a page's day counts
    /// (`page\u{1f}2026-12-01`) before a date, as `DAILY_RETENTION_DAYS` wants, and their
    /// sketches. One scan of the counters and one of the sketches in one write transaction
    /// (which batches wait behind): run it now and then, not per request. Returns how many
    /// counts were removed (the sketches removed beside them are not counted).
    ///
    /// # Errors
    ///
    /// [`Error::Engine`], and the storage errors of a write.
    pub async fn remove_subkeys_before(&self, cutoff: &str) -> Result<u64> {
        let cutoff = cutoff.to_owned();
        self.blocking("remove_subkeys_before", move |shared| {
            txn::remove_subkeys_before(&shared.db, &cutoff)
        })
        .await
    }

    /// [`Store::sketch`] with this crate's error type: adds each of `adds`' members to its
    /// key's sketch (a [`tally_counter::hll::HyperLogLog`] in the `visits_sketches`
    /// table) in one write transaction, then estimates each key of `estimate`, in order
    /// (0 for a key never added to), as that transaction left them. Returns once the
    /// commit is durable. With no adds it is one read transaction; when every member was
    /// in its sketch already (a retried add) nothing is written.
    ///
    /// # Errors
    ///
    /// [`Error::WrongLayout`] unless the layout is [`Layout::Counters`];
    /// [`Error::NoSuchShard`]; [`Error::Engine`] when the transaction fails (nothing is
    /// added); [`Error::Corrupt`] when a stored sketch cannot be read.
    pub async fn sketch(
        &self,
        shard: ShardId,
        adds: &[SketchAdd<'_>],
        estimate: &[&str],
    ) -> Result<Vec<u64>> {
        if self.layout != Layout::Counters {
            return Err(Error::WrongLayout {
                op: "sketch",
                needed: Layout::Counters,
                actual: self.layout,
            });
        }
        self.check_shard(shard)?;
        let span = tracing::debug_span!(
            "embedded_sketch",
            adds = adds.len(),
            estimates = estimate.len()
        );
        let adds: Vec<txn::OwnedAdd> = adds
            .iter()
            .map(|add| {
                let members = add.members.iter().map(|member| member.to_vec()).collect();
                (add.key.to_owned(), members)
            })
            .collect();
        let estimate: Vec<String> = estimate.iter().map(|key| (*key).to_owned()).collect();
        self.blocking("sketch", move |shared| {
            txn::sketch(&shared.db, &adds, &estimate)
        })
        .instrument(span)
        .await
    }

    /// Number of keys this layout holds.
    ///
    /// # Errors
    ///
    /// [`Error::Engine`].
    pub async fn len(&self) -> Result<u64> {
        let layout = self.layout;
        self.blocking("len", move |shared| txn::len(&shared.db, layout))
            .await
    }

    /// The `limit` keys with the highest counts: count descending, then key ascending
    /// (byte order), read from the ranking index (no scan, no sort).
    ///
    /// # Errors
    ///
    /// [`Error::WrongLayout`] unless the layout is [`Layout::Ranked`]; as
    /// [`EmbeddedStore::get`].
    pub async fn top(&self, shard: ShardId, limit: usize) -> Result<Vec<(String, u64)>> {
        self.require_ranked("top")?;
        self.check_shard(shard)?;
        self.blocking("top", move |shared| txn::top(&shared.db, limit))
            .await
    }

    /// For each of `thresholds`, how many keys count at least that much, in one read
    /// transaction, from the runs table (a bounded number of reads, whatever the number of
    /// keys).
    ///
    /// # Errors
    ///
    /// As [`EmbeddedStore::top`].
    pub async fn count_at_least(&self, shard: ShardId, thresholds: &[u64]) -> Result<Vec<u64>> {
        self.require_ranked("count_at_least")?;
        self.check_shard(shard)?;
        let thresholds = thresholds.to_vec();
        self.blocking("count_at_least", move |shared| {
            txn::count_at_least(&shared.db, &thresholds)
        })
        .await
    }

    /// The keys around one page of the ranking, in one read transaction (see
    /// [`tally_counter::Window`]): how many count more than `high` and less than `low`,
    /// every key strictly between, and the smallest keys at `high` and at `low`.
    ///
    /// # Errors
    ///
    /// As [`EmbeddedStore::top`].
    pub async fn window(&self, shard: ShardId, window: Window) -> Result<WindowRead> {
        self.require_ranked("window")?;
        self.check_shard(shard)?;
        self.blocking("window", move |shared| txn::window(&shared.db, window))
            .await
    }

    /// Removes the high-water marks, of both layouts, last written more than `older_than`
    /// ago; returns how many. Nothing sweeps them otherwise.
    ///
    /// A mark only matters while a batch of its instance may still be retried, and only
    /// the process holding the file writes to it, so every mark left by an earlier
    /// process is dead. They are small (one per counter per process start), so sweeping
    /// is housekeeping; `older_than` must still outlast any batch of this process waiting
    /// to be retried, or that batch is applied twice.
    ///
    /// # Errors
    ///
    /// [`Error::Engine`].
    pub async fn sweep_marks(&self, older_than: Duration) -> Result<u64> {
        let age = u64::try_from(older_than.as_millis()).unwrap_or(u64::MAX);
        let cutoff = txn::unix_ms().saturating_sub(age);
        let removed = self
            .blocking("sweep_marks", move |shared| {
                txn::sweep_marks(&shared.db, cutoff)
            })
            .await?;
        if removed > 0 {
            tracing::info!(removed, ?older_than, "removed old high-water marks");
        }
        Ok(removed)
    }

    /// Runs `work` on tokio's blocking pool, names its failure with the file and `op`, and
    /// records the shard's health from it.
    async fn blocking<T, F>(&self, op: &'static str, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Shared) -> Result<T, TxError> + Send + 'static,
    {
        let shared = Arc::clone(&self.shared);
        let task = tokio::task::spawn_blocking(move || {
            let result = work(&shared).map_err(|e| e.into_error(&shared.path, op));
            shared.record(&result);
            result
        });
        match task.await {
            Ok(result) => result,
            // A panic inside a transaction is the caller's to see, as if it ran inline.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(Error::Cancelled {
                path: self.shared.path.clone(),
                op,
            }),
        }
    }

    fn check_shard(&self, shard: ShardId) -> Result<()> {
        if shard == 0 {
            Ok(())
        } else {
            Err(Error::NoSuchShard { shard })
        }
    }

    fn require_ranked(&self, op: &'static str) -> Result<()> {
        if self.layout == Layout::Ranked {
            Ok(())
        } else {
            Err(Error::WrongLayout {
                op,
                needed: Layout::Ranked,
                actual: self.layout,
            })
        }
    }
}

impl Shared {
    fn health(&self) -> MutexGuard<'_, Health> {
        // Two plain fields, each write leaves them whole: a panic elsewhere cannot leave
        // them half-updated.
        self.health.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The shard is down from a failing transaction until one succeeds. redb refuses
    /// every write after an I/O error until the file is opened again, so a store whose
    /// disk failed stays down, and says so, until the process restarts.
    fn record<T>(&self, result: &Result<T>) {
        let up = match result {
            Ok(_) => true,
            Err(e) if e.is_storage() => false,
            Err(_) => return,
        };
        let mut health = self.health();
        if health.up != up {
            health.up = up;
            health.since = SystemTime::now();
            drop(health);
            match result {
                Ok(_) => tracing::info!(path = %self.path.display(), "embedded store is up again"),
                Err(e) => tracing::error!(
                    path = %self.path.display(),
                    error.message = %e,
                    error.cause_chain = ?e,
                    "embedded store is down: a transaction failed"
                ),
            }
        }
    }
}

/// Refuses an existing, non-empty file that does not start with redb's signature (an
/// empty one is initialised by redb).
fn check_signature(path: &Path) -> Result<()> {
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(Error::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    let mut start = Vec::with_capacity(REDB_SIGNATURE.len());
    (&mut file)
        .take(REDB_SIGNATURE.len() as u64)
        .read_to_end(&mut start)
        .map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
    if start.is_empty() || start == REDB_SIGNATURE {
        return Ok(());
    }
    let reason = if start.iter().all(|byte| *byte == 0) {
        // redb writes its signature last when it creates a file.
        "it does not start with redb's signature but with zeros; if a tally process was killed while creating it, it holds no counts and can be removed"
    } else {
        "it is not a redb database (it does not start with redb's signature)"
    };
    Err(Error::NotTally {
        path: path.to_owned(),
        reason: reason.to_owned(),
    })
}

fn open_error(dir: &Path, path: &Path, error: redb::DatabaseError) -> Error {
    match error {
        redb::DatabaseError::DatabaseAlreadyOpen | redb::DatabaseError::LockProtocolMismatch => {
            Error::InUse {
                path: dir.to_owned(),
            }
        }
        redb::DatabaseError::UpgradeRequired(version) => Error::EngineFormat {
            path: path.to_owned(),
            version,
        },
        redb::DatabaseError::Storage(redb::StorageError::Io(source)) => Error::Io {
            path: path.to_owned(),
            source,
        },
        redb::DatabaseError::Storage(redb::StorageError::Corrupted(detail)) => Error::Corrupt {
            path: path.to_owned(),
            detail,
        },
        other => Error::Engine {
            path: path.to_owned(),
            op: "open",
            source: Box::new(other.into()),
        },
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

impl Store for EmbeddedStore {
    fn shard_count(&self) -> usize {
        1
    }

    fn shard_of(&self, _key: &str) -> ShardId {
        0
    }

    fn shard_name(&self, _shard: ShardId) -> &str {
        SHARD_NAME
    }

    async fn apply(&self, shard: ShardId, batch: &Batch) -> Result<Vec<u64>, StoreError> {
        Ok(EmbeddedStore::apply(self, shard, batch).await?)
    }

    async fn apply_checked(&self, shard: ShardId, batch: &Batch) -> Result<Applied, StoreError> {
        Ok(EmbeddedStore::apply_checked(self, shard, batch).await?)
    }

    async fn get(
        &self,
        shard: ShardId,
        instance: InstanceId,
        keys: &[&str],
    ) -> Result<StoredValues, StoreError> {
        Ok(EmbeddedStore::get(self, shard, instance, keys).await?)
    }

    async fn reset(&self, shard: ShardId, key: &str) -> Result<(), StoreError> {
        Ok(EmbeddedStore::reset(self, shard, key).await?)
    }

    /// Sketches are kept beside the visit counters ([`Layout::Counters`]), not the
    /// request statistics.
    fn keeps_sketches(&self) -> bool {
        self.layout == Layout::Counters
    }

    async fn sketch(
        &self,
        shard: ShardId,
        adds: &[SketchAdd<'_>],
        estimate: &[&str],
    ) -> Result<Vec<u64>, StoreError> {
        Ok(EmbeddedStore::sketch(self, shard, adds, estimate).await?)
    }

    fn health(&self) -> Vec<ShardHealth> {
        let health = self.shared.health();
        vec![ShardHealth {
            name: SHARD_NAME.to_owned(),
            up: health.up,
            since: health.since,
        }]
    }

    fn shard_up(&self, _shard: ShardId) -> bool {
        self.shared.health().up
    }
}

impl RankedStore for EmbeddedStore {
    async fn top(&self, shard: ShardId, limit: usize) -> Result<Vec<(String, u64)>, StoreError> {
        Ok(EmbeddedStore::top(self, shard, limit).await?)
    }

    fn serves_windows(&self) -> bool {
        self.layout == Layout::Ranked
    }

    async fn count_at_least(
        &self,
        shard: ShardId,
        thresholds: &[u64],
    ) -> Result<Vec<u64>, StoreError> {
        Ok(EmbeddedStore::count_at_least(self, shard, thresholds).await?)
    }

    async fn window(&self, shard: ShardId, window: Window) -> Result<WindowRead, StoreError> {
        Ok(EmbeddedStore::window(self, shard, window).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_redb_file_starts_with_the_signature_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.redb");
        let db = redb::Database::create(&path).unwrap();
        drop(db);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes[..REDB_SIGNATURE.len()], REDB_SIGNATURE);
    }

    #[test]
    fn panic_messages_are_kept() {
        let panic = std::panic::catch_unwind(|| panic!("bad page {}", 7)).unwrap_err();
        assert_eq!(panic_message(&*panic), "bad page 7");
    }
}
