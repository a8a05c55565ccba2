//! `embedstream sink`: options, and the text-query embedder the index sink cannot have
//! itself (it does not depend on the models).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use embedstream_index_sink::service::{
    self, EmbedError, EmbedFuture, EmbedRefusal, Embedded, Prompt, QueryEmbedder, Settings,
    SinkConfig, TextBatch, TextsFuture,
};
use embedstream_pipeline::embed::burn_model::Device;
use embedstream_pipeline::embed::engine::{
    EmbedOptions, Engine, EngineConfig, EngineError, InputKind,
};
use embedstream_schemas::records::SHARED_POOL;
use embedstream_topics::ModelRef;
use embedstream_topics::names::parse_embeddings_topic;
use embedstream_topics::slice::Slice;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use super::platform::PlatformArgs;

/// Options of `sink`.
#[derive(Debug, Clone, clap::Args)]
pub struct SinkArgs {
    #[command(flatten)]
    pub platform: PlatformArgs,
    /// Model version to serve (`id@version`); its topic is `[<prefix>.]embeddings.<id>.v<N>`.
    /// Default `minilm-l6-v2@1`.
    #[arg(long, env = "EMBEDSTREAM_SINK_MODEL", conflicts_with = "topic")]
    model: Option<ModelRef>,
    /// The embedding topic, instead of `--model` (with the prefix, if any).
    #[arg(long, env = "EMBEDSTREAM_SINK_TOPIC")]
    topic: Option<String>,
    /// This serving replica's name: each replica has its own consumer group and snapshots.
    #[arg(long, env = "EMBEDSTREAM_SINK_REPLICA", default_value = "r0")]
    replica: String,
    /// The slice of the version this instance holds, `i/n`: the items whose slice hash is `i`
    /// modulo `n` (default `0/1`, every item). Routers scatter each query to one replica of
    /// every slice.
    #[arg(long, env = "EMBEDSTREAM_SINK_SLICE", default_value = "0/1")]
    slice: Slice,
    /// The replica pool this instance serves in: consumers pinned to a pool (`pool` in the
    /// consumers file) read only its replicas.
    #[arg(long, env = "EMBEDSTREAM_SINK_POOL", default_value = SHARED_POOL)]
    pool: String,
    /// A hot standby: kept current, and served only while the pool's other replicas of the
    /// slice are fewer than it announces.
    #[arg(long, env = "EMBEDSTREAM_SINK_STANDBY")]
    standby: bool,
    /// Announce the instance on `embedstream.instances` for routers to find (`false`: routers
    /// must be given its URL with `--backend`).
    #[arg(long, env = "EMBEDSTREAM_SINK_ANNOUNCE", default_value_t = true, action = clap::ArgAction::Set)]
    announce: bool,
    /// The URL routers reach this instance at (default: the scheme and `--listen`).
    #[arg(long, env = "EMBEDSTREAM_SINK_URL")]
    url: Option<String>,
    /// The instance's unique name in announcements (default
    /// `<id>@<version>/<slice i>of<n>/<pool>/<replica>`).
    #[arg(long, env = "EMBEDSTREAM_SINK_INSTANCE_ID")]
    instance_id: Option<String>,
    /// Base directory of snapshots (they go in `<dir>/<topic>/<replica>`); default
    /// `$EMBEDSTREAM_HOME/sink`, or `.dev/sink`.
    #[arg(long, env = "EMBEDSTREAM_SINK_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    adapters: super::adapter::DirArg,
    /// Address of the query API and `/metrics`.
    #[arg(
        long,
        env = "EMBEDSTREAM_SINK_LISTEN",
        default_value = "127.0.0.1:9401"
    )]
    listen: SocketAddr,
    /// Config file (TOML, or JSON if it ends in .json): index, consumer profiles, Kafka, HTTP.
    #[arg(long, env = "EMBEDSTREAM_SINK_CONFIG")]
    config: Option<PathBuf>,
    /// Where text queries are embedded: cpu or cuda (the model loads on the first one).
    #[arg(long, env = "EMBEDSTREAM_DEVICE", default_value = "cpu")]
    device: Device,
    /// Model replicas of the query engine (CPU only), each on its own threads: more serve
    /// concurrent embed requests on more cores.
    #[arg(long, env = "EMBEDSTREAM_SINK_EMBED_REPLICAS", default_value_t = 1)]
    pub embed_replicas: usize,
}

impl SinkArgs {
    /// A sink of `model` on `platform`, with the defaults of the command line.
    pub fn for_model(
        platform: PlatformArgs,
        model: ModelRef,
        listen: SocketAddr,
        data_dir: Option<PathBuf>,
    ) -> Self {
        Self {
            platform,
            model: Some(model),
            topic: None,
            replica: "r0".to_owned(),
            slice: Slice::WHOLE,
            pool: SHARED_POOL.to_owned(),
            standby: false,
            announce: false,
            url: None,
            instance_id: None,
            data_dir,
            adapters: super::adapter::DirArg { dir: None },
            listen,
            config: None,
            device: Device::Cpu,
            embed_replicas: 1,
        }
    }

