//! Scenarios on a Redis Cluster (`REDIS_CLUSTER`): six `redis-server` processes with
//! `cluster-enabled yes` (three primaries, one replica each; `tally_testkit::Cluster`),
//! the real server binary counting on them, judged as the fault suite judges
//! (acknowledged against counted, per page: lost 0, doubled 0).
//!
//! The counts are read from the cluster directly, where the layout says they are: page
//! `p` under `tally:v:{bNNNN}:p` with `NNNN = xxh3_64(p) mod 1024`, on the primary serving
//! that tag's slot, and a URL in the sorted set `tally:urls:{bNNNN}`, `NNNN = xxh3_64(url)
//! mod 16`. A count anywhere else is stray. Scenarios that can share a cluster do.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tally_testkit::{Cluster, LoadSpec, Scoreboard, run_load};

use crate::support::{
    Counted, DAY_SEPARATOR, Server, day_count_problems, json, one_at_a_time, report,
};

/// Buckets of the visits and of the request statistics: the frozen layout.
const VISIT_BUCKETS: u64 = 1024;
const STATS_BUCKETS: u64 = 16;

/// The hash tag of `key`'s bucket among `buckets`.
fn tag(key: &str, buckets: u64) -> String {
    format!("{{b{:04}}}", tally_ring::key_hash(key.as_bytes()) % buckets)
}

/// The real server on `cluster`, with `extra` settings.
fn server(cluster: &Cluster, extra: &[(&str, &str)]) -> Server {
    let seeds = cluster.seeds();
    let mut env = vec![("REDIS_CLUSTER", seeds.as_str())];
    env.extend_from_slice(extra);
    Server::start_without_redis(&env)
}

/// Every visit counter on the cluster's primaries, compared with `board`: a page's count
/// is its key's value under its own bucket's tag; a key under another tag, of a page no
/// request named, or on two primaries, is stray.
fn visits_counted(cluster: &Cluster, board: &Scoreboard) -> Counted {
    visits_counted_of(cluster, board, "")
}

/// [`visits_counted`] of the pages whose name starts with `prefix` (the others belong to
/// another phase of a scenario, judged with its own score).
fn visits_counted_of(cluster: &Cluster, board: &Scoreboard, prefix: &str) -> Counted {
    let mut counts = HashMap::new();
    let mut stray = Vec::new();
    let mut days = Vec::new();
    for primary in cluster
        .primaries()
        .expect("the cluster lists its primaries")
    {
        let node = cluster.node(primary);
        let keys = node.keys("tally:v:*").expect("KEYS answers");
        let mut pipe = redis::pipe();
        for key in &keys {
            pipe.cmd("GET").arg(key);
        }
        let values: Vec<u64> = if keys.is_empty() {
            Vec::new()
        } else {
            node.query_pipeline(&pipe).expect("GETs answer")
        };
        for (key, value) in keys.iter().zip(values) {
            let (key_tag, page) = key
                .strip_prefix("tally:v:")
                .and_then(|rest| rest.split_once(':'))
                .unwrap_or(("?", key));
            if !page.starts_with(prefix) {
                continue;
            }
            if let Some((page, day)) = page.split_once(DAY_SEPARATOR) {
                // A day count: under its page's bucket, judged with the page below.
                if key_tag != tag(page, VISIT_BUCKETS) {
                    stray.push(format!("{key} = {value}: not under its page's bucket tag"));
                }
                days.push((page.to_owned(), day.to_owned(), 0, value));
                continue;
            }
            if key_tag != tag(page, VISIT_BUCKETS) {
                stray.push(format!("{key} = {value}: not under its bucket's tag"));
            } else if !board.keys.contains_key(page) {
                stray.push(format!("{key} = {value}: no request named it"));
            } else if counts.insert(page.to_owned(), value).is_some() {
                stray.push(format!("{key} = {value}: on two primaries"));
            }
        }
    }
    // Node placement was checked by tag above; here, that the days add up.
    stray.extend(day_count_problems(&days, &counts, |_| 0));
    Counted::new(board, counts, stray)
}

