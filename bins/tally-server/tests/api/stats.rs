//! The request-statistics API: counting `/api/*`, `/stats/`, and `/test/{n}/`.

use std::collections::{HashMap, HashSet};

use reqwest::Method;
use serde_json::{Value, json};
use tally_testkit::RedisCluster;

use crate::helpers::{
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
    for n in ["abc", "0", "100001", "-5", "1.5"] {
        let response = app.request(Method::POST, &format!("/test/{n}/")).await;
        response.assert_error(400, "invalid_request_count");
    }
    assert_eq!(ranking(&app, "").await, vec![], "nothing was sent");
}

#[tokio::test]
async fn a_second_concurrent_test_run_gets_429() {
    let app = spawn_app().await;

    let (first, second) = tokio::join!(app.request(Method::POST, "/test/3000/"), async {
        // Let the first run start.
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        app.request(Method::POST, "/test/10/").await
    });

    assert_eq!(first.status, 200, "{}", first.text);
    second.assert_error(429, "test_already_running");
    assert!(second.header("retry-after").is_some());
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_thousand_distinct_urls_rank_exactly_within_the_pending_bound() {
    const DISTINCT: u64 = 200_000;
    const CLIENTS: u64 = 16;
    const BOUND: usize = 20_000;
    let cluster = RedisCluster::start(3).unwrap();
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

    // Every URL once, plus twenty hot URLs hit 20..=39 extra times: the top ten is known.
    let clients = (0..CLIENTS).map(|client| {
        let address = address.clone();
        tokio::spawn(async move {
            let mut http = KeepAliveClient::connect(&address).await;
            let mut tally: HashMap<String, u64> = HashMap::new();
            let mut paths: Vec<String> = (client..DISTINCT)
                .step_by(CLIENTS as usize)
                .map(|i| format!("/api/u/{i}/"))
                .collect();
            for hot in 0..20u64 {
                for hit in 0..20 + hot {
                    if hit % CLIENTS == client {
                        paths.push(format!("/api/u/{hot}/"));
                    }
                }
            }
            for path in paths {
                let (status, body) = http.send("GET", &path).await;
                match status {
                    200 => *tally.entry(path).or_default() += 1,
                    503 => assert!(body.contains("overloaded"), "{body}"),
                    other => panic!("{other}: {body}"),
                }
            }
            tally
        })
    });
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let address = app.address.clone();
        let done = std::sync::Arc::clone(&done);
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut most = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let status: Value = client
                    .get(format!("{address}/status"))
                    .send()
                    .await
                    .expect("status")
                    .json()
                    .await
                    .expect("json");
                most = most.max(status["stats_status"]["pending_urls"].as_u64().unwrap());
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            most
        })
    };
    let mut tally: HashMap<String, u64> = HashMap::new();
    for client in futures::future::join_all(clients).await {
        for (path, count) in client.expect("client task") {
            *tally.entry(path).or_default() += count;
        }
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);

    let top = ranking(&app, "?limit=10").await;
    let distinct_acknowledged = tally.len() as u64;

    let mut want: Vec<(String, u64)> = tally.into_iter().collect();
    want.sort_by(|x, y| y.1.cmp(&x.1).then_with(|| x.0.cmp(&y.0)));
    want.truncate(10);
    assert_eq!(top, want);
    let most_pending = watcher.await.expect("watcher");
    assert!(
        most_pending as usize <= BOUND,
        "{most_pending} paths pending over a bound of {BOUND}"
    );
    let stored: u64 = (0..3)
        .map(|i| cluster.node(i).query::<u64>(&redis_zcard()).unwrap())
        .sum();
    assert_eq!(
        stored, distinct_acknowledged,
        "every acknowledged URL, once, on one node"
    );
}

fn redis_zcard() -> redis::Cmd {
    let mut cmd = redis::cmd("ZCARD");
    cmd.arg("tally:urls");
    cmd
}
