//! The query router: the consumers' entry point during (and outside) a migration. It follows
//! the control log's read plans and, per consumer, asks the sink of every version in the plan
//! and blends the lists ([`blend`]); weights change live when the control log does.
//!
//! `POST /v1/search` takes the sink's request (`consumer`, `text` | `vector`, `k`) and also
//! `vectors` (`{"id@v": [...]}`, one query vector per version, for clients that embed
//! themselves), `blend` (`rrf` | `zscore`, overriding the default) and `plan`
//! (`[{"model", "weight"}]`, overriding the consumer's plan: for evaluation). A plan of one
//! version passes the sink's scores through unchanged. A version whose sink fails (down,
//! 5xx, timeout) is left out and named in `degraded`; the query fails (503) only when every
//! version failed. A sink's 400 is the client's error and is returned as is.
//! `GET /v1/plans` shows every consumer's effective plan (`[{"model", "weight", "adapter",
//! "fuse"}]`; an entry with an adapter reads that version's index with the new model's queries
//! mapped by the adapter, which the version's sink applies; with `fuse`, the sink searches the
//! mapped query fused with its own model's query of the same text).
//!
//! Answered text queries go to a query log ([`QueryLog`]) unless the consumer or the request
//! opts out.
//!
//! `GET /openapi.json` describes every route ([`openapi`]).
//!
//! `POST /v1/embeddings` (OpenAI's shape) and `POST /embed` (TEI's) embed texts with a version
//! (or a consumer's current version), computed by that version's sink ([`embeddings`]).
//!
//! With API keys ([`embedstream_schemas::access`]) the query routes need a key, a search may
//! only name a consumer its key grants, and the key goes on to the sinks with the query.
pub mod admin;
pub mod blend;
mod config;
mod embeddings;
mod feed;
pub mod metrics;
pub mod openapi;
mod outbox;
mod search;
mod shared;
mod status;
mod topology;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use embedstream_schemas::control::ControlState;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use ::metrics as metrics_crate;

pub use self::blend::{Blend, Blended, Ranked};
pub use self::config::{Backends, RouterConfig};
pub use self::feed::{DriftPoint, StageProgress, StatusFeed};
pub use self::outbox::{ExposureLog, Outbox, QueryLog};
use self::shared::Shared;
pub use self::topology::{MAX_LAG, Replica, Scatter, SliceTarget, spawn_health_checks};
use embedstream_schemas::consumers::export_slos;

/// The router's routes.
pub fn router(config: RouterConfig, plans: watch::Receiver<Arc<ControlState>>) -> Router {
    export_slos(&config.consumers.current());
    // Registered up front so every configured consumer's series is there before its first
    // query; a consumer added later gets its series at its first query.
    for c in config.consumers.names() {
        let _ = metrics_crate::histogram!(metrics::QUERY_SECONDS, "consumer" => c);
    }
    let mut client = reqwest::Client::builder()
        .timeout(config.timeout)
        .pool_max_idle_per_host(64);
    for cert in trusted(config.trust_pem.as_deref()) {
        client = client.add_root_certificate(cert);
    }
    let client = client.build().unwrap_or_default();
    let keys = config.api_keys.clone();
    let shared = Arc::new(Shared {
        config,
        client,
        plans,
    });
    // The query routes need a key when keys are configured; the status page (aggregates, no
    // item data) does not.
    let queries = Router::new()
        .route("/v1/search", post(search::search))
        .route("/v1/plans", get(search::plans_route))
        .route("/v1/versions", get(search::versions_route))
        .route("/v1/slices", get(search::slices_route))
        .route("/v1/items/{item_id}", get(search::item_route))
        .route("/v1/embeddings", post(embeddings::openai))
        .route("/embed", post(embeddings::tei))
        .layer(axum::middleware::from_fn_with_state(
            keys,
            embedstream_schemas::access::require_key,
        ));
    Router::new()
        .merge(queries)
        .route("/v1/status", get(status::status_json))
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/status", get(status::status_page))
        .route(
            "/",
            get(|| async { axum::response::Redirect::temporary("/status") }),
        )
        .with_state(shared)
}

/// Serves [`router`] and `extra` until `shutdown`.
pub async fn run(
    config: RouterConfig,
    plans: watch::Receiver<Arc<ControlState>>,
    extra: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    tracing::info!(listen = %listener.local_addr()?, replicas = config.backends.snapshot().len(), blend = ?config.blend, "Routing queries.");
    let tls = config.tls.clone();
    topology::spawn_health_checks(
        config.backends.clone(),
        health_client(&config),
        topology::CHECK_EVERY,
        shutdown.clone(),
    );
    let app = router(config, plans).merge(extra);
    embedstream_schemas::serve::serve(listener, app, tls.as_ref(), shutdown).await
}

/// The client of the health checks: the query client's trust, without its request timeout.
fn health_client(config: &RouterConfig) -> reqwest::Client {
    let mut client = reqwest::Client::builder().pool_max_idle_per_host(4);
    for cert in trusted(config.trust_pem.as_deref()) {
        client = client.add_root_certificate(cert);
    }
    client.build().unwrap_or_default()
}

/// The certificates of a PEM bundle (none when it is not one: checked where it is read).
fn trusted(pem: Option<&[u8]>) -> Vec<reqwest::Certificate> {
    pem.map(|p| reqwest::Certificate::from_pem_bundle(p).unwrap_or_default())
        .unwrap_or_default()
}
