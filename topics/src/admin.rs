//! Topic administration: the platform's topics with their partitions and configs, created
//! idempotently.
//!
//! `ensure` creates what is missing and checks what exists, so every process may call it at
//! start. Every topic it creates, whoever calls it, takes its replication factor and
//! `min.insync.replicas` from the one setting in [`KafkaConfig::replication`]. It does not
//! alter existing topics: a topic with fewer partitions than configured is an error for the
//! operator (adding partitions moves keys); any other difference from the spec (a config such
//! as `cleanup.policy` or `delete.retention.ms`, more partitions, another replication factor)
//! is reported in [`Ensured::Existed`] for the caller to show, never silently accepted.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::error::KafkaError;
use rdkafka::metadata::Metadata;
use rdkafka::producer::{BaseProducer, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;

use crate::catalog::ModelRef;
use crate::error::{Error, Result};
use crate::kafka::{KafkaConfig, Replication};
use crate::names;

/// A topic as the platform wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// Name.
    pub name: String,
    /// Partition count.
    pub partitions: i32,
    /// Topic configs, e.g. `cleanup.policy=compact`.
    pub configs: Vec<(String, String)>,
}

/// How long Kafka keeps a tombstone on a compacted topic after the cleaner has compacted the
/// segment holding it (`delete.retention.ms`; Kafka's default, set explicitly so `ensure` can
/// check it). A reader that last read the topic longer ago than this may have missed a delete
/// and must replay the topic from its beginning.
pub const TOMBSTONE_RETENTION: Duration = Duration::from_secs(24 * 3600);

impl TopicSpec {
    /// A compacted topic: the latest record per key is kept, a tombstone deletes the key and
    /// is itself kept for [`TOMBSTONE_RETENTION`].
    pub fn compacted(name: impl Into<String>, partitions: i32) -> Self {
        Self {
            name: name.into(),
            partitions,
            configs: vec![
                ("cleanup.policy".to_owned(), "compact".to_owned()),
                (
                    "delete.retention.ms".to_owned(),
                    TOMBSTONE_RETENTION.as_millis().to_string(),
                ),
            ],
        }
    }

    /// A topic whose records expire after `retention`.
    pub fn retained(name: impl Into<String>, partitions: i32, retention: Duration) -> Self {
        Self {
            name: name.into(),
            partitions,
            configs: vec![
                ("cleanup.policy".to_owned(), "delete".to_owned()),
                ("retention.ms".to_owned(), retention.as_millis().to_string()),
            ],
        }
    }

    /// The value of one config, if set.
    pub fn config(&self, key: &str) -> Option<&str> {
        self.configs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Sets one config (replacing its value if set).
    #[must_use]
    pub fn with_config(mut self, key: &str, value: impl Into<String>) -> Self {
        self.configs.retain(|(k, _)| k != key);
        self.configs.push((key.to_owned(), value.into()));
        self
    }
}

/// How many partitions the platform's topics get (replication comes from the cluster's
/// setting, [`KafkaConfig::replication`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Partitions of `items` and of every embedding topic (the unit of scale-out).
    pub partitions: i32,
}

impl Default for Layout {
    fn default() -> Self {
        Self { partitions: 6 }
    }
}

const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);

/// Every topic the platform uses, for the given model versions.
///
/// `items` and the embedding topics are compacted and keyed by item id, so a replay from the
/// beginning yields the current state of every item (backfill and index recovery rely on it).
/// The control log and `_schemas` are compacted with one partition, so their order is total.
pub fn platform_topics(layout: Layout, models: &[ModelRef]) -> Vec<TopicSpec> {
    named_platform_topics(&names::TopicNames::default(), layout, models)
}

/// [`platform_topics`] under a prefix.
pub fn named_platform_topics(
    names: &names::TopicNames,
    layout: Layout,
    models: &[ModelRef],
) -> Vec<TopicSpec> {
    let Layout { partitions } = layout;
    let mut topics = vec![
        TopicSpec::compacted(names.items(), partitions),
        TopicSpec::retained(names.items_dlq(), 1, 4 * WEEK),
        TopicSpec::compacted(names.control(), 1),
        TopicSpec::retained(names.drift_reports(), 1, 4 * WEEK),
        query_log_topic(names),
        instances_topic(names),
    ];
    topics.extend(canary_topics(names, partitions));
    topics.extend(
        models
            .iter()
            .map(|m| TopicSpec::compacted(names.embeddings(m), partitions)),
    );
    topics
}

