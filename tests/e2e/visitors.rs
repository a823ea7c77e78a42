//! Unique visitors (`X-Visitor-Id`, `GET .../counter/visitors/{page}[?days=N]`) through
//! the real server on every store.
//!
//! The judge of every estimate is a scratch `redis-server`: the same visitor ids `PFADD`ed
//! there give the estimate a HyperLogLog holding exactly those ids gives. The server's
//! answer must equal it (every acknowledged id reached the sketch, and nothing else did),
//! and it must be within 2% of the true number of distinct ids. Also: a retried add (its
//! reply lost) changes no estimate, ids wait while their node is down and reach it after,
//! `MAX_PENDING_VISITORS` refuses visits once reached (without counting them), a reset
//! clears the page's and its days' visitors, and a bad header answers 400.

use std::time::{Duration, Instant};

use serde_json::Value;
use tally_testkit::{Cluster, HttpConnection, Mode, RedisNode};

use crate::support::{Rig, Server, json, one_at_a_time};

/// A visitor id of the scenarios: distinct for distinct `i`.
fn visitor(i: usize) -> String {
    format!("visitor-{i:07}")
}

/// What [`visit_as`] got back.
#[derive(Debug, Default)]
struct Answers {
    /// The ids whose visit answered 200.
    acked: Vec<String>,
    /// The other answers: id, status and error code.
    refused: Vec<(String, u16, String)>,
}

/// Sends one `POST .../counter/visit/{page}` per id, with `X-Visitor-Id: {id}`, over
/// `connections` keep-alive connections, and sorts the answers.
async fn visit_as(server: &Server, page: &str, ids: &[String], connections: usize) -> Answers {
    let chunk = ids.len().div_ceil(connections.max(1)).max(1);
    let workers = ids.chunks(chunk).map(|ids| {
        let addr = server.addr();
        let ids = ids.to_vec();
        let page = page.to_owned();
        tokio::spawn(async move {
            let mut conn = HttpConnection::connect(&addr).await.expect("connect");
            let mut answers = Answers::default();
            for id in ids {
                let request = format!(
                    "POST /api/v1/counter/visit/{page} HTTP/1.1\r\nHost: x\r\nX-Visitor-Id: {id}\r\nContent-Length: 0\r\n\r\n"
                );
                if !conn.reusable() {
                    conn = HttpConnection::connect(&addr).await.expect("connect");
                }
                let response = conn.send_raw(request.as_bytes()).await.expect("an answer");
                if response.status == 200 {
                    answers.acked.push(id);
                } else {
                    let code = json(&response)["error"]["code"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    answers.refused.push((id, response.status, code));
                }
            }
            answers
        })
    });
    let mut all = Answers::default();
    for worker in futures::future::join_all(workers).await {
        let answers = worker.expect("a sender");
        all.acked.extend(answers.acked);
        all.refused.extend(answers.refused);
    }
    all
}

/// The estimate of a HyperLogLog holding exactly `ids`, from a scratch Redis node.
fn reference_estimate(scratch: &RedisNode, ids: &[String]) -> u64 {
    let key = format!("scratch:{}", rand_suffix());
    for chunk in ids.chunks(10_000) {
        let _: i64 = scratch
            .query(redis::cmd("PFADD").arg(&key).arg(chunk))
            .expect("PFADD on the scratch node");
    }
    scratch
        .query(redis::cmd("PFCOUNT").arg(&key))
        .expect("PFCOUNT on the scratch node")
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now())
}

/// `GET .../counter/visitors/{page}{query}`, asserting 200 and the answer's constant
/// fields.
async fn visitors(server: &Server, page: &str, query: &str) -> Value {
    let body = server
        .get_json(&format!("/api/v1/counter/visitors/{page}{query}"))
        .await;
    assert_eq!(body["page_id"], page, "{body}");
    assert_eq!(body["method"], "hyperloglog", "{body}");
    assert_eq!(body["standard_error"], 0.0081, "{body}");
    body
}

/// The page's estimate in all.
async fn unique_visitors(server: &Server, page: &str) -> u64 {
    visitors(server, page, "").await["unique_visitors"]
        .as_u64()
        .expect("unique_visitors is a number")
}

/// Today's estimate of a `?days=` answer (the last day), with the others' sum.
fn today_and_rest(body: &Value) -> (u64, u64) {
    let days = body["days"].as_array().expect("days is a list");
    let value = |day: &Value| day["unique_visitors"].as_u64().expect("a number");
    let (today, rest) = days.split_last().expect("at least one day");
    (value(today), rest.iter().map(value).sum())
}

/// Asserts `estimate` is within 2% of `truth`.
fn assert_within_two_percent(estimate: u64, truth: usize, what: &str) {
    let error = (estimate as f64 - truth as f64).abs() / truth as f64;
    assert!(
        error <= 0.02,
        "{what}: estimate {estimate} for {truth} distinct visitors is {:.2}% off",
        error * 100.0
    );
}

