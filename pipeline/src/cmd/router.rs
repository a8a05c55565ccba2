//! `embedstream router`: the query router (blended reads per consumer, following the control
//! log) with the migration admin API and `/metrics`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use embedstream_index_sink::router::{
    self, Blend, DriftPoint, RouterConfig, StageProgress, StatusFeed,
};
use embedstream_index_sink::service::default_consumers;
use embedstream_pipeline::control::ControlLog;
use embedstream_pipeline::drift;
use embedstream_pipeline::migrate::{Migrator, admin};
use embedstream_schemas::control::ControlState;
use embedstream_schemas::records::{DriftKind, DriftReport};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::stage::PlatformArgs;

/// Options of `router`.
#[derive(Debug, Clone, clap::Args)]
pub struct RouterArgs {
    #[command(flatten)]
    pub platform: PlatformArgs,
    /// Where to serve `/v1/search`, `/v1/plans`, the admin API and `/metrics`.
    #[arg(
        long,
        env = "EMBEDSTREAM_ROUTER_LISTEN",
        default_value = "127.0.0.1:9400"
    )]
    pub listen: SocketAddr,
    /// The sink of a version: `id@version=http://host:port` (repeat for each version).
    #[arg(long = "backend", value_parser = parse_backend, required = true)]
    pub backends: Vec<(String, String)>,
    /// How two versions' lists are merged: rrf or zscore.
    #[arg(long, default_value = "zscore")]
    pub blend: Blend,
    /// Timeout of one sink request, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub backend_timeout_ms: u64,
    /// Bearer token of the admin API (`/admin/v1/migration/...`); disabled when unset.
    #[arg(long, env = "EMBEDSTREAM_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// The embed stage's consumer group, whose backlog on `items` the status page shows.
    #[arg(
        long,
        env = "EMBEDSTREAM_STAGE_GROUP",
        default_value = "embedstream-embed-stage"
    )]
    pub stage_group: String,
}

fn parse_backend(s: &str) -> Result<(String, String), String> {
    let (model, url) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected id@version=http://host:port"))?;
    model
        .parse::<embedstream_topics::ModelRef>()
        .map_err(|e| e.to_string())?;
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!("{url:?} is not an http(s) URL"));
    }
    Ok((model.to_owned(), url.to_owned()))
}

/// The control state as a watch channel of the state alone.
pub fn plans(log: &ControlLog, shutdown: CancellationToken) -> watch::Receiver<Arc<ControlState>> {
    let mut view = log.subscribe();
    let (tx, rx) = watch::channel(view.borrow_and_update().state.clone());
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                changed = view.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let state = view.borrow_and_update().state.clone();
                    tx.send_replace(state);
                }
            }
        }
    });
    rx
}

/// Runs the router until `shutdown`.
pub async fn run(
    args: RouterArgs,
    metrics: axum::Router,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let log = args.platform.control_log(shutdown.clone()).await?;
    let consumers = default_consumers();
    let migrator = Migrator::new(
        log.clone(),
        consumers.keys().cloned().collect(),
        "admin-api",
    );
    let config = RouterConfig {
        listen: args.listen,
        backends: args.backends.into_iter().collect::<BTreeMap<_, _>>().into(),
        blend: args.blend,
        consumers,
        timeout: Duration::from_millis(args.backend_timeout_ms),
        status: StatusFeed::new(),
    };
    feed_drift(&args.platform, &config.status, shutdown.clone());
    feed_stage(
        &args.platform,
        &args.stage_group,
        &config.status,
        shutdown.clone(),
    );
    if args.admin_token.is_none() {
        tracing::warn!("EMBEDSTREAM_ADMIN_TOKEN is not set: the admin API is disabled.");
    }
    let extra = admin::router(migrator, args.admin_token).merge(metrics);
    router::run(config, plans(&log, shutdown.clone()), extra, shutdown)
        .await
        .context("the query router failed")
}

/// Feeds the status page's drift history from `drift.reports` (from its beginning, then as
/// reports arrive). A failure is logged: the page then shows no drift.
pub fn feed_drift(platform: &PlatformArgs, feed: &Arc<StatusFeed>, shutdown: CancellationToken) {
    let (bootstrap, topic) = (platform.bootstrap.clone(), platform.names().drift_reports());
    let codec = embedstream_schemas::Codec::new(&platform.registry_url);
    let feed = Arc::clone(feed);
    tokio::spawn(async move {
        let on_report = move |r: DriftReport| {
            feed.record_drift(DriftPoint {
                at_ms: r.report_time,
                model: format!("{}@{}", r.model_id, r.model_version),
                kind: match r.kind {
                    DriftKind::SelfCheck => "self".to_owned(),
                    DriftKind::CrossVersion => "cross_version".to_owned(),
                },
                compared: r
                    .compared_model_id
                    .zip(r.compared_model_version)
                    .map(|(id, v)| format!("{id}@{v}")),
                mean_cosine: r.mean_cosine,
                min_cosine: r.min_cosine,
                verdict: r.verdict,
            });
        };
        if let Err(e) = drift::follow_reports(&bootstrap, codec, &topic, on_report, shutdown).await
        {
            tracing::error!(error = %e, topic, "Cannot follow the drift reports; the status page shows none.");
        }
    });
}

/// Reads the embed stage's backlog on `items` every 5 s for the status page.
pub fn feed_stage(
    platform: &PlatformArgs,
    group: &str,
    feed: &Arc<StatusFeed>,
    shutdown: CancellationToken,
) {
    let (bootstrap, topic, group) = (
        platform.bootstrap.clone(),
        platform.names().items(),
        group.to_owned(),
    );
    let feed = Arc::clone(feed);
    tokio::spawn(async move {
        loop {
            let (b, t, g) = (bootstrap.clone(), topic.clone(), group.clone());
            match tokio::task::spawn_blocking(move || {
                embedstream_pipeline::stage::consumer::group_lag(&b, &g, &t)
            })
            .await
            {
                Ok(Ok((lag, events))) => feed.record_stage(StageProgress {
                    topic: topic.clone(),
                    group: group.clone(),
                    lag,
                    events,
                    at_ms: embedstream_pipeline::control::now_ms(),
                }),
                Ok(Err(e)) => tracing::debug!(error = %e, "Cannot read the stage's lag."),
                Err(e) => tracing::debug!(error = %e, "Reading the stage's lag panicked."),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
    });
}
