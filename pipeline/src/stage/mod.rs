//! The stream stage: a consumer group on `items` decodes item events, embeds them with every
//! active model version, and writes one record per version to `embeddings.<model>.v<N>`, keyed
//! by item id; deletes become tombstones on every active topic; bad records go to `items.dlq`
//! with the reason.
//!
//! Guarantees: with [`Delivery::ExactlyOnce`] each batch's outputs and input offsets are one
//! transaction committed with the group's metadata, so `read_committed` readers see each
//! event's records once and a fenced member's never; with [`Delivery::AtLeastOnce`] an event's
//! offset is stored only after every output record of it was acknowledged by the broker, and
//! offsets move in order per partition. Either way a revoked partition is drained (or its
//! events left to the next owner) before it is given up; on shutdown every batch taken is
//! finished and committed. Outputs are produced in consumption order by an idempotent producer
//! and name their source event (`embedstream_schemas::headers`), so readers keep the newest
//! source per key whatever the topic's order; a re-delivered event yields the same key, vector
//! and source coordinates (only `embed_time` differs). A poisoned record never blocks its
//! partition.
//!
//! Shape: a consumer thread ([`consumer`]) → batches → decode and submit to the engines →
//! produce in order → acknowledge and store offsets, each step a task joined by bounded
//! channels, so several batches are in flight and the model never waits for the broker.

mod ack;
pub mod consumer;
mod flow;
pub mod membership;
pub mod metrics;
pub mod models;
pub mod offsets;
pub(crate) mod prepare;
pub(crate) mod produce;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use ::metrics::counter;
use embedstream_schemas::Codec;
use embedstream_schemas::records::ModelState;
use embedstream_topics::admin::{Admin, Layout, named_platform_topics};
use embedstream_topics::names::TopicNames;
use embedstream_topics::{KafkaConfig, ModelRef};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, Producer};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use self::consumer::{Batch, Batching, Ended, StageContext, Tracker};
use self::membership::{Membership, Watchdog};
use self::metrics as m;
use self::models::ActiveModels;
use self::validate::Limits;

use self::ack::ack_loop;
pub use self::flow::STAGE;
use self::flow::{Sent, Submitted};
use self::prepare::prepare_loop;
use self::produce::produce_loop;
use crate::control::ControlLog;
use crate::dlq::DeadLetterPolicy;
use crate::embed::burn_model::Device;
use crate::embed::engine::EngineConfig;
use crate::error::{Error, Result};

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
    /// How dead letters are written.
    pub dead_letters: DeadLetterPolicy,
    /// When the control log has no model version at all, this one is registered as ACTIVE.
    pub initial_model: Option<ModelRef>,
    /// How long a revoke or a shutdown waits for in-flight events.
    pub drain_timeout: Duration,
    /// At-least-once or exactly-once output.
    pub delivery: Delivery,
}

/// How the stage's output is delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Outputs are acknowledged before the input's offsets are committed: a crash or a
    /// rebalance may write an event's records twice (same key, vector and source; harmless on
    /// compacted topics and to the sinks, which order by source event).
    AtLeastOnce,
    /// Each batch's outputs and input offsets are one Kafka transaction (see
    /// `produce::Transactions`); readers with `isolation.level=read_committed` (the default
    /// of librdkafka and of the platform's sinks) see each record once.
    ExactlyOnce {
        /// The producer's `transactional.id`: unique per process. A stable id per replica
        /// (its pod name, say) lets a restarted process fence its predecessor's open
        /// transaction at once instead of after the transaction timeout.
        transactional_id: String,
    },
}

/// How long a transaction may stay open before the broker aborts it (librdkafka's default):
/// far above a batch's send and commit, and the longest a crashed process's open transaction
/// holds back `read_committed` readers when its successor has another transactional id.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(60);

/// The group session (Kafka's default): a crashed member's partitions move after this long.
const SESSION_TIMEOUT: Duration = Duration::from_secs(45);

/// Runs the stage until `shutdown`; returns after the taken batches are finished and
/// committed. An error is fatal (the process should exit non-zero and be restarted: nothing
/// unacknowledged was committed). A group consumer that the [`membership::Watchdog`] gives up
/// is replaced in the process, with a new producer: the same as a restart, without one.
pub async fn run(config: StageConfig, shutdown: CancellationToken) -> Result<()> {
    let codec = Codec::new(&config.registry_url);
    Admin::new(&config.kafka, Duration::from_secs(30))?
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
        let spec = crate::control::catalog(&control.state()).lookup(initial)?;
        control
            .set_model_state(&spec, ModelState::Active, STAGE)
            .await?;
        tracing::info!(model = %initial, "Empty control log: registered the initial model as active.");
    }
    loop {
        match run_member(&config, &codec, &control, &shutdown).await? {
            Ended::Stopped => return Ok(()),
            Ended::Stuck => {
                counter!(m::CONSUMER_REPLACED).increment(1);
                tracing::warn!("Starting over with a new group consumer and producer.");
            }
        }
    }
}

