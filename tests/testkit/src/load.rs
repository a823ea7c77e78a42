//! The load client that keeps score: drives HTTP requests over keep-alive connections and
//! records, per key, what the server acknowledged, refused, or left unknown.
//!
//! Exactness checks compare a final count with the score: `counted >= acked` (nothing
//! acknowledged was lost) and `counted <= acked + unknown` (nothing was doubled; a request
//! whose reply was lost may or may not have counted).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// What one key received.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Score {
    /// Answered 2xx: must be counted exactly once.
    pub acked: u64,
    /// Answered 503: must not be counted.
    pub rejected: u64,
    /// Answered another status: must not be counted.
    pub other: u64,
    /// No answer (connection error or timeout): may or may not be counted.
    pub unknown: u64,
}

impl Score {
    fn add(&mut self, other: &Score) {
        self.acked += other.acked;
        self.rejected += other.rejected;
        self.other += other.other;
        self.unknown += other.unknown;
    }
}

/// A load run: which requests, how many at once, and its bounds.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// `http://127.0.0.1:PORT` of the server (loopback only).
    pub base_url: String,
    /// HTTP method of every request.
    pub method: reqwest::Method,
    /// Keys the requests spread over, round robin.
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
}

impl LoadSpec {
    /// `requests` POSTs of the visit endpoint over `keys`, 64 connections, 60 s at most.
    pub fn visits(base_url: &str, keys: Vec<String>, requests: u64) -> Self {
        Self {
            base_url: base_url.to_owned(),
            method: reqwest::Method::POST,
            keys,
            path: |key| format!("/api/v1/counter/visit/{key}"),
            concurrency: 64,
            requests,
            time_limit: Duration::from_secs(60),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// The outcome of a run.
#[derive(Clone)]
pub struct Scoreboard {
    /// Score per key.
    pub keys: HashMap<String, Score>,
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
            .field("elapsed", &self.elapsed)
            .finish()
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
        if wrong.is_empty() {
            Ok(())
        } else {
            wrong.sort();
            Err(format!(
                "{} keys miscounted:\n{}",
                wrong.len(),
                wrong.join("\n")
            ))
        }
    }

    /// One line of figures for the end of a test.
    pub fn summary(&self) -> String {
        let t = self.totals();
        let q = |p: f64| Duration::from_micros(self.latency_us.value_at_quantile(p));
        format!(
            "acknowledged {} | 503 {} | other status {} | unknown {} | {:.0} req/s | p50 {:?} p99 {:?} p99.9 {:?}",
            t.acked,
            t.rejected,
            t.other,
            t.unknown,
            (t.acked + t.rejected + t.other) as f64 / self.elapsed.as_secs_f64().max(1e-9),
            q(0.50),
            q(0.99),
            q(0.999)
        )
    }
}

/// Runs `spec` and returns the score. Only loopback addresses are accepted.
///
/// # Panics
/// When `spec.base_url` is not on 127.0.0.1 / localhost / ::1, or has no keys.
pub async fn run_load(spec: LoadSpec) -> Scoreboard {
    assert!(
        ["http://127.0.0.1:", "http://localhost:", "http://[::1]:"]
            .iter()
            .any(|prefix| spec.base_url.starts_with(prefix)),
        "load runs only against loopback, not {}",
        spec.base_url
    );
    assert!(!spec.keys.is_empty(), "a load run needs keys");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(spec.concurrency)
        .timeout(spec.request_timeout)
        .build()
        .expect("reqwest client");
    let spec = Arc::new(spec);
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + spec.time_limit;
    let shared = Arc::new(Mutex::new((
        HashMap::<String, Score>::new(),
        new_histogram(),
    )));
    let workers: Vec<_> = (0..spec.concurrency)
        .map(|_| {
            let (spec, next, client, shared) = (
                Arc::clone(&spec),
                Arc::clone(&next),
                client.clone(),
                Arc::clone(&shared),
            );
            tokio::spawn(async move {
                let mut local: HashMap<String, Score> = HashMap::new();
                let mut latency = new_histogram();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= spec.requests || Instant::now() >= deadline {
                        break;
                    }
                    let key = &spec.keys[(i % spec.keys.len() as u64) as usize];
                    let url = format!("{}{}", spec.base_url, (spec.path)(key));
                    let sent = Instant::now();
                    let outcome = client.request(spec.method.clone(), &url).send().await;
                    let score = local.entry(key.clone()).or_default();
                    match outcome {
                        Ok(response) => {
                            let status = response.status();
                            // Read the body so the connection goes back to the pool.
                            let body = response.bytes().await;
                            let _ = latency.record(sent.elapsed().as_micros() as u64);
                            match (status.as_u16(), body.is_ok()) {
                                (200..=299, true) => score.acked += 1,
                                (200..=299, false) => score.unknown += 1,
                                (503, _) => score.rejected += 1,
                                _ => score.other += 1,
                            }
                        }
                        Err(_) => score.unknown += 1,
                    }
                }
                let mut guard = shared.lock().unwrap_or_else(PoisonError::into_inner);
                for (key, score) in local {
                    guard.0.entry(key).or_default().add(&score);
                }
                let _ = guard.1.add(&latency);
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("load worker panicked");
    }
    let elapsed = started.elapsed();
    let mut guard = shared.lock().unwrap_or_else(PoisonError::into_inner);
    Scoreboard {
        keys: std::mem::take(&mut guard.0),
        latency_us: guard.1.clone(),
        elapsed,
    }
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs to 60 s at three significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn board(scores: &[(&str, Score)]) -> Scoreboard {
        Scoreboard {
            keys: scores.iter().map(|(k, s)| ((*k).to_owned(), *s)).collect(),
            latency_us: new_histogram(),
            elapsed: Duration::from_secs(1),
        }
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
