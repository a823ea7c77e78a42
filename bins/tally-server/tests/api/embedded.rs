//! The embedded store, the default without `REDIS_NODES`: the same API with no Redis,
//! counts kept in a file in `DATA_DIR` across restarts.

use serde_json::json;
use tally_embedded::{EmbeddedConfig, EmbeddedStore};

use crate::support::{assert_recent_utc, memory_config, spawn_app, spawn_app_with, test_config};

/// The store file in `dir`, opened as a server would, once the servers on it have stopped
/// (it fails while one still holds it).
async fn reopen(dir: &std::path::Path) -> EmbeddedStore {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || EmbeddedStore::open(&dir, EmbeddedConfig::default()))
        .await
        .unwrap()
        .expect("the server's file opens once the server has stopped")
}

#[tokio::test]
async fn counts_and_statistics_survive_a_restart_on_the_same_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config();
    config.data_dir = dir.path().join("data");

    let app = spawn_app_with(config.clone()).await;
    for _ in 0..3 {
        assert_eq!(app.visit("page1").await.status, 200);
    }
    assert_eq!(app.shutdown().await.keys_unwritten, 0);

    let app = spawn_app_with(config).await;
    // Before any other /api/ request: the ranking as the first server left it.
    let stats = app.request(reqwest::Method::GET, "/stats/").await.json();
    assert_eq!(
        stats,
        json!([{"count": 3, "url": "/api/v1/counter/visit/page1"}])
    );
    assert_eq!(app.count("page1").await.0, 3);
    let status = app.status().await.json();
    let file = dir.path().join("data").join(tally_embedded::FILE_NAME);
    assert_eq!(
        status["store"],
        json!({"kind": "embedded", "path": file.display().to_string()})
    );
    app.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_the_file_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config();
    config.data_dir = dir.path().to_owned();
    let app = spawn_app_with(config).await;
    assert_eq!(app.visit("page1").await.status, 200);
    app.shutdown().await;

    // Every handle is gone: the file is not locked, and needs no repair.
    let store = reopen(dir.path()).await;
    assert!(!store.was_repaired(), "the server left the file open");
}

#[tokio::test]
async fn a_start_removes_the_marks_of_earlier_processes() {
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..3 {
        let mut config = test_config();
        config.data_dir = dir.path().to_owned();
        let app = spawn_app_with(config).await;
        // A visit, and its path in the statistics: each counter writes its mark.
        assert_eq!(app.visit("page1").await.status, 200);
        app.shutdown().await;
    }

    let store = reopen(dir.path()).await;
    // Only the last server's two counters (visits, statistics) left a mark: the earlier
    // servers' were removed when the next one started.
    let marks = store
        .sweep_marks(std::time::Duration::ZERO)
        .await
        .expect("sweep");
    assert_eq!(marks, 2, "marks of earlier processes were kept");
}

#[tokio::test]
async fn the_memory_store_is_named_in_status() {
    let app = spawn_app_with(memory_config()).await;
    assert_eq!(app.visit("page1").await.status, 200);
    let status = app.status().await.json();
    assert_eq!(status["store"], json!({"kind": "memory"}));
    assert_eq!(
        app.health().await.json(),
        json!({"status": "healthy", "redis": "embedded"})
    );
}

#[tokio::test]
async fn basic_flow_works_without_redis() {
    let app = spawn_app().await;

    let response = app.visit("page1").await;
    assert_eq!(response.status, 200);
    let mut body = response.json();
    assert_recent_utc(body["timestamp"].take().as_str().unwrap());
    assert_eq!(
        body,
        json!({"status": "success", "message": "Visit recorded for page page1", "page_id": "page1", "timestamp": null, "count": 1})
    );
    assert_eq!(app.visit("page1").await.status, 200);

    let response = app.visits("page1").await;
    assert_eq!(
        response.json(),
        json!({"visits": 2, "served_via": "in_memory", "node": "embedded"})
    );

    let response = app.reset("page1").await;
    assert_eq!(
        response.json(),
        json!({"status": "success", "message": "Counter reset for page page1", "page_id": "page1"})
    );
    assert_eq!(app.count("page1").await.0, 0);

    let response = app.health().await;
    assert_eq!(response.status, 200);
    assert_eq!(
        response.json(),
        json!({"status": "healthy", "redis": "embedded"})
    );

    let report = app.shutdown().await;
    assert_eq!(report.keys_unwritten, 0);
}

#[tokio::test]
async fn visits_survive_a_flush_into_the_embedded_store() {
    let mut config = test_config();
    config.batch_interval = std::time::Duration::from_millis(50);
    let app = spawn_app_with(config).await;
    for _ in 0..3 {
        assert_eq!(app.visit("café%20page").await.status, 200);
    }
    // Written once the metrics say a batch went out and nothing waits.
    assert!(
        crate::support::eventually(std::time::Duration::from_secs(20), async || {
            let metrics = app.counter_metrics().await.json();
            metrics["last_batch_write"].is_string() && metrics["metrics"]["write_buffer_size"] == 0
        })
        .await,
        "the visits were never written"
    );
    let (visits, served_via, _) = app.count("caf%C3%A9%20page").await;
    assert_eq!((visits, served_via.as_str()), (3, "in_memory"));
    let metrics = app.counter_metrics().await.json();
    assert_recent_utc(
        metrics["last_batch_write"]
            .as_str()
            .expect("a batch was written"),
    );
}

#[tokio::test]
async fn an_overloaded_counter_answers_503_with_retry_after() {
    let mut config = test_config();
    // Two pages, each with its day count.
    config.max_pending_keys = 4;
    config.batch_interval = std::time::Duration::from_secs(60);
    let app = spawn_app_with(config).await;
    assert_eq!(app.visit("a").await.status, 200);
    assert_eq!(app.visit("b").await.status, 200);

    let response = app.visit("c").await;
    let message = response.assert_error(503, "overloaded");
    assert!(message.contains("not counted"), "{message}");
    assert_eq!(response.header("retry-after"), Some("60"));

    // Pages already waiting still take visits; the refused one was not counted.
    assert_eq!(app.visit("a").await.status, 200);
    // Reads are requests under /api/ too, counted by the request statistics under the same
    // bound: `/stats/` (not under /api/) writes those out first, making room for them.
    assert_eq!(
        app.request(reqwest::Method::GET, "/stats/").await.status,
        200
    );
    assert_eq!(app.count("a").await.0, 2);
    assert_eq!(app.count("c").await.0, 0);
}
