//! Many distinct keys: batches of 1,000 new keys each, as a flush after a busy interval
//! writes, with the ranking kept exact.

use std::time::Instant;

use crate::support::{TestResult, batch, open};

/// Distinct keys written (see the crate README for why not a million).
const KEYS: usize = 200_000;
const BATCH: usize = 1_000;

#[tokio::test]
async fn many_distinct_keys_stay_ranked_and_countable() -> TestResult {
    let dir = tempfile::tempdir()?;
    let stats = open(dir.path()).ranked();
    let started = Instant::now();

    for (seq, first) in (0..KEYS).step_by(BATCH).enumerate() {
        let keys: Vec<String> = (first..first + BATCH)
            .map(|i| format!("/api/p/{i:07}/"))
            .collect();
        // Count 1 + i % 100: runs of 2,000 ties.
        let deltas: Vec<(&str, u64)> = keys
            .iter()
            .zip(first..)
            .map(|(k, i)| (k.as_str(), 1 + (i % 100) as u64))
            .collect();
        stats.apply(0, &batch(1, seq as u64 + 1, &deltas)).await?;
    }
    eprintln!("{KEYS} keys written in {:?}", started.elapsed());

    assert_eq!(stats.len().await?, KEYS as u64);
    assert_eq!(
        stats.count_at_least(0, &[0, 1, 2, 100, 101]).await?,
        [KEYS as u64, KEYS as u64, KEYS as u64 - 2_000, 2_000, 0]
    );
    let top = stats.top(0, 3).await?;
    let want = ["/api/p/0000099/", "/api/p/0000199/", "/api/p/0000299/"];
    assert_eq!(
        top.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        want
    );
    assert!(top.iter().all(|(_, count)| *count == 100));
    Ok(())
}
