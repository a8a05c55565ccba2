//! `embedstream up`: the platform's services in one process — the embed stage, one index sink
//! per model version the control log has not retired (each with its compaction; started when
//! a version appears, stopped when it is retired), the query router in front of them
//! (`/v1/search`, the status page at `/status`, the admin API), the drift consumer and the
//! canary join job.
//!
//! The stage or the router stopping stops the others. A sink that fails is logged and left
//! down (the status page shows it not answering) so that the other versions keep serving; the
//! drift consumer's failures are logged and it tries again at its next interval.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use embedstream_pipeline::control::model_ref;
use embedstream_router::{Backends, Blend};
use embedstream_schemas::control::ControlState;
use embedstream_schemas::records::ModelState;
use embedstream_topics::ModelRef;
use embedstream_topics::admin::{Admin, Layout, named_platform_topics};
use tokio::task::{JoinError, JoinSet};
use tokio_util::sync::CancellationToken;

use super::platform::PlatformArgs;
use super::router::Assembly;
use super::sink::SinkArgs;
use super::stage::StageArgs;

impl UpArgs {
    /// Where the platform's Kafka, registry and topics are.
    pub fn platform(&self) -> &PlatformArgs {
        &self.stage.platform
    }
}

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
    /// Slices per version: each version is served by this many sink instances, each holding
    /// one slice of its items and announcing itself, and the router scatters every query to
    /// all of them. 1: one sink holds the whole version.
    #[arg(long, env = "EMBEDSTREAM_SLICES", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    slices: u32,
    /// Model replicas of each sink's query engine (text queries and the embeddings APIs), each
    /// on its own threads (CPU only).
    #[arg(long, env = "EMBEDSTREAM_SINK_EMBED_REPLICAS", default_value_t = 1)]
    sink_embed_replicas: usize,
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
    /// Log answered text queries to the `queries` topic (consumers with `log_queries = false`
    /// and requests with `"log_query": false` are never logged); `false` turns it off.
    #[arg(long, env = "EMBEDSTREAM_QUERY_LOG", default_value_t = true, action = clap::ArgAction::Set)]
    query_log: bool,
}

/// What a task of `up` was, and how it ended.
type Outcome = (Task, anyhow::Result<()>);

/// The tasks of `up`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Task {
    Stage,
    Router,
    Sink(ModelRef),
}

impl std::fmt::Display for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Stage => f.write_str("the embed stage"),
            Self::Router => f.write_str("the query router"),
            Self::Sink(m) => write!(f, "the sink of {m}"),
        }
    }
}

/// Runs the platform until `shutdown` or the first failure of the stage or the router.
pub async fn run(
    args: UpArgs,
    metrics: axum::Router,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.sink_listen.port() != 0,
        "--sink-listen needs a port: each version's sink listens on the next one"
    );
    let platform = args.stage.platform.clone();
    let model: ModelRef = args
        .stage
        .initial_model()?
        .unwrap_or(ModelRef::new("minilm-l6-v2", 1)?);
    // The first sink reads the model's topic from the start: make sure it is there.
    Admin::new(&platform.kafka()?, Duration::from_secs(30))?
        .ensure(&named_platform_topics(
            &platform.names(),
            Layout {
                partitions: platform.partitions,
            },
            std::slice::from_ref(&model),
        ))
        .await
        .context("cannot create the platform's topics")?;
    let token = shutdown.child_token();
    let log = platform.control_log(token.clone()).await?;

    let drift = (args.drift_interval_secs > 0).then(|| {
        let drift = super::drift::DriftArgs::for_platform(
            platform.clone(),
            args.drift_interval_secs,
            args.drift_canaries,
            args.drift_state_dir.clone(),
        );
        let token = token.clone();
        tokio::spawn(async move {
            if let Err(e) = super::drift::consume(&drift, &token).await {
                tracing::error!(error = format!("{e:#}"), "The drift consumer stopped.");
            }
        })
    });
    let canary_join = {
        let join = super::canary::CanaryJoinArgs::for_platform(platform.clone());
        let token = token.clone();
        tokio::spawn(async move {
            if let Err(e) = super::canary::consume(&join, &token).await {
                tracing::error!(error = format!("{e:#}"), "The canary join job stopped.");
            }
        })
    };
    let mut tasks: JoinSet<Outcome> = JoinSet::new();
    {
        let (stage, metrics, token) = (args.stage.clone(), metrics.clone(), token.clone());
        tasks.spawn(async move { (Task::Stage, super::stage::run(stage, metrics, token).await) });
    }

    // One sink per version: the initial one unless the control log retired it, then every
    // version the log has not retired, as it changes.
    let backends = Backends::default();
    let mut sinks = Sinks {
        platform: platform.clone(),
        base: args.sink_listen,
        next: 0,
        data_dir: args.sink_data_dir.clone(),
        embed_replicas: args.sink_embed_replicas,
        slices: args.slices,
        metrics: metrics.clone(),
        token: token.clone(),
        backends: backends.clone(),
        running: BTreeMap::new(),
    };
    let state = log.state();
    let initial_retired = state
        .models()
        .any(|m| m.state == ModelState::Retired && model_ref(m).as_ref() == Some(&model));
    if !initial_retired {
        sinks.start(&model, &mut tasks);
    }
    sinks.sync(&state, &mut tasks);

    let mut view = log.subscribe();
    {
        let assembly = Assembly {
            platform: platform.clone(),
            log,
            listen: args.query_listen,
            backends,
            blend: Blend::Zscore,
            timeout: Duration::from_secs(2),
            admin_token: args.admin_token.clone(),
            stage_group: args.stage.group().to_owned(),
            query_log: args.query_log,
        };
        let (metrics, token) = (metrics.clone(), token.clone());
        tasks.spawn(async move { (Task::Router, assembly.serve(metrics, token).await) });
    }

    let first = loop {
        tokio::select! {
            done = tasks.join_next() => match done {
                Some(Ok((Task::Sink(model), result))) => {
                    sinks.stopped(&model, result);
                }
                other => break other,
            },
            changed = view.changed() => {
                if changed.is_err() {
                    break None;
                }
                let state = view.borrow_and_update().state.clone();
                sinks.sync(&state, &mut tasks);
            }
        }
    };
    token.cancel();
    let mut failure = None;
    let mut note = |done: Result<Outcome, JoinError>| match done {
        Ok((_, Ok(()))) => {}
        Ok((task, Err(e))) => {
            tracing::error!(error = format!("{e:#}"), "{task} stopped.");
            failure.get_or_insert_with(|| e.context(format!("{task} stopped")));
        }
        Err(e) => {
            failure.get_or_insert_with(|| anyhow::anyhow!("a task of up panicked: {e}"));
        }
    };
    if let Some(done) = first {
        note(done);
    }
    while let Some(done) = tasks.join_next().await {
        note(done);
    }
    if let Some(drift) = drift {
        let _ = drift.await;
    }
    let _ = canary_join.await;
    failure.map_or(Ok(()), Err)
}

