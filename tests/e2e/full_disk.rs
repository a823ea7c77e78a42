//! The embedded store on a disk that fills up: a real filesystem of 4 MiB (a tmpfs mounted
//! for the test, which needs root, as CI runs) as `DATA_DIR`. Once a write fails,
//! `/health` answers 503 `unhealthy` and `/status` says so, while visits are still
//! acknowledged and held in memory, a SIGTERM reports the ones it could not write, and
//! after a restart with room again no page counts more than it was acknowledged.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{Server, one_at_a_time};

/// Size of the filesystem: room for the database file, not for the visits sent.
const DISK: &str = "4m";
/// Longest the flood may take to fill it (bounded in requests too).
const FLOOD_LIMIT: Duration = Duration::from_secs(180);
/// Most distinct pages the flood sends.
const FLOOD_PAGES: usize = 200_000;

/// A tmpfs mounted on a temporary directory, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
    path: PathBuf,
}

impl SmallDisk {
    fn mount() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("disk");
        std::fs::create_dir(&path).expect("the mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={DISK}"), "tmpfs"])
            .arg(&path)
            .status()
            .unwrap_or_else(|e| panic!("cannot run mount: {e}"));
        assert!(
            status.success(),
            "this test mounts a {DISK} tmpfs as a full disk and needs root (as CI runs): `mount -t tmpfs` exited with {status}"
        );
        Self { dir, path }
    }

    fn path(&self) -> &Path {
        &self.path
    }

    /// Gives the filesystem room again.
    fn grow(&self) {
        let status = Command::new("mount")
            .args(["-o", "remount,size=256m"])
            .arg(&self.path)
            .status()
            .unwrap_or_else(|e| panic!("cannot run mount: {e}"));
        assert!(status.success(), "remount exited with {status}");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        let _ = self.dir.path();
    }
}

#[tokio::test]
async fn a_full_disk_makes_health_unhealthy_and_no_visit_is_counted_twice() {
    let _serial = one_at_a_time().await;
    let disk = SmallDisk::mount();
    let data_dir = disk.path().display().to_string();
    let mut server = Server::start_without_redis(&[
        ("DATA_DIR", &data_dir),
        ("BATCH_INTERVAL_SECONDS", "0.05"),
        ("MAX_PENDING_KEYS", "1000000"),
    ]);
    let health = server.request("GET", "/health").await;
    assert_eq!(health.status, 200, "{}", health.text());

    // Distinct pages of 200 bytes until a write fails and /health says so.
    let started = Instant::now();
    let mut acknowledged = 0usize;
    let mut unhealthy = None;
    let padding = "p".repeat(190);
    while acknowledged < FLOOD_PAGES && started.elapsed() < FLOOD_LIMIT {
        for _ in 0..500 {
            let page = format!("{padding}{acknowledged:08}");
            let response = server
                .request("POST", &format!("/api/v1/counter/visit/{page}"))
                .await;
            assert_eq!(response.status, 200, "{}", response.text());
            acknowledged += 1;
        }
        let health = server.request("GET", "/health").await;
        if health.status == 503 {
            unhealthy = Some(health);
            break;
        }
    }
    let health: tally_testkit::HttpResponse = unhealthy.unwrap_or_else(|| {
        panic!(
            "{acknowledged} distinct pages in {:?} and /health never turned 503 on a {DISK} disk; output:\n{}",
            started.elapsed(),
            server.output()
        )
    });

    assert_eq!(
        crate::support::json(&health),
        serde_json::json!({"status": "unhealthy", "redis": "embedded"})
    );
    let status = server.get_json("/status").await;
    assert_eq!(status["status"], "unhealthy", "{status}");
    assert_eq!(status["store"]["kind"], "embedded", "{status}");
    // Still taken and held, never lost silently.
    let response = server
        .request("POST", "/api/v1/counter/visit/after-the-disk-filled")
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    let metrics = server.get_json("/api/v1/counter/metrics").await;
    let pending = metrics["metrics"]["write_buffer_size"]
        .as_u64()
        .expect("write_buffer_size");
    assert!(pending > 0, "nothing held after the disk filled: {metrics}");

    // SIGTERM: what could not be written is reported, not claimed written.
    let (exit, _) = server.terminate(Duration::from_secs(60));
    let output = server.output();
    assert!(exit.success(), "exit {exit}; output:\n{output}");
    assert!(
        !output.contains("every pending visit was written"),
        "a shutdown on a full disk claimed everything written:\n{output}"
    );
    drop(server);

    // With room again, a restart opens the file: every page reads at most the one visit it
    // was acknowledged, and what was written before the disk filled is there.
    disk.grow();
    let server = Server::start_without_redis(&[("DATA_DIR", &data_dir)]);
    let first = format!("{padding}{:08}", 0);
    assert_eq!(
        server.count(&first).await.0,
        1,
        "the first page was written"
    );
    let mut counted = 0;
    for i in (0..acknowledged).step_by(acknowledged.div_ceil(300)) {
        let (visits, _) = server.count(&format!("{padding}{i:08}")).await;
        assert!(
            visits <= 1,
            "page {i} counted {visits} times, acknowledged once"
        );
        counted += visits;
    }
    println!(
        "full disk: {acknowledged} pages acknowledged before /health turned 503 after {:?}; {pending} held at the failure; {counted} of the sampled pages kept after the restart",
        started.elapsed()
    );
}
