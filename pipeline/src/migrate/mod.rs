//! Model migrations over the control log: the operator commands (`embedstream migrate …`, and
//! the same actions over the admin HTTP API), the backfill, the gate's evaluation.
//!
//! Every command reads the folded control state, decides in [`plan`] (pure, unit-tested) which
//! records to write, and appends them; nothing else holds migration state, so any process can
//! be restarted at any moment and every process sees the same phase, plans and gates.

pub mod admin;
pub mod backfill;
pub mod check;
pub mod metrics;
pub mod plan;

use embedstream_schemas::control::ControlState;
use embedstream_schemas::records::{CanarySplit, ControlRecord, GateResult};
use embedstream_topics::ModelRef;
use serde::Serialize;

pub use self::plan::Refused;
use embedstream_topics::time::now_ms;

use crate::control::{ControlLog, model_version_record};
use crate::error::{Error, Result};

/// Applies migration commands through the control log.
#[derive(Debug, Clone)]
pub struct Migrator {
    log: ControlLog,
    consumers: Vec<String>,
    by: String,
}

/// What a command did: the records it wrote, for the operator to read.
#[derive(Debug, Clone, Serialize)]
pub struct Applied {
    /// The keys written, in order.
    pub keys: Vec<String>,
}

impl Migrator {
    /// Commands on `log` for `consumers`, recorded as made by `by`.
    pub fn new(log: ControlLog, consumers: Vec<String>, by: &str) -> Self {
        Self {
            log,
            consumers,
            by: by.to_owned(),
        }
    }

    /// The control log.
    pub fn log(&self) -> &ControlLog {
        &self.log
    }

    /// The consumers migrated.
    pub fn consumers(&self) -> &[String] {
        &self.consumers
    }

    async fn write(&self, records: Vec<ControlRecord>) -> Result<Applied> {
        let mut keys = Vec::new();
        for r in &records {
            self.log.publish(r).await?;
            keys.extend(embedstream_schemas::control::key_of(r));
        }
        Ok(Applied { keys })
    }

    fn decided(
        &self,
        f: impl FnOnce(
            &ControlState,
            &[String],
            &str,
            i64,
        ) -> std::result::Result<Vec<ControlRecord>, Refused>,
    ) -> Result<Vec<ControlRecord>> {
        let state = self.log.state();
        f(&state, &self.consumers, &self.by, now_ms()).map_err(|refused| Error::Refused { refused })
    }

    /// `migrate start`.
    pub async fn start(&self, from: &ModelRef, to: &ModelRef) -> Result<Applied> {
        let spec = crate::control::catalog(&self.log.state()).lookup(to)?;
        let to_record =
            model_version_record(&spec, embedstream_schemas::records::ModelState::Registered);
        let records = self.decided(|s, _, by, now| plan::start(s, from, to, to_record, by, now))?;
        self.write(records).await
    }

    /// `migrate weight`.
    ///
    /// An `adapter` must be an artifact in the adapters folder (`$EMBEDSTREAM_ADAPTERS`, else
    /// `$EMBEDSTREAM_HOME/adapters`) that loads, passes its checks and has the two models'
    /// dimensions; the sinks load it from their own folder when a query names it. Reads through
    /// it are refused unless the consumer's adapter gate passed for it (see [`plan::weight`]).
    pub async fn weight(
        &self,
        consumer: &str,
        new_weight: f64,
        adapter: Option<&plan::AdapterRead>,
        force: bool,
    ) -> Result<Applied> {
        if let Some(a) = adapter {
            embedstream_adapter::train::check_deployable(
                &crate::models::adapters_dir(),
                &a.name,
                &crate::control::catalog(&self.log.state()),
            )?;
        }
        let records = self.decided(|s, known, by, now| {
            plan::weight(s, consumer, new_weight, adapter, force, known, by, now)
        })?;
        self.write(records).await
    }

    /// `migrate canary`.
    pub async fn canary(&self, consumer: &str, share: f64) -> Result<Applied> {
        let records =
            self.decided(|s, known, by, now| plan::canary(s, consumer, share, known, by, now))?;
        self.write(records).await
    }

    /// `migrate cutover`.
    pub async fn cutover(&self, consumer: Option<&str>, force: bool) -> Result<Applied> {
        let records =
            self.decided(|s, known, by, now| plan::cutover(s, consumer, force, known, by, now))?;
        self.write(records).await
    }

    /// `migrate rollback`.
    pub async fn rollback(&self, consumer: Option<&str>) -> Result<Applied> {
        let records =
            self.decided(|s, known, by, now| plan::rollback(s, consumer, known, by, now))?;
        self.write(records).await
    }

    /// `migrate decommission`.
    pub async fn decommission(&self) -> Result<Applied> {
        let records = self.decided(plan::decommission)?;
        self.write(records).await
    }

    /// Records gate results (computed by the eval harness).
    pub async fn record_gates(&self, gates: Vec<GateResult>) -> Result<Applied> {
        let (by, now) = (self.by.clone(), now_ms());
        let records = gates
            .into_iter()
            .map(|g| plan::gate_record(g, &by, now))
            .collect();
        self.write(records).await
    }

    /// The migration's state as `migrate status` shows it.
    pub fn status(&self) -> Status {
        Status::of(&self.log.state(), &self.consumers)
    }
}

/// `migrate status`, as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The migration in progress, if any.
    pub migration: Option<MigrationStatus>,
    /// Each consumer's read plan.
    pub consumers: Vec<ConsumerStatus>,
    /// Writes per version of the migration (filled in where Kafka and the stage are reachable).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<VersionWrites>,
}

