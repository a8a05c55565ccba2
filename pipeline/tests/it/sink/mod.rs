//! The index sink (`embedstream sink`) against the real broker and registry: embedding records
//! produced straight to a prefixed embedding topic, the sink binary consuming them, queries
//! over HTTP checked against an exact oracle; kill -9 and restart; the query API's errors.

mod cold;
mod errors;
mod faults;
mod filter;
mod recovery;
mod serve;
mod slices;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use embedstream_schemas::Codec;
use embedstream_schemas::records::{EmbeddingRecord, SourceCoordinates};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureRecord;
use serde_json::{Value, json};

use crate::stage::Platform;

pub const DIM: usize = 384;

pub use crate::common::free_port;

/// A deterministic unit vector per seed (splitmix64 → uniform in [-1, 1], normalized).
pub fn unit_vector(seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut v: Vec<f32> = (0..DIM)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32
        })
        .collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

/// The next source offset a made-up record names.
static NEXT_SOURCE: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

pub fn record(id: &str, vector: Vec<f32>) -> EmbeddingRecord {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    EmbeddingRecord {
        item_id: id.to_owned(),
        model_id: "minilm-l6-v2".into(),
        model_version: 1,
        dimension: vector.len() as i32,
        vector,
        normalized: true,
        // Each call is a newer source event than the last, as the stage writes them.
        source: SourceCoordinates {
            topic: "items".into(),
            partition: 0,
            offset: NEXT_SOURCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        },
        event_time: now,
        embed_time: now,
        attributes: Default::default(),
        request_id: None,
    }
}

/// One write to the embedding topic.
pub enum Put {
    /// A record, encoded through the registry.
    Record(EmbeddingRecord),
    /// A tombstone for the id.
    Tombstone(String),
    /// Raw (poison) bytes under the id.
    Raw(String, Vec<u8>),
}

/// An item's last record: its vector (None: deleted or poison) and (partition, offset).
pub type Last = (Option<Vec<f32>>, (i32, i64));

/// What the topic says, per item.
#[derive(Debug, Default)]
pub struct Oracle {
    pub items: HashMap<String, Last>,
}

impl Oracle {
    pub fn live(&self) -> impl Iterator<Item = (&String, &Vec<f32>, (i32, i64))> {
        self.items
            .iter()
            .filter_map(|(id, (v, at))| v.as_ref().map(|v| (id, v, *at)))
    }

    /// A delivered write of `id`: it is the item's last unless the oracle has seen a later
    /// offset (one key is one partition).
    pub fn observe(&mut self, id: String, vector: Option<Vec<f32>>, at: (i32, i64)) {
        if self.items.get(&id).is_some_and(|(_, seen)| *seen > at) {
            return;
        }
        let vector = vector.map(|v| {
            let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.iter().map(|x| x / n).collect()
        });
        self.items.insert(id, (vector, at));
    }

    pub fn live_count(&self) -> usize {
        self.live().count()
    }

    /// Exact top k by dot product, ties by id.
    pub fn top_k(&self, query: &[f32], k: usize) -> Vec<(String, f32)> {
        let mut all: Vec<(String, f32)> = self
            .live()
            .map(|(id, v, _)| (id.clone(), v.iter().zip(query).map(|(a, b)| a * b).sum()))
            .collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(k);
        all
    }
}

