//! The replayer: walks a partition backwards chunk by chunk, skips items the seen set says
//! are newer elsewhere, embeds and produces the rest, and acknowledges the chunk.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use embedstream_schemas::Codec;
use embedstream_schemas::records::{EmbeddingRecord, SourceCoordinates};
use embedstream_topics::admin::{Admin, TopicSpec};
use embedstream_topics::time::now_ms;
use embedstream_topics::{KafkaConfig, ModelRef, ModelSpec};
use rdkafka::Message;
use rdkafka::consumer::StreamConsumer;
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{DeliveryFuture, FutureProducer};
use tokio_util::sync::CancellationToken;

use super::config::{BackfillConfig, BackfillReport};

use crate::embed::burn_model::Device;
use crate::embed::engine::{Engine, EngineConfig};
use crate::error::{EngineError, Error, Result};
use crate::range::{PartitionRange, new_reader, partitions, watermarks};
use crate::stage::prepare::decode;
use crate::stage::produce::{encode, send_raw, source_headers};
use crate::stage::validate::{Limits, Work};

/// One record of a chunk, decided.
pub(crate) enum Step {
    Upsert {
        key: Vec<u8>,
        item_id: String,
        text: String,
        event_time: i64,
        attributes: HashMap<String, String>,
        request_id: Option<String>,
        offset: i64,
        partition: i32,
    },
    Delete {
        key: Vec<u8>,
        /// The delete event's position on `items`, when it came from there.
        source: Option<(i32, i64)>,
    },
}

pub(crate) struct Embedded {
    step: Step,
    vector: Option<Vec<f32>>,
}

#[derive(Default)]
pub(crate) struct Count {
    pub(crate) embedded: i64,
    pub(crate) skipped: i64,
}

impl Replayer {
    /// Enqueues a record (with the source headers when its source is known), waiting while
    /// the producer's queue is full.
    async fn send(
        &self,
        key: &[u8],
        payload: Option<&[u8]>,
        source: Option<(i32, i64)>,
    ) -> Result<DeliveryFuture> {
        let headers = source.map(|(partition, offset)| source_headers(partition, offset));
        send_raw(&self.producer, &self.topic, Some(key), payload, headers).await
    }
}

/// Reads `items` and writes the new version's records: what the backfill and the consistency
/// checker's re-queue share.
pub(crate) struct Replayer {
    pub(crate) reader: StreamConsumer,
    producer: FutureProducer,
    pub(crate) codec: Codec,
    pub(crate) items: String,
    pub(crate) topic: String,
    pub(crate) to: ModelRef,
    spec: ModelSpec,
    normalized: bool,
    /// The new model, loaded on first use (a check that finds nothing to re-queue needs none).
    model: tokio::sync::OnceCell<(Engine, crate::embed::engine::EngineThreads)>,
    device: Device,
    engine_config: EngineConfig,
    name: String,
    limits: Limits,
    pub(crate) kafka: KafkaConfig,
}

