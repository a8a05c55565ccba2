//! The writer behind each of the router's outboxes ([`embedstream_router::Outbox`]): records
//! from a bounded queue to a topic, Avro-encoded through the registry.
//!
//! Broker or registry trouble pauses the writer (it retries the record in hand with a backoff;
//! registry waits are counted in `embedstream_stage_registry_retries_total{op="encode"}`, as
//! the stage's own are); meanwhile the router's bounded queue fills and further records are
//! dropped there, counted. A record the registry refuses for good is counted and skipped.

use std::time::Duration;

use embedstream_schemas::AvroRecord;
use embedstream_schemas::Codec;
use embedstream_topics::KafkaConfig;
use embedstream_topics::admin::{Admin, TopicSpec};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::stage::produce::encode;

const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Where and how one outbox's records are written.
#[allow(missing_debug_implementations)]
pub struct Writer<T> {
    /// The cluster.
    pub kafka: KafkaConfig,
    /// Encodes the records (registering their schema under the topic's value subject).
    pub codec: Codec,
    /// The topic, created when missing.
    pub spec: TopicSpec,
    /// A topic whose partition count the topic is created with, when that one exists (the
    /// spec's count otherwise).
    pub partitions_like: Option<String>,
    /// A record's key.
    pub key: fn(&T) -> String,
    /// Counter: records the broker acknowledged.
    pub written: &'static str,
    /// Counter, by `reason` (`encode`, `delivery`): records that did not reach the topic.
    pub failed: &'static str,
}

/// Writes records from `queue` to the writer's topic until `shutdown` (or the router is
/// gone); what the client holds then gets five seconds to be delivered.
pub fn spawn<T: AvroRecord + Send + Sync + 'static>(
    writer: Writer<T>,
    mut queue: mpsc::Receiver<T>,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        let Writer {
            kafka,
            codec,
            mut spec,
            partitions_like,
            key,
            written,
            failed,
        } = writer;
        let topic = spec.name.clone();
        let mut backoff = Duration::from_millis(200);
        let producer: FutureProducer = loop {
            let ready = async {
                if let Some(like) = partitions_like.clone() {
                    // A metadata request, which blocks: off the runtime's threads.
                    let k = kafka.clone();
                    let counted = tokio::task::spawn_blocking(move || {
                        Admin::new(&k, Duration::from_secs(30))?.partitions(&like)
                    })
                    .await
                    .map_err(|e| anyhow::anyhow!(e))??;
                    if let Some(n) = counted {
                        spec.partitions = n;
                    }
                }
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
                    tracing::warn!(error = %e, topic, "Cannot open the topic yet; retrying.");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        };
        loop {
            let record = tokio::select! {
                () = shutdown.cancelled() => break,
                r = queue.recv() => match r { Some(r) => r, None => break },
            };
            let encoded = tokio::select! {
                () = shutdown.cancelled() => return,
                encoded = encode(&codec, &topic, &record) => encoded,
            };
            let payload = match encoded {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, topic, "A record cannot be encoded; skipped.");
                    ::metrics::counter!(failed, "reason" => "encode").increment(1);
                    continue;
                }
            };
            let key = key(&record);
            // Queued in the client at once; the delivery is awaited on the side so that one
            // round trip per record does not bound the rate.
            let mut backoff = Duration::from_millis(50);
            let delivery = loop {
                let r = FutureRecord::to(&topic).key(&key).payload(&payload);
                match producer.send_result(r) {
                    Ok(d) => break d,
                    Err((e, _)) => {
                        tracing::debug!(error = %e, topic, "The client queue is full; waiting.");
                        tokio::select! {
                            () = shutdown.cancelled() => return,
                            () = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                }
            };
            let topic = topic.clone();
            tokio::spawn(async move {
                match delivery.await {
                    Ok(Ok(_)) => ::metrics::counter!(written).increment(1),
                    Ok(Err((e, _))) => {
                        tracing::warn!(error = %e, topic, "A record was not delivered.");
                        ::metrics::counter!(failed, "reason" => "delivery").increment(1);
                    }
                    Err(_) => ::metrics::counter!(failed, "reason" => "delivery").increment(1),
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
