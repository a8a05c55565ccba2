//! `embedstream up`: the platform's services in one process — the embed stage, the index
//! sink (with its query API) of the initial model version, and the drift consumer. The first of
//! the stage and the sink to fail stops the other; the drift consumer's failures are logged
//! and it tries again at its next interval.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use embedstream_topics::ModelRef;
use embedstream_topics::admin::{Admin, Layout, named_platform_topics};
use tokio_util::sync::CancellationToken;

use super::sink::SinkArgs;
use super::stage::StageArgs;

/// Options of `up`.
#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    #[command(flatten)]
    stage: StageArgs,
    /// Address of the query API (`/v1/search`, `/v1/stats`) of the initial model's sink.
    #[arg(
        long,
        env = "EMBEDSTREAM_QUERY_LISTEN",
        default_value = "127.0.0.1:9401"
    )]
    query_listen: SocketAddr,
    /// Base directory of the sink's snapshots (default `$EMBEDSTREAM_HOME/sink`).
    #[arg(long, env = "EMBEDSTREAM_SINK_DATA_DIR")]
    sink_data_dir: Option<PathBuf>,
    /// Seconds between drift scorings of the canary set; 0 runs no drift consumer.
    #[arg(long, env = "EMBEDSTREAM_DRIFT_INTERVAL_SECS", default_value_t = 300)]
    drift_interval_secs: u64,
}

/// Runs the stage and the sink until `shutdown` or the first failure.
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
    // The sink reads the model's topic from the start: make sure it is there.
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
        let drift =
            super::drift::DriftArgs::for_platform(platform.clone(), args.drift_interval_secs);
        let token = shutdown.child_token();
        tokio::spawn(async move {
            if let Err(e) = super::drift::consume(&drift, &token).await {
                tracing::error!(error = format!("{e:#}"), "The drift consumer stopped.");
            }
        });
    }
    let sink = SinkArgs::for_model(platform, model, args.query_listen, args.sink_data_dir);
    let stage_token = shutdown.child_token();
    let sink_token = shutdown.child_token();
    let mut stage = tokio::spawn(super::stage::run(
        args.stage,
        metrics.clone(),
        stage_token.clone(),
    ));
    let mut sink_task = tokio::spawn(super::sink::run(sink, metrics, sink_token.clone()));
    let (first, other_token, other) = tokio::select! {
        r = &mut stage => (r, sink_token, sink_task),
        r = &mut sink_task => (r, stage_token, stage),
    };
    other_token.cancel();
    let second = other.await;
    first??;
    second??;
    Ok(())
}
