//! The backfill of a migration: replays `items` with the new model into the new version's
//! topic, newest first, checkpointed in the control log, idempotent with the dual-write,
//! throttled.
//!
//! - **Range.** Per partition of `items`, the offsets `[low, high)` of when the backfill first
//!   ran; everything after `high` is the dual-write's (the migration turned it on before).
//! - **Newest first.** Kafka reads forwards only, so each partition is walked backwards in
//!   chunks: read `[next_end − chunk, next_end)`, handle it newest record first, move
//!   `next_end` down. Partitions take turns chunk by chunk, so recent items of every partition
//!   are covered before old ones (seed 003: recent items are the most queried).
//! - **Idempotent with the dual-write.** An item's newest event wins: before each chunk the
//!   keys of every record after the chunk (the part already done, and whatever the dual-write
//!   has taken since — keys only, no embedding) are in a seen set, and a record whose item is
//!   in it is skipped. The set is scanned again just before the chunk's records are produced,
//!   so an update that lands while the chunk is being embedded is not overwritten by the older
//!   text: the window left is between that scan and the produce (milliseconds), while the
//!   dual-write's own record of the update comes after its embedding (tens of ms at least), so
//!   on the compacted topic the newest text is last. The consistency checker covers the rest.
//! - **Checkpointed.** After a chunk's records are acknowledged, one `BACKFILL` control record
//!   per partition stores `next_end`; a killed backfill resumes from it (the seen set is
//!   rebuilt by scanning keys), redoing at most one chunk.
//! - **Throttled.** At most `max_rate` items/s (0 = unthrottled), and the engine has its own
//!   threads: run the backfill beside a live stage with a rate that leaves the stage its CPU.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use embedstream_schemas::Codec;
use embedstream_schemas::records::{
    BackfillProgress, ControlKind, EmbeddingRecord, MigrationPhase, MigrationRecord,
    SourceCoordinates,
};
use embedstream_topics::admin::{Admin, TopicSpec};
use embedstream_topics::names::TopicNames;
use embedstream_topics::{KafkaConfig, ModelRef, catalog};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::plan;
use embedstream_topics::time::now_ms;

use crate::control::ControlLog;
use crate::embed::burn_model::Device;
use crate::embed::engine::{Engine, EngineConfig};
use crate::error::{Error, Result};
use crate::stage::validate::{self, Limits, Work};

/// How a backfill runs.
#[derive(Debug, Clone)]
pub struct BackfillConfig {
    /// The brokers and the client properties of every Kafka client.
    pub kafka: KafkaConfig,
    /// Schema registry URL.
    pub registry_url: String,
    /// Topic names.
    pub names: TopicNames,
    /// Offsets per chunk (and per checkpoint).
    pub chunk: i64,
    /// Items/s at most; 0 for no limit.
    pub max_rate: f64,
    /// Where the new model runs.
    pub device: Device,
    /// Its engine.
    pub engine: EngineConfig,
    /// Same limit as the stage's: longer texts are skipped (the stage dead-lettered them).
    pub limits: Limits,
    /// Who writes the checkpoints.
    pub by: String,
}

/// What a backfill run did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct BackfillReport {
    /// Upserts embedded and written in this run.
    pub embedded: i64,
    /// Tombstones written.
    pub deleted: i64,
    /// Records skipped (newer event seen, or malformed).
    pub skipped: i64,
    /// Seconds this run took.
    pub seconds: f64,
    /// Whether every partition is done.
    pub complete: bool,
}

