//! `POST /v1/embed`: texts → vectors of this sink's model version, through the same engine
//! as its text queries (so a client's vectors are exactly the ones this index holds).
//!
//! Request: `{"inputs": "text" | ["text", ...], "input_type"?: "query" | "document",
//! "prompt_name"?: "...", "truncate"?: true, "normalize"?: bool}`. `input_type` picks the
//! model's prompt for that kind of input (none when the model has none); `prompt_name` names
//! one of the model's prompts itself (an unknown name is refused); with neither, the model's
//! default prompt applies, if it has one. `truncate: false` refuses a text over the model's
//! token limit (413) instead of cutting it. `normalize` defaults to the model's own pipeline.
//!
//! Answer: `{"model_version", "dimension", "embeddings": [[...]], "tokens": [n, ...],
//! "took_ms"}`, vectors in request order, `tokens` per text (special tokens included, after
//! truncation, prompt included).
//!
//! Refused: malformed JSON, an empty list, an empty text, both `input_type` and
//! `prompt_name`, an unknown prompt → 400; more inputs than `max_embed_inputs`, a text over
//! `max_text_bytes` or (with `truncate: false`) over the token limit → 413; a sink without a
//! model → 400; an engine that failed → 503. Errors are `{"error", "kind"}`.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use embedstream_schemas::api::ErrorBody;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::http::{Api, EmbedError};
use super::metrics as m;

/// Which of the model's prompts goes before each text.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Prompt {
    /// The model's default prompt, if it has one.
    #[default]
    Default,
    /// The model's prompt for queries, if it has one.
    Query,
    /// The model's prompt for documents (`document`, `passage` or `doc`), if it has one.
    Document,
    /// The prompt of this name; a name the model does not have is refused.
    Named(String),
}

/// Texts to embed, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextBatch {
    /// The texts, in order.
    pub texts: Vec<String>,
    /// The prompt.
    pub prompt: Prompt,
    /// Cut a text over the model's token limit (`true`) or refuse it.
    pub truncate: bool,
    /// L2-normalize; `None`: as the model's pipeline does.
    pub normalize: Option<bool>,
}

/// The vectors of a [`TextBatch`], in its order, and each text's tokens.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Embedded {
    /// One vector per text.
    pub vectors: Vec<Vec<f32>>,
    /// Tokens per text.
    pub tokens: Vec<usize>,
}

/// Why texts were not embedded.
#[derive(Debug)]
pub enum EmbedRefusal {
    /// Text `index` is over the model's token limit and truncation was refused.
    TooLong {
        /// Index in the request.
        index: usize,
        /// The limit, special tokens included.
        max: usize,
    },
    /// The request named a prompt the model does not have.
    UnknownPrompt {
        /// The name asked for.
        name: String,
        /// The model's prompt names.
        known: Vec<String>,
    },
    /// Text `index` cannot be tokenized.
    BadText {
        /// Index in the request.
        index: usize,
        /// Why.
        reason: String,
    },
    /// The embedder failed (model not loadable, engine stopped): not the request's fault.
    Failed(EmbedError),
}

/// The answer of [`super::QueryEmbedder::embed_texts`].
pub type TextsFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Embedded, EmbedRefusal>> + Send>>;

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Inputs {
    One(String),
    Many(Vec<String>),
}

impl Inputs {
    pub(crate) fn into_vec(self) -> Vec<String> {
        match self {
            Inputs::One(t) => vec![t],
            Inputs::Many(v) => v,
        }
    }
}

/// Which of the model's prompts applies.
#[derive(Debug, Deserialize, PartialEq, Eq, Clone, Copy, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum InputType {
    Query,
    Document,
}

/// Texts to embed with this version.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EmbedRequest {
    /// The texts.
    #[schema(value_type = embedstream_schemas::api::TextOrTexts)]
    inputs: Inputs,
    /// `query` or `document`: the model's prompt for that kind of text.
    #[serde(default)]
    input_type: Option<InputType>,
    /// One of the model's prompts by name.
    #[serde(default)]
    prompt_name: Option<String>,
    /// Cut a text over the token limit (default); `false` refuses it (413).
    #[serde(default = "yes")]
    truncate: bool,
    /// L2-normalize; the model's own pipeline decides when left out.
    #[serde(default)]
    normalize: Option<bool>,
}

const fn yes() -> bool {
    true
}

/// The vectors, in input order.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct EmbedResponse {
    model_version: String,
    dimension: usize,
    embeddings: Vec<Vec<f32>>,
    tokens: Vec<usize>,
    took_ms: f64,
}

