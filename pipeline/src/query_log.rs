//! The query log: the `queries` topic, Avro-encoded through the registry
//! (`query_log.avsc`), keyed by consumer.
//!
//! - [`spawn`] writes the router's queue ([`embedstream_router::QueryLog`]) to it. Broker or
//!   registry trouble pauses the writer (it retries the record in hand with a backoff);
//!   meanwhile the router's bounded queue fills and further queries go unlogged, counted there.
//!   A record the registry refuses for good is counted and skipped.
//! - [`sample_texts`] reads it back for `adapter train --query-log`: a seeded sample of the
//!   distinct texts one consumer (or every consumer) asked.

use std::collections::{BinaryHeap, HashSet};
use std::time::Duration;

use embedstream_schemas::Codec;
use embedstream_schemas::records::LoggedQuery;
use embedstream_topics::KafkaConfig;
use embedstream_topics::admin::{Admin, query_log_topic};
use embedstream_topics::names::TopicNames;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::range::{PartitionRange, new_reader, partitions, watermarks};

/// Counter: logged queries the broker acknowledged.
pub const WRITTEN: &str = "embedstream_query_log_written_total";
/// Counter, by `reason` (`encode`, `delivery`): logged queries that did not reach the topic.
pub const FAILED: &str = "embedstream_query_log_failed_total";

/// Queries the router's queue holds while the writer is behind.
pub const QUEUE: usize = 10_000;

const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Writes queries from `queue` to the query log until `shutdown` (or the router is gone).
pub fn spawn(
    kafka: KafkaConfig,
    registry_url: &str,
    names: &TopicNames,
    mut queue: mpsc::Receiver<LoggedQuery>,
    shutdown: CancellationToken,
) {
    let codec = Codec::new(registry_url);
    let spec = query_log_topic(names);
    tokio::spawn(async move {
        let topic = spec.name.clone();
        let mut backoff = Duration::from_millis(200);
        let producer: FutureProducer = loop {
            let ready = async {
                Admin::new(&kafka, Duration::from_secs(30))?
                    .ensure(std::slice::from_ref(&spec))
                    .await?;
                kafka
                    .client()
                    .set("message.timeout.ms", "30000")
                    .set("linger.ms", "50")
                    .create()
                    .map_err(|e| anyhow::anyhow!(e))
            };
            match ready.await {
                Ok(p) => break p,
                Err(e) => {
                    tracing::warn!(error = %e, topic, "Cannot open the query log yet; retrying.");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        };
        loop {
            let query = tokio::select! {
                () = shutdown.cancelled() => break,
                q = queue.recv() => match q { Some(q) => q, None => break },
            };
            let mut backoff = Duration::from_millis(200);
            let payload = loop {
                match codec.encode(&topic, &query).await {
                    Ok(p) => break Some(p),
                    Err(e) if e.is_retryable() => {
                        tracing::warn!(error = %e, topic, "Cannot encode a logged query yet; retrying.");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, topic, "A logged query cannot be encoded; skipped.");
                        ::metrics::counter!(FAILED, "reason" => "encode").increment(1);
                        break None;
                    }
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            };
            let Some(payload) = payload else { continue };
            // Queued in the client at once; the delivery is awaited on the side so that one
            // round trip per query does not bound the log's rate.
            let mut backoff = Duration::from_millis(50);
            let delivery = loop {
                let record = FutureRecord::to(&topic)
                    .key(&query.consumer)
                    .payload(&payload);
                match producer.send_result(record) {
                    Ok(d) => break d,
                    Err((e, _)) => {
                        tracing::debug!(error = %e, "The query log's client queue is full; waiting.");
                        tokio::select! {
                            () = shutdown.cancelled() => return,
                            () = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                }
            };
            tokio::spawn(async move {
                match delivery.await {
                    Ok(Ok(_)) => ::metrics::counter!(WRITTEN).increment(1),
                    Ok(Err((e, _))) => {
                        tracing::warn!(error = %e, "A logged query was not delivered.");
                        ::metrics::counter!(FAILED, "reason" => "delivery").increment(1);
                    }
                    Err(_) => ::metrics::counter!(FAILED, "reason" => "delivery").increment(1),
                }
            });
        }
        // Whatever is queued in the client gets its chance before the router exits.
        let _ = tokio::task::spawn_blocking(move || {
            rdkafka::producer::Producer::flush(&producer, Duration::from_secs(5))
        })
        .await;
    });
}

/// A seeded sample of at most `n` distinct texts (compared trimmed) of the query log, of
/// `consumer`'s queries or of every consumer's: the whole topic is read, and the texts whose
/// seeded hash is smallest are kept (memory: the hashes of the texts seen and the `n` kept).
/// An undecodable record is skipped with a warning; registry trouble waits.
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
    let mut seen = HashSet::new();
    let mut kept: BinaryHeap<(u64, String)> = BinaryHeap::with_capacity(n + 1);
    for p in partitions(&reader, &topic, kafka, shutdown).await? {
        let (low, high) = watermarks(&reader, &topic, p, kafka, shutdown).await?;
        let mut range = PartitionRange::open(kafka, &topic, p, low, high)?;
        while let Some(m) = range.next(shutdown).await? {
            let Some(bytes) = rdkafka::Message::payload(&m) else {
                continue;
            };
            let query = loop {
                match codec.decode::<LoggedQuery>(bytes).await {
                    Ok(q) => break Some(q),
                    Err(e) if e.is_retryable() => {
                        tracing::warn!(error = %e, topic, "Cannot decode the query log yet; retrying.");
                        tokio::select! {
                            () = shutdown.cancelled() => return Err(crate::error::Error::Interrupted),
                            () = tokio::time::sleep(Duration::from_millis(500)) => {}
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, topic, partition = p, offset = rdkafka::Message::offset(&m), "Skipping an undecodable logged query.");
                        break None;
                    }
                }
            };
            let Some(query) = query else { continue };
            if consumer.is_some_and(|c| c != query.consumer) {
                continue;
            }
            let text = query.text.trim();
            let hash = embedstream_topics::hash::fnv1a64(format!("{seed}:{text}").as_bytes());
            if text.is_empty() || !seen.insert(hash) {
                continue;
            }
            kept.push((hash, text.to_owned()));
            if kept.len() > n {
                kept.pop();
            }
        }
    }
    Ok(kept.into_sorted_vec().into_iter().map(|(_, t)| t).collect())
}
