//! A clock that wakes async tasks at instants finer than tokio's timer: tokio rounds every
//! deadline up to a whole millisecond, which would turn the 0.25 ms each way of a 0.5 ms
//! round trip into anything up to 1.25 ms.
//!
//! One thread keeps the waiting tasks in a heap by instant and sleeps on a condition
//! variable until the earliest (a futex wait, precise to the thread's timer slack: the
//! proxy process sets its own to 1 ns before starting any thread, see [`super::main`]),
//! then wakes every task that is due.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

/// The handle: [`Clock::sleep_until`]. Dropping it stops the thread.
#[derive(Debug)]
pub struct Clock {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    /// A `std::sync::Mutex`: held for a heap push or pop, never across an `.await`, and
    /// the clock thread waits on it through the condition variable.
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    waiting: BinaryHeap<Reverse<Waiting>>,
    /// Tells registrations apart, so two tasks due at the same instant both stay in the
    /// heap.
    next_seq: u64,
    stopped: bool,
}

#[derive(Debug)]
struct Waiting {
    at: Instant,
    seq: u64,
    waker: Waker,
}

impl PartialEq for Waiting {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Waiting {}

impl PartialOrd for Waiting {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Waiting {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The clock thread: wakes what is due, then sleeps until the next instant.
    fn run(&self) {
        let mut due = Vec::new();
        let mut state = self.lock();
        loop {
            if state.stopped {
                return;
            }
            let now = Instant::now();
            while state.waiting.peek().is_some_and(|w| w.0.at <= now) {
                due.extend(state.waiting.pop().map(|w| w.0.waker));
            }
            if !due.is_empty() {
                // Woken outside the lock: a woken task may register again at once.
                drop(state);
                due.drain(..).for_each(Waker::wake);
                state = self.lock();
                continue;
            }
            state = match state.waiting.peek().map(|w| w.0.at) {
                Some(at) => {
                    self.changed
                        .wait_timeout(state, at - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
                None => self
                    .changed
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner),
            };
        }
    }
}

impl Clock {
    /// Starts the clock's thread.
    pub fn start() -> std::io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let thread = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("delay-clock".to_owned())
            .spawn(move || thread.run())?;
        Ok(Self { shared })
    }

    /// Completes at `at` (at once when it has passed).
    pub fn sleep_until(&self, at: Instant) -> Sleep<'_> {
        Sleep { clock: self, at }
    }
}

impl Drop for Clock {
    fn drop(&mut self) {
        self.shared.lock().stopped = true;
        self.shared.changed.notify_one();
    }
}

/// [`Clock::sleep_until`]'s future.
#[derive(Debug)]
pub struct Sleep<'a> {
    clock: &'a Clock,
    at: Instant,
}

impl Future for Sleep<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.at {
            return Poll::Ready(());
        }
        let shared = &self.clock.shared;
        let mut state = shared.lock();
        let earliest = state.waiting.peek().is_none_or(|w| self.at < w.0.at);
        let seq = state.next_seq;
        state.next_seq += 1;
        state.waiting.push(Reverse(Waiting {
            at: self.at,
            seq,
            waker: cx.waker().clone(),
        }));
        drop(state);
        // Only a new earliest instant changes how long the clock thread sleeps.
        if earliest {
            shared.changed.notify_one();
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn sleeps_end_at_their_instant_not_at_the_next_millisecond() {
        let clock = Clock::start().unwrap();
        let mut late = Vec::new();
        for _ in 0..20 {
            let at = Instant::now() + Duration::from_micros(250);
            clock.sleep_until(at).await;
            let now = Instant::now();
            assert!(now >= at);
            late.push(now - at);
        }
        late.sort();
        // tokio's timer would make the median about 0.5 ms late; the clock's lateness is
        // the machine's wake-up latency (generous: other builds share these 2 cores).
        assert!(late[10] < Duration::from_micros(400), "{late:?}");
    }

    #[tokio::test]
    async fn tasks_due_in_any_order_each_wake_at_their_own_instant() {
        let clock = Arc::new(Clock::start().unwrap());
        let start = Instant::now();
        let offsets = [3_000u64, 1_000, 2_000, 1_000];
        let tasks: Vec<_> = offsets
            .iter()
            .map(|&us| {
                let clock = Arc::clone(&clock);
                let at = start + Duration::from_micros(us);
                tokio::spawn(async move {
                    clock.sleep_until(at).await;
                    Instant::now() >= at
                })
            })
            .collect();
        for task in tasks {
            assert!(task.await.unwrap());
        }
        assert!(start.elapsed() >= Duration::from_millis(3));
    }
}
