//! The query API (JSON over HTTP):
//!
//! - `POST /v1/search` `{"consumer", "vector": [...] | "text": "...", "k"?}` →
//!   `{"results": [{"item_id", "score", "model_version"}], "consumer", "k", "ef_search",
//!   "model_version", "took_ms"}`. The consumer's profile sets `ef_search`, the default `k`
//!   and the largest `k`. A request that cannot succeed gets 400 with
//!   `{"error": message, "kind": ...}`: malformed JSON (a `NaN` literal included), unknown
//!   consumer, both or neither of `vector`/`text`, `k` out of range, wrong dimension, a
//!   non-finite or zero vector, an empty or too long text, text queries without a model.
//!   `"filter"` keeps only items whose attributes match (`embedstream_schemas::filter`); a
//!   filter naming an undeclared attribute (`undeclared_attribute`) or malformed
//!   (`invalid_filter`) is a 400 too.
//! - `GET /v1/stats`: per shard hot and main sizes, tombstones, covered offsets, last
//!   compaction; the consumer's positions, lag and poison count.
//! - `GET /v1/items/{item_id}`: the version (partition, offset) queries see, or 404.
//! - `POST /v1/embed`: texts → this version's vectors ([`super::embed`]).
//! - `GET /openapi.json`: this API's OpenAPI document ([`super::openapi`]).
//!
//! Searches run on rayon (the index fans out over shards there), never on the runtime's
//! workers; a semaphore bounds how many run at once. Text queries are embedded by the
//! [`QueryEmbedder`] the binary passes in (this crate has no model).

use std::collections::BTreeMap;
use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use embedstream_topics::ModelRef;

use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, oneshot};

use embedstream_schemas::access::{ApiKeys, Grant, require_key};
use embedstream_schemas::consumers::{Consumers, export_slos};
use embedstream_schemas::filter;
use utoipa::ToSchema;

use embedstream_schemas::api::ErrorBody;

use super::config::HttpSettings;
use super::consumer::{Progress, ProgressState};
use super::embed::{EmbedRefusal, TextBatch, TextsFuture};
use super::metrics as m;
use crate::{Query, ShardStats, ShardedIndex};
use embedstream_adapter::{self as adapter, Adapter, AdapterError};

/// What an embedder's failure is: kept whole, never flattened to a string.
pub type EmbedError = Box<dyn StdError + Send + Sync>;

/// The future of one text embedding.
pub type EmbedFuture = Pin<Box<dyn Future<Output = Result<Vec<f32>, EmbedError>> + Send>>;

/// Embeds the text of a text query with the index's model version. Implemented by the binary
/// (which has the models); the embedding must run off the async runtime's workers.
pub trait QueryEmbedder: Send + Sync {
    /// The vector of `text`.
    fn embed(&self, text: String) -> EmbedFuture;

    /// The vector of `text` with another model version (the new model of a Drift-Adapter).
    fn embed_as(&self, model: &ModelRef, text: String) -> EmbedFuture {
        let message = format!("this sink embeds no text with {model}; send a vector");
        drop(text);
        Box::pin(async move { Err(message.into()) })
    }

    /// The vectors of `batch` (`POST /v1/embed`), with the model's prompts applied.
    fn embed_texts(&self, batch: TextBatch) -> TextsFuture {
        drop(batch);
        Box::pin(async { Err(EmbedRefusal::Failed("this sink embeds no texts".into())) })
    }
}

/// The Drift-Adapters queries have named, loaded once each.
pub(crate) struct Adapters {
    dir: std::path::PathBuf,
    loaded: std::sync::Mutex<BTreeMap<String, Arc<Adapter>>>,
}

impl Adapters {
    pub(crate) fn new(dir: std::path::PathBuf) -> Self {
        Adapters {
            dir,
            loaded: std::sync::Mutex::new(BTreeMap::new()),
        }
    }

