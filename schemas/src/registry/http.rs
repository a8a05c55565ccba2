//! The registry's HTTP framing, shared by its routes and its errors.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Confluent's response content type.
pub const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// A JSON body with the registry's content type.
pub(crate) fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        body.to_string(),
    )
        .into_response()
}
