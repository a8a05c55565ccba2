//! `embedstream drift`: the drift consumer (see `embedstream_pipeline::drift`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use embedstream_pipeline::drift::{Drift, DriftConfig, Thresholds};
use embedstream_pipeline::embed::burn_model::Device;
use tokio_util::sync::CancellationToken;

use super::adapter::DirArg;
use super::platform::PlatformArgs;

/// Options of `drift`.
#[derive(Debug, Clone, clap::Args)]
pub struct DriftArgs {
    #[command(flatten)]
    pub platform: PlatformArgs,
    #[command(flatten)]
    pub adapters: DirArg,
    /// Seconds between scorings (every 5 minutes by default).
    #[arg(long, default_value_t = 300)]
    pub interval_secs: u64,
    /// Canaries to score (0: all 1,000).
    #[arg(long, default_value_t = 0)]
    pub canaries: usize,
    /// Where the reference vectors are kept (default `$EMBEDSTREAM_HOME/drift`).
    #[arg(long, env = "EMBEDSTREAM_DRIFT_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Score this folder for a model version instead of the catalog's (`id@version=DIR`,
    /// repeatable): a deployed build, checked as it is.
    #[arg(long = "model-dir", value_parser = parse_model_dir)]
    pub model_dirs: Vec<(String, PathBuf)>,
    /// Alert when the mean cosine to the reference is below this.
    #[arg(long, default_value_t = Thresholds::default().min_mean_cosine)]
    pub threshold: f64,
    /// Alert when a normalized model's vectors are further than this from unit length.
    #[arg(long, default_value_t = Thresholds::default().norm_tolerance)]
    pub norm_tolerance: f64,
    /// Where the models run.
    #[arg(long, env = "EMBEDSTREAM_DEVICE", default_value = "cpu")]
    pub device: Device,
    /// Score once, print the reports as JSON lines, and exit (non-zero on an alert).
    #[arg(long)]
    pub once: bool,
    /// Address serving `/metrics`.
    #[arg(
        long,
        env = "EMBEDSTREAM_DRIFT_LISTEN",
        default_value = "127.0.0.1:9302"
    )]
    pub listen: SocketAddr,
}

fn parse_model_dir(s: &str) -> Result<(String, PathBuf), String> {
    let (model, dir) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: want id@version=DIR"))?;
    model
        .parse::<embedstream_topics::ModelRef>()
        .map_err(|e| e.to_string())?;
    Ok((model.to_owned(), PathBuf::from(dir)))
}

impl DriftArgs {
    /// The consumer on `platform` with the command line's defaults, every `interval_secs`.
    pub fn for_platform(
        platform: PlatformArgs,
        interval_secs: u64,
        canaries: usize,
        state_dir: Option<PathBuf>,
    ) -> Self {
        Self {
            platform,
            adapters: DirArg { dir: None },
            interval_secs,
            canaries,
            state_dir,
            model_dirs: Vec::new(),
            threshold: Thresholds::default().min_mean_cosine,
            norm_tolerance: Thresholds::default().norm_tolerance,
            device: Device::Cpu,
            once: false,
            listen: ([127, 0, 0, 1], 9302).into(),
        }
    }

    /// The consumer's configuration.
    pub fn config(&self) -> anyhow::Result<DriftConfig> {
        Ok(DriftConfig {
            kafka: self.platform.kafka()?,
            registry_url: self.platform.registry_url.clone(),
            names: self.platform.names(),
            interval: Duration::from_secs(self.interval_secs.max(1)),
            canaries: self.canaries,
            state_dir: self
                .state_dir
                .clone()
                .unwrap_or_else(|| embedstream_pipeline::models::home().join("drift")),
            model_dirs: self.model_dirs.iter().cloned().collect::<BTreeMap<_, _>>(),
            adapters_dir: self.adapters.path(),
            device: self.device,
            thresholds: Thresholds {
                min_mean_cosine: self.threshold,
                norm_tolerance: self.norm_tolerance,
            },
        })
    }
}

/// Runs the drift consumer until `shutdown` (or one scoring with `--once`).
pub async fn run(
    args: DriftArgs,
    metrics: axum::Router,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if !args.once {
        let work = consume(&args, &shutdown);
        return super::platform::serving_metrics(
            &args.platform.http,
            args.listen,
            metrics,
            &shutdown,
            work,
        )
        .await;
    }
    let control = args.platform.control_log(shutdown.clone()).await?;
    let drift = Drift::open(args.config()?).await?;
    let reports = drift.tick(&control).await?;
    let mut alerts = 0;
    for r in &reports {
        println!("{}", serde_json::to_string(r)?);
        alerts += usize::from(r.verdict.starts_with("alert"));
    }
    if alerts > 0 {
        bail!("{alerts} drift alert(s)");
    }
    Ok(())
}

/// Scores every interval until `shutdown` (the drift consumer without its `/metrics` server:
/// `up` serves the process's metrics itself).
pub async fn consume(args: &DriftArgs, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let control = args.platform.control_log(shutdown.clone()).await?;
    let drift = Drift::open(args.config()?).await?;
    drift
        .run(&control, shutdown)
        .await
        .context("the drift consumer failed")
}
