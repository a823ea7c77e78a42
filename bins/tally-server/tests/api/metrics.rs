//! `/metrics`: Prometheus text with bounded labels.

use reqwest::Method;
use tally_testkit::RedisCluster;

use crate::support::{redis_config, spawn_app, spawn_app_with, test_config};

#[tokio::test]
async fn metrics_label_requests_by_route_pattern_not_raw_path() {
    let cluster = RedisCluster::start(1).unwrap();
    let app = spawn_app_with(redis_config(&cluster, &[])).await;
    let page = "cardinality-probe-7f3a";
    assert_eq!(app.visit(page).await.status, 200);
    assert_eq!(app.visits(page).await.status, 200);
    app.request(Method::GET, "/no/such/route/7f3a").await;

    let response = app.request(Method::GET, "/metrics").await;
    assert_eq!(response.status, 200);
    assert!(
        response
            .header("content-type")
            .unwrap()
            .starts_with("text/plain")
    );
    let text = &response.text;
    for expected in [
        r#"tally_http_requests_total{route="/api/v1/counter/visit/{page_id}",method="POST",status="200"}"#,
        r#"tally_http_requests_total{route="unmatched",method="GET",status="404"}"#,
        r#"tally_http_request_duration_seconds_bucket{route="/api/v1/counter/visits/{page_id}",method="GET",le="0.005"}"#,
        r#"tally_counter_cache_misses_total{counter="visits"}"#,
        r#"tally_counter_buffered_keys{counter="visits"}"#,
        r#"tally_counter_batches_total{counter="visits",outcome="ok"}"#,
        r#"tally_redis_node_up{node="127.0.0.1:"#,
    ] {
        assert!(text.contains(expected), "missing {expected} in:\n{text}");
    }
    assert!(
        !text.contains("7f3a"),
        "a raw path leaked into a label:\n{text}"
    );
}

#[tokio::test]
async fn metrics_can_be_turned_off() {
    let mut config = test_config();
    config.enable_metrics = false;
    let app = spawn_app_with(config).await;
    let response = app.request(Method::GET, "/metrics").await;
    response.assert_error(404, "not_found");
    // The rest of the API is unaffected.
    assert_eq!(
        spawn_app()
            .await
            .request(Method::GET, "/metrics")
            .await
            .status,
        200
    );
}
