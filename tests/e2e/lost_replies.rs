//! Scenario 4: lost replies. One node sits behind a [`FaultProxy`] that, several times
//! during a visit load, forwards a batch script to the node, lets the node run it, then
//! drops the answer and hangs up. The server cannot know whether the batch was applied and
//! sends it again, unchanged; the node's high-water mark for the instance answers the
//! retry without applying it twice. Visits and request statistics are both exact.

use std::time::{Duration, Instant};

use tally_testkit::{FaultProxy, LoadSpec, Mode, RedisCluster, run_load};

use crate::support::{
    Server, check_urls, name_of, one_at_a_time, report, ring, urls_counted, visits_counted,
};

/// Replies lost in all, one at a time.
const DROPS: usize = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_whose_replies_are_lost_are_counted_once() {
    let _serial = one_at_a_time().await;
    let started = Instant::now();
    let cluster = RedisCluster::start(3).expect("nodes");
    let proxy = FaultProxy::start(cluster.node(1).addr())
        .await
        .expect("proxy");
    // The server knows node 1 by the proxy's address: that is its name on the ring.
    let names = [
        name_of(cluster.node(0)),
        format!("127.0.0.1:{}", proxy.port()),
        name_of(cluster.node(2)),
    ];
    let nodes_env = [cluster.node(0).url(), proxy.url(), cluster.node(2).url()].join(",");
    let ring = ring(&names);
    let server = Server::start(&nodes_env, &[]);
    let pages: Vec<String> = (0..300).map(|i| format!("page-{i}")).collect();
    let spec = LoadSpec {
        concurrency: 16,
        requests: u64::MAX,
        time_limit: Duration::from_secs(10),
        ..LoadSpec::visits(&server.base_url(), pages, 0)
    };
    let path = spec.path;
    let load = tokio::spawn(run_load(spec));

    // Once batches flow, lose one batch reply at a time, a second apart.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for dropped in 1..=DROPS {
        proxy.set_mode(Mode::DropRepliesMatching(1, b"EVALSHA".to_vec()));
        let deadline = Instant::now() + Duration::from_secs(5);
        while proxy.replies_dropped() < dropped {
            assert!(Instant::now() < deadline, "no batch reached the proxy");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let board = load.await.expect("load task");
    server.wait_flushed(Duration::from_secs(30)).await;
    let proxy_node = format!("node=\"127.0.0.1:{}\"", proxy.port());
    let replays = server
        .metric("tally_redis_batches_replayed_total", &[&proxy_node])
        .await as u64;
    // `/stats/` writes this instance's pending statistics first.
    let _ = server.get_json("/stats/").await;
    let nodes: Vec<_> = cluster.nodes().iter().collect();
    let counted = visits_counted(&nodes, &ring, &board);
    let urls = urls_counted(&nodes, &ring);
    let output = server.stop();
    report(
        "scenario 4: lost replies",
        &board,
        &counted,
        started.elapsed(),
    );
    println!(
        "[scenario 4: lost replies] replies dropped {} | batches answered as replays {replays}",
        proxy.replies_dropped()
    );

    assert_eq!(proxy.replies_dropped(), DROPS);
    assert!(
        replays >= 1,
        "a retried batch was recognised as applied: {output}"
    );
    let totals = board.totals();
    assert_eq!(totals.rejected + totals.other, 0, "{board:?}");
    assert_eq!((counted.lost, counted.doubled), (0, 0));
    counted.assert_exact(&board);
    // Every request reached the statistics once: answered ones certainly, unknown ones
    // maybe.
    check_urls(&board, path, &urls, |s| {
        (s.answered(), s.answered() + s.unknown)
    })
    .unwrap_or_else(|wrong| panic!("{wrong}"));
}
