//! The transactions: each store operation as one redb transaction, synchronous, run by
//! `store.rs` on tokio's blocking pool.
//!
//! Invariants every write transaction keeps, so a reader sees them in any snapshot:
//! - A batch is applied at most once: it is applied only if its sequence is above its
//!   instance's high-water mark, and the mark moves in the same transaction as the values.
//! - In the ranked layout, `urls_ranking` holds exactly one entry `(u64::MAX - count, key)`
//!   per key of `urls`, and `urls_runs` counts them (see `runs.rs`); a count is never 0
//!   (a reset removes the key).
//! - No count passes [`MAX_TOTAL`].
//! - A key's sketch goes with its count: a reset removes both in one transaction, and so
//!   does the sweep of old sub-keys.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{ReadableDatabase as _, ReadableTable, ReadableTableMetadata as _, Table};
use tally_counter::hll::HyperLogLog;
use tally_counter::{
    Applied, Batch, InstanceId, RejectedKey, ShardId, StoredValues, Window, WindowRead,
};

use crate::MAX_TOTAL;
use crate::error::Error;
use crate::layout::{Layout, URLS_RANKING, URLS_RUNS, VISITS_SKETCHES, mark_key};
use crate::runs::{RunChanges, keys_at_least};

/// Why a transaction failed, before `store.rs` names the file and the operation.
#[derive(Debug)]
pub(crate) enum TxError {
    /// redb failed; a write transaction that fails applies nothing.
    Engine(redb::Error),
    /// The batch breaks its contract (a key twice); nothing was applied.
    InvalidBatch(String),
    /// The tables contradict each other (a file altered outside tally).
    Inconsistent(String),
}

impl TxError {
    /// This crate's error for a failure of `op` on the file at `path`.
    pub(crate) fn into_error(self, path: &Path, op: &'static str) -> Error {
        match self {
            Self::Engine(source) => Error::Engine {
                path: path.to_owned(),
                op,
                source: Box::new(source),
            },
            Self::InvalidBatch(detail) => Error::InvalidBatch { detail },
            Self::Inconsistent(detail) => Error::Corrupt {
                path: path.to_owned(),
                detail,
            },
        }
    }
}

macro_rules! engine_errors {
    ($($error:ty),*) => {$(
        impl From<$error> for TxError {
            fn from(error: $error) -> Self {
                Self::Engine(error.into())
            }
        }
    )*};
}

engine_errors!(
    redb::Error,
    redb::StorageError,
    redb::TableError,
    redb::TransactionError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// A write transaction whose commit returns once it is on disk. That is redb's default;
/// set here so the store's promise does not rest on a default.
pub(crate) fn begin_write(db: &redb::Database) -> Result<redb::WriteTransaction, TxError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(redb::Durability::Immediate)?;
    Ok(txn)
}

/// Milliseconds since the Unix epoch (0 for a clock before it), the time a mark records.
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

/// The ranking key of `count`: counts descending sort as ascending `u64::MAX - count`.
fn rank(count: u64) -> u64 {
    u64::MAX - count
}

/// What [`apply`] did: the answer, and whether the batch was a replay.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) applied: Applied,
    pub(crate) replayed: bool,
    pub(crate) mark: u64,
}