/// Every member of every `tally:urls:{bNNNN}` on the cluster's primaries, with its count;
/// panics when a URL is in a bucket that is not its own, or in two.
fn urls_counted(cluster: &Cluster) -> HashMap<String, u64> {
    let mut urls = HashMap::new();
    for primary in cluster
        .primaries()
        .expect("the cluster lists its primaries")
    {
        let node = cluster.node(primary);
        for key in node.keys("tally:urls:*").expect("KEYS answers") {
            let members: Vec<(String, u64)> = node
                .query(
                    redis::cmd("ZRANGE")
                        .arg(&key)
                        .arg(0)
                        .arg(-1)
                        .arg("WITHSCORES"),
                )
                .expect("ZRANGE answers");
            for (url, count) in members {
                assert_eq!(
                    format!("tally:urls:{}", tag(&url, STATS_BUCKETS)),
                    key,
                    "{url} counted in another bucket's set"
                );
                assert!(
                    urls.insert(url.clone(), count).is_none(),
                    "{url} in two sets"
                );
            }
        }
    }
    urls
}

/// The `host:port` of every primary, as the cluster lists them.
fn primary_names(cluster: &Cluster) -> Vec<String> {
    cluster
        .primaries()
        .expect("the cluster lists its primaries")
        .into_iter()
        .map(|i| cluster.node(i).addr().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_fifty_thousand_visits_and_a_ranking_of_100_000_urls_are_exact_on_a_cluster() {
    let _serial = one_at_a_time().await;
    let started = Instant::now();
    let cluster = Cluster::start().unwrap_or_else(|e| panic!("{e}"));
    let server = server(&cluster, &[]);

    // Scenario 1 on the cluster: 50,000 visits over 1,000 pages, 64 connections.
    let pages: Vec<String> = (0..1_000).map(|i| format!("page-{i}")).collect();
    let board = run_load(LoadSpec {
        time_limit: Duration::from_secs(120),
        ..LoadSpec::visits(&server.base_url(), pages.clone(), 50_000)
    })
    .await;
    server.wait_flushed(Duration::from_secs(30)).await;
    let counted = visits_counted(&cluster, &board);
    report(
        "cluster 1: concurrency",
        &board,
        &counted,
        started.elapsed(),
    );
    assert_eq!(
        board.totals().acked,
        50_000,
        "every visit acknowledged: {board:?}"
    );
    assert_eq!(counted.total, 50_000);
    assert_eq!((counted.lost, counted.doubled), (0, 0));
    counted.assert_exact(&board);
    // The API reads the same counts, naming a primary.
    let primaries = primary_names(&cluster);
    for page in pages.iter().step_by(25) {
        let body = server
            .get_json(&format!("/api/v1/counter/visits/{page}"))
            .await;
        assert_eq!(body["visits"], counted.counts[page], "{page}: {body}");
        let node = body["node"].as_str().expect("node");
        assert!(primaries.iter().any(|p| p == node), "{page}: {body}");
        let via = body["served_via"].as_str().expect("served_via");
        let port = node.rsplit(':').next().unwrap_or_default();
        assert!(
            via == "in_memory" || via == format!("redis_{port}"),
            "{page}: {body}"
        );
    }
    let status = server.get_json("/status").await;
    assert_eq!(status["status"], "healthy", "{status}");
    assert_eq!(status["store"]["kind"], "redis-cluster", "{status}");
    assert_eq!(status["redis_status"]["nodes"], 6, "{status}");
    assert_eq!(status["cluster"]["slots_without_primary"], 0, "{status}");
    assert_eq!(status["cluster"]["wait_replicas"], 1, "{status}");
    let shards = status["cluster"]["shards"].as_array().expect("shards");
    assert_eq!(shards.len(), 3, "{status}");
    for shard in shards {
        assert_eq!(
            shard["replicas"].as_array().map(Vec::len),
            Some(1),
            "{status}"
        );
        assert!(!shard["slots"].as_array().expect("slots").is_empty());
    }
    let health = server.request("GET", "/health").await;
    assert_eq!(health.status, 200);
    assert_eq!(json(&health)["status"], "healthy");

    // Scenario 6 on the cluster: /stats/ ranks 100,000 URLs exactly across its buckets.
    // Seeded straight into the buckets' sets (the layout, as the test reads it), then
    // requests through the server add to some, and every page read must be the one the
    // cluster's sets give, merged.
    let seeded: Vec<(String, u64)> = (0..100_000_u64)
        .map(|i| (format!("/api/r/{i:05}/"), 1 + (i * 7_919) % 2_000))
        .collect();
    seed_urls(&cluster, &seeded);
    let requested: Vec<String> = seeded
        .iter()
        .step_by(500)
        .map(|(url, _)| url.clone())
        .collect();
    let requests = run_load(LoadSpec {
        method: "GET",
        path: |url| url.to_owned(),
        concurrency: 16,
        ..LoadSpec::visits(&server.base_url(), requested.clone(), 4_000)
    })
    .await;
    assert_eq!(requests.totals().acked, 4_000, "{requests:?}");
    // The first page flushes the server's own pending counts before it reads.
    let top = stats_page(&server, 0, 100).await;
    let urls = urls_counted(&cluster);
    for (url, seed) in &seeded {
        let asked = requests.score(url).acked;
        assert_eq!(urls.get(url).copied(), Some(seed + asked), "{url}");
    }
    let mut ranking: Vec<(String, u64)> = urls.into_iter().collect();
    ranking.sort_by(tally_counter_order);
    assert!(ranking.len() >= 100_000, "{}", ranking.len());
    assert_eq!(top, ranking[..100], "the top 100");
    for (offset, limit) in [(1_000, 100), (54_321, 1_000), (99_950, 1_000)] {
        let page = stats_page(&server, offset, limit).await;
        let end = (offset + limit).min(ranking.len());
        assert_eq!(page, ranking[offset..end], "offset {offset}, limit {limit}");
    }
    let output = server.stop();
    assert!(
        output.contains("redis cluster store ready"),
        "the server counted on the cluster: {output}"
    );
    println!(
        "[cluster 6: /stats/ of {} URLs] pages exact; wall {:.1?}",
        ranking.len(),
        started.elapsed()
    );
}

/// Count descending, then URL ascending: `/stats/`'s order.
fn tally_counter_order(a: &(String, u64), b: &(String, u64)) -> std::cmp::Ordering {
    b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0))
}

