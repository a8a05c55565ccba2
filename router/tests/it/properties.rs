//! Properties of the router's query API over any request: whatever bytes or JSON a client
//! sends to `/v1/search` (plans included), `/v1/embeddings` or `/embed`, the router answers 200
//! or an error with a JSON body that says why — a client error, or 502/503 when the versions
//! it would read fail — never a panic or another 5xx. The versions' sinks here refuse
//! connections at once.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use embedstream_router::{Backends, Blend, RouterConfig, StatusFeed};
use embedstream_schemas::consumers::Consumers;
use embedstream_schemas::control::ControlState;
use proptest::prelude::*;
use serde_json::{Value, json};
use tower::ServiceExt;

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
});

const MODELS: [&str; 3] = ["minilm-l6-v2@1", "mpnet-base-v2@1", "other-model@7"];

static APP: LazyLock<Router> = LazyLock::new(|| {
    let _guard = RUNTIME.enter();
    // Port 1 on loopback: nothing listens, so each call fails at once.
    let backends = BTreeMap::from([
        (MODELS[0].to_owned(), "http://127.0.0.1:1".to_owned()),
        (MODELS[1].to_owned(), "http://127.0.0.1:1".to_owned()),
    ]);
    let config = RouterConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        backends: Backends::from(backends),
        blend: Blend::Rrf,
        consumers: Consumers::default(),
        timeout: Duration::from_secs(1),
        status: StatusFeed::new(),
        api_keys: None,
        tls: None,
        trust_pem: None,
        query_log: None,
        exposure_log: None,
    };
    let (tx, plans) = tokio::sync::watch::channel(Arc::new(ControlState::default()));
    std::mem::forget(tx);
    embedstream_router::router(config, plans)
});

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
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

/// A plan: entries naming known, unknown or malformed versions with any weights, sometimes
/// more than the router accepts.
fn plan() -> impl Strategy<Value = Value> {
    let entry = (
        prop_oneof![
            prop::sample::select(MODELS.to_vec()).prop_map(|m| json!(m)),
            json_value()
        ],
        prop_oneof![(-2.0f64..2.0).prop_map(|w| json!(w)), json_value()],
        prop::option::of(json_value()),
    )
        .prop_map(|(model, weight, adapter)| {
            let mut e = json!({"model": model, "weight": weight});
            if let Some(a) = adapter {
                e["adapter"] = a;
            }
            e
        });
    prop_oneof![
        prop::collection::vec(entry, 0..12).prop_map(Value::Array),
        json_value()
    ]
}

fn search_body() -> impl Strategy<Value = Vec<u8>> {
    let structured = (
        prop::option::of(prop_oneof![
            prop::sample::select(vec!["search", "recsys", "ads", "dedup", "nobody"])
                .prop_map(|c| json!(c)),
            json_value()
        ]),
        prop::option::of(prop_oneof![
            prop::collection::vec(-1.0f32..1.0, 384).prop_map(|v| json!(v)),
            json_value()
        ]),
        prop::option::of(prop_oneof![
            (0i64..500).prop_map(|k| json!(k)),
            json_value()
        ]),
        prop::option::of(plan()),
        prop::option::of(json_value()),
    )
        .prop_map(|(consumer, vector, k, plan, text)| {
            let mut body = serde_json::Map::new();
            for (key, value) in [
                ("consumer", consumer),
                ("vector", vector),
                ("k", k),
                ("plan", plan),
                ("text", text),
            ] {
                if let Some(v) = value {
                    body.insert(key.to_owned(), v);
                }
            }
            serde_json::to_vec(&Value::Object(body)).unwrap()
        });
    prop_oneof![
        4 => structured,
        1 => json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        1 => prop::collection::vec(any::<u8>(), 0..256),
    ]
}

