//! The server without `REDIS_NODES`, on its default store: the embedded store in
//! `DATA_DIR` (real files in temporary directories). Counts and the `/stats/` ranking
//! survive a graceful restart and a SIGKILL once written; a `DATA_DIR` that another server
//! holds, that cannot be created, or whose `tally.redb` is not a database, exits with code
//! 2 and one line naming it.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Server, one_at_a_time};

/// Pages and the visits each gets (ties included, so the ranking's order by URL counts).
const PAGES: &[(&str, u64)] = &[("home", 5), ("about", 3), ("blog", 3), ("contact", 1)];

/// Paths under `/api/` and the requests each gets (`/api/a` and `/api/a/` are two URLs).
const PATHS: &[(&str, u64)] = &[
    ("/api/products/123/", 4),
    ("/api/users/456/", 3),
    ("/api/a", 2),
    ("/api/a/", 1),
];

/// Sends [`PAGES`]' visits and [`PATHS`]' requests, each answered 200.
async fn send_traffic(server: &Server) {
    for (page, visits) in PAGES {
        for _ in 0..*visits {
            let response = server
                .request("POST", &format!("/api/v1/counter/visit/{page}"))
                .await;
            assert_eq!(response.status, 200, "{}", response.text());
        }
    }
    for (path, requests) in PATHS {
        for _ in 0..*requests {
            let response = server.request("GET", path).await;
            assert_eq!(response.status, 200, "{}", response.text());
        }
    }
}

/// The ranking [`send_traffic`] makes: every visit's URL and every path, by count
/// descending, then URL ascending.
fn expected_ranking() -> Value {
    let mut entries: Vec<(String, u64)> = PAGES
        .iter()
        .map(|(page, n)| (format!("/api/v1/counter/visit/{page}"), *n))
        .chain(PATHS.iter().map(|(path, n)| ((*path).to_owned(), *n)))
        .collect();
    entries.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Value::Array(
        entries
            .into_iter()
            .map(|(url, count)| json!({"count": count, "url": url}))
            .collect(),
    )
}

/// Asserts every page of [`PAGES`] reads its count.
async fn assert_page_counts(server: &Server) {
    for (page, visits) in PAGES {
        let (count, _) = server.count(page).await;
        assert_eq!(count, *visits, "{page}");
    }
}

/// The one line a server refusing `DATA_DIR={dir}` prints on stderr, checked to be that.
fn assert_data_dir_refused(dir: &Path, what: &str) -> String {
    let shown = dir.display().to_string();
    let (status, stdout, stderr) = Server::run_to_exit(&[("DATA_DIR", shown.as_str())]);
    assert_eq!(status.code(), Some(2), "{what}: {stdout}{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{what}: {stderr}");
    let line = lines[0].to_owned();
    assert!(
        line.starts_with(&format!(
            "tally-server: invalid configuration: DATA_DIR={shown:?}: "
        )),
        "{what}: {line}"
    );
    line
}

#[tokio::test]
async fn a_restart_after_sigterm_keeps_every_count_and_the_ranking() {
    let _serial = one_at_a_time().await;
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().display().to_string();
    let env = [("DATA_DIR", data_dir.as_str())];

    let server = Server::start_without_redis(&env);
    send_traffic(&server).await;
    server.stop();

    let server = Server::start_without_redis(&env);
    // Before any other /api/ request, which would be counted too.
    let ranking = server.get_json("/stats/?limit=100").await;
    assert_eq!(ranking, expected_ranking());
    assert_page_counts(&server).await;
    let file = data.path().join("tally.redb").display().to_string();
    let status = server.get_json("/status").await;
    assert_eq!(status["store"], json!({"kind": "embedded", "path": file}));
    let output = server.stop();
    assert!(
        output.contains(&format!("embedded store at {file}")),
        "{output}"
    );
    assert!(
        !output.contains("repair"),
        "the first server closed its file cleanly: {output}"
    );
}

#[tokio::test]
async fn a_sigkill_after_the_visits_are_written_loses_nothing() {
    let _serial = one_at_a_time().await;
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().display().to_string();
    let env = [("DATA_DIR", data_dir.as_str())];

    let server = Server::start_without_redis(&env);
    send_traffic(&server).await;
    server.wait_flushed(Duration::from_secs(20)).await;
    // `/stats/` writes the pending request statistics before it answers, so this is the
    // ranking as written (with the metrics requests `wait_flushed` made).
    let before = server.get_json("/stats/?limit=100").await;
    for (page, visits) in PAGES {
        let url = format!("/api/v1/counter/visit/{page}");
        assert!(
            before
                .as_array()
                .unwrap()
                .contains(&json!({"count": visits, "url": url})),
            "{url}: {before}"
        );
    }
    server.kill();

    let server = Server::start_without_redis(&env);
    let after = server.get_json("/stats/?limit=100").await;
    assert_eq!(after, before);
    assert_page_counts(&server).await;
    let output = server.stop();
    assert!(
        output.contains("was not closed cleanly") && output.contains("was repaired at start"),
        "the killed server's file was repaired: {output}"
    );
}

#[tokio::test]
async fn a_second_server_on_the_same_data_dir_exits_2_saying_it_is_in_use() {
    let _serial = one_at_a_time().await;
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().display().to_string();
    let server = Server::start_without_redis(&[("DATA_DIR", data_dir.as_str())]);

    let line = assert_data_dir_refused(data.path(), "a second server");

    assert!(
        line.contains("is in use by another tally process"),
        "{line}"
    );
    // The first one is not disturbed.
    let response = server.request("POST", "/api/v1/counter/visit/home").await;
    assert_eq!(response.status, 200);
    server.stop();
}

#[tokio::test]
async fn an_unusable_data_dir_or_a_corrupt_file_exits_2_naming_it() {
    let _serial = one_at_a_time().await;
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let under_a_file = file.join("data");

    let line = assert_data_dir_refused(&under_a_file, "a path under a file");
    assert!(
        line.contains(&format!(
            "cannot create the data directory {}",
            under_a_file.display()
        )),
        "{line}"
    );

    let corrupt = scratch.path().join("corrupt");
    std::fs::create_dir(&corrupt).unwrap();
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 37 % 251 + 1) as u8).collect();
    std::fs::write(corrupt.join("tally.redb"), garbage).unwrap();

    let line = assert_data_dir_refused(&corrupt, "a corrupt tally.redb");
    assert!(
        line.contains(&format!(
            "{} is not a tally database",
            corrupt.join("tally.redb").display()
        )),
        "{line}"
    );
}

#[tokio::test]
async fn store_memory_with_redis_nodes_exits_2() {
    let _serial = one_at_a_time().await;
    let (status, stdout, stderr) =
        Server::run_to_exit(&[("STORE", "memory"), ("REDIS_NODES", "redis://127.0.0.1:1")]);
    assert_eq!(status.code(), Some(2), "{stdout}{stderr}");
    assert_eq!(
        stderr.trim_end(),
        "tally-server: invalid configuration: STORE=\"memory\": REDIS_NODES is set, which counts in Redis; unset STORE (or REDIS_NODES)"
    );
}