/// Adds `urls` (URL, count) to their buckets' sorted sets, one pipeline per primary.
fn seed_urls(cluster: &Cluster, urls: &[(String, u64)]) {
    let mut by_set: HashMap<String, Vec<(u64, &str)>> = HashMap::new();
    for (url, count) in urls {
        by_set
            .entry(format!("tally:urls:{}", tag(url, STATS_BUCKETS)))
            .or_default()
            .push((*count, url));
    }
    for (key, members) in by_set {
        let slot = cluster.slot_of(&key).expect("CLUSTER KEYSLOT");
        let node = cluster.node(cluster.owner_of(slot).expect("a primary serves the slot"));
        let mut pipe = redis::pipe();
        for chunk in members.chunks(1_000) {
            let cmd = pipe.cmd("ZADD").arg(&key);
            for (count, url) in chunk {
                cmd.arg(*count).arg(*url);
            }
            cmd.ignore();
        }
        node.query_pipeline::<()>(&pipe).expect("ZADDs answer");
    }
}

/// `GET /stats/?offset=&limit=` as `(url, count)` pairs.
async fn stats_page(server: &Server, offset: usize, limit: usize) -> Vec<(String, u64)> {
    let body = server
        .get_json(&format!("/stats/?offset={offset}&limit={limit}"))
        .await;
    body.as_array()
        .unwrap_or_else(|| panic!("a ranking: {body}"))
        .iter()
        .map(|entry| {
            (
                entry["url"].as_str().expect("url").to_owned(),
                entry["count"].as_u64().expect("count"),
            )
        })
        .collect()
}

