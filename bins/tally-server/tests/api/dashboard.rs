//! The dashboard: `GET /` serves the page, `GET /dashboard/data.json` its figures, and
//! `ENABLE_DASHBOARD=false` turns both off.

use std::time::Duration;

use reqwest::Method;
use serde_json::Value;
use tally_testkit::RedisCluster;

use crate::support::{eventually, memory_config, redis_config, spawn_app_with};

/// Seconds in each series of the figures.
const WINDOW: usize = 300;

fn sum(series: &Value) -> u64 {
    series
        .as_array()
        .expect("a series is an array")
        .iter()
        .map(|v| v.as_u64().expect("a series holds whole numbers"))
        .sum()
}

#[tokio::test]
async fn the_page_is_html_with_nothing_loaded_from_another_host() {
    let app = spawn_app_with(memory_config()).await;

    let response = app.request(Method::GET, "/").await;

    assert_eq!(response.status, 200);
    assert!(
        response
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/html")),
        "{:?}",
        response.headers
    );
    assert!(response.text.contains("dashboard/data.json"));
    for remote in ["https://", "<script src", "<link", "@import", "url("] {
        assert!(
            !response.text.contains(remote),
            "the page refers to {remote}"
        );
    }
    // The one address in it is SVG's namespace, a name that is never fetched.
    let addresses: Vec<&str> = response
        .text
        .match_indices("http://")
        .map(|(at, _)| &response.text[at..at + 26])
        .collect();
    assert!(
        addresses.iter().all(|a| *a == "http://www.w3.org/2000/svg"),
        "{addresses:?}"
    );
}

#[tokio::test]
async fn the_figures_have_300_seconds_per_series_and_move_after_traffic() {
    let cluster = RedisCluster::start(3).unwrap();
    let app = spawn_app_with(redis_config(&cluster, &[("BATCH_INTERVAL_SECONDS", "0.2")])).await;

    let before = app.request(Method::GET, "/dashboard/data.json").await;
    assert_eq!(before.status, 200);
    let before = before.json();
    assert_eq!(before["status"], "healthy");
    assert_eq!(before["store"], "redis");
    assert_eq!(before["seconds"], WINDOW);
    for key in [
        "total", "visit", "count", "api", "other", "visits", "refused",
    ] {
        let series = before["series"][key].as_array().expect(key);
        assert_eq!(series.len(), WINDOW, "{key}");
    }
    let nodes = before["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 3);
    for (node, redis) in nodes.iter().zip(cluster.nodes()) {
        assert_eq!(node["name"], format!("redis://127.0.0.1:{}", redis.port()));
        assert_eq!(node["up"], true);
        assert!(node["pending_keys"].is_u64());
    }
    assert!(before["top_urls"].as_array().expect("top_urls").is_empty());

    for i in 0..30 {
        assert_eq!(app.visit(&format!("page{}", i % 3)).await.status, 200);
    }
    // More than any visited page's 10: the counter API, under `/api/v1`, is counted too.
    for _ in 0..15 {
        assert_eq!(app.request(Method::GET, "/api/busiest").await.status, 200);
    }
    assert_eq!(app.request(Method::GET, "/api/other").await.status, 200);
    assert_eq!(app.visits("page0").await.status, 200);

    // The figures show whole seconds only: the traffic above shows once its second is over.
    let mut after = Value::Null;
    let moved = eventually(Duration::from_secs(10), async || {
        after = app
            .request(Method::GET, "/dashboard/data.json")
            .await
            .json();
        sum(&after["series"]["visit"]) >= 30
            && sum(&after["series"]["api"]) >= 16
            && after["batches"]["visits"]["ok"].as_u64() > Some(0)
    })
    .await;
    assert!(moved, "{after:#}");
    assert_eq!(sum(&after["series"]["visit"]), 30);
    assert_eq!(sum(&after["series"]["visits"]), 30);
    assert_eq!(sum(&after["series"]["count"]), 1);
    assert!(sum(&after["series"]["total"]) >= 47, "{after:#}");
    assert!(after["last_batch_at"].is_string(), "{after:#}");
    // Each visited page's node has written a batch; the latest of them is the counter's.
    let written: Vec<&str> = after["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|node| node["last_batch_at"].as_str())
        .collect();
    assert!(!written.is_empty(), "{after:#}");
    assert!(
        written
            .iter()
            .all(|at| Some(*at) <= after["last_batch_at"].as_str()),
        "{after:#}"
    );
    assert_eq!(after["top_urls"][0]["url"], "/api/busiest");
    assert_eq!(after["top_urls"][0]["count"], 15);
    assert_eq!(
        after["top_urls"].as_array().map(Vec::len),
        Some(6),
        "{after:#}"
    );
    assert_eq!(after["refused_last_minute"], 0);
}

#[tokio::test]
async fn a_node_down_shows_as_down_and_the_status_degraded() {
    let cluster = RedisCluster::start(3).unwrap();
    let app = spawn_app_with(redis_config(&cluster, &[])).await;
    let down = format!("redis://127.0.0.1:{}", cluster.nodes()[1].port());

    cluster.nodes()[1].pause().unwrap();
    let mut data = Value::Null;
    let seen = eventually(Duration::from_secs(10), async || {
        data = app
            .request(Method::GET, "/dashboard/data.json")
            .await
            .json();
        data["status"] == "degraded"
            && data["nodes"]
                .as_array()
                .is_some_and(|nodes| nodes.iter().any(|n| n["name"] == down && n["up"] == false))
    })
    .await;
    cluster.nodes()[1].resume().unwrap();

    assert!(seen, "{data:#}");
}

#[tokio::test]
async fn with_the_dashboard_off_both_routes_answer_404() {
    let mut config = memory_config();
    config.enable_dashboard = false;
    let app = spawn_app_with(config).await;

    for path in ["/", "/dashboard/data.json"] {
        let response = app.request(Method::GET, path).await;
        response.assert_error(404, "not_found");
    }
    assert_eq!(app.status().await.status, 200);
}
