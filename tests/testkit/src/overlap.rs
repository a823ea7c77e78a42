//! Running a request while another is still under way, proven rather than assumed: for
//! checks such as "a second `/test/` run while one is going gets 429", which a sleep
//! cannot make reliable (on a fast machine the first run is over before the sleep ends).

use std::future::Future;
use std::time::Duration;

/// How long the first request may take to show progress before the check gives up.
const PROGRESS_LIMIT: Duration = Duration::from_secs(60);
/// Pause between two looks at the progress figure.
const PROGRESS_POLL: Duration = Duration::from_millis(1);

/// What [`second_while_first_runs`] saw in the try that counted.
#[derive(Debug)]
pub struct Overlap<A, B> {
    /// The first request's answer; it came after the second's.
    pub first: A,
    /// The second request's answer, given while the first was still under way.
    pub second: B,
    /// How far the progress figure had risen when the second request was sent.
    pub progress_seen: f64,
    /// Tries it took (a try counts only when the first outlasted the second).
    pub tries: u32,
}

/// Starts `first()`; waits until `progress()` rises above the value it had before, which
/// proves the first is under way; then runs `second()` to its answer while the first goes
/// on. The try counts when the first had not answered by the time the second had: a first
/// that ended before proves nothing about "while it runs", so the whole try is made again,
/// `tries` times at most. Both answers of every try are awaited.
///
/// # Panics
///
/// When no try counted, or when the first showed no progress within 60 s and had not
/// ended.
pub async fn second_while_first_runs<A, B, FA, FB>(
    tries: u32,
    mut first: impl FnMut() -> FA,
    mut second: impl FnMut() -> FB,
    mut progress: impl AsyncFnMut() -> f64,
) -> Overlap<A, B>
where
    FA: Future<Output = A>,
    FB: Future<Output = B>,
{
    for attempt in 1..=tries {
        let before = progress().await;
        let mut running = std::pin::pin!(first());
        let waited = tokio::time::timeout(PROGRESS_LIMIT, async {
            loop {
                tokio::select! {
                    biased;
                    answer = &mut running => break Err(answer),
                    now = progress() => if now > before {
                        break Ok(now - before);
                    },
                }
                tokio::time::sleep(PROGRESS_POLL).await;
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!("the first request showed no progress within {PROGRESS_LIMIT:?}")
        });
        let Ok(progress_seen) = waited else {
            // Over before it was seen running.
            continue;
        };
        let mut refused = std::pin::pin!(second());
        let outlasted = tokio::select! {
            biased;
            answer = &mut refused => Some(answer),
            _ = &mut running => None,
        };
        match outlasted {
            Some(second) => {
                let first = running.await;
                return Overlap {
                    first,
                    second,
                    progress_seen,
                    tries: attempt,
                };
            }
            None => {
                // The first ended first: let the second finish, and try again.
                refused.await;
            }
        }
    }
    panic!("in {tries} tries the first request never outlasted the second")
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_second_runs_while_the_first_is_under_way() {
        let progress = AtomicU64::new(0);
        let overlap = second_while_first_runs(
            3,
            || async {
                progress.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(10)).await;
                "first"
            },
            || async { "second" },
            async || progress.load(Ordering::SeqCst) as f64,
        )
        .await;
        assert_eq!((overlap.first, overlap.second), ("first", "second"));
        assert_eq!((overlap.tries, overlap.progress_seen), (1, 1.0));
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "never outlasted")]
    async fn a_first_that_always_ends_first_proves_nothing() {
        let progress = AtomicU64::new(0);
        second_while_first_runs(
            3,
            || async {
                progress.fetch_add(1, Ordering::SeqCst);
            },
            || async { tokio::time::sleep(Duration::from_secs(1)).await },
            async || progress.load(Ordering::SeqCst) as f64,
        )
        .await;
    }
}
