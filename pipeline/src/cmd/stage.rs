//! `embedstream embed-stage` (and the stage inside `embedstream up`): options and wiring.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use embedstream_pipeline::embed::burn_model::Device;
use embedstream_pipeline::embed::engine::EngineConfig;
use embedstream_pipeline::stage::consumer::Batching;
use embedstream_pipeline::stage::validate::Limits;
use embedstream_pipeline::stage::{self, StageConfig};
use embedstream_topics::admin::Layout;
use embedstream_topics::kafka::Replication;
use embedstream_topics::names::TopicNames;
use embedstream_topics::{KafkaConfig, ModelRef};
use tokio_util::sync::CancellationToken;

/// Where the brokers are, and the librdkafka properties every Kafka client of the process gets
/// (security, tuning): see `embedstream_topics::kafka`.
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    pub bootstrap: String,
    /// A librdkafka property for every Kafka client (`key=value`, repeatable), e.g.
    /// `security.protocol=SASL_SSL`; wins over the file and the `EMBEDSTREAM_KAFKA_<KEY>`
    /// environment variables.
    #[arg(long = "kafka-property", value_name = "KEY=VALUE")]
    pub kafka_property: Vec<String>,
    /// A file of librdkafka properties for every Kafka client (`key=value` lines, `#`
    /// comments, as Kafka's `client.properties`).
    #[arg(long, env = "EMBEDSTREAM_KAFKA_CONFIG", value_name = "FILE")]
    pub kafka_config: Option<std::path::PathBuf>,
    /// Replication factor of every topic the platform creates (default: the broker's
    /// `default.replication.factor`).
    #[arg(long, env = "EMBEDSTREAM_REPLICATION_FACTOR")]
    pub replication_factor: Option<i32>,
    /// `min.insync.replicas` of every topic the platform creates (default: the broker's).
    #[arg(long, env = "EMBEDSTREAM_MIN_INSYNC_REPLICAS")]
    pub min_insync_replicas: Option<i32>,
}

impl KafkaArgs {
    /// The brokers with the user's properties from all three sources.
    pub fn config(&self) -> anyhow::Result<KafkaConfig> {
        Ok(KafkaConfig::from_sources(
            &self.bootstrap,
            self.kafka_config.as_deref(),
            std::env::vars(),
            &self.kafka_property,
        )?
        .with_replication(Replication {
            factor: self.replication_factor,
            min_insync: self.min_insync_replicas,
        }))
    }
}

/// Where the platform's Kafka, registry and topics are.
#[derive(Debug, Clone, clap::Args)]
pub struct PlatformArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Schema registry URL.
    #[arg(
        long,
        env = "SCHEMA_REGISTRY_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    pub registry_url: String,
    /// Prefix of every topic name (`<prefix>.items`, …); empty for the plain names.
    #[arg(long, env = "EMBEDSTREAM_TOPIC_PREFIX", default_value = "")]
    pub topic_prefix: String,
    /// Partitions of topics the platform creates.
    #[arg(long, env = "EMBEDSTREAM_PARTITIONS", default_value_t = Layout::default().partitions)]
    pub partitions: i32,
}

impl PlatformArgs {
    /// The brokers with the user's client properties.
    pub fn kafka(&self) -> anyhow::Result<KafkaConfig> {
        self.kafka.config()
    }

    /// Topic names under the prefix.
    pub fn names(&self) -> TopicNames {
        TopicNames::new(&self.topic_prefix)
    }

    /// Opens (follows until `shutdown`) the platform's control log.
    pub async fn control_log(
        &self,
        shutdown: CancellationToken,
    ) -> anyhow::Result<embedstream_pipeline::control::ControlLog> {
        embedstream_pipeline::control::ControlLog::open(
            &self.kafka()?,
            embedstream_schemas::Codec::new(&self.registry_url),
            &self.names().control(),
            shutdown,
        )
        .await
        .context("cannot open the control log")
    }
}

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
    /// Model replicas on their own threads (CPU only; a GPU runs one). Two keep both cores
    /// of a 2-core machine busy.
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
            initial_model,
            drain_timeout: Duration::from_secs(self.drain_timeout_secs),
        })
    }
}

/// Serves `router` on `listen` until `shutdown`.
pub async fn serve(
    listen: SocketAddr,
    router: axum::Router,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    tracing::info!(%listen, "Serving /metrics.");
    Ok(tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
    }))
}

/// Runs the stage with its metrics endpoint until `shutdown`.
pub async fn run(
    args: StageArgs,
    metrics: axum::Router,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let config = args.config()?;
    let server = serve(args.listen, metrics, shutdown.clone()).await?;
    let result = stage::run(config, shutdown.clone()).await;
    shutdown.cancel();
    let _ = server.await;
    result.context("the embed stage failed")
}
