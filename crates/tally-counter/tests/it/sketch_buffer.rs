//! The counter's sketch members ([`Counter::add_to_sketches`]): bounded all or nothing,
//! read back before they are written, dropped by a reset, sent by a flush, and counted
//! by the shutdown report when the store never takes them.

use std::time::Duration;

use tally_counter::{Counter, CounterConfig, Error, MemoryStore};

/// A counter whose flushers do not run on their own during a test.
fn quiet(max_pending_members: usize) -> CounterConfig {
    CounterConfig {
        batch_interval: Duration::from_secs(3_600),
        max_pending_members,
        ..CounterConfig::default()
    }
}

#[tokio::test]
async fn members_are_bounded_all_or_nothing_and_a_known_member_takes_no_place() {
    let counter = Counter::new(MemoryStore::new(), quiet(4)).expect("a counter");
    counter
        .add_to_sketches(&[("p", b"a"), ("p", b"b"), ("q", b"a")])
        .expect("room for three");
    // Waiting already: reserved, then given back.
    counter
        .add_to_sketches(&[("p", b"a")])
        .expect("room for one");
    assert_eq!(counter.snapshot().sketch_members_pending, 3);
    let refused = counter
        .add_to_sketches(&[("p", b"c"), ("p", b"d")])
        .expect_err("two more pass the bound");
    assert!(
        matches!(
            refused,
            Error::OverloadedMembers {
                pending: 3,
                limit: 4
            }
        ),
        "{refused}"
    );
    assert_eq!(
        counter.snapshot().sketch_members_pending,
        3,
        "none of the two added"
    );
    // Read back before anything is written: the read sends them.
    assert_eq!(
        counter.estimate_many(&["p", "q", "r"]).await.expect("read"),
        [2, 1, 0]
    );
    assert_eq!(counter.snapshot().sketch_members_pending, 0);
    assert_eq!(counter.snapshot().sketch_members_written, 3);
    counter
        .add_to_sketches(&[("p", b"c"), ("p", b"d")])
        .expect("room again");
    counter.flush().await;
    assert_eq!(
        counter.store().sketch_of("p").map(|s| s.estimate()),
        Some(4)
    );
}

#[tokio::test]
async fn a_reset_drops_the_keys_waiting_members_and_empties_its_sketch() {
    let counter = Counter::new(MemoryStore::new(), quiet(100)).expect("a counter");
    counter.add_to_sketches(&[("p", b"a")]).expect("added");
    counter.flush().await;
    counter
        .add_to_sketches(&[("p", b"b"), ("other", b"b")])
        .expect("added");
    counter.reset("p").await.expect("reset");
    assert_eq!(
        counter.snapshot().sketch_members_pending,
        1,
        "other's stays"
    );
    assert_eq!(
        counter.estimate_many(&["p", "other"]).await.expect("read"),
        [0, 1]
    );
}

#[tokio::test]
async fn shutdown_writes_waiting_members_and_reports_none_left() {
    let counter = Counter::new(MemoryStore::new(), quiet(100)).expect("a counter");
    let reader = counter.clone();
    counter
        .add_to_sketches(&[("p", b"a"), ("p", b"b")])
        .expect("added");
    let report = counter.shutdown(Duration::from_secs(5)).await;
    assert_eq!(report.members_unwritten, 0);
    assert_eq!(reader.store().sketch_of("p").map(|s| s.estimate()), Some(2));
}

#[tokio::test]
async fn a_store_without_sketches_refuses_members() {
    let counter = Counter::new(MemoryStore::new(), quiet(100)).expect("a counter");
    counter.shutdown(Duration::from_secs(1)).await;
    let counter = Counter::new(NoSketches, quiet(100)).expect("a counter");
    assert!(matches!(
        counter.add_to_sketches(&[("p", b"a")]),
        Err(Error::NoSketches)
    ));
    assert!(matches!(
        counter.estimate_many(&["p"]).await,
        Err(Error::NoSketches)
    ));
}

/// A store that keeps counts (in a [`MemoryStore`]) and no sketches: the trait's default.
struct NoSketches;

impl tally_counter::Store for NoSketches {
    fn shard_count(&self) -> usize {
        1
    }

    fn shard_of(&self, _: &str) -> tally_counter::ShardId {
        0
    }

    fn shard_name(&self, _: tally_counter::ShardId) -> &str {
        "none"
    }

    async fn apply(
        &self,
        _: tally_counter::ShardId,
        batch: &tally_counter::Batch,
    ) -> Result<Vec<u64>, tally_counter::StoreError> {
        Ok(batch.deltas.iter().map(|(_, delta)| *delta).collect())
    }

    async fn get(
        &self,
        _: tally_counter::ShardId,
        _: tally_counter::InstanceId,
        keys: &[&str],
    ) -> Result<tally_counter::StoredValues, tally_counter::StoreError> {
        Ok(tally_counter::StoredValues {
            values: vec![0; keys.len()],
            applied_seq: 0,
        })
    }

    async fn reset(
        &self,
        _: tally_counter::ShardId,
        _: &str,
    ) -> Result<(), tally_counter::StoreError> {
        Ok(())
    }

    fn health(&self) -> Vec<tally_counter::ShardHealth> {
        Vec::new()
    }
}
