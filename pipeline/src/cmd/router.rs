//! `embedstream router`: the query router (blended reads per consumer, following the control
//! log) with the migration admin API and `/metrics`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use embedstream_pipeline::control::ControlLog;
use embedstream_pipeline::drift;
use embedstream_pipeline::migrate::Migrator;
use embedstream_pipeline::query_log;
use embedstream_pipeline::stage::consumer::GroupLag;
use embedstream_router::admin;
use embedstream_router::{Backends, Blend, DriftPoint, RouterConfig, StageProgress, StatusFeed};
use embedstream_schemas::control::ControlState;
use embedstream_schemas::records::DriftReport;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::platform::PlatformArgs;

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
    /// The sink of a version that does not announce itself: `id@version=http://host:port`
    /// (repeat for each version). Sinks that announce themselves on `embedstream.instances`
    /// (slices, replicas) are found without it.
    #[arg(long = "backend", value_parser = parse_backend)]
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
    /// Log answered text queries to the `queries` topic (consumers with `log_queries = false`
    /// and requests with `"log_query": false` are never logged); `false` turns it off.
    #[arg(long, env = "EMBEDSTREAM_QUERY_LOG", default_value_t = true, action = clap::ArgAction::Set)]
    pub query_log: bool,
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
    Assembly {
        log,
        listen: args.listen,
        backends: {
            let backends = Backends::default();
            for (model, url) in args.backends {
                backends.insert(model, url);
            }
            backends
        },
        blend: args.blend,
        timeout: Duration::from_millis(args.backend_timeout_ms),
        admin_token: args.admin_token,
        stage_group: args.stage_group,
        query_log: args.query_log,
        platform: args.platform,
    }
    .serve(metrics, shutdown)
    .await
}

/// A router put together: the `router` command's and `up`'s.
pub struct Assembly {
    /// The platform (topics, registry) whose control log, drift reports and stage it shows.
    pub platform: PlatformArgs,
    /// The control log it follows.
    pub log: ControlLog,
    /// Where it serves.
    pub listen: SocketAddr,
    /// Each version's sink.
    pub backends: Backends,
    /// Default blending.
    pub blend: Blend,
    /// Per sink request.
    pub timeout: Duration,
    /// The admin API's bearer token (disabled when unset).
    pub admin_token: Option<String>,
    /// The embed stage's consumer group (its backlog on the status page).
    pub stage_group: String,
    /// Whether answered text queries go to the `queries` topic.
    pub query_log: bool,
}

impl Assembly {
    /// Starts the status page's feeds and serves queries, the status page, the admin API and
    /// `metrics` until `shutdown`.
    pub async fn serve(
        self,
        metrics: axum::Router,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let consumers = self.platform.consumers()?;
        embedstream_pipeline::instances::follow(
            self.platform.kafka()?,
            &self.platform.registry_url,
            &self.platform.names(),
            self.backends.clone(),
            shutdown.clone(),
        );
        if let Some(path) = &self.platform.consumers_file {
            consumers.follow_file(
                path.clone(),
                embedstream_schemas::consumers::FOLLOW_EVERY,
                |_| Ok(()),
                shutdown.clone(),
            );
        }
        let migrator = Migrator::new(self.log.clone(), consumers.names(), "admin-api");
        let query_log = if self.query_log {
            let (log, queue) = embedstream_router::QueryLog::channel(query_log::QUEUE);
            query_log::spawn(
                self.platform.kafka()?,
                &self.platform.registry_url,
                &self.platform.names(),
                queue,
                shutdown.clone(),
            );
            Some(log)
        } else {
            None
        };
        // Answers under a canary: always written, the canary's gate depends on them.
        let (exposure_log, exposures) =
            embedstream_router::ExposureLog::channel(embedstream_pipeline::canary::QUEUE);
        embedstream_pipeline::canary::spawn_exposures(
            self.platform.kafka()?,
            &self.platform.registry_url,
            &self.platform.names(),
            exposures,
            shutdown.clone(),
        );
        let config = RouterConfig {
            listen: self.listen,
            backends: self.backends,
            blend: self.blend,
            consumers,
            timeout: self.timeout,
            status: StatusFeed::new(),
            api_keys: self.platform.api_keys()?,
            tls: self.platform.http.tls()?,
            trust_pem: self.platform.http.trusted_pem()?,
            query_log,
            exposure_log: Some(exposure_log),
        };
        feed_drift(&self.platform, &config.status, shutdown.clone())?;
        feed_stage(
            &self.platform,
            &self.stage_group,
            &config.status,
            shutdown.clone(),
        )?;
        if self.admin_token.is_none() {
            tracing::warn!("EMBEDSTREAM_ADMIN_TOKEN is not set: the admin API is disabled.");
        }
        let extra = admin::router(Arc::new(migrator), self.admin_token).merge(metrics);
        embedstream_router::run(config, plans(&self.log, shutdown.clone()), extra, shutdown)
            .await
            .context("the query router failed")
    }
}

/// Feeds the status page's drift history from `drift.reports` (from its beginning, then as
/// reports arrive). A failure is logged and the topic read again from its beginning after 5 s.
pub fn feed_drift(
    platform: &PlatformArgs,
    feed: &Arc<StatusFeed>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (kafka, topic) = (platform.kafka()?, platform.names().drift_reports());
    let registry = platform.registry_url.clone();
    let feed = Arc::clone(feed);
    tokio::spawn(async move {
        loop {
            feed.clear_drift();
            let sink = Arc::clone(&feed);
            let on_report = move |r: DriftReport| {
                sink.record_drift(DriftPoint {
                    at_ms: r.report_time,
                    model: format!("{}@{}", r.model_id, r.model_version),
                    kind: drift::kind_label(r.kind).to_owned(),
                    compared: r
                        .compared_model_id
                        .zip(r.compared_model_version)
                        .map(|(id, v)| format!("{id}@{v}")),
                    mean_cosine: r.mean_cosine,
                    min_cosine: r.min_cosine,
                    verdict: r.verdict,
                });
            };
            let codec = embedstream_schemas::Codec::new(&registry);
            match drift::follow_reports(&kafka, codec, &topic, on_report, shutdown.clone()).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, topic, "Cannot follow the drift reports; reading them again in 5 s.")
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
    });
    Ok(())
}

/// Reads the embed stage's backlog on `items` every 5 s for the status page, with one Kafka
/// client kept for the purpose (made again after an error).
pub fn feed_stage(
    platform: &PlatformArgs,
    group: &str,
    feed: &Arc<StatusFeed>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (kafka, topic, group) = (
        platform.kafka()?,
        platform.names().items(),
        group.to_owned(),
    );
    let feed = Arc::clone(feed);
    tokio::task::spawn_blocking(move || {
        let mut reader = None;
        while !shutdown.is_cancelled() {
            if reader.is_none() {
                reader = GroupLag::new(&kafka, &group, &topic)
                    .inspect_err(|e| tracing::debug!(error = %e, "Cannot read the stage's lag."))
                    .ok();
            }
            if let Some(r) = &reader {
                match r.read() {
                    Ok((lag, events)) => feed.record_stage(StageProgress {
                        topic: topic.clone(),
                        group: group.clone(),
                        lag,
                        events,
                        at_ms: embedstream_topics::time::now_ms(),
                    }),
                    Err(e) => {
                        tracing::debug!(error = %e, "Cannot read the stage's lag.");
                        reader = None;
                    }
                }
            }
            for _ in 0..50 {
                if shutdown.is_cancelled() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    });
    Ok(())
}
