//! `embedstream embed-stage` (and the stage inside `embedstream up`): options and wiring.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use embedstream_pipeline::dlq::DeadLetterPolicy;
use embedstream_pipeline::embed::burn_model::Device;
use embedstream_pipeline::embed::engine::EngineConfig;
use embedstream_pipeline::stage::consumer::Batching;
use embedstream_pipeline::stage::validate::Limits;
use embedstream_pipeline::stage::{self, Delivery, StageConfig};
use embedstream_topics::ModelRef;
use embedstream_topics::admin::Layout;
use tokio_util::sync::CancellationToken;

use super::platform::PlatformArgs;

/// Options of `embed-stage`.
#[derive(Debug, Clone, clap::Args)]
pub struct StageArgs {
    #[command(flatten)]
    pub platform: PlatformArgs,
    /// Consumer group; processes of one group split the partitions of `items`.
    #[arg(
        long,
        env = "EMBEDSTREAM_STAGE_GROUP",
        default_value = "embedstream-embed-stage"
    )]
    group: String,
    /// Address serving `/metrics`.
    #[arg(
        long,
        env = "EMBEDSTREAM_STAGE_LISTEN",
        default_value = "127.0.0.1:9301"
    )]
    listen: SocketAddr,
    /// cpu or cuda.
    #[arg(long, env = "EMBEDSTREAM_DEVICE", default_value = "cpu")]
    device: Device,
    /// Model replicas on their own threads (CPU only; a GPU runs one): one per core to keep
    /// busy.
    #[arg(long, env = "EMBEDSTREAM_REPLICAS", default_value_t = 2)]
    replicas: usize,
    /// Events per batch taken from Kafka. The engine sorts a batch's texts by length and cuts
    /// it into forward passes, so a bigger batch wastes less on padding.
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    /// Max texts per forward pass.
    #[arg(long, default_value_t = 64)]
    model_batch_size: usize,
    /// How long the first event of a batch waits for more, in milliseconds.
    #[arg(long, default_value_t = 20)]
    linger_ms: u64,
    /// Batches in flight between consuming and acknowledging.
    #[arg(long, default_value_t = 4)]
    in_flight_batches: usize,
    /// Max padded tokens per forward pass.
    #[arg(long, default_value_t = 8192)]
    batch_tokens: usize,
    /// Texts (title + text) longer than this many bytes are dead-lettered.
    #[arg(long, default_value_t = 65_536)]
    max_text_bytes: usize,
    /// A dead letter keeps at most this many bytes of the original key and of the original
    /// value (with the whole value's size and SHA-256), so it always fits the broker's record
    /// limit; a letter cut this way cannot be replayed.
    #[arg(long, default_value_t = DeadLetterPolicy::default().max_original_bytes)]
    dlq_max_original_bytes: usize,
    /// Registered as ACTIVE when the control log has no model version at all ("" for none).
    #[arg(
        long,
        env = "EMBEDSTREAM_INITIAL_MODEL",
        default_value = "minilm-l6-v2@1"
    )]
    initial_model: String,
    /// How long a revoke or a shutdown waits for in-flight events, in seconds.
    #[arg(long, default_value_t = 30)]
    drain_timeout_secs: u64,
    /// `exactly-once`: each batch's records and its input offsets are one Kafka transaction
    /// (read them with `isolation.level=read_committed`); `at-least-once`: a crash or a
    /// rebalance may write an event's records twice.
    #[arg(long, env = "EMBEDSTREAM_DELIVERY", value_enum, default_value_t = DeliveryArg::ExactlyOnce)]
    delivery: DeliveryArg,
    /// The producer's `transactional.id` for exactly-once (default: the group, the host and
    /// the process id). Give each replica a stable one (its pod name) so that a restarted
    /// replica fences its predecessor's open transaction at once.
    #[arg(long, env = "EMBEDSTREAM_TRANSACTIONAL_ID")]
    transactional_id: Option<String>,
}

/// `--delivery`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeliveryArg {
    /// Offsets committed after the outputs are acknowledged.
    AtLeastOnce,
    /// Outputs and offsets in one transaction per batch.
    ExactlyOnce,
}

impl StageArgs {
    /// The stage's consumer group.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The model registered as active on an empty control log, if any.
    pub fn initial_model(&self) -> anyhow::Result<Option<ModelRef>> {
        Ok(if self.initial_model.is_empty() {
            None
        } else {
            Some(self.initial_model.parse::<ModelRef>()?)
        })
    }

    fn config(&self) -> anyhow::Result<StageConfig> {
        let initial_model = self.initial_model()?;
        Ok(StageConfig {
            kafka: self.platform.kafka()?,
            registry_url: self.platform.registry_url.clone(),
            names: self.platform.names(),
            group: self.group.clone(),
            layout: Layout {
                partitions: self.platform.partitions,
            },
            device: self.device,
            engine: EngineConfig {
                max_batch_tokens: self.batch_tokens,
                max_batch_size: self.model_batch_size.max(1),
                replicas: self.replicas.max(1),
                ..EngineConfig::default()
            },
            batching: Batching {
                max_events: self.batch_size.max(1),
                linger: Duration::from_millis(self.linger_ms),
            },
            in_flight_batches: self.in_flight_batches.max(1),
            limits: Limits {
                max_text_bytes: self.max_text_bytes,
            },
            dead_letters: DeadLetterPolicy {
                max_original_bytes: self.dlq_max_original_bytes,
            },
            initial_model,
            drain_timeout: Duration::from_secs(self.drain_timeout_secs),
            delivery: match self.delivery {
                DeliveryArg::AtLeastOnce => Delivery::AtLeastOnce,
                DeliveryArg::ExactlyOnce => Delivery::ExactlyOnce {
                    transactional_id: self.transactional_id.clone().unwrap_or_else(|| {
                        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
                        format!("{}-{host}-{}", self.group, std::process::id())
                    }),
                },
            },
        })
    }
}

/// Runs the stage with its metrics endpoint until `shutdown`.
pub async fn run(
    args: StageArgs,
    metrics: axum::Router,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let config = args.config()?;
    let http = &args.platform.http;
    let listen = http.metrics_listen.unwrap_or(args.listen);
    let server = super::platform::serve(listen, metrics, http.tls()?, shutdown.clone()).await?;
    let result = stage::run(config, shutdown.clone()).await;
    shutdown.cancel();
    let _ = server.await;
    result.context("the embed stage failed")
}
