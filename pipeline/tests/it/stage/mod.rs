//! The stream stage against the real broker and registry: dead letters per kind, dual-write,
//! kill -9 and restart, a broker restart, a rebalance between two stage processes. Each test works under
//! its own topic prefix and consumer group, so tests share the broker.

mod dead_letters;
mod dual_write;
mod faults;
mod replay;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use embedstream_pipeline::embed::burn_model::Device;
use embedstream_pipeline::embed::engine::{Engine, EngineConfig};
use embedstream_schemas::Codec;
use embedstream_schemas::records::{DeadLetter, EmbeddingRecord, ItemEvent, ItemOp};
use embedstream_topics::names::TopicNames;
use embedstream_topics::{KafkaConfig, ModelRef};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};

pub const MINILM: &str = "minilm-l6-v2@1";

/// A raw record: key and value, either may be absent.
pub type Raw = (Option<Vec<u8>>, Option<Vec<u8>>);
/// A record read back: key, value, partition, offset.
pub type ReadBack = (Option<Vec<u8>>, Option<Vec<u8>>, i32, i64);

/// One test's platform: the shared broker and registry (or its own), a unique prefix.
#[derive(Debug, Clone)]
pub struct Platform {
    pub bootstrap: String,
    pub kafka: KafkaConfig,
    pub registry: String,
    pub prefix: String,
    pub names: TopicNames,
    pub group: String,
    /// The Kafka properties file its processes get (`--kafka-config`), if any.
    pub kafka_config: Option<std::path::PathBuf>,
    /// Deletes the test's topics when the last clone goes.
    _topics: std::sync::Arc<embedstream_topics::testing::DeleteTopicsOnDrop>,
}

impl Platform {
    pub fn new(test: &str) -> Self {
        Self::on(
            &embedstream_topics::testing::bootstrap(),
            &registry_url(),
            test,
        )
    }

    pub fn on(bootstrap: &str, registry: &str, test: &str) -> Self {
        let kafka = embedstream_topics::testing::kafka().with_bootstrap(bootstrap);
        Self::with_kafka(kafka, None, registry, test)
    }

    /// A platform on the brokers of `kafka`, whose processes read their client properties
    /// from `properties` (the same ones `kafka` holds).
    pub fn secured(
        kafka: &KafkaConfig,
        properties: &std::path::Path,
        registry: &str,
        test: &str,
    ) -> Self {
        Self::with_kafka(kafka.clone(), Some(properties.to_owned()), registry, test)
    }

    fn with_kafka(
        kafka: KafkaConfig,
        kafka_config: Option<std::path::PathBuf>,
        registry: &str,
        test: &str,
    ) -> Self {
        let prefix = embedstream_topics::testing::unique(test);
        Self {
            bootstrap: kafka.bootstrap().to_owned(),
            kafka_config,
            _topics: std::sync::Arc::new(embedstream_topics::testing::DeleteTopicsOnDrop::new(
                kafka.clone(),
                &prefix,
            )),
            kafka,
            registry: registry.to_owned(),
            names: TopicNames::new(&prefix),
            group: format!("{prefix}-stage"),
            prefix,
        }
    }

    pub fn embeddings(&self) -> String {
        self.names.embeddings(&MINILM.parse::<ModelRef>().unwrap())
    }

    /// Creates the platform's topics (as `embedstream produce` would).
    pub async fn ensure_topics(&self) {
        embedstream_topics::admin::Admin::new(&self.kafka, Duration::from_secs(30))
            .unwrap()
            .ensure(&embedstream_topics::admin::named_platform_topics(
                &self.names,
                embedstream_topics::admin::Layout { partitions: 3 },
                &[MINILM.parse().unwrap()],
            ))
            .await
            .unwrap();
    }

    /// Creates `topic` (compacted, 3 partitions, before `ensure_topics`) with a log cleaner
    /// that works at once: segments roll every 100 ms, any dirt is cleanable, tombstones go
    /// after 1 s.
    pub async fn ensure_eagerly_cleaned(&self, topic: &str) {
        embedstream_topics::admin::Admin::new(&self.kafka, Duration::from_secs(30))
            .unwrap()
            .ensure(&[embedstream_topics::admin::TopicSpec::compacted(topic, 3)
                .with_config("segment.ms", "100")
                .with_config("min.cleanable.dirty.ratio", "0.01")
                .with_config("delete.retention.ms", "1000")])
            .await
            .unwrap();
    }

