//! The router's query log against the real broker and registry: `up`'s router writes each
//! answered text query to the `queries` topic (Avro through the registry) and leaves out what
//! opted out — a consumer with `log_queries = false`, a request with `"log_query": false`, a
//! request that brings its own plan (evaluation traffic), a query by vector. `adapter train
//! --query-log` then trains on a sample of one consumer's distinct logged queries, embedded
//! by both models.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use embedstream_schemas::Codec;
use embedstream_schemas::records::LoggedQuery;
use serde_json::{Value, json};

use crate::common::{Up, up_dir};
use crate::migrate::ok;
use crate::stage::{MINILM, Platform};

const TINY: &str = "tiny-bert@1";

async fn search(client: &reqwest::Client, url: &str, body: Value, request_id: Option<&str>) -> u16 {
    let mut call = client.post(url).json(&body);
    if let Some(id) = request_id {
        call = call.header("x-request-id", id);
    }
    call.send().await.map_or(0, |r| r.status().as_u16())
}

async fn logged(p: &Platform) -> Vec<LoggedQuery> {
    let codec = Codec::new(&p.registry);
    let mut out = Vec::new();
    for (key, value, _, _) in p.read_all(&p.names.queries()) {
        let query: LoggedQuery = codec.decode(&value.unwrap()).await.unwrap();
        assert_eq!(key.as_deref(), Some(query.consumer.as_bytes()));
        out.push(query);
    }
    out
}

fn train(p: &Platform, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_embedstream"))
        .args(["adapter", "train", "--from", MINILM, "--to", TINY])
        .args(p.args())
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_router_logs_text_queries_unless_opted_out_and_adapter_train_learns_from_them() {
    let p = Platform::new("query-log");
    p.ensure_topics().await;
    let dir = up_dir(&p);
    std::fs::create_dir_all(&dir).unwrap();
    let consumers = dir.join("consumers.toml");
    std::fs::write(
        &consumers,
        "[consumers.search]\nef_search = 100\ndefault_k = 10\nmax_k = 100\n\n\
         [consumers.ads]\nef_search = 64\ndefault_k = 5\nmax_k = 50\nlog_queries = false\n",
    )
    .unwrap();
    let up = Up::start(
        &p,
        &[
            "--drift-interval-secs",
            "0",
            "--consumers-file",
            consumers.to_str().unwrap(),
        ],
    );
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{}/v1/search", up.query);

    // Waiting for the version's sink, with queries that ask not to be logged.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let body = json!({"consumer": "search", "text": "waiting", "log_query": false});
        if search(&client, &url, body, None).await == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the router never answered:\n{}",
            up.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Not logged: an opted-out consumer, an opted-out request, a request with its own plan,
    // a query by vector.
    let mut unit = vec![0.0_f32; 384];
    unit[0] = 1.0;
    for body in [
        json!({"consumer": "ads", "text": "an ads query"}),
        json!({"consumer": "search", "text": "a private query", "log_query": false}),
        json!({"consumer": "search", "text": "a golden query",
               "plan": [{"model": MINILM, "weight": 1.0}]}),
        json!({"consumer": "search", "vector": unit}),
    ] {
        assert_eq!(
            search(&client, &url, body.clone(), None).await,
            200,
            "{body}"
        );
    }
    // Logged: the search consumer's text queries, one of them twice, one with a request id.
    let texts: Vec<String> = (0..12)
        .map(|i| format!("query {i}: tools for data compression"))
        .collect();
    for t in &texts {
        let body = json!({"consumer": "search", "text": t, "k": 3});
        assert_eq!(search(&client, &url, body, None).await, 200);
    }
    let again = json!({"consumer": "search", "text": texts[0], "k": 3, "log_query": true});
    assert_eq!(search(&client, &url, again, Some("req-7")).await, 200);

    let deadline = Instant::now() + Duration::from_secs(60);
    let records = loop {
        let records = logged(&p).await;
        if records.len() >= 13 {
            break records;
        }
        assert!(
            Instant::now() < deadline,
            "{} of 13 queries logged in 60 s:\n{}",
            records.len(),
            up.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // Everything that opted out was sent first, on one queue and one partition: it would be
    // here by now.
    let got: Vec<&str> = records.iter().map(|q| q.text.as_str()).collect();
    let mut want: Vec<&str> = texts.iter().map(String::as_str).collect();
    want.push(&texts[0]);
    assert_eq!(got, want);
    for q in &records {
        assert_eq!(q.consumer, "search");
        assert_eq!(q.models, vec![MINILM.to_owned()]);
        assert_eq!(q.k, 3);
        assert!(!q.filtered);
        assert!(q.query_time > 0);
    }
    assert_eq!(records[12].request_id.as_deref(), Some("req-7"));
    // Without one, the router's own id (returned in the answer), one per request.
    let made: std::collections::HashSet<&str> = records[..12]
        .iter()
        .map(|q| q.request_id.as_deref().unwrap())
        .collect();
    assert_eq!(made.len(), 12);
    assert!(made.iter().all(|id| id.len() == 32), "{made:?}");
    // The writer counts a query once the broker acknowledged it, which may come just after
    // the record is readable.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = reqwest::get(format!("http://127.0.0.1:{}/metrics", up.metrics))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metrics.contains("embedstream_router_query_log_queued_total{consumer=\"search\"} 13")
            && metrics.contains("embedstream_query_log_written_total 13")
        {
            assert!(
                !metrics.contains("embedstream_router_query_log_dropped_total"),
                "{metrics}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // A new model to train an adapter for: the tiny BERT (32 dimensions, so a few dozen pairs
    // determine the map).
    let folder =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny/bert-mean");
    ok(&Command::new(env!("CARGO_BIN_EXE_embedstream"))
        .args(["models", "add", TINY, "--from", folder.to_str().unwrap()])
        .args(p.args())
        .output()
        .unwrap());
    let items = dir.join("items.jsonl");
    let lines: Vec<String> = (0..30)
        .map(|i| {
            json!({"id": format!("item-{i}"), "text": format!("package {i} of the archive")})
                .to_string()
        })
        .collect();
    std::fs::write(&items, lines.join("\n")).unwrap();
    let adapters = dir.join("adapters");
    let common = [
        "--items",
        items.to_str().unwrap(),
        "--pairs",
        "30",
        "--holdout",
        "0",
        "--adapters-dir",
        adapters.to_str().unwrap(),
    ];

    // The opted-out consumer has nothing in the log: a clear refusal, nothing written.
    let out = train(
        &p,
        &[&common[..], &["--query-log", "--query-consumer", "ads"]].concat(),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("has no text queries of consumer \"ads\""),
        "{err}"
    );
    assert!(!adapters.exists() || std::fs::read_dir(&adapters).unwrap().next().is_none());

    // The search consumer's 12 distinct queries join the 30 items as pairs.
    let out = train(
        &p,
        &[
            &common[..],
            &["--query-log", "--query-consumer", "search", "--json"],
        ]
        .concat(),
    );
    let meta: Value = serde_json::from_str(ok(&out).trim()).unwrap();
    assert_eq!(meta["pairs"], 42, "{meta}");
    let source = meta["source"].as_str().unwrap();
    assert!(
        source.contains(&format!(
            "12 queries of {} (consumer search)",
            p.names.queries()
        )),
        "{source}"
    );
    assert!(meta["train_cosine"].as_f64().unwrap() > 0.0, "{meta}");
}
