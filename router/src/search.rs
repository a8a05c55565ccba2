//! The query routes: `/v1/search` (blended per consumer), `/v1/plans`, `/v1/versions` and
//! `/v1/items/{id}`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use embedstream_schemas::access::{Grant, forwarded};
use embedstream_schemas::control::Arm;
use embedstream_schemas::filter;
use embedstream_schemas::records::{Exposure, ExposureArm, LoggedQuery, ReadPlanEntry};
use embedstream_topics::time::now_ms;
use serde::{Deserialize, Serialize};

use utoipa::ToSchema;

use crate::blend::{self, Blend, Blended, Ranked};
use crate::metrics;
use crate::shared::{Shared, get_each, version_stats};
use ::metrics as metrics_crate;
use embedstream_schemas::api::ErrorBody;

/// The most versions one query's plan may read (each is one sink request).
const MAX_PLAN_ENTRIES: usize = 8;

/// One version of a plan given with the request (for evaluation).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PlanOverride {
    /// `id@version`.
    model: String,
    /// Its weight, in [0, 1].
    weight: f64,
    /// Read it through this Drift-Adapter (queries of the adapter's new model).
    #[serde(default)]
    adapter: Option<String>,
    /// With `adapter`, fused reads: the adapted query's weight in (0, 1] beside the version's
    /// own model's query.
    #[serde(default)]
    fuse: Option<f64>,
}

/// A search: give exactly one of `text`, `vector` and `vectors`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RouteRequest {
    /// A configured consumer: its profile sets the search width and the bounds of `k`.
    consumer: String,
    /// Text, embedded by each version's own model.
    #[serde(default)]
    text: Option<String>,
    /// A query vector (a plan of one version, or versions of one dimension).
    #[serde(default)]
    vector: Option<Vec<f32>>,
    /// One query vector per version (`{"id@version": [...]}`), for clients that embed
    /// themselves.
    #[serde(default)]
    vectors: Option<BTreeMap<String, Vec<f32>>>,
    /// How many results (the consumer's `default_k` when left out).
    #[serde(default)]
    k: Option<usize>,
    /// How the versions' lists are merged during a migration.
    #[serde(default)]
    blend: Option<Blend>,
    /// Read these versions instead of the consumer's plan.
    #[serde(default)]
    plan: Option<Vec<PlanOverride>>,
    /// Only items whose attributes match: `{"attribute", "eq" | "in" | "gt" | "gte" | "lt" |
    /// "lte"}` conditions combined with `{"and": [...]}` / `{"or": [...]}`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    filter: Option<serde_json::Value>,
    /// `false`: do not log this query's text (the query log trains adapters on queries like
    /// the consumer's; requests with a `plan` are never logged).
    #[serde(default)]
    log_query: Option<bool>,
    /// `hot`: search only the recent items each index holds in memory (its hot tier), not
    /// its cold tier; `all` (the default): every item.
    #[serde(default)]
    tier: embedstream_schemas::api::Tier,
    /// Who asks (a user or session id): a consumer's canary draws the arm per unit, so a unit
    /// stays in its arm across requests. Without one, each request is drawn on its own.
    #[serde(default)]
    unit_id: Option<String>,
    /// The request's id, returned in the answer and logged with its exposure; feedback names
    /// it. Default: the `x-request-id` header, else one the router makes.
    #[serde(default)]
    request_id: Option<String>,
}

/// The longest `unit_id` and `request_id` taken.
const MAX_ID_LEN: usize = 256;

/// A search's answer.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RouteResponse {
    /// Best first.
    results: Vec<Blended>,
    consumer: String,
    k: usize,
    /// The method that merged the lists; null with one version.
    blend: Option<Blend>,
    /// The versions read, as `[id@version, weight]` pairs.
    #[schema(value_type = Vec<Vec<serde_json::Value>>)]
    plan: Vec<(String, f64)>,
    /// Versions left out of this answer, with why.
    degraded: Vec<String>,
    /// Slices of the versions read that did not answer, with why: the results lack their
    /// items. Empty when every slice answered.
    partial: Vec<String>,
    /// The request's id (the caller's, or one the router made): feedback on these results
    /// names it.
    request_id: String,
    /// The arm of a consumer's request-level canary this answer came from: `control` (the
    /// consumer's plan, also when no canary runs) or `canary`; null when the request brought
    /// its own `plan`.
    #[schema(value_type = Option<String>)]
    arm: Option<&'static str>,
    took_ms: f64,
}

