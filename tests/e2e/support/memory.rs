//! Sampling a server's resident memory and pending URLs while a flood runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tally_testkit::{HttpConnection, resident_memory};

use super::{Server, json};

/// What [`sample`] saw, one entry per sample.
pub struct Samples {
    /// The server's resident memory, in bytes.
    pub rss: Vec<u64>,
    /// `/status` `stats_status.pending_urls`.
    pub pending: Vec<u64>,
    /// `/status` `stats_status.pending_bytes`.
    pub pending_bytes: Vec<u64>,
    /// Samples whose `/status` was not answered 200 (at most about half are allowed).
    pub unanswered: usize,
}

/// Samples the server's resident memory and its pending URLs every 50 ms until `done`.
pub fn sample(server: &Server, done: &Arc<AtomicBool>) -> tokio::task::JoinHandle<Samples> {
    let done = Arc::clone(done);
    let pid = server.pid();
    let addr = server.addr();
    tokio::spawn(async move {
        let mut samples = Samples {
            rss: Vec::new(),
            pending: Vec::new(),
            pending_bytes: Vec::new(),
            unanswered: 0,
        };
        while !done.load(Ordering::Relaxed) {
            samples.rss.push(resident_memory(pid).expect("VmRSS"));
            let mut conn = HttpConnection::connect(&addr).await.expect("connect");
            let status = conn.send("GET", "/status").await.expect("/status");
            if status.status != 200 {
                // An answer from actix itself, without the app's JSON (seen once in a full
                // run on a machine busy with other builds: an empty body): the memory
                // sample above stands, this figure waits for the next round.
                samples.unanswered += 1;
                assert!(
                    samples.unanswered * 2 <= samples.rss.len() + 10,
                    "/status failed {} of {} samples, the last {} {}",
                    samples.unanswered,
                    samples.rss.len(),
                    status.status,
                    status.text()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            let stats = &json(&status)["stats_status"];
            samples
                .pending
                .push(stats["pending_urls"].as_u64().expect("pending_urls"));
            samples
                .pending_bytes
                .push(stats["pending_bytes"].as_u64().expect("pending_bytes"));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        samples
    })
}
