//! Daily counts (`GET .../counter/visits/{page}/daily`) through the real server on every
//! store: every visit also counts on its UTC day, written by the same batches as the total
//! (so the days add up to the total, checked by every fault scenario's judging too);
//! today's count includes visits not written yet; a reset clears the days; days expire
//! after `DAILY_RETENTION_DAYS` (a TTL on Redis, a sweep on the embedded store).

use std::time::Duration;

use chrono::Utc;
use serde_json::Value;
use tally_counter::{Batch, BatchId, InstanceId};
use tally_embedded::{EmbeddedConfig, EmbeddedStore};
use tally_testkit::{Cluster, HttpConnection};

use crate::support::{Rig, Server, json, one_at_a_time};

/// Today in UTC, as the API writes dates.
fn today() -> String {
    Utc::now().date_naive().format("%Y-%m-%d").to_string()
}

/// `GET .../daily{query}` of `page`, asserting 200.
async fn daily(server: &Server, page: &str, query: &str) -> Value {
    server
        .get_json(&format!("/api/v1/counter/visits/{page}/daily{query}"))
        .await
}

/// The visits of the last entry (today) of a daily answer, checking the answer's shape:
/// `days` entries, consecutive dates oldest first, ending today.
fn check_days(body: &Value, page: &str, days: usize) -> u64 {
    assert_eq!(body["page_id"], page, "{body}");
    let entries = body["days"].as_array().expect("days is a list");
    assert_eq!(entries.len(), days, "{body}");
    let dates: Vec<chrono::NaiveDate> = entries
        .iter()
        .map(|entry| {
            chrono::NaiveDate::parse_from_str(entry["date"].as_str().unwrap_or(""), "%Y-%m-%d")
                .unwrap_or_else(|e| panic!("{entry}: {e}"))
        })
        .collect();
    for pair in dates.windows(2) {
        assert_eq!(pair[1] - pair[0], chrono::TimeDelta::days(1), "{body}");
    }
    let last = entries.last().expect("at least one day");
    // A run that crosses midnight UTC may see yesterday as the last day: allow it.
    let date = last["date"].as_str().unwrap_or_default();
    assert!(date == today() || dates.len() > 1, "{body}");
    last["visits"].as_u64().expect("visits is a number")
}

