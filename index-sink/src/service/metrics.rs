//! Metric names of the sink service (the core's are in [`crate::metric_names`]). Labels:
//! `index` (the topic), `consumer` and `model_version` for queries, `partition` for lag,
//! `error_type` and `result` from small fixed sets. Every `*_seconds` histogram gets the
//! binary's shared buckets, but the two freshness histograms get [`FRESHNESS_BUCKETS`].

/// Histogram: one query request (embedding a text query included), by `consumer` and
/// `model_version`, seconds.
pub const QUERY_SECONDS: &str = "embedstream_query_seconds";
/// Histogram, by adapter: time to map a query through a Drift-Adapter, seconds.
pub const ADAPTER_SECONDS: &str = "embedstream_query_adapter_seconds";
/// Counter: query requests by `consumer` (`unknown` for names not configured) and `result`
/// (`ok`, `bad_request`, `error`).
pub const QUERIES_TOTAL: &str = "embedstream_queries_total";
/// Histogram: Kafka record timestamp → searchable in this replica, seconds.
pub const FRESHNESS_SECONDS: &str = "embedstream_sink_freshness_seconds";
/// Histogram: the item event's event time → searchable in this replica (the whole pipeline,
/// embedding included), seconds.
pub const EVENT_FRESHNESS_SECONDS: &str = "embedstream_sink_event_freshness_seconds";
/// The histograms that take [`FRESHNESS_BUCKETS`] instead of the shared `*_seconds` ones.
pub const FRESHNESS_HISTOGRAMS: [&str; 2] = [FRESHNESS_SECONDS, EVENT_FRESHNESS_SECONDS];
/// Buckets (seconds) of the [`FRESHNESS_HISTOGRAMS`]: 25 ms apart
/// from 50 to 150 ms, so a p99 near the 100 ms target is read from a narrow bucket rather
/// than interpolated across the shared buckets' 100–250 ms.
pub const FRESHNESS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];
/// Gauge: records of the partition not yet applied (high watermark − next offset).
pub const CONSUMER_LAG: &str = "embedstream_sink_consumer_lag_records";
/// Counter: records consumed.
pub const CONSUMED_TOTAL: &str = "embedstream_sink_consumed_total";
/// Counter: poison records skipped, by `error_type`.
pub const POISON_TOTAL: &str = "embedstream_sink_poison_records_total";
/// Counter: times a partition was paused to retry a record, by `error_type`
/// (`hot_full`, `registry_unavailable`).
pub const RETRIES_TOTAL: &str = "embedstream_sink_retries_total";
/// Gauge: partitions paused for a retry right now.
pub const BLOCKED_PARTITIONS: &str = "embedstream_sink_blocked_partitions";
/// Gauge: items queries can return.
pub const ITEMS: &str = "embedstream_sink_items";