/// The router's query log: user text, so kept a week only (a retention the operator can
/// shorten on the topic; `ensure` reports a difference rather than undoing it).
pub fn query_log_topic(names: &names::TopicNames) -> TopicSpec {
    TopicSpec::retained(names.queries(), 1, WEEK)
}

/// A canary's exposures and their feedback: keyed by request id with the same partition
/// count, so an exposure and its feedback land in partitions of the same number (a join can
/// read them partition by partition). They name users (unit ids), so they are kept two weeks.
pub fn canary_topics(names: &names::TopicNames, partitions: i32) -> [TopicSpec; 2] {
    [
        TopicSpec::retained(names.exposures(), partitions, 2 * WEEK),
        TopicSpec::retained(names.feedback(), partitions, 2 * WEEK),
    ]
}

/// Sink instances' announcements: one record per instance, the newest kept.
pub fn instances_topic(names: &names::TopicNames) -> TopicSpec {
    TopicSpec::compacted(names.instances(), 1)
}

/// What `ensure` found or did for one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ensured {
    /// The topic was created.
    Created(String),
    /// The topic existed with at least the wanted partitions.
    Existed {
        /// Name.
        name: String,
        /// Its partition count.
        partitions: i32,
        /// How it differs from the spec, one entry per difference (empty when it matches).
        differences: Vec<Difference>,
    },
}

/// One way an existing topic differs from the platform's spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// The topic config (`cleanup.policy`, …), or `partitions` / `replication.factor`.
    pub setting: String,
    /// What the spec asks for.
    pub wanted: String,
    /// What the broker has (`None`: not set on the topic, the broker's default applies).
    pub actual: Option<String>,
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.actual {
            Some(actual) => write!(
                f,
                "{} is {actual}, the platform wants {}",
                self.setting, self.wanted
            ),
            None => write!(
                f,
                "{} is not set (broker default), the platform wants {}",
                self.setting, self.wanted
            ),
        }
    }
}

/// A topic as the broker describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    /// Name.
    pub name: String,
    /// Partition count.
    pub partitions: i32,
}

/// A topic admin client.
pub struct Admin {
    client: AdminClient<DefaultClientContext>,
    /// Metadata requests go through a plain client whose events (logs, connection errors) are
    /// served here, so an error can say why the broker did not answer; an admin client's are
    /// never served.
    probe: BaseProducer<ConnectionErrors>,
    timeout: Duration,
    replication: Replication,
}

/// The last error a client met on its connections (librdkafka logs each one itself).
#[derive(Default)]
struct ConnectionErrors {
    last: Mutex<Option<(RDKafkaErrorCode, String)>>,
}

impl ClientContext for ConnectionErrors {
    fn error(&self, error: KafkaError, reason: &str) {
        if let Some(code) = error.rdkafka_error_code() {
            *self.last.lock().unwrap_or_else(PoisonError::into_inner) =
                Some((code, reason.to_owned()));
        }
    }
}

impl ProducerContext for ConnectionErrors {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &DeliveryResult<'_>, _: Self::DeliveryOpaque) {}
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Admin {
    /// A client for the brokers of `kafka`.
    pub fn new(kafka: &KafkaConfig, timeout: Duration) -> Result<Self> {
        let created = |source| Error::Admin {
            topic: "*".to_owned(),
            source,
            reason: None,
        };
        let mut builder = kafka.client();
        builder.set("socket.timeout.ms", timeout.as_millis().to_string());
        let client = builder.create().map_err(created)?;
        let probe = builder
            .create_with_context(ConnectionErrors::default())
            .map_err(created)?;
        Ok(Self {
            client,
            probe,
            timeout,
            replication: kafka.replication(),
        })
    }

    /// The last error the client met on its connections, if any.
    fn reason(&self) -> Option<(RDKafkaErrorCode, String)> {
        // Serves the probe's pending events (its error callbacks), one per call.
        for _ in 0..64 {
            self.probe.poll(Duration::ZERO);
        }
        self.probe
            .context()
            .last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn error(&self, topic: &str, source: KafkaError) -> Error {
        Error::Admin {
            topic: topic.to_owned(),
            source,
            reason: self.reason().map(|(_, r)| r.into_boxed_str()),
        }
    }

    /// Metadata of `topic` (all topics when `None`), asked in short rounds until the timeout,
    /// so that a failed authentication or an untrusted certificate ends the wait at once.
    fn metadata(&self, topic: Option<&str>) -> Result<Metadata> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let round = self
                .timeout
                .min(Duration::from_secs(1))
                .min(deadline.saturating_duration_since(Instant::now()));
            match self.probe.client().fetch_metadata(topic, round) {
                Ok(md) => return Ok(md),
                Err(source) => {
                    let fatal = self
                        .reason()
                        .is_some_and(|(code, _)| crate::kafka::is_fatal(code));
                    if fatal || Instant::now() >= deadline {
                        return Err(self.error(topic.unwrap_or("*"), source));
                    }
                }
            }
        }
    }