    /// The adapter `name`, checked against this index: it must map into `model`'s space and
    /// `dim` dimensions.
    fn get(&self, name: &str, model: &ModelRef, dim: usize) -> Result<Arc<Adapter>, ApiError> {
        let cached = self
            .loaded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .cloned();
        let adapter = match cached {
            Some(a) => a,
            None => {
                if name.contains('/') || name.ends_with(".safetensors") {
                    return Err(ApiError::bad(
                        "unknown_adapter",
                        format!("{name:?} is not an adapter name"),
                    ));
                }
                let loaded = adapter::resolve(&self.dir, name)
                    .and_then(|path| Adapter::load(&path))
                    .map_err(|e| ApiError::bad("unknown_adapter", e.to_string()))?;
                let loaded = Arc::new(loaded);
                self.loaded
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(name.to_owned(), Arc::clone(&loaded));
                loaded
            }
        };
        if adapter.meta.old_model != model.to_string() || adapter.meta.out_dim != dim {
            return Err(ApiError::bad(
                "adapter_mismatch",
                format!(
                    "adapter {name} maps into {} ({} dimensions); this index is {model} ({dim} dimensions)",
                    adapter.meta.old_model, adapter.meta.out_dim
                ),
            ));
        }
        Ok(adapter)
    }
}

/// Shared by the handlers.
pub(crate) struct Api {
    pub(crate) index: Arc<ShardedIndex>,
    pub(crate) model: ModelRef,
    pub(crate) topic: String,
    pub(crate) group: String,
    pub(crate) consumers: Consumers,
    pub(crate) http: HttpSettings,
    pub(crate) embedder: Option<Arc<dyn QueryEmbedder>>,
    pub(crate) progress: Arc<Progress>,
    pub(crate) admission: Semaphore,
    pub(crate) adapters: Adapters,
}

impl Api {
    /// Exports the consumers' objectives and registers their latency series, so each is
    /// there before its first query (a consumer added later gets its series at its first).
    pub(crate) fn register_consumers(consumers: &Consumers, model: &ModelRef) {
        export_slos(&consumers.current());
        for c in consumers.names() {
            let _ = metrics::histogram!(m::QUERY_SECONDS, "consumer" => c, "model_version" => model.to_string());
        }
    }
}

/// The routes (without `/metrics`, which the binary adds); search and items behind `keys`
/// when given.
/// `/v1/stats` (aggregates, no item data) stays open for status pages and probes.
pub(crate) fn router(api: Arc<Api>, keys: Option<Arc<ApiKeys>>) -> Router {
    let queries = Router::new()
        .route("/v1/search", post(search))
        .route("/v1/items/{item_id}", get(item))
        .route("/v1/embed", post(super::embed::embed_route))
        .layer(axum::middleware::from_fn_with_state(keys, require_key));
    Router::new()
        .merge(queries)
        .route("/v1/stats", get(stats))
        .route("/openapi.json", get(super::openapi::openapi_json))
        .with_state(api)
}

/// A search: give one of `vector` and `text`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SearchRequest {
    /// A configured consumer: its profile sets the search width and the bounds of `k`.
    consumer: String,
    /// A query vector of this version's dimension.
    #[serde(default)]
    vector: Option<Vec<f32>>,
    /// Text, embedded with this version's model.
    #[serde(default)]
    text: Option<String>,
    /// How many results (the consumer's `default_k` when left out).
    #[serde(default)]
    k: Option<usize>,
    /// A Drift-Adapter: the query (vector or text) is the new model's and is mapped into
    /// this index's space first.
    #[serde(default)]
    adapter: Option<String>,
    /// With `adapter`, fused reads: the index is searched with `normalize((1 − fuse) · own +
    /// fuse · adapted)`, `own` being this version's model's query of the same text (embedded
    /// here for `text`, or `own_vector`) and `adapted` the mapped new-model query; in (0, 1].
    #[serde(default)]
    fuse: Option<f64>,
    /// With `fuse` and `vector`: this version's model's vector of the same query.
    #[serde(default)]
    own_vector: Option<Vec<f32>>,
    /// Only items whose attributes match (`embedstream_schemas::filter`).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    filter: Option<serde_json::Value>,
    /// Which tier to search: `all` (the default) or `hot`, the recent items held in memory
    /// (tighter latency; without a cold tier, the same as `all`).
    #[serde(default)]
    tier: embedstream_schemas::api::Tier,
}

/// A search's answer.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SearchResponse {
    results: Vec<Result1>,
    consumer: String,
    k: usize,
    ef_search: usize,
    model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    adapter: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fuse: Option<f64>,
    /// The tiers searched.
    tier: embedstream_schemas::api::Tier,
    took_ms: f64,
}

