//! The router's API description: an OpenAPI 3.1 document derived from the handlers and the
//! types they read and write (`utoipa`), served at `GET /openapi.json`.

use std::sync::OnceLock;

use axum::response::Response;
use embedstream_schemas::api;
use utoipa::OpenApi;

/// The admin API's bearer token.
struct AdminToken;

impl utoipa::Modify for AdminToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
            );
    }
}

#[derive(OpenApi)]
#[openapi(
    modifiers(&AdminToken),
    info(
        title = "embedstream router",
        description = "The query API: searches blended per consumer across model versions, \
                       embeddings in OpenAI's and TEI's shapes, plans and versions, the \
                       platform's status and the migration admin API."
    ),
    paths(
        crate::search::search,
        crate::search::plans_route,
        crate::search::versions_route,
        crate::search::slices_route,
        crate::search::item_route,
        crate::embeddings::openai,
        crate::embeddings::tei,
        crate::status::status_json,
        crate::admin::status,
        crate::admin::action,
    )
)]
struct RouterApi;

/// The document, as JSON.
pub fn document() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    api::document(&DOCUMENT, RouterApi::openapi)
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
                "/admin/v1/migration/status",
                "/admin/v1/migration/{action}",
                "/embed",
                "/v1/embeddings",
                "/v1/items/{item_id}",
                "/v1/plans",
                "/v1/search",
                "/v1/slices",
                "/v1/status",
                "/v1/versions",
            ]
        );
        let search = &doc["components"]["schemas"]["RouteRequest"]["properties"];
        assert!(search["filter"].is_object(), "{search}");
    }
}