/// Produces `puts` in order (keyed by item id, the stage's partitioner; many in flight, in
/// order per partition as the producer is idempotent) and records each in the oracle. A
/// record whose vector the sink must refuse counts as a delete there.
pub async fn produce(platform: &Platform, oracle: &mut Oracle, puts: Vec<Put>) {
    let codec = Codec::new(&platform.registry);
    let topic = platform.embeddings();
    let producer = platform.producer();
    let mut sent = Vec::with_capacity(puts.len());
    for put in puts {
        let (key, value, vector) = match put {
            Put::Record(r) => {
                let valid = r.vector.len() == DIM
                    && r.dimension as usize == DIM
                    && r.vector.iter().all(|x| x.is_finite())
                    && r.vector.iter().any(|x| *x != 0.0);
                let bytes = codec.encode(&topic, &r).await.unwrap();
                (r.item_id.clone(), Some(bytes), valid.then_some(r.vector))
            }
            Put::Tombstone(id) => (id, None, None),
            Put::Raw(id, bytes) => (id, Some(bytes), None),
        };
        let mut r = FutureRecord::<[u8], [u8]>::to(&topic).key(key.as_bytes());
        if let Some(v) = &value {
            r = r.payload(v);
        }
        let delivery = producer.send_result(r).map_err(|(e, _)| e).unwrap();
        sent.push((key, vector, delivery));
    }
    for (key, vector, delivery) in sent {
        let (partition, offset) = match delivery.await.unwrap() {
            Ok(d) => (d.partition, d.offset),
            Err((e, _)) => panic!("{key} was not delivered: {e}"),
        };
        oracle.observe(key, vector, (partition, offset));
    }
}

