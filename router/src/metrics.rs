//! Metric names of the router.

/// Histogram, by consumer: routed query latency, seconds.
pub const QUERY_SECONDS: &str = "embedstream_router_query_seconds";
/// Counter, by consumer and result (`ok`, `partial`: a slice did not answer, `degraded`: a
/// version did not, `bad_request`, `forbidden`, `unavailable`).
pub const QUERIES: &str = "embedstream_router_queries_total";
/// Counter, by version: lists left out of a blend because the sink failed.
pub const BACKEND_ERRORS: &str = "embedstream_router_backend_errors_total";
/// Histogram, by `api` (`openai`, `tei`) and `model_version`: an embeddings request answered,
/// seconds.
pub const EMBED_SECONDS: &str = "embedstream_router_embed_seconds";
/// Counter, by `api` and `result` (`ok`, `bad_request`, `unavailable`): embeddings requests.
pub const EMBED_REQUESTS: &str = "embedstream_router_embed_requests_total";
/// Counter, by consumer: text queries queued for the query log.
pub const QUERY_LOG_QUEUED: &str = "embedstream_router_query_log_queued_total";
/// Counter, by consumer: text queries not logged because the log's queue was full.
pub const QUERY_LOG_DROPPED: &str = "embedstream_router_query_log_dropped_total";
/// Counter, by consumer: answers under a canary queued for the exposures topic.
pub const EXPOSURES_QUEUED: &str = "embedstream_router_exposures_queued_total";
/// Counter, by consumer: exposures not logged because their queue was full.
pub const EXPOSURES_DROPPED: &str = "embedstream_router_exposures_dropped_total";
/// Counter, by consumer and `arm` (`control`, `canary`): answers served under a canary.
pub const CANARY_REQUESTS: &str = "embedstream_router_canary_requests_total";
/// Gauge, by `model_version`, `slice`, `pool` and `replica`: 1 while the router's checks find
/// the sink instance answering.
pub const REPLICA_HEALTHY: &str = "embedstream_router_replica_healthy";
/// Histogram, by `model_version`, `slice`, `pool` and `replica`: one slice's part of a query,
/// seconds (the request to the replica that answered).
pub const SLICE_QUERY_SECONDS: &str = "embedstream_router_slice_query_seconds";
/// Counter, by `model_version`, `slice` and `pool`: a slice's request moved to another replica
/// because one failed.
pub const FAILOVERS: &str = "embedstream_router_failovers_total";
