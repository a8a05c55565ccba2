//! An in-process registry on its own `_schemas`-like topic of the real broker, so each test
//! has its own ids and configs; and a small HTTP client speaking the registry's content type.

use std::time::Duration;

use std::sync::Arc;

use embedstream_schemas::registry::{Store, WriteAuth, router_with_auth};
use embedstream_topics::testing::{kafka, unique};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const CT: &str = "application/vnd.schemaregistry.v1+json";

pub struct TestRegistry {
    pub url: String,
    pub topic: String,
    shutdown: CancellationToken,
    server: JoinHandle<()>,
}

impl TestRegistry {
    /// A registry over a new, unique schemas topic.
    pub async fn start() -> Self {
        Self::start_on(&unique("it-schemas")).await
    }

    /// A registry over `topic` (which may hold a previous registry's log).
    pub async fn start_on(topic: &str) -> Self {
        Self::serve(topic, None).await
    }

    /// A registry over a new, unique schemas topic whose changes need `auth`'s credentials.
    pub async fn start_with_auth(auth: WriteAuth) -> Self {
        Self::serve(&unique("it-schemas"), Some(Arc::new(auth))).await
    }

    async fn serve(topic: &str, auth: Option<Arc<WriteAuth>>) -> Self {
        let shutdown = CancellationToken::new();
        let store = Store::open(
            &kafka(),
            topic,
            Duration::from_secs(10),
            shutdown.child_token(),
        )
        .await
        .expect("registry store opens");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let token = shutdown.clone();
        let server = tokio::spawn(async move {
            axum::serve(listener, router_with_auth(store, auth))
                .with_graceful_shutdown(token.cancelled_owned())
                .await
                .unwrap();
        });
        Self {
            url,
            topic: topic.to_owned(),
            shutdown,
            server,
        }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.server.await.unwrap();
    }

    /// Sends a request with a JSON body (if any) and returns status and JSON (or text) answer.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = reqwest::Client::new().request(method, format!("{}{path}", self.url));
        if let Some(b) = body {
            req = req.header("content-type", CT).body(b.to_string());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    pub async fn register(&self, subject: &str, schema: &str) -> (StatusCode, Value) {
        self.call(
            Method::POST,
            &format!("/subjects/{subject}/versions"),
            Some(serde_json::json!({ "schema": schema })),
        )
        .await
    }
}

pub const V1: &str =
    r#"{"type":"record","name":"Item","namespace":"t","fields":[{"name":"id","type":"string"}]}"#;
pub const V2_COMPATIBLE: &str = r#"{"type":"record","name":"Item","namespace":"t","fields":[{"name":"id","type":"string"},{"name":"n","type":"int","default":0}]}"#;
pub const V2_INCOMPATIBLE: &str = r#"{"type":"record","name":"Item","namespace":"t","fields":[{"name":"id","type":"string"},{"name":"n","type":"int"}]}"#;

pub fn error_code(v: &Value) -> i64 {
    v["error_code"]
        .as_i64()
        .unwrap_or_else(|| panic!("no error_code in {v}"))
}
