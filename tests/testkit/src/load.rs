//! The load client that keeps score: drives HTTP requests over keep-alive connections and
//! records, per key, what the server acknowledged, refused, or left unknown.
//!
//! Exactness checks compare a final count with the score: `counted >= acked` (nothing
//! acknowledged was lost) and `counted <= acked + unknown` (nothing was doubled; a request
//! whose reply was lost may or may not have counted).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::http::{HttpConnection, HttpResponse};

/// Pause of a worker after a failed connection attempt, so a server that is gone (shut
/// down, or not yet up) is not hammered with connects.
const RECONNECT_PAUSE: Duration = Duration::from_millis(20);

/// What one key received.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Score {
    /// Answered 2xx: must be counted exactly once.
    pub acked: u64,
    /// Answered 503: must not be counted.
    pub rejected: u64,
    /// Answered another status: must not be counted.
    pub other: u64,
    /// No answer (the connection failed after the request was written, or timed out): may
    /// or may not be counted.
    pub unknown: u64,
    /// Never sent (no connection could be opened): cannot be counted.
    pub unsent: u64,
}

impl Score {
    fn add(&mut self, other: &Score) {
        self.acked += other.acked;
        self.rejected += other.rejected;
        self.other += other.other;
        self.unknown += other.unknown;
        self.unsent += other.unsent;
    }

    /// Requests the server answered (any status).
    pub fn answered(&self) -> u64 {
        self.acked + self.rejected + self.other
    }
}

/// A load run: which requests, how many at once, and its bounds.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// `http://127.0.0.1:PORT` of the server (loopback only).
    pub base_url: String,
    /// HTTP method of every request (`"POST"`, `"GET"`, ...).
    pub method: &'static str,
    /// Keys the requests spread over, round robin. A key listed several times gets
    /// proportionally more requests (its score adds up under one name).
    pub keys: Vec<String>,
    /// Path of the request for a key (e.g. `/api/v1/counter/visit/{key}`).
    pub path: fn(&str) -> String,
    /// Concurrent connections (one worker each, keep-alive).
    pub concurrency: usize,
    /// Requests in all (an upper bound: the time limit may stop the run earlier).
    pub requests: u64,
    /// The run stops starting requests after this long.
    pub time_limit: Duration,
    /// A request without an answer after this long counts as unknown.
    pub request_timeout: Duration,
    /// Text no response (status line, headers or body) may contain, e.g. a password:
    /// responses that do are counted in [`Scoreboard::forbidden_seen`].
    pub forbidden: Option<String>,
    /// When set, the run also stops starting requests once this flag is true: a test ends
    /// its load when the faults it stages are over, whatever the machine's speed, with
    /// [`LoadSpec::time_limit`] as the bound.
    pub stop: Option<Arc<AtomicBool>>,
}

impl LoadSpec {
    /// `requests` POSTs of the visit endpoint over `keys`, 64 connections, 60 s at most.
    pub fn visits(base_url: &str, keys: Vec<String>, requests: u64) -> Self {
        Self {
            base_url: base_url.to_owned(),
            method: "POST",
            keys,
            path: |key| format!("/api/v1/counter/visit/{key}"),
            concurrency: 64,
            requests,
            time_limit: Duration::from_secs(60),
            request_timeout: Duration::from_secs(10),
            forbidden: None,
            stop: None,
        }
    }
}

/// The outcome of a run.
#[derive(Clone)]
pub struct Scoreboard {
    /// Score per key.
    pub keys: HashMap<String, Score>,
    /// Answers per status code.
    pub statuses: BTreeMap<u16, u64>,
    /// 503 answers without a `Retry-After` header.
    pub unavailable_without_retry_after: u64,
    /// Responses containing [`LoadSpec::forbidden`].
    pub forbidden_seen: u64,
    /// Latency of answered requests, in microseconds.
    pub latency_us: Histogram<u64>,
    /// Wall time of the run.
    pub elapsed: Duration,
}

impl fmt::Debug for Scoreboard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scoreboard")
            .field("totals", &self.totals())
            .field("keys", &self.keys.len())
            .field("statuses", &self.statuses)
            .field("elapsed", &self.elapsed)
            .finish_non_exhaustive()
    }
}

impl Scoreboard {
    /// The scores of all keys added up.
    pub fn totals(&self) -> Score {
        let mut total = Score::default();
        for score in self.keys.values() {
            total.add(score);
        }
        total
    }

    /// Adds `other`'s figures to these, e.g. the loads of two servers sharing the nodes.
    /// The elapsed time becomes the longer of the two.
    pub fn merge(&mut self, other: &Scoreboard) {
        for (key, score) in &other.keys {
            self.keys.entry(key.clone()).or_default().add(score);
        }
        for (status, n) in &other.statuses {
            *self.statuses.entry(*status).or_default() += n;
        }
        self.unavailable_without_retry_after += other.unavailable_without_retry_after;
        self.forbidden_seen += other.forbidden_seen;
        let _ = self.latency_us.add(&other.latency_us);
        self.elapsed = self.elapsed.max(other.elapsed);
    }

