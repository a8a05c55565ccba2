//! Noticing a Kafka consumer that stopped fetching.
//!
//! librdkafka clients that saw a partition without a leader (a broker fenced after a pause, say)
//! can stop fetching it for good while reporting nothing wrong; their own statistics then show
//! a stale end, so lag looks like zero. The rule used by the platform's consumers: a partition
//! is stalled when its fetch position has not moved, with nothing waiting in its fetch queue
//! (so not held back by a slow reader), across the client's statistics reports for a while;
//! it is stuck when, in addition, a separate client sees records past that position
//! ([`records_past`]). The consumer is then replaced by its owner.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::statistics::Topic;

use crate::KafkaConfig;

/// Per assigned partition of one topic: its fetch position and since when it has not moved
/// with an empty fetch queue, from the client's statistics reports.
#[derive(Debug, Default)]
pub struct FetchStalls {
    partitions: Mutex<HashMap<i32, (i64, Option<Instant>)>>,
}

impl FetchStalls {
    /// Takes the topic's part of a statistics report.
    pub fn observe(&self, topic: &Topic) {
        let mut partitions = self
            .partitions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        let mut next = HashMap::new();
        for p in topic.partitions.values() {
            if p.partition < 0 || !p.desired {
                continue;
            }
            let since = match partitions.get(&p.partition) {
                Some(&(at, since)) if at == p.next_offset && p.fetchq_cnt == 0 => {
                    Some(since.unwrap_or(now))
                }
                _ => None,
            };
            next.insert(p.partition, (p.next_offset, since));
        }
        *partitions = next;
    }

    /// Assigned partitions stalled for at least `after`: (partition, position).
    pub fn stalled(&self, after: Duration) -> Vec<(i32, i64)> {
        let partitions = self
            .partitions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out: Vec<(i32, i64)> = partitions
            .iter()
            .filter(|(_, (_, since))| since.is_some_and(|s| s.elapsed() >= after))
            .map(|(&p, &(at, _))| (p, at))
            .collect();
        out.sort_unstable();
        out
    }
}

/// A fresh client, apart from the consumer being judged.
fn probe(kafka: &KafkaConfig) -> Option<BaseConsumer> {
    kafka
        .client()
        .create()
        .map_err(|e| tracing::debug!(error = %e, "Probe client not created."))
        .ok()
}

/// Whether a fresh client reads `topic`'s metadata with every partition led: the brokers
/// answer, so a consumer that stays stuck is not waiting out an outage.
pub fn leaders_known(kafka: &KafkaConfig, topic: &str) -> bool {
    let Some(probe) = probe(kafka) else {
        return false;
    };
    match probe.fetch_metadata(Some(topic), Duration::from_secs(5)) {
        Ok(m) => m.topics().iter().any(|t| {
            t.error().is_none()
                && !t.partitions().is_empty()
                && t.partitions().iter().all(|p| p.leader() >= 0)
        }),
        Err(e) => {
            tracing::debug!(error = %e, "Probe metadata request failed.");
            false
        }
    }
}

/// The first of `stalled` (partition, position) with records past its position, as a fresh
/// client sees the partition's end: (partition, position, end). None when there is none, or
/// when the brokers do not answer.
pub fn records_past(
    kafka: &KafkaConfig,
    topic: &str,
    stalled: &[(i32, i64)],
) -> Option<(i32, i64, i64)> {
    if stalled.is_empty() {
        return None;
    }
    let probe = probe(kafka)?;
    for &(partition, at) in stalled {
        match probe.fetch_watermarks(topic, partition, Duration::from_secs(5)) {
            Ok((low, high)) if high > at.max(low) => return Some((partition, at, high)),
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, partition, "Probe watermarks not read."),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use rdkafka::statistics::Partition;

    use super::*;

    fn topic(partitions: &[(i32, i64, i64)]) -> Topic {
        Topic {
            partitions: partitions
                .iter()
                .map(|&(partition, next_offset, fetchq_cnt)| {
                    let p = Partition {
                        partition,
                        desired: true,
                        next_offset,
                        fetchq_cnt,
                        ..Partition::default()
                    };
                    (partition, p)
                })
                .collect(),
            ..Topic::default()
        }
    }

    #[test]
    fn a_partition_stalls_only_while_its_position_stays_with_an_empty_queue() {
        let s = FetchStalls::default();
        s.observe(&topic(&[(0, 10, 0), (1, 5, 0), (2, 7, 3)]));
        assert!(
            s.stalled(Duration::ZERO).is_empty(),
            "one report is no stall"
        );
        // Partition 0 moved, 1 stayed with an empty queue, 2 stayed with records queued.
        s.observe(&topic(&[(0, 12, 0), (1, 5, 0), (2, 7, 3)]));
        assert_eq!(s.stalled(Duration::ZERO), vec![(1, 5)]);
        assert!(s.stalled(Duration::from_secs(60)).is_empty());
        // Moving again clears it; a partition no longer assigned is forgotten.
        s.observe(&topic(&[(0, 12, 0), (1, 6, 0)]));
        assert_eq!(s.stalled(Duration::ZERO), vec![(0, 12)]);
        s.observe(&topic(&[(1, 6, 0)]));
        assert_eq!(s.stalled(Duration::ZERO), vec![(1, 6)]);
    }
}
