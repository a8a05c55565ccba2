//! What every subcommand that joins the platform shares: where the brokers, the registry and
//! the topics are ([`PlatformArgs`], [`KafkaArgs`]), and serving a process's HTTP routes
//! (`/metrics`, `/healthz`, `/ready`) with [`serve`].

use std::net::SocketAddr;

use anyhow::Context;
use embedstream_topics::KafkaConfig;
use embedstream_topics::admin::Layout;
use embedstream_topics::kafka::Replication;
use embedstream_topics::names::TopicNames;
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
    /// API keys of the query APIs (the router's and the sinks'), per consumer: a TOML file of
    /// `[keys]` `"<key or sha256:hex>" = ["consumer", ...]`. Without it those APIs are open.
    #[arg(long, env = "EMBEDSTREAM_API_KEYS")]
    pub api_keys: Option<std::path::PathBuf>,
}

impl PlatformArgs {
    /// The brokers with the user's client properties.
    pub fn kafka(&self) -> anyhow::Result<KafkaConfig> {
        self.kafka.config()
    }

    /// The query APIs' keys, if configured.
    pub fn api_keys(
        &self,
    ) -> anyhow::Result<Option<std::sync::Arc<embedstream_schemas::access::ApiKeys>>> {
        self.api_keys
            .as_deref()
            .map(|p| embedstream_schemas::access::ApiKeys::load(p).map(std::sync::Arc::new))
            .transpose()
            .map_err(Into::into)
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

/// Serves `router` (the process's `/metrics`, `/healthz`, `/ready`) on `listen` until
/// `shutdown`.
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
