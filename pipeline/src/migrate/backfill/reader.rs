//! Reading `items` for the backfill: its consumers (manual assignment, no group) and the
//! partitions to walk.

use std::time::Duration;

use embedstream_topics::KafkaConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};

use crate::error::{Error, Result};

/// A consumer with no group membership, for metadata and range reads.
pub(super) fn new_reader(kafka: &KafkaConfig, name: &str) -> Result<StreamConsumer> {
    kafka
        .client()
        .set(
            "group.id",
            format!("embedstream-{name}-{}", uuid::Uuid::new_v4()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .map_err(Error::kafka(kafka))
}

/// The partitions of `topic`, sorted; an error when it has none.
pub(crate) fn partitions(
    reader: &StreamConsumer,
    topic: &str,
    kafka: &KafkaConfig,
) -> Result<Vec<i32>> {
    let metadata = reader
        .fetch_metadata(Some(topic), Duration::from_secs(30))
        .map_err(Error::kafka(kafka))?;
    let mut partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    partitions.sort_unstable();
    if partitions.is_empty() {
        return Err(Error::MissingTopic {
            topic: topic.to_owned(),
        });
    }
    Ok(partitions)
}