    pub fn producer(&self) -> FutureProducer {
        self.kafka
            .client()
            .set("enable.idempotence", "true")
            .set("partitioner", "murmur2_random")
            .set("message.timeout.ms", "60000")
            .create()
            .unwrap()
    }

    /// Produces raw records to `items`, in order.
    pub async fn produce_raw(&self, records: &[Raw]) {
        let producer = self.producer();
        let topic = self.names.items();
        for (key, value) in records {
            let mut r = FutureRecord::<[u8], [u8]>::to(&topic);
            if let Some(k) = key {
                r = r.key(k);
            }
            if let Some(v) = value {
                r = r.payload(v);
            }
            producer
                .send(r, Duration::from_secs(30))
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }
    }

    /// Encodes and produces item events, keyed by item id, in order.
    pub async fn produce_events(&self, events: &[ItemEvent]) {
        let codec = Codec::new(&self.registry);
        let topic = self.names.items();
        let mut raw = Vec::with_capacity(events.len());
        for e in events {
            let bytes = codec.encode(&topic, e).await.unwrap();
            raw.push((Some(e.item_id.as_bytes().to_vec()), Some(bytes)));
        }
        self.produce_raw(&raw).await;
    }

    /// The platform's command-line arguments: bootstrap, registry and topic prefix.
    pub fn args(&self) -> Vec<&str> {
        let mut args = vec![
            "--bootstrap",
            &self.bootstrap,
            "--registry-url",
            &self.registry,
            "--topic-prefix",
            &self.prefix,
        ];
        if let Some(path) = &self.kafka_config {
            args.extend(["--kafka-config", path.to_str().unwrap()]);
        }
        args
    }