    /// The score of one key (zero when it got no request).
    pub fn score(&self, key: &str) -> Score {
        self.keys.get(key).copied().unwrap_or_default()
    }

    /// Checks every key's final count against its score; `counted` gives the count of a
    /// key as the system reports it. Returns every key that breaks the rule.
    pub fn check_counts(&self, counted: impl Fn(&str) -> u64) -> Result<(), String> {
        let mut wrong = Vec::new();
        for (key, score) in &self.keys {
            let got = counted(key);
            if got < score.acked || got > score.acked + score.unknown {
                wrong.push(format!(
                    "{key}: counted {got}, acknowledged {}, unknown outcome {}",
                    score.acked, score.unknown
                ));
            }
        }
        miscounted("keys", wrong)
    }

    /// One line of figures for the end of a test.
    pub fn summary(&self) -> String {
        let t = self.totals();
        let q = |p: f64| Duration::from_micros(self.latency_us.value_at_quantile(p));
        format!(
            "acknowledged {} | 503 {} | other status {} | unknown {} | unsent {} | {:.0} req/s | p50 {:?} p99 {:?} max {:?}",
            t.acked,
            t.rejected,
            t.other,
            t.unknown,
            t.unsent,
            t.answered() as f64 / self.elapsed.as_secs_f64().max(1e-9),
            q(0.50),
            q(0.99),
            Duration::from_micros(self.latency_us.max())
        )
    }
}

/// What one worker saw.
struct Tally {
    keys: HashMap<String, Score>,
    statuses: BTreeMap<u16, u64>,
    unavailable_without_retry_after: u64,
    forbidden_seen: u64,
    latency: Histogram<u64>,
}

impl Tally {
    fn new() -> Self {
        Self {
            keys: HashMap::new(),
            statuses: BTreeMap::new(),
            unavailable_without_retry_after: 0,
            forbidden_seen: 0,
            latency: new_histogram(),
        }
    }

    fn merge(&mut self, other: Tally) {
        for (key, score) in other.keys {
            self.keys.entry(key).or_default().add(&score);
        }
        for (status, n) in other.statuses {
            *self.statuses.entry(status).or_default() += n;
        }
        self.unavailable_without_retry_after += other.unavailable_without_retry_after;
        self.forbidden_seen += other.forbidden_seen;
        let _ = self.latency.add(&other.latency);
    }

    fn answered(&mut self, key: &str, response: &HttpResponse, forbidden: Option<&str>) {
        let score = self.keys.entry(key.to_owned()).or_default();
        match response.status {
            200..=299 => score.acked += 1,
            503 => {
                score.rejected += 1;
                if response.header("retry-after").is_none() {
                    self.unavailable_without_retry_after += 1;
                }
            }
            _ => score.other += 1,
        }
        *self.statuses.entry(response.status).or_default() += 1;
        if let Some(needle) = forbidden
            && contains(response, needle)
        {
            self.forbidden_seen += 1;
        }
    }
}

fn contains(response: &HttpResponse, needle: &str) -> bool {
    let needle = needle.as_bytes();
    let found = |haystack: &[u8]| haystack.windows(needle.len()).any(|w| w == needle);
    needle.is_empty()
        || found(&response.body)
        || response
            .headers
            .iter()
            .any(|(name, value)| found(name.as_bytes()) || found(value.as_bytes()))
}

