//! The Confluent REST subset: the routes, request parsing and response shapes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use super::auth::{WriteAuth, require_writer};
use super::compat::Compatibility;
use super::error::RegistryError;
use super::state::{Registration, RegistryState, VersionSpec, parse_schema};
use super::store::Store;

const ACCEPTED_CONTENT_TYPES: [&str; 4] = [
    "application/vnd.schemaregistry.v1+json",
    "application/vnd.schemaregistry+json",
    "application/json",
    "application/octet-stream",
];

use super::http::{CONTENT_TYPE, json_response};

type ApiResult = Result<Response, RegistryError>;

fn ok(body: serde_json::Value) -> ApiResult {
    Ok(json_response(StatusCode::OK, &body))
}

/// The registry's routes, over `store`, open to anyone who reaches them.
pub fn router(store: Store) -> Router {
    router_with_auth(store, None)
}

/// The registry's routes, over `store`; with `auth`, changes need its credentials.
pub fn router_with_auth(store: Store, auth: Option<Arc<WriteAuth>>) -> Router {
    Router::new()
        .route("/", get(|| async { ok(json!({})) }))
        .route("/schemas/types", get(|| async { ok(json!(["AVRO"])) }))
        .route("/mode", get(|| async { ok(json!({"mode": "READWRITE"})) }))
        .route("/subjects", get(list_subjects))
        .route("/subjects/{subject}", post(lookup).delete(delete_subject))
        .route(
            "/subjects/{subject}/versions",
            get(list_versions).post(register),
        )
        .route(
            "/subjects/{subject}/versions/{version}",
            get(get_version).delete(delete_version),
        )
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            get(get_version_schema),
        )
        .route("/schemas/ids/{id}", get(get_by_id))
        .route("/schemas/ids/{id}/schema", get(get_raw_by_id))
        .route("/schemas/ids/{id}/versions", get(id_versions))
        .route("/schemas/ids/{id}/subjects", get(id_subjects))
        .route(
            "/compatibility/subjects/{subject}/versions",
            post(check_all),
        )
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(check_one),
        )
        .route("/config", get(get_global_config).put(put_global_config))
        .route(
            "/config/{subject}",
            get(get_subject_config)
                .put(put_subject_config)
                .delete(delete_subject_config),
        )
        .fallback(|| async { RegistryError::NotFound })
        .layer(middleware::from_fn_with_state(auth, require_writer))
        .layer(middleware::from_fn(observe))
        .with_state(store)
}

async fn observe(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().to_string();
    let start = Instant::now();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("embedstream_registry_requests_total", "route" => route.clone(), "method" => method, "status" => status).increment(1);
    metrics::histogram!("embedstream_registry_request_seconds", "route" => route)
        .record(start.elapsed().as_secs_f64());
    response
}

/// `?deleted=true` and `?permanent=true` and friends.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Flags {
    #[serde(default)]
    deleted: bool,
    #[serde(default)]
    permanent: bool,
    #[serde(default)]
    verbose: bool,
    #[serde(default)]
    default_to_global: bool,
}

fn flags(q: &HashMap<String, String>) -> Flags {
    let on = |k: &str| q.get(k).is_some_and(|v| v.eq_ignore_ascii_case("true"));
    Flags {
        deleted: on("deleted"),
        permanent: on("permanent"),
        verbose: on("verbose"),
        default_to_global: on("defaultToGlobal"),
    }
}

/// Parses a JSON body after checking its content type (415 otherwise).
fn body<T: for<'de> Deserialize<'de>>(
    headers: &HeaderMap,
    bytes: &Bytes,
) -> Result<T, RegistryError> {
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or_default();
        let essence = ct
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        if !ACCEPTED_CONTENT_TYPES.contains(&essence.as_str()) {
            return Err(RegistryError::UnsupportedMediaType {
                content_type: ct.to_owned(),
            });
        }
    }
    serde_json::from_slice(bytes).map_err(|e| RegistryError::BadRequest {
        reason: e.to_string(),
    })
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SchemaRequest {
    schema: String,
    #[serde(default)]
    schema_type: Option<String>,
    #[serde(default)]
    references: Option<Vec<serde_json::Value>>,
}

