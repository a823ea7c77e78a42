//! The tables of the database file: which layout writes which, and the format version
//! that names them all.
//!
//! One file holds two independent stores, as one Redis node holds the visit counters and
//! the request-statistics sorted set: [`Layout::Counters`] (visits) and [`Layout::Ranked`]
//! (request statistics), each with its own values and its own high-water marks, so two
//! counters never share a sequence even if two instance ids collided.
//!
//! | table | key | value | layout |
//! |---|---|---|---|
//! | `tally_meta` | name | `format_version`, `created_unix_ms` | both |
//! | `visits` | key | count | counters |
//! | `visits_marks` | `{instance}:{shard}` | `(seq, unix ms)` | counters |
//! | `visits_sketches` | key | sketch (`HyperLogLog::to_bytes`) | counters |
//! | `urls` | key | count | ranked |
//! | `urls_ranking` | `(u64::MAX - count, key)` | `()` | ranked |
//! | `urls_runs` | `(level, count >> 8 * level)` | keys | ranked |
//! | `urls_marks` | `{instance}:{shard}` | `(seq, unix ms)` | ranked |
//!
//! `urls_ranking` orders the keys as [`tally_counter::rank_order`] does (count descending,
//! then key ascending, byte order), so the head of a ranking and any run of ties are range
//! reads. `urls_runs` counts the keys holding each count at seven resolutions (see
//! `runs.rs`), so "how many keys count at least `t`" costs a bounded number of reads
//! whatever the number of keys.
//!
//! `visits_sketches` holds the [`tally_counter::hll::HyperLogLog`] of every key visitors
//! were added to ([`tally_counter::Store::sketch`]), in the sketch's own versioned bytes.
//! Files written before sketches existed lack the table: it is created by the first write
//! that needs it, and a read finds no sketch there. A table added is no change to the
//! tables an older build reads, so the format version stays.

use std::fmt;
use std::path::Path;

use redb::{ReadableDatabase as _, TableDefinition, TableHandle as _};
use tally_counter::{InstanceId, ShardId};

use crate::error::{Error, Result};
use crate::txn::{TxError, begin_write, unix_ms};

/// The format version this build writes and reads, kept in the `tally_meta` table.
///
/// A change to any table's name, key or value bumps it; a build then migrates the older
/// versions it knows on open, and refuses a newer one ([`Error::UnknownFormat`]) rather
/// than misread it.
pub const FORMAT_VERSION: u64 = 1;

/// Largest total the store accepts: 2^53 - 1, the bound of `tally_redis::MAX_TOTAL`.
///
/// redb would hold any `u64`, but a count is only useful while every backend and every
/// client reads it exactly: Redis keeps scores as doubles and JSON readers parse numbers
/// as doubles, both exact up to here. A key whose total would pass it is left as it is and
/// reported, as tally-redis does, so moving between stores never changes what a count
/// can be.
pub const MAX_TOTAL: u64 = (1 << 53) - 1;

type Values = TableDefinition<'static, &'static str, u64>;
type Marks = TableDefinition<'static, &'static str, (u64, u64)>;
pub(crate) type Sketches = TableDefinition<'static, &'static str, &'static [u8]>;
pub(crate) type Ranking = TableDefinition<'static, (u64, &'static str), ()>;
pub(crate) type Runs = TableDefinition<'static, (u8, u64), u64>;

const META: TableDefinition<'static, &'static str, u64> = TableDefinition::new("tally_meta");
const FORMAT_KEY: &str = "format_version";
const CREATED_KEY: &str = "created_unix_ms";

const VISITS: Values = TableDefinition::new("visits");
const VISITS_MARKS: Marks = TableDefinition::new("visits_marks");
const URLS: Values = TableDefinition::new("urls");
const URLS_MARKS: Marks = TableDefinition::new("urls_marks");
pub(crate) const URLS_RANKING: Ranking = TableDefinition::new("urls_ranking");
pub(crate) const URLS_RUNS: Runs = TableDefinition::new("urls_runs");
pub(crate) const VISITS_SKETCHES: Sketches = TableDefinition::new("visits_sketches");

/// Which tables a store handle reads and writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Layout {
    /// Plain counters (visits), with sketches of their visitors: tables `visits`,
    /// `visits_marks` and `visits_sketches`.
    #[default]
    Counters,
    /// Counters with a ranking index (request statistics), readable ranked with
    /// [`tally_counter::RankedStore`]: tables `urls`, `urls_ranking`, `urls_runs` and
    /// `urls_marks`, written together in every transaction.
    Ranked,
}

