//! Sketches of distinct visitors: kept in the file across reopens, emptied by a reset,
//! swept with old day counts, and readable in files written before they existed.

use tally_counter::{SketchAdd, Store};
use tally_embedded::{EmbeddedStore, Error, FILE_NAME};

use crate::support::{TestResult, batch, open, read};

/// `n` visitor ids after `offset`.
fn visitors(offset: u64, n: u64) -> Vec<Vec<u8>> {
    (offset..offset + n)
        .map(|i| format!("visitor-{i}").into_bytes())
        .collect()
}

/// Adds `members` to `key`'s sketch through the `Store` trait; returns its estimate.
async fn add(store: &EmbeddedStore, key: &str, members: &[Vec<u8>]) -> Result<u64, Error> {
    let members: Vec<&[u8]> = members.iter().map(Vec::as_slice).collect();
    let adds = [SketchAdd {
        key,
        members: &members,
    }];
    let estimates = EmbeddedStore::sketch(store, 0, &adds, &[key]).await?;
    Ok(estimates[0])
}

/// The estimates of `keys`, adding nothing.
async fn estimates(store: &EmbeddedStore, keys: &[&str]) -> Result<Vec<u64>, Error> {
    EmbeddedStore::sketch(store, 0, &[], keys).await
}

#[tokio::test]
async fn estimates_are_within_two_percent_at_100k_and_repeats_change_nothing() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path());
    assert!(store.keeps_sketches());
    let members = visitors(0, 100_000);

    // In several adds, as a counter sends them.
    let mut estimate = 0;
    for chunk in members.chunks(10_000) {
        estimate = add(&store, "page", chunk).await?;
    }
    let again = add(&store, "page", &members[..50_000]).await?;

    let error = (estimate as f64 - 100_000.0).abs() / 100_000.0;
    assert!(error < 0.02, "estimated {estimate}");
    assert_eq!(again, estimate, "adding visitors again changes nothing");
    Ok(())
}

#[tokio::test]
async fn sketches_survive_close_and_reopen() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (small, large) = {
        let store = open(dir.path());
        (
            add(&store, "small", &visitors(0, 10)).await?,
            add(&store, "large", &visitors(0, 20_000)).await?,
        )
    };
    assert_eq!(small, 10);

    let store = open(dir.path());

    assert_eq!(
        estimates(&store, &["large", "small", "none"]).await?,
        [large, 10, 0]
    );
    assert_eq!(add(&store, "small", &visitors(5, 10)).await?, 15);
    Ok(())
}

#[tokio::test]
async fn reset_empties_the_sketch_with_the_count() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path());
    add(&store, "page", &visitors(0, 100)).await?;
    store.apply(0, &batch(1, 1, &[("page", 100)])).await?;

    Store::reset(&store, 0, "page").await?;

    assert_eq!(estimates(&store, &["page"]).await?, [0]);
    assert_eq!(read(&store, 1, &["page"]).await.0, [0]);
    assert_eq!(
        add(&store, "page", &visitors(0, 3)).await?,
        3,
        "counts afresh"
    );
    Ok(())
}

#[tokio::test]
async fn the_sweep_removes_old_day_sketches_with_old_day_counts() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path());
    let keys = [
        "p",
        "p\u{1f}2026-01-01",
        "p\u{1f}2026-06-01",
        "q\u{1f}2025-12-31",
    ];
    for key in keys {
        add(&store, key, &visitors(0, 5)).await?;
    }
    store
        .apply(0, &batch(1, 1, &[("p\u{1f}2026-01-01", 5)]))
        .await?;

    let removed = store.remove_subkeys_before("2026-03-01").await?;

    assert_eq!(
        removed, 1,
        "the day counts removed; sketches are not counted"
    );
    assert_eq!(estimates(&store, &keys).await?, [5, 0, 5, 0]);
    Ok(())
}

#[tokio::test]
async fn the_statistics_view_keeps_no_sketches() -> TestResult {
    let dir = tempfile::tempdir()?;
    let stats = open(dir.path()).ranked();

    assert!(!stats.keeps_sketches());
    let result = estimates(&stats, &["/api/a/"]).await;
    assert!(
        matches!(result, Err(Error::WrongLayout { .. })),
        "{result:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_file_from_before_sketches_opens_and_takes_them() -> TestResult {
    let dir = tempfile::tempdir()?;
    {
        let store = open(dir.path());
        store.apply(0, &batch(1, 1, &[("page", 4)])).await?;
    }
    // What a build from before sketches wrote: the same tables but visits_sketches.
    {
        let db = redb::Database::open(dir.path().join(FILE_NAME))?;
        let txn = db.begin_write()?;
        let sketches: redb::TableDefinition<&str, &[u8]> =
            redb::TableDefinition::new("visits_sketches");
        assert!(txn.delete_table(sketches)?, "a new file has the table");
        txn.commit()?;
    }

    let store = open(dir.path());

    assert_eq!(read(&store, 1, &["page"]).await.0, [4]);
    assert_eq!(estimates(&store, &["page"]).await?, [0], "no sketch yet");
    assert_eq!(store.remove_subkeys_before("2026-01-01").await?, 0);
    Store::reset(&store, 0, "other").await?;
    assert_eq!(add(&store, "page", &visitors(0, 7)).await?, 7);
    assert_eq!(estimates(&store, &["page"]).await?, [7]);
    Ok(())
}