/// Runs (or resumes) the backfill of the migration in progress until it is complete or
/// `shutdown`.
pub async fn run(
    config: BackfillConfig,
    control: ControlLog,
    shutdown: CancellationToken,
) -> Result<BackfillReport> {
    let started = Instant::now();
    let state = control.state();
    let migration = plan::current(&state)?.clone();
    let to: ModelRef = migration.to_model.parse()?;
    let work = Replayer::open(&config, &to, "backfill").await?;
    // Loaded now, so a model that cannot load fails the backfill before it writes anything.
    work.engine().await?;
    let (reader, kafka, items) = (&work.reader, &config.kafka, &work.items);
    let timeout = Duration::from_secs(30);
    let partitions = work.partitions()?;

    // Checkpoints: resume each partition, or start it at its current watermarks.
    let mut progress: BTreeMap<i32, BackfillProgress> = state
        .backfill(&migration.migration_id)
        .into_iter()
        .map(|b| (b.partition, b.clone()))
        .collect();
    for &p in &partitions {
        if progress.contains_key(&p) {
            continue;
        }
        let (low, high) = reader
            .fetch_watermarks(items, p, timeout)
            .map_err(Error::kafka(kafka))?;
        let b = BackfillProgress {
            migration_id: migration.migration_id.clone(),
            partition: p,
            start: low,
            end: high,
            next_end: high,
            embedded: 0,
            skipped: 0,
        };
        checkpoint(&control, &b, &config.by).await?;
        progress.insert(p, b);
    }
    if migration.phase == MigrationPhase::DualWrite {
        set_phase(&control, &migration, MigrationPhase::Backfill, &config.by).await?;
    }
    tracing::info!(
        migration = %migration.migration_id,
        model = %to,
        topic = %work.topic,
        partitions = ?progress.values().map(|b| (b.partition, b.start, b.next_end, b.end)).collect::<Vec<_>>(),
        "Backfilling newest first."
    );

    // Keys of everything after each partition's position: done, or the dual-write's.
    let mut seen: BTreeMap<i32, HashSet<Vec<u8>>> = BTreeMap::new();
    let mut scanned: BTreeMap<i32, i64> = BTreeMap::new();
    for (&p, b) in &progress {
        if b.done() {
            continue;
        }
        let set = seen.entry(p).or_default();
        let to_offset = work.scan_keys(p, b.next_end, set, &shutdown).await?;
        scanned.insert(p, to_offset);
    }

    let mut report = BackfillReport::default();
    let mut throttle = Throttle::new(config.max_rate);
    loop {
        let pending: Vec<i32> = progress
            .values()
            .filter(|b| !b.done())
            .map(|b| b.partition)
            .collect();
        if pending.is_empty() {
            report.complete = true;
            break;
        }
        for p in pending {
            if shutdown.is_cancelled() {
                report.seconds = started.elapsed().as_secs_f64();
                return Ok(report);
            }
            let b = progress
                .get_mut(&p)
                .expect("pending partitions have progress");
            let set = seen.entry(p).or_default();
            let from = scanned.get(&p).copied().unwrap_or(b.next_end);
            let upto = work.scan_keys(p, from, set, &shutdown).await?;
            scanned.insert(p, upto);

            let lo = (b.next_end - config.chunk).max(b.start);
            let records = work.read_range(p, lo, b.next_end, &shutdown).await?;
            let records_len = records.len();
            let chunk = work.prepare(records, set, &mut report, &shutdown).await;
            let embedded = work.embed(chunk).await?;
            // Anything that arrived while the chunk was embedded is newer than the chunk.
            let mut fresh = HashSet::new();
            let upto = work
                .scan_keys(p, scanned[&p], &mut fresh, &shutdown)
                .await?;
            scanned.insert(p, upto);
            let read = records_len;
            let count = work.produce(embedded, &fresh, &mut report).await?;
            tracing::info!(
                partition = p,
                from = lo,
                to = b.next_end,
                read,
                embedded = count.embedded,
                skipped = count.skipped,
                "Chunk written."
            );
            set.extend(fresh);
            b.embedded += count.embedded;
            b.skipped += count.skipped;
            b.next_end = lo;
            checkpoint(&control, b, &config.by).await?;
            metrics::counter!(super::metrics::BACKFILL_ITEMS).increment(count.embedded as u64);
            metrics::gauge!(super::metrics::BACKFILL_PROGRESS_RATIO, "partition" => p.to_string())
                .set(b.fraction());
            throttle.wait(count.embedded, &shutdown).await;
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    tracing::info!(?report, "Backfill complete.");
    Ok(report)
}

async fn checkpoint(control: &ControlLog, b: &BackfillProgress, by: &str) -> Result<()> {
    control
        .publish(&embedstream_schemas::records::ControlRecord {
            backfill: Some(b.clone()),
            ..plan::record(ControlKind::Backfill, by, now_ms())
        })
        .await
}

async fn set_phase(
    control: &ControlLog,
    m: &MigrationRecord,
    phase: MigrationPhase,
    by: &str,
) -> Result<()> {
    control
        .publish(&embedstream_schemas::records::ControlRecord {
            migration: Some(MigrationRecord { phase, ..m.clone() }),
            ..plan::record(ControlKind::Migration, by, now_ms())
        })
        .await
}

/// Items/s at most, averaged over the run.
struct Throttle {
    max_rate: f64,
    started: Instant,
    done: f64,
}

impl Throttle {
    fn new(max_rate: f64) -> Self {
        Self {
            max_rate,
            started: Instant::now(),
            done: 0.0,
        }
    }

    async fn wait(&mut self, items: i64, shutdown: &CancellationToken) {
        self.done += items as f64;
        if self.max_rate <= 0.0 {
            return;
        }
        let due = Duration::from_secs_f64(self.done / self.max_rate);
        if let Some(wait) = due.checked_sub(self.started.elapsed()) {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// One record of a chunk, decided.
pub(super) enum Step {
    Upsert {
        key: Vec<u8>,
        item_id: String,
        text: String,
        event_time: i64,
        offset: i64,
        partition: i32,
    },
    Delete {
        key: Vec<u8>,
    },
}

pub(super) struct Embedded {
    step: Step,
    vector: Option<Vec<f32>>,
}

#[derive(Default)]
pub(super) struct Count {
    pub(super) embedded: i64,
    pub(super) skipped: i64,
}

impl Replayer {
    /// Enqueues a record, waiting while the producer's queue is full.
    async fn send(&self, key: &[u8], payload: Option<&[u8]>) -> Result<DeliveryFuture> {
        loop {
            let mut r = FutureRecord::<[u8], [u8]>::to(&self.topic).key(key);
            if let Some(p) = payload {
                r = r.payload(p);
            }
            match self.producer.send_result(r) {
                Ok(d) => return Ok(d),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => return Err(Error::produce(&self.topic)(e)),
            }
        }
    }
}

/// A seeded sample of `n` live items of `items` as `(item_id, text)`: the whole topic is read,
/// the newest event of each item wins, deleted items and records the stage dead-lettered are
/// left out (what the Drift-Adapter trains on when no pairs are given).
pub async fn sample_items(
    config: &BackfillConfig,
    old: &ModelRef,
    n: usize,
    seed: u64,
    shutdown: &CancellationToken,
) -> Result<Vec<(String, String)>> {
    let replayer = Replayer::open(config, old, "adapter-sample").await?;
    let (mut seen, mut report) = (HashSet::new(), BackfillReport::default());
    let mut live = Vec::new();
    for p in replayer.partitions()? {
        let (low, high) = replayer
            .reader
            .fetch_watermarks(&replayer.items, p, Duration::from_secs(10))
            .map_err(Error::kafka(&replayer.kafka))?;
        let records = replayer.read_range(p, low, high, shutdown).await?;
        for step in replayer
            .prepare(records, &mut seen, &mut report, shutdown)
            .await
        {
            if let Step::Upsert { item_id, text, .. } = step {
                live.push((item_id, text));
            }
        }
    }
    live.sort_by_cached_key(|(id, _)| {
        embedstream_topics::hash::fnv1a64(format!("{seed}:{id}").as_bytes())
    });
    live.truncate(n);
    Ok(live)
}

/// Reads `items` and writes the new version's records: what the backfill and the consistency
/// checker's re-queue share.
pub(super) struct Replayer {
    pub(super) reader: StreamConsumer,
    producer: FutureProducer,
    pub(super) codec: Codec,
    pub(super) items: String,
    pub(super) topic: String,
    pub(super) to: ModelRef,
    normalized: bool,
    /// The new model, loaded on first use (a check that finds nothing to re-queue needs none).
    model: tokio::sync::OnceCell<(Engine, crate::embed::engine::EngineThreads)>,
    device: Device,
    engine_config: EngineConfig,
    name: String,
    limits: Limits,
    pub(super) kafka: KafkaConfig,
}

impl Replayer {
    /// Connects; makes sure `to`'s topic exists with as many partitions as `items` (the stage
    /// creates it when the version turns active; the backfill and the checker must not depend
    /// on a stage running). The model loads on first use, or with [`Self::engine`].
    pub(super) async fn open(config: &BackfillConfig, to: &ModelRef, name: &str) -> Result<Self> {
        let spec = catalog::lookup(to)?;
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
            normalized: spec.normalized,
            model: tokio::sync::OnceCell::new(),
            device: config.device,
            engine_config: config.engine,
            name: name.to_owned(),
            limits: config.limits,
            kafka: kafka.clone(),
        };
        let count = i32::try_from(replayer.partitions()?.len()).unwrap_or(i32::MAX);
        Admin::new(kafka, Duration::from_secs(30))?
            .ensure(&[TopicSpec::compacted(replayer.topic.clone(), count)])
            .await?;
        Ok(replayer)
    }

    /// The new model's engine, loading it the first time.
    pub(super) async fn engine(&self) -> Result<&Engine> {
        let (engine, _threads) = self
            .model
            .get_or_try_init(|| async {
                let (m, device, config, name) = (
                    self.to.clone(),
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
    pub(super) fn partitions(&self) -> Result<Vec<i32>> {
        partitions(&self.reader, &self.items, &self.kafka)
    }
}

/// A consumer with no group membership, for metadata and range reads.
fn new_reader(kafka: &KafkaConfig, name: &str) -> Result<StreamConsumer> {
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
pub(super) fn partitions(
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

impl Replayer {
    /// Reads `[lo, hi)` of partition `p` of `items` (fewer where compaction removed records).
    pub(super) async fn read_range(
        &self,
        p: i32,
        lo: i64,
        hi: i64,
        shutdown: &CancellationToken,
    ) -> Result<Vec<OwnedMessage>> {
        self.read_topic_range(&self.items, p, lo, hi, shutdown)
            .await
    }

    /// Reads `[lo, hi)` of partition `p` of `topic` (fewer where compaction removed records).
    pub(super) async fn read_topic_range(
        &self,
        topic: &str,
        p: i32,
        lo: i64,
        hi: i64,
        shutdown: &CancellationToken,
    ) -> Result<Vec<OwnedMessage>> {
        let mut out = Vec::new();
        if hi <= lo {
            return Ok(out);
        }
        // A consumer of its own for each range: one re-assigned to another position may still
        // hand out records it fetched for the previous one (seen here: a chunk's read ended at
        // once on a prefetched record past its end, and the chunk was lost).
        let reader = new_reader(&self.kafka, "range")?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, p, Offset::Offset(lo))
            .map_err(Error::kafka(&self.kafka))?;
        reader.assign(&tpl).map_err(Error::kafka(&self.kafka))?;
        let mut idle = 0;
        loop {
            if shutdown.is_cancelled() {
                return Ok(out);
            }
            match tokio::time::timeout(Duration::from_secs(1), reader.recv()).await {
                Ok(Ok(m)) if m.partition() != p || m.topic() != topic || m.offset() < lo => {
                    tracing::warn!(
                        topic = m.topic(),
                        partition = m.partition(),
                        offset = m.offset(),
                        "Ignoring a record outside the assigned range."
                    );
                }
                Ok(Ok(m)) => {
                    idle = 0;
                    if m.offset() >= hi {
                        break;
                    }
                    let last = m.offset() >= hi - 1;
                    out.push(m.detach());
                    if last {
                        break;
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, topic, partition = p, "Read error; retrying.");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(_) => {
                    // Nothing more: the rest of the range was compacted away.
                    let (_, high) = self
                        .reader
                        .fetch_watermarks(topic, p, Duration::from_secs(10))
                        .map_err(Error::kafka(&self.kafka))?;
                    idle += 1;
                    if high <= lo || idle >= 5 {
                        break;
                    }
                }
            }
        }
        Ok(out)
    }

    /// Adds to `keys` the keys of partition `p` from `from` to its current end; returns that
    /// end.
    pub(super) async fn scan_keys(
        &self,
        p: i32,
        from: i64,
        keys: &mut HashSet<Vec<u8>>,
        shutdown: &CancellationToken,
    ) -> Result<i64> {
        let (_, high) = self
            .reader
            .fetch_watermarks(&self.items, p, Duration::from_secs(10))
            .map_err(Error::kafka(&self.kafka))?;
        if high <= from {
            return Ok(from.max(high));
        }
        for m in self.read_range(p, from, high, shutdown).await? {
            if let Some(k) = m.key() {
                keys.insert(k.to_vec());
            }
        }
        Ok(high)
    }

    /// Newest first; the items already seen are skipped, the rest marked seen.
    pub(super) async fn prepare(
        &self,
        mut records: Vec<OwnedMessage>,
        seen: &mut HashSet<Vec<u8>>,
        report: &mut BackfillReport,
        shutdown: &CancellationToken,
    ) -> Vec<Step> {
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
            let decided = match m.payload() {
                None => validate::tombstone(Some(&key)),
                Some(bytes) => {
                    let mut backoff = Duration::from_millis(100);
                    loop {
                        match self
                            .codec
                            .decode::<embedstream_schemas::records::ItemEvent>(bytes)
                            .await
                        {
                            Ok(event) => break validate::event(event, self.limits),
                            Err(e) if e.is_retryable() && !shutdown.is_cancelled() => {
                                tracing::warn!(error = %e, "Registry unavailable; retrying the record.");
                                tokio::time::sleep(backoff).await;
                                backoff = (backoff * 2).min(Duration::from_secs(5));
                            }
                            Err(e) => break Err(validate::Poison::from(&e)),
                        }
                    }
                }
            };
            match decided {
                Ok(Work::Upsert {
                    item_id,
                    text,
                    event_time,
                }) => steps.push(Step::Upsert {
                    key,
                    item_id,
                    text,
                    event_time,
                    offset: m.offset(),
                    partition: m.partition(),
                }),
                Ok(Work::Delete { .. }) => steps.push(Step::Delete { key }),
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
        steps
    }

    pub(super) async fn embed(&self, steps: Vec<Step>) -> Result<Vec<Embedded>> {
        let texts: Vec<String> = steps
            .iter()
            .filter_map(|s| match s {
                Step::Upsert { text, .. } => Some(text.clone()),
                Step::Delete { .. } => None,
            })
            .collect();
        let mut vectors = if texts.is_empty() {
            Vec::new()
        } else {
            let engine = self.engine().await?;
            match engine.embed(texts.clone()).await {
                Ok(v) => v.into_iter().map(Some).collect(),
                // One bad text fails its batch: embed one by one to skip only it.
                Err(_) => {
                    let mut one_by_one = Vec::with_capacity(texts.len());
                    for t in texts {
                        one_by_one.push(engine.embed(vec![t]).await.ok().and_then(|mut v| v.pop()));
                    }
                    one_by_one
                }
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

    pub(super) async fn produce(
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
                Step::Upsert { key, .. } | Step::Delete { key } => key.clone(),
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
                    };
                    count.embedded += 1;
                    report.embedded += 1;
                    Some(
                        self.codec
                            .encode(&self.topic, &record)
                            .await
                            .map_err(|source| Error::Codec { source })?,
                    )
                }
                Step::Delete { .. } => {
                    report.deleted += 1;
                    None
                }
            };
            deliveries.push(self.send(&key, payload.as_deref()).await?);
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
