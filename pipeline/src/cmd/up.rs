//! `embedstream up`: the platform's services in one process — the embed stage, one index sink
//! per model version the control log registers (each with its compaction), the query router
//! in front of them (`/v1/search`, the status page at `/status`, the admin API), and the drift
//! consumer. The first of the stage, a sink or the router to fail stops the others; the drift
//! consumer's failures are logged and it tries again at its next interval.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use embedstream_index_sink::router::{self, Backends, RouterConfig, StatusFeed};
use embedstream_index_sink::service::default_consumers;
use embedstream_pipeline::migrate::{Migrator, admin};
use embedstream_schemas::records::ModelState;
use embedstream_topics::ModelRef;
use embedstream_topics::admin::{Admin, Layout, named_platform_topics};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::sink::SinkArgs;
use super::stage::{PlatformArgs, StageArgs};

/// Options of `up`.
#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    #[command(flatten)]
    stage: StageArgs,
    /// Address of the query API: the router (`/v1/search`, `/v1/plans`, `/v1/versions`), the
    /// status page (`/status`, `/v1/status`) and the admin API.
    #[arg(
        long,
        env = "EMBEDSTREAM_QUERY_LISTEN",
        default_value = "127.0.0.1:9401"
    )]
    query_listen: SocketAddr,
    /// Address of the first version's sink; each further version's sink takes the next port.
    #[arg(
        long,
        env = "EMBEDSTREAM_SINK_LISTEN",
        default_value = "127.0.0.1:9411"
    )]
    sink_listen: SocketAddr,
    /// Base directory of the sinks' snapshots (default `$EMBEDSTREAM_HOME/sink`).
    #[arg(long, env = "EMBEDSTREAM_SINK_DATA_DIR")]
    sink_data_dir: Option<PathBuf>,
    /// Seconds between drift scorings of the canary set; 0 runs no drift consumer.
    #[arg(long, env = "EMBEDSTREAM_DRIFT_INTERVAL_SECS", default_value_t = 300)]
    drift_interval_secs: u64,
    /// Canaries the drift consumer scores (0: the whole set of 1,000).
    #[arg(long, default_value_t = 0)]
    drift_canaries: usize,
    /// The drift consumer's references (default `$EMBEDSTREAM_HOME/drift`).
    #[arg(long)]
    drift_state_dir: Option<PathBuf>,
    /// Bearer token of the admin API (`/admin/v1/migration/...`); disabled when unset.
    #[arg(long, env = "EMBEDSTREAM_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
}

/// What a task of `up` was.
type Outcome = (String, anyhow::Result<()>);

