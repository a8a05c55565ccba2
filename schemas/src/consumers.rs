//! The consumers of the indexes: who queries, how wide each searches, how many results each
//! may ask for and its latency objective. The sinks, the router and the migration commands
//! all read their consumers from here, so a consumer is named and tuned in one place.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Gauge, by `consumer`: the consumer's p95 latency objective (its profile's `p95_slo_ms`),
/// seconds; the alert rules compare the measured p95 with it.
pub const CONSUMER_SLO_SECONDS: &str = "embedstream_consumer_slo_seconds";

/// How one consumer of the index queries it: each consumer has its own `ef_search`, result
/// bounds and latency budget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerProfile {
    /// HNSW search width in main parts; raised to `k` when smaller.
    pub ef_search: usize,
    /// `k` when a request does not say.
    pub default_k: usize,
    /// Largest `k` a request may ask for (also bounded by the index's `max_k`).
    pub max_k: usize,
    /// Latency objective: p95 of a query, in milliseconds. Exported as
    /// [`CONSUMER_SLO_SECONDS`] for the alert rule that compares it with the measured p95.
    #[serde(default = "default_p95_slo_ms")]
    pub p95_slo_ms: u64,
}

const fn default_p95_slo_ms() -> u64 {
    100
}

/// The built-in consumers, with widths chosen for their recall targets: `search` recall@10
/// ≥ 0.85, `recsys` recall@50 ≥ 0.75, `ads` recall@5 ≥ 0.90 within 30 ms, `dedup`
/// precision@1 ≥ 0.95 in batch (so it can afford a wide search; its objective is 1 s).
pub fn default_consumers() -> BTreeMap<String, ConsumerProfile> {
    let p = |ef_search, default_k, max_k, p95_slo_ms| ConsumerProfile {
        ef_search,
        default_k,
        max_k,
        p95_slo_ms,
    };
    BTreeMap::from([
        ("search".to_owned(), p(100, 10, 100, 50)),
        ("recsys".to_owned(), p(128, 50, 500, 50)),
        ("ads".to_owned(), p(64, 5, 50, 30)),
        ("dedup".to_owned(), p(200, 1, 20, 1000)),
    ])
}

/// The names of the built-in consumers, in order: those a migration gates when the operator
/// names none.
pub fn default_consumer_names() -> Vec<String> {
    default_consumers().into_keys().collect()
}

/// Sets [`CONSUMER_SLO_SECONDS`] for each consumer profile.
pub fn export_slos(consumers: &BTreeMap<String, ConsumerProfile>) {
    for (name, profile) in consumers {
        metrics::gauge!(CONSUMER_SLO_SECONDS, "consumer" => name.clone())
            .set(profile.p95_slo_ms as f64 / 1000.0);
    }
}