/// A running `embedstream sink`.
pub struct Sink {
    pub child: Child,
    pub port: u16,
    pub log: PathBuf,
    client: reqwest::Client,
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The directory for a test's snapshots and config.
pub fn test_dir(platform: &Platform) -> PathBuf {
    let dir = std::env::temp_dir()
        .join("embedstream-tests")
        .join(&platform.prefix);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Sink {
    /// Starts the sink for the platform's MiniLM topic with `config` (TOML) and waits until
    /// its API answers.
    pub async fn start(platform: &Platform, dir: &Path, config: &str, log_name: &str) -> Self {
        Self::start_with(platform, dir, config, log_name, &[]).await
    }

    /// [`Sink::start`] with more command-line arguments.
    pub async fn start_with(
        platform: &Platform,
        dir: &Path,
        config: &str,
        log_name: &str,
        extra: &[&str],
    ) -> Self {
        let config_path = dir.join("sink.toml");
        std::fs::write(&config_path, config).unwrap();
        let port = free_port();
        let log = dir.join(format!("{log_name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        // Replica `test` unless `extra` names one.
        let replica: &[&str] = if extra.contains(&"--replica") {
            &[]
        } else {
            &["--replica", "test"]
        };
        let child = Command::new(env!("CARGO_BIN_EXE_embedstream"))
            .arg("sink")
            .args(platform.args())
            .args(["--model", "minilm-l6-v2@1"])
            .args(replica)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--config")
            .arg(&config_path)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(extra)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let mut sink = Self {
            child,
            port,
            log,
            client: reqwest::Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = sink.client.get(sink.url("/v1/stats")).send().await
                && r.status().is_success()
            {
                return sink;
            }
            if let Some(status) = sink.child.try_wait().unwrap() {
                panic!("the sink exited ({status}); log: {}", sink.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "the sink did not answer; log: {}",
                sink.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn search_raw(&self, body: String) -> (u16, Value) {
        let r = self
            .client
            .post(self.url("/v1/search"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn search(&self, body: Value) -> (u16, Value) {
        self.search_raw(body.to_string()).await
    }

    /// The top k for `vector` as (id, score), for a consumer that must answer 200.
    pub async fn top_k(&self, consumer: &str, vector: &[f32], k: usize) -> Vec<(String, f32)> {
        let (status, body) = self
            .search(json!({"consumer": consumer, "vector": vector, "k": k}))
            .await;
        assert_eq!(status, 200, "search failed: {body}");
        body["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                assert_eq!(r["model_version"], "minilm-l6-v2@1");
                (
                    r["item_id"].as_str().unwrap().to_owned(),
                    r["score"].as_f64().unwrap() as f32,
                )
            })
            .collect()
    }

    pub async fn stats(&self) -> Value {
        self.client
            .get(self.url("/v1/stats"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The (partition, offset) of the version queries see, or None (404).
    pub async fn item(&self, id: &str) -> Option<(i32, i64)> {
        let r = self
            .client
            .get(self.url(&format!("/v1/items/{id}")))
            .send()
            .await
            .unwrap();
        if r.status().as_u16() == 404 {
            return None;
        }
        let v: Value = r.json().await.unwrap();
        Some((
            v["partition"].as_i64().unwrap() as i32,
            v["offset"].as_i64().unwrap(),
        ))
    }

    /// Waits until the sink has processed every record now on the topic.
    pub async fn wait_caught_up(&self, platform: &Platform, timeout: Duration) {
        let consumer: BaseConsumer = platform.kafka.client().create().unwrap();
        let topic = platform.embeddings();
        let highs: Vec<(i32, i64)> = (0..3)
            .map(|p| {
                let (_, h) = consumer
                    .fetch_watermarks(&topic, p, Duration::from_secs(10))
                    .unwrap();
                (p, h)
            })
            .collect();
        let deadline = Instant::now() + timeout;
        loop {
            let stats = self.stats().await;
            let behind: Vec<_> = highs
                .iter()
                .filter(|(p, h)| {
                    let at = stats["consumer"]["positions"][p.to_string()]
                        .as_i64()
                        .unwrap_or(-1);
                    at < *h && *h > 0
                })
                .collect();
            if behind.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the sink did not catch up ({behind:?} behind; stats {stats}); log: {}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every shard has had at least `n` compactions.
    pub async fn wait_compactions(&self, n: u64, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let stats = self.stats().await;
            let done = stats["shards"].as_array().unwrap().iter().all(|s| {
                s["last_compaction"]["count"].as_u64().unwrap_or(0) >= n && s["compacting"] == false
            });
            if done {
                return stats;
            }
            assert!(
                Instant::now() < deadline,
                "no compaction within {timeout:?}: {stats}; log: {}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Checks every item the topic has seen: live ones at their last version, deleted and
/// poisoned ones absent, and the visible count.
pub async fn assert_items(sink: &Sink, oracle: &Oracle) {
    let mut wrong = Vec::new();
    for (id, (vector, at)) in &oracle.items {
        let got = sink.item(id).await;
        let want = vector.as_ref().map(|_| *at);
        if got != want {
            wrong.push(format!("{id}: sink has {got:?}, topic says {want:?}"));
        }
    }
    wrong.sort();
    assert!(wrong.is_empty(), "{} items differ: {wrong:#?}", wrong.len());
    let stats = sink.stats().await;
    assert_eq!(
        stats["items"].as_u64().unwrap() as usize,
        oracle.live_count(),
        "visible items: {stats}"
    );
}

/// Compares `queries` top-k answers with the exact oracle (ids in order; scores to 1e-4).
pub async fn assert_exact_search(sink: &Sink, oracle: &Oracle, consumer: &str, seeds: &[u64]) {
    for &seed in seeds {
        let q = unit_vector(seed);
        let got = sink.top_k(consumer, &q, 10).await;
        let want = oracle.top_k(&q, 10);
        let ids = |v: &[(String, f32)]| v.iter().map(|x| x.0.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&got), ids(&want), "query {seed}: {got:?} vs {want:?}");
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g.1 - w.1).abs() < 1e-4,
                "query {seed}: score {g:?} vs {w:?}"
            );
        }
    }
}

/// The sink config of these tests: 2 shards, a wide `exact` consumer profile (ef far above
/// the shard sizes, so HNSW answers are exact), the given compaction thresholds.
pub fn config(min_hot: usize, max_tombstone_ratio: f64) -> String {
    format!(
        r#"
[index]
shards = 2

[index.compaction]
min_hot = {min_hot}
hot_fraction = 0.05
max_tombstone_ratio = {max_tombstone_ratio}
interval = "1h"
check_every = "100ms"

[consumers.exact]
ef_search = 1000
default_k = 10
max_k = 100

[consumers.search]
ef_search = 100
default_k = 10
max_k = 100

[kafka]
retry_backoff = "50ms"
statistics_every = "1s"
"#
    )
}
