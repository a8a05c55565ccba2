//! The stream stage: a consumer group on `items` decodes item events, embeds them with every
//! active model version, and writes one record per version to `embeddings.<model>.v<N>`, keyed
//! by item id; deletes become tombstones on every active topic; bad records go to `items.dlq`
//! with the reason.
//!
//! Guarantees (at-least-once): an event's offset is stored only after every output record of
//! it was acknowledged by the broker, and offsets move in order per partition; a revoked
//! partition is drained (or its events left to the next owner) before it is given up; on
//! shutdown every batch taken is finished and committed. Outputs are produced in consumption
//! order by an idempotent producer, so the last record per key on an embedding topic is the
//! last event per key on `items`; a re-delivered event yields the same key, vector and source
//! coordinates (only `embed_time` differs). A poisoned record never blocks its partition.
//! Not guaranteed: exactly-once (the broker has no transactions) — duplicates after a crash
//! are harmless on compacted topics.
//!
//! Shape: a consumer thread ([`consumer`]) → batches → decode and submit to the engines →
//! produce in order → acknowledge and store offsets, each step a task joined by bounded
//! channels, so several batches are in flight and the model never waits for the broker.

pub mod consumer;
pub mod metrics;
pub mod models;
pub mod offsets;
pub mod validate;

use std::sync::Arc;
use std::time::{Duration, Instant};

use ::metrics::{counter, histogram};
use embedstream_schemas::Codec;
use embedstream_schemas::records::{
    DeadLetter, EmbeddingRecord, ItemEvent, ModelState, SourceCoordinates,
};
use embedstream_topics::admin::{Admin, Layout, named_platform_topics};
use embedstream_topics::names::TopicNames;
use embedstream_topics::{KafkaConfig, ModelRef, catalog};
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use self::consumer::{Batch, Batching, StageContext, Tracker};
use self::metrics as m;
use self::models::{ActiveModel, ActiveModels};
use self::validate::{Limits, Poison, Work};
use embedstream_topics::time::now_ms;

use crate::control::ControlLog;
use crate::embed::burn_model::Device;
use crate::embed::engine::{EngineConfig, EngineError, Pending};
use crate::error::{Error, Result};

/// The stage's name in dead letters and logs.
pub const STAGE: &str = "embed-stage";

/// How the stage runs.
#[derive(Debug, Clone)]
pub struct StageConfig {
    /// The brokers and the client properties of every Kafka client.
    pub kafka: KafkaConfig,
    /// Schema registry URL.
    pub registry_url: String,
    /// Topic names (prefix).
    pub names: TopicNames,
    /// Consumer group of the stage (processes of one group split the partitions).
    pub group: String,
    /// Partitions of topics the stage creates.
    pub layout: Layout,
    /// Where the models run.
    pub device: Device,
    /// Engine batching.
    pub engine: EngineConfig,
    /// How the consumer cuts batches.
    pub batching: Batching,
    /// Batches in flight between the consumer and the acknowledgements.
    pub in_flight_batches: usize,
    /// What is accepted.
    pub limits: Limits,
    /// When the control log has no model version at all, this one is registered as ACTIVE.
    pub initial_model: Option<ModelRef>,
    /// How long a revoke or a shutdown waits for in-flight events.
    pub drain_timeout: Duration,
}

/// One consumed record, decoded and checked.
struct Entry {
    message: OwnedMessage,
    outcome: std::result::Result<Work, Poison>,
}

/// A batch whose texts are queued on every active version's engine.
struct Submitted {
    entries: Vec<Entry>,
    models: Vec<ActiveModel>,
    /// Per model, the vectors of the batch's upserts in order.
    pending: Vec<Pending>,
    texts: Vec<String>,
    embed_start: Instant,
}

/// Output records of a batch on their way to the broker.
struct Sent {
    events: Vec<(String, i32, i64)>,
    event_times: Vec<i64>,
    /// Per record: its metric label (the model version, or `dlq`), its topic, its delivery.
    deliveries: Vec<(String, String, DeliveryFuture)>,
    produce_start: Instant,
}

