//! The embeddings APIs: texts → vectors of one model version, computed by that version's sink
//! (`POST /v1/embed` there), so a vector from here is exactly what that version's index holds.
//!
//! - `POST /v1/embeddings`, OpenAI's shape: `{"input": text | [texts], "model",
//!   "encoding_format"?: "float" | "base64", "dimensions"?, "user"?, "input_type"?: "query" |
//!   "document"}` → `{"object": "list", "data": [{"object": "embedding", "index",
//!   "embedding"}], "model", "usage": {"prompt_tokens", "total_tokens"}}`. Texts over the
//!   model's token limit are refused (413), as OpenAI does; `base64` is the little-endian f32
//!   bytes. Errors are OpenAI's `{"error": {"message", "type", "param", "code"}}`.
//! - `POST /embed`, TEI's shape: `{"inputs": text | [texts], "normalize"?: true,
//!   "truncate"?: false, "prompt_name"?, "model"?}` → `[[...], ...]`. Errors are
//!   `{"error", "error_type", "kind"}`.
//!
//! `model` is a version (`id@version`) that has a sink, or a consumer's name, meaning the
//! version that serves that consumer now (its read plan's heaviest entry); left out, the
//! version a consumer without a plan reads. The answer names the version used. `input_type`
//! and `prompt_name` pick the model's prompt (see the sink's `/v1/embed`). Limits (inputs per
//! request, text bytes) are the sink's, answered with its 400/413.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use embedstream_schemas::access::{Grant, forwarded};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::metrics;
use crate::shared::Shared;
use ::metrics as metrics_crate;

/// How long an embeddings request waits for its sink: a request of many long texts queued
/// behind others takes seconds on a CPU, so the searches' backend timeout does not apply.
const EMBED_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// A refused or failed embeddings request.
#[derive(Debug)]
struct Failure {
    status: StatusCode,
    kind: String,
    message: String,
    param: Option<&'static str>,
}

impl Failure {
    fn bad(kind: &str, message: impl Into<String>, param: Option<&'static str>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: kind.to_owned(),
            message: message.into(),
            param,
        }
    }

    /// OpenAI's error body.
    fn openai(self) -> Response {
        let kind = match self.status {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::FORBIDDEN => "permission_error",
            StatusCode::NOT_FOUND => "not_found_error",
            s if s.is_client_error() => "invalid_request_error",
            _ => "server_error",
        };
        let body = OpenAiError {
            error: OpenAiErrorDetail {
                message: self.message,
                kind: kind.to_owned(),
                param: self.param.map(str::to_owned),
                code: self.kind,
            },
        };
        (self.status, Json(body)).into_response()
    }

    /// TEI's error body (with the platform's `kind`).
    fn tei(self) -> Response {
        let error_type = match self.status {
            StatusCode::PAYLOAD_TOO_LARGE | StatusCode::BAD_REQUEST => "Validation",
            s if s.is_client_error() => "Validation",
            StatusCode::SERVICE_UNAVAILABLE => "Unhealthy",
            _ => "Backend",
        };
        let body = TeiError {
            error: self.message,
            error_type: error_type.to_owned(),
            kind: self.kind,
        };
        (self.status, Json(body)).into_response()
    }
}

/// OpenAI's error body.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct OpenAiError {
    error: OpenAiErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct OpenAiErrorDetail {
    /// For people.
    message: String,
    /// OpenAI's class: `invalid_request_error`, `authentication_error`, `permission_error`,
    /// `not_found_error` or `server_error`.
    #[serde(rename = "type")]
    kind: String,
    /// The request field at fault, if one is.
    param: Option<String>,
    /// The platform's fixed word for the cause.
    code: String,
}

/// TEI's error body, with the platform's `kind`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TeiError {
    error: String,
    /// `Validation`, `Unhealthy` or `Backend`.
    error_type: String,
    kind: String,
}

