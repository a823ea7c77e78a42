//! `/status`, `/health`, `{prefix}/counter/metrics`, `/openapi.json`, and what clients see
//! while nodes are down.

use std::time::Duration;

use serde_json::json;
use tally_testkit::{RedisCluster, free_port, keys_on};

use crate::support::{
    assert_recent_utc, config_with_nodes, eventually, memory_config, redis_config, spawn_app,
    spawn_app_with, stored,
};

fn node_map(cluster: &RedisCluster, up: &[bool]) -> serde_json::Value {
    cluster
        .nodes()
        .iter()
        .zip(up)
        .map(|(node, up)| (format!("redis://127.0.0.1:{}", node.port()), json!(up)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

fn assert_uptime(uptime: &str) {
    // H:MM:SS.ffffff
    let (hours, rest) = uptime.split_once(':').expect("H:");
    assert!(hours.parse::<u64>().is_ok(), "{uptime}");
    let bytes = rest.as_bytes();
    assert_eq!(rest.len(), 12, "{uptime}");
    assert!(bytes[2] == b':' && bytes[5] == b'.', "{uptime}");
    assert!(
        rest.chars().filter(char::is_ascii_digit).count() == 10,
        "{uptime}"
    );
}

#[tokio::test]
async fn status_reports_nodes_counter_requests_and_version() {
    let cluster = RedisCluster::start(3).unwrap();
    let mut config = redis_config(&cluster, &[]);
    config.debug = true;
    let app = spawn_app_with(config).await;
    assert_eq!(app.visit("page1").await.status, 200);
    assert_eq!(app.count("page1").await.0, 1);

    let response = app.status().await;
    assert_eq!(response.status, 200);
    let mut body = response.json();
    assert_uptime(body["uptime"].take().as_str().expect("uptime is a string"));
    assert_eq!(
        body,
        json!({
            "status": "healthy",
            "uptime": null,
            "total_requests": 3,
            "store": {"kind": "redis"},
            "redis_status": {"nodes": 3, "healthy_nodes": 3, "node_status": node_map(&cluster, &[true, true, true])},
            // Each waiting key costs its length plus 64 bytes (PendingBytes::KEY_OVERHEAD):
            // the page and its day count.
            "counter_status": {"cache_size": 1, "write_buffer_size": 2, "write_buffer_bytes": "page1".len() + 64 + "page1\u{1f}YYYY-MM-DD".len() + 64, "quarantined_keys": 0, "failing_nodes": {}},
            // The visit and the read, both under /api/, wait to be written (60 s batches).
            "stats_status": {"pending_urls": 2, "pending_bytes": "/api/v1/counter/visit/page1".len() + "/api/v1/counter/visits/page1".len() + 2 * 64, "quarantined_keys": 0, "failing_nodes": {}, "requests_written": 0, "batches_ok": 0, "batches_failed": 0},
            "version": env!("CARGO_PKG_VERSION"),
            "debug_mode": true,
        })
    );
    assert_eq!(app.status().await.json()["total_requests"], 4);

    let response = app.health().await;
    assert_eq!(response.status, 200);
    assert_eq!(
        response.json(),
        json!({"status": "healthy", "redis": "connected"})
    );
}

#[tokio::test]
async fn counter_metrics_report_cache_buffer_nodes_and_last_write() {
    let cluster = RedisCluster::start(3).unwrap();
    let app = spawn_app_with(redis_config(&cluster, &[("BATCH_INTERVAL_SECONDS", "0.1")])).await;

    let body = app.counter_metrics().await.json();
    assert_eq!(
        body,
        json!({
            "status": "healthy",
            "metrics": {"cache_hits": 0, "cache_misses": 0, "cache_size": 0, "write_buffer_size": 0},
            "redis_nodes": node_map(&cluster, &[true, true, true]),
            "last_batch_write": null,
        })
    );

    assert_eq!(app.count("page1").await.0, 0, "a miss, cached");
    assert_eq!(app.visit("page1").await.status, 200);
    let written = async || !app.counter_metrics().await.json()["last_batch_write"].is_null();
    assert!(eventually(Duration::from_secs(5), written).await);
    assert_eq!(
        stored(cluster.node(cluster.owner("page1")), "page1"),
        Some(1)
    );
    let (visits, served_via, _) = app.count("page1").await;
    assert_eq!(
        (visits, served_via.as_str()),
        (1, "in_memory"),
        "a hit: the written batch refreshed the cached entry"
    );
    app.count("page2").await; // miss
    let mut body = app.counter_metrics().await.json();
    assert_recent_utc(
        body["last_batch_write"]
            .take()
            .as_str()
            .expect("a batch was written"),
    );
    assert_eq!(
        body["metrics"],
        // Cached: page1 and page2, each read once through; not page1's day, written but
        // never read.
        json!({"cache_hits": 1, "cache_misses": 2, "cache_size": 2, "write_buffer_size": 0})
    );
}

#[tokio::test]
async fn a_down_node_degrades_status_and_its_uncached_pages_answer_503() {
    let mut cluster = RedisCluster::start(3).unwrap();
    let app = spawn_app_with(redis_config(&cluster, &[])).await;
    let page = keys_on(&cluster.ring(), 1, "down").next().expect("a page");
    let down = format!("127.0.0.1:{}", cluster.node(1).port());
    cluster.node_mut(1).kill().unwrap();

    // Visits are still taken: they wait in memory for the node.
    assert_eq!(app.visit(&page).await.status, 200);
    let response = app.visits(&page).await;
    let message = response.assert_error(503, "store_unavailable");
    assert_eq!(
        message,
        format!("redis node {down} is unavailable; retry later")
    );
    assert_eq!(response.header("retry-after"), Some("1"));

    assert!(
        eventually(
            Duration::from_secs(5),
            async || app.status().await.json()["status"] == "degraded"
        )
        .await
    );
    let status = app.status().await.json();
    assert_eq!(status["redis_status"]["healthy_nodes"], 2);
    assert_eq!(
        status["redis_status"]["node_status"],
        node_map(&cluster, &[true, false, true])
    );
    assert_eq!(app.counter_metrics().await.json()["status"], "degraded");
    let response = app.health().await;
    assert_eq!(
        (response.status.as_u16(), response.json()),
        (200, json!({"status": "degraded", "redis": "connected"}))
    );

    // Back up (empty: no AOF): the waiting visit is written and readable.
    cluster.node_mut(1).restart().unwrap();
    assert!(
        eventually(Duration::from_secs(10), async || app
            .visits(&page)
            .await
            .status
            == 200)
        .await
    );
    assert_eq!(app.count(&page).await.0, 1);
    app.shutdown().await;
    assert_eq!(stored(cluster.node(1), &page), Some(1));
}

#[tokio::test]
async fn a_reset_on_a_paused_node_answers_503_in_bounded_time() {
    let cluster = RedisCluster::start(3).unwrap();
    let app = spawn_app_with(redis_config(&cluster, &[])).await;
    let page = keys_on(&cluster.ring(), 0, "paused")
        .next()
        .expect("a page");
    cluster.node(0).pause().unwrap();

    // The server gives up after its store deadline (twice REDIS_TIMEOUT, 1 s here); a
    // reset that waited for the node would still be waiting at 20 s.
    let response = tokio::time::timeout(Duration::from_secs(20), app.reset(&page))
        .await
        .expect("a reset on a paused node is answered, not held until the node returns");
    response.assert_error(503, "store_unavailable");
    assert!(response.header("retry-after").is_some());
    cluster.node(0).resume().unwrap();
}

#[tokio::test]
async fn start_up_succeeds_with_every_node_down_and_health_says_disconnected() {
    let nodes = format!(
        "redis://127.0.0.1:{},redis://127.0.0.1:{}",
        free_port().unwrap(),
        free_port().unwrap()
    );
    let app = spawn_app_with(config_with_nodes(
        &nodes,
        &[("SHUTDOWN_TIMEOUT_SECONDS", "2")],
    ))
    .await;

    let response = app.health().await;
    assert_eq!(response.status, 503);
    assert_eq!(
        response.json(),
        json!({"status": "unhealthy", "redis": "disconnected"})
    );
    let status = app.status().await.json();
    assert_eq!(status["status"], "unhealthy");
    assert_eq!(status["redis_status"]["healthy_nodes"], 0);
    assert_eq!(status["redis_status"]["nodes"], 2);

    // A visit is still acknowledged; shutdown reports it could not be written.
    assert_eq!(app.visit("lost").await.status, 200);
    let report = app.shutdown().await;
    assert_eq!((report.keys_unwritten, report.increments_unwritten), (1, 1));
}

#[tokio::test]
async fn the_embedded_store_reports_no_nodes() {
    let app = spawn_app().await;
    let status = app.status().await.json();
    assert_eq!(status["status"], "healthy");
    assert_eq!(
        status["redis_status"],
        json!({"nodes": 0, "healthy_nodes": 0, "node_status": {}})
    );
    assert_eq!(status["debug_mode"], false);
    let metrics = app.counter_metrics().await.json();
    assert_eq!(metrics["redis_nodes"], json!({}));
}

#[tokio::test]
async fn the_openapi_document_carries_the_servers_prefix_and_its_routes_answer() {
    let mut config = memory_config();
    config.api_prefix = "/v2".to_owned();
    config.enable_metrics = false;
    let app = spawn_app_with(config).await;

    let response = app.request(reqwest::Method::GET, "/openapi.json").await;

    assert_eq!(response.status, 200, "{}", response.text);
    assert_eq!(response.header("content-type"), Some("application/json"));
    let document = response.json();
    assert!(
        document["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1."))
    );
    let paths = document["paths"].as_object().expect("paths");
    for path in [
        "/v2/counter/visit/{page_id}",
        "/v2/counter/visits",
        "/stats/",
        "/openapi.json",
    ] {
        assert!(
            paths.contains_key(path),
            "{path} missing: {:?}",
            paths.keys()
        );
    }
    assert!(
        !paths
            .keys()
            .any(|path| path.starts_with("/api/v1") || path == "/metrics")
    );
    // The document's visit route is the server's.
    assert_eq!(
        app.request(reqwest::Method::POST, "/v2/counter/visit/p")
            .await
            .status,
        200
    );
    assert_eq!(
        app.request(reqwest::Method::POST, "/api/v1/counter/visit/p")
            .await
            .status,
        405
    );
}
