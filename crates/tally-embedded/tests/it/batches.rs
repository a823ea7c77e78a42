//! What one batch does: all its countable keys or nothing, rejected keys as tally-redis
//! reports them, and resets ordered with batches.

use tally_embedded::{Error, MAX_TOTAL};

use crate::support::{TestResult, batch, open, read};

#[test]
fn the_bound_is_tally_redis_bound() {
    assert_eq!(MAX_TOTAL, tally_redis::MAX_TOTAL);
}

#[tokio::test]
async fn a_key_that_would_pass_the_bound_is_reported_and_the_rest_applied() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path());
    store
        .apply(0, &batch(1, 1, &[("big", MAX_TOTAL - 1)]))
        .await?;

    let applied = store
        .apply_checked(
            0,
            &batch(1, 2, &[("a", 1), ("big", 5), ("b", 2), ("new", u64::MAX)]),
        )
        .await?;

    assert_eq!(applied.totals, [1, 0, 2, 0]);
    let rejected: Vec<(usize, &str)> = applied
        .rejected
        .iter()
        .map(|r| (r.index, r.found.as_str()))
        .collect();
    assert_eq!(
        rejected,
        [
            (
                1,
                "the value 9007199254740990, which +5 would take past 2^53-1"
            ),
            (
                3,
                "the value 0, which +18446744073709551615 would take past 2^53-1"
            ),
        ]
    );
    assert!(
        applied.rejected[0]
            .stored_as
            .contains("'big' in table visits of")
    );
    assert!(applied.rejected[0].stored_as.contains("tally.redb"));
    assert_eq!(
        read(&store, 1, &["a", "big", "b", "new"]).await,
        (vec![1, MAX_TOTAL - 1, 2, 0], 2),
        "the batch id is spent; the rejected keys are untouched"
    );
    Ok(())
}

#[tokio::test]
async fn apply_fails_naming_a_key_past_the_bound() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path());
    store.apply(0, &batch(1, 1, &[("big", MAX_TOTAL)])).await?;

    let error = store
        .apply(0, &batch(1, 2, &[("big", 1), ("small", 1)]))
        .await
        .unwrap_err();

    assert!(matches!(error, Error::TotalTooLarge { .. }), "{error:?}");
    assert!(
        error.to_string().contains("'big' in table visits"),
        "{error}"
    );
    assert_eq!(read(&store, 1, &["small"]).await, (vec![1], 2));
    Ok(())
}

#[tokio::test]
async fn a_batch_naming_a_key_twice_applies_nothing() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path());
    store.apply(0, &batch(1, 1, &[("a", 1)])).await?;

    let error = store
        .apply(0, &batch(1, 2, &[("b", 1), ("a", 1), ("a", 2)]))
        .await
        .unwrap_err();

    assert!(matches!(error, Error::InvalidBatch { .. }), "{error:?}");
    assert_eq!(read(&store, 1, &["a", "b"]).await, (vec![1, 0], 1));
    Ok(())
}

#[tokio::test]
async fn a_reset_is_ordered_with_the_batches_around_it() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path());
    store.apply(0, &batch(1, 1, &[("a", 5), ("b", 1)])).await?;

    store.reset(0, "a").await?;
    // A late retry of the batch from before the reset does not bring its count back.
    assert_eq!(
        store.apply(0, &batch(1, 1, &[("a", 5), ("b", 1)])).await?,
        [0, 1]
    );
    assert_eq!(store.apply(0, &batch(1, 2, &[("a", 2)])).await?, [2]);

    assert_eq!(read(&store, 1, &["a", "b"]).await, (vec![2, 1], 2));
    Ok(())
}

#[tokio::test]
async fn a_reset_takes_the_key_out_of_the_ranking() -> TestResult {
    let dir = tempfile::tempdir()?;
    let stats = open(dir.path()).ranked();
    stats
        .apply(0, &batch(1, 1, &[("/api/a/", 5), ("/api/b/", 1)]))
        .await?;

    stats.reset(0, "/api/a/").await?;
    stats.apply(0, &batch(1, 2, &[("/api/c/", 1)])).await?;

    assert_eq!(
        stats.top(0, 10).await?,
        [("/api/b/".to_owned(), 1), ("/api/c/".to_owned(), 1)]
    );
    assert_eq!(stats.count_at_least(0, &[0, 1, 2]).await?, [2, 2, 0]);
    assert_eq!(stats.len().await?, 2);
    Ok(())
}

#[tokio::test]
async fn ranking_reads_need_the_ranked_layout() -> TestResult {
    use tally_counter::RankedStore;

    let dir = tempfile::tempdir()?;
    let visits = open(dir.path());

    let error = visits.top(0, 1).await.unwrap_err();

    assert!(matches!(error, Error::WrongLayout { .. }), "{error:?}");
    assert!(!visits.serves_windows());
    assert!(visits.ranked().serves_windows());
    Ok(())
}

#[tokio::test]
async fn a_shard_other_than_zero_does_not_exist() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path());

    let error = store.apply(1, &batch(1, 1, &[("a", 1)])).await.unwrap_err();

    assert!(
        matches!(error, Error::NoSuchShard { shard: 1 }),
        "{error:?}"
    );
    Ok(())
}