    /// Serves `slice` of the version and announces itself.
    pub fn slice(&mut self, slice: Slice) {
        self.slice = slice;
        self.announce = true;
    }

    /// Serves in `pool`, as `replica`, with the config file `config`.
    pub fn placed(&mut self, pool: &str, replica: &str, config: Option<PathBuf>) {
        pool.clone_into(&mut self.pool);
        replica.clone_into(&mut self.replica);
        self.config = config;
    }

    /// The id it announces itself under.
    pub fn instance_id(&self, model: &ModelRef) -> String {
        self.instance_id.clone().unwrap_or_else(|| {
            format!(
                "{model}/{}of{}/{}/{}",
                self.slice.index(),
                self.slice.count(),
                self.pool,
                self.replica
            )
        })
    }

    async fn sink_config(&self) -> anyhow::Result<SinkConfig> {
        let names = self.platform.names();
        let model = match (&self.topic, &self.model) {
            (Some(topic), _) => {
                let prefix = self.platform.topic_prefix.trim_end_matches('.');
                let bare = if prefix.is_empty() {
                    Some(topic.as_str())
                } else {
                    topic.strip_prefix(&format!("{prefix}."))
                };
                bare.and_then(parse_embeddings_topic).with_context(|| {
                    format!("{topic:?} is not an embedding topic under the prefix {prefix:?}")
                })?
            }
            (None, Some(model)) => model.clone(),
            (None, None) => ModelRef::new("minilm-l6-v2", 1)?,
        };
        let topic = names.embeddings(&model);
        let base = self.data_dir.clone().unwrap_or_else(|| {
            std::env::var_os("EMBEDSTREAM_HOME")
                .map_or_else(|| PathBuf::from(".dev"), PathBuf::from)
                .join("sink")
        });
        let prefix = self.platform.topic_prefix.trim_end_matches('.');
        let model_part = format!("{}-v{}", model.id, model.version);
        // A whole-version instance keeps the names it had before slices.
        let (slice_dir, slice_part) = if self.slice.is_whole() {
            (PathBuf::new(), String::new())
        } else {
            let s = format!("slice-{}-of-{}", self.slice.index(), self.slice.count());
            (PathBuf::from(&s), format!("-{s}"))
        };
        let pool_part = if self.pool == SHARED_POOL {
            String::new()
        } else {
            format!("-{}", self.pool)
        };
        let group = if prefix.is_empty() {
            format!(
                "embedstream-sink-{model_part}{slice_part}{pool_part}-{}",
                self.replica
            )
        } else {
            format!(
                "embedstream-sink-{prefix}-{model_part}{slice_part}{pool_part}-{}",
                self.replica
            )
        };
        let mut settings = match &self.config {
            Some(path) => Settings::load(path)?,
            None => Settings::default(),
        };
        settings.index.slice = self.slice;
        if let Some(path) = &self.platform.consumers_file {
            let file = embedstream_schemas::consumers::load_all(path)?;
            settings.consumers = file.consumers;
            settings.attributes = file.attributes;
        }
        Ok(SinkConfig {
            kafka: self.platform.kafka()?,
            registry_url: self.platform.registry_url.clone(),
            data_dir: if self.pool == SHARED_POOL {
                base.join(&topic).join(slice_dir).join(&self.replica)
            } else {
                base.join(&topic)
                    .join(slice_dir)
                    .join(&self.pool)
                    .join(&self.replica)
            },
            spec: self.platform.model_spec(&model).await?,
            topic,
            group,
            listen: self.listen,
            adapters_dir: self.adapters.path(),
            settings,
            api_keys: self.platform.api_keys()?,
            tls: self.platform.http.tls()?,
            consumers_file: self.platform.consumers_file.clone(),
        })
    }
}

/// Embeds text queries with the serving engine, loaded on the first text query (a sink that
/// only gets vectors never loads the model); queries through a Drift-Adapter are embedded with
/// the adapter's new model, loaded the same way.
#[derive(Clone)]
struct LazyEngine {
    model: ModelRef,
    /// Where a model version that is not built in is looked up.
    platform: PlatformArgs,
    device: Device,
    replicas: usize,
    engines: Arc<std::sync::Mutex<BTreeMap<String, Arc<OnceCell<Engine>>>>>,
}

impl LazyEngine {
    /// The engine of `model`, loaded on first use.
    async fn engine(&self, model: &ModelRef) -> Result<Engine, EmbedError> {
        let cell = Arc::clone(
            self.engines
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .entry(model.to_string())
                .or_default(),
        );
        let (model, device, platform) = (model.clone(), self.device, self.platform.clone());
        let config = EngineConfig {
            replicas: self.replicas.max(1),
            ..EngineConfig::default()
        };
        cell.get_or_try_init(|| async move {
            let spec = platform
                .model_spec(&model)
                .await
                .map_err(|e| format!("{e:#}"))?;
            tokio::task::spawn_blocking(move || {
                embedstream_pipeline::embed::open(&spec, device, config)
            })
            .await?
            // The engine's threads stop when its last handle is dropped.
            .map(|(engine, _threads)| engine)
            .map_err(Into::into)
        })
        .await
        .cloned()
    }