/// A vector as numbers or as base64.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // a schema only: answers are built as JSON values
pub(crate) enum FloatsOrBase64 {
    Floats(Vec<f32>),
    Base64(String),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Inputs {
    One(String),
    Many(Vec<String>),
    /// Token ids (OpenAI accepts them); refused with a clear message.
    Tokens(serde::de::IgnoredAny),
}

/// OpenAI's embeddings request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct OpenAiRequest {
    /// The texts.
    #[schema(value_type = embedstream_schemas::api::TextOrTexts)]
    input: Inputs,
    /// A registered version (`id@version`) or a consumer (its current version); the
    /// `search` consumer's when left out.
    #[serde(default)]
    model: Option<String>,
    /// `float` (default) or `base64` (little-endian f32).
    #[serde(default)]
    encoding_format: Option<String>,
    /// Only the version's own dimension is accepted.
    #[serde(default)]
    dimensions: Option<usize>,
    /// Accepted from OpenAI clients; not used.
    #[serde(default, rename = "user")]
    #[schema(value_type = Option<String>)]
    _user: Option<serde::de::IgnoredAny>,
    /// `query` or `document`: which of the model's prompts to apply.
    #[serde(default)]
    input_type: Option<String>,
}

/// TEI's embed request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TeiRequest {
    /// The texts.
    #[schema(value_type = embedstream_schemas::api::TextOrTexts)]
    inputs: Inputs,
    /// As in OpenAI's `model`.
    #[serde(default)]
    model: Option<String>,
    /// L2-normalize the vectors (default true).
    #[serde(default = "yes")]
    normalize: bool,
    /// Cut a text over the model's token limit instead of refusing it (413).
    #[serde(default)]
    truncate: bool,
    /// One of the model's prompts by name.
    #[serde(default)]
    prompt_name: Option<String>,
    /// Only `Right`.
    #[serde(default)]
    truncation_direction: Option<String>,
}

