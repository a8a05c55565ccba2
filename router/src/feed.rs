//! What the status page shows beside what it asks for at the moment: drift reports and the
//! embed stage's backlog as the platform feeds them in, and the latency of recent queries
//! through this router.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// Drift points kept (the newest), across models.
const DRIFT_POINTS: usize = 2_000;
/// Query latencies kept per consumer (the newest), for the page's percentiles.
const LATENCY_SAMPLES: usize = 2_048;

/// One drift report, as the page plots it.
#[derive(Debug, Clone, Serialize)]
pub struct DriftPoint {
    /// Report time, ms since the epoch.
    pub at_ms: i64,
    /// `id@version` scored.
    pub model: String,
    /// `self` or `cross_version`.
    pub kind: String,
    /// For cross-version reports, the other version.
    pub compared: Option<String>,
    /// Mean cosine (to the reference, or old vs new).
    pub mean_cosine: f64,
    /// Minimum cosine.
    pub min_cosine: f64,
    /// The report's verdict (`ok`, `alert: …`, `incremental`, …).
    pub verdict: String,
}

/// The embed stage's progress on `items`, as its consumer group's committed offsets say.
#[derive(Debug, Clone, Serialize)]
pub struct StageProgress {
    /// The items topic.
    pub topic: String,
    /// The stage's consumer group.
    pub group: String,
    /// Item events not yet embedded (high watermark − committed, summed over partitions).
    pub lag: i64,
    /// Item events ever written (high watermarks summed).
    pub events: i64,
    /// When this was read, ms since the epoch.
    pub at_ms: i64,
}

/// What the status page shows that the router cannot ask for on demand: drift reports and the
/// stage's progress (fed by the platform), and recent query latencies (recorded by the router
/// itself).
#[derive(Debug, Default)]
pub struct StatusFeed {
    drift: Mutex<VecDeque<DriftPoint>>,
    latency: Mutex<BTreeMap<String, VecDeque<f64>>>,
    stage: Mutex<Option<StageProgress>>,
}

impl StatusFeed {
    /// An empty feed.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Adds a drift report (the oldest is dropped past [`DRIFT_POINTS`]).
    pub fn record_drift(&self, point: DriftPoint) {
        let mut drift = self.drift.lock().unwrap_or_else(|e| e.into_inner());
        if drift.len() == DRIFT_POINTS {
            drift.pop_front();
        }
        drift.push_back(point);
    }

    /// Forgets the drift history (before it is read again from the beginning).
    pub fn clear_drift(&self) {
        self.drift.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Replaces the stage's progress.
    pub fn record_stage(&self, progress: StageProgress) {
        *self.stage.lock().unwrap_or_else(|e| e.into_inner()) = Some(progress);
    }

    pub(crate) fn stage(&self) -> Option<StageProgress> {
        self.stage.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(super) fn record_latency(&self, consumer: &str, seconds: f64) {
        let mut latency = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        let samples = latency.entry(consumer.to_owned()).or_default();
        if samples.len() == LATENCY_SAMPLES {
            samples.pop_front();
        }
        samples.push_back(seconds);
    }

    pub(crate) fn drift(&self) -> Vec<DriftPoint> {
        let drift = self.drift.lock().unwrap_or_else(|e| e.into_inner());
        drift.iter().cloned().collect()
    }

    pub(crate) fn latency(&self, consumer: &str) -> LatencySummary {
        let latency = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        let mut samples: Vec<f64> = latency
            .get(consumer)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        samples.sort_by(f64::total_cmp);
        let at = |q: f64| {
            (!samples.is_empty()).then(|| {
                let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len());
                samples[i - 1] * 1000.0
            })
        };
        LatencySummary {
            queries: samples.len(),
            p50_ms: at(0.50),
            p95_ms: at(0.95),
            p99_ms: at(0.99),
        }
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct LatencySummary {
    queries: usize,
    p50_ms: Option<f64>,
    p95_ms: Option<f64>,
    p99_ms: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_percentiles_come_from_the_newest_samples() {
        let feed = StatusFeed::new();
        assert_eq!(feed.latency("search").queries, 0);
        assert!(feed.latency("search").p95_ms.is_none());
        for i in 1..=100 {
            feed.record_latency("search", f64::from(i) / 1000.0);
        }
        let l = feed.latency("search");
        assert_eq!(l.queries, 100);
        assert_eq!(l.p50_ms, Some(50.0));
        assert_eq!(l.p95_ms, Some(95.0));
        assert_eq!(l.p99_ms, Some(99.0));
        // Past the window, the oldest samples go first.
        for _ in 0..LATENCY_SAMPLES {
            feed.record_latency("search", 0.002);
        }
        let l = feed.latency("search");
        assert_eq!(l.queries, LATENCY_SAMPLES);
        assert_eq!(l.p99_ms, Some(2.0));
    }

    #[test]
    fn drift_keeps_the_newest_points() {
        let feed = StatusFeed::new();
        for i in 0..(DRIFT_POINTS + 5) {
            feed.record_drift(DriftPoint {
                at_ms: i as i64,
                model: "m@1".to_owned(),
                kind: "self".to_owned(),
                compared: None,
                mean_cosine: 1.0,
                min_cosine: 1.0,
                verdict: "ok".to_owned(),
            });
        }
        let drift = feed.drift();
        assert_eq!(drift.len(), DRIFT_POINTS);
        assert_eq!(drift[0].at_ms, 5);
    }
}