    /// The stage binary's command line for this platform.
    pub fn stage_command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_embedstream"));
        cmd.arg("embed-stage")
            .args(self.args())
            .args([
                "--group",
                &self.group,
                "--partitions",
                "3",
                "--batch-size",
                "32",
            ])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null());
        cmd
    }

    pub fn spawn_stage(&self, log_name: &str) -> Child {
        self.spawn_stage_logged(log_name).0
    }

    /// Starts a stage process; its log goes to the returned file.
    pub fn spawn_stage_logged(&self, log_name: &str) -> (Child, std::path::PathBuf) {
        self.spawn_stage_with(log_name, &[])
    }

    /// [`Platform::spawn_stage_logged`] with more arguments.
    pub fn spawn_stage_with(&self, log_name: &str, extra: &[&str]) -> (Child, std::path::PathBuf) {
        let dir = std::env::temp_dir().join("embedstream-tests");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{}-{log_name}.log", self.prefix));
        let log = std::fs::File::create(&path).unwrap();
        let child = self
            .stage_command()
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .env("NO_COLOR", "1")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        (child, path)
    }

    /// Reads a topic from the beginning to its current end: every record, in partition order
    /// (committed records only; a transaction's commit marker takes an offset of its own, so
    /// the end is where the broker says the partition ends).
    pub fn read_all(&self, topic: &str) -> Vec<ReadBack> {
        self.read_with_headers(topic)
            .into_iter()
            .map(|(r, _)| r)
            .collect()
    }

    /// [`Platform::read_all`] with each record's headers (values as UTF-8 text).
    pub fn read_with_headers(&self, topic: &str) -> Vec<(ReadBack, HashMap<String, String>)> {
        let consumer: BaseConsumer = self
            .kafka
            .client()
            .set("group.id", embedstream_topics::testing::unique("reader"))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("isolation.level", "read_committed")
            .create()
            .unwrap();
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap();
        let partitions: Vec<i32> = metadata.topics()[0]
            .partitions()
            .iter()
            .map(|p| p.id())
            .collect();
        let mut out = Vec::new();
        for p in partitions {
            let (low, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap();
            if high <= low {
                continue;
            }
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .unwrap();
            consumer.assign(&tpl).unwrap();
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                assert!(Instant::now() < deadline, "reading {topic}/{p} timed out");
                match consumer.poll(Duration::from_millis(200)) {
                    Some(Ok(m)) => {
                        let offset = m.offset();
                        let headers = m
                            .headers()
                            .map(|h| {
                                h.iter()
                                    .map(|x| {
                                        (
                                            x.key.to_owned(),
                                            String::from_utf8_lossy(x.value.unwrap_or_default())
                                                .into_owned(),
                                        )
                                    })
                                    .collect()
                            })
                            .unwrap_or_default();
                        out.push((
                            (
                                m.key().map(<[u8]>::to_vec),
                                m.payload().map(<[u8]>::to_vec),
                                p,
                                offset,
                            ),
                            headers,
                        ));
                        if offset + 1 >= high {
                            break;
                        }
                    }
                    Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => break,
                    Some(Err(e)) => panic!("reading {topic}: {e}"),
                    None => {}
                }
            }
        }
        out
    }

    /// The embedding topic as a reader keeps it: per key, the record or tombstone of the newest
    /// source event (headers `embedstream.source.*`; topic order where a record has none),
    /// tombstones removed.
    pub async fn embedding_state(&self) -> HashMap<String, EmbeddingRecord> {
        use embedstream_schemas::headers::{SOURCE_OFFSET, SOURCE_PARTITION};
        let codec = Codec::new(&self.registry);
        // Per key: the source event held, and its record (None: a tombstone).
        type Held = (Option<(i32, i64)>, Option<EmbeddingRecord>);
        let mut held: HashMap<String, Held> = HashMap::new();
        for ((key, value, _, _), headers) in self.read_with_headers(&self.embeddings()) {
            let key = String::from_utf8(key.expect("embedding records are keyed")).unwrap();
            let source = match (headers.get(SOURCE_PARTITION), headers.get(SOURCE_OFFSET)) {
                (Some(p), Some(o)) => Some((p.parse().unwrap(), o.parse().unwrap())),
                _ => None,
            };
            if let Some((Some(h), _)) = held.get(&key)
                && let Some(s) = source
                && s.0 == h.0
                && s.1 <= h.1
            {
                continue;
            }
            let record = match value {
                None => None,
                Some(v) => {
                    let r: EmbeddingRecord = codec.decode(&v).await.unwrap();
                    assert_eq!(r.item_id, key, "key and item_id agree");
                    Some(r)
                }
            };
            held.insert(key, (source, record));
        }
        held.into_iter()
            .filter_map(|(k, (_, r))| r.map(|r| (k, r)))
            .collect()
    }

    pub async fn dead_letters(&self) -> Vec<DeadLetter> {
        let codec = Codec::new(&self.registry);
        let mut out = Vec::new();
        for (_, value, _, _) in self.read_all(&self.names.items_dlq()) {
            out.push(codec.decode(&value.unwrap()).await.unwrap());
        }
        out
    }

    /// Records behind the end of `items` for the stage's group (committed offsets).
    pub fn group_lag(&self) -> i64 {
        embedstream_pipeline::stage::consumer::GroupLag::new(
            &self.kafka,
            &self.group,
            &self.names.items(),
        )
        .and_then(|g| g.read())
        .map_or(i64::MAX, |(lag, _)| lag)
    }

    /// Waits until the group has committed everything on `items`.
    pub async fn wait_caught_up(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let lag = self.group_lag();
            if lag == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the stage did not catch up within {timeout:?} (lag {lag}); logs in {}",
                std::env::temp_dir().join("embedstream-tests").display()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Waits until the embedding topic holds at least `n` records.
    pub async fn wait_records(&self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let consumer: BaseConsumer = self.kafka.client().create().unwrap();
            let topic = self.embeddings();
            let total: i64 = (0..3)
                .map(|p| {
                    consumer
                        .fetch_watermarks(&topic, p, Duration::from_secs(10))
                        .map_or(0, |(l, h)| h - l)
                })
                .sum();
            if total as usize >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "only {total} of {n} records within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

pub fn registry_url() -> String {
    std::env::var("SCHEMA_REGISTRY_URL").unwrap_or_else(|_| {
        panic!("SCHEMA_REGISTRY_URL is not set: run the tests with `compose/dev test`")
    })
}

pub fn upsert(id: &str, text: &str) -> ItemEvent {
    ItemEvent {
        item_id: id.to_owned(),
        op: ItemOp::Upsert,
        text: Some(text.to_owned()),
        title: None,
        attributes: HashMap::new(),
        event_time: 1_700_000_000_000,
        producer: None,
    }
}

pub fn delete(id: &str) -> ItemEvent {
    ItemEvent {
        op: ItemOp::Delete,
        text: None,
        ..upsert(id, "")
    }
}

/// A catalog with updates and deletes, and the state it must end in (id → final text).
pub fn scenario(n: usize) -> (Vec<ItemEvent>, Vec<Raw>, HashMap<String, String>) {
    // Texts of a few dozen tokens, like a package description, so the stage has work enough
    // for a kill or a rebalance to land mid-stream.
    let text = |i: usize, rev: usize| {
        let (a, b, c) = (
            WORDS[i % WORDS.len()],
            WORDS[(i * 7 + rev) % WORDS.len()],
            WORDS[(i / 3 + 5) % WORDS.len()],
        );
        format!(
            "Package {i}, revision {rev}: a collection of tools for {a} and {b}. It ships \
             command-line programs, a shared library and documentation for working with {c}, \
             and integrates with the desktop for {a}; maintained by the {b} team."
        )
    };
    let mut events: Vec<ItemEvent> = (0..n)
        .map(|i| upsert(&format!("item-{i}"), &text(i, 0)))
        .collect();
    let mut live: HashMap<String, String> =
        (0..n).map(|i| (format!("item-{i}"), text(i, 0))).collect();
    // Every 7th item is updated, every 11th deleted by an event, every 13th by a tombstone.
    for i in (0..n).step_by(7) {
        events.push(upsert(&format!("item-{i}"), &text(i, 1)));
        live.insert(format!("item-{i}"), text(i, 1));
    }
    for i in (3..n).step_by(11) {
        events.push(delete(&format!("item-{i}")));
        live.remove(&format!("item-{i}"));
    }
    let mut tombstones = Vec::new();
    for i in (5..n).step_by(13) {
        tombstones.push((Some(format!("item-{i}").into_bytes()), None));
        live.remove(&format!("item-{i}"));
    }
    (events, tombstones, live)
}

const WORDS: [&str; 12] = [
    "compression",
    "networking",
    "image editing",
    "spreadsheets",
    "music playback",
    "kernel modules",
    "fonts",
    "databases",
    "email",
    "version control",
    "games",
    "scientific computing",
];

pub fn engine() -> Engine {
    embedstream_pipeline::embed::open(
        &embedstream_topics::catalog::lookup(&MINILM.parse().unwrap()).unwrap(),
        Device::Cpu,
        EngineConfig::default(),
    )
    .unwrap()
    .0
}

/// Checks the final state: exactly the live ids, each with the vector of its final text.
pub async fn assert_state(platform: &Platform, live: &HashMap<String, String>) {
    let state = platform.embedding_state().await;
    let mut missing: Vec<&String> = live.keys().filter(|k| !state.contains_key(*k)).collect();
    missing.sort();
    let mut extra: Vec<&String> = state.keys().filter(|k| !live.contains_key(*k)).collect();
    extra.sort();
    assert!(
        missing.is_empty(),
        "ids missing from the embedding topic: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "deleted ids alive on the embedding topic: {extra:?}"
    );
    let ids: Vec<&String> = live.keys().collect();
    let texts: Vec<String> = ids.iter().map(|id| live[*id].clone()).collect();
    let expected = engine().embed(texts).await.unwrap();
    for (id, want) in ids.iter().zip(expected) {
        let got = &state[*id];
        assert_eq!(got.dimension, 384);
        assert_eq!(got.model_id, "minilm-l6-v2");
        assert!(got.normalized);
        let cos: f32 = got.vector.iter().zip(&want).map(|(a, b)| a * b).sum();
        assert!(
            cos > 0.9999,
            "{id}: the vector is not its final text's (cosine {cos})"
        );
    }
}

/// Asserts that no upsert event has two records on the embedding topic (what exactly-once
/// output promises to `read_committed` readers).
pub async fn assert_each_event_once(platform: &Platform) {
    let codec = Codec::new(&platform.registry);
    let mut seen = HashMap::new();
    for (_, value, partition, offset) in platform.read_all(&platform.embeddings()) {
        let Some(v) = value else { continue };
        let r: EmbeddingRecord = codec.decode(&v).await.unwrap();
        if let Some(first) = seen.insert((r.source.partition, r.source.offset), (partition, offset))
        {
            panic!(
                "item {} event {}@{} written twice: at {first:?} and {:?}",
                r.item_id,
                r.source.partition,
                r.source.offset,
                (partition, offset)
            );
        }
    }
}

/// Waits until a stage's log contains `needle`.
pub async fn wait_log(path: &std::path::Path, needle: &str, timeout: Duration) {
    wait_log_count(path, needle, 1, timeout).await;
}

/// Waits until a stage's log contains `needle` at least `n` times.
pub async fn wait_log_count(path: &std::path::Path, needle: &str, n: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        if std::fs::read_to_string(path).is_ok_and(|s| s.matches(needle).count() >= n) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} never logged {needle:?}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Kills a child with SIGKILL (no chance to commit or drain).
pub fn kill9(child: &mut Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Stops a child with SIGTERM and waits for it.
pub fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the stage did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