/// Runs the platform until `shutdown` or the first failure.
pub async fn run(
    args: UpArgs,
    metrics: axum::Router,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let platform = args.stage.platform.clone();
    let model: ModelRef = args
        .stage
        .initial_model()?
        .unwrap_or(ModelRef::new("minilm-l6-v2", 1)?);
    // The first sink reads the model's topic from the start: make sure it is there.
    Admin::new(&platform.bootstrap, Duration::from_secs(30))?
        .ensure(&named_platform_topics(
            &platform.names(),
            Layout {
                partitions: platform.partitions,
                replication: 1,
            },
            std::slice::from_ref(&model),
        ))
        .await
        .context("cannot create the platform's topics")?;
    if args.drift_interval_secs > 0 {
        let drift = super::drift::DriftArgs::for_platform(
            platform.clone(),
            args.drift_interval_secs,
            args.drift_canaries,
            args.drift_state_dir.clone(),
        );
        let token = shutdown.child_token();
        tokio::spawn(async move {
            if let Err(e) = super::drift::consume(&drift, &token).await {
                tracing::error!(error = format!("{e:#}"), "The drift consumer stopped.");
            }
        });
    }
    let tasks_token = shutdown.child_token();
    let mut tasks: JoinSet<Outcome> = JoinSet::new();
    {
        let (stage, metrics, token) = (args.stage.clone(), metrics.clone(), tasks_token.clone());
        tasks.spawn(async move {
            let r = super::stage::run(stage, metrics, token).await;
            ("the embed stage".to_owned(), r)
        });
    }

    // One sink per version: the initial one now, the others as the control log registers them.
    let backends = Backends::default();
    let mut sinks = Sinks {
        platform: platform.clone(),
        base: args.sink_listen,
        data_dir: args.sink_data_dir.clone(),
        metrics: metrics.clone(),
        token: tasks_token.clone(),
        backends: backends.clone(),
        started: BTreeSet::new(),
    };
    sinks.start(&model, &mut tasks);
    let log = platform.control_log(tasks_token.clone()).await?;
    let mut view = log.subscribe();

    let consumers = default_consumers();
    let migrator = Migrator::new(
        log.clone(),
        consumers.keys().cloned().collect(),
        "admin-api",
    );
    let config = RouterConfig {
        listen: args.query_listen,
        backends,
        blend: router::Blend::Zscore,
        consumers,
        timeout: Duration::from_secs(2),
        status: StatusFeed::new(),
    };
    super::router::feed_drift(&platform, &config.status, tasks_token.clone());
    super::router::feed_stage(
        &platform,
        args.stage.group(),
        &config.status,
        tasks_token.clone(),
    );
    let extra = admin::router(migrator, args.admin_token).merge(metrics);
    let plans = super::router::plans(&log, tasks_token.clone());
    {
        let token = tasks_token.clone();
        tasks.spawn(async move {
            let r = router::run(config, plans, extra, token)
                .await
                .context("the query router failed");
            ("the query router".to_owned(), r)
        });
    }

    let first = loop {
        tokio::select! {
            done = tasks.join_next() => break done,
            changed = view.changed() => {
                if changed.is_err() {
                    break None;
                }
                let state = view.borrow_and_update().state.clone();
                for m in state.models().filter(|m| m.state != ModelState::Retired) {
                    if let Some(r) = u32::try_from(m.version).ok().and_then(|v| ModelRef::new(&m.model_id, v).ok()) {
                        sinks.start(&r, &mut tasks);
                    }
                }
            }
        }
    };
    tasks_token.cancel();
    let mut failure = None;
    for outcome in first
        .into_iter()
        .chain(tasks.join_all().await.into_iter().map(Ok))
    {
        match outcome {
            Ok((_, Ok(()))) => {}
            Ok((what, Err(e))) => {
                tracing::error!(error = format!("{e:#}"), "{what} stopped.");
                failure.get_or_insert_with(|| e.context(format!("{what} stopped")));
            }
            Err(e) => {
                failure.get_or_insert_with(|| anyhow::anyhow!("a task of up panicked: {e}"));
            }
        }
    }
    failure.map_or(Ok(()), Err)
}

/// Starts each version's sink once, on the next port after the previous one's.
struct Sinks {
    platform: PlatformArgs,
    base: SocketAddr,
    data_dir: Option<PathBuf>,
    metrics: axum::Router,
    token: CancellationToken,
    backends: Backends,
    started: BTreeSet<ModelRef>,
}

impl Sinks {
    fn start(&mut self, model: &ModelRef, tasks: &mut JoinSet<Outcome>) {
        if self.started.contains(model) {
            return;
        }
        let mut listen = self.base;
        listen.set_port(self.base.port() + self.started.len() as u16);
        self.started.insert(model.clone());
        self.backends
            .insert(model.to_string(), format!("http://{listen}"));
        tracing::info!(%model, %listen, "Starting the version's index sink.");
        let args = SinkArgs::for_model(
            self.platform.clone(),
            model.clone(),
            listen,
            self.data_dir.clone(),
        );
        let (metrics, token, what) = (
            self.metrics.clone(),
            self.token.clone(),
            format!("the sink of {model}"),
        );
        tasks.spawn(async move { (what, super::sink::run(args, metrics, token).await) });
    }
}
