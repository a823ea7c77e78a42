//! Increments by N (`POST .../counter/visit/{page}?count=N`) and bulk visits (`POST
//! .../counter/visits`) through the real server on every store: under concurrency the
//! stored totals are the sums acknowledged, a bulk refused for overload counts none of its
//! pages (and gives back every place it took), and bad bodies get the documented 4xx.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tally_testkit::{Cluster, HttpConnection, HttpResponse};

use crate::support::{Rig, Server, json, one_at_a_time, stored_visits};

/// What one sender saw: the visits acknowledged per page, and the requests that were not.
#[derive(Debug, Default)]
pub(crate) struct Sent {
    pub(crate) acked: HashMap<String, u64>,
    pub(crate) requests: u64,
    pub(crate) bulks: u64,
    pub(crate) refused: Vec<String>,
}

impl Sent {
    fn merge(&mut self, other: Sent) {
        for (page, n) in other.acked {
            *self.acked.entry(page).or_default() += n;
        }
        self.requests += other.requests;
        self.bulks += other.bulks;
        self.refused.extend(other.refused);
    }
}

/// A small xorshift generator: the senders need variety, not quality.
struct Dice(u64);

impl Dice {
    fn roll(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

/// `POST target` with a JSON `body` on `conn`.
async fn post_json(
    conn: &mut HttpConnection,
    host: &str,
    target: &str,
    body: &str,
) -> HttpResponse {
    let request = format!(
        "POST {target} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.send_raw(request.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("POST {target}: {e}"))
}

/// `requests` requests (fewer once `stop` is set) on one keep-alive connection to `addr`,
/// taking turns: a visit of
/// one page with `?count=N` (N from 1 to 1,000, now and then 1,000,000), and a bulk of 1
/// to 20 pages with counts from 1 to 50. Only 200s count as acknowledged.
pub(crate) async fn send_mixed(
    addr: String,
    pages: Vec<String>,
    requests: u64,
    seed: u64,
    stop: Option<Arc<AtomicBool>>,
) -> Sent {
    let mut conn = HttpConnection::connect(&addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let mut dice = Dice(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut sent = Sent::default();
    for i in 0..requests {
        if stop
            .as_ref()
            .is_some_and(|stop| stop.load(Ordering::Relaxed))
        {
            break;
        }
        sent.requests += 1;
        if i % 2 == 0 {
            let page = &pages[dice.roll(pages.len() as u64) as usize];
            let n = if dice.roll(50) == 0 {
                1_000_000
            } else {
                1 + dice.roll(1_000)
            };
            let target = format!("/api/v1/counter/visit/{page}?count={n}");
            let response = conn
                .send("POST", &target)
                .await
                .unwrap_or_else(|e| panic!("POST {target}: {e}"));
            if response.status == 200 {
                assert_eq!(json(&response)["count"], n, "{}", response.text());
                *sent.acked.entry(page.clone()).or_default() += n;
            } else {
                sent.refused.push(response.text());
            }
        } else {
            let size = 1 + dice.roll(20) as usize;
            let mut bulk: HashMap<&str, u64> = HashMap::new();
            while bulk.len() < size.min(pages.len()) {
                let page = &pages[dice.roll(pages.len() as u64) as usize];
                bulk.insert(page, 1 + dice.roll(50));
            }
            let body = serde_json::json!({ "visits": bulk }).to_string();
            let response = post_json(&mut conn, &addr, "/api/v1/counter/visits", &body).await;
            if response.status == 200 {
                let reply = json(&response);
                assert_eq!(reply["pages"], bulk.len(), "{reply}");
                assert_eq!(reply["recorded"], bulk.values().sum::<u64>(), "{reply}");
                for (page, n) in bulk {
                    *sent.acked.entry(page.to_owned()).or_default() += n;
                }
                sent.bulks += 1;
            } else {
                sent.refused.push(response.text());
            }
        }
    }
    sent
}

/// Four senders at once, `requests` each, over `pages`.
async fn send_concurrently(server: &Server, pages: &[String], requests: u64) -> Sent {
    let tasks: Vec<_> = (0..4)
        .map(|seed| {
            tokio::spawn(send_mixed(
                server.addr(),
                pages.to_vec(),
                requests,
                seed + 1,
                None,
            ))
        })
        .collect();
    let mut sent = Sent::default();
    for task in tasks {
        sent.merge(task.await.expect("a sender"));
    }
    assert!(
        sent.refused.is_empty(),
        "every request was taken: {:?}",
        sent.refused
    );
    assert!(sent.bulks > 0);
    sent
}

/// The count of every page acknowledged, as `server` answers it, against the sums
/// acknowledged: the pages that differ.
async fn wrong_counts(server: &Server, sent: &Sent) -> Vec<String> {
    let mut wrong = Vec::new();
    for (page, acked) in &sent.acked {
        let (visits, _) = server.count(page).await;
        if visits != *acked {
            wrong.push(format!("{page}: {visits}, acknowledged {acked}"));
        }
    }
    wrong
}

fn pages(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_and_bulks_are_exact_on_the_embedded_store_across_a_restart() {
    let _serial = one_at_a_time().await;
    let dir = tempfile::tempdir().expect("a data directory");
    let data_dir = dir.path().to_string_lossy().into_owned();
    let server = Server::start_without_redis(&[("DATA_DIR", &data_dir)]);
    let pages = pages("emb", 200);
    let sent = send_concurrently(&server, &pages, 300).await;
    server.stop();

    // A new server on the same file: only what was written counts.
    let server = Server::start_without_redis(&[("DATA_DIR", &data_dir)]);
    let wrong = wrong_counts(&server, &sent).await;
    assert!(wrong.is_empty(), "{} pages wrong: {wrong:?}", wrong.len());
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_and_bulks_are_exact_on_redis_nodes() {
    let _serial = one_at_a_time().await;
    let rig = Rig::start(3);
    let server = rig.server(&[]);
    let pages = pages("std", 300);
    let sent = send_concurrently(&server, &pages, 300).await;
    server.wait_flushed(Duration::from_secs(30)).await;

    // On the nodes, where the ring puts each page: exactly the sums acknowledged.
    let page_names: Vec<String> = sent.acked.keys().cloned().collect();
    let stored = stored_visits(&rig.nodes(), &rig.ring, &page_names);
    let wrong: Vec<String> = sent
        .acked
        .iter()
        .filter(|(page, acked)| stored.get(page.as_str()) != Some(acked))
        .map(|(page, acked)| {
            format!(
                "{page}: {:?}, acknowledged {acked}",
                stored.get(page.as_str())
            )
        })
        .collect();
    assert!(wrong.is_empty(), "{} pages wrong: {wrong:?}", wrong.len());
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_and_bulks_are_exact_on_a_redis_cluster() {
    let _serial = one_at_a_time().await;
    let cluster = Cluster::start().unwrap_or_else(|e| panic!("{e}"));
    let seeds = cluster.seeds();
    let server = Server::start_without_redis(&[("REDIS_CLUSTER", seeds.as_str())]);
    let pages = pages("clu", 300);
    let sent = send_concurrently(&server, &pages, 200).await;
    server.wait_flushed(Duration::from_secs(30)).await;
    server.stop();

    // A new server, with nothing of its own pending: what the cluster holds.
    let server = Server::start_without_redis(&[("REDIS_CLUSTER", seeds.as_str())]);
    let wrong = wrong_counts(&server, &sent).await;
    assert!(wrong.is_empty(), "{} pages wrong: {wrong:?}", wrong.len());
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_refused_for_overload_counts_none_of_its_pages() {
    let _serial = one_at_a_time().await;
    // One node, paused: nothing drains, and 100 keys may wait: 50 pages, each with its
    // day count.
    let rig = Rig::start(1);
    let server = rig.server(&[("MAX_PENDING_KEYS", "100")]);
    let node = &rig.nodes()[0];
    node.pause().expect("SIGSTOP");
    let mut conn = HttpConnection::connect(&server.addr())
        .await
        .expect("connect");
    let bulk = |first: usize| {
        let visits: HashMap<String, u64> =
            (first..first + 30).map(|i| (format!("p{i}"), 2)).collect();
        serde_json::json!({ "visits": visits }).to_string()
    };
    let target = "/api/v1/counter/visits";

    let first = post_json(&mut conn, &server.addr(), target, &bulk(0)).await;
    assert_eq!(first.status, 200, "{}", first.text());
    // 30 more new pages (60 places) where 40 places are left: refused whole.
    let second = post_json(&mut conn, &server.addr(), target, &bulk(30)).await;
    assert_eq!(second.status, 503, "{}", second.text());
    assert_eq!(json(&second)["error"]["code"], "overloaded");
    assert!(second.header("retry-after").is_some());
    // The places the refused bulk took before it met the bound were given back: 20 new
    // pages (40 places) still fit, the 21st does not.
    for i in 100..120 {
        let response = conn
            .send("POST", &format!("/api/v1/counter/visit/p{i}"))
            .await
            .expect("a visit");
        assert_eq!(response.status, 200, "p{i}: {}", response.text());
    }
    let full = conn
        .send("POST", "/api/v1/counter/visit/p120")
        .await
        .expect("a visit");
    assert_eq!(full.status, 503, "{}", full.text());

    node.resume().expect("SIGCONT");
    server.wait_flushed(Duration::from_secs(30)).await;
    let names: Vec<String> = (0..130).map(|i| format!("p{i}")).collect();
    let stored = stored_visits(&rig.nodes(), &rig.ring, &names);
    for i in 0..130 {
        let expected = match i {
            0..30 => 2,
            100..120 => 1,
            _ => 0,
        };
        let page = format!("p{i}");
        assert_eq!(
            stored.get(page.as_str()).copied().unwrap_or(0),
            expected,
            "{page}"
        );
    }
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_counts_and_bodies_get_clear_4xx_and_count_nothing() {
    let _serial = one_at_a_time().await;
    let server = Server::start_without_redis(&[]);
    let addr = server.addr();
    let mut conn = HttpConnection::connect(&addr).await.expect("connect");
    for (query, shown) in [
        ("count=0", "\"0\""),
        ("count=1000001", "\"1000001\""),
        ("count=-3", "\"-3\""),
        ("count=2.5", "\"2.5\""),
        ("count=", "\"\""),
        ("count=x", "\"x\""),
    ] {
        let response = conn
            .send("POST", &format!("/api/v1/counter/visit/bad?{query}"))
            .await
            .expect("an answer");
        assert_eq!(response.status, 400, "{query}: {}", response.text());
        let body = json(&response);
        assert_eq!(body["error"]["code"], "invalid_count", "{query}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(shown) && message.contains("1 to 1000000"),
            "{message}"
        );
    }
    let target = "/api/v1/counter/visits";
    let many: HashMap<String, u64> = (0..1_001).map(|i| (format!("m{i}"), 1)).collect();
    let many = serde_json::json!({ "visits": many }).to_string();
    for (body, code, needle) in [
        (r#"{"visits":{"ok":1,"a/b":2}}"#, "invalid_body", "entry 2"),
        (
            r#"{"visits":{"ok":1,"zero":0}}"#,
            "invalid_count",
            "\"zero\"",
        ),
        (
            r#"{"visits":{"ok":1,"big":1000001}}"#,
            "invalid_count",
            "\"big\"",
        ),
        (
            r#"{"visits":{"ok":1,"ok":2}}"#,
            "invalid_body",
            "listed twice",
        ),
        (r#"{"visits":{}}"#, "invalid_body", "0 pages"),
        (many.as_str(), "invalid_body", "1000"),
        (r#"{"visits":[]}"#, "invalid_body", "object"),
        (r#"{"pages":{}}"#, "invalid_body", "visits"),
        ("not json", "bad_request", "JSON"),
    ] {
        let response = post_json(&mut conn, &addr, target, body).await;
        assert_eq!(response.status, 400, "{body:.60}: {}", response.text());
        let reply = json(&response);
        assert_eq!(reply["error"]["code"], code, "{body:.60}: {reply}");
        let message = reply["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{body:.60}: {message}");
    }
    // Not JSON by its content type; too large.
    let request = format!(
        "POST {target} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/plain\r\nContent-Length: 20\r\n\r\n{{\"visits\":{{\"ok\":1}}}}"
    );
    let response = conn.send_raw(request.as_bytes()).await.expect("an answer");
    assert_eq!(response.status, 415, "{}", response.text());
    assert_eq!(json(&response)["error"]["code"], "unsupported_media_type");
    let huge = format!(r#"{{"visits":{{"{}":1}}}}"#, "x".repeat(1 << 20));
    let mut conn = HttpConnection::connect(&addr).await.expect("connect");
    let response = post_json(&mut conn, &addr, target, &huge).await;
    assert_eq!(response.status, 413, "{:.200}", response.text());
    assert_eq!(json(&response)["error"]["code"], "payload_too_large");

    // None of it counted.
    for page in ["bad", "ok", "a", "zero", "big", "m0", "m1000"] {
        assert_eq!(server.count(page).await.0, 0, "{page}");
    }
    server.stop();
}
