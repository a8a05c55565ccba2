//! The Kafka side of the sink: one OS thread reads the embedding topic and applies each
//! record to the index, partition by partition in offset order.
//!
//! Guarantees:
//! - **Recovery is snapshot + replay.** Every partition of the topic is assigned to this
//!   replica by hand (each replica holds the whole index, so there is nothing to balance and no
//!   rebalance to wait for after a kill -9), starting at the snapshots'
//!   [`ShardedIndex::resume_offsets`] or at the beginning. Offsets are also committed to the
//!   replica's group, but only for lag tools: a restart never reads them.
//! - **A bad record never blocks its partition.** Poison (bad framing or Avro, wrong model, key and
//!   item id disagree, wrong dimension, NaN or infinite, zero norm) is counted
//!   (`embedstream_sink_poison_records_total{error_type}`), logged, and treated as the end of
//!   the item's valid history: the item is removed, as a tombstone would. Keeping the previous
//!   vector would serve one the topic no longer holds once log compaction drops it, so the
//!   index would depend on whether compaction ran; removing it gives the same answer either way.
//! - **Retryable conditions keep the order.** A full hot part, registry trouble (down, slow,
//!   5xx) or a schema id the registry does not know pauses only that partition; its record (and whatever of the partition was already
//!   fetched) waits in order and is tried again after `kafka.retry_backoff`.
//!
//! - **A consumer that stops fetching is replaced.** When a partition that is not paused has
//!   not moved for [`Loop::stall_after`] while a separate client sees records past its
//!   position ([`embedstream_topics::stall::records_past`]), the loop gives the consumer up and
//!   a new one resumes every partition where the index has applied up to
//!   (`embedstream_sink_consumer_replaced_total`). The loop judges by its own positions, not
//!   the client's statistics: a client in that state reports a stale end.
//!
//! Not guaranteed: the record whose apply is under way when the process is killed is
//! replayed on restart (harmless: the index ignores versions it already holds).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use embedstream_schemas::records::EmbeddingRecord;
use embedstream_schemas::{Codec, CodecError};
use embedstream_topics::stall::records_past;
use embedstream_topics::time::now_ms;
use embedstream_topics::{KafkaConfig, ModelRef};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::config::SinkConfig;
use super::error::{ServiceError, ServiceResult};
use super::metrics as m;
use crate::{Applied, Attributes, Delete, ShardedIndex, Source, Upsert};

/// What the consumer has done, shared with `GET /v1/stats` and the lag gauge.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    state: Mutex<ProgressState>,
}

/// A copy of the consumer's progress.
#[derive(Debug, Default, Clone, Serialize)]
pub(crate) struct ProgressState {
    /// Per partition, the next offset to process (everything below it is applied or skipped).
    pub(crate) positions: BTreeMap<i32, i64>,
    /// Per partition, the high watermark last reported by the client's statistics.
    pub(crate) high_watermarks: BTreeMap<i32, i64>,
    /// Records consumed since start.
    pub(crate) consumed: u64,
    /// Poison records skipped since start.
    pub(crate) poison_records: u64,
    /// Partitions paused for a retry now.
    pub(crate) blocked_partitions: BTreeSet<i32>,
}

impl Progress {
    pub(crate) fn lock(&self) -> MutexGuard<'_, ProgressState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn snapshot(&self) -> ProgressState {
        self.lock().clone()
    }
}

impl ProgressState {
    /// Records behind the high watermark, summed over partitions (partitions whose watermark
    /// is not known yet count 0).
    pub(crate) fn lag(&self) -> i64 {
        self.high_watermarks
            .iter()
            .map(|(p, high)| (high - self.positions.get(p).copied().unwrap_or(0)).max(0))
            .sum()
    }
}

/// The consumer's context: turns the client's statistics into the lag gauge.
#[derive(Debug)]
pub(crate) struct SinkContext {
    topic: String,
    progress: Arc<Progress>,
}

impl ClientContext for SinkContext {
    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        let mut progress = self.progress.lock();
        for (&partition, p) in &topic.partitions {
            if partition < 0 || p.hi_offset < 0 {
                continue;
            }
            progress.high_watermarks.insert(partition, p.hi_offset);
            let at = progress.positions.get(&partition).copied().unwrap_or(0);
            metrics::gauge!(m::CONSUMER_LAG, "index" => self.topic.clone(), "partition" => partition.to_string())
                .set((p.hi_offset - at).max(0) as f64);
        }
    }
}

impl ConsumerContext for SinkContext {}

