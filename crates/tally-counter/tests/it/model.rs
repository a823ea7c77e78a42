//! Property: any sequence of increments, reads, flushes and resets reads like a plain map.

use std::collections::HashMap;

use proptest::prelude::*;
use tally_counter::{Counter, MemoryStore};

use crate::support::manual_config;

#[derive(Clone, Debug)]
enum Op {
    Increment(u8, u64),
    Get(u8),
    Flush,
    Reset(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..6, 1u64..5).prop_map(|(k, n)| Op::Increment(k, n)),
        3 => (0u8..6).prop_map(Op::Get),
        1 => Just(Op::Flush),
        1 => (0u8..6).prop_map(Op::Reset),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn counter_reads_like_a_map(ops in proptest::collection::vec(op(), 1..60)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let counter = Counter::new(MemoryStore::with_shards(3), manual_config()).unwrap();
            let mut model: HashMap<String, u64> = HashMap::new();
            for op in ops {
                match op {
                    Op::Increment(k, n) => {
                        counter.increment(&format!("k{k}"), n).unwrap();
                        *model.entry(format!("k{k}")).or_default() += n;
                    }
                    Op::Get(k) => {
                        let key = format!("k{k}");
                        let want = model.get(&key).copied().unwrap_or(0);
                        prop_assert_eq!(counter.get(&key).await.unwrap().value, want, "{}", key);
                    }
                    Op::Flush => counter.flush().await,
                    Op::Reset(k) => {
                        counter.reset(&format!("k{k}")).await.unwrap();
                        model.remove(&format!("k{k}"));
                    }
                }
            }
            counter.flush().await;
            for (key, want) in &model {
                prop_assert_eq!(counter.store().value(key), *want, "{}", key);
            }
            Ok(())
        })?;
    }
}
