//! The index sink service: one embedding topic → a [`ShardedIndex`] kept current by a Kafka
//! consumer, compacted and snapshotted in the background, queried over HTTP.
//!
//! [`run`] opens the snapshots, starts the maintenance thread, the consumer thread (see
//! [`consumer`](self) docs: recovery = snapshots + replay from their offsets, poison skipped,
//! retryable records retried in order) and the HTTP server, and on `shutdown` stops them and
//! writes a final snapshot of every shard, so a clean restart replays nothing. A kill -9
//! loses nothing either: the restart replays from the last snapshots' offsets. A snapshot
//! older than the topic's `delete.retention.ms` is not resumed from: the cleaner may have
//! removed tombstones written after it, so its shard is rebuilt from the beginning of the
//! topic instead of bringing deleted items back.
//!
//! Not guaranteed: the age is the snapshot's; a sink that lagged behind the topic when it
//! wrote the snapshot may have left tombstones unread that were written up to that lag
//! earlier.

mod config;
mod consumer;
mod embed;
mod error;
mod golden;
mod http;
pub mod metrics;
pub mod openapi;
#[cfg(test)]
mod properties;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use embedstream_schemas::Codec;
use embedstream_schemas::consumers::{Consumers, FOLLOW_EVERY};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use config::within_index_bound;
pub use config::{HttpSettings, KafkaSettings, Settings, SinkConfig};
pub use embed::{EmbedRefusal, Embedded, Prompt, TextBatch, TextsFuture};
pub use error::{ServiceError, ServiceResult};
pub use http::{EmbedError, EmbedFuture, QueryEmbedder};

use crate::ShardedIndex;

