//! What the router's and the sinks' HTTP APIs share: the error body, the schema of a
//! text-or-texts input, and serving an OpenAPI document (`utoipa`) at `/openapi.json`.

use std::sync::OnceLock;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A refused or failed request: a message for people and a fixed `kind` for programs.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for people.
    pub error: String,
    /// What went wrong, for programs: a fixed word per cause (`unknown_consumer`,
    /// `invalid_filter`, ...).
    pub kind: String,
}

impl ErrorBody {
    /// A body of `error` and `kind`.
    pub fn new(error: impl Into<String>, kind: impl Into<String>) -> Self {
        Self {
            error: error.into(),
            kind: kind.into(),
        }
    }

    /// The answer: `status` with this body.
    pub fn into_response(self, status: StatusCode) -> Response {
        (status, axum::Json(self)).into_response()
    }
}

/// One text or several: the schema of an embeddings request's inputs.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // a schema only: requests read their inputs into their own types
pub enum TextOrTexts {
    /// One text.
    One(String),
    /// Several texts.
    Many(Vec<String>),
}

/// The tiers a search covers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// Every item.
    #[default]
    All,
    /// The hot tier only: items within the index's hot window, held in memory (tighter
    /// latency). Without a cold tier, every item.
    Hot,
}

/// An OpenAPI document as JSON, rendered once into `cell`.
pub fn document(
    cell: &'static OnceLock<String>,
    api: fn() -> utoipa::openapi::OpenApi,
) -> &'static str {
    cell.get_or_init(|| api().to_json().expect("the OpenAPI document serializes"))
}

/// The answer of `GET /openapi.json`.
pub fn document_response(json: &'static str) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], json).into_response()
}