/// The running sinks: one per version, each on its own port (never reused in a process) and
/// with its own token, so that a retired version's sink stops alone.
struct Sinks {
    platform: PlatformArgs,
    base: SocketAddr,
    next: u16,
    data_dir: Option<PathBuf>,
    embed_replicas: usize,
    slices: u32,
    metrics: axum::Router,
    token: CancellationToken,
    backends: Backends,
    /// Per version, the token of its sinks and how many of them still run.
    running: BTreeMap<ModelRef, (CancellationToken, usize)>,
}

impl Sinks {
    /// Starts a sink for every version the control log has not retired and stops the sinks
    /// of retired ones.
    fn sync(&mut self, state: &ControlState, tasks: &mut JoinSet<Outcome>) {
        for m in state.models() {
            let Some(model) = model_ref(m) else { continue };
            if m.state == ModelState::Retired {
                if let Some((token, _)) = self.running.remove(&model) {
                    tracing::info!(%model, "The version is retired: stopping its sink.");
                    token.cancel();
                    self.backends.remove(&model.to_string());
                }
            } else {
                self.start(&model, tasks);
            }
        }
    }

    fn start(&mut self, model: &ModelRef, tasks: &mut JoinSet<Outcome>) {
        if self.running.contains_key(model) {
            return;
        }
        let slices = match embedstream_topics::slice::Slice::all(self.slices) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(%model, error = %e, "Not starting the version's sinks.");
                return;
            }
        };
        let token = self.token.child_token();
        let mut started = 0;
        for slice in slices {
            let Some(port) = self.base.port().checked_add(self.next) else {
                tracing::error!(%model, base = %self.base, "No port left after the sink base port: not starting the version's sink.");
                token.cancel();
                return;
            };
            self.next += 1;
            let mut listen = self.base;
            listen.set_port(port);
            let mut args = SinkArgs::for_model(
                self.platform.clone(),
                model.clone(),
                listen,
                self.data_dir.clone(),
            );
            args.embed_replicas = self.embed_replicas;
            if slice.is_whole() {
                // One sink: the router is told where it is.
                self.backends.insert(
                    model.to_string(),
                    format!("{}://{listen}", self.platform.http.scheme()),
                );
            } else {
                // Slices announce themselves, as they would from processes of their own.
                args.slice(slice);
            }
            tracing::info!(%model, %listen, %slice, "Starting an index sink of the version.");
            let (metrics, task, token) = (
                self.metrics.clone(),
                Task::Sink(model.clone()),
                token.clone(),
            );
            tasks.spawn(async move { (task, super::sink::run(args, metrics, token).await) });
            started += 1;
        }
        self.running.insert(model.clone(), (token, started));
    }

    /// A sink's task ended: expected when its version was retired, when its slice was retired
    /// (`slices retire`), or when everything stops. A failure stops the version's other
    /// slices too and leaves them down; a later start starts them all again.
    fn stopped(&mut self, model: &ModelRef, result: anyhow::Result<()>) {
        let live = match self.running.get_mut(model) {
            Some((token, left)) => {
                *left = left.saturating_sub(1);
                if result.is_err() || *left == 0 {
                    token.cancel();
                    self.running.remove(model);
                }
                true
            }
            None => false,
        };
        match result {
            Err(e) => tracing::error!(
                error = format!("{e:#}"),
                %model,
                "The version's sink stopped; the others keep serving (the status page shows it down)."
            ),
            Ok(()) if live && !self.token.is_cancelled() => {
                tracing::warn!(%model, "The version's sink stopped.");
            }
            Ok(()) => {}
        }
    }
}
