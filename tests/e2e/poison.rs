//! Scenario 12: bad stored data. A page's counter in Redis holds text (as `SET
//! tally:v:poison abc` leaves it) while visits come to it and to 120 other pages: the
//! other pages, those on the same node included, are all written; the poisoned page's
//! visits are held apart, and the page answers `500 corrupt_count` naming the key, the
//! node and what is there, while `/status` and `/metrics` count it. Repaired, the node takes
//! the held visits at the next recheck; a reset drops them. And a node whose request
//! statistics set has the wrong type says so in `/status`, naming the key and the node,
//! while the other nodes' statistics go on.

use std::time::{Duration, Instant};

use tally_testkit::{LoadSpec, keys_on, run_load};

use crate::support::{Rig, Server, json, one_at_a_time};

const POISON: &str = "poison";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_value_holds_only_its_own_page_and_a_repair_writes_its_visits() {
    let _serial = one_at_a_time().await;
    let rig = Rig::start(3);
    let owner = rig.owner(POISON);
    let node = rig.cluster.node(owner);
    node.query::<()>(redis::cmd("SET").arg("tally:v:poison").arg("abc"))
        .expect("SET");
    let mut server = rig.server(&[]);
    // The first visit is taken (nothing says the value is bad until its batch is written).
    let first = server
        .request("POST", &format!("/api/v1/counter/visit/{POISON}"))
        .await;
    assert_eq!(first.status, 200, "{}", first.text());
    let mut pages: Vec<String> = (0..120).map(|i| format!("page-{i}")).collect();
    pages.extend(keys_on(&rig.ring, owner, "neighbour-").take(20));
    let board = run_load(LoadSpec {
        concurrency: 8,
        ..LoadSpec::visits(&server.base_url(), pages.clone(), pages.len() as u64)
    })
    .await;
    held(&server, 1).await;
    wait_written(&server, 1).await;

    let stored = crate::support::stored_visits(&rig.nodes(), &rig.ring, &pages);
    let poisoned = server
        .request("GET", &format!("/api/v1/counter/visits/{POISON}"))
        .await;
    let refused = server
        .request("POST", &format!("/api/v1/counter/visit/{POISON}"))
        .await;
    let status = server.get_json("/status").await;
    let gauge = server
        .metric("tally_counter_quarantined_keys", &["counter=\"visits\""])
        .await;

    assert_eq!(board.totals().acked, pages.len() as u64, "{board:?}");
    board
        .check_counts(|page| stored.get(page).copied().unwrap_or(0))
        .unwrap_or_else(|wrong| {
            panic!("every other page written, those of the poisoned node included: {wrong}")
        });
    for response in [&poisoned, &refused] {
        assert_eq!(response.status, 500, "{}", response.text());
        let body = json(response);
        assert_eq!(body["error"]["code"], "corrupt_count", "{body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        for part in ["tally:v:poison", &node.addr().to_string(), "abc"] {
            assert!(message.contains(part), "{part} not in: {message}");
        }
    }
    assert_eq!(status["counter_status"]["quarantined_keys"], 1, "{status}");
    assert_eq!(status["status"], "healthy", "{status}");
    assert_eq!(gauge, 1.0);
    assert_eq!(
        node.get("tally:v:poison").expect("GET").as_deref(),
        Some("abc"),
        "left as it was"
    );

    // Repaired by hand: the held visit (not the refused one) is written at the next recheck.
    node.query::<()>(redis::cmd("SET").arg("tally:v:poison").arg(10))
        .expect("SET");
    held(&server, 0).await;
    assert_eq!(server.count(POISON).await.0, 11);

    // Poisoned again (another type this time), visited, then reset: the held visit goes
    // with the reset, and the page counts from zero.
    node.query::<()>(redis::cmd("DEL").arg("tally:v:poison"))
        .expect("DEL");
    node.query::<()>(redis::cmd("HSET").arg("tally:v:poison").arg("f").arg("v"))
        .expect("HSET");
    let visit = server
        .request("POST", &format!("/api/v1/counter/visit/{POISON}"))
        .await;
    assert_eq!(visit.status, 200, "{}", visit.text());
    held(&server, 1).await;
    let reset = server
        .request("DELETE", &format!("/api/v1/counter/visits/{POISON}"))
        .await;
    assert_eq!(reset.status, 200, "{}", reset.text());
    held(&server, 0).await;
    assert_eq!(server.count(POISON).await.0, 0);

    // A page still held at SIGTERM: its held visits are logged with the key and amount,
    // for an operator to add by hand.
    let other = "poison-2";
    let other_node = rig.cluster.node(rig.owner(other));
    other_node
        .query::<()>(redis::cmd("SET").arg(format!("tally:v:{other}")).arg("xyz"))
        .expect("SET");
    for _ in 0..3 {
        let visit = server
            .request("POST", &format!("/api/v1/counter/visit/{other}"))
            .await;
        assert_eq!(visit.status, 200, "{}", visit.text());
    }
    held(&server, 1).await;

    let (exit, _) = server.terminate(Duration::from_secs(15));
    let output = server.output();
    assert_eq!(exit.code(), Some(0), "{output}");
    let logged = output
        .lines()
        .filter(|line| {
            line.contains("the stored value of a key is not a count")
                && line.contains("stored_as=tally:v:poison ")
        })
        .count();
    assert_eq!(
        logged, 2,
        "each time the key was found bad it was logged once:\n{output}"
    );
    let at_shutdown: Vec<&str> = output
        .lines()
        .filter(|line| line.contains("shut down with increments held"))
        .collect();
    assert!(
        at_shutdown.len() == 1
            && at_shutdown[0].contains("tally:v:poison-2")
            && at_shutdown[0].contains("increments=3"),
        "the held page, its key and amount logged at shutdown: {at_shutdown:?}\n{output}"
    );
}

