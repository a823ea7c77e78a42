//! `MemoryStore`: the embedded, in-process store.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use xxhash_rust::xxh3::xxh3_64;

use crate::hll::HyperLogLog;
use crate::store::{
    Applied, Batch, InstanceId, RankedStore, RejectedKey, ShardHealth, ShardId, SketchAdd, Store,
    StoreError, StoredValues, rank_order,
};
use crate::sync::lock;

/// An in-process [`Store`]: sharded maps behind short mutexes, honouring batch ids exactly
/// once like a real store.
///
/// It is what the tally server uses when no Redis is configured (counts then live and die
/// with the process) and the reference store of the tests. It never fails.
///
/// It keeps sketches ([`Store::sketch`]): a [`HyperLogLog`] per key, beside its count,
/// emptied by [`Store::reset`] and swept with it by [`MemoryStore::remove_subkeys_before`].
///
/// [`MemoryStore::ranked`] also keeps every shard's keys ordered by value, so
/// [`RankedStore::top`] reads the leaders without scanning (the request-statistics
/// leaderboard); a plain store answers `top` by sorting all its keys.
#[derive(Debug)]
pub struct MemoryStore {
    shards: Box<[MemoryShard]>,
    names: Box<[String]>,
    started: SystemTime,
}

/// One shard. A `std::sync::Mutex`: held for a few map operations, never across `.await`.
#[derive(Debug, Default)]
struct MemoryShard {
    state: Mutex<ShardState>,
}

impl MemoryShard {
    /// The shard's state, locked.
    fn state(&self) -> MutexGuard<'_, ShardState> {
        lock(&self.state)
    }
}

#[derive(Debug, Default)]
struct ShardState {
    values: HashMap<Box<str>, u64>,
    /// Highest applied batch sequence per instance: constant memory per writer.
    applied: HashMap<InstanceId, u64>,
    /// `(value descending, key ascending)` of every key, when the store is ranked: the
    /// order of [`rank_order`], kept by the set's own ordering of its tuples.
    ranking: Option<BTreeSet<(Reverse<u64>, Box<str>)>>,
    /// Keys holding something that is not a count (set by [`MemoryStore::corrupt`], as a
    /// Redis key can be), with what is there.
    corrupt: HashMap<Box<str>, String>,
    /// The sketch of every key something was added to ([`Store::sketch`]).
    sketches: HashMap<Box<str>, HyperLogLog>,
}

impl ShardState {
    fn set(&mut self, key: &str, value: u64) {
        let old = match self.values.get_mut(key) {
            Some(slot) => std::mem::replace(slot, value),
            None => {
                self.values.insert(key.into(), value);
                0
            }
        };
        if let Some(ranking) = &mut self.ranking {
            ranking.remove(&(Reverse(old), Box::from(key)));
            ranking.insert((Reverse(value), key.into()));
        }
    }

    /// An error naming the first of `keys` that holds something that is not a count, if
    /// any.
    fn all_counts<'a>(&self, mut keys: impl Iterator<Item = &'a str>) -> Result<(), StoreError> {
        match keys.find_map(|key| Some((key, self.corrupt.get(key)?))) {
            Some((key, found)) => Err(format!("{key} holds {found}, not a count").into()),
            None => Ok(()),
        }
    }

    fn remove(&mut self, key: &str) {
        self.corrupt.remove(key);
        self.sketches.remove(key);
        if let (Some(old), Some(ranking)) = (self.values.remove(key), &mut self.ranking) {
            ranking.remove(&(Reverse(old), Box::from(key)));
        }
    }
}

impl MemoryStore {
    /// A store with one shard.
    pub fn new() -> Self {
        Self::with_shards(1)
    }

    /// A store with `shards` shards (at least 1); keys are spread by xxh3 of the key.
    pub fn with_shards(shards: usize) -> Self {
        let shards = shards.max(1);
        Self {
            shards: (0..shards).map(|_| MemoryShard::default()).collect(),
            names: (0..shards).map(|i| format!("memory-{i}")).collect(),
            started: SystemTime::now(),
        }
    }

    /// A store with `shards` shards that keeps each shard's keys ordered by value, for
    /// [`RankedStore::top`] without a scan.
    pub fn ranked(shards: usize) -> Self {
        let store = Self::with_shards(shards);
        for shard in store.shards.iter() {
            shard.state().ranking = Some(BTreeSet::new());
        }
        store
    }