/// Runs the stage until `shutdown`; returns after the taken batches are finished and
/// committed. An error is fatal (the process should exit non-zero and be restarted: nothing
/// unacknowledged was committed).
pub async fn run(config: StageConfig, shutdown: CancellationToken) -> Result<()> {
    let codec = Codec::new(&config.registry_url);
    let admin = Admin::new(&config.kafka, Duration::from_secs(30))?;
    admin
        .ensure(&named_platform_topics(&config.names, config.layout, &[]))
        .await?;
    let control = ControlLog::open(
        &config.kafka,
        codec.clone(),
        &config.names.control(),
        shutdown.clone(),
    )
    .await?;
    if let Some(initial) = &config.initial_model
        && control.state().models().next().is_none()
    {
        let spec = catalog::lookup(initial)?;
        control
            .set_model_state(&spec, ModelState::Active, STAGE)
            .await?;
        tracing::info!(model = %initial, "Empty control log: registered the initial model as active.");
    }

    let kafka = Error::kafka(&config.kafka);
    let items = config.names.items();
    let tracker = Arc::new(Tracker::default());
    let consumer: BaseConsumer<StageContext> = config
        .kafka
        .client()
        .set("group.id", &config.group)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // Eager assignors only: the revoke logic drops batches cut before a revoke, which is
        // right only when every partition is revoked (cooperative-sticky would lose them).
        .set("partition.assignment.strategy", "range,roundrobin")
        // Kafka's default. A crashed member's partitions move after this long.
        .set("session.timeout.ms", "45000")
        .set("statistics.interval.ms", "5000")
        .create_with_context(StageContext {
            tracker: tracker.clone(),
            topic: items.clone(),
            drain_timeout: config.drain_timeout,
        })
        .map_err(&kafka)?;
    consumer.subscribe(&[&items]).map_err(&kafka)?;
    let consumer = Arc::new(consumer);

    let producer: FutureProducer = config
        .kafka
        .client()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        // Keep retrying through a broker restart; a record that still fails is fatal.
        .set("message.timeout.ms", "300000")
        .set("queue.buffering.max.messages", "200000")
        // The Java client's partitioner, so keys land where Java producers put them.
        .set("partitioner", "murmur2_random")
        .create()
        .map_err(&kafka)?;

    let models = ActiveModels::new(
        config.device,
        config.engine,
        admin,
        config.names.clone(),
        config.layout,
    );

    let (batch_tx, batch_rx) = mpsc::channel::<Batch>(1);
    let (submitted_tx, submitted_rx) = mpsc::channel::<Submitted>(config.in_flight_batches);
    let (sent_tx, sent_rx) = mpsc::channel::<Sent>(config.in_flight_batches);

    let poll_stop = shutdown.child_token();
    let poll_thread = {
        let consumer = consumer.clone();
        let stop = poll_stop.clone();
        let batching = config.batching;
        std::thread::Builder::new()
            .name("stage-consumer".into())
            .spawn(move || consumer::consume_loop(&consumer, batching, &batch_tx, &stop))
            .map_err(Error::io("stage-consumer thread"))?
    };

    let prepare = tokio::spawn(prepare_loop(
        batch_rx,
        submitted_tx,
        codec.clone(),
        control.clone(),
        models,
        config.limits,
        shutdown.clone(),
    ));
    let produce = tokio::spawn(produce_loop(
        submitted_rx,
        sent_tx,
        producer.clone(),
        codec,
        config.names.items_dlq(),
    ));
    let ack = tokio::spawn(ack_loop(sent_rx, consumer.clone(), tracker.clone()));

    // The first task to fail stops the others; shutdown stops the consumer first, and the
    // rest drain what it handed over.
    let mut prepare = prepare;
    let mut produce = produce;
    let mut ack = ack;
    // Biased: once shutdown is asked for, the tasks end by themselves (prepare watches the
    // same token), and that is the drain below, not a failure.
    let failure = tokio::select! {
        biased;
        () = shutdown.cancelled() => None,
        r = &mut prepare => Some(("prepare", r)),
        r = &mut produce => Some(("produce", r)),
        r = &mut ack => Some(("acknowledge", r)),
    };
    poll_stop.cancel();
    let joined = tokio::task::spawn_blocking(move || poll_thread.join()).await;
    if joined.is_err() {
        tracing::error!("The consumer thread panicked.");
    }
    let result = match failure {
        Some((task, r)) => Err(task_failed(task, r)),
        None => {
            let drain = async {
                let p = prepare.await;
                let q = produce.await;
                let a = ack.await;
                for (task, r) in [("prepare", p), ("produce", q), ("acknowledge", a)] {
                    if let Err(e) = flatten(task, r) {
                        return Err(Error::Draining {
                            task,
                            source: Box::new(e),
                        });
                    }
                }
                Ok(())
            };
            match tokio::time::timeout(config.drain_timeout, drain).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!(
                        in_flight = tracker.total_in_flight(),
                        "Shutdown drain timed out; unacknowledged events will be re-delivered."
                    );
                    Ok(())
                }
            }
        }
    };
    // Commit what was stored; whatever was not acknowledged is re-delivered after a restart.
    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
        tracing::debug!(error = %e, "Nothing to commit at shutdown.");
    }
    consumer.unsubscribe();
    tracing::info!("The embed stage stopped.");
    result
}

fn flatten(
    task: &'static str,
    r: std::result::Result<Result<()>, tokio::task::JoinError>,
) -> Result<()> {
    r.map_err(Error::task(task))?
}