/// Waits until `/status` reports `n` held pages.
async fn held(server: &Server, n: u64) {
    server
        .wait_for_status(&format!("{n} held pages"), |status| {
            status["counter_status"]["quarantined_keys"] == n
        })
        .await;
}

/// Waits until only `held` pages wait in the write buffer (the held ones keep their place).
async fn wait_written(server: &Server, held: u64) {
    server
        .wait_for_status("the visits to be written", |status| {
            status["counter_status"]["write_buffer_size"] == held
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statistics_set_of_the_wrong_type_is_reported_naming_key_and_node() {
    let _serial = one_at_a_time().await;
    let rig = Rig::start(3);
    const BROKEN: usize = 2;
    let node = rig.cluster.node(BROKEN);
    node.query::<()>(redis::cmd("SET").arg("tally:urls").arg("oops"))
        .expect("SET");
    let server = rig.server(&[]);
    // URLs on every node; those of the broken node wait for it.
    let urls: Vec<String> = (0..60).map(|i| format!("u{i}")).collect();
    let board = run_load(LoadSpec {
        method: "GET",
        path: |key| format!("/api/{key}/"),
        concurrency: 4,
        ..LoadSpec::visits(&server.base_url(), urls.clone(), urls.len() as u64)
    })
    .await;
    let name = node.addr().to_string();
    let status = server
        .wait_for_status(&format!("{name} among the failing nodes"), |status| {
            status["stats_status"]["failing_nodes"][&name].is_string()
        })
        .await;
    let failures_before = status["stats_status"]["batches_failed"]
        .as_u64()
        .unwrap_or(0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = server.get_json("/status").await;
    let failures_after = later["stats_status"]["batches_failed"]
        .as_u64()
        .unwrap_or(0);
    let error = status["stats_status"]["failing_nodes"][&name]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    assert_eq!(board.totals().acked, urls.len() as u64, "{board:?}");
    assert!(error.contains("tally:urls"), "names the key: {error}");
    assert!(error.contains(&name), "names the node: {error}");
    assert!(
        failures_after - failures_before <= 10,
        "retried with backoff, not in a tight loop: {} failures in 2 s",
        failures_after - failures_before
    );
    assert_eq!(
        status["counter_status"]["failing_nodes"],
        serde_json::json!({}),
        "the visits are not affected"
    );
    // The other nodes' statistics are written.
    for (index, healthy) in rig.nodes().iter().enumerate().filter(|(i, _)| *i != BROKEN) {
        let mine: Vec<String> = urls
            .iter()
            .map(|key| format!("/api/{key}/"))
            .filter(|url| rig.owner(url) == index)
            .collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let members = crate::support::url_members(healthy);
            if members.len() == mine.len() && members.iter().all(|(_, count)| *count == 1) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {index}: {members:?}, expected {mine:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
