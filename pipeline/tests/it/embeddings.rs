//! The embeddings APIs of `embedstream up`'s router, over HTTP: OpenAI's `POST /v1/embeddings`
//! and TEI's `POST /embed`, each answered by the version's sink with the same engine as the
//! stage. Vectors are checked against the engine itself, token counts against the model's
//! tokenizer, and every refusal for its status and kind.

use std::time::{Duration, Instant};

use base64::Engine as _;
use embedstream_pipeline::embed::tokenize::TextTokenizer;
use serde_json::{Value, json};

use crate::common::{Up, model_dir};
use crate::stage::{MINILM, Platform};

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b))
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// Status and body; status 0 when nothing answered (the platform still starting).
async fn post(client: &reqwest::Client, url: &str, body: Value) -> (u16, Value) {
    let Ok(r) = client.post(url).json(&body).send().await else {
        return (0, Value::Null);
    };
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn both_embeddings_apis_answer_with_the_versions_own_vectors() {
    let platform = Platform::new("embeddings-api");
    platform.ensure_topics().await;
    let up = Up::start(&platform, &["--drift-interval-secs", "0"]);
    let (query, metrics) = (up.query, up.metrics);
    let client = reqwest::Client::new();
    let openai = format!("http://127.0.0.1:{query}/v1/embeddings");
    let tei = format!("http://127.0.0.1:{query}/embed");
    let texts = [
        "GNU Bourne Again SHell",
        "lossless data compression with the LZMA algorithm",
        "an image editor for photos and drawings",
    ];

    // The version's sink appears once the stage has registered the model, and consumers read
    // it once the router has seen it become active in the control log (its sink can announce
    // itself first: until then, a consumer's name is a 503 `no_plan`).
    let deadline = Instant::now() + Duration::from_secs(120);
    let first = loop {
        let (status, body) = post(&client, &openai, json!({"input": texts, "model": MINILM})).await;
        let by_consumer = json!({"input": "x", "model": "search"});
        if status == 200 && post(&client, &openai, by_consumer).await.0 == 200 {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "no embeddings from the router in 120 s (last: {status} {body}); its log:\n{}",
            up.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    // OpenAI's shape, the engine's vectors, the tokenizer's counts.
    let engine = crate::stage::engine();
    let expected = engine
        .embed(texts.iter().map(|t| (*t).to_owned()).collect())
        .await
        .unwrap();
    assert_eq!(first["object"], "list", "{first}");
    assert_eq!(first["model"], MINILM, "{first}");
    let data = first["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    for (i, d) in data.iter().enumerate() {
        assert_eq!(d["object"], "embedding");
        assert_eq!(d["index"], i);
        let v = floats(&d["embedding"]);
        assert_eq!(v.len(), 384);
        assert!(
            cosine(&v, &expected[i]) > 0.99999,
            "text {i} differs from the engine's vector"
        );
    }
    let (spec, folder) = model_dir(MINILM);
    let tokenizer = TextTokenizer::load(&folder, spec.max_seq_length as usize).unwrap();
    let tokens: usize = texts
        .iter()
        .map(|t| tokenizer.encode(t).unwrap().ids.len())
        .sum();
    assert_eq!(first["usage"]["prompt_tokens"], tokens, "{first}");
    assert_eq!(first["usage"]["total_tokens"], tokens, "{first}");

    // base64: the same floats, little-endian.
    let (status, b64) = post(
        &client,
        &openai,
        json!({"input": texts[0], "model": MINILM, "encoding_format": "base64", "user": "u1"}),
    )
    .await;
    assert_eq!(status, 200, "{b64}");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let decoded: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(decoded, floats(&data[0]["embedding"]));

    // A consumer's name means the version serving it; no model, the default version.
    let (status, by_consumer) = post(
        &client,
        &openai,
        json!({"input": texts[1], "model": "search", "input_type": "query"}),
    )
    .await;
    assert_eq!(status, 200, "{by_consumer}");
    assert_eq!(by_consumer["model"], MINILM);
    assert!(
        cosine(&floats(&by_consumer["data"][0]["embedding"]), &expected[1]) > 0.99999,
        "a model without prompts embeds queries as they are"
    );

    // TEI's shape: a bare array; normalize false keeps the direction, not the length.
    let (status, tei_body) = post(&client, &tei, json!({"inputs": texts[2]})).await;
    assert_eq!(status, 200, "{tei_body}");
    let unit = floats(&tei_body[0]);
    assert!(cosine(&unit, &expected[2]) > 0.99999);
    let (status, raw) = post(
        &client,
        &tei,
        json!({"inputs": [texts[2]], "normalize": false, "model": MINILM}),
    )
    .await;
    assert_eq!(status, 200, "{raw}");
    let raw = floats(&raw[0]);
    let norm = raw.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!(
        (norm - 1.0).abs() > 0.01,
        "an unnormalized mean has its own length: {norm}"
    );
    assert!(cosine(&raw, &unit) > 0.99999);

    // Truncation: TEI refuses by default (413), cuts when asked; OpenAI refuses.
    let long = "packaging ".repeat(400);
    let (status, body) = post(&client, &tei, json!({"inputs": long})).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["kind"], "input_too_long", "{body}");
    assert_eq!(body["error_type"], "Validation", "{body}");
    let (status, body) = post(&client, &tei, json!({"inputs": long, "truncate": true})).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = post(&client, &openai, json!({"input": [long], "model": MINILM})).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "input_too_long", "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");

    // Refusals, each with its status and kind.
    let cases = [
        (
            json!({"input": "x", "model": "nope@1"}),
            404,
            "model_not_found",
        ),
        (json!({"input": [], "model": MINILM}), 400, "no_inputs"),
        (
            json!({"input": ["ok", " "], "model": MINILM}),
            400,
            "empty_text",
        ),
        (
            json!({"input": [[1, 2, 3]], "model": MINILM}),
            400,
            "invalid_input",
        ),
        (
            json!({"input": "x", "encoding_format": "hex"}),
            400,
            "invalid_encoding_format",
        ),
        (
            json!({"input": "x", "dimensions": 128}),
            400,
            "invalid_dimensions",
        ),
        (
            json!({"input": "x", "input_type": "title"}),
            400,
            "invalid_input_type",
        ),
        (json!({"input": "x", "temperature": 1}), 400, "invalid_json"),
        (
            json!({"input": vec!["word"; 257], "model": MINILM}),
            413,
            "too_many_inputs",
        ),
        (
            json!({"input": "y".repeat(70_000), "model": MINILM}),
            413,
            "text_too_long",
        ),
    ];
    for (request, want_status, want_code) in cases {
        let (status, body) = post(&client, &openai, request.clone()).await;
        assert_eq!(status, want_status, "{request}: {body}");
        assert_eq!(body["error"]["code"], want_code, "{request}: {body}");
        assert!(
            !body["error"]["message"].as_str().unwrap().is_empty(),
            "{body}"
        );
    }
    let (status, body) = post(
        &client,
        &tei,
        json!({"inputs": "x", "prompt_name": "query"}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["kind"], "unknown_prompt", "{body}");

    // Per-request latency, by API and version.
    let text = client
        .get(format!("http://127.0.0.1:{metrics}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for series in [
        "embedstream_router_embed_seconds_count{api=\"openai\",model_version=\"minilm-l6-v2@1\"}",
        "embedstream_router_embed_seconds_count{api=\"tei\",model_version=\"minilm-l6-v2@1\"}",
        "embedstream_sink_embed_seconds_count{model_version=\"minilm-l6-v2@1\"}",
    ] {
        assert!(text.contains(series), "no {series} in /metrics");
    }
}
