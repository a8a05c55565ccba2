//! The sink's API description: an OpenAPI 3.1 document derived from the handlers and the
//! types they read and write (`utoipa`), served at `GET /openapi.json`.

use std::sync::OnceLock;

use axum::response::Response;
use embedstream_schemas::api;
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "embedstream index sink",
        description = "One model version's index: searches, items, statistics and the \
                       version's embeddings."
    ),
    paths(
        super::http::search,
        super::http::item,
        super::http::stats,
        super::embed::embed_route,
    )
)]
struct SinkApi;

/// The document, as JSON.
pub fn document() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    api::document(&DOCUMENT, SinkApi::openapi)
}

/// `GET /openapi.json`.
pub(crate) async fn openapi_json() -> Response {
    api::document_response(document())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_document_describes_every_json_route() {
        let doc: serde_json::Value = serde_json::from_str(super::document()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let paths: Vec<&str> = doc["paths"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            paths,
            [
                "/v1/embed",
                "/v1/items/{item_id}",
                "/v1/search",
                "/v1/stats"
            ]
        );
    }
}