    /// A query text embedded by `model`, with the model's query prompt.
    fn embed_query(&self, model: &ModelRef, text: String) -> EmbedFuture {
        let this = self.clone();
        let model = model.clone();
        Box::pin(async move {
            let engine = this.engine(&model).await?;
            let query = EmbedOptions {
                input: InputKind::Query,
                ..EmbedOptions::default()
            };
            let mut embedded = engine.embed_with(vec![text], query).await?;
            embedded
                .vectors
                .pop()
                .ok_or_else(|| "the engine returned no vector".into())
        })
    }
}

impl QueryEmbedder for LazyEngine {
    fn embed(&self, text: String) -> EmbedFuture {
        self.embed_query(&self.model, text)
    }

    fn embed_as(&self, model: &ModelRef, text: String) -> EmbedFuture {
        self.embed_query(model, text)
    }

    fn embed_texts(&self, batch: TextBatch) -> TextsFuture {
        let this = self.clone();
        Box::pin(async move {
            let engine = this
                .engine(&this.model)
                .await
                .map_err(EmbedRefusal::Failed)?;
            let prompts = engine.prompts();
            let prompt = match &batch.prompt {
                Prompt::Default => prompts.resolve(None),
                Prompt::Named(name) => prompts.resolve(Some(name)),
                Prompt::Query => Ok(prompts.for_input(true)),
                Prompt::Document => Ok(prompts.for_input(false)),
            };
            let prompt = prompt.map_err(|known| EmbedRefusal::UnknownPrompt {
                name: match &batch.prompt {
                    Prompt::Named(n) => n.clone(),
                    _ => prompts.default_prompt_name.clone().unwrap_or_default(),
                },
                known,
            })?;
            let texts = match prompt {
                Some(p) => batch.texts.iter().map(|t| format!("{p}{t}")).collect(),
                None => batch.texts,
            };
            let options = EmbedOptions {
                input: InputKind::AsIs,
                refuse_over_limit: !batch.truncate,
                normalize: batch.normalize,
            };
            let done = engine
                .embed_with(texts, options)
                .await
                .map_err(|e| match e {
                    EngineError::TooLong { index, max } => EmbedRefusal::TooLong { index, max },
                    EngineError::Tokenize { index, reason } => {
                        EmbedRefusal::BadText { index, reason }
                    }
                    e @ EngineError::Stopped => EmbedRefusal::Failed(e.into()),
                })?;
            Ok(Embedded {
                vectors: done.vectors,
                tokens: done.tokens,
            })
        })
    }
}

/// Runs the sink with `metrics` (the process's `/metrics` route) until `shutdown`.
pub async fn run(
    args: SinkArgs,
    metrics: axum::Router,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        embedstream_schemas::consumers::is_label_name(&args.pool),
        "--pool {:?}: a pool is named by 1 to 64 letters, digits, '_', '-' or '.'",
        args.pool
    );
    let config = args.sink_config().await?;
    let embedder: Arc<dyn QueryEmbedder> = Arc::new(LazyEngine {
        model: config.spec.model.clone(),
        platform: args.platform.clone(),
        device: args.device,
        replicas: args.embed_replicas,
        engines: Arc::default(),
    });
    // Announced, the service stops only after the instance's retirement went out.
    let (service_token, announcer) = if args.announce {
        let own = format!("{}://{}", args.platform.http.scheme(), config.listen);
        let url = args.url.clone().unwrap_or_else(|| own.clone());
        anyhow::ensure!(
            args.url.is_some()
                || (config.listen.port() != 0 && !config.listen.ip().is_unspecified()),
            "an announced sink needs --url when --listen is {} (routers must reach it there)",
            config.listen
        );
        let who = embedstream_pipeline::instances::Announcement {
            instance_id: args.instance_id(&config.spec.model),
            model: config.spec.model.to_string(),
            topic: config.topic.clone(),
            slice: args.slice,
            pool: args.pool.clone(),
            standby: args.standby,
            url,
            stats_url: own,
            trust_pem: args.platform.http.trusted_pem()?,
        };
        let service = CancellationToken::new();
        let announcer = embedstream_pipeline::instances::announce(
            args.platform.kafka()?,
            &args.platform.registry_url,
            &args.platform.names(),
            who,
            shutdown.clone(),
            service.clone(),
        );
        (service, Some(announcer))
    } else {
        (shutdown, None)
    };
    let served = service::run(config, Some(embedder), metrics, service_token.clone())
        .await
        .context("the index sink failed");
    if let Some(announcer) = announcer {
        if served.is_err() {
            // The service ended on its own: nothing will cancel the announcer's wait.
            announcer.abort();
        } else {
            let _ = announcer.await;
        }
    }
    served
}