/// What was written to one version's topic.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VersionWrites {
    /// `id@version`.
    pub model: String,
    /// Offsets written to its topic (sum of the partitions' end offsets: records, and the
    /// commit markers of transactions), when the broker answered.
    pub topic_records: Option<i64>,
    /// Records the stage wrote and had acknowledged, from its `/metrics`, when it answered.
    pub stage_ok: Option<u64>,
    /// Records the stage failed to write.
    pub stage_failed: Option<u64>,
}

impl VersionWrites {
    /// The stage's counts of `model` in a Prometheus text exposition.
    pub fn stage_counts(exposition: &str, model: &str) -> (Option<u64>, Option<u64>) {
        let label = format!("model_version=\"{model}\"");
        let mut ok = None;
        let mut failed = None;
        for line in exposition.lines() {
            if !line.starts_with(crate::stage::metrics::PRODUCED) || !line.contains(&label) {
                continue;
            }
            let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
                continue;
            };
            let slot = if line.contains("result=\"ok\"") {
                &mut ok
            } else {
                &mut failed
            };
            *slot = Some(slot.unwrap_or(0) + value as u64);
        }
        (ok, failed.or(ok.map(|_| 0)))
    }
}

/// The migration part of [`Status`].
#[derive(Debug, Clone, Serialize)]
pub struct MigrationStatus {
    /// Id.
    pub id: String,
    /// From version.
    pub from: String,
    /// To version.
    pub to: String,
    /// Phase, e.g. `DUAL_WRITE`.
    pub phase: String,
    /// Start, ms since the epoch.
    pub started_at: i64,
    /// Backfill checkpoints by partition.
    pub backfill: Vec<PartitionStatus>,
    /// Share of `items` offsets backfilled, over every partition.
    pub backfill_fraction: f64,
    /// Upserts embedded by the backfill.
    pub backfill_embedded: i64,
    /// Seconds left at the backfill's average rate so far, when it can be told.
    pub backfill_eta_s: Option<f64>,
}

/// One partition of the backfill.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionStatus {
    /// Partition of `items`.
    pub partition: i32,
    /// Offsets `[start, end)` to backfill.
    pub start: i64,
    /// End (exclusive).
    pub end: i64,
    /// Offsets at or after this are done.
    pub next_end: i64,
    /// Share done.
    pub fraction: f64,
}

/// One consumer in [`Status`].
#[derive(Debug, Clone, Serialize)]
pub struct ConsumerStatus {
    /// Name.
    pub consumer: String,
    /// `model=weight` pairs.
    pub plan: Vec<(String, f64)>,
    /// Whether a failed gate was overridden.
    pub forced: bool,
    /// The gate result, if evaluated.
    pub gate: Option<GateResult>,
    /// Its request-level canary, when one runs.
    pub canary: Option<CanarySplit>,
}

impl Status {
    /// The status in `state` for `consumers`.
    pub fn of(state: &ControlState, consumers: &[String]) -> Self {
        let migration = state.current_migration().map(|m| {
            let parts = state.backfill(&m.migration_id);
            let fraction = state.backfill_coverage(&m.migration_id).unwrap_or(0.0);
            let embedded = parts.iter().map(|b| b.embedded).sum();
            let elapsed_s = (now_ms() - m.started_at).max(1) as f64 / 1000.0;
            let eta =
                (fraction > 0.0 && fraction < 1.0).then(|| elapsed_s * (1.0 - fraction) / fraction);
            MigrationStatus {
                id: m.migration_id.clone(),
                from: m.from_model.clone(),
                to: m.to_model.clone(),
                phase: format!("{:?}", m.phase),
                started_at: m.started_at,
                backfill: parts
                    .iter()
                    .map(|b| PartitionStatus {
                        partition: b.partition,
                        start: b.start,
                        end: b.end,
                        next_end: b.next_end,
                        fraction: b.fraction(),
                    })
                    .collect(),
                backfill_fraction: fraction,
                backfill_embedded: embedded,
                backfill_eta_s: eta,
            }
        });
        let consumers = consumers
            .iter()
            .map(|c| ConsumerStatus {
                consumer: c.clone(),
                plan: plan::effective_plan(state, c)
                    .into_iter()
                    .map(|e| (e.model, e.weight))
                    .collect(),
                forced: state.plan(c).is_some_and(|p| p.forced),
                gate: state
                    .current_migration()
                    .and_then(|m| state.gate(&m.migration_id, c))
                    .cloned(),
                canary: state.canary(c).cloned(),
            })
            .collect();
        Self {
            migration,
            consumers,
            versions: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::VersionWrites;

    #[test]
    fn the_stage_counts_are_read_per_version() {
        let exposition = "\
# TYPE embedstream_stage_produced_total counter
embedstream_stage_produced_total{model_version=\"minilm-l6-v2@1\",result=\"ok\"} 120
embedstream_stage_produced_total{model_version=\"mpnet-base-v2@1\",result=\"ok\"} 40
embedstream_stage_produced_total{model_version=\"mpnet-base-v2@1\",result=\"error\"} 2
embedstream_stage_consumed_total 160
";
        assert_eq!(
            VersionWrites::stage_counts(exposition, "minilm-l6-v2@1"),
            (Some(120), Some(0))
        );
        assert_eq!(
            VersionWrites::stage_counts(exposition, "mpnet-base-v2@1"),
            (Some(40), Some(2))
        );
        assert_eq!(VersionWrites::stage_counts(exposition, "x@1"), (None, None));
    }
}