#[derive(Debug)]
struct RouteError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl RouteError {
    fn bad(kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind,
            message: message.into(),
        }
    }
}

impl IntoResponse for RouteError {
    fn into_response(self) -> Response {
        ErrorBody::new(self.message, self.kind).into_response(self.status)
    }
}

/// Every consumer's effective read plan.
#[utoipa::path(
    get,
    path = "/v1/plans",
    tag = "search",
    responses(
        (status = 200, description = "`{consumer: [{\"model\", \"weight\", \"adapter\", \"fuse\"}]}`", body = Object),
        (status = 401, description = "An API key is needed", body = ErrorBody),
    )
)]
pub(crate) async fn plans_route(State(shared): State<Arc<Shared>>) -> Response {
    let state = shared.plans.borrow().clone();
    let plans: BTreeMap<String, Vec<serde_json::Value>> = shared
        .config
        .consumers
        .names()
        .into_iter()
        .map(|c| {
            let entries = state
                .read_plan_for(&c)
                .into_iter()
                .map(|e| serde_json::json!({"model": e.model, "weight": e.weight, "adapter": e.adapter, "fuse": e.fuse}))
                .collect();
            (c, entries)
        })
        .collect();
    axum::Json(plans).into_response()
}

/// `GET /v1/versions`: each version's sink stats (`items`, `lag`, ...), null when it is down.
#[utoipa::path(
    get,
    path = "/v1/versions",
    tag = "search",
    responses(
        (status = 200, description = "`{version: {\"items\", \"lag\", \"topic\"} | null}`", body = Object),
        (status = 401, description = "An API key is needed", body = ErrorBody),
    )
)]
pub(crate) async fn versions_route(State(shared): State<Arc<Shared>>) -> Response {
    let stats = version_stats(&shared).await;
    let brief: BTreeMap<String, serde_json::Value> = stats
        .into_iter()
        .map(|(m, v)| {
            let b = if v.is_null() {
                v
            } else {
                serde_json::json!({"items": v["items"], "lag": v["lag"], "topic": v["topic"], "slices": v["slices"]})
            };
            (m, b)
        })
        .collect();
    axum::Json(brief).into_response()
}

/// `GET /v1/slices`: every sink instance the router knows, with its slice, pool and health.
#[utoipa::path(
    get,
    path = "/v1/slices",
    tag = "search",
    responses(
        (status = 200, description = "Every sink instance, by version, slice, pool and id", body = Vec<crate::topology::Replica>),
        (status = 401, description = "An API key is needed", body = ErrorBody),
    )
)]
pub(crate) async fn slices_route(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(shared.config.backends.snapshot()).into_response()
}