impl Layout {
    /// Every layout, for work on all of them (initialising a file, sweeping marks).
    pub(crate) const ALL: [Layout; 2] = [Layout::Counters, Layout::Ranked];

    pub(crate) fn values(self) -> Values {
        match self {
            Self::Counters => VISITS,
            Self::Ranked => URLS,
        }
    }

    pub(crate) fn marks(self) -> Marks {
        match self {
            Self::Counters => VISITS_MARKS,
            Self::Ranked => URLS_MARKS,
        }
    }

    /// Where `key` is stored, for an operator: `'{key}' in table {table} of {file}`.
    pub fn stored_as(self, key: &str, path: &Path) -> String {
        format!(
            "'{key}' in table {} of {}",
            self.values().name(),
            path.display()
        )
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Counters => "counters",
            Self::Ranked => "ranked",
        })
    }
}

/// The key of `instance`'s high-water mark for `shard` in a marks table:
/// `{instance}:{shard}`, the instance as 16 hex digits, as tally-redis names its fields.
pub(crate) fn mark_key(instance: InstanceId, shard: ShardId) -> String {
    format!("{instance}:{shard}")
}

/// Makes a new file a tally database, or checks that an existing one is one this build
/// reads.
///
/// A file without any table is new (just created, or created by a process that died
/// before its first commit): every table is created with the format version, in one
/// transaction. A file with tables must have tally's metadata table and its version.
pub(crate) fn init_or_check(db: &redb::Database, path: &Path) -> Result<()> {
    let engine = |e: TxError| e.into_error(path, "open");
    let read = db.begin_read().map_err(|e| engine(e.into()))?;
    let empty = read
        .list_tables()
        .map_err(|e| engine(e.into()))?
        .next()
        .is_none();
    if empty {
        drop(read);
        create_tables(db).map_err(|e| e.into_error(path, "create the tables"))?;
        tracing::info!(path = %path.display(), format_version = FORMAT_VERSION, "created a new tally database");
        return Ok(());
    }
    let meta = read.open_table(META).map_err(|e| match e {
        redb::TableError::TableDoesNotExist(_) => Error::NotTally {
            path: path.to_owned(),
            reason: "a redb database without tally's metadata table (tally_meta); another program's database?".to_owned(),
        },
        redb::TableError::TableTypeMismatch { .. } => Error::NotTally {
            path: path.to_owned(),
            reason: "its table tally_meta is not tally's (other key or value types)".to_owned(),
        },
        other => engine(other.into()),
    })?;
    let version = meta
        .get(FORMAT_KEY)
        .map_err(|e| engine(e.into()))?
        .map(|guard| guard.value());
    match version {
        Some(FORMAT_VERSION) => Ok(()),
        Some(found) => Err(Error::UnknownFormat {
            path: path.to_owned(),
            found,
            supported: FORMAT_VERSION,
        }),
        None => Err(Error::NotTally {
            path: path.to_owned(),
            reason: format!("its table tally_meta has no {FORMAT_KEY}"),
        }),
    }
}

/// Creates every table and records the format version, in one transaction.
fn create_tables(db: &redb::Database) -> Result<(), TxError> {
    let txn = begin_write(db)?;
    {
        for layout in Layout::ALL {
            txn.open_table(layout.values())?;
            txn.open_table(layout.marks())?;
        }
        txn.open_table(URLS_RANKING)?;
        txn.open_table(URLS_RUNS)?;
        txn.open_table(VISITS_SKETCHES)?;
        let mut meta = txn.open_table(META)?;
        meta.insert(CREATED_KEY, unix_ms())?;
        meta.insert(FORMAT_KEY, FORMAT_VERSION)?;
    }
    txn.commit()?;
    Ok(())
}

/// A tally database in memory, for unit tests of the transactions.
#[cfg(test)]
pub(crate) fn memory_db() -> redb::Database {
    let db = redb::Database::builder()
        .create_with_backend(redb::backends::InMemoryBackend::new())
        .expect("an in-memory database");
    init_or_check(&db, Path::new("memory")).expect("tally's tables");
    db
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_are_keyed_like_redis_fields() {
        assert_eq!(mark_key(InstanceId::from_u64(42), 0), "000000000000002a:0");
    }

    #[test]
    fn layouts_write_apart() {
        assert_ne!(
            Layout::Counters.values().name(),
            Layout::Ranked.values().name()
        );
        assert_ne!(
            Layout::Counters.marks().name(),
            Layout::Ranked.marks().name()
        );
    }
}
