//! The backfill's rate limit: at most `max_rate` items per second over the run.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// Items/s at most, averaged over the run.
pub(super) struct Throttle {
    max_rate: f64,
    started: Instant,
    done: f64,
}

impl Throttle {
    pub(super) fn new(max_rate: f64) -> Self {
        Self {
            max_rate,
            started: Instant::now(),
            done: 0.0,
        }
    }

    pub(super) async fn wait(&mut self, items: i64, shutdown: &CancellationToken) {
        self.done += items as f64;
        if self.max_rate <= 0.0 {
            return;
        }
        let due = Duration::from_secs_f64(self.done / self.max_rate);
        if let Some(wait) = due.checked_sub(self.started.elapsed()) {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}
