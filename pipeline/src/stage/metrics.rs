//! The stream stage's metric names, in one place. Labels are small fixed sets: the model
//! version (`model_version` = `id@v`), the DLQ reason (`error_type`), the partition.

/// Records consumed from `items`.
pub const CONSUMED: &str = "embedstream_stage_consumed_total";
/// Output records acknowledged (`result` = ok) or failed (`result` = error), per version.
pub const PRODUCED: &str = "embedstream_stage_produced_total";
/// Registry requests that failed and are tried again (`op` = decode | encode): the stage
/// pauses on registry trouble instead of dead-lettering.
pub const REGISTRY_RETRIES: &str = "embedstream_stage_registry_retries_total";
/// Group consumers given up because they stayed out of their group, or stopped fetching a
/// partition with records, while the brokers answered (see `membership`); each was replaced
/// by a new consumer and producer.
pub const CONSUMER_REPLACED: &str = "embedstream_stage_consumer_replaced_total";
/// Records dead-lettered, per reason.
pub const DEAD_LETTERS: &str = "embedstream_stage_dead_letters_total";
/// Events per batch.
pub const BATCH_ITEMS: &str = "embedstream_stage_batch_items";
/// From consumed to the start of processing.
pub const QUEUE_SECONDS: &str = "embedstream_stage_queue_seconds";
/// Decoding a batch through the registry.
pub const DECODE_SECONDS: &str = "embedstream_stage_decode_seconds";
/// From submitting a batch's texts to having every version's vectors (tokenize + infer + wait).
pub const EMBED_SECONDS: &str = "embedstream_stage_embed_seconds";
/// From sending a batch's output records to their acknowledgement.
pub const PRODUCE_SECONDS: &str = "embedstream_stage_produce_seconds";
/// Exactly-once: sending a batch's offsets to its transaction and committing it.
pub const COMMIT_SECONDS: &str = "embedstream_stage_transaction_commit_seconds";
/// From the event's `event_time` to the acknowledgement of its last output record.
pub const END_TO_END_SECONDS: &str = "embedstream_stage_end_to_end_seconds";
/// Records behind the partition's end, per partition (from the consumer's statistics).
pub const CONSUMER_LAG: &str = "embedstream_stage_consumer_lag_records";
/// Events in flight (consumed, not yet acknowledged).
pub const IN_FLIGHT: &str = "embedstream_stage_in_flight_events";
/// Active model versions.
pub const ACTIVE_VERSIONS: &str = "embedstream_stage_active_versions";
/// Gauge, by `migration`, `old_version` and `new_version`: 1 while the migration writes both
/// versions (dual-write through cutover), 0 once it is rolled back or decommissioned. The
/// alert rules join write success rates through it.
pub const MIGRATION_DUAL_WRITE: &str = "embedstream_migration_dual_write";