/// OpenAI's embeddings answer.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct OpenAiList {
    /// `list`.
    object: &'static str,
    data: Vec<OpenAiEmbedding>,
    /// The version that computed them.
    model: String,
    usage: Usage,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct OpenAiEmbedding {
    /// `embedding`.
    object: &'static str,
    index: usize,
    /// Numbers, or base64 of little-endian f32 with `encoding_format: base64`.
    #[schema(value_type = FloatsOrBase64)]
    embedding: Value,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Usage {
    prompt_tokens: usize,
    total_tokens: usize,
}

const fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
struct SinkAnswer {
    model_version: String,
    dimension: usize,
    embeddings: Vec<Vec<f32>>,
    tokens: Vec<usize>,
}

/// The request body as `T`: a JSON object only (serde would also read a struct from an array,
/// by position).
fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, Failure> {
    if !body.trim_ascii_start().starts_with(b"{") {
        return Err(Failure::bad(
            "invalid_json",
            "the body must be a JSON object",
            None,
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        Failure::bad(
            "invalid_json",
            format!("the body is not a valid embeddings request: {e}"),
            None,
        )
    })
}

fn texts_of(inputs: Inputs, field: &'static str) -> Result<Vec<String>, Failure> {
    match inputs {
        Inputs::One(t) => Ok(vec![t]),
        Inputs::Many(v) => Ok(v),
        Inputs::Tokens(_) => Err(Failure::bad(
            "invalid_input",
            format!("\"{field}\" must be a text or an array of texts (token ids are not accepted)"),
            Some(field),
        )),
    }
}

/// The version `model` names (see the module docs), checked against the key's grant.
fn resolve(shared: &Shared, grant: &Grant, model: Option<&str>) -> Result<String, Failure> {
    let state = shared.plans.borrow().clone();
    let version = match model {
        None => state.serving_default().ok_or_else(|| Failure {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: "no_active_model".to_owned(),
            message: "no model version is active in the control log; name one in \"model\""
                .to_owned(),
            param: Some("model"),
        })?,
        Some(name) if shared.config.backends.serves(name) => name.to_owned(),
        Some(name) if shared.config.consumers.contains(name) => {
            if !grant.allows(name) {
                return Err(Failure {
                    status: StatusCode::FORBIDDEN,
                    kind: "forbidden_consumer".to_owned(),
                    message: format!("this API key may not act as consumer {name:?}"),
                    param: Some("model"),
                });
            }
            let plan = state.read_plan_for(name);
            // The heaviest entry; the first of equals (the older version in a plan).
            let mut best: Option<&embedstream_schemas::records::ReadPlanEntry> = None;
            for entry in &plan {
                if best.is_none_or(|b| entry.weight > b.weight) {
                    best = Some(entry);
                }
            }
            best.map(|e| e.model.clone()).ok_or_else(|| Failure {
                status: StatusCode::SERVICE_UNAVAILABLE,
                kind: "no_plan".to_owned(),
                message: format!("consumer {name:?} reads no version now"),
                param: Some("model"),
            })?
        }
        Some(name) => {
            return Err(Failure {
                status: StatusCode::NOT_FOUND,
                kind: "model_not_found".to_owned(),
                message: format!(
                    "{name:?} is neither a served model version ({}) nor a consumer ({})",
                    shared
                        .config
                        .backends
                        .models()
                        .into_iter()
                        .collect::<Vec<_>>()
                        .join(", "),
                    shared.config.consumers.names().join(", ")
                ),
                param: Some("model"),
            });
        }
    };
    Ok(version)
}

/// Asks `version`'s sink to embed.
async fn call_sink(
    shared: &Shared,
    headers: &HeaderMap,
    version: &str,
    body: Value,
) -> Result<SinkAnswer, Failure> {
    let Some(base) = shared.config.backends.get(version) else {
        return Err(Failure {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: "no_sink".to_owned(),
            message: format!("no sink serves {version} now"),
            param: Some("model"),
        });
    };
    let mut call = shared
        .client
        .post(format!("{}/v1/embed", base.trim_end_matches('/')))
        .timeout(EMBED_TIMEOUT)
        .json(&body);
    if let Some((name, value)) = forwarded(headers) {
        call = call.header(name, value);
    }
    let unavailable = |message: String| Failure {
        status: StatusCode::SERVICE_UNAVAILABLE,
        kind: "unavailable".to_owned(),
        message,
        param: None,
    };
    let answer = call
        .send()
        .await
        .map_err(|e| unavailable(format!("{version}'s sink did not answer: {e}")))?;
    let status = answer.status();
    if status.is_success() {
        return answer
            .json::<SinkAnswer>()
            .await
            .map_err(|e| unavailable(format!("{version}'s sink answered unreadably: {e}")));
    }
    let text = answer.text().await.unwrap_or_default();
    let parsed = serde_json::from_str::<Value>(&text).unwrap_or(Value::Null);
    let message = parsed["error"].as_str().map_or(text.clone(), str::to_owned);
    let kind = parsed["kind"].as_str().unwrap_or("sink_error").to_owned();
    if status.is_client_error() {
        // The request's own fault (limits, prompts, text): the sink's status and words.
        return Err(Failure {
            status,
            kind,
            message,
            param: Some("input"),
        });
    }
    Err(unavailable(format!(
        "{version}'s sink answered {status}: {message}"
    )))
}

fn record(api: &'static str, version: &str, result: &'static str, started: Instant) {
    metrics_crate::counter!(metrics::EMBED_REQUESTS, "api" => api, "result" => result).increment(1);
    if result == "ok" {
        metrics_crate::histogram!(metrics::EMBED_SECONDS, "api" => api, "model_version" => version.to_owned())
            .record(started.elapsed().as_secs_f64());
    }
}

fn result_label(status: StatusCode) -> &'static str {
    if status.is_client_error() {
        "bad_request"
    } else {
        "unavailable"
    }
}

/// `POST /v1/embeddings` (OpenAI).
#[utoipa::path(
    post,
    path = "/v1/embeddings",
    tag = "embeddings",
    request_body = OpenAiRequest,
    responses(
        (status = 200, description = "The vectors, in input order", body = OpenAiList),
        (status = 400, description = "A request that cannot succeed", body = OpenAiError),
        (status = 401, description = "An API key is needed", body = OpenAiError),
        (status = 403, description = "The API key may not use this model or consumer", body = OpenAiError),
        (status = 404, description = "Unknown model or consumer", body = OpenAiError),
        (status = 413, description = "Too many inputs, or a text over the limits", body = OpenAiError),
        (status = 503, description = "The version's sink cannot embed now", body = OpenAiError),
    )
)]
pub(crate) async fn openai(
    State(shared): State<Arc<Shared>>,
    grant: Option<axum::Extension<Grant>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let grant = grant.map_or(Grant::All, |g| g.0);
    let result = openai_answer(&shared, &grant, &headers, &body).await;
    finish("openai", started, result, Failure::openai)
}

