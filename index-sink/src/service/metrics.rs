//! Metric names of the sink service (the core's are in [`crate::metric_names`]). Labels:
//! `index` (the topic), `consumer` and `model_version` for queries, `partition` for lag,
//! `error_type` and `result` from small fixed sets. The binary declares every histogram's
//! buckets; the [`FRESHNESS_HISTOGRAMS`] get finer ones near the freshness target.

/// Histogram: one query request (embedding a text query included), by `consumer` and
/// `model_version`, seconds.
pub const QUERY_SECONDS: &str = "embedstream_sink_query_seconds";
/// Histogram, by adapter: time to map a query through a Drift-Adapter, seconds.
pub const ADAPTER_SECONDS: &str = "embedstream_sink_adapter_seconds";
/// Counter: query requests by `consumer` (`unknown` for names not configured) and `result`
/// (`ok`, `bad_request`, `error`).
pub const QUERIES_TOTAL: &str = "embedstream_sink_queries_total";
/// Histogram: Kafka record timestamp → searchable in this replica, seconds.
pub const FRESHNESS_SECONDS: &str = "embedstream_sink_freshness_seconds";
/// Histogram: the item event's event time → searchable in this replica (the whole pipeline,
/// embedding included), seconds.
pub const EVENT_FRESHNESS_SECONDS: &str = "embedstream_sink_event_freshness_seconds";
/// The histograms that take finer buckets than the shared `*_seconds` ones.
pub const FRESHNESS_HISTOGRAMS: [&str; 2] = [FRESHNESS_SECONDS, EVENT_FRESHNESS_SECONDS];
/// Gauge: records of the partition not yet applied (high watermark − next offset).
pub const CONSUMER_LAG: &str = "embedstream_sink_consumer_lag_records";
/// Counter: records consumed.
pub const CONSUMED_TOTAL: &str = "embedstream_sink_consumed_total";
/// Consumers given up because they stopped fetching a partition with records (see
/// `consumer`), by `index`; each was replaced by a new one.
pub const CONSUMER_REPLACED: &str = "embedstream_sink_consumer_replaced_total";
/// Counter: poison records skipped, by `error_type`.
pub const POISON_TOTAL: &str = "embedstream_sink_poison_records_total";
/// Counter: times a partition was paused to retry a record, by `error_type`
/// (`hot_full`, `registry_unavailable`, `unknown_schema_id`).
pub const RETRIES_TOTAL: &str = "embedstream_sink_retries_total";
/// Gauge: partitions paused for a retry right now.
pub const BLOCKED_PARTITIONS: &str = "embedstream_sink_blocked_partitions";
/// Gauge: items queries can return.
pub const ITEMS: &str = "embedstream_sink_items";
/// Histogram, by `model_version`: one `POST /v1/embed` request answered, seconds.
pub const EMBED_SECONDS: &str = "embedstream_sink_embed_seconds";
/// Counter, by `model_version` and `result` (`ok`, `bad_request`, `error`): embed requests.
pub const EMBED_REQUESTS_TOTAL: &str = "embedstream_sink_embed_requests_total";
/// Counter, by `model_version`: texts embedded for `POST /v1/embed`.
pub const EMBED_TEXTS_TOTAL: &str = "embedstream_sink_embed_texts_total";