/// One result.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Result1 {
    item_id: String,
    /// Cosine similarity with the query.
    score: f32,
    model_version: String,
}

/// A refused request: status, a fixed `kind` and a message for people.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl ApiError {
    fn bad(kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        ErrorBody::new(self.message, self.kind).into_response(self.status)
    }
}

/// Searches this version's index.
#[utoipa::path(
    post,
    path = "/v1/search",
    tag = "search",
    request_body = SearchRequest,
    responses(
        (status = 200, description = "The results, best first", body = SearchResponse),
        (status = 400, description = "A request that cannot succeed (see `kind`)", body = ErrorBody),
        (status = 401, description = "An API key is needed", body = ErrorBody),
        (status = 403, description = "The API key may not query as this consumer", body = ErrorBody),
        (status = 413, description = "The body is over the size limit"),
        (status = 500, description = "The search failed", body = ErrorBody),
        (status = 503, description = "The sink is shutting down, or cannot embed the text now", body = ErrorBody),
    )
)]
pub(crate) async fn search(
    State(api): State<Arc<Api>>,
    grant: Option<axum::Extension<Grant>>,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let grant = grant.map_or(Grant::All, |g| g.0);
    let (consumer, result) = run_search(&api, &grant, &body, started).await;
    // Labels name configured consumers only (any other name is "unknown").
    let known = api.consumers.contains(&consumer);
    let label = if known {
        consumer.clone()
    } else {
        "unknown".to_owned()
    };
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) if e.status == StatusCode::BAD_REQUEST => "bad_request",
        Err(e) if e.status == StatusCode::FORBIDDEN => "forbidden",
        Err(_) => "error",
    };
    metrics::counter!(m::QUERIES_TOTAL, "consumer" => label, "result" => outcome).increment(1);
    if result.is_ok() && known {
        metrics::histogram!(m::QUERY_SECONDS, "consumer" => consumer, "model_version" => api.model.to_string())
            .record(started.elapsed().as_secs_f64());
    }
    match result {
        Ok(r) => axum::Json(r).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn run_search(
    api: &Api,
    grant: &Grant,
    body: &[u8],
    started: Instant,
) -> (String, Result<SearchResponse, ApiError>) {
    // serde would also read a struct from a JSON array, by position: only an object is one.
    let object = body.trim_ascii_start().starts_with(b"{");
    let parsed = if object {
        serde_json::from_slice(body).map_err(|e| e.to_string())
    } else {
        Err("not a JSON object".to_owned())
    };
    let request: SearchRequest = match parsed {
        Ok(r) => r,
        Err(e) => {
            return (
                String::new(),
                Err(ApiError::bad(
                    "invalid_json",
                    format!("the body is not a valid search request: {e}"),
                )),
            );
        }
    };
    let consumer = request.consumer.clone();
    if !grant.allows(&consumer) {
        return (
            consumer.clone(),
            Err(ApiError {
                status: StatusCode::FORBIDDEN,
                kind: "forbidden_consumer",
                message: format!("this API key may not query as consumer {consumer:?}"),
            }),
        );
    }
    (consumer, answer(api, request, started).await)
}

async fn answer(
    api: &Api,
    request: SearchRequest,
    started: Instant,
) -> Result<SearchResponse, ApiError> {
    let profile = api.consumers.get(&request.consumer).ok_or_else(|| {
        ApiError::bad(
            "unknown_consumer",
            format!(
                "unknown consumer {:?}; configured: {}",
                request.consumer,
                api.consumers.names().join(", ")
            ),
        )
    })?;
    let k = request.k.unwrap_or(profile.default_k);
    if k == 0 || k > profile.max_k {
        return Err(ApiError::bad(
            "k_out_of_range",
            format!(
                "k = {k} is out of range 1..={} for consumer {:?}",
                profile.max_k, request.consumer
            ),
        ));
    }
    let filter = match &request.filter {
        None => None,
        Some(json) => Some(
            filter::parse(json, &api.consumers.attributes())
                .map_err(|e| ApiError::bad(e.kind, e.message))?,
        ),
    };
    let dim = api.index.config().dim;
    let adapter = match &request.adapter {
        Some(name) => Some(api.adapters.get(name, &api.model, dim)?),
        None => None,
    };
    if let Some(w) = request.fuse {
        if adapter.is_none() {
            return Err(ApiError::bad(
                "fuse_needs_adapter",
                "\"fuse\" fuses an adapted query with this version's own: name the \"adapter\"",
            ));
        }
        if !adapter::is_fuse_weight(w) {
            return Err(ApiError::bad(
                "invalid_fuse",
                format!("\"fuse\" is the adapted query's weight, in (0, 1]; not {w}"),
            ));
        }
    }
    if request.own_vector.is_some() && (request.fuse.is_none() || request.vector.is_none()) {
        return Err(ApiError::bad(
            "invalid_own_vector",
            "\"own_vector\" goes with \"fuse\" and \"vector\"",
        ));
    }
    let mut own = request.own_vector;
    let vector = match (request.vector, request.text) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad(
                "vector_and_text",
                "give either \"vector\" or \"text\", not both",
            ));
        }
        (None, None) => {
            return Err(ApiError::bad(
                "no_query",
                "give a query: \"vector\" (an array of numbers) or \"text\"",
            ));
        }
        (Some(_), None) if request.fuse.is_some() && own.is_none() => {
            return Err(ApiError::bad(
                "fuse_needs_own_vector",
                "fused reads of a \"vector\" need \"own_vector\", this version's model's vector of the same query (or send \"text\")",
            ));
        }
        (Some(v), None) => v,
        (None, Some(text)) if request.fuse.is_some() => {
            // Both models' queries of the text, embedded side by side.
            let (new, mine) = tokio::join!(
                embed(api, text.clone(), adapter.as_deref()),
                embed(api, text, None)
            );
            own = Some(mine?);
            new?
        }
        (None, Some(text)) => embed(api, text, adapter.as_deref()).await?,
    };
    let vector = match &adapter {
        None => vector,
        Some(a) => {
            let mapped_at = Instant::now();
            let mapped = match (&own, request.fuse) {
                (Some(own), Some(w)) => a.fuse(own, &vector, w),
                _ => a.apply(&vector),
            };
            let mapped = mapped.map_err(|e| match e {
                AdapterError::Dimension { .. } => {
                    ApiError::bad("dimension_mismatch", e.to_string())
                }
                _ => ApiError::bad("non_finite", e.to_string()),
            })?;
            metrics::histogram!(m::ADAPTER_SECONDS, "adapter" => a.meta.name.clone())
                .record(mapped_at.elapsed().as_secs_f64());
            mapped
        }
    };
    if vector.len() != dim {
        return Err(ApiError::bad(
            "dimension_mismatch",
            format!(
                "the vector has dimension {}, {} has {dim}",
                vector.len(),
                api.model
            ),
        ));
    }
    if let Some(i) = vector.iter().position(|x| !x.is_finite()) {
        return Err(ApiError::bad(
            "non_finite",
            format!("vector component {i} is not a finite number (NaN, or out of f32 range)"),
        ));
    }
    let permit = api.admission.acquire().await.map_err(|_| ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        kind: "shutting_down",
        message: "the sink is shutting down".to_owned(),
    })?;
    let (tx, rx) = oneshot::channel();
    let index = Arc::clone(&api.index);
    let ef_search = profile.ef_search.max(k);
    rayon::spawn(move || {
        let hits = index.search(Query {
            vector: &vector,
            k,
            ef_search: Some(ef_search),
            filter: filter.as_ref(),
            hot_only: request.tier == embedstream_schemas::api::Tier::Hot,
        });
        let _ = tx.send(hits);
    });
    let hits = rx.await.map_err(|_| ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        kind: "internal",
        message: "the search task was lost".to_owned(),
    })?;
    drop(permit);
    let hits = hits.map_err(|e| {
        if e.is_poison() {
            ApiError::bad(poison_kind(&e), e.to_string())
        } else {
            ApiError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                kind: "internal",
                message: e.to_string(),
            }
        }
    })?;
    let model_version = api.model.to_string();
    Ok(SearchResponse {
        results: hits
            .into_iter()
            .map(|h| Result1 {
                item_id: h.item_id,
                score: h.score,
                model_version: model_version.clone(),
            })
            .collect(),
        consumer: request.consumer,
        k,
        ef_search,
        model_version,
        adapter: request.adapter,
        fuse: request.fuse,
        tier: request.tier,
        took_ms: started.elapsed().as_secs_f64() * 1000.0,
    })
}

