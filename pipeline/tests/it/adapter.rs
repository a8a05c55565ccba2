//! The Drift-Adapter served end to end against the real broker: an adapter trained with
//! `embedstream adapter train` on 800 canary items, gated with `migrate gate --adapter` on a
//! golden set through the router, a consumer's read plan set to fused reads with `migrate
//! weight --adapter --fuse`, and text queries answered by the MiniLM index through the router
//! and the sink, with recall checked on a fixed sample. Adapters that cannot serve are refused
//! before anything is deployed; a damaged one is refused by its gate (and `--force` recorded).

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
    let weight = |adapter: &str, extra: &[&str]| {
        migrate_command(
            &p,
            &[
                &[
                    "weight",
                    "--consumer",
                    "search",
                    "--new",
                    "0",
                    "--adapter",
                    adapter,
                ],
                extra,
            ]
            .concat(),
        )
        .env("EMBEDSTREAM_ADAPTERS", &adapters)
        .output()
        .unwrap()
    };
    let refused = weight(&bad.meta.name, &[]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("cannot serve this index"),
        "{stderr}"
    );
    let refused = weight(&format!("{MINILM}_to_{MPNET}.procrustes.v1"), &[]);
    assert!(!refused.status.success());
    let token = CancellationToken::new();
    let log = control(&p, &token).await;
    let plan = log.state().read_plan_for("search");
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

    // The adapter gate: reads through an adapter are refused until a gate run on the
    // consumer's golden set found them not worse than the old model's own queries.
    let golden = dir.join("golden").join("golden.json");
    write_golden(&golden, corpus);
    let refused = weight(&name, &[]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("no adapter gate result"),
        "{stderr}"
    );
    let gate = |adapter: &str, extra: &[&str]| {
        let golden = golden.display().to_string();
        let args = [
            &[
                "gate",
                "--consumer",
                "search",
                "--golden",
                &golden,
                "--router",
                &router,
                "--adapter",
                adapter,
            ],
            extra,
        ]
        .concat();
        let out = migrate_command(&p, &args).output().unwrap();
        ok(&out);
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // A damaged adapter (a map unrelated to the two spaces): its reads are worse, refused,
    // and only a recorded --force deploys it.
    let damaged = damaged_adapter(&adapters);
    let printed = gate(&damaged, &[]);
    assert!(printed.contains("gate search: recall@10 FAIL"), "{printed}");
    let refused = weight(&damaged, &[]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("below 0"),
        "{stderr}"
    );
    ok(&weight(&damaged, &["--force"]));
    wait_for(&log, |s| {
        s.plan("search")
            .is_some_and(|p| p.forced && p.entries[0].adapter.as_deref() == Some(&damaged))
    })
    .await;
    // The trained adapter, fused with the old model's query: measured, passed, deployed.
    let printed = gate(&name, &["--fuse"]);
    assert!(printed.contains("gate search: recall@10 PASS"), "{printed}");
    let g = log
        .state()
        .adapter_gate(
            &log.state().migrations().next().unwrap().migration_id,
            "search",
        )
        .cloned()
        .unwrap();
    assert_eq!(
        (g.adapter.as_deref(), g.fuse),
        (Some(name.as_str()), Some(0.5))
    );
    eprintln!(
        "adapter gate, fused: {} {:.3} vs old/old {:.3}, CI [{:+.3}, {:+.3}]",
        g.metric, g.new_value, g.old_value, g.ci_low, g.ci_high
    );
    // Its gate does not cover the adapter alone.
    assert!(!weight(&name, &[]).status.success());
    ok(&weight(&name, &["--fuse"]));
    wait_for(&log, |s| {
        s.plan("search").is_some_and(|p| {
            !p.forced
                && p.entries[0].adapter.as_deref() == Some(&name)
                && p.entries[0].fuse == Some(0.5)
        })
    })
    .await;

    // The status page's data shows the adapter gate with its measured values.
    let status: Value = client
        .get(format!("{router}/v1/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let gates = status["migration"]["gates"].as_array().unwrap();
    assert!(
        gates.iter().any(|shown| shown["adapter"] == name.as_str()
            && shown["fuse"] == 0.5
            && shown["passed"] == true
            && shown["new_value"].as_f64() == Some(g.new_value)),
        "{status}"
    );

    // Deployed: search reads MiniLM's index with fused queries.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client.get(format!("{router}/v1/plans")).send().await
            && let Ok(v) = r.json::<Value>().await
            && v["search"][0]["adapter"] == name.as_str()
            && v["search"][0]["fuse"] == 0.5
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the router never showed the fused adapter plan"
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

    // The sink's own checks of adapter queries: each a 400 of its kind.
    let vector = |dim: usize| json!(vec![0.1; dim]);
    for (request, kind) in [
        (
            json!({"vector": vector(384), "adapter": name}),
            "dimension_mismatch",
        ),
        (
            json!({"text": "x", "adapter": "nope@1_to_minilm-l6-v2@1.mlp.v1"}),
            "unknown_adapter",
        ),
        (
            json!({"vector": vector(768), "adapter": name, "fuse": 0.5}),
            "fuse_needs_own_vector",
        ),
        (json!({"text": "x", "fuse": 0.5}), "fuse_needs_adapter"),
        (
            json!({"text": "x", "adapter": name, "fuse": 1.5}),
            "invalid_fuse",
        ),
    ] {
        let mut request = request;
        request["consumer"] = json!("search");
        let (status, body) = sink.search(request).await;
        assert_eq!((status, body["kind"].as_str()), (400, Some(kind)), "{body}");
    }
    token.cancel();
    eprintln!("recall@10 through the fused adapter reads: {recall}");
}

/// A golden set for `search`: each item's first eight words find that item.
fn write_golden(path: &Path, corpus: &[(String, String)]) {
    let queries: Vec<Value> = corpus
        .iter()
        .map(|(id, text)| {
            let words: Vec<&str> = text.split_whitespace().take(8).collect();
            json!({"id": format!("q-{id}"), "text": words.join(" "), "relevant": [id], "exclude": []})
        })
        .collect();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let golden = json!({"search": {"metric": "recall@10", "k": 10, "queries": queries}});
    std::fs::write(path, golden.to_string()).unwrap();
}

/// An adapter of the right models and dimensions whose map has nothing to do with the two
/// spaces (a fixed pseudo-random low-rank map): what a bad push looks like.
fn damaged_adapter(dir: &Path) -> String {
    let name = format!("{MPNET}_to_{MINILM}.affine.v2");
    let mut state = 7u64;
    let mut next = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
    };
    let rank = 32;
    let adapter = Adapter::new(
        AdapterMeta::new(&name.parse().unwrap(), 768, 384, "test".into()),
        Layers::LowRank {
            u: Matrix::new(rank, 768, (0..rank * 768).map(|_| next()).collect()),
            v: Matrix::new(384, rank, (0..384 * rank).map(|_| next()).collect()),
            b: vec![0.0; 384],
        },
    );
    adapter
        .save(&dir.join(format!("{name}.safetensors")))
        .unwrap();
    name
}

/// Waits until the control log's state satisfies `done`.
async fn wait_for(
    log: &embedstream_pipeline::control::ControlLog,
    done: impl Fn(&embedstream_schemas::control::ControlState) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done(&log.state()) {
        assert!(Instant::now() < deadline, "the control log never showed it");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
