//! Scenario 6: two server instances on the same nodes, the load split between them. Their
//! batches carry different instance ids, so neither's high-water mark hides the other's
//! batches: the sum is exact. Each sees the other's visits within its own cache TTL plus
//! the writer's batch interval.

use std::time::{Duration, Instant};

use tally_testkit::{HttpConnection, LoadSpec, run_load};

use crate::support::{Rig, Server, one_at_a_time, report};

/// The servers' `CACHE_TTL_SECONDS` and `BATCH_INTERVAL_SECONDS`: visibility bound 1.5 s.
const CACHE_TTL: Duration = Duration::from_secs(1);
const BATCH_INTERVAL: Duration = Duration::from_millis(500);

/// Visits sent to each instance.
const PER_INSTANCE: u64 = 10_000;

/// Allowance on top of the bound for polling (every 20 ms) and a debug build on a busy
/// two-core machine.
const SLACK: Duration = Duration::from_millis(700);

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

    a.wait_flushed(Duration::from_secs(20)).await;
    b.wait_flushed(Duration::from_secs(20)).await;
    let counted = rig.visits_counted(&board);
    // Both read what Redis holds.
    for page in pages.iter().step_by(25) {
        for server in [&a, &b] {
            let deadline = Instant::now() + CACHE_TTL + SLACK;
            while server.count(page).await.0 != counted.counts[page] && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
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
    a.stop();
    b.stop();
    report(
        "scenario 6: two instances",
        &board,
        &counted,
        started.elapsed(),
    );
    println!(
        "[scenario 6: two instances] slowest visibility of the other instance's visits {slowest:.2?} (bound {:?} + slack {SLACK:?})",
        CACHE_TTL + BATCH_INTERVAL
    );

    let totals = board.totals();
    assert_eq!(totals.acked, 2 * PER_INSTANCE, "{board:?}");
    assert_eq!(board_b.totals().acked, PER_INSTANCE, "the load was split");
    assert_eq!((counted.lost, counted.doubled), (0, 0));
    counted.assert_exact(&board);
    assert!(
        slowest <= CACHE_TTL + BATCH_INTERVAL + SLACK,
        "another instance's visits showed after {slowest:?}"
    );
}

/// Primes `reader`'s cache with `page`, records `visits` on `writer`, and polls `reader`
/// until it shows them; returns how long that took after the last visit was acknowledged.
/// Panics if the reader ever shows more than was recorded.
async fn visible_after(writer: &Server, reader: &Server, page: &str, visits: u64) -> Duration {
    let (before, _) = reader.count(page).await;
    let (cached, via) = reader.count(page).await;
    assert_eq!(
        (cached, via.as_str()),
        (before, "in_memory"),
        "{page} is cached"
    );
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
    let acknowledged = Instant::now();
    let mut reads = HttpConnection::connect(&reader.addr())
        .await
        .expect("connect");
    loop {
        let response = reads
            .send("GET", &format!("/api/v1/counter/visits/{page}"))
            .await
            .expect("read");
        let body = crate::support::json(&response);
        let shown = body["visits"].as_u64().expect("visits");
        assert!(
            shown <= before + visits,
            "{page}: {shown} > {before} + {visits}"
        );
        if shown == before + visits {
            return acknowledged.elapsed();
        }
        assert!(
            acknowledged.elapsed() < Duration::from_secs(10),
            "{page}: the other instance's visits never showed ({body})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