/// Applies `batch` in one write transaction, at most once (see the module's invariants);
/// returns after the commit is durable.
pub(crate) fn apply(
    db: &redb::Database,
    layout: Layout,
    shard: ShardId,
    batch: &Batch,
    path: &Path,
) -> Result<Outcome, TxError> {
    let txn = begin_write(db)?;
    let outcome = {
        let mark_key = mark_key(batch.id.instance, shard);
        let mut marks = txn.open_table(layout.marks())?;
        let mark = marks.get(mark_key.as_str())?.map_or(0, |g| g.value().0);
        let mut values = txn.open_table(layout.values())?;
        if batch.id.seq <= mark {
            // A retry after a lost reply: the current totals, nothing written.
            let totals = batch
                .deltas
                .iter()
                .map(|(key, _)| value_of(&values, key))
                .collect::<Result<_, _>>()?;
            Outcome {
                applied: Applied {
                    totals,
                    rejected: Vec::new(),
                },
                replayed: true,
                mark,
            }
        } else {
            // Totals are computed from the values read, so a key listed twice would lose
            // a delta.
            let mut seen = HashSet::with_capacity(batch.deltas.len());
            if let Some((key, _)) = batch.deltas.iter().find(|(key, _)| !seen.insert(&**key)) {
                return Err(TxError::InvalidBatch(format!(
                    "key '{key}' appears twice; a batch names each key once"
                )));
            }
            let mut ranked = match layout {
                Layout::Counters => None,
                Layout::Ranked => Some((txn.open_table(URLS_RANKING)?, RunChanges::default())),
            };
            let mut applied = Applied::default();
            for (index, (key, delta)) in batch.deltas.iter().enumerate() {
                let current = value_of(&values, key)?;
                let Some(total) = current.checked_add(*delta).filter(|t| *t <= MAX_TOTAL) else {
                    applied.rejected.push(RejectedKey {
                        index,
                        stored_as: layout.stored_as(key, path),
                        found: format!(
                            "the value {current}, which +{delta} would take past 2^53-1"
                        ),
                    });
                    applied.totals.push(0);
                    continue;
                };
                if total != current {
                    values.insert(&**key, total)?;
                    if let Some((ranking, runs)) = &mut ranked {
                        move_in_ranking(ranking, runs, key, current, total)?;
                    }
                }
                applied.totals.push(total);
            }
            if let Some((_, runs)) = ranked {
                runs.write(&mut txn.open_table(URLS_RUNS)?)?;
            }
            // The mark carries the time of this write, so marks of instances that stopped
            // writing can be swept (`EmbeddedStore::sweep_marks`).
            marks.insert(mark_key.as_str(), (batch.id.seq, unix_ms()))?;
            Outcome {
                applied,
                replayed: false,
                mark: batch.id.seq,
            }
        }
    };
    if outcome.replayed {
        txn.abort()?;
    } else {
        txn.commit()?;
    }
    Ok(outcome)
}

/// Moves `key` from `old` to `new` (0 = absent) in the ranking index and the runs.
fn move_in_ranking(
    ranking: &mut Table<'_, (u64, &'static str), ()>,
    runs: &mut RunChanges,
    key: &str,
    old: u64,
    new: u64,
) -> Result<(), TxError> {
    if old > 0 && ranking.remove((rank(old), key))?.is_none() {
        return Err(TxError::Inconsistent(format!(
            "'{key}' counts {old} but is missing from the ranking index"
        )));
    }
    if new > 0 {
        ranking.insert((rank(new), key), ())?;
    }
    runs.moved(old, new);
    Ok(())
}

fn value_of(values: &impl ReadableTable<&'static str, u64>, key: &str) -> Result<u64, TxError> {
    Ok(values.get(key)?.map_or(0, |guard| guard.value()))
}

/// The values of `keys` and `instance`'s mark for `shard`, in one read transaction.
pub(crate) fn read(
    db: &redb::Database,
    layout: Layout,
    shard: ShardId,
    instance: InstanceId,
    keys: &[String],
) -> Result<StoredValues, TxError> {
    let txn = db.begin_read()?;
    let marks = txn.open_table(layout.marks())?;
    let values = txn.open_table(layout.values())?;
    let applied_seq = marks
        .get(mark_key(instance, shard).as_str())?
        .map_or(0, |g| g.value().0);
    Ok(StoredValues {
        values: keys
            .iter()
            .map(|key| value_of(&values, key))
            .collect::<Result<_, _>>()?,
        applied_seq,
    })
}

/// Members to add to one key's sketch, owned so they can go to the blocking pool.
pub(crate) type OwnedAdd = (String, Vec<Vec<u8>>);

/// Adds each of `adds`' members to its key's sketch in one write transaction (none when
/// `adds` is empty, or when no sketch changed), then estimates each of `estimate` as the
/// transaction left it; returns after the commit is durable.
pub(crate) fn sketch(
    db: &redb::Database,
    adds: &[OwnedAdd],
    estimate: &[String],
) -> Result<Vec<u64>, TxError> {
    if adds.is_empty() {
        let txn = db.begin_read()?;
        let table = match txn.open_table(VISITS_SKETCHES) {
            Ok(table) => table,
            // A file from before sketches: none kept yet.
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(vec![0; estimate.len()]),
            Err(e) => return Err(e.into()),
        };
        return estimate
            .iter()
            .map(|key| Ok(sketch_of(&table, key)?.map_or(0, |s| s.estimate())))
            .collect();
    }
    let txn = begin_write(db)?;
    let (estimates, changed) = {
        let mut table = txn.open_table(VISITS_SKETCHES)?;
        // Each sketch touched is decoded once and written once, however many adds and
        // estimates name it.
        let mut touched: HashMap<&str, (HyperLogLog, bool)> = HashMap::new();
        for (key, members) in adds {
            let (sketch, changed) = match touched.entry(key.as_str()) {
                std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
                std::collections::hash_map::Entry::Vacant(entry) => {
                    entry.insert((sketch_of(&table, key)?.unwrap_or_default(), false))
                }
            };
            for member in members {
                *changed |= sketch.insert(member);
            }
        }
        let mut changed = false;
        for (key, (sketch, key_changed)) in &touched {
            if *key_changed {
                table.insert(*key, sketch.to_bytes().as_slice())?;
                changed = true;
            }
        }
        let estimates = estimate
            .iter()
            .map(|key| match touched.get(key.as_str()) {
                Some((sketch, _)) => Ok(sketch.estimate()),
                None => Ok(sketch_of(&table, key)?.map_or(0, |s| s.estimate())),
            })
            .collect::<Result<Vec<u64>, TxError>>()?;
        (estimates, changed)
    };
    if changed {
        txn.commit()?;
    } else {
        // Every member was there already (a retried add): nothing to write or sync.
        txn.abort()?;
    }
    Ok(estimates)
}