fn task_failed(
    task: &'static str,
    r: std::result::Result<Result<()>, tokio::task::JoinError>,
) -> Error {
    match flatten(task, r) {
        Err(e) => {
            tracing::error!(error = %e, task, "A stage task failed.");
            e
        }
        Ok(()) => Error::TaskEnded { what: task },
    }
}

/// Decodes a record; retries while the registry is unavailable.
async fn decode(
    codec: &Codec,
    message: &OwnedMessage,
    limits: Limits,
    shutdown: &CancellationToken,
) -> Option<std::result::Result<Work, Poison>> {
    let Some(payload) = message.payload() else {
        return Some(validate::tombstone(message.key()));
    };
    let mut backoff = Duration::from_millis(100);
    loop {
        match codec.decode::<ItemEvent>(payload).await {
            Ok(event) => return Some(validate::event(event, limits)),
            Err(e) if e.is_retryable() => {
                tracing::warn!(error = %e, "Registry unavailable; retrying the record.");
                tokio::select! {
                    () = shutdown.cancelled() => return None,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Some(Err(Poison::from(&e))),
        }
    }
}

async fn prepare_loop(
    mut batches: mpsc::Receiver<Batch>,
    out: mpsc::Sender<Submitted>,
    codec: Codec,
    control: ControlLog,
    mut models: ActiveModels,
    limits: Limits,
    shutdown: CancellationToken,
) -> Result<()> {
    let mut view = control.subscribe();
    let state = view.borrow_and_update().state.clone();
    models.sync(&state).await?;
    let mut control_open = true;
    loop {
        // Control-log changes are applied as they come, also while no event arrives, so a
        // version activated now writes every event consumed after its model is loaded.
        let batch = tokio::select! {
            biased;
            changed = view.changed(), if control_open => {
                // The follower stops at shutdown; the batches already taken still finish.
                if changed.is_err() {
                    control_open = false;
                    continue;
                }
                let state = view.borrow_and_update().state.clone();
                models.sync(&state).await?;
                continue;
            }
            batch = batches.recv() => match batch {
                Some(b) => b,
                None => return Ok(()),
            },
        };
        histogram!(m::QUEUE_SECONDS).record(batch.first_at.elapsed().as_secs_f64());
        histogram!(m::BATCH_ITEMS).record(batch.messages.len() as f64);
        // Control changes are applied by the select above; with no active version, wait for
        // one (`changed` marks the value seen, so sync on what it brought).
        while models.is_empty() {
            tracing::warn!("No active model version in the control log; waiting for one.");
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                r = view.changed() => if r.is_err() { return Ok(()) },
            }
            let state = view.borrow_and_update().state.clone();
            models.sync(&state).await?;
        }
        let decode_start = Instant::now();
        let mut entries = Vec::with_capacity(batch.messages.len());
        for message in batch.messages {
            let Some(outcome) = decode(&codec, &message, limits, &shutdown).await else {
                return Ok(());
            };
            entries.push(Entry { message, outcome });
        }
        histogram!(m::DECODE_SECONDS).record(decode_start.elapsed().as_secs_f64());
        let texts: Vec<String> = entries
            .iter()
            .filter_map(|e| match &e.outcome {
                Ok(Work::Upsert { text, .. }) => Some(text.clone()),
                _ => None,
            })
            .collect();
        let active = models.current();
        let embed_start = Instant::now();
        let pending = submit_all(&active, &texts).await?;
        let submitted = Submitted {
            entries,
            models: active,
            pending,
            texts,
            embed_start,
        };
        if out.send(submitted).await.is_err() {
            return Ok(());
        }
    }
}

/// Queues `texts` on every model (the engines' queues are bounded std channels: wait on a
/// blocking thread, never on a runtime worker).
async fn submit_all(models: &[ActiveModel], texts: &[String]) -> Result<Vec<Pending>> {
    let mut pending = Vec::with_capacity(models.len());
    for model in models {
        let engine = model.engine.clone();
        let texts = texts.to_vec();
        let p = tokio::task::spawn_blocking(move || engine.submit(texts))
            .await
            .map_err(Error::task("submitting to the engine"))?
            .map_err(|source| Error::Engine {
                model: model.label.clone(),
                source,
            })?;
        pending.push(p);
    }
    Ok(pending)
}

/// Waits for one model's vectors; a text the tokenizer refuses poisons only itself.
async fn vectors_of(
    model: &ActiveModel,
    pending: Pending,
    texts: &[String],
) -> Result<Vec<std::result::Result<Vec<f32>, String>>> {
    match pending.recv().await {
        Ok(v) => Ok(v.into_iter().map(Ok).collect()),
        Err(EngineError::Stopped) => Err(Error::Engine {
            model: model.label.clone(),
            source: EngineError::Stopped,
        }),
        Err(EngineError::Tokenize { .. }) => {
            // Rare: embed one by one to find the culprits.
            let mut out = Vec::with_capacity(texts.len());
            for text in texts {
                match model.engine.embed(vec![text.clone()]).await {
                    Ok(mut v) => out.push(Ok(v.pop().unwrap_or_default())),
                    Err(EngineError::Tokenize { reason, .. }) => out.push(Err(reason)),
                    Err(EngineError::Stopped) => {
                        return Err(Error::Engine {
                            model: model.label.clone(),
                            source: EngineError::Stopped,
                        });
                    }
                }
            }
            Ok(out)
        }
    }
}

fn coordinates(message: &OwnedMessage) -> (String, i32, i64) {
    (
        message.topic().to_owned(),
        message.partition(),
        message.offset(),
    )
}

async fn produce_loop(
    mut batches: mpsc::Receiver<Submitted>,
    out: mpsc::Sender<Sent>,
    producer: FutureProducer,
    codec: Codec,
    dlq: String,
) -> Result<()> {
    while let Some(batch) = batches.recv().await {
        let mut vectors = Vec::with_capacity(batch.models.len());
        for (model, pending) in batch.models.iter().zip(batch.pending) {
            vectors.push(vectors_of(model, pending, &batch.texts).await?);
        }
        histogram!(m::EMBED_SECONDS).record(batch.embed_start.elapsed().as_secs_f64());
        let produce_start = Instant::now();
        let embed_time = now_ms();
        let mut deliveries = Vec::new();
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
                            };
                            let payload = codec.encode(&model.topic, &record).await?;
                            let d = send(&producer, &model.topic, item_id, Some(&payload)).await?;
                            deliveries.push((model.label.clone(), model.topic.clone(), d));
                        }
                        event_times.push(*event_time);
                    }
                }
                Ok(Work::Delete {
                    item_id,
                    event_time,
                }) => {
                    for model in &batch.models {
                        let d = send(&producer, &model.topic, item_id, None).await?;
                        deliveries.push((model.label.clone(), model.topic.clone(), d));
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
                let letter = DeadLetter {
                    original_key: entry.message.key().map(<[u8]>::to_vec),
                    original_value: entry.message.payload().map(<[u8]>::to_vec),
                    source: SourceCoordinates {
                        topic: topic.clone(),
                        partition,
                        offset,
                    },
                    error_kind: poison.kind.to_owned(),
                    message: poison.message,
                    stage: STAGE.to_owned(),
                    failed_at: now_ms(),
                };
                let payload = codec.encode(&dlq, &letter).await?;
                let key = entry.message.key().map(<[u8]>::to_vec);
                let d = send_raw(&producer, &dlq, key.as_deref(), Some(&payload)).await?;
                deliveries.push(("dlq".to_owned(), dlq.clone(), d));
            }
            events.push((topic, partition, offset));
        }
        let sent = Sent {
            events,
            event_times,
            deliveries,
            produce_start,
        };
        if out.send(sent).await.is_err() {
            return Ok(());
        }
    }
    Ok(())
}

