//! What every subcommand that joins the platform shares: where the brokers, the registry and
//! the topics are ([`PlatformArgs`], [`KafkaArgs`]), and serving a process's HTTP routes
//! (`/metrics`, `/healthz`, `/ready`) with [`serve`].

use std::net::SocketAddr;

use anyhow::Context;
use embedstream_schemas::serve::Tls;
use embedstream_topics::admin::Layout;
use embedstream_topics::catalog::Catalog;
use embedstream_topics::kafka::Replication;
use embedstream_topics::names::TopicNames;
use embedstream_topics::{KafkaConfig, ModelRef, ModelSpec};
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

/// How a process serves HTTP: TLS, and where `/metrics` goes.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct HttpArgs {
    /// Serve every HTTP API of the process over TLS with this certificate chain (PEM, leaf
    /// first); needs `--tls-key`.
    #[arg(long, env = "EMBEDSTREAM_TLS_CERT", value_name = "PEM")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The private key of `--tls-cert` (PEM).
    #[arg(long, env = "EMBEDSTREAM_TLS_KEY", value_name = "PEM")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Certificates (PEM) this process trusts when it calls another service over HTTPS (the
    /// router calling the sinks), besides the system's; by default the process's own
    /// `--tls-cert`.
    #[arg(long, env = "EMBEDSTREAM_TLS_CA", value_name = "PEM")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Serve `/metrics`, `/healthz` and `/ready` on this address only, apart from the APIs.
    #[arg(long, env = "EMBEDSTREAM_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
}

impl HttpArgs {
    /// The certificate and key, when given.
    pub fn tls(&self) -> anyhow::Result<Option<Tls>> {
        Tls::from_options(self.tls_cert.clone(), self.tls_key.clone()).map_err(anyhow::Error::msg)
    }

    /// The certificates to trust as a client: `--tls-ca`, else the process's own certificate.
    pub fn trusted(&self) -> Option<&std::path::Path> {
        self.tls_ca.as_deref().or(self.tls_cert.as_deref())
    }

    /// The PEM text of [`Self::trusted`], checked to hold certificates.
    pub fn trusted_pem(&self) -> anyhow::Result<Option<Vec<u8>>> {
        let Some(path) = self.trusted() else {
            return Ok(None);
        };
        let pem = std::fs::read(path)
            .with_context(|| format!("cannot read the certificates {}", path.display()))?;
        anyhow::ensure!(
            reqwest::Certificate::from_pem_bundle(&pem).is_ok_and(|c| !c.is_empty()),
            "{} holds no PEM certificate",
            path.display()
        );
        Ok(Some(pem))
    }

    /// `https` when the process serves TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls_cert.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The routes to merge into the process's own API: `routes` itself, or none when
    /// `--metrics-listen` serves them on their own address (started here, until `shutdown`).
    pub async fn place(
        &self,
        routes: axum::Router,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<axum::Router> {
        match self.metrics_listen {
            None => Ok(routes),
            Some(listen) => {
                serve(listen, routes, self.tls()?, shutdown.clone()).await?;
                Ok(axum::Router::new())
            }
        }
    }
}

/// Where the platform's Kafka, registry and topics are.
#[derive(Debug, Clone, clap::Args)]
pub struct PlatformArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub http: HttpArgs,
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
    /// The consumers (name, `ef_search`, `default_k`, `max_k`, `p95_slo_ms`): a TOML file of
    /// `[consumers.<name>]` tables, read by the router, the sinks and the migration commands,
    /// and followed while they run (a change applies within seconds, no restart). Without it,
    /// the built-in `search`, `recsys`, `ads` and `dedup`.
    #[arg(long, env = "EMBEDSTREAM_CONSUMERS_FILE")]
    pub consumers_file: Option<std::path::PathBuf>,
}

impl PlatformArgs {
    /// The brokers with the user's client properties.
    pub fn kafka(&self) -> anyhow::Result<KafkaConfig> {
        self.kafka.config()
    }

    /// The routes a service merges into its API: `/metrics`, `/healthz` and `/ready` for its
    /// Kafka clients, or none when `--metrics-listen` serves them apart (until `shutdown`).
    pub async fn service_routes(
        &self,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<axum::Router> {
        let routes = embedstream_pipeline::telemetry::service_router(self.kafka()?)?;
        self.http.place(routes, shutdown).await
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

    /// The consumers: the file's, or the built-in ones.
    pub fn consumers(&self) -> anyhow::Result<embedstream_schemas::consumers::Consumers> {
        Ok(embedstream_schemas::consumers::Consumers::from_file(
            self.consumers_file.as_deref(),
        )?)
    }

    /// The golden sets: `given` (a `golden.json`), else those the consumers file names.
    pub fn golden(
        &self,
        given: Option<&std::path::Path>,
    ) -> anyhow::Result<embedstream_pipeline::eval::Golden> {
        use embedstream_pipeline::eval::Golden;
        if let Some(path) = given {
            return Ok(Golden::from_file(path)?);
        }
        let Some(file) = &self.consumers_file else {
            anyhow::bail!(
                "no golden sets: give --golden FILE, or name each consumer's golden_set in a consumers file"
            );
        };
        let golden = Golden::from_consumers(file, &embedstream_schemas::consumers::load(file)?)?;
        anyhow::ensure!(
            !golden.sets.is_empty(),
            "the consumers file {} names no golden_set; give --golden FILE or add one",
            file.display()
        );
        Ok(golden)
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

    /// The built-in models and those the control log registers.
    pub async fn catalog(&self) -> anyhow::Result<Catalog> {
        let token = CancellationToken::new();
        let log = self.control_log(token.clone()).await?;
        let catalog = embedstream_pipeline::control::catalog(&log.state());
        token.cancel();
        Ok(catalog)
    }

    /// `model`'s catalog entry (a built-in one without reading the control log).
    pub async fn model_spec(&self, model: &ModelRef) -> anyhow::Result<ModelSpec> {
        if let Ok(spec) = embedstream_topics::catalog::lookup(model) {
            return Ok(spec);
        }
        Ok(self.catalog().await?.lookup(model)?)
    }
}

/// Serves `router` (the process's `/metrics`, `/healthz`, `/ready`) on `listen` until
/// `shutdown`, over TLS with `tls`.
pub async fn serve(
    listen: SocketAddr,
    router: axum::Router,
    tls: Option<Tls>,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    if let Some(tls) = &tls {
        // A bad pair fails the command now rather than the server later.
        tls.config().await?;
    }
    tracing::info!(%listen, tls = tls.is_some(), "Serving /metrics.");
    Ok(tokio::spawn(async move {
        if let Err(e) =
            embedstream_schemas::serve::serve(listener, router, tls.as_ref(), shutdown).await
        {
            tracing::error!(%listen, error = %e, "The /metrics server stopped.");
        }
    }))
}

/// Runs `work` while serving `router` (the process's `/metrics`) on the `--metrics-listen`
/// address, else `listen`; when `work` ends, the server is shut down and its result returned.
pub async fn serving_metrics(
    http: &HttpArgs,
    listen: SocketAddr,
    router: axum::Router,
    shutdown: &CancellationToken,
    work: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let listen = http.metrics_listen.unwrap_or(listen);
    let server = serve(listen, router, http.tls()?, shutdown.clone()).await?;
    let result = work.await;
    shutdown.cancel();
    let _ = server.await;
    result
}
