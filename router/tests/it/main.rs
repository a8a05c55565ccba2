//! The router against real sinks: a sink process's service (`embedstream_index_sink::service`)
//! consuming its embedding topic on the test broker, through the test registry, and a
//! version whose sink is not there. A version that fails is left out and named; when every
//! version fails the query fails with 503; a sink's 400 is the client's error.

mod canary;
mod properties;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use embedstream_index_sink::service::{self, Settings, SinkConfig};
use embedstream_router::{Backends, Blend, RouterConfig, StatusFeed};
use embedstream_schemas::Codec;
use embedstream_schemas::access::ApiKeys;
use embedstream_schemas::consumers::{self, Consumers, default_consumers};
use embedstream_schemas::control::ControlState;
use embedstream_schemas::records::{EmbeddingRecord, SourceCoordinates};
use embedstream_schemas::serve::Tls;
use embedstream_topics::ModelRef;
use embedstream_topics::admin::{Admin, TopicSpec};
use embedstream_topics::names::TopicNames;
use embedstream_topics::testing::{self, DeleteTopicsOnDrop};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const MINILM: &str = "minilm-l6-v2@1";
const MPNET: &str = "mpnet-base-v2@1";
const DIM: usize = 384;
const ITEMS: usize = 20;

fn registry() -> String {
    std::env::var("SCHEMA_REGISTRY_URL")
        .expect("SCHEMA_REGISTRY_URL is not set: run the tests with `compose/dev test`")
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// Item `i`'s vector: one-hot on dimension `i`, so each item is its own best match.
fn vector(i: usize) -> Vec<f32> {
    let mut v = vec![0.0; DIM];
    v[i] = 1.0;
    v
}

/// A sink of MiniLM serving `ITEMS` items from its own topic, and what to drop at the end.
struct Sink {
    url: String,
    _topics: DeleteTopicsOnDrop,
    _data: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn sink(shutdown: &CancellationToken) -> Sink {
    sink_with_keys(shutdown, None).await
}

async fn sink_with_keys(shutdown: &CancellationToken, api_keys: Option<Arc<ApiKeys>>) -> Sink {
    sink_with(shutdown, api_keys, None, None).await
}

/// A self-signed certificate for 127.0.0.1 and localhost, made with `openssl`, and a client
/// that trusts it.
struct TestTls {
    tls: Tls,
    pem: Vec<u8>,
    client: reqwest::Client,
    _dir: TempDir,
}

fn test_tls() -> TestTls {
    let dir = TempDir(std::env::temp_dir().join(testing::unique("router-tls")));
    std::fs::create_dir_all(&dir.0).unwrap();
    let out = std::process::Command::new("openssl")
        .current_dir(&dir.0)
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "key.pem",
        ])
        .args(["-out", "cert.pem", "-days", "2", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pem = std::fs::read(dir.0.join("cert.pem")).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .build()
        .unwrap();
    TestTls {
        tls: Tls {
            cert: dir.0.join("cert.pem"),
            key: dir.0.join("key.pem"),
        },
        pem,
        client,
        _dir: dir,
    }
}

async fn sink_with(
    shutdown: &CancellationToken,
    api_keys: Option<Arc<ApiKeys>>,
    tls: Option<&TestTls>,
    consumers_file: Option<&Path>,
) -> Sink {
    let kafka = testing::kafka();
    let prefix = testing::unique("router");
    let guard = DeleteTopicsOnDrop::new(kafka.clone(), &prefix);
    let model: ModelRef = MINILM.parse().unwrap();
    let topic = TopicNames::new(&prefix).embeddings(&model);
    Admin::new(&kafka, Duration::from_secs(30))
        .unwrap()
        .ensure(&[TopicSpec::compacted(&topic, 2)])
        .await
        .unwrap();
    let codec = Codec::new(&registry());
    let producer: FutureProducer = kafka.client().create().unwrap();
    for i in 0..ITEMS {
        let record = EmbeddingRecord {
            item_id: format!("item-{i}"),
            model_id: model.id.clone(),
            model_version: model.version as i32,
            dimension: DIM as i32,
            vector: vector(i),
            normalized: true,
            source: SourceCoordinates {
                topic: "items".into(),
                partition: 0,
                offset: i as i64,
            },
            event_time: 0,
            embed_time: 0,
            attributes: Default::default(),
            request_id: None,
        };
        let bytes = codec.encode(&topic, &record).await.unwrap();
        producer
            .send(
                FutureRecord::to(&topic)
                    .key(&record.item_id)
                    .payload(&bytes),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    let data = TempDir(std::env::temp_dir().join(testing::unique("router-sink")));
    let listen = free_addr();
    let config = SinkConfig {
        kafka,
        registry_url: registry(),
        spec: embedstream_topics::catalog::lookup(&model).unwrap(),
        topic,
        group: testing::unique("router-sink"),
        data_dir: data.0.clone(),
        listen,
        adapters_dir: data.0.join("adapters"),
        settings: Settings {
            consumers: consumers_file
                .map_or_else(default_consumers, |p| consumers::load(p).unwrap()),
            ..Settings::default()
        },
        api_keys,
        tls: tls.map(|t| t.tls.clone()),
        consumers_file: consumers_file.map(Path::to_owned),
    };
    let stop = shutdown.clone();
    tokio::spawn(async move {
        if let Err(e) = service::run(config, None, axum::Router::new(), stop).await {
            panic!("the sink failed: {e}");
        }
    });
    let (url, client) = match tls {
        Some(t) => (format!("https://{listen}"), t.client.clone()),
        None => (format!("http://{listen}"), reqwest::Client::new()),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let items = match client.get(format!("{url}/v1/stats")).send().await {
            Ok(r) => r
                .json::<Value>()
                .await
                .ok()
                .and_then(|v| v["items"].as_u64()),
            Err(_) => None,
        };
        if items == Some(ITEMS as u64) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sink did not serve {ITEMS} items within 60 s (last: {items:?})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Sink {
        url,
        _topics: guard,
        _data: data,
    }
}

/// A router over `backends` on a free port; its base URL.
async fn router(backends: BTreeMap<String, String>, shutdown: &CancellationToken) -> String {
    router_with_keys(backends, shutdown, None).await
}

async fn router_with_keys(
    backends: BTreeMap<String, String>,
    shutdown: &CancellationToken,
    api_keys: Option<Arc<ApiKeys>>,
) -> String {
    router_with(backends, shutdown, api_keys, None, Consumers::default()).await
}

async fn router_with(
    backends: BTreeMap<String, String>,
    shutdown: &CancellationToken,
    api_keys: Option<Arc<ApiKeys>>,
    tls: Option<&TestTls>,
    consumers: Consumers,
) -> String {
    let listen = free_addr();
    let config = RouterConfig {
        listen,
        backends: Backends::from(backends),
        blend: Blend::Rrf,
        consumers,
        timeout: Duration::from_secs(2),
        status: StatusFeed::new(),
        api_keys,
        tls: tls.map(|t| t.tls.clone()),
        trust_pem: tls.map(|t| t.pem.clone()),
        query_log: None,
        exposure_log: None,
    };
    let (tx, plans) = tokio::sync::watch::channel(Arc::new(ControlState::default()));
    serve(config, plans, tx, shutdown, tls.map(|t| &t.client)).await
}

/// Runs the router of `config` following `plans` (kept open by `keep`); its base URL once it
/// answers.
async fn serve<K: Send + 'static>(
    config: RouterConfig,
    plans: tokio::sync::watch::Receiver<Arc<ControlState>>,
    keep: K,
    shutdown: &CancellationToken,
    tls_client: Option<&reqwest::Client>,
) -> String {
    let listen = config.listen;
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let _keep = keep;
        embedstream_router::run(config, plans, axum::Router::new(), stop)
            .await
            .unwrap();
    });
    let (url, client) = match tls_client {
        Some(c) => (format!("https://{listen}"), c.clone()),
        None => (format!("http://{listen}"), reqwest::Client::new()),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.get(format!("{url}/v1/plans")).send().await.is_err() {
        assert!(Instant::now() < deadline, "the router did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    url
}

/// An address where nothing listens.
fn nowhere() -> String {
    format!("http://{}", free_addr())
}

async fn search(router: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{router}/v1/search"))
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

fn both_versions(query: Vec<f32>) -> Value {
    json!({
        "consumer": "search",
        "k": 3,
        "vectors": {MINILM: query, MPNET: vec![0.5f32; 768]},
        "plan": [{"model": MINILM, "weight": 0.5}, {"model": MPNET, "weight": 0.5}],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_version_is_left_out_and_named() {
    let shutdown = CancellationToken::new();
    let sink = sink(&shutdown).await;
    let router = router(
        BTreeMap::from([
            (MINILM.to_owned(), sink.url.clone()),
            (MPNET.to_owned(), nowhere()),
        ]),
        &shutdown,
    )
    .await;
    let (status, body) = search(&router, both_versions(vector(7))).await;
    assert_eq!(status, 200, "{body}");
    let degraded: Vec<&str> = body["degraded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert_eq!(degraded.len(), 1, "{body}");
    assert!(degraded[0].starts_with(MPNET), "{body}");
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 3, "{body}");
    assert_eq!(results[0]["item_id"], "item-7", "{body}");
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_version_failed_is_unavailable() {
    let shutdown = CancellationToken::new();
    let router = router(
        BTreeMap::from([
            (MINILM.to_owned(), nowhere()),
            (MPNET.to_owned(), nowhere()),
        ]),
        &shutdown,
    )
    .await;
    let (status, body) = search(&router, both_versions(vector(1))).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["kind"], "unavailable", "{body}");
    let message = body["error"].as_str().unwrap();
    assert!(
        message.contains(MINILM) && message.contains(MPNET),
        "{body}"
    );
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sinks_refusal_is_the_clients_error() {
    let shutdown = CancellationToken::new();
    let sink = sink(&shutdown).await;
    let router = router(
        BTreeMap::from([(MINILM.to_owned(), sink.url.clone())]),
        &shutdown,
    )
    .await;
    let (status, body) = search(
        &router,
        json!({"consumer": "search", "k": 3, "vector": vec![1.0f32; 10], "plan": [{"model": MINILM, "weight": 1.0}]}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["kind"], "rejected_by_sink", "{body}");
    let (status, body) = search(
        &router,
        json!({"consumer": "search", "k": 3, "vector": vector(4), "plan": [{"model": MINILM, "weight": 1.0}]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["item_id"], "item-4", "{body}");
    assert!(body["degraded"].as_array().unwrap().is_empty(), "{body}");
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_is_bounded_and_an_unconfigured_version_is_left_out() {
    let shutdown = CancellationToken::new();
    let router = router(BTreeMap::from([(MINILM.to_owned(), nowhere())]), &shutdown).await;
    let plan: Vec<Value> = (1..=9)
        .map(|v| json!({"model": format!("m@{v}"), "weight": 0.1}))
        .collect();
    let (status, body) = search(
        &router,
        json!({"consumer": "search", "k": 3, "vector": vector(1), "plan": plan}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["kind"], "invalid_plan", "{body}");

    let (status, body) = search(
        &router,
        json!({"consumer": "search", "k": 3, "vector": vector(1),
               "plan": [{"model": "nope@1", "weight": 1.0}]}),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("nope@1: no sink configured"),
        "{body}"
    );
    shutdown.cancel();
}

/// With API keys on the router and the sink: no key is 401, a key searches only as the
/// consumers it grants (403 otherwise, at the router and at the sink), and the router passes
/// the key on to the sink.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_key_reads_as_its_own_consumers_only() {
    let keys = Arc::new(
        ApiKeys::parse(
            "[keys]\n\"key-of-the-search-team\" = [\"search\"]\n\"key-of-the-ads-team-01\" = [\"ads\"]\n",
        )
        .unwrap(),
    );
    let shutdown = CancellationToken::new();
    let sink = sink_with_keys(&shutdown, Some(Arc::clone(&keys))).await;
    let router = router_with_keys(
        BTreeMap::from([(MINILM.to_owned(), sink.url.clone())]),
        &shutdown,
        Some(keys),
    )
    .await;
    let client = reqwest::Client::new();
    let ask = async |base: &str, consumer: &str, key: Option<&str>| {
        let mut body = json!({"consumer": consumer, "vector": vector(3), "k": 2});
        if base == router {
            // No control log here: the request names its plan.
            body["plan"] = json!([{"model": MINILM, "weight": 1.0}]);
        }
        let mut r = client.post(format!("{base}/v1/search")).json(&body);
        if let Some(key) = key {
            r = r.bearer_auth(key);
        }
        let r = r.send().await.unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    for base in [&router, &sink.url] {
        let (status, body) = ask(base, "search", None).await;
        assert_eq!(status, 401, "{base}: {body}");
        let (status, body) = ask(base, "search", Some("a-key-nobody-was-given")).await;
        assert_eq!(status, 401, "{base}: {body}");
        let (status, body) = ask(base, "ads", Some("key-of-the-search-team")).await;
        assert_eq!(
            (status, body["kind"].as_str()),
            (403, Some("forbidden_consumer")),
            "{base}: {body}"
        );
        let (status, body) = ask(base, "search", Some("key-of-the-search-team")).await;
        assert_eq!(status, 200, "{base}: {body}");
        assert_eq!(body["results"][0]["item_id"], "item-3", "{base}: {body}");
    }
    // Items need a key too (the router passes it on); stats and the status page do not.
    let item = client
        .get(format!("{router}/v1/items/item-3"))
        .header("x-api-key", "key-of-the-ads-team-01")
        .send()
        .await
        .unwrap();
    let item: Value = item.json().await.unwrap();
    assert!(item[MINILM].is_object(), "{item}");
    let anonymous = client
        .get(format!("{router}/v1/items/item-3"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    let stats = client
        .get(format!("{}/v1/stats", sink.url))
        .send()
        .await
        .unwrap();
    assert_eq!(stats.status().as_u16(), 200);
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_the_router_and_its_sinks_answer_https_only() {
    let shutdown = CancellationToken::new();
    let tls = test_tls();
    let sink = sink_with(&shutdown, None, Some(&tls), None).await;
    let backends = BTreeMap::from([(MINILM.to_owned(), sink.url.clone())]);
    let url = router_with(backends, &shutdown, None, Some(&tls), Consumers::default()).await;
    assert!(url.starts_with("https://") && sink.url.starts_with("https://"));
    // No control log here: the request names its plan.
    let query = json!({"consumer": "search", "vector": vector(3), "k": 1,
        "plan": [{"model": MINILM, "weight": 1.0}]});
    // The router calls its sink over HTTPS, trusting the certificate it was given.
    let answer: Value = tls
        .client
        .post(format!("{url}/v1/search"))
        .json(&query)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["results"][0]["item_id"], "item-3", "{answer}");
    // Plain HTTP to a TLS port gets no answer, and a client that does not trust the
    // certificate is refused.
    let plain = url.replacen("https://", "http://", 1);
    let r = reqwest::Client::new()
        .post(format!("{plain}/v1/search"))
        .json(&query)
        .send()
        .await;
    assert!(r.is_err() || !r.unwrap().status().is_success());
    let untrusting = reqwest::Client::new()
        .post(format!("{url}/v1/search"))
        .json(&query)
        .send()
        .await;
    assert!(
        untrusting.is_err(),
        "a client without the certificate was served"
    );
    shutdown.cancel();
}

/// A consumer defined in a consumers file is served by the router and its sinks alike (any
/// other name is one 400 naming the configured ones), and a change to the file applies to both
/// while they run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_come_from_a_file_the_router_and_the_sinks_follow() {
    let shutdown = CancellationToken::new();
    let dir = TempDir(std::env::temp_dir().join(testing::unique("consumers")));
    std::fs::create_dir_all(&dir.0).unwrap();
    let path = dir.0.join("consumers.toml");
    let file = |max_k: usize, extra: &str| {
        format!(
            "[consumers.catalog-audit]\nef_search = 40\ndefault_k = 3\nmax_k = {max_k}\n\
             p95_slo_ms = 200\n{extra}"
        )
    };
    std::fs::write(&path, file(5, "")).unwrap();
    let sink = sink_with(&shutdown, None, None, Some(&path)).await;
    let consumers = Consumers::from_file(Some(&path)).unwrap();
    consumers.follow_file(
        path.clone(),
        Duration::from_millis(100),
        |_| Ok(()),
        shutdown.clone(),
    );
    let router = router_with(
        BTreeMap::from([(MINILM.to_owned(), sink.url.clone())]),
        &shutdown,
        None,
        None,
        consumers,
    )
    .await;
    let ask = |consumer: &str, k: Option<usize>| {
        let mut body = json!({
            "consumer": consumer,
            "vectors": {MINILM: vector(7)},
            "plan": [{"model": MINILM, "weight": 1.0}],
        });
        if let Some(k) = k {
            body["k"] = json!(k);
        }
        body
    };
    let direct =
        |consumer: &str, k: usize| json!({"consumer": consumer, "vector": vector(7), "k": k});

    let (status, body) = search(&router, ask("catalog-audit", None)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["results"].as_array().unwrap().len(),
        3,
        "default_k: {body}"
    );
    let (status, body) = search(&router, ask("search", None)).await;
    assert_eq!(status, 400, "a built-in name not in the file: {body}");
    assert_eq!(body["kind"], "unknown_consumer", "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("catalog-audit"),
        "{body}"
    );
    let (status, body) = search(&sink.url, direct("search", 3)).await;
    assert_eq!(
        (status, body["kind"].clone()),
        (400, json!("unknown_consumer")),
        "{body}"
    );
    let (status, body) = search(&router, ask("catalog-audit", Some(8))).await;
    assert_eq!(
        (status, body["kind"].clone()),
        (400, json!("k_out_of_range")),
        "{body}"
    );

    // A wider max_k and a new consumer: both processes take them without a restart.
    std::fs::write(
        &path,
        file(
            20,
            "[consumers.search]\nef_search = 100\ndefault_k = 10\nmax_k = 100\n",
        ),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (at_router, _) = search(&router, ask("catalog-audit", Some(8))).await;
        let (at_sink, _) = search(&sink.url, direct("search", 4)).await;
        if (at_router, at_sink) == (200, 200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the change did not apply: router {at_router}, sink {at_sink}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, body) = search(&router, ask("catalog-audit", Some(8))).await;
    assert_eq!(body["results"].as_array().unwrap().len(), 8, "{body}");
    shutdown.cancel();
}