/// An embeddings request in OpenAI's shape (`openai`) or TEI's: the known fields with good or
/// any values, sometimes a stray field, or any JSON, or any bytes.
fn embed_body(openai: bool) -> impl Strategy<Value = Vec<u8>> {
    let texts = prop_oneof![
        ".{0,40}".prop_map(Value::String),
        prop::collection::vec(".{0,40}".prop_map(Value::String), 0..40).prop_map(Value::Array),
        json_value(),
    ];
    let model = prop_oneof![
        prop::sample::select(vec![
            MODELS[0], MODELS[1], MODELS[2], "search", "nobody", "", "x@0"
        ])
        .prop_map(|m| json!(m)),
        json_value()
    ];
    let choice = |good: Vec<&'static str>| {
        prop_oneof![
            prop::sample::select(good).prop_map(|g| json!(g)),
            json_value()
        ]
    };
    let structured = (
        prop::option::of(texts),
        prop::option::of(model),
        prop::option::of(choice(vec!["float", "base64", "query", "document"])),
        prop::option::of(prop_oneof![
            any::<bool>().prop_map(Value::Bool),
            json_value()
        ]),
        prop::option::of(choice(vec!["query", "passage", "Right", "Left"])),
        prop::option::of((".{1,8}", json_value())),
    )
        .prop_map(move |(texts, model, format, flag, name, stray)| {
            let keys: [&str; 5] = if openai {
                [
                    "input",
                    "model",
                    "encoding_format",
                    "dimensions",
                    "input_type",
                ]
            } else {
                [
                    "inputs",
                    "model",
                    "prompt_name",
                    "truncate",
                    "truncation_direction",
                ]
            };
            let mut body = serde_json::Map::new();
            for (key, value) in keys.into_iter().zip([texts, model, format, flag, name]) {
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
        4 => structured,
        1 => json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        1 => prop::collection::vec(any::<u8>(), 0..256),
    ]
}

/// Posts `body` to `path` on the router: status and body bytes.
fn post(path: &str, body: Vec<u8>) -> (StatusCode, Vec<u8>) {
    RUNTIME.block_on(async {
        let request = Request::post(path)
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap();
        let response = APP.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, bytes.to_vec())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(128)
    ))]

    #[test]
    fn any_search_request_gets_an_answer_or_an_error_that_says_why(body in search_body()) {
        let (status, answer) = post("/v1/search", body);
        prop_assert!(
            status.is_success()
                || status.is_client_error()
                || status == StatusCode::BAD_GATEWAY
                || status == StatusCode::SERVICE_UNAVAILABLE,
            "status {status}: {}",
            String::from_utf8_lossy(&answer)
        );
        if !status.is_success() {
            let v: Value = serde_json::from_slice(&answer).map_err(|e| {
                TestCaseError::fail(format!("{status} without a JSON body ({e}): {}", String::from_utf8_lossy(&answer)))
            })?;
            prop_assert!(v["error"].is_string(), "{status}: {v}");
        }
    }

    #[test]
    fn any_embeddings_request_gets_an_error_in_its_apis_shape(
        (openai, body) in any::<bool>().prop_flat_map(|o| (Just(o), embed_body(o))),
    ) {
        // The sinks are down, so no request succeeds: each is refused or unavailable.
        let path = if openai { "/v1/embeddings" } else { "/embed" };
        let (status, answer) = post(path, body);
        prop_assert!(
            status.is_client_error() || status == StatusCode::SERVICE_UNAVAILABLE,
            "status {status}: {}",
            String::from_utf8_lossy(&answer)
        );
        let v: Value = serde_json::from_slice(&answer).map_err(|e| {
            TestCaseError::fail(format!("{status} without a JSON body ({e}): {}", String::from_utf8_lossy(&answer)))
        })?;
        if openai {
            prop_assert!(v["error"]["message"].is_string(), "{status}: {v}");
            prop_assert!(v["error"]["type"].is_string(), "{status}: {v}");
            prop_assert!(v["error"]["code"].is_string(), "{status}: {v}");
        } else {
            prop_assert!(v["error"].is_string(), "{status}: {v}");
            prop_assert!(v["error_type"].is_string(), "{status}: {v}");
        }
    }
}
