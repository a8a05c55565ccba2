//! Compaction yields the CPU to queries.
//!
//! Running the compaction threads at the lowest OS priority (see `index.rs`) is not enough:
//! the scheduler lets a running background thread finish its slice before a waking query
//! thread gets the core, so queries during a rebuild would be slower at every percentile. So
//! the build cooperates: every query in the process counts itself in [`QueryInFlight`], and
//! the build's distance function (called millions of times, so a check every [`CHECK_EVERY`]
//! calls reacts within microseconds) sleeps while any query is in flight.
//!
//! Progress is guaranteed: a pause lasts at most [`MAX_PAUSE`]; one that hit it is followed by
//! at least [`MIN_RUN`] of work before the next — under queries that never stop, compaction
//! still gets about a fifth of its core and finishes. A pause that ended because the queries
//! did is not followed by a forced run, so under a moderate load the build always steps aside.
//!
//! A forced run is short because a query can wait for all of it: the build thread, once on a
//! core, leaves it when a query thread *wakes* (SCHED_IDLE is preempted then) or at the next
//! scheduler tick, but rayon's idle workers spin on `sched_yield` before they sleep, so a
//! query handed to a spinning worker wakes nothing and waits until the build sleeps again.
//! Yielding the core at every check of a forced run instead would starve the build. The
//! effect on query latency during a rebuild is measured in `loadtest/reports/index.md`.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Distance computations between two looks at the query count.
const CHECK_EVERY: u32 = 256;
/// Longest single pause.
const MAX_PAUSE: Duration = Duration::from_micros(800);
/// Shortest run after a pause that hit [`MAX_PAUSE`]: the most a query waits for the build.
const MIN_RUN: Duration = Duration::from_micros(200);
/// Sleep granularity while paused.
const NAP: Duration = Duration::from_micros(50);

/// Marks a query in flight for as long as it lives.
#[derive(Debug)]
pub(crate) struct QueryInFlight(());

impl QueryInFlight {
    pub(crate) fn enter() -> Self {
        IN_FLIGHT.fetch_add(1, Ordering::Relaxed);
        Self(())
    }
}

impl Drop for QueryInFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
    }
}

thread_local! {
    static CALLS: Cell<u32> = const { Cell::new(0) };
    static RUN_UNTIL: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// `yield_to_queries` for `units` units of work done at once (a batch of distances).
pub(crate) fn yield_units(units: u32) {
    let before = CALLS.with(Cell::get);
    let crossed = before / CHECK_EVERY != before.wrapping_add(units) / CHECK_EVERY;
    CALLS.with(|c| c.set(before.wrapping_add(units)));
    if crossed {
        // Land on a multiple of CHECK_EVERY minus one, so the next call is the check.
        CALLS.with(|c| c.set((c.get() / CHECK_EVERY * CHECK_EVERY).wrapping_sub(1)));
        yield_to_queries();
    }
}

/// Called by background work once per unit (a distance computation): pauses while queries
/// run, within the progress guarantee above. Returns how long it slept.
pub(crate) fn yield_to_queries() -> Duration {
    let calls = CALLS.with(|c| {
        let n = c.get().wrapping_add(1);
        c.set(n);
        n
    });
    if !calls.is_multiple_of(CHECK_EVERY) || IN_FLIGHT.load(Ordering::Relaxed) == 0 {
        return Duration::ZERO;
    }
    let now = Instant::now();
    if RUN_UNTIL.with(Cell::get).is_some_and(|until| now < until) {
        return Duration::ZERO;
    }
    while IN_FLIGHT.load(Ordering::Relaxed) > 0 {
        if now.elapsed() >= MAX_PAUSE {
            // Queries never stopped: run a while regardless.
            RUN_UNTIL.with(|r| r.set(Some(Instant::now() + MIN_RUN)));
            break;
        }
        std::thread::sleep(NAP);
    }
    now.elapsed()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The query count is process-wide: under `cargo test` (threads, not nextest's processes)
    /// one test's query would pause the other's "no query" calls.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn pauses_only_while_a_query_is_in_flight_and_never_for_long() {
        let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        // No query: never pauses.
        let idle: Duration = (0..10 * CHECK_EVERY).map(|_| yield_to_queries()).sum();
        assert_eq!(idle, Duration::ZERO);
        let query = QueryInFlight::enter();
        let started = Instant::now();
        let paused: Duration = (0..CHECK_EVERY).map(|_| yield_to_queries()).sum();
        assert!(paused >= MAX_PAUSE, "paused {paused:?}");
        // Right after a pause that hit the limit it runs for MIN_RUN, even with the query on:
        // every call that starts before the forced run ends returns at once. (A call the test
        // thread was preempted in may start after it; then its pause began after the end.)
        let until = RUN_UNTIL
            .with(Cell::get)
            .expect("a forced run after the pause");
        assert!(until > started && until <= Instant::now() + MIN_RUN);
        while Instant::now() < until {
            let slept = yield_to_queries();
            assert!(
                slept.is_zero() || Instant::now() >= until + slept,
                "paused {slept:?} inside the forced run"
            );
        }
        assert!(started.elapsed() < MAX_PAUSE + MIN_RUN + Duration::from_millis(50));
        drop(query);
        std::thread::sleep(MIN_RUN);
        let after: Duration = (0..10 * CHECK_EVERY).map(|_| yield_to_queries()).sum();
        assert_eq!(after, Duration::ZERO);
    }

    #[test]
    fn a_batch_of_units_looks_at_the_queries_once_it_crosses_a_check() {
        let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let query = QueryInFlight::enter();
        std::thread::sleep(MIN_RUN); // past any forced run left by another test on this thread
        let started = Instant::now();
        for _ in 0..4 {
            yield_units(CHECK_EVERY / 4 + 1);
        }
        assert!(
            started.elapsed() >= MAX_PAUSE,
            "no pause after a check's worth of units"
        );
        drop(query);
    }
}
