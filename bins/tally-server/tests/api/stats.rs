//! The request-statistics API: counting `/api/*`, `/stats/`, and `/test/{n}/`.

use std::collections::{HashMap, HashSet};

use reqwest::Method;
use serde_json::{Value, json};
use tally_testkit::{RedisCluster, second_while_first_runs};

use crate::support::{
    KeepAliveClient, TestApp, redis_config, spawn_app, spawn_app_with, test_config,
};

/// `/stats/` as `(url, count)` pairs, in the order served.
async fn ranking(app: &TestApp, query: &str) -> Vec<(String, u64)> {
    let response = app.request(Method::GET, &format!("/stats/{query}")).await;
    assert_eq!(response.status, 200, "{}", response.text);
    response
        .json()
        .as_array()
        .expect("an array")
        .iter()
        .map(|entry| {
            let object = entry.as_object().expect("an object");
            assert_eq!(object.len(), 2, "{entry}");
            (
                entry["url"].as_str().expect("url").to_owned(),
                entry["count"].as_u64().expect("count"),
            )
        })
        .collect()
}

fn owned(pairs: &[(&str, u64)]) -> Vec<(String, u64)> {
    pairs.iter().map(|(u, c)| ((*u).to_owned(), *c)).collect()
}

#[tokio::test]
async fn walkthrough_of_the_original_service() {
    let app = spawn_app().await;
    assert_eq!(app.request(Method::GET, "/stats/").await.json(), json!([]));

    for path in [
        "/api/products/123/",
        "/api/users/456/",
        "/api/products/123/",
    ] {
        let response = app.request(Method::GET, path).await;
        assert_eq!(response.status, 200);
        assert_eq!(response.json(), json!({ "path": path }));
    }

    let response = app.request(Method::GET, "/stats/").await;
    assert_eq!(
        response.json(),
        json!([{"count": 2, "url": "/api/products/123/"}, {"count": 1, "url": "/api/users/456/"}])
    );
    // `/stats/` itself is not under /api/: still the same answer, also without the slash.
    assert_eq!(
        app.request(Method::GET, "/stats").await.json(),
        response.json()
    );
}

#[tokio::test]
async fn paths_count_as_received_without_query_strings() {
    let app = spawn_app().await;
    for path in [
        "/api/a/?x=1",
        "/api/a/?y=2",
        "/api/a",
        "/api/caf%C3%A9/",
        "/api/a/",
    ] {
        assert_eq!(app.request(Method::GET, path).await.status, 200, "{path}");
    }
    // Any method and any outcome under /api/ counts: a POST to the simulated API is a 405.
    app.request(Method::POST, "/api/b/")
        .await
        .assert_error(405, "method_not_allowed");
    // The visit counter lives under /api/v1/ and counts too.
    assert_eq!(app.visit("page1").await.status, 200);

    let got = ranking(&app, "").await;

    let want = [
        ("/api/a/", 3),
        ("/api/a", 1),
        ("/api/b/", 1),
        ("/api/caf%C3%A9/", 1),
        ("/api/v1/counter/visit/page1", 1),
    ];
    assert_eq!(got, owned(&want));
}

#[tokio::test]
async fn limit_and_offset_page_the_ranking_and_bad_values_are_400() {
    let app = spawn_app().await;
    for (path, times) in [("/api/x/", 3), ("/api/y/", 2), ("/api/z/", 1)] {
        for _ in 0..times {
            app.request(Method::GET, path).await;
        }
    }

    assert_eq!(
        ranking(&app, "?limit=2").await,
        owned(&[("/api/x/", 3), ("/api/y/", 2)])
    );
    assert_eq!(
        ranking(&app, "?limit=1&offset=1").await,
        owned(&[("/api/y/", 2)])
    );
    assert_eq!(ranking(&app, "?offset=5").await, vec![]);
    for query in [
        "?limit=0",
        "?limit=10001",
        "?limit=abc",
        "?offset=-1",
        "?offset=x",
    ] {
        let response = app.request(Method::GET, &format!("/stats/{query}")).await;
        let message = response.assert_error(400, "invalid_query");
        assert!(
            message.contains("limit") || message.contains("offset"),
            "{query}: {message}"
        );
    }
}

