//! Metric names of migrations.

/// Counter: upserts the backfill embedded and wrote.
pub const BACKFILL_ITEMS: &str = "embedstream_backfill_items_total";
/// Gauge, per partition of `items`: share of its offsets backfilled.
pub const BACKFILL_PROGRESS_RATIO: &str = "embedstream_backfill_progress_ratio";
/// Gauge: divergent items ÷ sampled, from the last consistency check.
pub const DIVERGENCE_RATIO: &str = "embedstream_migration_divergence_ratio";
/// Counter: items the consistency checker re-queued.
pub const REQUEUED: &str = "embedstream_migration_requeued_total";