/// The brokers with the sink's own client properties on top.
pub(crate) fn kafka_config(config: &SinkConfig) -> ServiceResult<KafkaConfig> {
    let mut kafka = config.kafka.clone();
    for (k, v) in &config.settings.kafka.properties {
        kafka = kafka
            .with_property(k, v)
            .map_err(|e| ServiceError::Settings {
                field: format!("kafka.properties.{k}"),
                reason: e.to_string(),
            })?;
    }
    Ok(kafka)
}

/// Creates the consumer (nothing is assigned yet).
pub(crate) fn create(
    config: &SinkConfig,
    progress: Arc<Progress>,
) -> ServiceResult<BaseConsumer<SinkContext>> {
    let settings = &config.settings.kafka;
    let kafka = kafka_config(config)?;
    let mut client = kafka.client();
    client
        .set("group.id", &config.group)
        .set("enable.auto.commit", "true")
        .set(
            "auto.commit.interval.ms",
            settings.commit_every.as_millis().max(1).to_string(),
        )
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        // Freshness: Kafka answers a fetch as soon as there is data (fetch.min.bytes 1), so
        // under load this costs nothing; idle, it means ~100 fetches/s per broker.
        .set("fetch.wait.max.ms", "10")
        .set(
            "statistics.interval.ms",
            settings.statistics_every.as_millis().max(1).to_string(),
        );
    client
        .create_with_context(SinkContext {
            topic: config.topic.clone(),
            progress,
        })
        .map_err(|source| ServiceError::Kafka {
            op: "create the consumer",
            source,
        })
}

/// What the loop needs besides the consumer.
pub(crate) struct Loop {
    pub(crate) index: Arc<ShardedIndex>,
    pub(crate) codec: Codec,
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) model: ModelRef,
    pub(crate) topic: String,
    pub(crate) retry_backoff: Duration,
    pub(crate) metadata_refresh: Duration,
    pub(crate) progress: Arc<Progress>,
    pub(crate) shutdown: CancellationToken,
    /// The brokers (with the sink's client properties), for the stall probe.
    pub(crate) kafka: KafkaConfig,
    /// How long a partition's fetching may stall, with records past it, before the consumer
    /// is replaced.
    pub(crate) stall_after: Duration,
}

/// Why [`Loop::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// Shutdown.
    Stopped,
    /// The consumer stopped fetching a partition with records; replace it.
    Stuck,
}

/// How often the loop looks for a stalled partition.
const STALL_CHECK: Duration = Duration::from_secs(10);

/// A partition waiting to retry its oldest record.
#[derive(Debug)]
struct Blocked {
    queue: VecDeque<OwnedMessage>,
    retry_at: Instant,
}