async fn embed(api: &Api, text: String, adapter: Option<&Adapter>) -> Result<Vec<f32>, ApiError> {
    if text.trim().is_empty() {
        return Err(ApiError::bad("empty_text", "the text is empty"));
    }
    if text.len() > api.http.max_text_bytes {
        return Err(ApiError::bad(
            "text_too_long",
            format!(
                "the text has {} bytes, at most {} are allowed",
                text.len(),
                api.http.max_text_bytes
            ),
        ));
    }
    let Some(embedder) = &api.embedder else {
        return Err(ApiError::bad(
            "text_unsupported",
            format!(
                "this sink embeds no text queries for {}; send a vector",
                api.model
            ),
        ));
    };
    let embedded = match adapter {
        Some(a) => match a.meta.new_model.parse::<ModelRef>() {
            Ok(model) => embedder.embed_as(&model, text),
            Err(e) => {
                return Err(ApiError::bad("unknown_adapter", e.to_string()));
            }
        },
        None => embedder.embed(text),
    };
    embedded.await.map_err(|error| {
        tracing::error!(error = %error, "Embedding a text query failed.");
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "embedding_failed",
            message: format!("embedding the text failed: {error}"),
        }
    })
}

fn poison_kind(e: &crate::Error) -> &'static str {
    match e {
        crate::Error::DimensionMismatch { .. } => "dimension_mismatch",
        crate::Error::NonFinite { .. } => "non_finite",
        crate::Error::ZeroVector => "zero_vector",
        crate::Error::KOutOfRange { .. } => "k_out_of_range",
        _ => "bad_request",
    }
}

