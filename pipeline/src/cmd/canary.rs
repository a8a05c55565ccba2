//! `embedstream canary-join`: the canary join job (see `embedstream_pipeline::canary::job`).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use embedstream_pipeline::canary::job::{JobConfig, JoinJob};
use embedstream_pipeline::canary::join::JoinConfig;
use tokio_util::sync::CancellationToken;

use super::platform::PlatformArgs;

/// Options of `canary-join`.
#[derive(Debug, Clone, clap::Args)]
pub struct CanaryJoinArgs {
    #[command(flatten)]
    pub platform: PlatformArgs,
    /// Feedback up to this many seconds after an answer counts for it (the attribution window).
    #[arg(long, default_value_t = JoinConfig::default().window_ms / 1000)]
    pub window_secs: i64,
    /// Seconds an exposure stays open after its window for feedback that arrives late.
    #[arg(long, default_value_t = JoinConfig::default().lateness_ms / 1000)]
    pub lateness_secs: i64,
    /// Feedback up to this many ms before its answer still counts (the clocks of the router
    /// and of the applications differ).
    #[arg(long, default_value_t = JoinConfig::default().skew_ms)]
    pub skew_ms: i64,
    /// Milliseconds between judgements of the canaries.
    #[arg(long, default_value_t = 1000)]
    pub tick_ms: u64,
    /// Seconds between records of a verdict that did not change (a change is recorded at once).
    #[arg(long, default_value_t = 60)]
    pub record_secs: u64,
    /// Address serving `/metrics`.
    #[arg(
        long,
        env = "EMBEDSTREAM_CANARY_JOIN_LISTEN",
        default_value = "127.0.0.1:9303"
    )]
    pub listen: SocketAddr,
}

impl CanaryJoinArgs {
    /// The job on `platform` with the command line's defaults.
    pub fn for_platform(platform: PlatformArgs) -> Self {
        let join = JoinConfig::default();
        Self {
            platform,
            window_secs: join.window_ms / 1000,
            lateness_secs: join.lateness_ms / 1000,
            skew_ms: join.skew_ms,
            tick_ms: 1000,
            record_secs: 60,
            listen: ([127, 0, 0, 1], 9303).into(),
        }
    }

    /// The job's configuration.
    pub fn config(&self) -> anyhow::Result<JobConfig> {
        anyhow::ensure!(
            self.window_secs > 0 && self.lateness_secs >= 0 && self.skew_ms >= 0,
            "--window-secs must be positive, --lateness-secs and --skew-ms not negative"
        );
        Ok(JobConfig {
            kafka: self.platform.kafka()?,
            registry_url: self.platform.registry_url.clone(),
            names: self.platform.names(),
            join: JoinConfig {
                window_ms: self.window_secs * 1000,
                lateness_ms: self.lateness_secs * 1000,
                skew_ms: self.skew_ms,
            },
            tick: Duration::from_millis(self.tick_ms.max(10)),
            record_every: Duration::from_secs(self.record_secs),
            consumers: self.platform.consumers()?,
            by: "canary-join".to_owned(),
        })
    }
}

/// Runs the join job with its `/metrics` server until `shutdown`.
pub async fn run(
    args: CanaryJoinArgs,
    metrics: axum::Router,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let work = consume(&args, &shutdown);
    super::platform::serving_metrics(&args.platform.http, args.listen, metrics, &shutdown, work)
        .await
}

/// Runs the join job until `shutdown` (without a `/metrics` server: `up` serves the process's
/// metrics itself).
pub async fn consume(args: &CanaryJoinArgs, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let config = args.config()?;
    if let Some(path) = &args.platform.consumers_file {
        config.consumers.follow_file(
            path.clone(),
            embedstream_schemas::consumers::FOLLOW_EVERY,
            |_| Ok(()),
            shutdown.clone(),
        );
    }
    let control = args.platform.control_log(shutdown.clone()).await?;
    JoinJob::new(config)
        .run(&control, shutdown)
        .await
        .context("the canary join job failed")
}
