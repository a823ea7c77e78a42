//! Property: any sequence of increments, reads, flushes, resets and store faults reads like
//! a plain map, and leaves the store holding exactly that map.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use proptest::prelude::*;
use tally_counter::Counter;

use crate::support::{Fault, ScriptedStore, manual_config};

/// Keys are `k0` up to `k5`: few enough that operations on one key meet often.
const KEYS: u8 = 6;

/// Cases per run: enough that `cargo test -p tally-counter --test it model` takes about
/// 10 s in a debug build on the 2-core machine the suite runs on (measured there, idle:
/// about 0.9 ms a case, 9,000 cases in 8.3 s). Faults cost no real time: each case runs
/// on tokio's paused clock, so a retry's backoff passes at once; a slower machine takes
/// longer over the same cases and checks the same things.
const CASES: u32 = 10_800;

/// One step of a generated run; keys are given by number (`3` is `k3`).
#[derive(Clone, Debug)]
enum Op {
    /// `increment(key, n)`.
    Increment(u8, u64),
    /// `get(key)`, checked against the model.
    Get(u8),
    /// `flush()`, then every key's stored value checked against the model.
    Flush,
    /// `reset(key)`.
    Reset(u8),
    /// The next apply fails without applying.
    FailNextApply,
    /// The next apply applies, then reports an error.
    LoseNextReply,
}

/// Increments and reads most often, so counts build up between flushes, resets and faults.
fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..KEYS, 1u64..5).prop_map(|(k, n)| Op::Increment(k, n)),
        3 => (0..KEYS).prop_map(Op::Get),
        1 => Just(Op::Flush),
        1 => (0..KEYS).prop_map(Op::Reset),
        1 => Just(Op::FailNextApply),
        1 => Just(Op::LoseNextReply),
    ]
}

/// The name of key number `k`.
fn key(k: u8) -> String {
    format!("k{k}")
}

/// What the counter must hold: per key, the part the store has and the part still waiting
/// in the counter, and the sum of increments written so far.
#[derive(Debug, Default)]
struct Model {
    stored: HashMap<String, u64>,
    pending: HashMap<String, u64>,
    written: u64,
}

impl Model {
    /// An increment waits in the counter until the next flush.
    fn increment(&mut self, key: String, n: u64) {
        *self.pending.entry(key).or_default() += n;
    }

    /// What a read of `key` answers: stored plus pending (0 for a key never counted).
    fn count(&self, key: &str) -> u64 {
        self.stored.get(key).copied().unwrap_or(0) + self.pending.get(key).copied().unwrap_or(0)
    }

    /// What the store holds for `key` (0 for a key never written or reset).
    fn stored(&self, key: &str) -> u64 {
        self.stored.get(key).copied().unwrap_or(0)
    }

    /// A flush writes every pending delta, once, however many attempts it takes.
    fn flush(&mut self) {
        for (key, n) in self.pending.drain() {
            *self.stored.entry(key).or_default() += n;
            self.written += n;
        }
    }

    /// A reset zeroes the stored count and drops the pending one.
    fn reset(&mut self, key: &str) {
        self.stored.remove(key);
        self.pending.remove(key);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn counter_reads_like_a_map(ops in proptest::collection::vec(op(), 1..60)) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async {
            let counter = Counter::new(ScriptedStore::new(3), manual_config()).unwrap();
            let store = counter.store();
            let mut model = Model::default();
            let mut faults = 0;
            for op in ops {
                match op {
                    Op::Increment(k, n) => {
                        counter.increment(&key(k), n).unwrap();
                        model.increment(key(k), n);
                    }
                    Op::Get(k) => {
                        let read = counter.get(&key(k)).await.unwrap().value;
                        prop_assert_eq!(read, model.count(&key(k)), "read of {}", key(k));
                    }
                    Op::Flush => {
                        counter.flush().await;
                        model.flush();
                        // A lost reply's batch is sent again with its id: applied once.
                        for k in 0..KEYS {
                            let stored = store.inner.value(&key(k));
                            prop_assert_eq!(stored, model.stored(&key(k)), "{} after a flush", key(k));
                        }
                    }
                    Op::Reset(k) => {
                        counter.reset(&key(k)).await.unwrap();
                        model.reset(&key(k));
                    }
                    Op::FailNextApply => {
                        store.queue_fault(Fault::Fail);
                        faults += 1;
                    }
                    Op::LoseNextReply => {
                        store.queue_fault(Fault::LoseReply);
                        faults += 1;
                    }
                }
            }
            counter.flush().await;
            model.flush();

            // Every key the generator can name, so a reset key that a late batch brought
            // back is caught, not only the keys the model still holds.
            for k in 0..KEYS {
                let want = model.count(&key(k));
                prop_assert_eq!(store.inner.value(&key(k)), want, "stored {}", key(k));
                prop_assert_eq!(counter.get(&key(k)).await.unwrap().value, want, "read of {}", key(k));
            }
            let snapshot = counter.snapshot();
            let faults_met = (faults - store.faults_left()) as u64;
            prop_assert_eq!(
                snapshot.batches_failed, faults_met,
                "each fault an apply met failed that attempt, and the batch was sent again"
            );
            prop_assert_eq!(
                store.applies.load(Ordering::SeqCst) as u64,
                snapshot.batches_ok + snapshot.batches_failed
            );
            prop_assert_eq!(snapshot.increments_written, model.written, "each increment written once");
            prop_assert_eq!(snapshot.write_buffer_size, 0);
            Ok(())
        })?;
    }
}
