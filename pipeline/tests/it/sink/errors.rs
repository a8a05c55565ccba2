//! Every refused query gets 400 with a JSON message and a fixed kind; the sink keeps serving.

use serde_json::json;

use super::{Oracle, Put, Sink, config, produce, record, test_dir, unit_vector};
use crate::stage::Platform;

#[tokio::test(flavor = "multi_thread")]
async fn bad_queries_get_400_with_a_message() {
    let platform = Platform::new("sink-errors");
    platform.ensure_topics().await;
    let dir = test_dir(&platform);
    let mut oracle = Oracle::default();
    produce(
        &platform,
        &mut oracle,
        (0..20)
            .map(|i| Put::Record(record(&format!("item-{i}"), unit_vector(i))))
            .collect(),
    )
    .await;
    let sink = Sink::start(&platform, &dir, &config(1000, 0.08), "sink").await;
    sink.wait_caught_up(&platform, std::time::Duration::from_secs(30))
        .await;
    let v = unit_vector(1);
    let mut huge: Vec<f64> = v.iter().map(|&x| f64::from(x)).collect();
    huge[0] = 1e39; // finite in JSON, infinite as f32
    let cases: Vec<(&str, String)> = vec![
        (
            "unknown_consumer",
            json!({"consumer": "nobody", "vector": v}).to_string(),
        ),
        (
            "vector_and_text",
            json!({"consumer": "search", "vector": v, "text": "bash"}).to_string(),
        ),
        ("no_query", json!({"consumer": "search"}).to_string()),
        (
            "k_out_of_range",
            json!({"consumer": "search", "vector": v, "k": 0}).to_string(),
        ),
        (
            "k_out_of_range",
            json!({"consumer": "search", "vector": v, "k": 101}).to_string(),
        ),
        (
            "dimension_mismatch",
            json!({"consumer": "search", "vector": [0.1, 0.2, 0.3]}).to_string(),
        ),
        (
            "non_finite",
            json!({"consumer": "search", "vector": huge}).to_string(),
        ),
        (
            "invalid_json",
            format!(
                r#"{{"consumer": "search", "vector": [NaN{}]}}"#,
                ", 0.1".repeat(383)
            ),
        ),
        (
            "zero_vector",
            json!({"consumer": "search", "vector": vec![0.0; 384]}).to_string(),
        ),
        (
            "empty_text",
            json!({"consumer": "search", "text": "  "}).to_string(),
        ),
        ("invalid_json", "{\"consumer\": \"search\", ".to_owned()),
        (
            "invalid_json",
            json!({"consumer": "search", "vector": v, "limit": 3}).to_string(),
        ),
        (
            "invalid_json",
            json!({"consumer": "search", "vector": "not numbers"}).to_string(),
        ),
    ];
    for (kind, body) in cases {
        let (status, answer) = sink.search_raw(body.clone()).await;
        let short: String = body.chars().take(80).collect();
        assert_eq!(status, 400, "{short}: {answer}");
        assert_eq!(answer["kind"], kind, "{short}: {answer}");
        let message = answer["error"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "{short}: no message in {answer}");
    }
    // Still serving, and an unknown item is a 404.
    let top = sink.top_k("search", &unit_vector(3), 1).await;
    assert_eq!(top[0].0, "item-3");
    assert_eq!(sink.item("no-such-item").await, None);
}
