use std::path::PathBuf;

use embedstream_pipeline::models;
use embedstream_topics::{ModelSpec, catalog};
use serde::Deserialize;

pub const MODELS: [&str; 2] = ["minilm-l6-v2@1", "mpnet-base-v2@1"];

/// The model's folder, fetched if it is not there yet.
pub fn model_dir(model: &str) -> (ModelSpec, PathBuf) {
    let spec = catalog::lookup(&model.parse().unwrap()).unwrap();
    let dir = models::fetch(&spec, &models::home()).expect("model weights are fetched");
    (spec, dir)
}

#[derive(Debug, Deserialize)]
pub struct Reference {
    pub max_seq_length: usize,
    pub dimension: usize,
    pub texts: Vec<ReferenceText>,
}

#[derive(Debug, Deserialize)]
pub struct ReferenceText {
    pub name: String,
    pub text: String,
    pub input_ids: Vec<u32>,
    pub vector: Vec<f32>,
}

pub fn reference(spec: &ModelSpec) -> Reference {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/reference")
        .join(format!("{}.json", spec.model.id));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// A free loopback port (bound, read, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until `url` answers 2xx (60 s at most).
pub async fn wait_http(url: &str) {
    for _ in 0..240 {
        if reqwest::get(url)
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    panic!("{url} did not come up");
}

/// Waits until the brokers of `kafka` answer a metadata request (60 s at most); on failure
/// the panic shows the broker's log at `log`.
pub fn wait_broker(kafka: &embedstream_topics::KafkaConfig, log: &std::path::Path) {
    let admin =
        embedstream_topics::admin::Admin::new(kafka, std::time::Duration::from_secs(2)).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while admin.list().is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the broker at {} did not answer; its log: {}",
            kafka.bootstrap(),
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

/// A registry in trouble: while `failing` is set it answers every request with HTTP 500, and
/// once it is cleared it passes requests (method, path, body, content type) through to the
/// real registry at `upstream`. Returns its URL.
pub async fn failing_registry(
    upstream: String,
    failing: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> String {
    use axum::body::Bytes;
    use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let client = reqwest::Client::new();
    let app = axum::Router::new().fallback(
        move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let (upstream, failing, client) = (upstream.clone(), failing.clone(), client.clone());
            async move {
                if failing.load(std::sync::atomic::Ordering::SeqCst) {
                    let body = r#"{"error_code": 50001, "message": "failing on purpose"}"#;
                    return (StatusCode::INTERNAL_SERVER_ERROR, body.to_owned());
                }
                let method = reqwest::Method::from_bytes(method.as_str().as_bytes()).unwrap();
                let mut request = client
                    .request(method, format!("{upstream}{uri}"))
                    .body(body);
                if let Some(ct) = headers.get(header::CONTENT_TYPE) {
                    request = request.header("content-type", ct.as_bytes());
                }
                let r = request.send().await.unwrap();
                let status = StatusCode::from_u16(r.status().as_u16()).unwrap();
                (status, r.text().await.unwrap())
            }
        },
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}