    /// Creates the topics that do not exist with the cluster's replication setting; checks
    /// those that do against their spec (see the module docs).
    pub async fn ensure(&self, specs: &[TopicSpec]) -> Result<Vec<Ensured>> {
        let specs: Vec<TopicSpec> = specs.iter().map(|s| self.full_spec(s)).collect();
        let specs = specs.as_slice();
        let new_topics: Vec<NewTopic<'_>> = specs
            .iter()
            .map(|s| {
                s.configs.iter().fold(
                    NewTopic::new(
                        &s.name,
                        s.partitions,
                        // -1: the broker's default.replication.factor.
                        TopicReplication::Fixed(self.replication.factor.unwrap_or(-1)),
                    ),
                    |t, (k, v)| t.set(k, v),
                )
            })
            .collect();
        let opts = AdminOptions::new().operation_timeout(Some(self.timeout));
        let results = self
            .client
            .create_topics(&new_topics, &opts)
            .await
            .map_err(|source| self.error("*", source))?;
        let mut out = Vec::with_capacity(specs.len());
        for (spec, result) in specs.iter().zip(results) {
            match result {
                Ok(name) => {
                    tracing::info!(topic = %name, partitions = spec.partitions, "Created topic.");
                    out.push(Ensured::Created(name));
                }
                Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                    let (partitions, replicas) = self.settled_layout(&name).await?;
                    if partitions < spec.partitions {
                        return Err(Error::TooFewPartitions {
                            topic: name,
                            actual: partitions,
                            wanted: spec.partitions,
                        });
                    }
                    let mut differences = Vec::new();
                    if partitions > spec.partitions {
                        differences.push(Difference {
                            setting: "partitions".to_owned(),
                            wanted: spec.partitions.to_string(),
                            actual: Some(partitions.to_string()),
                        });
                    }
                    if let Some(factor) = self.replication.factor
                        && replicas != factor
                    {
                        differences.push(Difference {
                            setting: "replication.factor".to_owned(),
                            wanted: factor.to_string(),
                            actual: Some(replicas.to_string()),
                        });
                    }
                    differences.extend(self.config_differences(spec).await?);
                    for d in &differences {
                        tracing::warn!(topic = %name, difference = %d, "An existing topic differs from the platform's spec; it is left as it is.");
                    }
                    out.push(Ensured::Existed {
                        name,
                        partitions,
                        differences,
                    });
                }
                Err((name, code)) => {
                    return Err(Error::TopicRefused {
                        operation: "create",
                        topic: name,
                        code,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Deletes `topics` (each with its records, for good); a topic that does not exist is not
    /// an error.
    pub async fn delete(&self, topics: &[&str]) -> Result<()> {
        let opts = AdminOptions::new().operation_timeout(Some(self.timeout));
        let results = self
            .client
            .delete_topics(topics, &opts)
            .await
            .map_err(|source| self.error(&topics.join(","), source))?;
        for result in results {
            match result {
                Ok(name) => tracing::info!(topic = %name, "Deleted topic."),
                Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
                Err((name, code)) => {
                    return Err(Error::TopicRefused {
                        operation: "delete",
                        topic: name,
                        code,
                    });
                }
            }
        }
        Ok(())
    }

    /// The spec with the cluster's `min.insync.replicas`, where the setting gives one.
    fn full_spec(&self, spec: &TopicSpec) -> TopicSpec {
        match self.replication.min_insync {
            Some(n) => spec
                .clone()
                .with_config("min.insync.replicas", n.to_string()),
            None => spec.clone(),
        }
    }

    /// The configs of `spec` whose value on the broker differs (or is not set on the topic).
    async fn config_differences(&self, spec: &TopicSpec) -> Result<Vec<Difference>> {
        let actual = self.topic_configs(&spec.name).await?;
        Ok(spec
            .configs
            .iter()
            // A broker default equal to the wanted value is a match.
            .filter(|(key, wanted)| actual.get(key) != Some(wanted))
            .map(|(key, wanted)| Difference {
                setting: key.clone(),
                wanted: wanted.clone(),
                actual: actual.get(key).cloned(),
            })
            .collect())
    }

    /// Every config of `topic` as the broker applies it (set on the topic, or the broker's
    /// default), by name.
    pub async fn topic_configs(&self, topic: &str) -> Result<BTreeMap<String, String>> {
        let opts = AdminOptions::new().request_timeout(Some(self.timeout));
        let described = self
            .client
            .describe_configs(&[ResourceSpecifier::Topic(topic)], &opts)
            .await
            .map_err(|source| self.error(topic, source))?;
        match described.into_iter().next() {
            Some(Ok(resource)) => Ok(resource
                .entries
                .into_iter()
                .filter_map(|e| e.value.map(|v| (e.name, v)))
                .collect()),
            Some(Err(code)) => Err(Error::TopicRefused {
                operation: "describe",
                topic: topic.to_owned(),
                code,
            }),
            None => Ok(BTreeMap::new()),
        }
    }

    /// The partition count of `topic`, or `None` if the broker does not know it.
    /// Blocks for at most the client's timeout.
    pub fn partitions(&self, topic: &str) -> Result<Option<i32>> {
        Ok(self.layout(topic)?.map(|(partitions, _)| partitions))
    }

    /// The partition count of `topic` and its replication factor (the fewest replicas of any
    /// partition), or `None` if the broker does not know it.
    /// The layout of a topic the broker says exists: a topic another client just created can
    /// be missing from the metadata for a moment, so it is asked again (within the client's
    /// timeout) before it counts as having no partitions.
    async fn settled_layout(&self, topic: &str) -> Result<(i32, i32)> {
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Some(layout) = self.layout(topic)? {
                return Ok(layout);
            }
            if Instant::now() >= deadline {
                return Ok((0, 0));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn layout(&self, topic: &str) -> Result<Option<(i32, i32)>> {
        let md = self.metadata(Some(topic))?;
        Ok(md
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .filter(|t| !t.partitions().is_empty())
            .map(|t| {
                let replicas = t
                    .partitions()
                    .iter()
                    .map(|p| p.replicas().len() as i32)
                    .min()
                    .unwrap_or(0);
                (t.partitions().len() as i32, replicas)
            }))
    }

    /// Every topic the broker knows, sorted by name. Blocks for at most the client's timeout;
    /// doubles as a health check of the broker.
    pub fn list(&self) -> Result<Vec<TopicInfo>> {
        let md = self.metadata(None)?;
        let mut topics: Vec<TopicInfo> = md
            .topics()
            .iter()
            .map(|t| TopicInfo {
                name: t.name().to_owned(),
                partitions: t.partitions().len() as i32,
            })
            .collect();
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(topics)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_topics_are_compacted_where_the_design_says() {
        let models = [ModelRef::new("minilm-l6-v2", 1).unwrap()];
        let topics = platform_topics(Layout::default(), &models);
        let get = |n: &str| topics.iter().find(|t| t.name == n).unwrap();
        assert_eq!(get("items").config("cleanup.policy"), Some("compact"));
        assert_eq!(get("items").partitions, 6);
        assert_eq!(
            get("embeddings.minilm-l6-v2.v1").config("cleanup.policy"),
            Some("compact")
        );
        assert_eq!(get("embedstream.control").partitions, 1);
        assert_eq!(
            get("embedstream.control").config("cleanup.policy"),
            Some("compact")
        );
        assert_eq!(get("items.dlq").config("cleanup.policy"), Some("delete"));
        assert!(get("drift.reports").config("retention.ms").is_some());
    }
}
