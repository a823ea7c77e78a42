//! The dashboard's per-second figures: a fixed ring of [`WINDOW`] one-second slots of
//! request counts by [`RouteClass`], visits counted and 503 answers.
//!
//! # Invariants
//!
//! - Memory is constant: [`WINDOW`] slots, allocated once. Slot `s % WINDOW` holds second
//!   `s` (counted from the ring's origin) and is stamped `s + 1` (0: never used).
//! - Recording is an atomic load of the stamp and one `fetch_add`; only the first
//!   recording of a new second also swaps the stamp and zeroes the slot. A recording that
//!   lands between another thread's swap and its zeroing is lost: the figures are for a
//!   person watching a chart, and an exact count would need a lock on every request.
//! - A reader takes only slots whose stamp names the second it asks about, so a slot not
//!   yet reused since 300 s ago reads as zero, not as old traffic.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Seconds of history the ring keeps.
pub(crate) const WINDOW: usize = 300;

/// What a request was, for the dashboard's chart: set per route when the route table is
/// built (see [`crate::routes`]), so the middleware classifies a request without looking at
/// its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RouteClass {
    /// `POST` of a visit, one page or many.
    Visit,
    /// The page-count route (`GET` reads; any other method there is [`RouteClass::Other`]).
    Count,
    /// The simulated API, `/api/{anything}`, counted by the request statistics.
    Api,
    /// Everything else: status, metrics, the dashboard itself, 404s.
    Other,
}

/// Indexes of [`Slot::counts`].
const VISIT: usize = 0;
const COUNT: usize = 1;
const API: usize = 2;
const OTHER: usize = 3;
const VISITS_COUNTED: usize = 4;
const REFUSED: usize = 5;
const FIGURES: usize = 6;

/// One second of figures. Aligned so two slots never share a cache line.
#[repr(align(64))]
#[derive(Debug, Default)]
struct Slot {
    /// The second held, plus one; 0 when never used.
    stamp: AtomicU64,
    /// Requests by class, visits counted, 503 answers (the indexes above).
    counts: [AtomicU64; FIGURES],
}

/// Per-second figures of the last [`WINDOW`] seconds. Shared by every worker.
#[derive(Debug)]
pub(crate) struct Figures {
    origin: Instant,
    slots: Box<[Slot]>,
}

/// [`WINDOW`] seconds of figures, oldest first, ending with the last whole second.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Series {
    /// Requests of each class per second.
    pub(crate) visit: Vec<u64>,
    pub(crate) count: Vec<u64>,
    pub(crate) api: Vec<u64>,
    pub(crate) other: Vec<u64>,
    /// Visits counted per second (a bulk request counts each of its visits).
    pub(crate) visits: Vec<u64>,
    /// 503 answers per second.
    pub(crate) refused: Vec<u64>,
}

impl Figures {
    /// An empty ring whose second 0 starts at `origin`.
    pub(crate) fn new(origin: Instant) -> Self {
        Self {
            origin,
            slots: (0..WINDOW).map(|_| Slot::default()).collect(),
        }
    }

