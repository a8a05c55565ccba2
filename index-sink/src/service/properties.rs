//! Properties of the query API over any request: whatever bytes or JSON a client sends to
//! `/v1/search` or `/v1/embed` (and whatever item id it asks `/v1/items` for), the sink answers
//! 200 or a client error with a JSON body that says why — never a panic, never a 5xx other
//! than 503. An embed answer holds one vector per input.

use std::sync::{Arc, LazyLock};

use axum::Router;
use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use axum::http::{Request, StatusCode};
use proptest::prelude::*;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tower::ServiceExt;

use super::config::Settings;
use super::consumer::Progress;
use super::embed::{EmbedRefusal, Embedded, Prompt, TextBatch, TextsFuture};
use super::http::{Adapters, Api, EmbedFuture, QueryEmbedder, router};
use crate::{IndexConfig, ShardedIndex, Upsert, Write};
use embedstream_schemas::consumers::Consumers;

const DIM: usize = 8;

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
});

/// A sink's routes over a small index (no embedder: text queries are refused).
static APP: LazyLock<Router> = LazyLock::new(|| app(None));

/// The same with an embedder (a stand-in for the model: vectors from the text's bytes).
static EMBEDDING_APP: LazyLock<Router> = LazyLock::new(|| app(Some(Arc::new(Bytewise))));

/// Embeds a text as its first `DIM` bytes (plus one); refuses what a model refuses: a prompt
/// it does not have (it has `query`), a text over 64 bytes when truncation is refused.
struct Bytewise;

impl Bytewise {
    fn vector(text: &str) -> Vec<f32> {
        let mut v = vec![1.0; DIM];
        for (x, b) in v.iter_mut().zip(text.bytes()) {
            *x += f32::from(b);
        }
        v
    }
}

impl QueryEmbedder for Bytewise {
    fn embed(&self, text: String) -> EmbedFuture {
        Box::pin(async move { Ok(Self::vector(&text)) })
    }

    fn embed_texts(&self, batch: TextBatch) -> TextsFuture {
        Box::pin(async move {
            let prompt = match batch.prompt {
                Prompt::Named(name) if name != "query" => {
                    return Err(EmbedRefusal::UnknownPrompt {
                        name,
                        known: vec!["query".to_owned()],
                    });
                }
                Prompt::Named(_) | Prompt::Query => "query: ",
                Prompt::Default | Prompt::Document => "",
            };
            let texts: Vec<String> = batch.texts.iter().map(|t| format!("{prompt}{t}")).collect();
            if !batch.truncate
                && let Some(index) = texts.iter().position(|t| t.len() > 64)
            {
                return Err(EmbedRefusal::TooLong { index, max: 64 });
            }
            Ok(Embedded {
                tokens: texts.iter().map(|t| t.len().min(64)).collect(),
                vectors: texts.iter().map(|t| Self::vector(t)).collect(),
            })
        })
    }
}

fn app(embedder: Option<Arc<dyn QueryEmbedder>>) -> Router {
    let index = ShardedIndex::new(IndexConfig::with_dim(DIM)).unwrap();
    for i in 0..40_usize {
        let vector = (0..DIM)
            .map(|d| ((i * 7 + d * 3) % 11) as f32 - 5.0)
            .collect();
        index
            .apply(Write::Upsert(Upsert {
                item_id: format!("item-{i}"),
                vector,
                partition: 0,
                offset: i as i64,
                event_time_ms: 0,
                source: None,
                attributes: Default::default(),
            }))
            .unwrap();
    }
    let settings = Settings::default();
    let model = "minilm-l6-v2@1".parse().unwrap();
    let api = Arc::new(Api {
        index: Arc::new(index),
        model,
        topic: "embeddings.minilm-l6-v2.v1".to_owned(),
        group: "properties".to_owned(),
        consumers: Consumers::new(settings.consumers.clone()),
        admission: Semaphore::new(settings.http.max_concurrent_queries),
        http: settings.http.clone(),
        embedder,
        progress: Arc::new(Progress::default()),
        adapters: Adapters::new(std::env::temp_dir().join("embedstream-no-adapters")),
    });
    router(api, None).layer(DefaultBodyLimit::max(settings.http.max_body_bytes))
}

/// Any JSON value, a few levels deep, with the numbers clients get wrong.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        prop_oneof![
            Just(0.0),
            Just(-1.0),
            Just(1e308),
            Just(-1e308),
            Just(f64::MIN_POSITIVE),
            any::<f64>().prop_filter("finite", |f| f.is_finite()),
        ]
        .prop_map(|f| json!(f)),
        ".{0,24}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 64, 12, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..12).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const FIELDS: [&str; 11] = [
    "consumer",
    "vector",
    "text",
    "k",
    "ef",
    "adapter",
    "fuse",
    "own_vector",
    "filter",
    "plan",
    "model",
];

/// A search request: the fields a client may send (and some it may not), each with any value,
/// often with a vector of the right dimension and a known consumer.
fn search_body() -> impl Strategy<Value = Vec<u8>> {
    let vector = prop_oneof![
        prop::collection::vec(-10.0f32..10.0, DIM).prop_map(|v| json!(v)),
        prop::collection::vec(any::<f32>().prop_filter("finite", |f| f.is_finite()), 0..20)
            .prop_map(|v| json!(v)),
        json_value(),
    ];
    let consumer = prop_oneof![
        prop::sample::select(vec!["search", "recsys", "ads", "dedup"]).prop_map(|c| json!(c)),
        json_value(),
    ];
    let others =
        prop::collection::btree_map(prop::sample::select(FIELDS.to_vec()), json_value(), 0..4);
    let structured = (
        prop::option::of(consumer),
        prop::option::of(vector),
        prop::option::of(prop_oneof![
            (0i64..2000).prop_map(|k| json!(k)),
            json_value()
        ]),
        others,
    )
        .prop_map(|(consumer, vector, k, others)| {
            let mut body = serde_json::Map::new();
            for (key, value) in others {
                body.insert(key.to_owned(), value);
            }
            if let Some(c) = consumer {
                body.insert("consumer".into(), c);
            }
            if let Some(v) = vector {
                body.insert("vector".into(), v);
            }
            if let Some(k) = k {
                body.insert("k".into(), k);
            }
            serde_json::to_vec(&Value::Object(body)).unwrap()
        });
    prop_oneof![
        4 => structured,
        1 => json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        1 => prop::collection::vec(any::<u8>(), 0..256),
    ]
}

