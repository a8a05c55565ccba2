//! The serving engine with the real MiniLM: concurrent requests of mixed lengths come back
//! complete, in order, and equal to embedding each text alone.

use embedstream_pipeline::embed::burn_model::Device;
use embedstream_pipeline::embed::engine::EngineConfig;
use embedstream_pipeline::embed::open;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_come_back_in_order() {
    let (spec, _) = model_dir("minilm-l6-v2@1");
    let reference = reference(&spec);
    let config = EngineConfig {
        max_batch_tokens: 512,
        max_batch_size: 5,
        // Two replicas take batches from one queue: order and values must not depend on which.
        replicas: 2,
        ..EngineConfig::default()
    };
    let (engine, threads) = open(&spec, Device::Cpu, config).unwrap();
    let texts: Vec<String> = reference.texts.iter().map(|t| t.text.clone()).collect();

    // Eight requests at once, each a rotation of the fixture texts.
    let mut tasks = Vec::new();
    for r in 0..8 {
        let engine = engine.clone();
        let mut mine = texts.clone();
        mine.rotate_left(r);
        tasks.push(tokio::spawn(async move { (r, engine.embed(mine).await) }));
    }
    for task in tasks {
        let (r, vectors) = task.await.unwrap();
        let vectors = vectors.unwrap();
        assert_eq!(vectors.len(), texts.len());
        for (i, v) in vectors.iter().enumerate() {
            let t = &reference.texts[(i + r) % texts.len()];
            let dot: f32 = v.iter().zip(&t.vector).map(|(a, b)| a * b).sum();
            assert!(
                dot > 0.9999,
                "request {r} text {i} ({}): cosine {dot}",
                t.name
            );
        }
    }
    assert!(engine.embed(Vec::new()).await.unwrap().is_empty());
    let times = engine.times();
    assert_eq!(times.texts, 8 * texts.len() as u64);
    assert!(times.batches >= times.texts / 5);
    // The CPU backend packs each batch's texts: it computes no padding.
    assert_eq!(times.padded_tokens, times.tokens);
    drop(engine);
    threads.join();
}

/// Texts are documents unless said otherwise: each kind gets the model's prompt for it (a
/// model with E5's prompts here), `AsIs` none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_of_input_gets_the_models_prompt_for_it() {
    use embedstream_pipeline::embed::engine::{EmbedOptions, InputKind};
    use embedstream_pipeline::models::config::Prompts;

    let (spec, _) = model_dir("minilm-l6-v2@1");
    let (engine, _threads) = open(&spec, Device::Cpu, EngineConfig::default()).unwrap();
    let engine = engine.with_prompts(Prompts {
        prompts: [("query", "query: "), ("passage", "passage: ")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        default_prompt_name: None,
    });
    let text = "a terminal multiplexer";
    let embed = |input, text: &str| {
        let engine = engine.clone();
        let texts = vec![text.to_owned()];
        async move {
            let options = EmbedOptions {
                input,
                ..EmbedOptions::default()
            };
            let done = engine.embed_with(texts, options).await.unwrap();
            (done.vectors[0].clone(), done.tokens[0])
        }
    };
    let (query, query_tokens) = embed(InputKind::Query, text).await;
    let (document, _) = embed(InputKind::Document, text).await;
    let (bare, bare_tokens) = embed(InputKind::AsIs, text).await;
    assert_eq!(
        query,
        embed(InputKind::AsIs, "query: a terminal multiplexer")
            .await
            .0
    );
    assert_eq!(
        document,
        embed(InputKind::AsIs, "passage: a terminal multiplexer")
            .await
            .0
    );
    assert_eq!(
        document,
        engine.embed(vec![text.to_owned()]).await.unwrap()[0],
        "documents by default"
    );
    assert_ne!(query, bare);
    assert_ne!(query, document);
    assert!(
        query_tokens > bare_tokens,
        "the prompt's tokens are counted"
    );
}
