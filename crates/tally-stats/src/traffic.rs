//! Synthetic traffic for `POST /test/{n}/`: the URLs a test run requests.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rand::Rng;

/// Segment strings per run.
pub const POOL_SIZE: usize = 3;
/// Length of each segment string.
pub const SEGMENT_LEN: usize = 6;
/// Most segments in a URL.
pub const MAX_SEGMENTS: usize = 6;

/// One test run's random vocabulary: three distinct lowercase strings; every URL of the run
/// is `/api/` plus 1 to 6 of them (with repetition) and a trailing slash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrafficPlan {
    pool: [String; POOL_SIZE],
}

impl TrafficPlan {
    /// A plan with a fresh random pool.
    pub fn random(rng: &mut impl Rng) -> Self {
        let mut pool: [String; POOL_SIZE] = Default::default();
        let mut filled = 0;
        while filled < POOL_SIZE {
            let word: String = (0..SEGMENT_LEN)
                .map(|_| char::from(rng.random_range(b'a'..=b'z')))
                .collect();
            if !pool[..filled].contains(&word) {
                pool[filled] = word;
                filled += 1;
            }
        }
        Self { pool }
    }

    /// The run's segment strings.
    pub fn pool(&self) -> &[String; POOL_SIZE] {
        &self.pool
    }

    /// One random URL of the plan.
    pub fn url(&self, rng: &mut impl Rng) -> String {
        let segments = rng.random_range(1..=MAX_SEGMENTS);
        let mut url = String::from("/api/");
        for _ in 0..segments {
            url.push_str(&self.pool[rng.random_range(0..POOL_SIZE)]);
            url.push('/');
        }
        url
    }

    /// `n` random URLs of the plan and how many of them are distinct.
    pub fn urls(&self, n: usize, rng: &mut impl Rng) -> (Vec<String>, usize) {
        let urls: Vec<String> = (0..n).map(|_| self.url(rng)).collect();
        let distinct = urls.iter().collect::<HashSet<_>>().len();
        (urls, distinct)
    }
}

/// Admits one test run at a time: [`SingleRun::try_start`] fails while a run holds it.
///
/// The slot is owned by the [`RunGuard`], not borrowed, so the run itself (a task of its
/// own) holds it until it really ends, whatever happens to the request that started it.
#[derive(Debug, Default)]
pub struct SingleRun {
    running: Arc<AtomicBool>,
}

/// Holds the run slot; dropping it (the run ended, or was cancelled) frees it.
#[derive(Debug)]
pub struct RunGuard {
    running: Arc<AtomicBool>,
}

impl SingleRun {
    /// Takes the slot, or `None` when a run is going.
    pub fn try_start(&self) -> Option<RunGuard> {
        self.running
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| RunGuard {
                running: Arc::clone(&self.running),
            })
    }

    /// Whether a run holds the slot now.
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        self.running.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn urls_follow_the_spec() {
        let mut rng = StdRng::seed_from_u64(7);
        let plan = TrafficPlan::random(&mut rng);
        let pool: HashSet<&str> = plan.pool().iter().map(String::as_str).collect();
        assert_eq!(pool.len(), 3, "three distinct strings");
        for word in &pool {
            assert_eq!(word.len(), 6);
            assert!(word.bytes().all(|b| b.is_ascii_lowercase()), "{word}");
        }
        let (urls, distinct) = plan.urls(500, &mut rng);
        let mut seen_lengths = HashSet::new();
        for url in &urls {
            let inner = url
                .strip_prefix("/api/")
                .and_then(|u| u.strip_suffix('/'))
                .unwrap();
            let segments: Vec<&str> = inner.split('/').collect();
            assert!((1..=6).contains(&segments.len()), "{url}");
            assert!(segments.iter().all(|s| pool.contains(s)), "{url}");
            seen_lengths.insert(segments.len());
        }
        assert_eq!(
            seen_lengths.len(),
            6,
            "every length from 1 to 6 occurs in 500 draws"
        );
        assert_eq!(distinct, urls.iter().collect::<HashSet<_>>().len());
    }

    #[test]
    fn single_run_admits_one_at_a_time() {
        let run = SingleRun::default();
        let first = run.try_start();
        assert!(first.is_some());
        assert!(
            run.try_start().is_none(),
            "second run refused while the first holds"
        );
        drop(first);
        assert!(run.try_start().is_some(), "free again after the first ends");
    }
}
