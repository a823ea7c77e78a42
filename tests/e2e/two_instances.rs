//! Scenario 6: two server instances on the same nodes, the load split between them. Their
//! batches carry different instance ids, so neither's high-water mark hides the other's
//! batches: the sum is exact. Each sees the other's visits once the writer has written
//! them (within its batch interval) and the reader's cached count has outlived its TTL.
//!
//! Visibility is checked by cause, not by the clock: once the writer reports its visits
//! written and a full TTL has passed since the reader cached the page, the reader's very
//! next read must show them. Waiting longer on a slow machine cannot make it pass wrongly,
//! and a reader that kept a count past its TTL fails however fast the machine.

use std::time::{Duration, Instant};

use tally_testkit::{HttpConnection, LoadSpec, run_load};

use crate::support::{Rig, Server, one_at_a_time, report};

/// The servers' `CACHE_TTL_SECONDS` and `BATCH_INTERVAL_SECONDS`.
const CACHE_TTL: Duration = Duration::from_secs(1);
const BATCH_INTERVAL: Duration = Duration::from_millis(500);

/// Visits sent to each instance.
const PER_INSTANCE: u64 = 10_000;

/// How long a writer may take to report its visits written before the test gives up: far
/// above the batch interval, for a debug build on a loaded machine.
const FLUSH_LIMIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_two_instances_share_the_nodes_exactly_and_see_each_others_visits() {
    let _serial = one_at_a_time().await;
    let started = Instant::now();
    let rig = Rig::start(3);
    let env = [
        ("CACHE_TTL_SECONDS", "1"),
        ("BATCH_INTERVAL_SECONDS", "0.5"),
    ];
    let a = rig.server(&env);
    let b = rig.server(&env);
    let pages: Vec<String> = (0..500).map(|i| format!("page-{i}")).collect();
    let load = |server: &Server| {
        run_load(LoadSpec {
            concurrency: 16,
            time_limit: Duration::from_secs(60),
            ..LoadSpec::visits(&server.base_url(), pages.clone(), PER_INSTANCE)
        })
    };
    let (mut board, board_b) = tokio::join!(load(&a), load(&b));
    board.merge(&board_b);

    a.wait_flushed(FLUSH_LIMIT).await;
    b.wait_flushed(FLUSH_LIMIT).await;
    let counted = rig.visits_counted(&board);
    // Both read what Redis holds once every count cached before the last write is past
    // its TTL.
    tokio::time::sleep(CACHE_TTL).await;
    for page in pages.iter().step_by(25) {
        for server in [&a, &b] {
            assert_eq!(server.count(page).await.0, counted.counts[page], "{page}");
        }
    }

    // Visibility, both ways, with the reader's cache holding the page at the start: the
    // worst case (the cached value must expire, and the writer's batch must be written).
    let mut slowest = Duration::ZERO;
    for (i, page) in pages.iter().take(10).enumerate() {
        let (writer, reader) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let seen = visible_after(writer, reader, page, 5).await;
        slowest = slowest.max(seen);
    }
    let page = &pages[10];
    let stale_while_cached = stale_within_ttl(&a, &b, page).await;
    a.stop();
    b.stop();
    report(
        "scenario 6: two instances",
        &board,
        &counted,
        started.elapsed(),
    );
    println!(
        "[scenario 6: two instances] slowest visibility of the other instance's visits {slowest:.2?} (the writer's batch interval {BATCH_INTERVAL:?} plus the reader's TTL {CACHE_TTL:?}, on an idle machine)"
    );

    let totals = board.totals();
    assert_eq!(totals.acked, 2 * PER_INSTANCE, "{board:?}");
    assert_eq!(board_b.totals().acked, PER_INSTANCE, "the load was split");
    assert_eq!((counted.lost, counted.doubled), (0, 0));
    counted.assert_exact(&board);
    assert!(
        stale_while_cached,
        "a cached count was served within its TTL although the other instance had written more (the check above is only meaningful if the cache is used)"
    );
}

/// Primes `reader`'s cache with `page`, records `visits` on `writer`, waits until the
/// writer reports them written and a full TTL has passed since the reader cached the page,
/// then asserts that the reader's next read shows them (and that no read before showed
/// more). Returns how long that took after the last visit was acknowledged.
async fn visible_after(writer: &Server, reader: &Server, page: &str, visits: u64) -> Duration {
    let before = prime(reader, page).await;
    let cached_at = Instant::now();
    record(writer, page, visits).await;
    let acknowledged = Instant::now();
    writer.wait_flushed(FLUSH_LIMIT).await;
    tokio::time::sleep(CACHE_TTL.saturating_sub(cached_at.elapsed())).await;
    let (shown, via) = reader.count(page).await;
    assert_eq!(
        shown,
        before + visits,
        "{page}: the other instance's visits are written and the cached count is past its TTL, yet the read shows {shown} ({via})"
    );
    acknowledged.elapsed()
}

/// The other side of visibility: a page cached by `reader` keeps its count for its TTL
/// even after `writer` has written more. True when a read made after the write, inside the
/// TTL, still showed the cached count, which shows the cache is in use (so the check of
/// [`visible_after`] is not vacuous). A read that could not be made inside the TTL (a very
/// slow machine) is tried again on a fresh priming, a few times.
async fn stale_within_ttl(writer: &Server, reader: &Server, page: &str) -> bool {
    for _ in 0..5 {
        // Before the read that caches the page: the entry is younger than this.
        let priming = Instant::now();
        let before = prime(reader, page).await;
        record(writer, page, 1).await;
        writer.wait_flushed(FLUSH_LIMIT).await;
        let (shown, via) = reader.count(page).await;
        if priming.elapsed() < CACHE_TTL {
            return shown == before && via == "in_memory";
        }
        // The TTL ran out before the read: it proves nothing; let the entry go and retry.
        tokio::time::sleep(CACHE_TTL).await;
    }
    panic!("{page}: five times, the write and a read could not be made within the TTL");
}

/// Reads `page` on `reader` twice, the second from its cache; returns the count.
async fn prime(reader: &Server, page: &str) -> u64 {
    let (before, _) = reader.count(page).await;
    let (cached, via) = reader.count(page).await;
    assert_eq!(
        (cached, via.as_str()),
        (before, "in_memory"),
        "{page} is cached"
    );
    before
}

/// Records `visits` visits of `page` on `writer`, each answered 200.
async fn record(writer: &Server, page: &str, visits: u64) {
    let mut conn = HttpConnection::connect(&writer.addr())
        .await
        .expect("connect");
    for _ in 0..visits {
        let response = conn
            .send("POST", &format!("/api/v1/counter/visit/{page}"))
            .await
            .expect("visit");
        assert_eq!(response.status, 200, "{}", response.text());
    }
}