    /// Removes the sub-keys (`{key}\u{1f}{sub}`, see [`crate::routing_key`]) whose sub part
    /// sorts before `cutoff` in byte order, with their sketches; returns how many counts
    /// were removed (the sketches removed beside them are not counted).
    pub fn remove_subkeys_before(&self, cutoff: &str) -> u64 {
        let keep = |key: &str| crate::subkey(key).is_none_or(|sub| sub >= cutoff);
        let mut removed = 0;
        for shard in &self.shards {
            let mut state = shard.state();
            let before = state.values.len();
            state.values.retain(|key, _| keep(key));
            removed += (before - state.values.len()) as u64;
            state.sketches.retain(|key, _| keep(key));
        }
        removed
    }

    /// Every stored `(key, value)` pair, in no particular order (for tests and tools).
    pub fn entries(&self) -> Vec<(String, u64)> {
        self.shards
            .iter()
            .flat_map(|shard| {
                let state = shard.state();
                state
                    .values
                    .iter()
                    .map(|(k, v)| (k.to_string(), *v))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Makes `key` hold something that is not a count, described by `found` (as `SET
    /// tally:v:key abc` does in Redis): batches then reject the key, reads of it fail, until
    /// [`MemoryStore::repair`] or a reset. For tests of the counter's quarantine.
    pub fn corrupt(&self, key: &str, found: &str) {
        let mut state = self.state_of(key);
        state.remove(key);
        state.corrupt.insert(key.into(), found.to_owned());
    }

    /// Puts a count back where [`MemoryStore::corrupt`] put something else.
    pub fn repair(&self, key: &str, value: u64) {
        let mut state = self.state_of(key);
        state.corrupt.remove(key);
        state.set(key, value);
    }

    fn state_of(&self, key: &str) -> MutexGuard<'_, ShardState> {
        self.shards[self.shard_of(key)].state()
    }

    /// The sketch of `key`, if anything was added to it since it was last reset, read
    /// directly (for tests and tools).
    pub fn sketch_of(&self, key: &str) -> Option<HyperLogLog> {
        self.state_of(key).sketches.get(key).cloned()
    }

    /// The stored value of `key` (0 when never written), read directly.
    pub fn value(&self, key: &str) -> u64 {
        self.state_of(key).values.get(key).copied().unwrap_or(0)
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl Store for MemoryStore {
    fn shard_count(&self) -> usize {
        self.shards.len()
    }

    fn shard_of(&self, key: &str) -> ShardId {
        (xxh3_64(crate::routing_key(key).as_bytes()) % self.shards.len() as u64) as ShardId
    }

    fn shard_name(&self, shard: ShardId) -> &str {
        &self.names[shard]
    }

    async fn apply(&self, shard: ShardId, batch: &Batch) -> Result<Vec<u64>, StoreError> {
        // All or nothing, as a store that cannot apply part of a batch must be.
        self.shards[shard]
            .state()
            .all_counts(batch.deltas.iter().map(|(key, _)| &**key))?;
        Ok(self.apply_checked(shard, batch).await?.totals)
    }

    async fn apply_checked(&self, shard: ShardId, batch: &Batch) -> Result<Applied, StoreError> {
        let mut state = self.shards[shard].state();
        let mark = state.applied.entry(batch.id.instance).or_insert(0);
        let fresh = batch.id.seq > *mark;
        if fresh {
            *mark = batch.id.seq;
        }
        let mut applied = Applied::default();
        for (index, (key, delta)) in batch.deltas.iter().enumerate() {
            if let Some(found) = state.corrupt.get(&**key) {
                applied.rejected.push(RejectedKey {
                    index,
                    stored_as: key.to_string(),
                    found: found.clone(),
                });
                applied.totals.push(0);
                continue;
            }
            let current = state.values.get(&**key).copied().unwrap_or(0);
            let total = if fresh { current + delta } else { current };
            if fresh {
                state.set(key, total);
            }
            applied.totals.push(total);
        }
        Ok(applied)
    }

    async fn get(
        &self,
        shard: ShardId,
        instance: InstanceId,
        keys: &[&str],
    ) -> Result<StoredValues, StoreError> {
        let state = self.shards[shard].state();
        state.all_counts(keys.iter().copied())?;
        Ok(StoredValues {
            values: keys
                .iter()
                .map(|k| state.values.get(*k).copied().unwrap_or(0))
                .collect(),
            applied_seq: state.applied.get(&instance).copied().unwrap_or(0),
        })
    }

    async fn reset(&self, shard: ShardId, key: &str) -> Result<(), StoreError> {
        let mut state = self.shards[shard].state();
        state.remove(key);
        Ok(())
    }

    fn keeps_sketches(&self) -> bool {
        true
    }

    async fn sketch(
        &self,
        shard: ShardId,
        adds: &[SketchAdd<'_>],
        estimate: &[&str],
    ) -> Result<Vec<u64>, StoreError> {
        let mut state = self.shards[shard].state();
        for add in adds {
            let sketch = match state.sketches.get_mut(add.key) {
                Some(sketch) => sketch,
                None => state.sketches.entry(add.key.into()).or_default(),
            };
            for member in add.members {
                sketch.insert(member);
            }
        }
        Ok(estimate
            .iter()
            .map(|key| state.sketches.get(*key).map_or(0, HyperLogLog::estimate))
            .collect())
    }

    fn health(&self) -> Vec<ShardHealth> {
        self.names
            .iter()
            .map(|name| ShardHealth {
                name: name.clone(),
                up: true,
                since: self.started,
            })
            .collect()
    }
}

impl RankedStore for MemoryStore {
    async fn top(&self, shard: ShardId, limit: usize) -> Result<Vec<(String, u64)>, StoreError> {
        let state = self.shards[shard].state();
        if let Some(ranking) = &state.ranking {
            return Ok(ranking
                .iter()
                .take(limit)
                .map(|(Reverse(v), k)| (k.to_string(), *v))
                .collect());
        }
        let mut all: Vec<(String, u64)> = state
            .values
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        all.sort_unstable_by(rank_order);
        all.truncate(limit);
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::BatchId;

    fn batch(instance: u64, seq: u64, deltas: &[(&str, u64)]) -> Batch {
        Batch {
            id: BatchId {
                instance: InstanceId::from_u64(instance),
                seq,
            },
            deltas: deltas.iter().map(|(k, d)| ((*k).into(), *d)).collect(),
        }
    }

    #[tokio::test]
    async fn sub_keys_before_the_cutoff_are_removed_and_nothing_else() {
        let store = MemoryStore::with_shards(3);
        for (seq, key) in (1..).zip(["p", "p\u{1f}2026-01-01", "p\u{1f}2026-06-01"]) {
            let shard = store.shard_of(key);
            assert_eq!(shard, store.shard_of("p"), "a sub-key lives with its key");
            store
                .apply(shard, &batch(1, seq, &[(key, 1)]))
                .await
                .unwrap();
        }
        assert_eq!(store.remove_subkeys_before("2026-03-01"), 1);
        let mut left: Vec<String> = store.entries().into_iter().map(|(k, _)| k).collect();
        left.sort();
        assert_eq!(left, ["p", "p\u{1f}2026-06-01"]);
    }

    #[tokio::test]
    async fn same_batch_twice_is_applied_once() {
        let store = MemoryStore::new();
        let b = batch(7, 1, &[("a", 2), ("b", 3)]);
        assert_eq!(store.apply(0, &b).await.unwrap(), vec![2, 3]);
        assert_eq!(store.apply(0, &b).await.unwrap(), vec![2, 3]);
        assert_eq!(store.value("a"), 2);
    }

    #[tokio::test]
    async fn marks_are_per_instance() {
        let store = MemoryStore::new();
        store.apply(0, &batch(1, 5, &[("a", 1)])).await.unwrap();
        store.apply(0, &batch(2, 1, &[("a", 1)])).await.unwrap();
        let read = store.get(0, InstanceId::from_u64(1), &["a"]).await.unwrap();
        assert_eq!(
            read,
            StoredValues {
                values: vec![2],
                applied_seq: 5
            }
        );
    }

    #[tokio::test]
    async fn ranked_and_plain_stores_rank_alike() {
        let deltas = [("b", 2), ("a", 2), ("c", 5), ("d", 1)];
        for store in [MemoryStore::new(), MemoryStore::ranked(1)] {
            store.apply(0, &batch(1, 1, &deltas)).await.unwrap();
            store.apply(0, &batch(1, 2, &[("d", 4)])).await.unwrap();
            store.reset(0, "c").await.unwrap();

            let top = store.top(0, 3).await.unwrap();

            let want = [("d", 5), ("a", 2), ("b", 2)].map(|(k, v)| (k.to_owned(), v));
            assert_eq!(top, want, "ties by key ascending; reset keys gone");
        }
    }

    /// `n` visitor ids after `offset`.
    fn visitors(offset: u64, n: u64) -> Vec<Vec<u8>> {
        (offset..offset + n)
            .map(|i| format!("visitor-{i}").into_bytes())
            .collect()
    }

    /// Adds `members` to `key`'s sketch; returns its estimate.
    async fn add(store: &MemoryStore, key: &str, members: &[Vec<u8>]) -> u64 {
        let members: Vec<&[u8]> = members.iter().map(Vec::as_slice).collect();
        let adds = [SketchAdd {
            key,
            members: &members,
        }];
        let shard = store.shard_of(key);
        store.sketch(shard, &adds, &[key]).await.unwrap()[0]
    }

    #[tokio::test]
    async fn sketches_estimate_distinct_members_and_ignore_repeats() {
        let store = MemoryStore::with_shards(4);
        assert!(store.keeps_sketches());

        let first = add(&store, "page", &visitors(0, 100_000)).await;
        let again = add(&store, "page", &visitors(0, 100_000)).await;

        let error = (first as f64 - 100_000.0).abs() / 100_000.0;
        assert!(error < 0.02, "estimated {first}");
        assert_eq!(
            again, first,
            "adding the same visitors again changes nothing"
        );
    }

    #[tokio::test]
    async fn sketch_adds_then_estimates_in_order() {
        let store = MemoryStore::new();
        let few: Vec<&[u8]> = vec![b"a", b"b", b"c"];
        let one: Vec<&[u8]> = vec![b"a"];
        let adds = [
            SketchAdd {
                key: "p",
                members: &few,
            },
            SketchAdd {
                key: "q",
                members: &one,
            },
        ];

        let estimates = store.sketch(0, &adds, &["q", "never", "p"]).await.unwrap();

        assert_eq!(estimates, [1, 0, 3]);
        assert_eq!(
            store.sketch(0, &[], &["p"]).await.unwrap(),
            [3],
            "estimate only"
        );
    }

    #[tokio::test]
    async fn reset_empties_the_sketch() {
        let store = MemoryStore::with_shards(4);
        let key = "page";
        let shard = store.shard_of(key);
        add(&store, key, &visitors(0, 10)).await;
        store
            .apply(shard, &batch(1, 1, &[(key, 10)]))
            .await
            .unwrap();

        store.reset(shard, key).await.unwrap();

        assert_eq!(store.sketch_of(key), None);
        assert_eq!(store.sketch(shard, &[], &[key]).await.unwrap(), [0]);
        assert_eq!(add(&store, key, &visitors(0, 3)).await, 3, "counts afresh");
    }

    #[tokio::test]
    async fn the_sweep_removes_old_day_sketches_and_counts_only_counts() {
        let store = MemoryStore::with_shards(3);
        let keys = [
            "p",
            "p\u{1f}2026-01-01",
            "p\u{1f}2026-06-01",
            "q\u{1f}2025-12-31",
        ];
        for key in keys {
            add(&store, key, &visitors(0, 5)).await;
        }
        let shard = store.shard_of("p");
        store
            .apply(shard, &batch(1, 1, &[("p\u{1f}2026-01-01", 5)]))
            .await
            .unwrap();

        let removed = store.remove_subkeys_before("2026-03-01");

        assert_eq!(removed, 1, "one day count; the sketches are not counted");
        for (key, kept) in keys.iter().zip([true, false, true, false]) {
            assert_eq!(store.sketch_of(key).is_some(), kept, "{key:?}");
        }
    }

    #[tokio::test]
    async fn reset_zeroes_a_key() {
        let store = MemoryStore::with_shards(4);
        let key = "page";
        let shard = store.shard_of(key);
        store.apply(shard, &batch(1, 1, &[(key, 9)])).await.unwrap();
        store.reset(shard, key).await.unwrap();
        assert_eq!(store.value(key), 0);
    }
}