/// `GET /v1/items/{id}`: where each version has the item (null: not there, or down).
#[utoipa::path(
    get,
    path = "/v1/items/{item_id}",
    tag = "search",
    params(("item_id" = String, Path, description = "The item's id")),
    responses(
        (status = 200, description = "`{version: {\"partition\", \"offset\"} | null}`", body = Object),
        (status = 401, description = "An API key is needed", body = ErrorBody),
    )
)]
pub(crate) async fn item_route(
    State(shared): State<Arc<Shared>>,
    Path(item_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let encoded: String = item_id
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let owners = shared.config.backends.owners(&item_id);
    let mut found: BTreeMap<String, serde_json::Value> = get_each(
        &shared,
        owners,
        &format!("/v1/items/{encoded}"),
        forwarded(&headers).as_ref(),
    )
    .await
    .into_iter()
    .collect();
    for model in shared.config.backends.models() {
        found.entry(model).or_insert(serde_json::Value::Null);
    }
    axum::Json(found).into_response()
}

/// Searches the versions of the consumer's plan and merges their lists.
#[utoipa::path(
    post,
    path = "/v1/search",
    tag = "search",
    request_body = RouteRequest,
    responses(
        (status = 200, description = "The results", body = RouteResponse),
        (status = 400, description = "A request that cannot succeed (see `kind`)", body = ErrorBody),
        (status = 401, description = "An API key is needed", body = ErrorBody),
        (status = 403, description = "The API key may not query as this consumer", body = ErrorBody),
        (status = 413, description = "The body is over the size limit"),
        (status = 503, description = "No version could answer, or the consumer reads none", body = ErrorBody),
    )
)]
pub(crate) async fn search(
    State(shared): State<Arc<Shared>>,
    grant: Option<axum::Extension<Grant>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let grant = grant.map_or(Grant::All, |g| g.0);
    let result = route(&shared, &grant, &headers, &body, started).await;
    let (consumer, outcome) = match &result {
        Ok(r) if r.degraded.is_empty() && r.partial.is_empty() => (r.consumer.clone(), "ok"),
        Ok(r) if r.degraded.is_empty() => (r.consumer.clone(), "partial"),
        Ok(r) => (r.consumer.clone(), "degraded"),
        Err(e) if e.status == StatusCode::BAD_REQUEST => (String::new(), "bad_request"),
        Err(e) if e.status == StatusCode::FORBIDDEN => (String::new(), "forbidden"),
        Err(_) => (String::new(), "unavailable"),
    };
    // Labels name configured consumers only (any other name is "unknown").
    let label = if shared.config.consumers.contains(&consumer) {
        let seconds = started.elapsed().as_secs_f64();
        metrics_crate::histogram!(metrics::QUERY_SECONDS, "consumer" => consumer.clone())
            .record(seconds);
        shared.config.status.record_latency(&consumer, seconds);
        consumer
    } else {
        "unknown".to_owned()
    };
    metrics_crate::counter!(metrics::QUERIES, "consumer" => label, "result" => outcome)
        .increment(1);
    match result {
        Ok(r) => axum::Json(r).into_response(),
        Err(e) => e.into_response(),
    }
}

/// What one slice's replicas answered.
enum SliceAnswer {
    Hits(Vec<(String, f32)>),
    /// A 400: the request cannot succeed anywhere.
    Refused(String),
    Failed(String),
}

/// Asks the slice's replicas in order until one answers: a replica that cannot be reached is
/// marked down at once, so the queries after this one skip it until a check finds it back.
async fn ask_slice(
    shared: &Shared,
    model: &str,
    target: &crate::topology::SliceTarget,
    forward: &serde_json::Value,
    key: Option<&(axum::http::HeaderName, axum::http::HeaderValue)>,
) -> SliceAnswer {
    let slice = target.slice.to_string();
    let mut why = Vec::new();
    for (attempt, (id, base)) in target.replicas.iter().enumerate() {
        if attempt > 0 {
            metrics_crate::counter!(metrics::FAILOVERS, "model_version" => model.to_owned(), "slice" => slice.clone(), "pool" => target.pool.clone()).increment(1);
        }
        let started = Instant::now();
        let mut call = shared
            .client
            .post(format!("{}/v1/search", base.trim_end_matches('/')))
            .json(forward);
        if let Some((name, value)) = key {
            call = call.header(name, value);
        }
        match call.send().await {
            Ok(r) if r.status() == StatusCode::BAD_REQUEST => {
                let text = r.text().await.unwrap_or_default();
                let message = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_owned))
                    .unwrap_or(text);
                return SliceAnswer::Refused(message);
            }
            Ok(r) if r.status().is_success() => match r.json::<SinkResponse>().await {
                Ok(body) => {
                    metrics_crate::histogram!(metrics::SLICE_QUERY_SECONDS, "model_version" => model.to_owned(), "slice" => slice.clone(), "pool" => target.pool.clone(), "replica" => id.clone())
                        .record(started.elapsed().as_secs_f64());
                    return SliceAnswer::Hits(
                        body.results
                            .into_iter()
                            .map(|h| (h.item_id, h.score))
                            .collect(),
                    );
                }
                Err(e) => why.push(format!("{id}: unreadable answer: {e}")),
            },
            Ok(r) => why.push(format!("{id}: answered {}", r.status())),
            Err(e) => {
                if e.is_connect() {
                    shared.config.backends.mark(id, false, None, None);
                }
                why.push(format!("{id}: {e}"));
            }
        }
    }
    SliceAnswer::Failed(why.join("; "))
}