/// The scenario on one store: `distinct` visitors of one page (a tenth of them twice),
/// judged against the scratch node; the page's visits exact; a visit without the header
/// adds no visitor; bad headers; a reset; `start` starts a server again to show the
/// sketches persist.
async fn visitors_on(store: &str, distinct: usize, start: impl Fn() -> Server) {
    let scratch = RedisNode::start().unwrap_or_else(|e| panic!("{e}"));
    let server = start();
    let page = "landing";
    let mut ids: Vec<String> = (0..distinct).map(visitor).collect();
    ids.extend((0..distinct / 10).map(visitor));
    let answers = visit_as(&server, page, &ids, 8).await;
    assert!(answers.refused.is_empty(), "{store}: {:?}", answers.refused);
    let truth = reference_estimate(&scratch, &answers.acked);
    let estimate = unique_visitors(&server, page).await;
    assert_eq!(
        estimate, truth,
        "{store}: the sketch holds exactly the acknowledged ids"
    );
    assert_within_two_percent(estimate, distinct, store);
    let (visits, _) = server.count(page).await;
    assert_eq!(
        visits,
        ids.len() as u64,
        "{store}: every visit counted once"
    );
    let (today, rest) = today_and_rest(&visitors(&server, page, "?days=3").await);
    // A run that crosses midnight UTC splits the ids over two days: then only the sum
    // is bounded.
    if rest == 0 {
        assert_eq!(today, truth, "{store}: today's sketch holds the same ids");
    }

    // No header: a visit, no visitor.
    let response = server.request("POST", "/api/v1/counter/visit/quiet").await;
    assert_eq!(response.status, 200);
    assert_eq!(unique_visitors(&server, "quiet").await, 0, "{store}");
    assert_eq!(server.count("quiet").await.0, 1, "{store}");

    // Bad headers: 400, nothing counted.
    let long = "v".repeat(129);
    for (header, why) in [
        ("X-Visitor-Id: \r\n".to_owned(), "empty"),
        (format!("X-Visitor-Id: {long}\r\n"), "129 bytes"),
        (
            "X-Visitor-Id: a\r\nX-Visitor-Id: b\r\n".to_owned(),
            "more than once",
        ),
    ] {
        let request = format!(
            "POST /api/v1/counter/visit/quiet HTTP/1.1\r\nHost: x\r\n{header}Content-Length: 0\r\n\r\n"
        );
        let mut conn = HttpConnection::connect(&server.addr())
            .await
            .expect("connect");
        let response = conn.send_raw(request.as_bytes()).await.expect("an answer");
        assert_eq!(response.status, 400, "{store} {why}: {}", response.text());
        let body = json(&response);
        assert_eq!(body["error"]["code"], "invalid_visitor_id", "{body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(why), "{store}: {message}");
    }
    assert_eq!(
        server.count("quiet").await.0,
        1,
        "{store}: no bad visit counted"
    );
    let exactly_128 = "w".repeat(128);
    let answers = visit_as(&server, "quiet", &[exactly_128], 1).await;
    assert_eq!(answers.acked.len(), 1, "{store}: 128 bytes is allowed");
    assert_eq!(unique_visitors(&server, "quiet").await, 1, "{store}");
    server.wait_flushed(Duration::from_secs(30)).await;
    server.stop();

    // Kept: a new server reads the same estimate; a reset clears it and its days.
    let server = start();
    assert_eq!(unique_visitors(&server, page).await, truth, "{store}: kept");
    let response = server
        .request("DELETE", &format!("/api/v1/counter/visits/{page}"))
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(unique_visitors(&server, page).await, 0, "{store}: reset");
    let (today, rest) = today_and_rest(&visitors(&server, page, "?days=3").await);
    assert_eq!((today, rest), (0, 0), "{store}: the days reset too");
    // Bad days, and an empty page id.
    for target in [
        format!("/api/v1/counter/visitors/{page}?days=0"),
        format!("/api/v1/counter/visitors/{page}?days=367"),
    ] {
        let response = server.request("GET", &target).await;
        assert_eq!(response.status, 400, "{target}: {}", response.text());
        assert_eq!(json(&response)["error"]["code"], "invalid_days");
    }
    let response = server.request("GET", "/api/v1/counter/visitors/").await;
    assert_eq!(response.status, 400, "{}", response.text());
    assert_eq!(json(&response)["error"]["code"], "invalid_page_id");
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_visitors_on_redis_nodes_within_two_percent_at_100k() {
    let _serial = one_at_a_time().await;
    let rig = Rig::start(3);
    visitors_on("redis", 100_000, || rig.server(&[])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_visitors_on_the_embedded_store() {
    let _serial = one_at_a_time().await;
    let dir = tempfile::tempdir().expect("a data directory");
    let data_dir = dir.path().to_string_lossy().into_owned();
    visitors_on("embedded", 20_000, || {
        Server::start_without_redis(&[("DATA_DIR", data_dir.as_str())])
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_visitors_on_a_redis_cluster() {
    let _serial = one_at_a_time().await;
    let cluster = Cluster::start().unwrap_or_else(|e| panic!("{e}"));
    let seeds = cluster.seeds();
    visitors_on("cluster", 20_000, || {
        Server::start_without_redis(&[("REDIS_CLUSTER", seeds.as_str())])
    })
    .await;
}

/// Ids of visits to `page` until `done` says the fault is over (bounded by `limit`),
/// 200 ids a round: the acknowledged ids.
async fn visit_until(
    server: &Server,
    page: &str,
    first: usize,
    limit: Duration,
    done: impl Fn() -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut acked = Vec::new();
    let mut next = first;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "the fault did not happen within {limit:?}"
        );
        let ids: Vec<String> = (next..next + 200).map(visitor).collect();
        next += 200;
        let answers = visit_as(server, page, &ids, 4).await;
        assert!(answers.refused.is_empty(), "{:?}", answers.refused);
        acked.extend(answers.acked);
    }
    acked
}

/// A node behind a fault proxy: three adds whose replies are lost (Redis applied them; the
/// server sends them again), then the node unreachable for a while (the ids wait, a read
/// of the estimate that took them fails and puts them back, and they reach the node once
/// it is back). The estimate equals the scratch node's for the acknowledged
/// ids, and the visits are exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visitor_adds_lost_or_refused_are_sent_again_and_change_no_estimate() {
    let _serial = one_at_a_time().await;
    let scratch = RedisNode::start().unwrap_or_else(|e| panic!("{e}"));
    let (rig, proxy) = Rig::start_behind_proxy(1, &RedisNode::builder(), 0).await;
    let server = rig.server(&[]);
    let page = "faulty";

    proxy.set_mode(Mode::DropRepliesMatching(3, b"PFADD".to_vec()));
    let mut acked = visit_until(&server, page, 0, Duration::from_secs(120), || {
        proxy.replies_dropped() == 3
    })
    .await;
    assert_eq!(proxy.replies_dropped(), 3, "three replies lost");

    proxy.set_mode(Mode::Refuse);
    server.wait_for_node(&proxy.url(), false).await;
    let more: Vec<String> = (1_000_000..1_002_000).map(visitor).collect();
    let answers = visit_as(&server, page, &more, 4).await;
    assert!(answers.refused.is_empty(), "{:?}", answers.refused);
    acked.extend(answers.acked);
    // Some ids again: already in the sketch, or already waiting.
    let again: Vec<String> = acked.iter().step_by(7).cloned().collect();
    let answers = visit_as(&server, page, &again, 4).await;
    assert!(answers.refused.is_empty(), "{:?}", answers.refused);
    let visits = acked.len() + again.len();
    // A read of the estimate sends the page's waiting ids first: it fails, and they wait
    // again, none lost.
    let response = server
        .request("GET", &format!("/api/v1/counter/visitors/{page}"))
        .await;
    assert_eq!(response.status, 503, "{}", response.text());
    assert_eq!(json(&response)["error"]["code"], "store_unavailable");
    proxy.set_mode(Mode::Pass);
    server.wait_for_node(&proxy.url(), true).await;

    let truth = reference_estimate(&scratch, &acked);
    assert_eq!(unique_visitors(&server, page).await, truth);
    server.wait_flushed(Duration::from_secs(30)).await;
    assert_eq!(server.count(page).await.0, visits as u64, "visits exact");
    let failed = server
        .metric("tally_counter_sketch_adds_total", &["outcome=\"failed\""])
        .await;
    assert!(failed >= 3.0, "the lost and refused adds failed: {failed}");
    server.stop();
}

/// `MAX_PENDING_VISITORS` reached while the node is unreachable: the next visit with a
/// new id answers 503 `overloaded` and is not counted; once the node is back, the waiting
/// ids reach it and every acknowledged visit is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visitor_ids_waiting_are_bounded() {
    let _serial = one_at_a_time().await;
    let scratch = RedisNode::start().unwrap_or_else(|e| panic!("{e}"));
    let (rig, proxy) = Rig::start_behind_proxy(1, &RedisNode::builder(), 0).await;
    // Each visit adds two ids: the page's and its day's.
    let server = rig.server(&[("MAX_PENDING_VISITORS", "40")]);
    proxy.set_mode(Mode::Refuse);
    server.wait_for_node(&proxy.url(), false).await;
    let ids: Vec<String> = (0..30).map(visitor).collect();
    let answers = visit_as(&server, "bounded", &ids, 1).await;
    assert_eq!(answers.acked.len(), 20, "{answers:?}");
    assert_eq!(answers.refused.len(), 10, "{answers:?}");
    for (id, status, code) in &answers.refused {
        assert_eq!((*status, code.as_str()), (503, "overloaded"), "{id}");
    }
    proxy.set_mode(Mode::Pass);
    server.wait_for_node(&proxy.url(), true).await;
    let truth = reference_estimate(&scratch, &answers.acked);
    assert_eq!(unique_visitors(&server, "bounded").await, truth);
    server.wait_flushed(Duration::from_secs(30)).await;
    assert_eq!(
        server.count("bounded").await.0,
        20,
        "refused visits not counted"
    );
    // Room again.
    let answers = visit_as(&server, "bounded", &[visitor(99)], 1).await;
    assert_eq!(answers.acked.len(), 1, "{answers:?}");
    server.stop();
}