#[derive(Debug, Serialize)]
struct StatsResponse {
    topic: String,
    model_version: String,
    group: String,
    dim: usize,
    items: usize,
    lag: i64,
    consumer: ProgressState,
    resume_offsets: BTreeMap<i32, i64>,
    applied_offsets: BTreeMap<i32, i64>,
    shards: Vec<ShardStats>,
}

/// The index's and the consumer's state.
#[utoipa::path(
    get,
    path = "/v1/stats",
    tag = "status",
    responses((status = 200, description = "`{topic, model_version, group, dim, items, lag, consumer, resume_offsets, applied_offsets, shards}`", body = Object))
)]
pub(crate) async fn stats(State(api): State<Arc<Api>>) -> Response {
    let index = Arc::clone(&api.index);
    // Counting visible items walks each shard under its read lock: not on a runtime worker.
    let Ok((items, resume, applied, shards)) = tokio::task::spawn_blocking(move || {
        (
            index.len(),
            index.resume_offsets(),
            index.applied_offsets(),
            index.stats(),
        )
    })
    .await
    else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    metrics::gauge!(m::ITEMS, "index" => api.topic.clone()).set(items as f64);
    let consumer = api.progress.snapshot();
    axum::Json(StatsResponse {
        topic: api.topic.clone(),
        model_version: api.model.to_string(),
        group: api.group.clone(),
        dim: api.index.config().dim,
        items,
        lag: consumer.lag(),
        consumer,
        resume_offsets: resume,
        applied_offsets: applied,
        shards,
    })
    .into_response()
}

/// The version of an item that queries see.
#[utoipa::path(
    get,
    path = "/v1/items/{item_id}",
    tag = "search",
    params(("item_id" = String, Path, description = "The item's id")),
    responses(
        (status = 200, description = "`{item_id, partition, offset, source, model_version}`", body = Object),
        (status = 401, description = "An API key is needed", body = ErrorBody),
        (status = 404, description = "Absent or deleted", body = ErrorBody),
    )
)]
pub(crate) async fn item(State(api): State<Arc<Api>>, Path(item_id): Path<String>) -> Response {
    match api.index.lookup(&item_id) {
        Some(v) => axum::Json(serde_json::json!({
            "item_id": item_id,
            "partition": v.partition,
            "offset": v.offset,
            "source": v.source.map(|s| serde_json::json!({"partition": s.partition, "offset": s.offset})),
            "model_version": api.model.to_string(),
        }))
        .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(
                serde_json::json!({"error": format!("no item {item_id:?}"), "kind": "not_found"}),
            ),
        )
            .into_response(),
    }
}