/// Visits of `page` (3 single, one `?count=40`, one bulk of 7): 50.
async fn visit_fifty(server: &Server, page: &str) {
    for target in [
        format!("/api/v1/counter/visit/{page}"),
        format!("/api/v1/counter/visit/{page}"),
        format!("/api/v1/counter/visit/{page}"),
        format!("/api/v1/counter/visit/{page}?count=40"),
    ] {
        let response = server.request("POST", &target).await;
        assert_eq!(response.status, 200, "{target}: {}", response.text());
    }
    let body = format!(r#"{{"visits":{{"{page}":7}}}}"#);
    let request = format!(
        "POST /api/v1/counter/visits HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut conn = HttpConnection::connect(&server.addr())
        .await
        .expect("connect");
    let response = conn.send_raw(request.as_bytes()).await.expect("an answer");
    assert_eq!(response.status, 200, "{}", response.text());
}

/// The daily scenario on one store: `start` starts a server on it (again, for the
/// restart).
async fn daily_counts_on(store: &str, start: impl Fn() -> Server) {
    let server = start();
    visit_fifty(&server, "news").await;
    // Unwritten yet (the batch interval is 200 ms, the answer comes first or not): today
    // already counts them, as the total does.
    let body = daily(&server, "news", "?days=3").await;
    assert_eq!(check_days(&body, "news", 3), 50, "{store}: {body}");
    let (total, _) = server.count("news").await;
    assert_eq!(total, 50, "{store}");
    // Default 30 days, the earlier ones 0; a page never visited has 30 zeros.
    let body = daily(&server, "news", "").await;
    assert_eq!(check_days(&body, "news", 30), 50, "{store}");
    let sum: u64 = body["days"]
        .as_array()
        .map(|days| days.iter().filter_map(|d| d["visits"].as_u64()).sum())
        .unwrap_or(0);
    assert_eq!(sum, 50, "{store}: only today counts: {body}");
    let body = daily(&server, "never", "?days=366").await;
    assert_eq!(check_days(&body, "never", 366), 0, "{store}");
    server.wait_flushed(Duration::from_secs(30)).await;
    server.stop();

    // Written: a new server reads the same days.
    let server = start();
    let body = daily(&server, "news", "?days=2").await;
    assert_eq!(check_days(&body, "news", 2), 50, "{store}: {body}");

    // A reset clears the total and the days.
    let response = server
        .request("DELETE", "/api/v1/counter/visits/news")
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    let body = daily(&server, "news", "?days=2").await;
    assert_eq!(check_days(&body, "news", 2), 0, "{store}: {body}");
    server.stop();
    let server = start();
    let body = daily(&server, "news", "?days=2").await;
    assert_eq!(
        check_days(&body, "news", 2),
        0,
        "{store}: reset for good: {body}"
    );

    // Bad requests.
    for (query, shown) in [
        ("?days=0", "\"0\""),
        ("?days=367", "\"367\""),
        ("?days=x", "\"x\""),
    ] {
        let response = server
            .request("GET", &format!("/api/v1/counter/visits/news/daily{query}"))
            .await;
        assert_eq!(response.status, 400, "{query}: {}", response.text());
        let body = json(&response);
        assert_eq!(body["error"]["code"], "invalid_days", "{body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(shown) && message.contains("366"),
            "{message}"
        );
    }
    for target in [
        "/api/v1/counter/visits/a%2Fb/daily",
        "/api/v1/counter/visits//daily",
    ] {
        let response = server.request("GET", target).await;
        assert_eq!(response.status, 400, "{target}: {}", response.text());
        assert_eq!(json(&response)["error"]["code"], "invalid_page_id");
    }
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daily_counts_on_the_embedded_store_and_old_days_swept_at_start() {
    let _serial = one_at_a_time().await;
    let dir = tempfile::tempdir().expect("a data directory");
    let data_dir = dir.path().to_string_lossy().into_owned();
    daily_counts_on("embedded", || {
        Server::start_without_redis(&[("DATA_DIR", data_dir.as_str())])
    })
    .await;

    // Days older than DAILY_RETENTION_DAYS, written into the file directly (no server
    // holds it): the next server's sweep at start removes them, and nothing else.
    let old = "swept\u{1f}2020-01-01".to_owned();
    let kept = format!("swept\u{1f}{}", today());
    {
        let store = EmbeddedStore::open(dir.path(), EmbeddedConfig::default()).expect("open");
        let batch = Batch {
            id: BatchId {
                instance: InstanceId::from_u64(99),
                seq: 1,
            },
            deltas: vec![
                (old.as_str().into(), 5),
                (kept.as_str().into(), 6),
                ("swept".into(), 11),
            ],
        };
        store.apply(0, &batch).await.expect("the batch is written");
    }
    let server = Server::start_without_redis(&[
        ("DATA_DIR", data_dir.as_str()),
        ("DAILY_RETENTION_DAYS", "30"),
    ]);
    server
        .wait_for_log(
            "removed day counts past DAILY_RETENTION_DAYS",
            Duration::from_secs(30),
        )
        .await;
    let body = daily(&server, "swept", "?days=1").await;
    assert_eq!(check_days(&body, "swept", 1), 6);
    server.stop();
    let store = EmbeddedStore::open(dir.path(), EmbeddedConfig::default()).expect("open");
    let read = store
        .get(
            0,
            InstanceId::from_u64(98),
            &[old.as_str(), kept.as_str(), "swept"],
        )
        .await
        .expect("read");
    assert_eq!(read.values, [0, 6, 11], "the old day removed, nothing else");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daily_counts_on_redis_nodes_expire_by_ttl() {
    let _serial = one_at_a_time().await;
    let rig = Rig::start(3);
    daily_counts_on("redis", || rig.server(&[])).await;

    // Each day's key expires DAILY_RETENTION_DAYS after its first visit; the total never.
    let server = rig.server(&[("DAILY_RETENTION_DAYS", "2")]);
    let response = server
        .request("POST", "/api/v1/counter/visit/ttl-page")
        .await;
    assert_eq!(response.status, 200);
    server.wait_flushed(Duration::from_secs(30)).await;
    let node = &rig.nodes()[rig.owner("ttl-page")];
    let ttl = |key: String| -> i64 { node.query(redis::cmd("TTL").arg(key)).expect("TTL answers") };
    let day_ttl = ttl(format!("tally:v:ttl-page\u{1f}{}", today()));
    assert!(
        (2 * 86_400 - 120..=2 * 86_400).contains(&day_ttl),
        "the day expires in two days: TTL {day_ttl}"
    );
    assert_eq!(ttl("tally:v:ttl-page".to_owned()), -1);
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daily_counts_on_a_redis_cluster() {
    let _serial = one_at_a_time().await;
    let cluster = Cluster::start().unwrap_or_else(|e| panic!("{e}"));
    let seeds = cluster.seeds();
    daily_counts_on("cluster", || {
        Server::start_without_redis(&[("REDIS_CLUSTER", seeds.as_str())])
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daily_counts_can_be_turned_off() {
    let _serial = one_at_a_time().await;
    let rig = Rig::start(1);
    let server = rig.server(&[("DAILY_RETENTION_DAYS", "0")]);
    let response = server.request("POST", "/api/v1/counter/visit/plain").await;
    assert_eq!(response.status, 200);
    let response = server
        .request("GET", "/api/v1/counter/visits/plain/daily")
        .await;
    assert_eq!(response.status, 404, "{}", response.text());
    assert_eq!(json(&response)["error"]["code"], "daily_counts_off");
    server.wait_flushed(Duration::from_secs(30)).await;
    let keys = rig.nodes()[0].keys("tally:v:*").expect("KEYS");
    assert_eq!(keys, ["tally:v:plain"], "one key per page, no day");
    server.stop();
}
