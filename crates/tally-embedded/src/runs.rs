//! The runs table: how many keys hold each count, so "how many keys count at least `t`"
//! ([`tally_counter::RankedStore::count_at_least`]) is answered without scanning the keys.
//!
//! A B-tree can range-read keys but cannot count a range without visiting it, and the
//! ranking search asks for counts like "at least 1", i.e. nearly every key. So the runs
//! table keeps, at [`LEVELS`] resolutions, how many keys fall in each bucket of counts:
//! entry `(level, b)` is the number of keys whose count `c` has `c >> (8 * level) == b`.
//! Level 0 is one bucket per count (the length of each run of ties); level 1 groups 256
//! counts, level 2 65,536, and so on; level 6 has at most 32 buckets, since a count never
//! passes [`crate::MAX_TOTAL`] (2^53 - 1).
//!
//! `[t, ∞)` is then the union of at most 255 level-0 buckets (from `t` up to the next
//! multiple of 256), at most 255 level-1 buckets, ..., and the level-6 buckets above: a
//! read of at most about 1,800 entries whatever the number of keys, and usually a few
//! dozen, since the table is sparse.
//!
//! Invariant, kept in the transaction of every write to the ranked values: for each level,
//! the entries sum to the number of keys, and no entry is 0 (an emptied bucket is removed).

use std::collections::BTreeMap;

use redb::{ReadableTable, Table};

use crate::txn::TxError;

/// Resolutions kept: bucket widths 1, 2^8, ..., 2^48.
pub(crate) const LEVELS: u8 = 7;

/// Bits of the count each level drops.
const BITS: u32 = 8;

/// Changes to the runs table gathered over one transaction, applied once per bucket.
#[derive(Debug, Default)]
pub(crate) struct RunChanges {
    changes: BTreeMap<(u8, u64), i64>,
}

impl RunChanges {
    /// Records that one key's count moved from `old` to `new` (0 = absent).
    pub(crate) fn moved(&mut self, old: u64, new: u64) {
        for level in 0..LEVELS {
            let shift = BITS * u32::from(level);
            let (from, to) = (old >> shift, new >> shift);
            if old > 0 && new > 0 && from == to {
                // Same bucket here, and so at every coarser level.
                break;
            }
            if old > 0 {
                *self.changes.entry((level, from)).or_default() -= 1;
            }
            if new > 0 {
                *self.changes.entry((level, to)).or_default() += 1;
            }
        }
    }

    /// Writes the gathered changes into `runs`.
    pub(crate) fn write(self, runs: &mut Table<'_, (u8, u64), u64>) -> Result<(), TxError> {
        for (bucket, change) in self.changes {
            if change == 0 {
                continue;
            }
            let current = runs.get(bucket)?.map_or(0, |guard| guard.value());
            let updated = i128::from(current) + i128::from(change);
            match u64::try_from(updated) {
                Ok(0) => {
                    runs.remove(bucket)?;
                }
                Ok(keys) => {
                    runs.insert(bucket, keys)?;
                }
                Err(_) => {
                    return Err(TxError::Inconsistent(format!(
                        "the runs table holds {current} key(s) in bucket {bucket:?}, fewer than the {} removed from it",
                        -change
                    )));
                }
            }
        }
        Ok(())
    }
}

/// How many keys count at least `threshold`, from the runs table.
pub(crate) fn keys_at_least(
    runs: &impl ReadableTable<(u8, u64), u64>,
    threshold: u64,
) -> Result<u64, TxError> {
    if threshold > crate::MAX_TOTAL {
        return Ok(0);
    }
    let mut keys = 0;
    // The lowest bucket still to count, at the current level.
    let mut from = threshold;
    for level in 0..LEVELS {
        let entries = if level == LEVELS - 1 {
            runs.range((level, from)..=(level, u64::MAX))?
        } else {
            // Up to the first bucket the next level covers whole.
            let next = from.div_ceil(1 << BITS);
            let until = next << BITS;
            let entries = runs.range((level, from)..(level, until))?;
            from = next;
            entries
        };
        for entry in entries {
            keys += entry?.1.value();
        }
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use redb::ReadableTableMetadata as _;

    use super::*;
    use crate::layout::{URLS_RUNS, memory_db};

    /// Writes the runs of `counts` (one per key) and answers `keys_at_least` for each of
    /// `thresholds`.
    fn answers(counts: &[u64], thresholds: &[u64]) -> Vec<u64> {
        let db = memory_db();
        let txn = db.begin_write().unwrap();
        {
            let mut runs = txn.open_table(URLS_RUNS).unwrap();
            let mut changes = RunChanges::default();
            for count in counts {
                changes.moved(0, *count);
            }
            changes.write(&mut runs).unwrap();
        }
        thresholds
            .iter()
            .map(|t| keys_at_least(&txn.open_table(URLS_RUNS).unwrap(), *t).unwrap())
            .collect()
    }

    fn brute(counts: &[u64], thresholds: &[u64]) -> Vec<u64> {
        thresholds
            .iter()
            .map(|t| counts.iter().filter(|c| **c >= *t).count() as u64)
            .collect()
    }

    #[test]
    fn counts_at_least_match_a_scan_at_every_scale() {
        let counts: Vec<u64> = (0..2_000u64)
            .map(|i| match i % 5 {
                0 => 1,
                1 => i,
                2 => i * 255,
                3 => i.pow(4),
                _ => crate::MAX_TOTAL - i,
            })
            .collect();
        let mut thresholds = vec![0, 1, 2, 255, 256, 257, 65_535, 65_536, crate::MAX_TOTAL];
        thresholds.extend([crate::MAX_TOTAL + 1, u64::MAX]);
        thresholds.extend(counts.iter().flat_map(|c| [c.saturating_sub(1), *c, c + 1]));
        assert_eq!(answers(&counts, &thresholds), brute(&counts, &thresholds));
    }

    #[test]
    fn a_moved_key_leaves_its_old_buckets() {
        let db = memory_db();
        let txn = db.begin_write().unwrap();
        let mut runs = txn.open_table(URLS_RUNS).unwrap();
        let mut changes = RunChanges::default();
        changes.moved(0, 300);
        changes.write(&mut runs).unwrap();
        let mut changes = RunChanges::default();
        changes.moved(300, 70_000);
        changes.moved(0, 5);
        changes.write(&mut runs).unwrap();

        assert_eq!(keys_at_least(&runs, 301).unwrap(), 1);
        assert_eq!(keys_at_least(&runs, 70_001).unwrap(), 0);
        assert_eq!(keys_at_least(&runs, 1).unwrap(), 2);
        let mut changes = RunChanges::default();
        changes.moved(70_000, 0);
        changes.moved(5, 0);
        changes.write(&mut runs).unwrap();
        assert!(runs.is_empty().unwrap(), "emptied buckets are removed");
    }

    #[test]
    fn removing_more_than_a_bucket_holds_is_an_inconsistency() {
        let db = memory_db();
        let txn = db.begin_write().unwrap();
        let mut runs = txn.open_table(URLS_RUNS).unwrap();
        let mut changes = RunChanges::default();
        changes.moved(7, 0);
        assert!(matches!(
            changes.write(&mut runs),
            Err(TxError::Inconsistent(_))
        ));
    }
}