/// The oldest snapshot time that a replay from the snapshot's offsets can trust: now minus the
/// topic's `delete.retention.ms` when the topic is compacted (`None` inside: no limit). Asks
/// the broker until it answers (a broker that is down delays the start, it does not change
/// what is loaded); `None` when `shutdown` comes first.
async fn tombstone_horizon(
    config: &SinkConfig,
    shutdown: &CancellationToken,
) -> Option<Option<i64>> {
    let ask = async || -> Result<Option<i64>, embedstream_topics::Error> {
        let admin = embedstream_topics::admin::Admin::new(&config.kafka, Duration::from_secs(10))?;
        let configs = admin.topic_configs(&config.topic).await?;
        let compacted = configs
            .get("cleanup.policy")
            .is_some_and(|p| p.split(',').any(|p| p.trim() == "compact"));
        let retention_ms = configs
            .get("delete.retention.ms")
            .and_then(|v| v.parse::<i64>().ok());
        Ok(match (compacted, retention_ms) {
            (true, Some(ms)) => Some(embedstream_topics::time::now_ms() - ms),
            _ => None,
        })
    };
    loop {
        match ask().await {
            Ok(horizon) => return Some(horizon),
            Err(error) => {
                tracing::warn!(topic = %config.topic, error = %error, "Cannot read the topic's tombstone retention; asking again in 2 s.");
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return None,
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

/// Runs the sink until `shutdown` (or a fatal error), serving the query API and `routes`
/// (the binary's `/metrics`) on `config.listen`. `embedder` answers text queries; without
/// one they are refused with 400.
pub async fn run(
    config: SinkConfig,
    embedder: Option<Arc<dyn QueryEmbedder>>,
    routes: Router,
    shutdown: CancellationToken,
) -> ServiceResult<()> {
    let settings = config
        .settings
        .clone()
        .resolve(&config.spec, &config.topic)?;
    let Some(not_before_ms) = tombstone_horizon(&config, &shutdown).await else {
        return Ok(());
    };
    let dir = config.data_dir.clone();
    let index_config = settings.index.clone();
    let index = tokio::task::spawn_blocking(move || {
        ShardedIndex::open_newer_than(dir, index_config, not_before_ms)
    })
    .await
    .map_err(|_| ServiceError::Thread {
        what: "snapshot load",
    })?
    .map_err(|source| ServiceError::Index { source })?;
    let index = Arc::new(index);
    tracing::info!(
        topic = %config.topic,
        group = %config.group,
        dir = %config.data_dir.display(),
        items = index.len(),
        resume = ?index.resume_offsets(),
        "Index opened."
    );
    let maintenance = index.spawn_maintenance();
    if let (Some(embedder), Some(file)) = (&embedder, &config.consumers_file) {
        let texts = golden::texts(file, &settings.consumers);
        if !texts.is_empty() {
            tokio::spawn(golden::embed_into(
                Arc::clone(embedder),
                Arc::clone(&index),
                texts,
            ));
        }
    }

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServiceError::Listen {
            addr: config.listen,
            source,
        })?;
    let local = listener.local_addr().unwrap_or(config.listen);

    let progress = Arc::new(consumer::Progress::default());
    let kafka = consumer::create(&config, Arc::clone(&progress))?;
    let token = shutdown.child_token();
    let work = consumer::Loop {
        index: Arc::clone(&index),
        codec: Codec::new(&config.registry_url),
        runtime: tokio::runtime::Handle::current(),
        model: config.spec.model.clone(),
        topic: config.topic.clone(),
        retry_backoff: settings.kafka.retry_backoff,
        metadata_refresh: settings.kafka.metadata_refresh,
        progress: Arc::clone(&progress),
        shutdown: token.clone(),
        kafka: consumer::kafka_config(&config)?,
        stall_after: Duration::from_secs(30),
    };
    let (replace_config, replace_progress) = (config.clone(), Arc::clone(&progress));
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let stop_on_end = token.clone();
    let consumer_thread = std::thread::Builder::new()
        .name("sink-consumer".into())
        .spawn(move || {
            let mut kafka = kafka;
            let mut replacing = false;
            let result = loop {
                match work.run(&kafka, replacing) {
                    Ok(consumer::Ended::Stuck) => {
                        match consumer::create(&replace_config, Arc::clone(&replace_progress)) {
                            Ok(fresh) => {
                                // Closing the old client may wait on the brokers: off this thread.
                                let old = std::mem::replace(&mut kafka, fresh);
                                std::thread::spawn(move || drop(old));
                                replacing = true;
                            }
                            Err(e) => break Err(e),
                        }
                    }
                    Ok(consumer::Ended::Stopped) => break Ok(()),
                    Err(e) => break Err(e),
                }
            };
            // Whatever ended the loop ends the service.
            stop_on_end.cancel();
            let _ = done_tx.send(result);
        })
        .map_err(|_| ServiceError::Thread { what: "consumer" })?;

    let consumers =
        Consumers::with_attributes(settings.consumers.clone(), settings.attributes.clone());
    http::Api::register_consumers(&consumers, &config.spec.model);
    if let Some(path) = &config.consumers_file {
        let max_k = settings.index.max_k;
        consumers.follow_file(
            path.clone(),
            FOLLOW_EVERY,
            move |p| within_index_bound(p, max_k),
            token.clone(),
        );
    }
    let api = Arc::new(http::Api {
        index: Arc::clone(&index),
        model: config.spec.model.clone(),
        topic: config.topic.clone(),
        group: config.group.clone(),
        consumers,
        admission: Semaphore::new(settings.http.max_concurrent_queries),
        http: settings.http.clone(),
        embedder,
        progress,
        adapters: http::Adapters::new(config.adapters_dir.clone()),
    });
    let app = http::router(api, config.api_keys.clone())
        .merge(routes)
        .layer(DefaultBodyLimit::max(settings.http.max_body_bytes));
    tracing::info!(listen = %local, "Serving the query API and /metrics.");
    let server_token = token.clone();
    let tls = config.tls.clone();
    let server = tokio::spawn(async move {
        embedstream_schemas::serve::serve(listener, app, tls.as_ref(), server_token).await
    });

    token.cancelled().await;
    let consumed = done_rx
        .await
        .unwrap_or(Err(ServiceError::Thread { what: "consumer" }));
    let _ = consumer_thread.join();
    if let Err(error) = &consumed {
        tracing::error!(error = %error, "The consumer stopped.");
    }
    let _ = server.await;
    tracing::info!("Stopping compaction and writing the final snapshots.");
    let persisted = tokio::task::spawn_blocking(move || {
        maintenance.stop();
        index.persist()
    })
    .await
    .map_err(|_| ServiceError::Thread { what: "persist" })?;
    persisted.map_err(|source| ServiceError::Index { source })?;
    tracing::info!("Sink stopped.");
    consumed
}