/// An embed request: `inputs` (often texts, short and long, few and many), the options with
/// good or any values, sometimes a stray field; or any JSON; or any bytes.
fn embed_body() -> impl Strategy<Value = Vec<u8>> {
    let inputs = prop_oneof![
        ".{0,80}".prop_map(Value::String),
        prop::collection::vec(".{0,80}".prop_map(Value::String), 0..300).prop_map(Value::Array),
        json_value(),
    ];
    let option = |good: Value| prop_oneof![Just(good), json_value()];
    let structured = (
        prop::option::of(inputs),
        prop::option::of(prop_oneof![
            option(json!("query")),
            option(json!("document"))
        ]),
        prop::option::of(prop_oneof![option(json!("query")), option(json!("title"))]),
        prop::option::of(option(json!(false))),
        prop::option::of(option(json!(true))),
        prop::option::of((".{1,8}", json_value())),
    )
        .prop_map(|(inputs, input_type, prompt, truncate, normalize, stray)| {
            let mut body = serde_json::Map::new();
            for (key, value) in [
                ("inputs", inputs),
                ("input_type", input_type),
                ("prompt_name", prompt),
                ("truncate", truncate),
                ("normalize", normalize),
            ] {
                if let Some(v) = value {
                    body.insert(key.to_owned(), v);
                }
            }
            if let Some((k, v)) = stray {
                body.insert(k, v);
            }
            serde_json::to_vec(&Value::Object(body)).unwrap()
        });
    prop_oneof![
        6 => structured,
        1 => json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        1 => prop::collection::vec(any::<u8>(), 0..256),
    ]
}

/// Sends one request; its status and body.
fn call(request: Request<Body>) -> (StatusCode, Vec<u8>) {
    call_on(&APP, request)
}

/// Sends one request to `app`; its status and body.
fn call_on(app: &Router, request: Request<Body>) -> (StatusCode, Vec<u8>) {
    RUNTIME.block_on(async {
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, body.to_vec())
    })
}

/// A client error or 503 says why, as JSON with an `error`.
fn explained(status: StatusCode, body: &[u8]) -> Result<(), TestCaseError> {
    prop_assert!(
        status.is_success()
            || status.is_client_error()
            || status == StatusCode::SERVICE_UNAVAILABLE,
        "status {status}: {}",
        String::from_utf8_lossy(body)
    );
    if !status.is_success() {
        let v: Value = serde_json::from_slice(body).map_err(|e| {
            TestCaseError::fail(format!(
                "{status} without a JSON body ({e}): {}",
                String::from_utf8_lossy(body)
            ))
        })?;
        prop_assert!(v["error"].is_string(), "{status}: {v}");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256)
    ))]

    #[test]
    fn any_search_request_gets_an_answer_or_a_clear_client_error(body in search_body()) {
        let object = serde_json::from_slice::<Value>(&body).is_ok_and(|v| v.is_object());
        let request = Request::post("/v1/search")
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap();
        let (status, answer) = call(request);
        explained(status, &answer)?;
        if !object {
            prop_assert_eq!(status, StatusCode::BAD_REQUEST, "only an object is a request");
        }
        if status.is_success() {
            let v: Value = serde_json::from_slice(&answer).unwrap();
            prop_assert!(v["results"].is_array(), "{v}");
        }
    }

    #[test]
    fn any_embed_request_gets_one_vector_per_input_or_a_clear_client_error(body in embed_body()) {
        let sent: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let request = Request::post("/v1/embed")
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap();
        let (status, answer) = call_on(&EMBEDDING_APP, request);
        explained(status, &answer)?;
        if !sent.is_object() {
            prop_assert_eq!(status, StatusCode::BAD_REQUEST, "only an object is a request");
        }
        if status.is_success() {
            let v: Value = serde_json::from_slice(&answer).unwrap();
            let inputs = match &sent["inputs"] {
                Value::Array(a) => a.len(),
                _ => 1,
            };
            prop_assert_eq!(v["embeddings"].as_array().map(Vec::len), Some(inputs), "{}", v);
            prop_assert_eq!(v["tokens"].as_array().map(Vec::len), Some(inputs), "{}", v);
            for e in v["embeddings"].as_array().unwrap() {
                prop_assert_eq!(e.as_array().map(Vec::len), Some(DIM), "{}", v);
            }
        } else {
            let v: Value = serde_json::from_slice(&answer).unwrap();
            prop_assert!(v["kind"].is_string(), "{status}: {v}");
        }
    }

    #[test]
    fn any_item_id_gets_an_answer_or_a_clear_client_error(id in "[^/?#]{1,64}") {
        let path = format!("/v1/items/{}", urlencode(&id));
        let (status, answer) = call(Request::get(path).body(Body::empty()).unwrap());
        explained(status, &answer)?;
    }
}

/// Percent-encodes everything but unreserved characters.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
