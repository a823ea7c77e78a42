//! Crash consistency: a writer killed with SIGKILL mid-flood, again and again, loses no
//! batch it acknowledged, applies none in part, and applies none it did not send.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::time::Duration;

use tally_embedded::{EmbeddedStore, Layout};

use crate::support::{
    CHILD_DIR, TestResult, batch, child_line, child_role, open, read, spawn_child,
};

/// The counter instance the child writes as (the same in every round, as a retrying
/// counter keeps its id).
const INSTANCE: u64 = 42;
/// Keys every batch adds 1 to (a full batch of the counter's, so a commit takes long
/// enough for a kill to land inside it); `sum` gets the batch's sequence added.
const KEYS: usize = 1_000;
/// Acknowledgements the parent waits for before it kills the child, each round.
const KILL_AFTER: u64 = 20;
/// When, after those, each round kills the child: right after an acknowledgement, or
/// this long after the child said it sends the next batch (inside its transactions, most
/// often: which one varies). The checks hold wherever the kill lands.
const KILL_POINTS: [Option<Duration>; 4] = [
    None,
    Some(Duration::ZERO),
    Some(Duration::from_millis(5)),
    Some(Duration::from_millis(15)),
];

fn key(i: usize) -> String {
    format!("k{i:03}")
}

/// The batch of sequence `seq`.
fn flood_batch(seq: u64) -> tally_counter::Batch {
    let keys: Vec<String> = (0..KEYS).map(key).collect();
    let mut deltas: Vec<(&str, u64)> = keys.iter().map(|k| (k.as_str(), 1)).collect();
    deltas.push(("sum", seq));
    batch(INSTANCE, seq, &deltas)
}

/// The child: from the lower of the two layouts' marks on, sends batch after batch to
/// both layouts, printing `send {seq}` before and `ack {seq}` once both committed. Stops
/// by itself after a minute, in case no parent kills it.
async fn flood(dir: &Path) -> TestResult {
    let visits = EmbeddedStore::open(dir, crate::support::small_cache())?;
    let stats = visits.ranked();
    let (_, visits_mark) = read(&visits, INSTANCE, &[]).await;
    let (_, stats_mark) = read(&stats, INSTANCE, &[]).await;
    let started = std::time::Instant::now();
    let mut seq = visits_mark.min(stats_mark);
    while started.elapsed() < Duration::from_secs(60) {
        seq += 1;
        let batch = flood_batch(seq);
        println!("send {seq}");
        visits.apply(0, &batch).await?;
        stats.apply(0, &batch).await?;
        println!("ack {seq}");
    }
    Ok(())
}

/// What the parent read from one child: the highest sequence sent and acknowledged.
#[derive(Debug, Default)]
struct Seen {
    sent: u64,
    acked: u64,
}

impl Seen {
    fn note(&mut self, line: &str) {
        let line = child_line(line);
        if let Some(seq) = line.strip_prefix("send ").and_then(|s| s.parse().ok()) {
            self.sent = self.sent.max(seq);
        }
        if let Some(seq) = line.strip_prefix("ack ").and_then(|s| s.parse().ok()) {
            self.acked = self.acked.max(seq);
        }
    }
}

/// Runs one child until it has acknowledged `KILL_AFTER` batches, kills it (SIGKILL) then
/// or `after_send` after its next `send`, and returns what it said before it died.
fn run_and_kill(dir: &Path, after_send: Option<Duration>) -> Seen {
    let mut child = spawn_child(
        "crash::a_killed_writer_loses_no_acknowledged_batch",
        "flood",
        dir,
    );
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let mut seen = Seen::default();
    let mut acks = 0;
    loop {
        let Some(Ok(line)) = lines.next() else {
            let output = child.wait_with_output().expect("the child ends");
            panic!(
                "the child stopped after {acks} acknowledgements: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        seen.note(&line);
        let line = child_line(&line);
        if line.starts_with("ack ") {
            acks += 1;
        }
        match after_send {
            None if acks >= KILL_AFTER => break,
            Some(pause) if acks >= KILL_AFTER && line.starts_with("send ") => {
                std::thread::sleep(pause);
                break;
            }
            _ => {}
        }
    }
    child.kill().expect("SIGKILL");
    // What the child printed before it died counts too.
    for line in lines.map_while(Result::ok) {
        seen.note(&line);
    }
    child.wait().expect("the child is reaped");
    seen
}

/// Checks one layout after a crash: its mark is between what was acknowledged and what
/// was sent, and the values are exactly those of the batches up to the mark.
async fn check(store: &EmbeddedStore, seen: &Seen) {
    let keys: Vec<String> = (0..KEYS).map(key).collect();
    let mut names: Vec<&str> = keys.iter().map(String::as_str).collect();
    names.push("sum");
    let (values, mark) = read(store, INSTANCE, &names).await;
    let layout = store.layout();
    assert!(
        mark >= seen.acked,
        "{layout}: mark {mark} below the acknowledged {}",
        seen.acked
    );
    assert!(
        mark <= seen.sent,
        "{layout}: mark {mark} above the sent {}",
        seen.sent
    );
    let (sum, counts) = values.split_last().expect("sum read");
    assert!(
        counts.iter().all(|count| *count == mark),
        "{layout}: {counts:?} != {mark}"
    );
    assert_eq!(
        *sum,
        mark * (mark + 1) / 2,
        "{layout}: the sum of 1..={mark}"
    );
    if layout == Layout::Ranked {
        let mut want = vec![("sum".to_owned(), *sum)];
        want.extend(keys.iter().map(|k| (k.clone(), mark)));
        assert_eq!(store.top(0, KEYS + 5).await.expect("top"), want);
        assert_eq!(
            store
                .count_at_least(0, &[1, mark, mark + 1])
                .await
                .expect("count"),
            [KEYS as u64 + 1, KEYS as u64 + 1, 1]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_writer_loses_no_acknowledged_batch() -> TestResult {
    if child_role().as_deref() == Some("flood") {
        return flood(Path::new(&std::env::var(CHILD_DIR)?)).await;
    }
    let dir = tempfile::tempdir()?;
    for (round, after_send) in KILL_POINTS.into_iter().enumerate() {
        let seen = tokio::task::spawn_blocking({
            let dir = dir.path().to_owned();
            move || run_and_kill(&dir, after_send)
        })
        .await?;

        let visits = open(dir.path());

        assert!(
            visits.was_repaired(),
            "round {round}: the crash left a repair"
        );
        check(&visits, &seen).await;
        check(&visits.ranked(), &seen).await;
    }
    Ok(())
}