/// Records the request's outcome and answers it, an error in the API's own shape.
fn finish(
    api: &'static str,
    started: Instant,
    result: Result<(String, Response), Failure>,
    shape: fn(Failure) -> Response,
) -> Response {
    match result {
        Ok((version, answer)) => {
            record(api, &version, "ok", started);
            answer
        }
        Err(f) => {
            record(api, "", result_label(f.status), started);
            shape(f)
        }
    }
}

async fn openai_answer(
    shared: &Shared,
    grant: &Grant,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(String, Response), Failure> {
    let request: OpenAiRequest = parse(body)?;
    let texts = texts_of(request.input, "input")?;
    let base64 = match request.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(Failure::bad(
                "invalid_encoding_format",
                format!("encoding_format {other:?} is not one of float, base64"),
                Some("encoding_format"),
            ));
        }
    };
    let input_type = match request.input_type.as_deref() {
        None | Some("query" | "document") => request.input_type.clone(),
        Some(other) => {
            return Err(Failure::bad(
                "invalid_input_type",
                format!("input_type {other:?} is not one of query, document"),
                Some("input_type"),
            ));
        }
    };
    let version = resolve(shared, grant, request.model.as_deref())?;
    let answer = call_sink(
        shared,
        headers,
        &version,
        json!({"inputs": texts, "input_type": input_type, "truncate": false}),
    )
    .await?;
    if let Some(d) = request.dimensions
        && d != answer.dimension
    {
        return Err(Failure::bad(
            "invalid_dimensions",
            format!(
                "{} has {} dimensions; \"dimensions\" may only be that",
                answer.model_version, answer.dimension
            ),
            Some("dimensions"),
        ));
    }
    let tokens: usize = answer.tokens.iter().sum();
    let data = answer
        .embeddings
        .into_iter()
        .enumerate()
        .map(|(index, vector)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(vector)
            };
            OpenAiEmbedding {
                object: "embedding",
                index,
                embedding,
            }
        })
        .collect();
    let body = OpenAiList {
        object: "list",
        data,
        model: answer.model_version,
        usage: Usage {
            prompt_tokens: tokens,
            total_tokens: tokens,
        },
    };
    Ok((version, Json(body).into_response()))
}

/// `POST /embed` (TEI).
#[utoipa::path(
    post,
    path = "/embed",
    tag = "embeddings",
    request_body = TeiRequest,
    responses(
        (status = 200, description = "One vector per input, in input order", body = Vec<Vec<f32>>),
        (status = 400, description = "A request that cannot succeed", body = TeiError),
        (status = 401, description = "An API key is needed", body = TeiError),
        (status = 403, description = "The API key may not use this model or consumer", body = TeiError),
        (status = 404, description = "Unknown model or consumer", body = TeiError),
        (status = 413, description = "Too many inputs, or a text over the limits", body = TeiError),
        (status = 503, description = "The version's sink cannot embed now", body = TeiError),
    )
)]
pub(crate) async fn tei(
    State(shared): State<Arc<Shared>>,
    grant: Option<axum::Extension<Grant>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let grant = grant.map_or(Grant::All, |g| g.0);
    let result = tei_answer(&shared, &grant, &headers, &body).await;
    finish("tei", started, result, Failure::tei)
}

async fn tei_answer(
    shared: &Shared,
    grant: &Grant,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(String, Response), Failure> {
    let request: TeiRequest = parse(body)?;
    let texts = texts_of(request.inputs, "inputs")?;
    if let Some(d) = request.truncation_direction.as_deref()
        && !d.eq_ignore_ascii_case("right")
    {
        return Err(Failure::bad(
            "invalid_truncation_direction",
            format!("truncation_direction {d:?}: only Right is supported"),
            Some("truncation_direction"),
        ));
    }
    let version = resolve(shared, grant, request.model.as_deref())?;
    let mut forward =
        json!({"inputs": texts, "truncate": request.truncate, "normalize": request.normalize});
    if let Some(name) = request.prompt_name {
        forward["prompt_name"] = json!(name);
    }
    let answer = call_sink(shared, headers, &version, forward).await?;
    Ok((version, Json(answer.embeddings).into_response()))
}