struct Refused {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

fn bad(kind: &'static str, message: impl Into<String>) -> Refused {
    Refused {
        status: StatusCode::BAD_REQUEST,
        kind,
        message: message.into(),
    }
}

fn too_large(kind: &'static str, message: impl Into<String>) -> Refused {
    Refused {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        kind,
        message: message.into(),
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        ErrorBody::new(self.message, self.kind).into_response(self.status)
    }
}

/// `POST /v1/embed`. Any key the sink accepts may embed: the answer holds no item data.
#[utoipa::path(
    post,
    path = "/v1/embed",
    tag = "embeddings",
    request_body = EmbedRequest,
    responses(
        (status = 200, description = "The vectors", body = EmbedResponse),
        (status = 400, description = "A request that cannot succeed (see `kind`)", body = ErrorBody),
        (status = 401, description = "An API key is needed", body = ErrorBody),
        (status = 413, description = "Too many inputs, or a text over the limits", body = ErrorBody),
        (status = 503, description = "The model could not load or the engine stopped", body = ErrorBody),
    )
)]
pub(crate) async fn embed_route(State(api): State<Arc<Api>>, body: Bytes) -> Response {
    let started = Instant::now();
    let result = embed_body(&api, &body).await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(r) if r.status.is_client_error() => "bad_request",
        Err(_) => "error",
    };
    metrics::counter!(m::EMBED_REQUESTS_TOTAL, "model_version" => api.model.to_string(), "result" => outcome)
        .increment(1);
    match result {
        Ok((embedded, texts)) => {
            let elapsed = started.elapsed();
            metrics::histogram!(m::EMBED_SECONDS, "model_version" => api.model.to_string())
                .record(elapsed.as_secs_f64());
            metrics::counter!(m::EMBED_TEXTS_TOTAL, "model_version" => api.model.to_string())
                .increment(texts as u64);
            axum::Json(EmbedResponse {
                model_version: api.model.to_string(),
                dimension: api.index.config().dim,
                embeddings: embedded.vectors,
                tokens: embedded.tokens,
                took_ms: elapsed.as_secs_f64() * 1000.0,
            })
            .into_response()
        }
        Err(r) => r.into_response(),
    }
}

async fn embed_body(api: &Api, body: &[u8]) -> Result<(Embedded, usize), Refused> {
    // serde would also read a struct from a JSON array, by position: only an object is one.
    if !body.trim_ascii_start().starts_with(b"{") {
        return Err(bad("invalid_json", "the body must be a JSON object"));
    }
    let request: EmbedRequest = serde_json::from_slice(body).map_err(|e| {
        bad(
            "invalid_json",
            format!(
                "the body is not a valid embed request ({{\"inputs\": text or [texts], \"input_type\"?, \"prompt_name\"?, \"truncate\"?, \"normalize\"?}}): {e}"
            ),
        )
    })?;
    let texts = request.inputs.into_vec();
    if texts.is_empty() {
        return Err(bad("no_inputs", "\"inputs\" is empty"));
    }
    let limit = api.http.max_embed_inputs;
    if texts.len() > limit {
        return Err(too_large(
            "too_many_inputs",
            format!(
                "{} inputs in one request, at most {limit} are allowed",
                texts.len()
            ),
        ));
    }
    for (i, text) in texts.iter().enumerate() {
        if text.trim().is_empty() {
            return Err(bad("empty_text", format!("input {i} is empty")));
        }
        if text.len() > api.http.max_text_bytes {
            return Err(too_large(
                "text_too_long",
                format!(
                    "input {i} has {} bytes, at most {} are allowed",
                    text.len(),
                    api.http.max_text_bytes
                ),
            ));
        }
    }
    let prompt = match (request.input_type, request.prompt_name) {
        (Some(_), Some(_)) => {
            return Err(bad(
                "input_type_and_prompt_name",
                "give \"input_type\" or \"prompt_name\", not both",
            ));
        }
        (Some(InputType::Query), None) => Prompt::Query,
        (Some(InputType::Document), None) => Prompt::Document,
        (None, Some(name)) => Prompt::Named(name),
        (None, None) => Prompt::Default,
    };
    let Some(embedder) = &api.embedder else {
        return Err(bad(
            "text_unsupported",
            format!("this sink embeds no text for {}", api.model),
        ));
    };
    let count = texts.len();
    let embedded = embedder
        .embed_texts(TextBatch {
            texts,
            prompt,
            truncate: request.truncate,
            normalize: request.normalize,
        })
        .await
        .map_err(|refusal| match refusal {
            EmbedRefusal::TooLong { index, max } => too_large(
                "input_too_long",
                format!(
                    "input {index} has more than {}'s {max} tokens and \"truncate\" is false",
                    api.model
                ),
            ),
            EmbedRefusal::UnknownPrompt { name, known } => bad(
                "unknown_prompt",
                format!(
                    "{} has no prompt {name:?}; its prompts: [{}]",
                    api.model,
                    known.join(", ")
                ),
            ),
            EmbedRefusal::BadText { index, reason } => {
                bad("bad_text", format!("input {index}: {reason}"))
            }
            EmbedRefusal::Failed(error) => {
                tracing::error!(error = %error, "Embedding texts failed.");
                Refused {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    kind: "embedding_failed",
                    message: format!("embedding failed: {error}"),
                }
            }
        })?;
    Ok((embedded, count))
}
