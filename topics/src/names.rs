//! Topic names. All names the platform writes are built here, so that a rename is one change.

use crate::catalog::{EMBEDDINGS_PREFIX, ModelRef};

/// Upstream item events (compacted, keyed by item id).
pub const ITEMS: &str = "items";
/// Records the embed stage could not process, with the reason.
pub const ITEMS_DLQ: &str = "items.dlq";
/// The control log: model catalog, migration phases, read plans, gate results (compacted).
pub const CONTROL: &str = "embedstream.control";
/// Drift reports of the canary scorer.
pub const DRIFT_REPORTS: &str = "drift.reports";
/// Text queries the router answered, for training adapters on queries like the consumers'
/// (retained for a week; consumers and requests can opt out).
pub const QUERIES: &str = "queries";
pub const INSTANCES: &str = "embedstream.instances";
/// The answers the router served under a request-level canary, with their arm and items
/// (keyed by request id).
pub const EXPOSURES: &str = "exposures";
/// What users did with served answers (clicks, conversions, dwell), produced by downstream
/// applications (keyed by request id).
pub const FEEDBACK: &str = "feedback";
/// The schema registry's storage (compacted, one partition), named as Confluent's.
pub const SCHEMAS: &str = "_schemas";

/// The versioned embedding topic of one model version: `embeddings.<model>.v<N>`.
pub fn embeddings_topic(model: &ModelRef) -> String {
    model.topic()
}

/// The model version an embedding topic belongs to, or `None` if `topic` is not one.
pub fn parse_embeddings_topic(topic: &str) -> Option<ModelRef> {
    let rest = topic.strip_prefix(EMBEDDINGS_PREFIX)?;
    let (id, version) = rest.rsplit_once(".v")?;
    let version: u32 = version.parse().ok()?;
    ModelRef::new(id, version).ok()
}

/// The platform's topic names under an optional prefix (`<prefix>.items`, …), so that several
/// platforms (environments, tenants, or tests running side by side) share one cluster.
/// The empty prefix gives the plain names above.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicNames {
    prefix: String,
}

impl TopicNames {
    /// Names under `prefix` (none when empty).
    pub fn new(prefix: &str) -> Self {
        let prefix = prefix.trim_end_matches('.');
        Self {
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}.")
            },
        }
    }

    fn name(&self, base: &str) -> String {
        format!("{}{base}", self.prefix)
    }

    /// Upstream item events.
    pub fn items(&self) -> String {
        self.name(ITEMS)
    }

    /// The embed stage's dead letters.
    pub fn items_dlq(&self) -> String {
        self.name(ITEMS_DLQ)
    }

    /// The control log.
    pub fn control(&self) -> String {
        self.name(CONTROL)
    }

    /// Drift reports.
    pub fn drift_reports(&self) -> String {
        self.name(DRIFT_REPORTS)
    }

    /// The router's query log.
    pub fn queries(&self) -> String {
        self.name(QUERIES)
    }

    /// Where sink instances announce themselves (compacted, keyed by instance id).
    pub fn instances(&self) -> String {
        self.name(INSTANCES)
    }

    /// Served answers under a canary.
    pub fn exposures(&self) -> String {
        self.name(EXPOSURES)
    }

    /// Downstream feedback on served answers.
    pub fn feedback(&self) -> String {
        self.name(FEEDBACK)
    }

    /// The embedding topic of one model version.
    pub fn embeddings(&self, model: &ModelRef) -> String {
        self.name(&embeddings_topic(model))
    }
}

/// Whether `name` is a legal Kafka topic name (the broker's own rule: 1–249 characters of
/// `[a-zA-Z0-9._-]`, and not `.` or `..`).
pub fn is_legal_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embeddings_topic_round_trips() {
        let m = ModelRef::new("minilm-l6-v2", 1).unwrap();
        let t = embeddings_topic(&m);
        assert_eq!(t, "embeddings.minilm-l6-v2.v1");
        assert_eq!(parse_embeddings_topic(&t), Some(m));
        let m2 = ModelRef::new("mpnet-base-v2", 12).unwrap();
        assert_eq!(parse_embeddings_topic(&embeddings_topic(&m2)), Some(m2));
    }

    #[test]
    fn non_embedding_topics_are_rejected() {
        for t in [
            ITEMS,
            ITEMS_DLQ,
            CONTROL,
            "embeddings.",
            "embeddings.x.vx",
            "embeddings.x",
        ] {
            assert_eq!(parse_embeddings_topic(t), None, "{t}");
        }
    }

    #[test]
    fn prefixed_names() {
        let m = ModelRef::new("minilm-l6-v2", 1).unwrap();
        assert_eq!(TopicNames::default().items(), ITEMS);
        assert_eq!(TopicNames::new("").embeddings(&m), embeddings_topic(&m));
        let t = TopicNames::new("staging.");
        assert_eq!(t.items(), "staging.items");
        assert_eq!(t.items_dlq(), "staging.items.dlq");
        assert_eq!(t.control(), "staging.embedstream.control");
        assert_eq!(t.exposures(), "staging.exposures");
        assert_eq!(t.feedback(), "staging.feedback");
        assert_eq!(t.embeddings(&m), "staging.embeddings.minilm-l6-v2.v1");
        assert_eq!(TopicNames::new("staging"), t);
    }

    #[test]
    fn legal_names() {
        assert!(is_legal_topic_name("embeddings.minilm-l6-v2.v1"));
        assert!(is_legal_topic_name(SCHEMAS));
        assert!(!is_legal_topic_name("a b"));
        assert!(!is_legal_topic_name(".."));
        assert!(!is_legal_topic_name(&"x".repeat(250)));
    }
}