impl SchemaRequest {
    fn avro_text(&self) -> Result<&str, RegistryError> {
        if let Some(t) = &self.schema_type
            && !t.eq_ignore_ascii_case("AVRO")
        {
            return Err(RegistryError::InvalidSchema {
                reason: format!("schema type {t} is not supported; this registry serves AVRO only"),
            });
        }
        if self.references.as_ref().is_some_and(|r| !r.is_empty()) {
            return Err(RegistryError::InvalidSchema {
                reason: "schema references are not supported".to_owned(),
            });
        }
        Ok(&self.schema)
    }
}

async fn list_subjects(
    State(store): State<Store>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let f = flags(&q);
    ok(json!(store.read(|s| s.subjects(f.deleted))))
}

async fn list_versions(
    State(store): State<Store>,
    Path(subject): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let f = flags(&q);
    ok(json!(store.read(|s| s.versions(&subject, f.deleted))?))
}

async fn register(
    State(store): State<Store>,
    Path(subject): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> ApiResult {
    let req: SchemaRequest = body(&headers, &bytes)?;
    let text = req.avro_text()?;
    let guard = store.lock().await;
    match guard.read(|s| s.plan_register(&subject, text))? {
        Registration::Existing { id } => ok(json!({ "id": id })),
        Registration::New {
            id,
            version,
            record,
        } => {
            guard.append(&[record]).await?;
            tracing::info!(%subject, id, version, "Registered schema.");
            ok(json!({ "id": id }))
        }
    }
}

async fn lookup(
    State(store): State<Store>,
    Path(subject): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    bytes: Bytes,
) -> ApiResult {
    let req: SchemaRequest = body(&headers, &bytes)?;
    let text = req.avro_text()?;
    let f = flags(&q);
    ok(json!(store.read(|s| s.lookup(&subject, text, f.deleted))?))
}

async fn get_version(
    State(store): State<Store>,
    Path((subject, version)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let spec = VersionSpec::parse(&version)?;
    let f = flags(&q);
    ok(json!(store.read(|s| s.version(&subject, spec, f.deleted))?))
}

async fn get_version_schema(
    State(store): State<Store>,
    Path((subject, version)): Path<(String, String)>,
) -> ApiResult {
    let spec = VersionSpec::parse(&version)?;
    let sv = store.read(|s| s.version(&subject, spec, false))?;
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], sv.schema).into_response())
}

async fn delete_subject(
    State(store): State<Store>,
    Path(subject): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let f = flags(&q);
    let guard = store.lock().await;
    let (versions, records) = guard.read(|s| s.plan_delete_subject(&subject, f.permanent))?;
    guard.append(&records).await?;
    ok(json!(versions))
}

async fn delete_version(
    State(store): State<Store>,
    Path((subject, version)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let spec = VersionSpec::parse(&version)?;
    let f = flags(&q);
    let guard = store.lock().await;
    let (version, record) = guard.read(|s| s.plan_delete_version(&subject, spec, f.permanent))?;
    guard.append(&[record]).await?;
    ok(json!(version))
}

fn parse_id(id: &str) -> Result<u32, RegistryError> {
    id.parse().map_err(|_| RegistryError::SchemaNotFound {
        what: id.to_owned(),
    })
}

async fn get_by_id(State(store): State<Store>, Path(id): Path<String>) -> ApiResult {
    let id = parse_id(&id)?;
    ok(json!({ "schema": store.read(|s| s.schema_by_id(id).map(str::to_owned))? }))
}

async fn get_raw_by_id(State(store): State<Store>, Path(id): Path<String>) -> ApiResult {
    let id = parse_id(&id)?;
    let text = store.read(|s| s.schema_by_id(id).map(str::to_owned))?;
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response())
}