#[tokio::test]
async fn a_test_run_of_fifty_adds_exactly_fifty_requests_of_the_right_shape() {
    let app = spawn_app().await;
    app.request(Method::GET, "/api/before/").await;

    let response = app.request(Method::POST, "/test/50/").await;

    assert_eq!(response.status, 200, "{}", response.text);
    let body = response.json();
    let keys: HashSet<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let expected_keys = HashSet::from([
        "requested",
        "succeeded",
        "failed",
        "duration_ms",
        "pool",
        "distinct_urls",
    ]);
    assert_eq!(keys, expected_keys);
    assert_eq!(
        (body["requested"].as_u64(), body["succeeded"].as_u64()),
        (Some(50), Some(50))
    );
    assert_eq!(body["failed"], 0);
    assert!(body["duration_ms"].is_u64());
    let pool: HashSet<String> = body["pool"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(pool.len(), 3);

    let stats = ranking(&app, "?limit=10000").await;
    let generated: Vec<&(String, u64)> = stats
        .iter()
        .filter(|(url, _)| url != "/api/before/")
        .collect();
    assert_eq!(
        generated.iter().map(|(_, c)| c).sum::<u64>(),
        50,
        "{stats:?}"
    );
    assert_eq!(
        generated.len() as u64,
        body["distinct_urls"].as_u64().unwrap()
    );
    let mut segments_seen = HashSet::new();
    for (url, _) in generated {
        let inner = url.strip_prefix("/api/").and_then(|u| u.strip_suffix('/'));
        let segments: Vec<&str> = inner
            .unwrap_or_else(|| panic!("{url}"))
            .split('/')
            .collect();
        assert!((1..=6).contains(&segments.len()), "{url}");
        for segment in segments {
            assert!(
                pool.contains(segment),
                "{url} uses a string outside the pool {pool:?}"
            );
            segments_seen.insert(segment.to_owned());
        }
    }
    assert!(segments_seen.len() <= 3);
}

#[tokio::test]
async fn test_run_counts_outside_the_range_are_400() {
    let app = spawn_app().await;
    for n in [
        "abc",
        "0",
        "100001",
        "-5",
        "-1",
        "1.5",
        "18446744073709551616",
    ] {
        let response = app.request(Method::POST, &format!("/test/{n}/")).await;
        let message = response.assert_error(400, "invalid_request_count");
        assert_eq!(
            message,
            format!("invalid request count \"{n}\": expected a whole number from 1 to 100000")
        );
    }
    assert_eq!(ranking(&app, "").await, vec![], "nothing was sent");

    // `TEST_MAX_REQUESTS` moves the bound.
    let mut config = test_config();
    config.test_max_requests = 2000;
    let app = spawn_app_with(config).await;
    let message = app
        .request(Method::POST, "/test/2001/")
        .await
        .assert_error(400, "invalid_request_count");
    assert!(message.ends_with("from 1 to 2000"), "{message}");
}

#[tokio::test]
async fn a_second_concurrent_test_run_gets_429() {
    let app = spawn_app().await;

    // The second run is sent once the first is seen counting its requests, and counts only
    // if the first was still going when the second was answered.
    let overlap = second_while_first_runs(
        5,
        || app.request(Method::POST, "/test/3000/"),
        || app.request(Method::POST, "/test/10/"),
        async || {
            let status = app.status().await.json();
            let stats = &status["stats_status"];
            (stats["pending_urls"].as_u64().unwrap() + stats["requests_written"].as_u64().unwrap())
                as f64
        },
    )
    .await;

    assert_eq!(overlap.first.status, 200, "{}", overlap.first.text);
    overlap.second.assert_error(429, "test_already_running");
    assert!(overlap.second.header("retry-after").is_some());
    assert_eq!(
        app.request(Method::POST, "/test/1/").await.status,
        200,
        "free again afterwards"
    );
}

#[tokio::test]
async fn the_test_endpoint_can_be_turned_off() {
    let mut config = test_config();
    config.test_endpoint_enabled = false;
    let app = spawn_app_with(config).await;

    app.request(Method::POST, "/test/5/")
        .await
        .assert_error(404, "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_shared_nodes_sum_exactly_and_rank_identically() {
    let cluster = RedisCluster::start(3).unwrap();
    let a = spawn_app_with(redis_config(&cluster, &[])).await;
    let b = spawn_app_with(redis_config(&cluster, &[])).await;
    let mut tally: HashMap<String, u64> = HashMap::new();
    for i in 0..300u64 {
        let path = format!("/api/shared/{}/", i % 37);
        let app = if i % 3 == 0 { &a } else { &b };
        assert_eq!(app.request(Method::GET, &path).await.status, 200);
        *tally.entry(path).or_default() += 1;
    }

    // Each /stats/ flushes its own instance; after both have, either sees everything.
    ranking(&a, "?limit=100").await;
    ranking(&b, "?limit=100").await;
    let from_a = ranking(&a, "?limit=100").await;
    let from_b = ranking(&b, "?limit=100").await;

    let mut want: Vec<(String, u64)> = tally.into_iter().collect();
    want.sort_by(|x, y| y.1.cmp(&x.1).then_with(|| x.0.cmp(&y.0)));
    assert_eq!(from_a, want);
    assert_eq!(from_b, want);
}

/// A flood of distinct URLs with one node paused through its middle third: the paused
/// node's share of `MAX_PENDING_KEYS` fills, so the bound is reached and new URLs of that
/// node are refused (503, not counted) while the other nodes' are counted; the pending
/// URLs never exceed the documented bound; afterwards every node's sorted set holds
/// exactly what the clients were answered 2xx for, URL by URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_distinct_urls_past_the_pending_bound_ranks_exactly() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    const DISTINCT: u64 = 60_000;
    const CLIENTS: u64 = 16;
    const BOUND: u64 = 3_000;
    const NODES: u64 = 3;
    const PAUSED: usize = 1;
    // A node's share of the bound, and what the crate docs allow in all: each node at
    // most twice its share (its keys in flight take one more place each).
    const SHARE: u64 = BOUND.div_ceil(NODES);
    const MOST_PENDING: u64 = 2 * SHARE * NODES;
    let cluster = RedisCluster::start(NODES as usize).unwrap();
    let bound = BOUND.to_string();
    let config = redis_config(
        &cluster,
        &[
            ("MAX_PENDING_KEYS", &bound),
            ("BATCH_INTERVAL_SECONDS", "0.2"),
        ],
    );
    let app = spawn_app_with(config).await;
    let address = app.address.trim_start_matches("http://").to_owned();

    // Every URL once, plus twenty hot URLs hit 20..=39 extra times, spread through the
    // flood so each is requested before, during and after the pause.
    let paths_of = |client: u64| -> Vec<String> {
        let mut paths: Vec<String> = (client..DISTINCT)
            .step_by(CLIENTS as usize)
            .map(|i| format!("/api/u/{i}/"))
            .collect();
        let mut hot: Vec<String> = (0..20u64)
            .flat_map(|hot| (0..20 + hot).map(move |hit| (hot, hit)))
            .filter(|(_, hit)| hit % CLIENTS == client)
            .map(|(hot, _)| format!("/api/u/{hot}/"))
            .collect();
        let every = (paths.len() / hot.len().max(1)).max(1);
        for (i, path) in hot.drain(..).enumerate() {
            paths.insert(((i + 1) * every).min(paths.len()), path);
        }
        paths
    };
    let all: Vec<Vec<String>> = (0..CLIENTS).map(paths_of).collect();
    let requests: u64 = all.iter().map(|p| p.len() as u64).sum();
    let answered = Arc::new(AtomicU64::new(0));
    let clients = all.into_iter().map(|paths| {
        let (address, answered) = (address.clone(), Arc::clone(&answered));
        tokio::spawn(async move {
            let mut http = KeepAliveClient::connect(&address).await;
            let mut tally: HashMap<String, u64> = HashMap::new();
            let mut refused = 0u64;
            for path in paths {
                let (status, body) = http.send("GET", &path).await;
                match status {
                    200 => *tally.entry(path).or_default() += 1,
                    503 => {
                        assert!(body.contains("overloaded"), "{body}");
                        refused += 1;
                    }
                    other => panic!("{other}: {body}"),
                }
                answered.fetch_add(1, Ordering::Relaxed);
            }
            (tally, refused)
        })
    });
    let clients: Vec<_> = clients.collect();
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let address = app.address.clone();
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut most = 0;
            while !done.load(Ordering::Relaxed) {
                let status: Value = client
                    .get(format!("{address}/status"))
                    .send()
                    .await
                    .expect("status")
                    .json()
                    .await
                    .expect("json");
                most = most.max(status["stats_status"]["pending_urls"].as_u64().unwrap());
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            most
        })
    };
    // The node is paused through the middle third of the flood: placed by requests
    // answered, not by time, so a machine's speed moves it in time only.
    let wait_for = |share: u64| {
        let answered = Arc::clone(&answered);
        async move {
            while answered.load(Ordering::Relaxed) < requests * share / 3 {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
    };
    wait_for(1).await;
    cluster.node(PAUSED).pause().expect("SIGSTOP");
    wait_for(2).await;
    cluster.node(PAUSED).resume().expect("SIGCONT");

    let mut tally: HashMap<String, u64> = HashMap::new();
    let mut refused = 0;
    for client in futures::future::join_all(clients).await {
        let (client_tally, client_refused) = client.expect("client task");
        refused += client_refused;
        for (path, count) in client_tally {
            *tally.entry(path).or_default() += count;
        }
    }
    done.store(true, Ordering::Relaxed);

    // `/stats/` writes this instance's pending counts first.
    let top = ranking(&app, "?limit=10").await;
    let most_pending = watcher.await.expect("watcher");
    let mut stored: HashMap<String, u64> = HashMap::new();
    for i in 0..NODES as usize {
        let members: Vec<(String, u64)> = cluster.node(i).zrange_counts("tally:urls").unwrap();
        for (url, count) in members {
            assert!(
                stored.insert(url.clone(), count).is_none(),
                "{url} on two nodes"
            );
        }
    }
    println!(
        "{requests} requests: {} URLs counted, {refused} refused; most URLs pending {most_pending} (share {SHARE}, documented bound {MOST_PENDING})",
        tally.len()
    );

    assert!(
        refused > 0,
        "the paused node's share filled up: nothing was refused"
    );
    assert_eq!(
        refused + tally.values().sum::<u64>(),
        requests,
        "every request answered 200 or 503"
    );
    assert!(
        most_pending >= SHARE,
        "the bound was reached: at most {most_pending} URLs pending"
    );
    assert!(
        most_pending <= MOST_PENDING,
        "{most_pending} URLs pending over the documented bound of {MOST_PENDING}"
    );
    let mut wrong: Vec<String> = tally
        .iter()
        .filter(|(url, count)| stored.get(*url) != Some(count))
        .map(|(url, count)| format!("{url}: answered 2xx {count}, stored {:?}", stored.get(url)))
        .chain(
            stored
                .iter()
                .filter(|(url, _)| !tally.contains_key(*url))
                .map(|(url, count)| format!("{url}: stored {count}, never answered 2xx")),
        )
        .collect();
    wrong.sort();
    wrong.truncate(20);
    assert!(
        wrong.is_empty(),
        "stored counts differ:\n{}",
        wrong.join("\n")
    );
    let mut want: Vec<(String, u64)> = tally.into_iter().collect();
    want.sort_by(|x, y| y.1.cmp(&x.1).then_with(|| x.0.cmp(&y.0)));
    want.truncate(10);
    assert_eq!(top, want);
}

/// The sum of a Prometheus metric's samples whose labels contain `label`.
async fn metric(app: &TestApp, name: &str, label: &str) -> f64 {
    let response = app.request(Method::GET, "/metrics").await;
    assert_eq!(response.status, 200);
    response
        .text
        .lines()
        .filter(|line| line.starts_with(name) && line.contains(label))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// A deep page over Redis is read around its counts: the server's store (which chooses
/// between Redis and the embedded store) hands the ranking's window reads on to Redis
/// rather than the trait's defaults, and the page is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deep_page_over_redis_is_read_around_its_counts_and_exact() {
    let cluster = RedisCluster::start(3).unwrap();
    let app = spawn_app_with(redis_config(&cluster, &[])).await;
    let address = app.address.trim_start_matches("http://").to_owned();
    let mut client = KeepAliveClient::connect(&address).await;
    let mut tally: HashMap<String, u64> = HashMap::new();
    for i in 0..1_200u64 {
        let path = format!("/api/deep/{i:04}/");
        for _ in 0..1 + i % 3 {
            assert_eq!(client.send("GET", &path).await.0, 200);
        }
        tally.insert(path, 1 + i % 3);
    }
    let windows = "tally_stats_merges_total";
    let before = metric(&app, windows, "read=\"window\"").await;

    let page = ranking(&app, "?offset=1000&limit=100").await;

    let mut want: Vec<(String, u64)> = tally.into_iter().collect();
    want.sort_by(|x, y| y.1.cmp(&x.1).then_with(|| x.0.cmp(&y.0)));
    assert_eq!(page, want[1_000..1_100]);
    let after = metric(&app, windows, "read=\"window\"").await;
    assert!(
        after > before,
        "the deep page was not read around its counts (window merges {before} → {after})"
    );
}
