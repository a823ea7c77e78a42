//! Exactness under load: many concurrent keep-alive clients, batches flushing meanwhile.

use tally_testkit::RedisCluster;

use crate::support::{
    post_visits_concurrently, redis_config, spawn_app_with, stored, stored_total,
};

const VISITS: usize = 50_000;
const CLIENTS: usize = 64;
const PAGES: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_thousand_concurrent_visits_are_counted_exactly() {
    let cluster = RedisCluster::start(3).unwrap();
    // Short batches, so batches are written while visits keep arriving.
    let app = spawn_app_with(redis_config(&cluster, &[("BATCH_INTERVAL_SECONDS", "0.1")])).await;
    let address = app.address.trim_start_matches("http://").to_owned();
    post_visits_concurrently(&address, &app.prefix, "load", (VISITS, CLIENTS, PAGES)).await;

    for page in 0..PAGES {
        let (visits, _, _) = app.count(&format!("load{page}")).await;
        assert_eq!(visits, (VISITS / PAGES) as u64, "load{page}");
    }
    let report = app.shutdown().await;
    assert_eq!(report.keys_unwritten, 0);

    for page in 0..PAGES {
        let page = format!("load{page}");
        let node = cluster.node(cluster.owner(&page));
        assert_eq!(stored(node, &page), Some((VISITS / PAGES) as u64), "{page}");
    }
    assert_eq!(stored_total(&cluster), VISITS as u64);
}
