//! The Drift-Adapter served end to end against the real broker: an adapter trained with
//! `embedstream adapter train` on 800 canary items, a consumer's read plan set to "new model
//! via adapter" with `migrate weight --adapter`, and MPNet text queries answered by the MiniLM
//! index through the router and the sink, with recall checked on a fixed sample. Adapters that
//! cannot serve are refused before anything is deployed.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use embedstream_adapter::{Adapter, AdapterMeta, Layers, Matrix};
use embedstream_pipeline::embed::burn_model::Device;
use embedstream_pipeline::embed::engine::EngineConfig;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::common::free_port;
use crate::migrate::{Killed, MPNET, activate_minilm, control, migrate_command, ok};
use crate::sink::{Oracle, Put, Sink, produce, record, test_dir};
use crate::stage::{MINILM, Platform};

fn canaries() -> Vec<(String, String)> {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/canaries/debian-1000.jsonl"
    ))
    .unwrap()
    .lines()
    .map(|l| {
        let v: Value = serde_json::from_str(l).unwrap();
        (
            v["id"].as_str().unwrap().to_owned(),
            v["text"].as_str().unwrap().to_owned(),
        )
    })
    .collect()
}

fn write_items(path: &Path, items: &[(String, String)]) {
    let lines: Vec<String> = items
        .iter()
        .map(|(id, text)| json!({"id": id, "text": text}).to_string())
        .collect();
    std::fs::write(path, lines.join("\n")).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn new_model_queries_are_answered_by_the_old_index_through_the_adapter() {
    let p = Platform::new("adapter");
    p.ensure_topics().await;
    activate_minilm(&p).await;
    let dir = test_dir(&p);
    let adapters = dir.join("adapters");
    let all = canaries();
    let (corpus, training) = all.split_at(200);

    // Train on 800 items embedded with both models (none of them is in the index).
    // Their first 12 words: the pairs only need to span the space, and MPNet on 800 short
    // texts keeps the test short.
    let short: Vec<(String, String)> = training
        .iter()
        .map(|(id, t)| {
            (
                id.clone(),
                t.split_whitespace().take(12).collect::<Vec<_>>().join(" "),
            )
        })
        .collect();
    let train_file = dir.join("train.jsonl");
    write_items(&train_file, &short);
    let out = Command::new(env!("CARGO_BIN_EXE_embedstream"))
        .args([
            "adapter",
            "train",
            "--from",
            MINILM,
            "--to",
            MPNET,
            "--kind",
            "procrustes",
        ])
        .args(["--pairs", "800", "--holdout", "0", "--items"])
        .arg(&train_file)
        .arg("--adapters-dir")
        .arg(&adapters)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let printed = ok(&out);
    let name = printed.split(':').next().unwrap().to_owned();
    assert_eq!(
        name,
        format!("{MPNET}_to_{MINILM}.procrustes.v1"),
        "{printed}"
    );

    // The old index: the 200 corpus items embedded with MiniLM.
    let (engine, _threads) = tokio::task::spawn_blocking(|| {
        embedstream_pipeline::embed::open(
            &embedstream_topics::catalog::lookup(&MINILM.parse().unwrap()).unwrap(),
            Device::Cpu,
            EngineConfig::default(),
        )
    })
    .await
    .unwrap()
    .unwrap();
    let vectors = engine
        .embed(corpus.iter().map(|(_, t)| t.clone()).collect())
        .await
        .unwrap();
    let mut oracle = Oracle::default();
    let puts = corpus
        .iter()
        .zip(vectors)
        .map(|((id, _), v)| Put::Record(record(id, v)))
        .collect();
    produce(&p, &mut oracle, puts).await;
    let adapters_arg = adapters.display().to_string();
    let sink = Sink::start_with(&p, &dir, "", "sink", &["--adapters-dir", &adapters_arg]).await;
    sink.wait_caught_up(&p, Duration::from_secs(60)).await;

    // Refused before anything is deployed: an adapter whose dimensions are not its models'.
    let bad = Adapter::new(
        AdapterMeta::new(
            &format!("{MPNET}_to_{MINILM}.affine.v1").parse().unwrap(),
            10,
            384,
            "test".into(),
        ),
        Layers::LowRank {
            u: Matrix::new(2, 10, vec![0.1; 20]),
            v: Matrix::new(384, 2, vec![0.1; 768]),
            b: vec![0.0; 384],
        },
    );
    bad.save(&adapters.join(format!("{}.safetensors", bad.meta.name)))
        .unwrap();
    ok(
        &migrate_command(&p, &["start", "--from", MINILM, "--to", MPNET])
            .output()
            .unwrap(),
    );
    let weight = |adapter: &str| {
        migrate_command(
            &p,
            &[
                "weight",
                "--consumer",
                "search",
                "--new",
                "0",
                "--adapter",
                adapter,
            ],
        )
        .env("EMBEDSTREAM_ADAPTERS", &adapters)
        .output()
        .unwrap()
    };
    let refused = weight(&bad.meta.name);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("cannot serve this index"),
        "{stderr}"
    );
    let refused = weight(&format!("{MINILM}_to_{MPNET}.procrustes.v1"));
    assert!(!refused.status.success());
    let token = CancellationToken::new();
    let plan = control(&p, &token).await.state().read_plan_for("search");
    assert!(
        plan.iter().all(|e| e.adapter.is_none()),
        "nothing deployed: {plan:?}"
    );

    // The sink answers an MPNet text query through the adapter (loading MPNet for it).
    let (status, body) = sink
        .search(json!({"consumer": "search", "text": corpus[0].1, "adapter": name}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["adapter"], name.as_str());
    assert_eq!(
        body["results"][0]["item_id"],
        corpus[0].0.as_str(),
        "{body}"
    );

    // Deployed: search reads MiniLM's index with MPNet queries through the adapter.
    ok(&weight(&name));
    let router_port = free_port();
    let _router = Killed(
        Command::new(env!("CARGO_BIN_EXE_embedstream"))
            .arg("router")
            .args(p.args())
            .args(["--listen", &format!("127.0.0.1:{router_port}")])
            .args(["--backend", &format!("{MINILM}={}", sink.url(""))])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let client = reqwest::Client::new();
    let router = format!("http://127.0.0.1:{router_port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client.get(format!("{router}/v1/plans")).send().await
            && let Ok(v) = r.json::<Value>().await
            && v.to_string().contains(&name)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the router never showed the adapter plan"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut found = 0;
    for (id, text) in corpus {
        let r: Value = client
            .post(format!("{router}/v1/search"))
            .json(&json!({"consumer": "search", "text": text, "k": 10}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let hits = r["results"].as_array().unwrap_or_else(|| panic!("{r}"));
        assert!(hits.iter().all(|h| h["model_version"] == MINILM), "{r}");
        found += usize::from(hits.iter().any(|h| h["item_id"] == id.as_str()));
    }
    let recall = found as f64 / corpus.len() as f64;
    assert!(recall >= 0.95, "recall@10 through the adapter: {recall}");

    // The sink's own checks of adapter queries.
    let (status, body) = sink
        .search(json!({"consumer": "search", "vector": vec![0.1; 384], "adapter": name}))
        .await;
    assert_eq!(
        (status, body["kind"].as_str()),
        (400, Some("dimension_mismatch")),
        "{body}"
    );
    let (status, body) = sink
        .search(json!({"consumer": "search", "text": "x", "adapter": "nope@1_to_minilm-l6-v2@1.mlp.v1"}))
        .await;
    assert_eq!(
        (status, body["kind"].as_str()),
        (400, Some("unknown_adapter")),
        "{body}"
    );
    token.cancel();
    eprintln!("recall@10 through the adapter: {recall}");
}