    /// Counts one request of `class` that started `at` and was answered `status`.
    pub(crate) fn record_request(&self, at: Instant, class: RouteClass, status: u16) {
        let Some(slot) = self.slot(at) else { return };
        let index = match class {
            RouteClass::Visit => VISIT,
            RouteClass::Count => COUNT,
            RouteClass::Api => API,
            RouteClass::Other => OTHER,
        };
        slot.counts[index].fetch_add(1, Ordering::Relaxed);
        if status == 503 {
            slot.counts[REFUSED].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts `visits` visits recorded `at`.
    pub(crate) fn record_visits(&self, at: Instant, visits: u64) {
        if let Some(slot) = self.slot(at) {
            slot.counts[VISITS_COUNTED].fetch_add(visits, Ordering::Relaxed);
        }
    }

    /// The slot of the second `at` falls in, claimed for it; `None` for a moment the ring
    /// has already moved [`WINDOW`] seconds past.
    fn slot(&self, at: Instant) -> Option<&Slot> {
        let second = at.saturating_duration_since(self.origin).as_secs();
        let slot = &self.slots[(second % WINDOW as u64) as usize];
        let stamp = second + 1;
        let seen = slot.stamp.load(Ordering::Acquire);
        if seen == stamp {
            return Some(slot);
        }
        if seen > stamp {
            return None;
        }
        if slot
            .stamp
            .compare_exchange(seen, stamp, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            for count in &slot.counts {
                count.store(0, Ordering::Relaxed);
            }
        }
        Some(slot)
    }

    /// The [`WINDOW`] whole seconds before the one `now` falls in, oldest first.
    pub(crate) fn series(&self, now: Instant) -> Series {
        let current = now.saturating_duration_since(self.origin).as_secs();
        let mut series = Series::default();
        for column in [
            &mut series.visit,
            &mut series.count,
            &mut series.api,
            &mut series.other,
            &mut series.visits,
            &mut series.refused,
        ] {
            column.reserve_exact(WINDOW);
        }
        for back in (1..=WINDOW as u64).rev() {
            let counts = current
                .checked_sub(back)
                .and_then(|second| {
                    let slot = &self.slots[(second % WINDOW as u64) as usize];
                    (slot.stamp.load(Ordering::Acquire) == second + 1).then_some(slot)
                })
                .map_or([0; FIGURES], |slot| {
                    std::array::from_fn(|i| slot.counts[i].load(Ordering::Relaxed))
                });
            series.visit.push(counts[VISIT]);
            series.count.push(counts[COUNT]);
            series.api.push(counts[API]);
            series.other.push(counts[OTHER]);
            series.visits.push(counts[VISITS_COUNTED]);
            series.refused.push(counts[REFUSED]);
        }
        series
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(origin: Instant, seconds: f64) -> Instant {
        origin + Duration::from_secs_f64(seconds)
    }

    #[test]
    fn requests_land_in_their_second_by_class_and_the_current_second_is_not_shown() {
        let origin = Instant::now();
        let figures = Figures::new(origin);

        figures.record_request(at(origin, 10.2), RouteClass::Visit, 200);
        figures.record_request(at(origin, 10.9), RouteClass::Visit, 503);
        figures.record_request(at(origin, 11.0), RouteClass::Api, 200);
        figures.record_request(at(origin, 12.5), RouteClass::Other, 404);
        figures.record_visits(at(origin, 10.5), 7);
        let series = figures.series(at(origin, 12.7));

        assert_eq!(series.visit.len(), WINDOW);
        assert_eq!(series.refused.len(), WINDOW);
        // The last entry is second 11, the one before second 10.
        assert_eq!(series.visit[WINDOW - 2], 2);
        assert_eq!(series.visits[WINDOW - 2], 7);
        assert_eq!(series.refused[WINDOW - 2], 1);
        assert_eq!(series.api[WINDOW - 1], 1);
        assert_eq!(series.other.iter().sum::<u64>(), 0, "second 12 is not over");
        assert_eq!(series.visit.iter().sum::<u64>(), 2);
    }

    #[test]
    fn a_slot_reused_after_the_window_starts_from_zero_and_old_seconds_read_as_zero() {
        let origin = Instant::now();
        let figures = Figures::new(origin);
        figures.record_request(at(origin, 5.0), RouteClass::Count, 200);

        figures.record_request(at(origin, 5.0 + WINDOW as f64), RouteClass::Count, 200);
        // A request that started before the slot was taken by a later second is dropped.
        figures.record_request(at(origin, 5.5), RouteClass::Count, 200);
        let series = figures.series(at(origin, 6.0 + WINDOW as f64));

        assert_eq!(series.count[WINDOW - 1], 1);
        assert_eq!(series.count.iter().sum::<u64>(), 1);
        let long_after = figures.series(at(origin, 10_000.0));
        assert_eq!(long_after.count.iter().sum::<u64>(), 0);
    }

    #[test]
    fn counts_from_many_threads_add_up_within_a_second() {
        let origin = Instant::now();
        let figures = Figures::new(origin);
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for _ in 0..1_000 {
                        figures.record_request(at(origin, 3.5), RouteClass::Visit, 200);
                    }
                });
            }
        });

        // The slot was claimed before the threads raced on it only if one of them won
        // the swap first; a count lost at the claim is allowed, more than a few is not.
        let counted = figures.series(at(origin, 4.0)).visit[WINDOW - 1];
        assert!((7_990..=8_000).contains(&counted), "{counted}");
    }
}
