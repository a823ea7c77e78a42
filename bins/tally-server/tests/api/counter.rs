//! The original service's examples, against three Redis nodes: basic flow, cache, load,
//! sharding.

use std::time::{Duration, Instant};

use serde_json::json;
use tally_testkit::RedisCluster;

use crate::support::{assert_recent_utc, redis_config, spawn_app_with, stored};

#[tokio::test]
async fn basic_flow_records_reads_and_resets_a_page() {
    let cluster = RedisCluster::start(3).unwrap();
    let app = spawn_app_with(redis_config(&cluster, &[])).await;
    let node = cluster.node(cluster.owner("page1"));
    let node_name = format!("127.0.0.1:{}", node.port());

    let response = app.visit("page1").await;
    assert_eq!(response.status, 200, "{}", response.text);
    let mut body = response.json();
    let timestamp = body["timestamp"].take();
    assert_recent_utc(timestamp.as_str().expect("timestamp is a string"));
    assert_eq!(
        body,
        json!({"status": "success", "message": "Visit recorded for page page1", "page_id": "page1", "timestamp": null, "count": 1})
    );

    let response = app.visits("page1").await;
    assert_eq!(response.status, 200);
    assert_eq!(
        response.json(),
        json!({"visits": 1, "served_via": format!("redis_{}", node.port()), "node": node_name})
    );

    let response = app.reset("page1").await;
    assert_eq!(response.status, 200);
    assert_eq!(
        response.json(),
        json!({"status": "success", "message": "Counter reset for page page1", "page_id": "page1"})
    );
    // The reset went to the owner node and dropped the visit still in memory.
    assert_eq!(stored(node, "page1"), None);
    let (visits, served_via, _) = app.count("page1").await;
    assert_eq!((visits, served_via.as_str()), (0, "in_memory"));

    let report = app.shutdown().await;
    assert_eq!(report.keys_unwritten, 0);
    assert_eq!(
        stored(node, "page1"),
        None,
        "the reset visit must not come back"
    );
}

#[tokio::test]
async fn reads_are_served_from_memory_until_the_cache_ttl_passes() {
    const TTL: Duration = Duration::from_secs(1);
    let cluster = RedisCluster::start(3).unwrap();
    let app = spawn_app_with(redis_config(&cluster, &[("CACHE_TTL_SECONDS", "1")])).await;
    let port = cluster.node(cluster.owner("page1")).port();
    let from_redis = format!("redis_{port}");
    assert_eq!(app.visit("page1").await.status, 200);

    // A miss asks the owner node, then the value is cached: the next reads inside the TTL
    // come from memory. (Reads that could not be made inside it prove nothing: the page is
    // let go and read again.)
    let mut tries = 0;
    let cached_at = loop {
        tries += 1;
        assert!(tries <= 5, "five times, two reads took longer than the TTL");
        let before_miss = Instant::now();
        assert_eq!(app.count("page1").await.0, 1);
        let (_, first, _) = app.count("page1").await;
        let (visits, second, _) = app.count("page1").await;
        if before_miss.elapsed() < TTL {
            assert_eq!(
                (first.as_str(), second.as_str(), visits),
                ("in_memory", "in_memory", 1)
            );
            break Instant::now();
        }
        tokio::time::sleep(TTL).await;
    };

    // Past the TTL (waiting longer only helps), the next read asks the node again.
    tokio::time::sleep(TTL.saturating_sub(cached_at.elapsed()) + Duration::from_millis(300)).await;
    let (visits, after_ttl, _) = app.count("page1").await;
    assert_eq!((visits, after_ttl.as_str()), (1, from_redis.as_str()));
}

#[tokio::test]
async fn ten_concurrent_visits_count_ten() {
    let cluster = RedisCluster::start(3).unwrap();
    let app = spawn_app_with(redis_config(&cluster, &[])).await;

    let visits = (0..10).map(|_| app.visit("page1"));
    for response in futures::future::join_all(visits).await {
        assert_eq!(response.status, 200, "{}", response.text);
    }
    assert_eq!(app.count("page1").await.0, 10);

    app.shutdown().await;
    assert_eq!(
        stored(cluster.node(cluster.owner("page1")), "page1"),
        Some(10)
    );
}

#[tokio::test]
async fn pages_are_counted_on_their_ring_owner_only() {
    let cluster = RedisCluster::start(3).unwrap();
    let app = spawn_app_with(redis_config(&cluster, &[])).await;
    let pages: Vec<String> = (1..=5).map(|i| format!("page{i}")).collect();

    for page in &pages {
        assert_eq!(app.visit(page).await.status, 200);
    }
    for page in &pages {
        let owner = cluster.node(cluster.owner(page));
        let (visits, served_via, node) = app.count(page).await;
        assert_eq!(visits, 1, "{page}");
        assert_eq!(served_via, format!("redis_{}", owner.port()), "{page}");
        assert_eq!(node, format!("127.0.0.1:{}", owner.port()), "{page}");
    }
    app.shutdown().await;

    for page in &pages {
        let owner_index = cluster.owner(page);
        for (i, node) in cluster.nodes().iter().enumerate() {
            let expected = (i == owner_index).then_some(1);
            assert_eq!(stored(node, page), expected, "{page} on node {i}");
        }
    }
}