#[derive(Debug, Deserialize)]
struct SinkResponse {
    results: Vec<SinkHit>,
}

#[derive(Debug, Deserialize)]
struct SinkHit {
    item_id: String,
    score: f32,
}

async fn route(
    shared: &Shared,
    grant: &Grant,
    headers: &HeaderMap,
    body: &[u8],
    started: Instant,
) -> Result<RouteResponse, RouteError> {
    // serde would also read a struct from a JSON array, by position: only an object is one.
    if !body.trim_ascii_start().starts_with(b"{") {
        return Err(RouteError::bad(
            "invalid_json",
            "the body must be a JSON object (a search request)",
        ));
    }
    let request: RouteRequest = serde_json::from_slice(body).map_err(|e| {
        RouteError::bad(
            "invalid_json",
            format!("the body is not a valid search request: {e}"),
        )
    })?;
    if !grant.allows(&request.consumer) {
        return Err(RouteError {
            status: StatusCode::FORBIDDEN,
            kind: "forbidden_consumer",
            message: format!(
                "this API key may not query as consumer {:?}",
                request.consumer
            ),
        });
    }
    let key = forwarded(headers);
    let profile = shared
        .config
        .consumers
        .get(&request.consumer)
        .ok_or_else(|| {
            RouteError::bad(
                "unknown_consumer",
                format!(
                    "unknown consumer {:?}; configured: {}",
                    request.consumer,
                    shared.config.consumers.names().join(", ")
                ),
            )
        })?;
    let k = request.k.unwrap_or(profile.default_k);
    if k == 0 || k > profile.max_k {
        return Err(RouteError::bad(
            "k_out_of_range",
            format!(
                "k = {k} is out of range 1..={} for consumer {:?}",
                profile.max_k, request.consumer
            ),
        ));
    }
    let queries = [
        request.text.is_some(),
        request.vector.is_some(),
        request.vectors.is_some(),
    ];
    if queries.iter().filter(|q| **q).count() != 1 {
        return Err(RouteError::bad(
            "no_query",
            "give exactly one of \"text\", \"vector\" or \"vectors\"",
        ));
    }
    if let Some(f) = &request.filter {
        // Checked here too, so that a bad filter is one clear 400 of its own kind rather
        // than each version's sink refusing it.
        filter::parse(f, &shared.config.consumers.attributes())
            .map_err(|e| RouteError::bad(e.kind, e.message))?;
    }
    for (name, id) in [
        ("unit_id", &request.unit_id),
        ("request_id", &request.request_id),
    ] {
        if id
            .as_ref()
            .is_some_and(|s| s.is_empty() || s.len() > MAX_ID_LEN)
        {
            return Err(RouteError::bad(
                "invalid_id",
                format!("\"{name}\" is 1 to {MAX_ID_LEN} bytes"),
            ));
        }
    }
    let request_id = request
        .request_id
        .clone()
        .or_else(|| {
            headers
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .filter(|s| !s.is_empty() && s.len() <= MAX_ID_LEN)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let unit = request
        .unit_id
        .clone()
        .unwrap_or_else(|| request_id.clone());
    // The arm: drawn per unit when the consumer runs a canary; none with a plan of its own.
    let mut arm = None;
    let mut canary = None;
    let plan: Vec<ReadPlanEntry> = match &request.plan {
        Some(p) => {
            if p.len() > MAX_PLAN_ENTRIES {
                return Err(RouteError::bad(
                    "invalid_plan",
                    format!("a plan reads at most {MAX_PLAN_ENTRIES} versions"),
                ));
            }
            if p.iter().any(|e| !(0.0..=1.0).contains(&e.weight)) {
                return Err(RouteError::bad(
                    "invalid_plan",
                    "plan weights must be in [0, 1]",
                ));
            }
            if p.iter().any(|e| {
                e.fuse
                    .is_some_and(|w| e.adapter.is_none() || !embedstream_adapter::is_fuse_weight(w))
            }) {
                return Err(RouteError::bad(
                    "invalid_plan",
                    "\"fuse\" goes with an \"adapter\" and is in (0, 1]",
                ));
            }
            p.iter()
                .map(|e| ReadPlanEntry {
                    model: e.model.clone(),
                    weight: e.weight,
                    adapter: e.adapter.clone(),
                    fuse: e.fuse,
                })
                .collect()
        }
        None => {
            let state = shared.plans.borrow();
            let (drawn, entries) = state.read_plan_for_unit(&request.consumer, &unit);
            arm = Some(drawn);
            canary = state
                .canary(&request.consumer)
                .map(|c| (c.salt.clone(), c.share));
            entries
        }
    };
    let plan: Vec<ReadPlanEntry> = plan.into_iter().filter(|e| e.weight > 0.0).collect();
    if plan.is_empty() {
        return Err(RouteError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: "no_plan",
            message: format!(
                "consumer {:?} reads no version (no active model in the control log)",
                request.consumer
            ),
        });
    }
    let mut degraded = Vec::new();
    let mut partial = Vec::new();
    let mut versions = Vec::new();
    for entry in &plan {
        let scatter = shared
            .config
            .backends
            .scatter(&entry.model, profile.pool.as_deref());
        if scatter.slices.is_empty() {
            degraded.push(if shared.config.backends.serves(&entry.model) {
                scatter.missing.join("; ")
            } else {
                format!("{}: no sink configured for this version", entry.model)
            });
            continue;
        }
        // "New model via adapter": the query is the new model's, and the old version's sink
        // maps it into its space with the adapter.
        let query_model = match &entry.adapter {
            Some(name) => match name.parse::<embedstream_adapter::AdapterName>() {
                Ok(n) => n.new,
                Err(e) => {
                    degraded.push(format!("{}: {e}", entry.model));
                    continue;
                }
            },
            None => entry.model.clone(),
        };
        let mut forward = serde_json::json!({"consumer": request.consumer, "k": k});
        if let Some(name) = &entry.adapter {
            forward["adapter"] = serde_json::json!(name);
            // Fused: the sink also needs its own model's query of the same text.
            if let Some(w) = entry.fuse {
                forward["fuse"] = serde_json::json!(w);
            }
        }
        if let Some(f) = &request.filter {
            forward["filter"] = f.clone();
        }
        if request.tier != embedstream_schemas::api::Tier::All {
            forward["tier"] = serde_json::json!(request.tier);
        }
        if let Some(t) = &request.text {
            forward["text"] = serde_json::json!(t);
        } else if let Some(v) = &request.vector {
            forward["vector"] = serde_json::json!(v);
        } else if let Some(vs) = &request.vectors {
            let Some(v) = vs.get(&query_model) else {
                return Err(RouteError::bad(
                    "missing_vector",
                    format!(
                        "\"vectors\" has no vector for {} (the plan reads {})",
                        query_model,
                        plan.iter()
                            .map(|e| e.model.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            };
            forward["vector"] = serde_json::json!(v);
            if entry.fuse.is_some() {
                let Some(own) = vs.get(&entry.model) else {
                    return Err(RouteError::bad(
                        "missing_vector",
                        format!(
                            "\"vectors\" has no vector for {}: its fused reads need it beside {}'s",
                            entry.model, query_model
                        ),
                    ));
                };
                forward["own_vector"] = serde_json::json!(own);
            }
        }
        versions.push((entry.clone(), scatter, forward));
    }
    let asked = versions.iter().map(|(entry, scatter, forward)| {
        let slices = scatter
            .slices
            .iter()
            .map(|target| ask_slice(shared, &entry.model, target, forward, key.as_ref()));
        futures::future::join_all(slices)
    });
    let answers = futures::future::join_all(asked).await;
    let mut lists = Vec::new();
    for ((entry, scatter, _), answers) in versions.into_iter().zip(answers) {
        let mut hits = Vec::new();
        let mut failed = scatter.missing;
        let mut answered = 0;
        for (target, answer) in scatter.slices.iter().zip(answers) {
            match answer {
                SliceAnswer::Hits(h) => {
                    answered += 1;
                    hits.extend(h);
                }
                SliceAnswer::Refused(message) => {
                    return Err(RouteError::bad(
                        "rejected_by_sink",
                        format!("{}: {message}", entry.model),
                    ));
                }
                SliceAnswer::Failed(why) => failed.push(format!(
                    "{}: slice {} in pool {}: {why}",
                    entry.model, target.slice, target.pool
                )),
            }
        }
        if answered == 0 {
            degraded.push(failed.join("; "));
            continue;
        }
        partial.extend(failed);
        // The index's own order: higher score first, then the smaller item id.
        hits.sort_by(|a: &(String, f32), b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        hits.truncate(k);
        lists.push(Ranked {
            version: entry.model.clone(),
            weight: entry.weight,
            hits,
        });
    }
    for d in &degraded {
        // A label names a configured version only: a request's plan can name anything.
        let version = d.split(':').next().unwrap_or_default();
        let version = if shared.config.backends.serves(version) {
            version.to_owned()
        } else {
            "unknown".to_owned()
        };
        metrics_crate::counter!(metrics::BACKEND_ERRORS, "model_version" => version).increment(1);
        tracing::warn!(consumer = %request.consumer, reason = %d, "A version was left out of a query.");
    }
    for p in &partial {
        tracing::warn!(consumer = %request.consumer, reason = %p, "A slice was left out of a query.");
    }
    if lists.is_empty() {
        return Err(RouteError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: "unavailable",
            message: format!("no version could answer: {}", degraded.join("; ")),
        });
    }
    let answered: Vec<String> = lists.iter().map(|l| l.version.clone()).collect();
    let method = request.blend.unwrap_or(shared.config.blend);
    let (results, blend_used) = if lists.len() == 1 {
        // One version: its own scores, unchanged.
        let l = lists.remove(0);
        let results = l
            .hits
            .into_iter()
            .take(k)
            .map(|(item_id, score)| Blended::single(item_id, &l.version, score))
            .collect();
        (results, None)
    } else {
        (blend::blend(&lists, method, k), Some(method))
    };
    if let (Some((migration_id, share)), Some(drawn)) = (canary, arm) {
        metrics_crate::counter!(
            metrics::CANARY_REQUESTS,
            "consumer" => request.consumer.clone(),
            "arm" => drawn.as_str()
        )
        .increment(1);
        if let Some(log) = &shared.config.exposure_log {
            log.offer(
                Exposure {
                    request_id: request_id.clone(),
                    unit_id: unit,
                    consumer: request.consumer.clone(),
                    arm: match drawn {
                        Arm::Control => ExposureArm::Control,
                        Arm::Canary => ExposureArm::Canary,
                    },
                    migration_id,
                    share,
                    models: answered.clone(),
                    items: results
                        .iter()
                        .map(|r: &Blended| r.item_id.clone())
                        .collect(),
                    served_at: now_ms(),
                },
                &request.consumer,
            );
        }
    }
    if let (Some(log), Some(text)) = (&shared.config.query_log, &request.text)
        && profile.log_queries
        && request.log_query != Some(false)
        && request.plan.is_none()
    {
        log.offer(
            LoggedQuery {
                consumer: request.consumer.clone(),
                text: text.clone(),
                request_id: Some(request_id.clone()),
                models: answered,
                k: i32::try_from(k).unwrap_or(i32::MAX),
                filtered: request.filter.is_some(),
                results: i32::try_from(results.len()).unwrap_or(i32::MAX),
                query_time: now_ms(),
            },
            &request.consumer,
        );
    }
    Ok(RouteResponse {
        results,
        consumer: request.consumer,
        k,
        blend: blend_used,
        plan: plan.iter().map(|e| (e.model.clone(), e.weight)).collect(),
        degraded,
        partial,
        request_id,
        arm: arm.map(Arm::as_str),
        took_ms: started.elapsed().as_secs_f64() * 1000.0,
    })
}