impl Replayer {
    /// Connects; makes sure `to`'s topic exists with as many partitions as `items` (the stage
    /// creates it when the version turns active; the backfill and the checker must not depend
    /// on a stage running). The model loads on first use, or with [`Self::engine`].
    pub(crate) async fn open(
        config: &BackfillConfig,
        spec: &ModelSpec,
        name: &str,
        shutdown: &CancellationToken,
    ) -> Result<Self> {
        let to = &spec.model;
        let kafka = &config.kafka;
        let reader = new_reader(kafka, name)?;
        let producer: FutureProducer = kafka
            .client()
            .set("enable.idempotence", "true")
            // The stage's partitioner: an item's records from the dual-write and from here
            // land in the same partition, so compaction and the sinks keep the newest.
            .set("partitioner", "murmur2_random")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "60000")
            .create()
            .map_err(Error::kafka(kafka))?;
        let replayer = Self {
            reader,
            producer,
            codec: Codec::new(&config.registry_url),
            items: config.names.items(),
            topic: config.names.embeddings(to),
            to: to.clone(),
            spec: spec.clone(),
            normalized: spec.normalized,
            model: tokio::sync::OnceCell::new(),
            device: config.device,
            engine_config: config.engine,
            name: name.to_owned(),
            limits: config.limits,
            kafka: kafka.clone(),
        };
        let count = i32::try_from(replayer.partitions(shutdown).await?.len()).unwrap_or(i32::MAX);
        Admin::new(kafka, Duration::from_secs(30))?
            .ensure(&[TopicSpec::compacted(replayer.topic.clone(), count)])
            .await?;
        Ok(replayer)
    }

    /// The new model's engine, loading it the first time.
    pub(crate) async fn engine(&self) -> Result<&Engine> {
        let (engine, _threads) = self
            .model
            .get_or_try_init(|| async {
                let (m, device, config, name) = (
                    self.spec.clone(),
                    self.device,
                    self.engine_config,
                    self.name.clone(),
                );
                tokio::task::spawn_blocking(move || {
                    crate::embed::open_named(&m, device, config, &name)
                })
                .await
                .map_err(Error::task("loading the model"))?
            })
            .await?;
        Ok(engine)
    }

    /// The partitions of `items`, sorted.
    pub(crate) async fn partitions(&self, shutdown: &CancellationToken) -> Result<Vec<i32>> {
        partitions(&self.reader, &self.items, &self.kafka, shutdown).await
    }

    /// The low and high watermarks of partition `p` of `items`, waiting out broker trouble.
    pub(crate) async fn watermarks(
        &self,
        p: i32,
        shutdown: &CancellationToken,
    ) -> Result<(i64, i64)> {
        watermarks(&self.reader, &self.items, p, &self.kafka, shutdown).await
    }
}

impl Replayer {
    /// Reads `[lo, hi)` of partition `p` of `items` (fewer where compaction removed records);
    /// the caller bounds `hi - lo`.
    pub(crate) async fn read_range(
        &self,
        p: i32,
        lo: i64,
        hi: i64,
        shutdown: &CancellationToken,
    ) -> Result<Vec<OwnedMessage>> {
        PartitionRange::open(&self.kafka, &self.items, p, lo, hi)?
            .collect(shutdown)
            .await
    }

    /// Adds to `keys` the keys of partition `p` from `from` to its current end; returns that
    /// end. Streams: memory is the key set.
    pub(crate) async fn scan_keys(
        &self,
        p: i32,
        from: i64,
        keys: &mut HashSet<Vec<u8>>,
        shutdown: &CancellationToken,
    ) -> Result<i64> {
        let (_, high) = self.watermarks(p, shutdown).await?;
        if high <= from {
            return Ok(from.max(high));
        }
        let mut range = PartitionRange::open(&self.kafka, &self.items, p, from, high)?;
        while let Some(m) = range.next(shutdown).await? {
            if let Some(k) = m.key() {
                keys.insert(k.to_vec());
            }
        }
        Ok(high)
    }

    /// Newest first; the items already seen are skipped, the rest marked seen. Registry
    /// trouble waits; shutdown while waiting is [`Error::Interrupted`].
    pub(crate) async fn prepare(
        &self,
        mut records: Vec<OwnedMessage>,
        seen: &mut HashSet<Vec<u8>>,
        report: &mut BackfillReport,
        shutdown: &CancellationToken,
    ) -> Result<Vec<Step>> {
        records.sort_by_key(|m| std::cmp::Reverse(m.offset()));
        let mut steps = Vec::new();
        for m in records {
            let Some(key) = m.key().map(<[u8]>::to_vec) else {
                report.skipped += 1;
                continue;
            };
            if !seen.insert(key.clone()) {
                report.skipped += 1;
                continue;
            }
            let Some(decided) = decode(&self.codec, &m, self.limits, shutdown).await else {
                return Err(Error::Interrupted);
            };
            match decided {
                Ok(Work::Upsert {
                    item_id,
                    text,
                    event_time,
                    attributes,
                    request_id,
                }) => steps.push(Step::Upsert {
                    key,
                    item_id,
                    text,
                    event_time,
                    attributes,
                    request_id,
                    offset: m.offset(),
                    partition: m.partition(),
                }),
                Ok(Work::Delete { .. }) => steps.push(Step::Delete {
                    key,
                    source: Some((m.partition(), m.offset())),
                }),
                Err(poison) => {
                    tracing::debug!(
                        kind = poison.kind,
                        offset = m.offset(),
                        "Skipping a record the stage dead-lettered."
                    );
                    report.skipped += 1;
                }
            }
        }
        Ok(steps)
    }

