//! The platform's status page: `GET /status` (one HTML page with a little JS) polls
//! `GET /v1/status`, which gathers, at the moment it is asked:
//!
//! - per model version (control log): its state, and its sink's `/v1/stats` (topic, items,
//!   lag, per-shard hot/main/tombstones/last compaction), or `null` when the sink is down;
//! - every sink instance (slice, replica pool, standby or not, whether queries go to it, health
//!   and lag as the router's checks see them);
//! - the current migration: phase, backfill coverage (from the control log's checkpoints) and
//!   its gate results (cutover gates, and adapter gates with the adapter reads' ratio to the
//!   old model's own); every consumer's read plan (weights, adapters, fused reads);
//! - per consumer: its p95 objective and the latency of its last queries through this router;
//! - drift reports over time, as the platform feeds them in
//!   ([`crate::StatusFeed::record_drift`]).

use std::sync::Arc;

use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use embedstream_schemas::control::ControlState;
use serde::Serialize;

use crate::feed::{DriftPoint, LatencySummary, StageProgress};
use crate::shared::{Shared, version_stats};
use crate::topology::Replica;

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
    /// The consumer's request-level canary, when one runs.
    canary: Option<embedstream_schemas::records::CanarySplit>,
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
    /// Every sink instance: version, slice, pool, role and health as this router sees them.
    replicas: Vec<Replica>,
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
/// The platform at a glance: versions, the migration, consumers' plans and latency, drift.
#[utoipa::path(
    get,
    path = "/v1/status",
    tag = "status",
    responses((status = 200, description = "`{generated_at_ms, serving_default, stage, versions, migration, consumers, drift}`", body = Object))
)]
pub(crate) async fn status_json(State(shared): State<Arc<Shared>>) -> Response {
    let state = shared.plans.borrow().clone();
    let mut stats = version_stats(&shared).await;
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
    let profiles = shared.config.consumers.current();
    let consumers = profiles
        .iter()
        .map(|(name, profile)| {
            let plan = state.plan(name);
            ConsumerStatus {
                name: name.clone(),
                p95_slo_ms: profile.p95_slo_ms,
                plan: state.read_plan_for(name),
                forced: plan.is_some_and(|p| p.forced),
                canary: state.canary(name).cloned(),
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
        replicas: shared.config.backends.snapshot(),
        migration: migration(&state),
        consumers,
        drift: shared.config.status.drift(),
    })
    .into_response()
}

/// `GET /status`.
pub(crate) async fn status_page() -> Html<&'static str> {
    Html(include_str!("status.html"))
}