/// The stored sketch of `key`, if any.
fn sketch_of(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<HyperLogLog>, TxError> {
    let Some(bytes) = table.get(key)? else {
        return Ok(None);
    };
    HyperLogLog::from_bytes(bytes.value())
        .map(Some)
        .map_err(|e| {
            TxError::Inconsistent(format!(
                "the sketch of '{key}' in table visits_sketches: {e}"
            ))
        })
}

/// Removes `key` (its count back to zero, and its sketch) in one write transaction.
pub(crate) fn reset(db: &redb::Database, layout: Layout, key: &str) -> Result<(), TxError> {
    let txn = begin_write(db)?;
    {
        if layout == Layout::Counters {
            txn.open_table(VISITS_SKETCHES)?.remove(key)?;
        }
        let mut values = txn.open_table(layout.values())?;
        let old = values.remove(key)?.map_or(0, |guard| guard.value());
        if layout == Layout::Ranked && old > 0 {
            let mut runs = RunChanges::default();
            move_in_ranking(&mut txn.open_table(URLS_RANKING)?, &mut runs, key, old, 0)?;
            runs.write(&mut txn.open_table(URLS_RUNS)?)?;
        }
    }
    txn.commit()?;
    Ok(())
}

/// Removes the sub-keys of [`Layout::Counters`] (`{key}\u{1f}{sub}`) whose sub part sorts
/// before `cutoff` (byte order), their counts and their sketches: one scan of each table,
/// in one write transaction. Returns how many counts were removed.
pub(crate) fn remove_subkeys_before(db: &redb::Database, cutoff: &str) -> Result<u64, TxError> {
    let keep = |key: &str| tally_counter::subkey(key).is_none_or(|sub| sub >= cutoff);
    let txn = begin_write(db)?;
    let (removed, sketches_removed) = {
        let mut values = txn.open_table(Layout::Counters.values())?;
        let before = values.len()?;
        values.retain(|key, _| keep(key))?;
        let mut sketches = txn.open_table(VISITS_SKETCHES)?;
        let sketches_before = sketches.len()?;
        sketches.retain(|key, _| keep(key))?;
        (before - values.len()?, sketches_before - sketches.len()?)
    };
    if removed == 0 && sketches_removed == 0 {
        txn.abort()?;
    } else {
        txn.commit()?;
    }
    Ok(removed)
}

/// Number of keys of `layout`.
pub(crate) fn len(db: &redb::Database, layout: Layout) -> Result<u64, TxError> {
    let txn = db.begin_read()?;
    Ok(txn.open_table(layout.values())?.len()?)
}

/// The `limit` first keys of the ranking, in ranking order.
pub(crate) fn top(db: &redb::Database, limit: usize) -> Result<Vec<(String, u64)>, TxError> {
    let txn = db.begin_read()?;
    let ranking = txn.open_table(URLS_RANKING)?;
    let top = ranking
        .iter()?
        .take(limit)
        .map(|entry| Ok(unrank(entry?.0.value())))
        .collect::<Result<Vec<_>, TxError>>()?;
    debug_assert!(top.is_sorted_by(|a, b| tally_counter::rank_order(a, b).is_lt()));
    Ok(top)
}

fn unrank((rank, key): (u64, &str)) -> (String, u64) {
    (key.to_owned(), u64::MAX - rank)
}

/// For each threshold, how many keys count at least that much, in one read transaction.
pub(crate) fn count_at_least(db: &redb::Database, thresholds: &[u64]) -> Result<Vec<u64>, TxError> {
    let txn = db.begin_read()?;
    let runs = txn.open_table(URLS_RUNS)?;
    let keys = txn.open_table(URLS_RANKING)?.len()?;
    thresholds
        .iter()
        .map(|&threshold| match threshold {
            // Every key counts at least 1: the table's length, kept by redb.
            0 | 1 => Ok(keys),
            _ => keys_at_least(&runs, threshold),
        })
        .collect()
}

/// The keys around one page of the ranking, in one read transaction (see [`Window`]).
pub(crate) fn window(db: &redb::Database, window: Window) -> Result<WindowRead, TxError> {
    let Window {
        high,
        low,
        high_run,
        low_run,
    } = window;
    let low = low.min(high);
    let txn = db.begin_read()?;
    let ranking = txn.open_table(URLS_RANKING)?;
    let runs = txn.open_table(URLS_RUNS)?;
    let keys = ranking.len()?;
    let at_least_low = if low <= 1 {
        keys
    } else {
        keys_at_least(&runs, low)?
    };
    let between = if low < high {
        // Ranks strictly between those of `high` and `low`; `high` is at least 1 here.
        ranking
            .range((rank(high) + 1, "")..(rank(low), ""))?
            .map(|entry| Ok(unrank(entry?.0.value())))
            .collect::<Result<_, TxError>>()?
    } else {
        Vec::new()
    };
    Ok(WindowRead {
        above: keys_at_least(&runs, high.saturating_add(1))?,
        below: keys.saturating_sub(at_least_low),
        at_high: run_of(&ranking, high, high_run)?,
        between,
        at_low: if low < high {
            run_of(&ranking, low, low_run)?
        } else {
            Vec::new()
        },
    })
}

/// The first `limit` keys (key ascending) counting exactly `count`.
fn run_of(
    ranking: &impl ReadableTable<(u64, &'static str), ()>,
    count: u64,
    limit: usize,
) -> Result<Vec<(String, u64)>, TxError> {
    if count == 0 || limit == 0 {
        // No key counts 0: a reset removes it.
        return Ok(Vec::new());
    }
    ranking
        .range((rank(count), "")..(rank(count) + 1, ""))?
        .take(limit)
        .map(|entry| Ok(unrank(entry?.0.value())))
        .collect()
}

/// Removes the marks of every layout last written before `cutoff_ms`; how many.
pub(crate) fn sweep_marks(db: &redb::Database, cutoff_ms: u64) -> Result<u64, TxError> {
    let txn = begin_write(db)?;
    let mut removed = 0;
    for layout in Layout::ALL {
        let mut marks = txn.open_table(layout.marks())?;
        let before = marks.len()?;
        marks.retain(|_, (_, written_ms)| written_ms >= cutoff_ms)?;
        removed += before - marks.len()?;
    }
    if removed == 0 {
        txn.abort()?;
    } else {
        txn.commit()?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tally_counter::BatchId;

    use super::*;
    use crate::layout::memory_db;

    fn batch(seq: u64, deltas: &[(&str, u64)]) -> Batch {
        Batch {
            id: BatchId {
                instance: InstanceId::from_u64(1),
                seq,
            },
            deltas: deltas.iter().map(|(k, d)| (Arc::from(*k), *d)).collect(),
        }
    }

    /// The ranking index and the runs agree with the values table.
    fn assert_consistent(db: &redb::Database) {
        let txn = db.begin_read().unwrap();
        let values = txn.open_table(Layout::Ranked.values()).unwrap();
        let ranking = txn.open_table(URLS_RANKING).unwrap();
        let mut from_values: Vec<(String, u64)> = values
            .iter()
            .unwrap()
            .map(|e| {
                let (k, v) = e.unwrap();
                (k.value().to_owned(), v.value())
            })
            .collect();
        from_values.sort_by(tally_counter::rank_order);
        let from_ranking: Vec<(String, u64)> = ranking
            .iter()
            .unwrap()
            .map(|e| unrank(e.unwrap().0.value()))
            .collect();
        assert_eq!(from_ranking, from_values);
        let runs = txn.open_table(URLS_RUNS).unwrap();
        for t in [0, 1, 2, 3, 5, 8, 300, 1 << 20] {
            let want = from_values.iter().filter(|(_, v)| *v >= t).count() as u64;
            assert_eq!(keys_at_least(&runs, t).unwrap(), want, "at least {t}");
        }
    }

    #[test]
    fn ranked_writes_keep_index_and_runs_in_step() {
        let db = memory_db();
        let path = Path::new("memory");
        apply(
            &db,
            Layout::Ranked,
            0,
            &batch(1, &[("a", 1), ("b", 2)]),
            path,
        )
        .unwrap();
        apply(
            &db,
            Layout::Ranked,
            0,
            &batch(2, &[("a", 299), ("c", 2)]),
            path,
        )
        .unwrap();
        reset(&db, Layout::Ranked, "b").unwrap();
        reset(&db, Layout::Ranked, "never-written").unwrap();

        assert_consistent(&db);
        assert_eq!(
            top(&db, 10).unwrap(),
            [("a".to_owned(), 300), ("c".to_owned(), 2)]
        );
    }

    #[test]
    fn sub_keys_before_the_cutoff_are_removed_and_nothing_else() {
        let db = memory_db();
        let keys = [
            "p",
            "p\u{1f}2026-01-01",
            "p\u{1f}2026-06-01",
            "q\u{1f}2025-12-31",
        ];
        let deltas: Vec<(&str, u64)> = keys.iter().map(|k| (*k, 1)).collect();
        apply(
            &db,
            Layout::Counters,
            0,
            &batch(1, &deltas),
            Path::new("memory"),
        )
        .unwrap();
        apply(
            &db,
            Layout::Ranked,
            0,
            &batch(1, &[("u\u{1f}2020-01-01", 1)]),
            Path::new("memory"),
        )
        .unwrap();

        assert_eq!(remove_subkeys_before(&db, "2026-03-01").unwrap(), 2);
        assert_eq!(remove_subkeys_before(&db, "2026-03-01").unwrap(), 0);

        let left = |layout: Layout| -> Vec<String> {
            let txn = db.begin_read().unwrap();
            let table = txn.open_table(layout.values()).unwrap();
            table
                .iter()
                .unwrap()
                .map(|e| e.unwrap().0.value().to_owned())
                .collect()
        };
        assert_eq!(left(Layout::Counters), ["p", "p\u{1f}2026-06-01"]);
        assert_eq!(
            left(Layout::Ranked),
            ["u\u{1f}2020-01-01"],
            "only the counters"
        );
    }

    #[test]
    fn a_damaged_sketch_is_reported_not_replaced() {
        let db = memory_db();
        let txn = begin_write(&db).unwrap();
        txn.open_table(VISITS_SKETCHES)
            .unwrap()
            .insert("page", b"\x01\x07garbage".as_slice())
            .unwrap();
        txn.commit().unwrap();
        let adds = [("page".to_owned(), vec![b"v".to_vec()])];

        let added = sketch(&db, &adds, &[]);
        let read = sketch(&db, &[], &["page".to_owned()]);

        for result in [added, read] {
            assert!(
                matches!(&result, Err(TxError::Inconsistent(detail)) if detail.contains("'page'")),
                "{result:?}"
            );
        }
    }

    #[test]
    fn a_key_twice_in_a_batch_applies_nothing() {
        let db = memory_db();
        let result = apply(
            &db,
            Layout::Counters,
            0,
            &batch(1, &[("a", 1), ("a", 2)]),
            Path::new("memory"),
        );

        assert!(matches!(result, Err(TxError::InvalidBatch(_))));
        let read = read(
            &db,
            Layout::Counters,
            0,
            InstanceId::from_u64(1),
            &["a".into()],
        );
        assert_eq!(read.unwrap().applied_seq, 0, "the mark did not move");
    }

    #[test]
    fn windows_split_keys_around_two_counts() {
        let db = memory_db();
        let deltas: Vec<(String, u64)> =
            (0..40).map(|i| (format!("k{i:02}"), i / 10 + 1)).collect();
        let deltas: Vec<(&str, u64)> = deltas.iter().map(|(k, d)| (k.as_str(), *d)).collect();
        apply(
            &db,
            Layout::Ranked,
            0,
            &batch(1, &deltas),
            Path::new("memory"),
        )
        .unwrap();

        let read = window(
            &db,
            Window {
                high: 3,
                low: 1,
                high_run: 2,
                low_run: 3,
            },
        )
        .unwrap();

        assert_eq!(read.above, 10);
        assert_eq!(read.below, 0);
        let keys =
            |pairs: &[(String, u64)]| pairs.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
        assert_eq!(keys(&read.at_high), ["k20", "k21"]);
        assert_eq!(read.between.len(), 10);
        assert!(read.between.iter().all(|(_, v)| *v == 2));
        assert_eq!(keys(&read.at_low), ["k00", "k01", "k02"]);
        assert_eq!(count_at_least(&db, &[0, 2, 4, 5]).unwrap(), [40, 30, 10, 0]);
    }
}
