//! Scenario 4: lost replies. One node sits behind a [`tally_testkit::FaultProxy`] that,
//! six times during a visit load (three visit batches, three batches of the request
//! statistics), forwards a batch script to the node, lets the node run it, then drops the
//! answer and hangs up. The server cannot know whether the batch was applied and
//! sends it again, unchanged; the node's high-water mark for the instance answers the
//! retry without applying it twice: each lost reply is followed by a replay of its own
//! layout. Increments by N and bulk visits sent meanwhile to pages of that node are
//! among the batches whose replies are lost. Visits and request statistics are both exact, no URL is counted that no request
//! named, and every visit was answered promptly.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tally_testkit::{LoadSpec, Mode, RedisNode, run_load};

use crate::bulk_visits::send_mixed;
use crate::support::{
    Rig, STATS_BATCH, VISIT_BATCH, all_day_keys, assert_answered_promptly, check_no_stray_urls,
    check_urls, day_count_problems, one_at_a_time, report, stored_visits, urls_counted,
    wait_for_first_sweep,
};

/// The node behind the proxy.
const PROXIED: usize = 1;
/// Replies lost in all, one at a time, taking turns between a visit batch and a batch of
/// the request statistics.
const DROPS: usize = 6;
/// Bound on the slowest answer (no request waits for a batch).
const PROMPT: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_whose_replies_are_lost_are_counted_once() {
    let _serial = one_at_a_time().await;
    let started = Instant::now();
    let (rig, proxy) = Rig::start_behind_proxy(3, &RedisNode::builder(), PROXIED).await;
    let server = rig.server(&[]);
    let pages: Vec<String> = (0..300).map(|i| format!("page-{i}")).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let spec = LoadSpec {
        concurrency: 16,
        requests: u64::MAX,
        time_limit: Duration::from_secs(120),
        stop: Some(Arc::clone(&stop)),
        ..LoadSpec::visits(&server.base_url(), pages, 0)
    };
    let path = spec.path;
    let load = tokio::spawn(run_load(spec));
    // Beside the single visits, increments by N and bulk visits of pages on the proxied
    // node, sent without pause: every visit batch of that node (one per 200 ms) carries
    // some of them, so the lost replies below cover them too.
    let bulk_pages: Vec<String> = (0..)
        .map(|i| format!("bulk-{i}"))
        .filter(|page| rig.owner(page) == PROXIED)
        .take(40)
        .collect();
    let bulk = tokio::spawn(send_mixed(
        server.addr(),
        bulk_pages,
        u64::MAX,
        7,
        Some(Arc::clone(&stop)),
    ));

    // Once both counters' batches flow (their scripts are loaded), lose one batch reply at
    // a time, and wait for the retry of each to be answered as a replay.
    for counter in ["visits", "stats"] {
        server
            .wait_for_metric(
                "tally_counter_batches_total",
                &[&format!("counter=\"{counter}\""), "outcome=\"ok\""],
                3.0,
                Duration::from_secs(30),
                "batches written",
            )
            .await;
    }
    let proxy_node = format!("node=\"127.0.0.1:{}\"", proxy.port());
    wait_for_first_sweep(&server, &proxy_node).await;
    let layouts = [
        ("layout=\"counters\"", VISIT_BATCH),
        ("layout=\"sorted-set\"", STATS_BATCH),
    ];
    for dropped in 1..=DROPS {
        let (layout, needle) = layouts[(dropped - 1) % 2];
        let replays = server
            .metric("tally_redis_batches_replayed_total", &[&proxy_node, layout])
            .await;
        proxy.set_mode(Mode::DropRepliesMatching(1, needle.to_vec()));
        let deadline = Instant::now() + Duration::from_secs(30);
        while proxy.replies_discarded() < dropped {
            assert!(Instant::now() < deadline, "no batch reached the proxy");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        server
            .wait_for_metric(
                "tally_redis_batches_replayed_total",
                &[&proxy_node, layout],
                replays + 1.0,
                Duration::from_secs(30),
                "the batch whose reply was lost, retried and answered as applied",
            )
            .await;
    }
    stop.store(true, Ordering::Relaxed);
    let board = load.await.expect("load task");
    let bulk = bulk.await.expect("the bulk sender");
    server.wait_flushed(Duration::from_secs(30)).await;
    let bulk_names: Vec<String> = bulk.acked.keys().cloned().collect();
    let bulk_stored = stored_visits(&rig.nodes(), &rig.ring, &bulk_names);
    let replays: Vec<u64> = replays_by_layout(&server, &proxy_node, &layouts).await;
    // `/stats/` writes this instance's pending statistics first.
    let _ = server.get_json("/stats/").await;
    let mut counted = rig.visits_counted(&board);
    // The bulk sender's pages are judged against its own score below; on their owner
    // node they are not stray.
    counted.stray.retain(|stray| {
        let total = stray
            .strip_prefix("tally:v:")
            .and_then(|rest| rest.split_once(" = "))
            .map(|(page, _)| page);
        let day = stray
            .strip_prefix("day ")
            .and_then(|rest| rest.split_once(" of "))
            .and_then(|(_, rest)| rest.split_once(" = "))
            .map(|(page, _)| page);
        let named =
            stray.ends_with("no request named it") || stray.ends_with("no request named the page");
        !(named
            && total
                .or(day)
                .is_some_and(|page| bulk.acked.contains_key(page)))
    });
    // The bulk pages' days add up to their totals, on their pages' nodes.
    let bulk_days: Vec<_> = all_day_keys(&rig.nodes())
        .into_iter()
        .filter(|(page, ..)| bulk.acked.contains_key(page))
        .collect();
    let day_problems = day_count_problems(&bulk_days, &bulk_stored, |page| {
        rig.ring.lookup_index(page.as_bytes())
    });
    assert!(day_problems.is_empty(), "{day_problems:?}");
    let urls = urls_counted(&rig.nodes(), &rig.ring);
    let output = server.stop();
    report(
        "scenario 4: lost replies",
        &board,
        &counted,
        started.elapsed(),
    );
    println!(
        "[scenario 4: lost replies] replies dropped {} | batches answered as replays: visits {}, statistics {}",
        proxy.replies_discarded(),
        replays[0],
        replays[1]
    );

    assert_eq!(proxy.replies_discarded(), DROPS);
    for (replays, (layout, _)) in replays.iter().zip(layouts) {
        assert!(
            *replays >= (DROPS / 2) as u64,
            "{layout}: one replay per lost reply at least ({replays}): {output}"
        );
    }
    let totals = board.totals();
    assert_eq!(totals.rejected + totals.other, 0, "{board:?}");
    assert!(bulk.refused.is_empty() && bulk.bulks > 0, "{bulk:?}");
    for (page, acked) in &bulk.acked {
        assert_eq!(
            bulk_stored.get(page),
            Some(acked),
            "{page}: increments by N and bulk visits count once across lost replies"
        );
    }
    assert_answered_promptly(&board, PROMPT);
    assert_eq!((counted.lost, counted.doubled), (0, 0));
    counted.assert_exact(&board);
    // Every request reached the statistics once (all were answered), and nothing else
    // did but the counter metrics the test polled.
    check_urls(&board, path, &urls, |s| {
        (s.answered(), s.answered() + s.unknown)
    })
    .unwrap_or_else(|wrong| panic!("{wrong}"));
    // Besides the single visits: the counter metrics the test polled, and the bulk
    // sender's requests (also under `/api/`).
    let mut also: Vec<String> = bulk
        .acked
        .keys()
        .map(|page| format!("/api/v1/counter/visit/{page}"))
        .collect();
    also.extend([
        "/api/v1/counter/metrics".to_owned(),
        "/api/v1/counter/visits".to_owned(),
    ]);
    let also: Vec<&str> = also.iter().map(String::as_str).collect();
    check_no_stray_urls(&board, path, &urls, &also).unwrap_or_else(|wrong| panic!("{wrong}"));
}

/// The replays of each layout answered by the proxied node.
async fn replays_by_layout(
    server: &crate::support::Server,
    node: &str,
    layouts: &[(&str, &[u8]); 2],
) -> Vec<u64> {
    let mut replays = Vec::new();
    for (layout, _) in layouts {
        replays.push(
            server
                .metric("tally_redis_batches_replayed_total", &[node, layout])
                .await as u64,
        );
    }
    replays
}