/// What processing one record came to.
enum Outcome {
    /// Applied or skipped: the partition moves on.
    Done,
    /// Try the same record again later (`error_type` for the metric).
    Retry(&'static str),
}

impl Loop {
    /// Reads until `shutdown`, then commits what was processed, or until the consumer is
    /// stuck. Returns an error only for what the sink cannot go on after. A replacement
    /// consumer (`replacing`) resumes each partition where the index has applied up to.
    pub(crate) fn run(
        &self,
        consumer: &BaseConsumer<SinkContext>,
        replacing: bool,
    ) -> ServiceResult<Ended> {
        let mut assigned = BTreeSet::new();
        let mut blocked: HashMap<i32, Blocked> = HashMap::new();
        let mut refreshed = Instant::now();
        let mut looked_at = Instant::now();
        // Per partition: its position when last seen moving, and since when.
        let mut moved: HashMap<i32, (i64, Instant)> = HashMap::new();
        let mut waiting_logged = false;
        while !self.shutdown.is_cancelled() {
            if looked_at.elapsed() >= STALL_CHECK {
                looked_at = Instant::now();
                if self.stuck(&mut moved, &blocked) {
                    return Ok(Ended::Stuck);
                }
            }
            if assigned.is_empty() || refreshed.elapsed() >= self.metadata_refresh {
                refreshed = Instant::now();
                self.assign_new(consumer, &mut assigned, replacing)?;
                if assigned.is_empty() {
                    if !waiting_logged {
                        tracing::warn!(topic = %self.topic, "The topic does not exist yet; waiting for it.");
                        waiting_logged = true;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                    continue;
                }
            }
            self.retry_blocked(consumer, &mut blocked)?;
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(msg)) => {
                    let msg = msg.detach();
                    metrics::counter!(m::CONSUMED_TOTAL, "index" => self.topic.clone())
                        .increment(1);
                    self.progress.lock().consumed += 1;
                    let partition = msg.partition();
                    if let Some(b) = blocked.get_mut(&partition) {
                        b.queue.push_back(msg);
                        continue;
                    }
                    if let Outcome::Retry(kind) = self.process(consumer, &msg)? {
                        self.block(consumer, &mut blocked, msg, kind);
                    }
                }
                Some(Err(error)) => tracing::warn!(error = %error, "Consumer error; continuing."),
                None => self.past_markers(consumer, &blocked),
            }
        }
        if let Err(error) = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync) {
            tracing::debug!(error = %error, "Nothing committed at shutdown.");
        }
        Ok(Ended::Stopped)
    }

    /// Whether a partition that is not paused stalled with records past it (see the module
    /// docs); `moved` keeps each partition's last moving position between calls.
    fn stuck(
        &self,
        moved: &mut HashMap<i32, (i64, Instant)>,
        blocked: &HashMap<i32, Blocked>,
    ) -> bool {
        let now = Instant::now();
        let positions = self.progress.lock().positions.clone();
        let mut stalled = Vec::new();
        for (&partition, &at) in &positions {
            match moved.get(&partition) {
                Some(&(last, since)) if last == at && !blocked.contains_key(&partition) => {
                    if now.duration_since(since) >= self.stall_after {
                        stalled.push((partition, at));
                    }
                }
                _ => {
                    moved.insert(partition, (at, now));
                }
            }
        }
        match records_past(&self.kafka, &self.topic, &stalled) {
            Some((partition, position, end)) => {
                tracing::warn!(
                    topic = %self.topic,
                    partition,
                    position,
                    end,
                    "The consumer stopped fetching a partition with records while the brokers answer; replacing it."
                );
                metrics::counter!(m::CONSUMER_REPLACED, "index" => self.topic.clone()).increment(1);
                moved.clear();
                true
            }
            None => false,
        }
    }

    /// Assigns the topic's partitions that are not assigned yet, each from the snapshots'
    /// resume offset or from the beginning.
    fn assign_new(
        &self,
        consumer: &BaseConsumer<SinkContext>,
        assigned: &mut BTreeSet<i32>,
        replacing: bool,
    ) -> ServiceResult<()> {
        let metadata = match consumer.fetch_metadata(Some(&self.topic), Duration::from_secs(10)) {
            Ok(m) => m,
            Err(error) => {
                tracing::warn!(error = %error, "Cannot read the topic's metadata; retrying.");
                return Ok(());
            }
        };
        let Some(topic) = metadata.topics().iter().find(|t| t.name() == self.topic) else {
            return Ok(());
        };
        let mut resume = self.index.resume_offsets();
        if replacing {
            // Every record before a partition's applied offset is in the index.
            resume.extend(self.index.applied_offsets());
        }
        let mut tpl = TopicPartitionList::new();
        let mut added = Vec::new();
        for p in topic.partitions().iter().map(|p| p.id()) {
            if assigned.contains(&p) {
                continue;
            }
            let from = resume.get(&p).copied();
            let offset = from.map_or(Offset::Beginning, Offset::Offset);
            tpl.add_partition_offset(&self.topic, p, offset)
                .map_err(|source| ServiceError::Kafka {
                    op: "build the assignment",
                    source,
                })?;
            self.progress.lock().positions.insert(p, from.unwrap_or(0));
            added.push((p, from));
        }
        if added.is_empty() {
            return Ok(());
        }
        consumer
            .incremental_assign(&tpl)
            .map_err(|source| ServiceError::Kafka {
                op: "assign the topic's partitions",
                source,
            })?;
        for (p, from) in &added {
            assigned.insert(*p);
            match from {
                Some(o) => tracing::info!(
                    partition = p,
                    offset = o,
                    "Replaying the partition from its snapshot offset."
                ),
                None => tracing::info!(
                    partition = p,
                    "Reading the partition from the beginning (no snapshot covers it)."
                ),
            }
        }
        Ok(())
    }

    /// While idle, moves each unblocked partition's position past what the client read but
    /// never hands out: the commit markers of transactions take offsets of their own, so
    /// without this a partition written in transactions would never look caught up.
    fn past_markers(&self, consumer: &BaseConsumer<SinkContext>, blocked: &HashMap<i32, Blocked>) {
        let Ok(positions) = consumer.position() else {
            return;
        };
        for e in positions.elements_for_topic(&self.topic) {
            let (partition, Offset::Offset(next)) = (e.partition(), e.offset()) else {
                continue;
            };
            if blocked.contains_key(&partition) {
                continue;
            }
            let mut progress = self.progress.lock();
            let at = progress.positions.entry(partition).or_insert(next);
            if next > *at {
                *at = next;
                drop(progress);
                let _ = consumer.store_offset(&self.topic, partition, next - 1);
            }
        }
    }

    fn block(
        &self,
        consumer: &BaseConsumer<SinkContext>,
        blocked: &mut HashMap<i32, Blocked>,
        msg: OwnedMessage,
        kind: &'static str,
    ) {
        let partition = msg.partition();
        metrics::counter!(m::RETRIES_TOTAL, "index" => self.topic.clone(), "error_type" => kind)
            .increment(1);
        tracing::warn!(
            partition,
            offset = msg.offset(),
            error_type = kind,
            "Pausing the partition to retry a record."
        );
        if let Err(error) = consumer.pause(&self.partition_list(partition)) {
            tracing::warn!(error = %error, partition, "Cannot pause the partition; buffering its records.");
        }
        blocked.insert(
            partition,
            Blocked {
                queue: VecDeque::from([msg]),
                retry_at: Instant::now() + self.retry_backoff,
            },
        );
        self.blocked_changed(blocked);
    }

    fn retry_blocked(
        &self,
        consumer: &BaseConsumer<SinkContext>,
        blocked: &mut HashMap<i32, Blocked>,
    ) -> ServiceResult<()> {
        let due: Vec<i32> = blocked
            .iter()
            .filter(|(_, b)| b.retry_at <= Instant::now())
            .map(|(p, _)| *p)
            .collect();
        for partition in due {
            let b = blocked.get_mut(&partition).expect("listed above");
            while let Some(msg) = b.queue.front() {
                match self.process(consumer, msg)? {
                    Outcome::Done => {
                        b.queue.pop_front();
                    }
                    Outcome::Retry(kind) => {
                        metrics::counter!(m::RETRIES_TOTAL, "index" => self.topic.clone(), "error_type" => kind)
                            .increment(1);
                        b.retry_at = Instant::now() + self.retry_backoff;
                        break;
                    }
                }
            }
            if b.queue.is_empty() {
                blocked.remove(&partition);
                if let Err(error) = consumer.resume(&self.partition_list(partition)) {
                    tracing::warn!(error = %error, partition, "Cannot resume the partition.");
                }
                tracing::info!(partition, "Partition resumed.");
            }
        }
        self.blocked_changed(blocked);
        Ok(())
    }

    fn blocked_changed(&self, blocked: &HashMap<i32, Blocked>) {
        metrics::gauge!(m::BLOCKED_PARTITIONS, "index" => self.topic.clone())
            .set(blocked.len() as f64);
        self.progress.lock().blocked_partitions = blocked.keys().copied().collect();
    }

    fn partition_list(&self, partition: i32) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.topic, partition);
        tpl
    }

    /// Applies one record, or skips it as poison; `Retry` leaves everything unchanged.
    fn process(
        &self,
        consumer: &BaseConsumer<SinkContext>,
        msg: &OwnedMessage,
    ) -> ServiceResult<Outcome> {
        let (partition, offset) = (msg.partition(), msg.offset());
        let key = match msg.key().map(std::str::from_utf8) {
            Some(Ok(k)) if !k.is_empty() => k,
            Some(Ok(_)) | None => {
                self.poison(msg, None, "missing_key", "the record has no key (item id)");
                return Ok(self.done(consumer, partition, offset));
            }
            Some(Err(_)) => {
                self.poison(msg, None, "invalid_key", "the key is not UTF-8");
                return Ok(self.done(consumer, partition, offset));
            }
        };
        let delete = || Delete {
            item_id: key.to_owned(),
            partition,
            offset,
            source: header_source(msg),
        };
        let Some(payload) = msg.payload() else {
            self.applied(msg, self.index.apply(delete()), None)?;
            return Ok(self.done(consumer, partition, offset));
        };
        let record = match self
            .runtime
            .block_on(self.codec.decode::<EmbeddingRecord>(payload))
        {
            Ok(r) => r,
            // Registry trouble pauses the partition. So does a schema id the registry does not
            // know: the stage writes only registered schemas, so it means the registry lost its
            // data, and deleting the item for it would lose a good vector.
            Err(e) if e.is_retryable() || matches!(e, CodecError::UnknownSchemaId { .. }) => {
                return Ok(Outcome::Retry(e.kind()));
            }
            Err(e) => {
                self.poison(msg, Some(key), e.kind(), &e.to_string());
                return Ok(self.done(consumer, partition, offset));
            }
        };
        let mismatch = if record.item_id != key {
            Some((
                "key_mismatch",
                format!("item_id {:?} is not the key", record.item_id),
            ))
        } else if record.model_id != self.model.id
            || u32::try_from(record.model_version).ok() != Some(self.model.version)
        {
            Some((
                "wrong_model",
                format!(
                    "record of {}@{} on the topic of {}",
                    record.model_id, record.model_version, self.model
                ),
            ))
        } else if usize::try_from(record.dimension).ok() != Some(record.vector.len()) {
            Some((
                "dimension_mismatch",
                format!(
                    "dimension field {} but {} components",
                    record.dimension,
                    record.vector.len()
                ),
            ))
        } else {
            None
        };
        if let Some((kind, message)) = mismatch {
            self.poison(msg, Some(key), kind, &message);
            return Ok(self.done(consumer, partition, offset));
        }
        let event_time_ms = record.event_time;
        let source =
            (record.source.partition >= 0 && record.source.offset >= 0).then_some(Source {
                partition: record.source.partition,
                offset: record.source.offset,
            });
        let result = self.index.apply(Upsert {
            item_id: record.item_id,
            vector: record.vector,
            partition,
            offset,
            event_time_ms,
            source,
            attributes: Attributes::new(record.attributes),
        });
        match result {
            Err(e) if e.is_retryable() => Ok(Outcome::Retry("hot_full")),
            Err(e) if e.is_poison() => {
                self.poison(msg, Some(key), poison_kind(&e), &e.to_string());
                Ok(self.done(consumer, partition, offset))
            }
            other => {
                self.applied(msg, other, Some(event_time_ms))?;
                Ok(self.done(consumer, partition, offset))
            }
        }
    }

    /// Records freshness for a write that changed what queries see; stops on a fatal error.
    fn applied(
        &self,
        msg: &OwnedMessage,
        result: crate::Result<Applied>,
        event_time_ms: Option<i64>,
    ) -> ServiceResult<()> {
        match result {
            Ok(Applied::Upserted | Applied::Deleted) => {
                let now = now_ms();
                if let Some(ts) = msg.timestamp().to_millis() {
                    metrics::histogram!(m::FRESHNESS_SECONDS, "index" => self.topic.clone())
                        .record((now - ts).max(0) as f64 / 1000.0);
                }
                if let Some(ev) = event_time_ms.filter(|&t| t > 0) {
                    metrics::histogram!(m::EVENT_FRESHNESS_SECONDS, "index" => self.topic.clone())
                        .record((now - ev).max(0) as f64 / 1000.0);
                }
                Ok(())
            }
            Ok(Applied::AlreadyCovered | Applied::Stale | Applied::OtherSlice) => Ok(()),
            Err(e) if e.is_poison() => {
                // Only a tombstone or poison-delete with an empty id gets here; nothing to do.
                tracing::debug!(error = %e, "Delete skipped.");
                Ok(())
            }
            Err(source) => Err(ServiceError::Index { source }),
        }
    }

    fn poison(&self, msg: &OwnedMessage, key: Option<&str>, kind: &'static str, message: &str) {
        metrics::counter!(m::POISON_TOTAL, "index" => self.topic.clone(), "error_type" => kind)
            .increment(1);
        self.progress.lock().poison_records += 1;
        tracing::warn!(
            partition = msg.partition(),
            offset = msg.offset(),
            item_id = key.unwrap_or(""),
            error_type = kind,
            error = message,
            "Poison record skipped; the item is removed."
        );
        if let Some(key) = key {
            // See the module docs: the item's valid history ends here.
            let _ = self.index.apply(Delete {
                item_id: key.to_owned(),
                partition: msg.partition(),
                offset: msg.offset(),
                source: None,
            });
        }
    }

    fn done(&self, consumer: &BaseConsumer<SinkContext>, partition: i32, offset: i64) -> Outcome {
        self.progress.lock().positions.insert(partition, offset + 1);
        // librdkafka commits the stored offset + 1: the next record to read.
        if let Err(error) = consumer.store_offset(&self.topic, partition, offset) {
            tracing::debug!(error = %error, partition, "Offset not stored.");
        }
        Outcome::Done
    }
}

fn poison_kind(e: &crate::Error) -> &'static str {
    match e {
        crate::Error::DimensionMismatch { .. } => "dimension_mismatch",
        crate::Error::NonFinite { .. } => "non_finite",
        crate::Error::ZeroVector => "zero_vector",
        crate::Error::EmptyItemId => "missing_key",
        _ => "invalid_record",
    }
}

/// The source event a tombstone names in its headers (see `embedstream_schemas::headers`).
fn header_source(msg: &OwnedMessage) -> Option<Source> {
    let headers = msg.headers()?;
    let (partition, offset) = embedstream_schemas::headers::source(|name| {
        headers.iter().find(|h| h.key == name).and_then(|h| h.value)
    })?;
    Some(Source { partition, offset })
}