/// One group member: a consumer, a producer and the tasks between them, until shutdown, a
/// failure, or the watchdog giving the consumer up.
async fn run_member(
    config: &StageConfig,
    codec: &Codec,
    control: &ControlLog,
    shutdown: &CancellationToken,
) -> Result<Ended> {
    let admin = Admin::new(&config.kafka, Duration::from_secs(30))?;
    let kafka = Error::kafka(&config.kafka);
    let items = config.names.items();
    let tracker = Arc::new(Tracker::default());
    let consumer: BaseConsumer<StageContext> = config
        .kafka
        .client()
        .set("group.id", &config.group)
        // Exactly-once commits offsets in the transactions, never on its own.
        .set(
            "enable.auto.commit",
            (config.delivery == Delivery::AtLeastOnce).to_string(),
        )
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // Eager assignors only: the revoke logic drops batches cut before a revoke, which is
        // right only when every partition is revoked (cooperative-sticky would lose them).
        .set("partition.assignment.strategy", "range,roundrobin")
        // Kafka's default. A crashed member's partitions move after this long.
        .set(
            "session.timeout.ms",
            SESSION_TIMEOUT.as_millis().to_string(),
        )
        .set("statistics.interval.ms", "5000")
        .create_with_context(StageContext {
            tracker: tracker.clone(),
            topic: items.clone(),
            drain_timeout: config.drain_timeout,
            commits_offsets: config.delivery == Delivery::AtLeastOnce,
            membership: Membership::default(),
        })
        .map_err(&kafka)?;
    consumer.subscribe(&[&items]).map_err(&kafka)?;
    let consumer = Arc::new(consumer);

    let mut producer_config = config.kafka.client();
    producer_config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        // Keep retrying through a broker restart; a record that still fails is fatal.
        .set("message.timeout.ms", "300000");
    if let Delivery::ExactlyOnce { transactional_id } = &config.delivery {
        let timeout = TRANSACTION_TIMEOUT.as_millis().to_string();
        producer_config
            .set("transactional.id", transactional_id)
            .set("transaction.timeout.ms", &timeout)
            // A record cannot outlive its transaction.
            .set("message.timeout.ms", &timeout)
            // The next transaction's first request is refused while the broker still writes
            // the last one's markers (CONCURRENT_TRANSACTIONS), and retried after this.
            .set("retry.backoff.ms", "5");
    }
    let producer: FutureProducer = producer_config
        .set("queue.buffering.max.messages", "200000")
        // The Java client's partitioner, so keys land where Java producers put them.
        .set("partitioner", "murmur2_random")
        .create()
        .map_err(&kafka)?;

    let transactions = match &config.delivery {
        Delivery::AtLeastOnce => None,
        Delivery::ExactlyOnce { transactional_id } => {
            let p = producer.clone();
            tokio::task::spawn_blocking(move || p.init_transactions(TRANSACTION_TIMEOUT))
                .await
                .map_err(Error::task("initialising transactions"))?
                .map_err(|e| Error::transaction("init", &e))?;
            tracing::info!(
                transactional_id,
                "Exactly-once output: one transaction per batch."
            );
            Some(produce::Transactions {
                consumer: consumer.clone(),
                tracker: tracker.clone(),
                timeout: TRANSACTION_TIMEOUT,
            })
        }
    };

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
    let stuck = CancellationToken::new();
    let poll_thread = {
        let consumer = consumer.clone();
        let stop = poll_stop.clone();
        let stuck = stuck.clone();
        let batching = config.batching;
        let watchdog = Watchdog {
            after: SESSION_TIMEOUT * 2,
            every: Duration::from_secs(10),
            kafka: config.kafka.clone(),
            topic: items.clone(),
        };
        std::thread::Builder::new()
            .name("stage-consumer".into())
            .spawn(move || {
                if consumer::consume_loop(&consumer, batching, &batch_tx, &stop, &watchdog)
                    == Ended::Stuck
                {
                    stuck.cancel();
                }
            })
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
        codec.clone(),
        config.names.items_dlq(),
        config.dead_letters,
        transactions,
    ));
    let ack = tokio::spawn(ack_loop(sent_rx, consumer.clone(), tracker.clone()));

    // The first task to fail stops the others; shutdown (or a stuck consumer) stops the
    // consumer first, and the rest drain what it handed over.
    let mut prepare = prepare;
    let mut produce = produce;
    let mut ack = ack;
    // Biased: once shutdown is asked for, the tasks end by themselves (prepare watches the
    // same token), and that is the drain below, not a failure.
    let failure = tokio::select! {
        biased;
        () = shutdown.cancelled() => None,
        () = stuck.cancelled() => None,
        r = &mut prepare => Some(("prepare", r)),
        r = &mut produce => Some(("produce", r)),
        r = &mut ack => Some(("acknowledge", r)),
    };
    poll_stop.cancel();
    let joined = tokio::task::spawn_blocking(move || poll_thread.join()).await;
    if joined.is_err() {
        tracing::error!("The consumer thread panicked.");
    }
    let ended = if stuck.is_cancelled() && !shutdown.is_cancelled() {
        Ended::Stuck
    } else {
        Ended::Stopped
    };
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
    if ended == Ended::Stuck {
        // Whatever the drain did, the next member starts from the committed offsets, as a
        // restarted process would. Closing a stuck consumer may wait on its group: the old
        // clients are dropped on a thread of their own.
        if let Err(e) = result {
            tracing::warn!(error = %e, "The replaced member's drain failed; its events are read again.");
        }
        std::thread::spawn(move || drop((consumer, producer)));
        return Ok(Ended::Stuck);
    }
    // Commit what was stored; whatever was not acknowledged is re-delivered after a restart.
    // (Exactly-once committed each batch's offsets in its transaction.)
    if config.delivery == Delivery::AtLeastOnce
        && let Err(e) = consumer.commit_consumer_state(CommitMode::Sync)
    {
        tracing::debug!(error = %e, "Nothing to commit at shutdown.");
    }
    consumer.unsubscribe();
    tracing::info!("The embed stage stopped.");
    result.map(|()| Ended::Stopped)
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
