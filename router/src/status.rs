//! The platform's status page: `GET /status` (one HTML page with a little JS) polls
//! `GET /v1/status`, which gathers, at the moment it is asked:
//!
//! - per model version (control log): its state, and its sink's `/v1/stats` (topic, items,
//!   lag, per-shard hot/main/tombstones/last compaction), or `null` when the sink is down;
//! - the current migration: phase, backfill coverage (from the control log's checkpoints) and
//!   its gate results; every consumer's read plan (weights, adapters);
//! - per consumer: its p95 objective and the latency of its last queries through this router;
//! - drift reports over time, as the platform feeds them in ([`StatusFeed::record_drift`]).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use embedstream_schemas::control::ControlState;
use serde::Serialize;

use super::{Shared, fan_out_get};

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

    fn stage(&self) -> Option<StageProgress> {
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

    fn drift(&self) -> Vec<DriftPoint> {
        let drift = self.drift.lock().unwrap_or_else(|e| e.into_inner());
        drift.iter().cloned().collect()
    }

    fn latency(&self, consumer: &str) -> LatencySummary {
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
struct LatencySummary {
    queries: usize,
    p50_ms: Option<f64>,
    p95_ms: Option<f64>,
    p99_ms: Option<f64>,
}

#[derive(Debug, Serialize)]
struct VersionStatus {
    model: String,
    /// `REGISTERED`, `ACTIVE`, `RETIRED`, or `unknown` for a sink the control log does not name.
    state: String,
    dimension: Option<i32>,
    /// The sink's `/v1/stats`; `null` when it did not answer.
    sink: serde_json::Value,
}

#[derive(Debug, Serialize)]
struct ConsumerStatus {
    name: String,
    p95_slo_ms: u64,
    plan: Vec<embedstream_schemas::records::ReadPlanEntry>,
    forced: bool,
    latency: LatencySummary,
}

#[derive(Debug, Serialize)]
struct MigrationStatus {
    migration_id: String,
    from_model: String,
    to_model: String,
    phase: embedstream_schemas::records::MigrationPhase,
    started_at: i64,
    /// Share of `items`' offsets the backfill has done (null before it started).
    coverage: Option<f64>,
    gates: Vec<embedstream_schemas::records::GateResult>,
}

#[derive(Debug, Serialize)]
struct StatusResponse {
    generated_at_ms: i64,
    serving_default: Option<String>,
    /// The embed stage's backlog on `items` (null until the platform has read it).
    stage: Option<StageProgress>,
    versions: Vec<VersionStatus>,
    migration: Option<MigrationStatus>,
    consumers: Vec<ConsumerStatus>,
    drift: Vec<DriftPoint>,
}

fn migration(state: &ControlState) -> Option<MigrationStatus> {
    let m = state.current_migration()?;
    Some(MigrationStatus {
        migration_id: m.migration_id.clone(),
        from_model: m.from_model.clone(),
        to_model: m.to_model.clone(),
        phase: m.phase,
        started_at: m.started_at,
        coverage: state.backfill_coverage(&m.migration_id),
        gates: state
            .gates()
            .filter(|g| g.migration_id == m.migration_id)
            .cloned()
            .collect(),
    })
}

/// `GET /v1/status`.
pub(super) async fn status_json(State(shared): State<Arc<Shared>>) -> Response {
    let state = shared.plans.borrow().clone();
    let mut stats = fan_out_get(&shared, "/v1/stats").await;
    let mut versions: Vec<VersionStatus> = state
        .models()
        .map(|m| {
            let model = format!("{}@{}", m.model_id, m.version);
            VersionStatus {
                sink: stats.remove(&model).unwrap_or(serde_json::Value::Null),
                model,
                state: format!("{:?}", m.state).to_uppercase(),
                dimension: Some(m.dimension),
            }
        })
        .collect();
    versions.extend(stats.into_iter().map(|(model, sink)| VersionStatus {
        model,
        state: "unknown".to_owned(),
        dimension: None,
        sink,
    }));
    let consumers = shared
        .config
        .consumers
        .iter()
        .map(|(name, profile)| {
            let plan = state.plan(name);
            ConsumerStatus {
                name: name.clone(),
                p95_slo_ms: profile.p95_slo_ms,
                plan: state.read_plan_for(name),
                forced: plan.is_some_and(|p| p.forced),
                latency: shared.config.status.latency(name),
            }
        })
        .collect();
    let generated_at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    axum::Json(StatusResponse {
        generated_at_ms,
        serving_default: state.serving_default(),
        stage: shared.config.status.stage(),
        versions,
        migration: migration(&state),
        consumers,
        drift: shared.config.status.drift(),
    })
    .into_response()
}

/// `GET /status`.
pub(super) async fn status_page() -> Html<&'static str> {
    Html(include_str!("status.html"))
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