/// Runs `spec` and returns the score. Only loopback addresses are accepted.
///
/// Each worker keeps one keep-alive connection and opens a new one after a failure; a
/// request written on a connection that then fails or times out is *unknown*, one that
/// could not get a connection is *unsent*.
///
/// # Panics
/// When `spec.base_url` is not on 127.0.0.1 / localhost / ::1, or has no keys.
pub async fn run_load(spec: LoadSpec) -> Scoreboard {
    let address = ["http://127.0.0.1:", "http://localhost:", "http://[::1]:"]
        .iter()
        .find(|prefix| spec.base_url.starts_with(*prefix))
        .map(|_| {
            spec.base_url
                .trim_start_matches("http://")
                .trim_end_matches('/')
        })
        .unwrap_or_else(|| panic!("load runs only against loopback, not {}", spec.base_url))
        .to_owned();
    assert!(!spec.keys.is_empty(), "a load run needs keys");
    let spec = Arc::new(spec);
    let address = Arc::new(address);
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + spec.time_limit;
    let shared = Arc::new(Mutex::new(Tally::new()));
    let workers: Vec<_> = (0..spec.concurrency)
        .map(|_| {
            let (spec, address, next, shared) = (
                Arc::clone(&spec),
                Arc::clone(&address),
                Arc::clone(&next),
                Arc::clone(&shared),
            );
            tokio::spawn(async move {
                let mut tally = Tally::new();
                let mut conn: Option<HttpConnection> = None;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let stopped = spec
                        .stop
                        .as_ref()
                        .is_some_and(|s| s.load(Ordering::Relaxed));
                    if i >= spec.requests || Instant::now() >= deadline || stopped {
                        break;
                    }
                    let key = &spec.keys[(i % spec.keys.len() as u64) as usize];
                    let target = (spec.path)(key);
                    let open = match conn.take() {
                        Some(c) if c.reusable() => Ok(c),
                        _ => {
                            let connect = HttpConnection::connect(&address);
                            match tokio::time::timeout(spec.request_timeout, connect).await {
                                Ok(Ok(c)) => Ok(c),
                                _ => Err(()),
                            }
                        }
                    };
                    let Ok(mut c) = open else {
                        tally.keys.entry(key.clone()).or_default().unsent += 1;
                        tokio::time::sleep(RECONNECT_PAUSE).await;
                        continue;
                    };
                    let sent = Instant::now();
                    let exchange = c.send(spec.method, &target);
                    match tokio::time::timeout(spec.request_timeout, exchange).await {
                        Ok(Ok(response)) => {
                            let _ = tally.latency.record(sent.elapsed().as_micros() as u64);
                            tally.answered(key, &response, spec.forbidden.as_deref());
                            conn = Some(c);
                        }
                        Ok(Err(e)) if e.unsent() => {
                            tally.keys.entry(key.clone()).or_default().unsent += 1;
                        }
                        // Written, then no (whole) answer: the server may have acted on it.
                        Ok(Err(_)) | Err(_) => {
                            tally.keys.entry(key.clone()).or_default().unknown += 1;
                        }
                    }
                }
                shared
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .merge(tally);
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("load worker panicked");
    }
    let elapsed = started.elapsed();
    let tally = std::mem::replace(
        &mut *shared.lock().unwrap_or_else(PoisonError::into_inner),
        Tally::new(),
    );
    Scoreboard {
        keys: tally.keys,
        statuses: tally.statuses,
        unavailable_without_retry_after: tally.unavailable_without_retry_after,
        forbidden_seen: tally.forbidden_seen,
        latency_us: tally.latency,
        elapsed,
    }
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs to 60 s at three significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// `Ok` when `wrong` (one line per miscounted item) is empty; otherwise an error naming how
/// many `what` were miscounted and listing the first 50, sorted.
pub fn miscounted(what: &str, mut wrong: Vec<String>) -> Result<(), String> {
    if wrong.is_empty() {
        return Ok(());
    }
    wrong.sort();
    let shown = wrong.len().min(50);
    Err(format!(
        "{} {what} miscounted (first {shown}):\n{}",
        wrong.len(),
        wrong[..shown].join("\n")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn board(scores: &[(&str, Score)]) -> Scoreboard {
        Scoreboard {
            keys: scores.iter().map(|(k, s)| ((*k).to_owned(), *s)).collect(),
            statuses: BTreeMap::new(),
            unavailable_without_retry_after: 0,
            forbidden_seen: 0,
            latency_us: new_histogram(),
            elapsed: Duration::from_secs(1),
        }
    }

    fn response(status: u16, headers: &[(&str, &str)], body: &str) -> HttpResponse {
        HttpResponse {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn answers_are_scored_by_status_and_searched_for_the_forbidden_text() {
        let mut tally = Tally::new();
        tally.answered("a", &response(200, &[], "ok"), Some("s3cret"));
        tally.answered(
            "a",
            &response(503, &[("retry-after", "1")], ""),
            Some("s3cret"),
        );
        tally.answered("a", &response(503, &[], "no retry-after"), Some("s3cret"));
        tally.answered(
            "b",
            &response(404, &[("x-leak", "s3cret")], ""),
            Some("s3cret"),
        );
        tally.answered(
            "b",
            &response(201, &[], "has s3cret inside"),
            Some("s3cret"),
        );

        let a = tally.keys["a"];
        assert_eq!((a.acked, a.rejected, a.other), (1, 2, 0));
        let b = tally.keys["b"];
        assert_eq!((b.acked, b.rejected, b.other), (1, 0, 1));
        assert_eq!(tally.unavailable_without_retry_after, 1);
        assert_eq!(tally.forbidden_seen, 2);
        assert_eq!(tally.statuses[&503], 2);
    }

    #[test]
    fn counts_between_acked_and_acked_plus_unknown_pass() {
        let b = board(&[(
            "a",
            Score {
                acked: 5,
                unknown: 2,
                ..Score::default()
            },
        )]);
        for counted in 5..=7 {
            assert!(b.check_counts(|_| counted).is_ok(), "{counted}");
        }
    }

    #[test]
    fn lost_and_doubled_counts_are_reported() {
        let b = board(&[
            (
                "lost",
                Score {
                    acked: 5,
                    ..Score::default()
                },
            ),
            (
                "doubled",
                Score {
                    acked: 5,
                    rejected: 3,
                    ..Score::default()
                },
            ),
        ]);
        let err = b
            .check_counts(|k| if k == "lost" { 4 } else { 6 })
            .unwrap_err();
        assert!(err.contains("lost: counted 4, acknowledged 5"), "{err}");
        assert!(err.contains("doubled: counted 6, acknowledged 5"), "{err}");
        assert_eq!(b.totals().rejected, 3);
    }
}