    /// Embeds the upserts of `steps`. A text the model cannot tokenize is provably bad and is
    /// left out (counted as skipped when produced); any other engine failure fails the whole
    /// chunk, so its checkpoint does not move.
    pub(crate) async fn embed(&self, steps: Vec<Step>) -> Result<Vec<Embedded>> {
        let texts: Vec<String> = steps
            .iter()
            .filter_map(|s| match s {
                Step::Upsert { text, .. } => Some(text.clone()),
                Step::Delete { .. } => None,
            })
            .collect();
        let failed = |source| Error::Engine {
            model: self.to.to_string(),
            source,
        };
        let mut vectors = if texts.is_empty() {
            Vec::new()
        } else {
            let engine = self.engine().await?;
            match engine.embed(texts.clone()).await {
                Ok(v) => v.into_iter().map(Some).collect(),
                // One bad text fails its batch: embed one by one to leave out only it.
                Err(EngineError::Tokenize { .. }) => {
                    let mut one_by_one = Vec::with_capacity(texts.len());
                    for t in texts {
                        one_by_one.push(match engine.embed(vec![t]).await {
                            Ok(mut v) => v.pop(),
                            Err(EngineError::Tokenize { reason, .. }) => {
                                tracing::warn!(%reason, "Leaving out a text the model cannot tokenize.");
                                None
                            }
                            Err(e) => return Err(failed(e)),
                        });
                    }
                    one_by_one
                }
                Err(e) => return Err(failed(e)),
            }
        }
        .into_iter();
        Ok(steps
            .into_iter()
            .map(|step| {
                let vector = match step {
                    Step::Upsert { .. } => vectors.next().flatten(),
                    Step::Delete { .. } => None,
                };
                Embedded { step, vector }
            })
            .collect())
    }

    pub(crate) async fn produce(
        &self,
        chunk: Vec<Embedded>,
        fresh: &HashSet<Vec<u8>>,
        report: &mut BackfillReport,
    ) -> Result<Count> {
        let mut count = Count::default();
        let mut deliveries = Vec::new();
        let embed_time = now_ms();
        for Embedded { step, vector } in chunk {
            let key = match &step {
                Step::Upsert { key, .. } | Step::Delete { key, .. } => key.clone(),
            };
            let source = match &step {
                Step::Upsert {
                    partition, offset, ..
                } => Some((*partition, *offset)),
                Step::Delete { source, .. } => *source,
            };
            if fresh.contains(&key) {
                count.skipped += 1;
                report.skipped += 1;
                continue;
            }
            let payload = match step {
                Step::Upsert {
                    item_id,
                    event_time,
                    attributes,
                    request_id,
                    offset,
                    partition,
                    ..
                } => {
                    let Some(vector) = vector else {
                        count.skipped += 1;
                        report.skipped += 1;
                        continue;
                    };
                    let record = EmbeddingRecord {
                        item_id,
                        model_id: self.to.id.clone(),
                        model_version: i32::try_from(self.to.version).unwrap_or(i32::MAX),
                        dimension: i32::try_from(vector.len()).unwrap_or(i32::MAX),
                        vector,
                        normalized: self.normalized,
                        source: SourceCoordinates {
                            topic: self.items.clone(),
                            partition,
                            offset,
                        },
                        event_time,
                        embed_time,
                        attributes,
                        request_id,
                    };
                    count.embedded += 1;
                    report.embedded += 1;
                    Some(encode(&self.codec, &self.topic, &record).await?)
                }
                Step::Delete { .. } => {
                    report.deleted += 1;
                    None
                }
            };
            deliveries.push(self.send(&key, payload.as_deref(), source).await?);
        }
        for d in deliveries {
            match d.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(Error::produce(&self.topic)(e)),
                Err(_) => {
                    return Err(Error::ProducerStopped {
                        topic: self.topic.clone(),
                    });
                }
            }
        }
        Ok(count)
    }
}
