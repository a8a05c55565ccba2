//! Producing a batch in consumption order: one record per active version per event,
//! tombstones for deletes, dead letters for poison.

use std::time::{Duration, Instant};

use ::metrics::{counter, histogram};
use embedstream_schemas::records::{EmbeddingRecord, SourceCoordinates};
use embedstream_schemas::{AvroRecord, Codec, headers};
use embedstream_topics::time::now_ms;
use rdkafka::Message;
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use tokio::sync::mpsc;

use super::ack::delivered;
use super::flow::{Delivery, STAGE, Sent, Submitted};
use super::metrics as m;
use super::prepare::{RegistryBackoff, vectors_of};
use super::validate::{Poison, Work};
use crate::dlq::{DeadLetterPolicy, Failed, dead_letter};
use crate::error::{Error, Result};

fn coordinates(message: &OwnedMessage) -> (String, i32, i64) {
    (
        message.topic().to_owned(),
        message.partition(),
        message.offset(),
    )
}

/// One output record of a batch, encoded, before it is sent.
struct Output {
    /// Metric label: the model version, or `dlq`.
    label: String,
    topic: String,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: OwnedHeaders,
}

pub(super) async fn produce_loop(
    mut batches: mpsc::Receiver<Submitted>,
    out: mpsc::Sender<Sent>,
    producer: FutureProducer,
    codec: Codec,
    dlq: String,
    policy: DeadLetterPolicy,
    transactions: Option<Transactions>,
) -> Result<()> {
    while let Some(batch) = batches.recv().await {
        let mut vectors = Vec::with_capacity(batch.models.len());
        for (model, pending) in batch.models.iter().zip(batch.pending) {
            vectors.push(vectors_of(model, pending, &batch.texts).await?);
        }
        histogram!(m::EMBED_SECONDS).record(batch.embed_start.elapsed().as_secs_f64());
        let produce_start = Instant::now();
        let embed_time = now_ms();
        // Everything is encoded first (encoding may wait on the registry), so a transaction is
        // open only while the records are sent and committed.
        let mut outputs = Vec::new();
        let mut events = Vec::with_capacity(batch.entries.len());
        let mut event_times = Vec::new();
        let mut upsert_index = 0;
        for entry in &batch.entries {
            let (topic, partition, offset) = coordinates(&entry.message);
            let source = SourceCoordinates {
                topic: topic.clone(),
                partition,
                offset,
            };
            let mut poison = entry.outcome.as_ref().err().cloned();
            match &entry.outcome {
                Ok(Work::Upsert {
                    item_id,
                    event_time,
                    attributes,
                    request_id,
                    ..
                }) => {
                    let i = upsert_index;
                    upsert_index += 1;
                    // A text one model cannot tokenize is dead-lettered as a whole.
                    if let Some(reason) = vectors.iter().find_map(|v| v[i].as_ref().err()) {
                        poison = Some(Poison {
                            kind: "tokenize_failed",
                            message: format!("item {item_id}: {reason}"),
                        });
                    } else {
                        for (model, v) in batch.models.iter().zip(&vectors) {
                            let vector = v[i].clone().unwrap_or_default();
                            let record = EmbeddingRecord {
                                item_id: item_id.clone(),
                                model_id: model.model.id.clone(),
                                model_version: i32::try_from(model.model.version)
                                    .unwrap_or(i32::MAX),
                                dimension: i32::try_from(vector.len()).unwrap_or(i32::MAX),
                                vector,
                                normalized: model.normalized,
                                source: source.clone(),
                                event_time: *event_time,
                                embed_time,
                                attributes: attributes.clone(),
                                request_id: request_id.clone(),
                            };
                            outputs.push(Output {
                                label: model.label.clone(),
                                topic: model.topic.clone(),
                                key: Some(item_id.as_bytes().to_vec()),
                                payload: Some(encode(&codec, &model.topic, &record).await?),
                                headers: source_headers(partition, offset),
                            });
                        }
                        event_times.push(*event_time);
                    }
                }
                Ok(Work::Delete {
                    item_id,
                    event_time,
                }) => {
                    for model in &batch.models {
                        outputs.push(Output {
                            label: model.label.clone(),
                            topic: model.topic.clone(),
                            key: Some(item_id.as_bytes().to_vec()),
                            payload: None,
                            headers: source_headers(partition, offset),
                        });
                    }
                    event_times.extend(*event_time);
                }
                Err(_) => {}
            }
            if let Some(poison) = poison {
                counter!(m::DEAD_LETTERS, "error_type" => poison.kind).increment(1);
                tracing::warn!(
                    error_type = poison.kind,
                    topic,
                    partition,
                    offset,
                    error = %poison.message,
                    "Dead-lettering a record."
                );
                let failed = Failed {
                    key: entry.message.key(),
                    value: entry.message.payload(),
                    source: source.clone(),
                };
                let (letter, headers) = dead_letter(&failed, &poison, STAGE, policy);
                outputs.push(Output {
                    label: "dlq".to_owned(),
                    topic: dlq.clone(),
                    payload: Some(encode(&codec, &dlq, &letter).await?),
                    key: letter.original_key,
                    headers,
                });
            }
            events.push((topic, partition, offset));
        }

        let mut aborted = false;
        if let Some(t) = &transactions {
            t.begin(&producer)?;
        }
        let mut deliveries = Vec::with_capacity(outputs.len());
        for o in outputs {
            let d = send_raw(
                &producer,
                &o.topic,
                o.key.as_deref(),
                o.payload.as_deref(),
                Some(o.headers),
            )
            .await?;
            deliveries.push((o.label, o.topic, Delivery::Pending(d)));
        }
        if let Some(t) = &transactions {
            // Every delivery is awaited here, so the commit finds nothing left to flush.
            let mut done = Vec::with_capacity(deliveries.len());
            for (label, topic, d) in deliveries {
                let Delivery::Pending(d) = d else { continue };
                let result = delivered(d, topic.clone()).await.err();
                done.push((label, topic, Delivery::Done(result)));
            }
            deliveries = done;
            if deliveries
                .iter()
                .all(|(_, _, d)| matches!(d, Delivery::Done(None)))
            {
                aborted = !t.commit(&producer, &events, batch.given_up).await?;
            }
        }
        let sent = Sent {
            events,
            event_times,
            deliveries,
            produce_start,
            aborted,
        };
        if out.send(sent).await.is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// Exactly-once output: each batch's records, dead letters included, and the consumed
/// offsets of its events are one Kafka transaction, committed with the consumer's group
/// metadata (KIP-447), so a member fenced by a rebalance cannot commit, and readers with
/// `isolation.level=read_committed` see all of a batch or none of it.
pub(super) struct Transactions {
    /// The stage's group consumer (its group metadata goes into each commit).
    pub(super) consumer:
        std::sync::Arc<rdkafka::consumer::BaseConsumer<super::consumer::StageContext>>,
    /// Which revokes have given partitions up.
    pub(super) tracker: std::sync::Arc<super::consumer::Tracker>,
    /// How long a commit may take.
    pub(super) timeout: Duration,
}

impl Transactions {
    fn begin(&self, producer: &FutureProducer) -> Result<()> {
        producer
            .begin_transaction()
            .map_err(|e| Error::transaction("begin", &e))
    }

    /// Sends the offsets after `events` and commits; returns `false` when it aborted instead: a
    /// revoke gave the batch's partitions up after it was cut (`given_up`), so its events
    /// belong to their next owner (with eager rebalancing every partition is revoked, and this
    /// member reads what it keeps again from the committed offsets). Any failure is fatal (the
    /// transaction is aborted by the broker or on restart, and its events are read again).
    async fn commit(
        &self,
        producer: &FutureProducer,
        events: &[(String, i32, i64)],
        given_up: u64,
    ) -> Result<bool> {
        if self.tracker.given_up() != given_up {
            let (producer, timeout) = (producer.clone(), self.timeout);
            tokio::task::spawn_blocking(move || producer.abort_transaction(timeout))
                .await
                .map_err(Error::task("aborting a transaction"))?
                .map_err(|e| Error::transaction("abort", &e))?;
            tracing::warn!(
                events = events.len(),
                "Aborted a batch whose partitions a revoke gave up before it was done."
            );
            return Ok(false);
        }
        use rdkafka::consumer::Consumer;
        let mut next: std::collections::BTreeMap<(&str, i32), i64> = Default::default();
        for (topic, partition, offset) in events {
            let n = next.entry((topic.as_str(), *partition)).or_insert(0);
            *n = (*n).max(offset + 1);
        }
        let mut tpl = rdkafka::TopicPartitionList::new();
        for ((topic, partition), offset) in next {
            tpl.add_partition_offset(topic, partition, rdkafka::Offset::Offset(offset))
                .map_err(|e| Error::transaction("offsets", &e))?;
        }
        let metadata = self.consumer.group_metadata().ok_or(Error::Transaction {
            step: "group metadata",
            reason: "the consumer has no group metadata".to_owned(),
        })?;
        let (producer, timeout) = (producer.clone(), self.timeout);
        let committed = tokio::task::spawn_blocking(move || {
            let start = Instant::now();
            // The client's commit flushes first, and its flush waits up to 100 ms for a report
            // that the producer's own polling thread may already have taken: wait for the
            // client to have released every delivered record, so that flush returns at once.
            while producer.flush(Duration::ZERO).is_err() {
                if start.elapsed() > timeout {
                    break;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            producer
                .send_offsets_to_transaction(&tpl, &metadata, timeout)
                .map_err(|e| ("send offsets", e))?;
            let offsets = start.elapsed();
            producer
                .commit_transaction(timeout)
                .map_err(|e| ("commit", e))?;
            histogram!(m::COMMIT_SECONDS).record(start.elapsed().as_secs_f64());
            tracing::debug!(
                offsets_ms = offsets.as_millis() as u64,
                total_ms = start.elapsed().as_millis() as u64,
                "Transaction committed."
            );
            Ok(())
        })
        .await
        .map_err(Error::task("committing a transaction"))?;
        committed.map_err(|(step, e)| Error::transaction(step, &e))?;
        Ok(true)
    }
}

/// The headers naming a record's source event on `items` (`embedstream_schemas::headers`).
pub(crate) fn source_headers(partition: i32, offset: i64) -> OwnedHeaders {
    let (p, o) = (partition.to_string(), offset.to_string());
    OwnedHeaders::new_with_capacity(2)
        .insert(Header {
            key: headers::SOURCE_PARTITION,
            value: Some(p.as_str()),
        })
        .insert(Header {
            key: headers::SOURCE_OFFSET,
            value: Some(o.as_str()),
        })
}

/// Enqueues a record (waiting while the producer's queue is full) and returns its delivery.
pub(crate) async fn send_raw(
    producer: &FutureProducer,
    topic: &str,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    headers: Option<OwnedHeaders>,
) -> Result<DeliveryFuture> {
    loop {
        let mut record = FutureRecord::<[u8], [u8]>::to(topic);
        if let Some(h) = &headers {
            record = record.headers(h.clone());
        }
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(p) = payload {
            record = record.payload(p);
        }
        match producer.send_result(record) {
            Ok(d) => return Ok(d),
            Err((
                rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::QueueFull,
                ),
                _,
            )) => tokio::time::sleep(Duration::from_millis(5)).await,
            Err((e, _)) => return Err(Error::produce(topic)(e)),
        }
    }
}

/// Encodes `record` for `topic`; while the registry is in trouble (down, slow, 5xx) it waits
/// and asks again, with a backoff up to 5 s, so registry trouble pauses the stage and never
/// fails a record. A schema the registry refuses is an error.
pub(crate) async fn encode<T: AvroRecord>(
    codec: &Codec,
    topic: &str,
    record: &T,
) -> Result<Vec<u8>> {
    let mut backoff = RegistryBackoff::new("encode");
    loop {
        match codec.encode(topic, record).await {
            Err(e) if e.is_retryable() => {
                let wait = backoff.step();
                tracing::warn!(error = %e, topic, "Registry unavailable; encoding again.");
                tokio::time::sleep(wait).await;
            }
            other => return Ok(other?),
        }
    }
}
