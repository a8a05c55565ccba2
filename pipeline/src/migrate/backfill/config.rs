//! How a backfill runs and what a run did.

use embedstream_topics::KafkaConfig;
use embedstream_topics::names::TopicNames;

use crate::embed::burn_model::Device;
use crate::embed::engine::EngineConfig;
use crate::stage::validate::Limits;

/// How a backfill runs.
#[derive(Debug, Clone)]
pub struct BackfillConfig {
    /// The brokers and the client properties of every Kafka client.
    pub kafka: KafkaConfig,
    /// Schema registry URL.
    pub registry_url: String,
    /// Topic names.
    pub names: TopicNames,
    /// Offsets per chunk (and per checkpoint).
    pub chunk: i64,
    /// Items/s at most; 0 for no limit.
    pub max_rate: f64,
    /// Where the new model runs.
    pub device: Device,
    /// Its engine.
    pub engine: EngineConfig,
    /// Same limit as the stage's: longer texts are skipped (the stage dead-lettered them).
    pub limits: Limits,
    /// Who writes the checkpoints.
    pub by: String,
}

/// What a backfill run did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct BackfillReport {
    /// Upserts embedded and written in this run.
    pub embedded: i64,
    /// Tombstones written.
    pub deleted: i64,
    /// Records skipped (newer event seen, or malformed).
    pub skipped: i64,
    /// Seconds this run took.
    pub seconds: f64,
    /// Whether every partition is done.
    pub complete: bool,
}
