//! The query log: the `queries` topic, Avro-encoded through the registry
//! (`query_log.avsc`), keyed by consumer.
//!
//! - [`spawn`] writes the router's queue ([`embedstream_router::QueryLog`]) to it, as
//!   [`crate::outbox`] writes: broker or registry trouble pauses the writer, and meanwhile the
//!   router's bounded queue fills and further queries go unlogged, counted there.
//! - [`sample_texts`] reads it back for `adapter train --query-log`: a seeded sample of the
//!   distinct texts one consumer (or every consumer) asked.

use std::collections::{BinaryHeap, HashSet};

use embedstream_schemas::Codec;
use embedstream_schemas::records::LoggedQuery;
use embedstream_topics::KafkaConfig;
use embedstream_topics::admin::query_log_topic;
use embedstream_topics::names::TopicNames;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::range::{PartitionRange, new_reader, partitions, watermarks};
use crate::stage::prepare::decode_waiting;

/// Counter: logged queries the broker acknowledged.
pub const WRITTEN: &str = "embedstream_query_log_written_total";
/// Counter, by `reason` (`encode`, `delivery`): logged queries that did not reach the topic.
pub const FAILED: &str = "embedstream_query_log_failed_total";

/// Queries the router's queue holds while the writer is behind.
pub const QUEUE: usize = 10_000;

/// Writes queries from `queue` to the query log until `shutdown` (or the router is gone).
pub fn spawn(
    kafka: KafkaConfig,
    registry_url: &str,
    names: &TopicNames,
    queue: mpsc::Receiver<LoggedQuery>,
    shutdown: CancellationToken,
) {
    crate::outbox::spawn(
        crate::outbox::Writer {
            kafka,
            codec: Codec::new(registry_url),
            spec: query_log_topic(names),
            partitions_like: None,
            key: |q: &LoggedQuery| q.consumer.clone(),
            written: WRITTEN,
            failed: FAILED,
        },
        queue,
        shutdown,
    );
}

/// A [`TextSample`] of at most `n` of the query log's texts, of `consumer`'s queries or of
/// every consumer's: the whole topic is read. An undecodable record is skipped with a warning;
/// registry trouble waits.
pub async fn sample_texts(
    kafka: &KafkaConfig,
    registry_url: &str,
    names: &TopicNames,
    consumer: Option<&str>,
    n: usize,
    seed: u64,
    shutdown: &CancellationToken,
) -> Result<Vec<String>> {
    let topic = names.queries();
    let codec = Codec::new(registry_url);
    let reader = new_reader(kafka, "query-log")?;
    let mut sample = TextSample::new(n, seed);
    for p in partitions(&reader, &topic, kafka, shutdown).await? {
        let (low, high) = watermarks(&reader, &topic, p, kafka, shutdown).await?;
        let mut range = PartitionRange::open(kafka, &topic, p, low, high)?;
        while let Some(m) = range.next(shutdown).await? {
            let Some(bytes) = rdkafka::Message::payload(&m) else {
                continue;
            };
            let query = match decode_waiting::<LoggedQuery>(&codec, bytes, shutdown).await {
                None => return Err(crate::error::Error::Interrupted),
                Some(Ok(q)) => q,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, topic, partition = p, offset = rdkafka::Message::offset(&m), "Skipping an undecodable logged query.");
                    continue;
                }
            };
            if consumer.is_some_and(|c| c != query.consumer) {
                continue;
            }
            sample.offer(&query.text);
        }
    }
    Ok(sample.into_texts())
}

/// A seeded sample of at most `n` distinct texts (compared trimmed; blank ones left out): the
/// texts whose seeded hash is smallest, in hash order. Memory: the hashes of the texts offered
/// and the `n` kept.
#[derive(Debug)]
pub struct TextSample {
    n: usize,
    seed: u64,
    seen: HashSet<u64>,
    kept: BinaryHeap<(u64, String)>,
}

impl TextSample {
    /// An empty sample of at most `n` texts under `seed`.
    pub fn new(n: usize, seed: u64) -> Self {
        Self {
            n,
            seed,
            seen: HashSet::new(),
            kept: BinaryHeap::with_capacity(n + 1),
        }
    }

    /// Offers one text.
    pub fn offer(&mut self, text: &str) {
        let text = text.trim();
        let seed = self.seed;
        let hash = embedstream_topics::hash::fnv1a64(format!("{seed}:{text}").as_bytes());
        if text.is_empty() || !self.seen.insert(hash) {
            return;
        }
        self.kept.push((hash, text.to_owned()));
        if self.kept.len() > self.n {
            self.kept.pop();
        }
    }

    /// The texts kept, in hash order.
    pub fn into_texts(self) -> Vec<String> {
        self.kept
            .into_sorted_vec()
            .into_iter()
            .map(|(_, t)| t)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::TextSample;

    fn sample(texts: &[&str], n: usize, seed: u64) -> Vec<String> {
        let mut s = TextSample::new(n, seed);
        texts.iter().for_each(|t| s.offer(t));
        s.into_texts()
    }

    #[test]
    fn a_sample_keeps_distinct_trimmed_texts_whatever_their_order() {
        let texts: Vec<String> = (0..50).map(|i| format!("query {i}")).collect();
        let mut offered: Vec<&str> = texts.iter().map(String::as_str).collect();
        offered.extend([" query 3 ", "query 3", "", "   "]);
        let all = sample(&offered, 100, 7);
        assert_eq!(all.len(), 50, "{all:?}");
        assert!(all.iter().all(|t| t.trim() == t && !t.is_empty()));

        let five = sample(&offered, 5, 7);
        assert_eq!(five.len(), 5);
        assert_eq!(five, all[..5], "the smallest hashes, in hash order");
        offered.reverse();
        assert_eq!(
            sample(&offered, 5, 7),
            five,
            "the order texts arrive in does not matter"
        );
        assert_ne!(sample(&offered, 5, 8), five, "another seed, another sample");
    }
}
