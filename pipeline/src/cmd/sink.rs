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
use embedstream_topics::ModelRef;
use embedstream_topics::names::parse_embeddings_topic;
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
    /// This serving replica's name: each replica has its own consumer group and snapshots
    /// and holds the whole index.
    #[arg(long, env = "EMBEDSTREAM_SINK_REPLICA", default_value = "r0")]
    replica: String,
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
            data_dir,
            adapters: super::adapter::DirArg { dir: None },
            listen,
            config: None,
            device: Device::Cpu,
            embed_replicas: 1,
        }
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
        let group = if prefix.is_empty() {
            format!("embedstream-sink-{model_part}-{}", self.replica)
        } else {
            format!("embedstream-sink-{prefix}-{model_part}-{}", self.replica)
        };
        let mut settings = match &self.config {
            Some(path) => Settings::load(path)?,
            None => Settings::default(),
        };
        if let Some(path) = &self.platform.consumers_file {
            let file = embedstream_schemas::consumers::load_all(path)?;
            settings.consumers = file.consumers;
            settings.attributes = file.attributes;
        }
        Ok(SinkConfig {
            kafka: self.platform.kafka()?,
            registry_url: self.platform.registry_url.clone(),
            data_dir: base.join(&topic).join(&self.replica),
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
    let config = args.sink_config().await?;
    let embedder: Arc<dyn QueryEmbedder> = Arc::new(LazyEngine {
        model: config.spec.model.clone(),
        platform: args.platform.clone(),
        device: args.device,
        replicas: args.embed_replicas,
        engines: Arc::default(),
    });
    service::run(config, Some(embedder), metrics, shutdown)
        .await
        .context("the index sink failed")
}