async fn id_versions(
    State(store): State<Store>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let id = parse_id(&id)?;
    let f = flags(&q);
    let pairs = store.read(|s| s.versions_of_id(id, f.deleted))?;
    ok(json!(
        pairs
            .into_iter()
            .map(|(subject, version)| json!({"subject": subject, "version": version}))
            .collect::<Vec<_>>()
    ))
}

async fn id_subjects(
    State(store): State<Store>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let id = parse_id(&id)?;
    let f = flags(&q);
    let mut subjects: Vec<String> = store
        .read(|s| s.versions_of_id(id, f.deleted))?
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    subjects.dedup();
    ok(json!(subjects))
}

fn compatibility_answer(problems: Vec<String>, verbose: bool) -> ApiResult {
    let mut answer = json!({ "is_compatible": problems.is_empty() });
    if verbose {
        answer["messages"] = json!(problems);
    }
    ok(answer)
}

async fn check_all(
    State(store): State<Store>,
    Path(subject): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    bytes: Bytes,
) -> ApiResult {
    let req: SchemaRequest = body(&headers, &bytes)?;
    let parsed = parse_schema(req.avro_text()?)?;
    let problems = store.read(|s| s.check(&subject, &parsed.schema, None))?;
    compatibility_answer(problems, flags(&q).verbose)
}

async fn check_one(
    State(store): State<Store>,
    Path((subject, version)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    bytes: Bytes,
) -> ApiResult {
    let spec = VersionSpec::parse(&version)?;
    let req: SchemaRequest = body(&headers, &bytes)?;
    let parsed = parse_schema(req.avro_text()?)?;
    let problems = store.read(|s| s.check(&subject, &parsed.schema, Some(spec)))?;
    compatibility_answer(problems, flags(&q).verbose)
}

#[derive(Debug, Deserialize)]
struct ConfigRequest {
    compatibility: String,
}

async fn get_global_config(State(store): State<Store>) -> ApiResult {
    ok(json!({ "compatibilityLevel": store.read(RegistryState::global_compatibility) }))
}

async fn put_global_config(
    State(store): State<Store>,
    headers: HeaderMap,
    bytes: Bytes,
) -> ApiResult {
    put_config(store, None, &headers, &bytes).await
}

async fn put_subject_config(
    State(store): State<Store>,
    Path(subject): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> ApiResult {
    put_config(store, Some(subject), &headers, &bytes).await
}

async fn put_config(
    store: Store,
    subject: Option<String>,
    headers: &HeaderMap,
    bytes: &Bytes,
) -> ApiResult {
    let req: ConfigRequest = body(headers, bytes)?;
    let level: Compatibility = req.compatibility.parse()?;
    let guard = store.lock().await;
    guard
        .append(&[RegistryState::plan_set_config(subject.as_deref(), level)])
        .await?;
    tracing::info!(subject = subject.as_deref().unwrap_or("<global>"), %level, "Set compatibility.");
    ok(json!({ "compatibility": level }))
}

async fn get_subject_config(
    State(store): State<Store>,
    Path(subject): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let f = flags(&q);
    let level = store.read(|s| {
        s.subject_compatibility(&subject)
            .or_else(|| f.default_to_global.then(|| s.global_compatibility()))
    });
    match level {
        Some(level) => ok(json!({ "compatibilityLevel": level })),
        None => Err(RegistryError::SubjectCompatibilityNotConfigured { subject }),
    }
}

async fn delete_subject_config(
    State(store): State<Store>,
    Path(subject): Path<String>,
) -> ApiResult {
    let guard = store.lock().await;
    let (old, record) = guard.read(|s| s.plan_delete_config(&subject))?;
    guard.append(&[record]).await?;
    ok(json!({ "compatibilityLevel": old }))
}