async fn send(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    payload: Option<&[u8]>,
) -> Result<DeliveryFuture> {
    send_raw(producer, topic, Some(key.as_bytes()), payload).await
}

/// Enqueues a record (waiting while the producer's queue is full) and returns its delivery.
async fn send_raw(
    producer: &FutureProducer,
    topic: &str,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
) -> Result<DeliveryFuture> {
    loop {
        let mut record = FutureRecord::<[u8], [u8]>::to(topic);
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

async fn ack_loop(
    mut sent: mpsc::Receiver<Sent>,
    consumer: Arc<BaseConsumer<StageContext>>,
    tracker: Arc<Tracker>,
) -> Result<()> {
    while let Some(batch) = sent.recv().await {
        let mut failed = None;
        for (label, topic, delivery) in batch.deliveries {
            let result = match delivery.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((e, _))) => Err(Error::produce(&topic)(e)),
                Err(_) => Err(Error::ProducerStopped { topic }),
            };
            let outcome = if result.is_ok() { "ok" } else { "error" };
            counter!(m::PRODUCED, "model_version" => label, "result" => outcome).increment(1);
            if let Err(e) = result {
                failed.get_or_insert(e);
            }
        }
        if let Some(error) = failed {
            // Not acknowledged: the offsets stay where they are and the events are
            // re-delivered after the restart this error causes.
            return Err(error);
        }
        histogram!(m::PRODUCE_SECONDS).record(batch.produce_start.elapsed().as_secs_f64());
        let now = now_ms();
        for t in batch.event_times {
            histogram!(m::END_TO_END_SECONDS).record((now - t).max(0) as f64 / 1000.0);
        }
        tracker.complete(&consumer, batch.events);
    }
    Ok(())
}
