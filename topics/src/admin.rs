//! Topic administration: the platform's topics with their partitions and configs, created
//! idempotently.
//!
//! `ensure` creates what is missing and accepts what exists, so every process may call it at
//! start. It does not alter existing topics: a topic with fewer partitions than configured is
//! an error for the operator (adding partitions moves keys), and configs of an existing topic
//! are left as they are.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use crate::catalog::ModelRef;
use crate::error::{Error, Result};
use crate::kafka::KafkaConfig;
use crate::names;

/// A topic as the platform wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// Name.
    pub name: String,
    /// Partition count.
    pub partitions: i32,
    /// Replication factor.
    pub replication: i32,
    /// Topic configs, e.g. `cleanup.policy=compact`.
    pub configs: Vec<(String, String)>,
}

impl TopicSpec {
    /// A compacted topic: the latest record per key is kept, a tombstone deletes the key.
    pub fn compacted(name: impl Into<String>, partitions: i32, replication: i32) -> Self {
        Self {
            name: name.into(),
            partitions,
            replication,
            configs: vec![("cleanup.policy".to_owned(), "compact".to_owned())],
        }
    }

    /// A topic whose records expire after `retention`.
    pub fn retained(
        name: impl Into<String>,
        partitions: i32,
        replication: i32,
        retention: Duration,
    ) -> Self {
        Self {
            name: name.into(),
            partitions,
            replication,
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
}

/// How many partitions and replicas the platform's topics get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Partitions of `items` and of every embedding topic (the unit of scale-out).
    pub partitions: i32,
    /// Replication factor of every topic (1 on a single local broker).
    pub replication: i32,
}

impl Default for Layout {
    fn default() -> Self {
        Self {
            partitions: 6,
            replication: 1,
        }
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
    let Layout {
        partitions,
        replication,
    } = layout;
    let mut topics = vec![
        TopicSpec::compacted(names.items(), partitions, replication),
        TopicSpec::retained(names.items_dlq(), 1, replication, 4 * WEEK),
        TopicSpec::compacted(names.control(), 1, replication),
        TopicSpec::retained(names.drift_reports(), 1, replication, 4 * WEEK),
    ];
    topics.extend(
        models
            .iter()
            .map(|m| TopicSpec::compacted(names.embeddings(m), partitions, replication)),
    );
    topics
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
    },
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
    timeout: Duration,
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
        let client = kafka
            .client()
            .set("socket.timeout.ms", timeout.as_millis().to_string())
            .create()
            .map_err(|source| Error::Admin {
                topic: "*".to_owned(),
                source,
            })?;
        Ok(Self { client, timeout })
    }

    /// Creates the topics that do not exist; checks the partition count of those that do.
    pub async fn ensure(&self, specs: &[TopicSpec]) -> Result<Vec<Ensured>> {
        let new_topics: Vec<NewTopic<'_>> = specs
            .iter()
            .map(|s| {
                s.configs.iter().fold(
                    NewTopic::new(
                        &s.name,
                        s.partitions,
                        TopicReplication::Fixed(s.replication),
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
            .map_err(|source| Error::Admin {
                topic: "*".to_owned(),
                source,
            })?;
        let mut out = Vec::with_capacity(specs.len());
        for (spec, result) in specs.iter().zip(results) {
            match result {
                Ok(name) => {
                    tracing::info!(topic = %name, partitions = spec.partitions, "Created topic.");
                    out.push(Ensured::Created(name));
                }
                Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                    let partitions = self.partitions(&name)?.unwrap_or(0);
                    if partitions < spec.partitions {
                        return Err(Error::TooFewPartitions {
                            topic: name,
                            actual: partitions,
                            wanted: spec.partitions,
                        });
                    }
                    out.push(Ensured::Existed { name, partitions });
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

    /// The partition count of `topic`, or `None` if the broker does not know it.
    /// Blocks for at most the client's timeout.
    pub fn partitions(&self, topic: &str) -> Result<Option<i32>> {
        let md = self
            .client
            .inner()
            .fetch_metadata(Some(topic), self.timeout)
            .map_err(|source| Error::Admin {
                topic: topic.to_owned(),
                source,
            })?;
        Ok(md
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map(|t| t.partitions().len() as i32)
            .filter(|n| *n > 0))
    }

    /// Every topic the broker knows, sorted by name. Blocks for at most the client's timeout;
    /// doubles as a health check of the broker.
    pub fn list(&self) -> Result<Vec<TopicInfo>> {
        let md = self
            .client
            .inner()
            .fetch_metadata(None, self.timeout)
            .map_err(|source| Error::Admin {
                topic: "*".to_owned(),
                source,
            })?;
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