/// A visit load over `pages` until `stop` is set (two minutes at most).
fn endless_visits(server: &Server, pages: Vec<String>, stop: &Arc<AtomicBool>) -> LoadSpec {
    LoadSpec {
        concurrency: 16,
        requests: u64::MAX,
        time_limit: Duration::from_secs(120),
        stop: Some(Arc::clone(stop)),
        ..LoadSpec::visits(&server.base_url(), pages, 0)
    }
}

/// `count` pages named `{prefix}{i}`.
fn pages(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{prefix}{i}")).collect()
}

/// Scenarios 2 and 5 on one cluster with append-only files, one server throughout:
///
/// 2. SIGKILL of a primary under load: its replica is promoted (asserted: the cluster and
///    the server's `/status` list it as a primary), the killed node comes back as its
///    replica, and the visits of that load are exact. Batches to the promoted primary
///    wait while it has no replica (its `WAIT` could not be met), then drain.
/// 5. The whole cluster killed under load, then started again: every visit acknowledged
///    meanwhile (held in memory) is written once. Then killed again, visits sent (held),
///    and SIGTERM: the server exits 0 within `SHUTDOWN_TIMEOUT_SECONDS`, reporting exactly
///    those visits as not written, and none of them is in the cluster afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_a_failover_and_a_whole_cluster_outage_lose_no_acknowledged_visit() {
    let _serial = one_at_a_time().await;
    let started = Instant::now();
    let mut cluster = Cluster::builder()
        .aof(true)
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    let mut server = server(&cluster, &[("SHUTDOWN_TIMEOUT_SECONDS", "5")]);

    // Scenario 2: a primary killed under load.
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(run_load(endless_visits(&server, pages("fo-", 600), &stop)));
    server
        .wait_for_metric(
            "tally_counter_batches_total",
            &["counter=\"visits\"", "outcome=\"ok\""],
            20.0,
            Duration::from_secs(30),
            "visit batches written",
        )
        .await;
    let victim = cluster.primaries().expect("primaries")[0];
    let replica = cluster.replicas_of(victim).expect("replicas")[0];
    let victim_name = cluster.node(victim).addr().to_string();
    let replica_name = cluster.node(replica).addr().to_string();
    cluster.node_mut(victim).kill().expect("SIGKILL");
    cluster
        .wait_for("the replica to be promoted", Duration::from_secs(30), |c| {
            let primaries = c.primaries()?;
            Ok(
                (primaries.contains(&replica) && !primaries.contains(&victim))
                    .then_some(())
                    .ok_or(format!("primaries {primaries:?}")),
            )
        })
        .unwrap_or_else(|e| panic!("{e}"));
    // The promoted primary has no replica yet: its buckets' visits wait in memory.
    let promoted = server
        .wait_for_status("the server to see the replica promoted", |status| {
            status["cluster"]["shards"]
                .as_array()
                .is_some_and(|shards| {
                    shards
                        .iter()
                        .any(|s| s["primary"]["node"] == replica_name.as_str())
                })
        })
        .await;
    cluster.node_mut(victim).restart().expect("restarted");
    cluster
        .wait_for(
            "the killed node to rejoin as a replica",
            Duration::from_secs(30),
            |c| {
                Ok(c.replicas_of(replica)?
                    .contains(&victim)
                    .then_some(())
                    .ok_or("not yet".to_owned()))
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
    cluster
        .wait_until_settled()
        .unwrap_or_else(|e| panic!("{e}"));
    server
        .wait_for_status("the server to see the cluster healthy again", |status| {
            status["status"] == "healthy"
        })
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let failover = load.await.expect("load task");
    server.wait_flushed(Duration::from_secs(30)).await;
    let counted = visits_counted_of(&cluster, &failover, "fo-");
    report(
        "cluster 2: primary SIGKILL, replica promoted",
        &failover,
        &counted,
        started.elapsed(),
    );
    println!(
        "[cluster 2] killed {victim_name}; {replica_name} promoted; the server saw it: {}",
        promoted["cluster"]["shards"]
    );
    assert_eq!(
        failover.totals().rejected + failover.totals().other,
        0,
        "{failover:?}"
    );
    assert_eq!((counted.lost, counted.doubled), (0, 0));
    counted.assert_exact(&failover);
    assert!(
        server.output().contains("redis cluster primaries:"),
        "the server logged the new primaries"
    );

    // Scenario 5a: the whole cluster down under load, then back.
    let phase = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(run_load(endless_visits(
        &server,
        pages("down-", 600),
        &stop,
    )));
    server
        .wait_for_metric(
            "tally_counter_batches_total",
            &["counter=\"visits\"", "outcome=\"ok\""],
            failover_batches(&server).await + 20.0,
            Duration::from_secs(30),
            "visit batches written",
        )
        .await;
    cluster.kill_all().expect("SIGKILL every node");
    server
        .wait_for_status("the server to see the cluster down", |status| {
            status["status"] == "unhealthy"
        })
        .await;
    let health = server.request("GET", "/health").await;
    assert_eq!(health.status, 503, "{}", health.text());
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.restart_stopped().unwrap_or_else(|e| panic!("{e}"));
    server
        .wait_for_status("the server to see the cluster back", |status| {
            status["status"] == "healthy"
        })
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let outage = load.await.expect("load task");
    server.wait_flushed(Duration::from_secs(30)).await;
    let counted = visits_counted_of(&cluster, &outage, "down-");
    report(
        "cluster 5: the whole cluster down, then back",
        &outage,
        &counted,
        phase.elapsed(),
    );
    assert_eq!(
        outage.totals().rejected + outage.totals().other,
        0,
        "{outage:?}"
    );
    assert_eq!((counted.lost, counted.doubled), (0, 0));
    counted.assert_exact(&outage);

    // Scenario 5b: the whole cluster down, visits held, SIGTERM.
    cluster.kill_all().expect("SIGKILL every node");
    let held = run_load(LoadSpec {
        concurrency: 8,
        ..LoadSpec::visits(&server.base_url(), pages("term-", 200), 2_000)
    })
    .await;
    assert_eq!(
        held.totals().acked,
        2_000,
        "visits are taken while the cluster is down: {held:?}"
    );
    let (status, took) = server.terminate(Duration::from_secs(20));
    let output = server.output();
    assert_eq!(status.code(), Some(0), "{output}");
    // Within SHUTDOWN_TIMEOUT_SECONDS, give or take the test's own polling.
    assert!(
        took < Duration::from_secs(6),
        "SHUTDOWN_TIMEOUT_SECONDS 5: took {took:?}"
    );
    let reported = output
        .lines()
        .find(|line| line.contains("shutdown complete, but "))
        .unwrap_or_else(|| panic!("no report of what could not be written: {output}"));
    assert!(
        reported.contains("shutdown complete, but 2000 visits to "),
        "every held visit reported, none claimed written: {reported}"
    );
    cluster.restart_stopped().unwrap_or_else(|e| panic!("{e}"));
    let after = visits_counted_of(&cluster, &held, "term-");
    assert_eq!(after.total, 0, "visits reported unwritten were not written");
    // And nothing of the earlier phases moved.
    assert_eq!(
        visits_counted_of(&cluster, &failover, "fo-").total,
        failover.totals().acked
    );
    assert_eq!(
        visits_counted_of(&cluster, &outage, "down-").total,
        outage.totals().acked
    );
    println!(
        "[cluster 5] SIGTERM with the cluster down: exit 0 after {took:.1?}, {} visits reported unwritten; wall {:.1?}",
        held.totals().acked,
        started.elapsed()
    );
}

/// Visit batches the server has written so far.
async fn failover_batches(server: &Server) -> f64 {
    server
        .metric(
            "tally_counter_batches_total",
            &["counter=\"visits\"", "outcome=\"ok\""],
        )
        .await
}

/// Bytes only a visit batch (or a read of visit counts) sends: a key of a bucket's counters.
const VISIT_BATCH: &[u8] = b"\r\ntally:v:{b";
/// Likewise for a batch of the request statistics (or a ranking read): a bucket's set.
const STATS_BATCH: &[u8] = b"\r\ntally:urls:{b";

/// Scenario 4 on a cluster: one primary is reached only through a
/// [`tally_testkit::FaultProxy`] (it announces the proxy's port to the cluster, so every
/// client that learns it from the cluster connects through the proxy), which six times
/// lets a batch reach the primary, lets it run, and drops the answer (three visit batches,
/// three of the request statistics). Each lost reply is followed by a replay of its
/// layout on that primary: the retry, same batch, answered as applied. Visits and
/// statistics exact, nothing counted that no request named, every visit answered promptly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_batches_whose_replies_are_lost_on_a_cluster_are_counted_once() {
    const DROPS: usize = 6;
    let _serial = one_at_a_time().await;
    let started = Instant::now();
    let mut cluster = Cluster::start().unwrap_or_else(|e| panic!("{e}"));
    let proxied = cluster.primaries().expect("primaries")[1];
    let proxy = tally_testkit::FaultProxy::start(cluster.node(proxied).addr())
        .await
        .expect("proxy");
    cluster
        .announce_port(proxied, proxy.port())
        .unwrap_or_else(|e| panic!("{e}"));
    let server = server(&cluster, &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let spec = endless_visits(&server, pages("page-", 300), &stop);
    let path = spec.path;
    let load = tokio::spawn(run_load(spec));

    // Once batches flow to every primary (their scripts loaded), lose one batch reply at a
    // time, and wait for the retry of each to be answered as a replay.
    for counter in ["visits", "stats"] {
        server
            .wait_for_metric(
                "tally_counter_batches_total",
                &[&format!("counter=\"{counter}\""), "outcome=\"ok\""],
                100.0,
                Duration::from_secs(30),
                "batches written",
            )
            .await;
    }
    let proxy_node = format!("node=\"127.0.0.1:{}\"", proxy.port());
    let layouts = [
        ("layout=\"counters\"", VISIT_BATCH),
        ("layout=\"sorted-set\"", STATS_BATCH),
    ];
    for dropped in 1..=DROPS {
        let (layout, needle) = layouts[(dropped - 1) % 2];
        let replays = server
            .metric("tally_redis_batches_replayed_total", &[&proxy_node, layout])
            .await;
        proxy.set_mode(tally_testkit::Mode::DropRepliesMatching(1, needle.to_vec()));
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
    server.wait_flushed(Duration::from_secs(30)).await;
    let mut replays = Vec::new();
    for (layout, _) in layouts {
        replays.push(
            server
                .metric("tally_redis_batches_replayed_total", &[&proxy_node, layout])
                .await as u64,
        );
    }
    // `/stats/` writes the server's pending statistics first.
    let _ = server.get_json("/stats/").await;
    let counted = visits_counted(&cluster, &board);
    let urls = urls_counted(&cluster);
    let output = server.stop();
    report(
        "cluster 4: lost replies",
        &board,
        &counted,
        started.elapsed(),
    );
    println!(
        "[cluster 4: lost replies] replies dropped {} | batches answered as replays: visits {}, statistics {}",
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
    crate::support::assert_answered_promptly(&board, Duration::from_secs(3));
    assert_eq!((counted.lost, counted.doubled), (0, 0));
    counted.assert_exact(&board);
    crate::support::check_urls(&board, path, &urls, |s| {
        (s.answered(), s.answered() + s.unknown)
    })
    .unwrap_or_else(|wrong| panic!("{wrong}"));
    crate::support::check_no_stray_urls(&board, path, &urls, &["/api/v1/counter/metrics"])
        .unwrap_or_else(|wrong| panic!("{wrong}"));
}

/// What a reader of counts saw during a reshard.
#[derive(Debug, Default)]
struct Reads {
    ok: u64,
    unavailable: u64,
    other: Vec<String>,
}

/// Reads the counts of `pages` in turn (the read cache is short, so most reads reach the
/// cluster) until `stop` is set.
async fn read_counts(address: String, pages: Vec<String>, stop: Arc<AtomicBool>) -> Reads {
    let mut reads = Reads::default();
    let mut conn = None;
    for page in pages.iter().cycle() {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let mut open = match conn.take() {
            Some(open) => open,
            None => tally_testkit::HttpConnection::connect(&address)
                .await
                .expect("the server accepts"),
        };
        match open
            .send("GET", &format!("/api/v1/counter/visits/{page}"))
            .await
        {
            Ok(response) if response.status == 200 => reads.ok += 1,
            Ok(response) if response.status == 503 => reads.unavailable += 1,
            Ok(response) => reads
                .other
                .push(format!("{}: {}", response.status, response.text())),
            Err(e) => reads.other.push(format!("{page}: {e}")),
        }
        if open.reusable() {
            conn = Some(open);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    reads
}

/// Scenario 3 on a cluster: a reshard under load. `redis-cli --cluster reshard` moves
/// 2,000 hash slots (with about 120 busy buckets, their counts and their high-water marks)
/// from one primary to another while visits are written and counts read. Batches meet
/// `ASK`, `TRYAGAIN` and then `MOVED`, and follow; the counts are exact, the slots and the
/// busy buckets' keys and marks are on the new primary, and reads are served throughout,
/// but for brief 503s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_a_reshard_under_load_moves_busy_buckets_and_counts_stay_exact() {
    const MOVED: u32 = 2_000;
    let _serial = one_at_a_time().await;
    let started = Instant::now();
    let cluster = Cluster::start().unwrap_or_else(|e| panic!("{e}"));
    let server = server(&cluster, &[("CACHE_TTL_SECONDS", "0.05")]);
    let primaries = cluster.primaries().expect("primaries");
    let (from, to) = (primaries[0], primaries[1]);
    let view = cluster.view().expect("a view");
    let source_id = cluster.node_id(from).expect("an id");
    let first = view
        .iter()
        .find(|n| n.id == source_id)
        .and_then(|n| n.slots.first().map(|(a, _)| *a))
        .expect("the source serves slots");
    let all_pages = pages("page-", 1_000);
    // The busy buckets in the slots `redis-cli` moves first (the source's lowest).
    let moving: Vec<(String, u16)> = {
        let mut tags: Vec<(String, u16)> = all_pages
            .iter()
            .map(|page| {
                let tag = tag(page, VISIT_BUCKETS);
                let slot = cluster.slot_of(&tag).expect("a slot");
                (tag, slot)
            })
            .filter(|(_, slot)| (first..first + MOVED as u16).contains(slot))
            .collect();
        tags.sort();
        tags.dedup();
        tags
    };
    assert!(moving.len() > 50, "busy buckets to move: {}", moving.len());

    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(run_load(endless_visits(&server, all_pages.clone(), &stop)));
    let reader = tokio::spawn(read_counts(
        server.addr(),
        all_pages.iter().step_by(7).cloned().collect(),
        Arc::clone(&stop),
    ));
    server
        .wait_for_metric(
            "tally_counter_batches_total",
            &["counter=\"visits\"", "outcome=\"ok\""],
            500.0,
            Duration::from_secs(30),
            "visit batches written",
        )
        .await;
    let resharding = Instant::now();
    let output = tokio::task::spawn_blocking(move || {
        let output = cluster
            .reshard(from, to, MOVED)
            .unwrap_or_else(|e| panic!("{e}"));
        (cluster, output)
    });
    let (cluster, reshard_output) = output.await.expect("the reshard task");
    let took = resharding.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let board = load.await.expect("load task");
    let reads = reader.await.expect("reader task");
    server.wait_flushed(Duration::from_secs(30)).await;
    let counted = visits_counted(&cluster, &board);
    let view = cluster.view().expect("a view");
    let target_id = cluster.node_id(to).expect("an id");
    let target = view.iter().find(|n| n.id == target_id).expect("the target");
    let moved_keys = moving
        .iter()
        .filter(|(tag, slot)| {
            let keys = cluster
                .node(to)
                .keys(&format!("tally:v:{tag}:*"))
                .expect("KEYS");
            let mark: bool = cluster
                .node(to)
                .query(redis::cmd("EXISTS").arg(format!("tally:applied:{tag}")))
                .expect("EXISTS");
            target.serves(*slot) && !keys.is_empty() && mark
        })
        .count();
    let redirects = server
        .metric("tally_redis_cluster_redirects_total", &["kind=\"moved\""])
        .await;
    let output = server.stop();
    report(
        "cluster 3: reshard under load",
        &board,
        &counted,
        started.elapsed(),
    );
    println!(
        "[cluster 3: reshard under load] {MOVED} slots moved in {took:.1?}, {} busy buckets with them ({moved_keys} found on the new primary with their marks); batches redirected by MOVED: {redirects} | reads: {} served, {} 503",
        moving.len(),
        reads.ok,
        reads.unavailable
    );

    assert!(
        reshard_output.contains("Moving slot"),
        "redis-cli moved slots: {reshard_output}"
    );
    assert!(
        (first..first + MOVED as u16).all(|slot| target.serves(slot)),
        "the slots moved: {:?}",
        target.slots
    );
    assert_eq!(
        moved_keys,
        moving.len(),
        "every busy bucket moved with its keys and marks"
    );
    assert!(
        redirects >= 1.0,
        "batches met the moved slots, and followed them"
    );
    assert!(
        reads.other.is_empty(),
        "reads answered 200 or 503: {:?}",
        reads.other
    );
    assert!(
        reads.ok > 10 * reads.unavailable.max(1),
        "reads were served throughout: {reads:?}"
    );
    let totals = board.totals();
    assert_eq!(totals.rejected + totals.other, 0, "{board:?}");
    assert_eq!((counted.lost, counted.doubled), (0, 0));
    counted.assert_exact(&board);
    assert!(!output.is_empty());
}

/// `REDIS_CLUSTER` with `REDIS_NODES`, and `REDIS_CLUSTER` naming a standalone node: the
/// server exits with code 2 and one line saying what to change, no password shown.
#[tokio::test]
async fn redis_cluster_beside_redis_nodes_or_on_a_standalone_node_exits_2() {
    const SECRET: &str = "cluster-pw-52ad";
    let _serial = one_at_a_time().await;
    let node = tally_testkit::RedisNode::builder()
        .password(SECRET)
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    let standalone = format!("redis://:{SECRET}@127.0.0.1:{}", node.port());
    let cases: [(&[(&str, &str)], &str); 2] = [
        (
            &[
                ("REDIS_CLUSTER", standalone.as_str()),
                ("REDIS_NODES", standalone.as_str()),
            ],
            "REDIS_CLUSTER=\"redis://:***@127.0.0.1:",
        ),
        (&[("REDIS_CLUSTER", standalone.as_str())], "REDIS_CLUSTER: "),
    ];
    let expected = [
        "REDIS_NODES is set too: a server counts either on standalone nodes (REDIS_NODES) or on a Redis Cluster (REDIS_CLUSTER); unset one of them",
        "is not a cluster node (cluster support is disabled); list a Redis Cluster's nodes in REDIS_CLUSTER, or standalone nodes in REDIS_NODES",
    ];
    for ((env, start), expected) in cases.into_iter().zip(expected) {
        let (status, stdout, stderr) = Server::run_to_exit(env);

        assert_eq!(status.code(), Some(2), "{env:?}: {stdout}{stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{stderr}");
        assert!(
            lines[0].starts_with(&format!("tally-server: invalid configuration: {start}")),
            "{}",
            lines[0]
        );
        assert!(lines[0].contains(expected), "{}", lines[0]);
        assert!(
            !stderr.contains(SECRET) && !stdout.contains(SECRET),
            "{stderr}"
        );
    }
}
